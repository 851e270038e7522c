/**
 * A parent process of its own for host.test.ts. Starts a device host (the fixture driver) and
 * opens a PRE_COPY session, prints {pid, dir} of the host, then, by mode:
 * - 'die': exits at once without close() (the host must clean up after itself);
 * - 'close': closes the host and lets the event loop run dry (nothing of the host may keep it alive).
 */
import { spawnDeviceHost } from '../../src/devices/host.js';
import { DeviceState } from '../../src/fsm/states.js';

const [fixture, mode] = process.argv.slice(2);
const host = await spawnDeviceHost({ device: { module: fixture }, options: { size: 1 << 20, precopyBytes: 1 << 19 } });
await host.step(DeviceState.RUNNING, DeviceState.PRE_COPY);
const line = JSON.stringify({ pid: host.pid, dir: host.dir }) + '\n';
if (mode === 'close') {
  await host.close();
  process.stdout.write(line);
} else {
  process.stdout.write(line, () => process.exit(0));
}
