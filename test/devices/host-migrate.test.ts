/**
 * The whole stack on real fds: migrate() and receive() over a unix socket, with devices hosted in
 * child processes whose saving and resuming sessions are FIFOs.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceState } from '../../src/fsm/states.js';
import { MigrationCore } from '../../src/fsm/core.js';
import { spawnDeviceHost } from '../../src/devices/host.js';
import type { HostedDevice } from '../../src/devices/host.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { listenTransport } from '../../src/transport/index.js';

const S = DeviceState;
const hosts: HostedDevice[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

async function host(device: 'sim' | 'mtty', options: Record<string, unknown>): Promise<HostedDevice> {
  const h = await spawnDeviceHost({ device, options });
  hosts.push(h);
  return h;
}

async function run(src: HostedDevice[], dst: HostedDevice[]) {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-hostmig-'));
  const listener = await listenTransport(`unix:${join(dir, 'm.sock')}`);
  try {
    const incoming = receive({ devices: dst.map((d) => new MigrationCore(d)), transport: () => listener.accept() });
    const outgoing = migrate({ devices: src.map((d) => new MigrationCore(d)), transport: listener.url, downtimeLimitMs: 2000 });
    const [s, d] = await Promise.all([outgoing.done, incoming.done]);
    return { s, d };
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('migrate/receive with hosted devices on FIFO data fds', () => {
  it('a SimDevice with a running workload and an MttyDevice move together, verified', async () => {
    const simOpts = { size: 16 << 20, flags: 0x7, seed: 21, profile: 'mixed' };
    const [a, b, m1, m2] = await Promise.all([
      host('sim', { ...simOpts, dirtyRate: 2 << 20 }),
      host('sim', simOpts),
      host('mtty', { ports: 2 }),
      host('mtty', { ports: 2 }),
    ]);
    const { s, d } = await run([a, m1], [b, m2]);
    expect(s.verified).toBe(true);
    expect(d.verified).toBe(true);
    expect(await b.digest()).toBe(await a.digest());
    expect(await m2.digest()).toBe(await m1.digest());
    expect(await a.getState()).toBe(S.STOP);
    expect(await b.getState()).toBe(S.RUNNING);
    // Every session was closed by its user: nothing is left open in either host.
    for (const h of [a, b, m1, m2]) expect(h.sessions.every((x) => x.disabled)).toBe(true);
  });
});
