/**
 * The orchestrator over other drivers: devices hosted in child processes whose sessions are real
 * FIFO fds (spawnDeviceHost, as a kernel data fd), and the mtty model (PRE_COPY temporary end
 * reported as a 0 read).
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MigrationCore } from '../../src/fsm/core.js';
import { DeviceState } from '../../src/fsm/states.js';
import { MttyDevice } from '../../src/devices/mtty-device.js';
import { spawnDeviceHost } from '../../src/devices/host.js';
import type { MigrationDriver } from '../../src/fsm/types.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { listenTransport } from '../../src/transport/index.js';
import { MiB } from './helpers.js';

async function run(src: MigrationDriver[], dst: MigrationDriver[]) {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-dev-'));
  const listener = await listenTransport(`unix:${join(dir, 's.sock')}`);
  try {
    const srcCores = src.map((d) => new MigrationCore(d));
    const dstCores = dst.map((d) => new MigrationCore(d));
    const incoming = receive({ devices: dstCores, transport: () => listener.accept() });
    const [s, d] = await Promise.all([migrate({ devices: srcCores, transport: listener.url, downtimeLimitMs: 1000 }).done, incoming.done]);
    return { s, d, srcCores, dstCores };
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('orchestrator over other drivers', () => {
  it('devices hosted in child processes, sessions as FIFO fds', async () => {
    const a = await spawnDeviceHost({ device: 'sim', options: { size: 16 * MiB, seed: 3, dirtyRate: 2 * MiB } });
    const b = await spawnDeviceHost({ device: 'sim', options: { size: 16 * MiB, seed: 3 } });
    try {
      const { s, d, dstCores } = await run([a], [b]);
      expect(s.verified).toBe(true);
      expect(d.verified).toBe(true);
      expect(await b.digest()).toBe(await a.digest());
      expect(await dstCores[0].getState()).toBe(DeviceState.RUNNING);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('mtty: a 0 read is the PRE_COPY temporary end, the UART state arrives', async () => {
    const a = new MttyDevice({ ports: 2 });
    const b = new MttyDevice({ ports: 2 });
    a.guestWrite(1, Buffer.from('hello'));
    expect(b.digest()).not.toBe(a.digest());
    const { s } = await run([a], [b]);
    expect(s.verified).toBe(true);
    expect(b.digest()).toBe(a.digest());
  });
});
