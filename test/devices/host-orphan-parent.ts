/**
 * A parent that starts a device host and dies without close() (host.test.ts runs it as its own
 * Node process): prints {pid, dir} of the host, then exits at once.
 */
import { spawnDeviceHost } from '../../src/devices/host.js';
import { DeviceState } from '../../src/fsm/states.js';

const host = await spawnDeviceHost({ device: { module: process.argv[2] }, options: { size: 1 << 20, precopyBytes: 1 << 19 } });
await host.step(DeviceState.RUNNING, DeviceState.PRE_COPY);
process.stdout.write(JSON.stringify({ pid: host.pid, dir: host.dir }) + '\n', () => process.exit(0));
