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
import { MigError } from '../../src/fsm/errors.js';
import type { MigrationPhase } from '../../src/migration/control.js';

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

/**
 * A device host process killed (SIGKILL) as a migration enters each phase: the device and its data
 * fds vanish mid-migration. Both sides must settle with typed errors (no hang on a FIFO whose other
 * end died), and the side that lost its device says so: the source 'failed' (it could not be
 * restored), unless the loss came after the destination took the state. The other side's device
 * ends as its report says.
 */
describe('a device host killed at each phase of a migration', () => {
  const PHASES: MigrationPhase[] = ['precopy', 'switchover', 'stop-copy', 'validate', 'resume'];
  const simOpts = { size: 8 << 20, flags: 0x7, seed: 5, profile: 'mixed', dirtyRate: 1 << 20 };

  async function killedAt(side: 'source' | 'destination', phase: MigrationPhase) {
    const [a, b] = await Promise.all([host('sim', simOpts), host('sim', { ...simOpts, dirtyRate: 0 })]);
    const victim = side === 'source' ? a : b;
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-hostkill-'));
    const listener = await listenTransport(`unix:${join(dir, 'm.sock')}`);
    try {
      const srcCore = new MigrationCore(a);
      const dstCore = new MigrationCore(b);
      const incoming = receive({ devices: [dstCore], transport: listener, stallTimeoutMs: 5000 });
      const outgoing = migrate({ devices: [srcCore], transport: listener.url, downtimeLimitMs: 2000, stallTimeoutMs: 5000 });
      const watched = side === 'source' ? outgoing : incoming;
      watched.on('phase', (e: { phase: MigrationPhase }) => {
        if (e.phase === phase) process.kill(victim.pid, 'SIGKILL');
      });
      const settle = <T,>(p: Promise<T>) =>
        p.then(
          (v) => v,
          (e: unknown) => {
            expect(e).toBeInstanceOf(MigError);
            return e as MigError;
          },
        );
      const [s, d] = await Promise.all([settle(outgoing.done), settle(incoming.done)]);
      return { s, d, srcCore, dstCore };
    } finally {
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it.each(PHASES)("the source's host killed as the source enters %s", async (phase) => {
    const { s, d, dstCore } = await killedAt('source', phase);
    // A host that dies after the destination took the state loses nothing: the migration
    // succeeded, and the summary says the source device could not be stopped; before, the source's
    // device is gone and says so, and the destination resets.
    if (!(s instanceof MigError)) {
      expect(d).not.toBeInstanceOf(MigError);
      expect(await dstCore.getState()).toBe(S.RUNNING);
      if (phase === 'validate' || phase === 'resume') expect(s.devices[0].sourceError?.code).toBe('VFIO_MIG_ERR_TRANSPORT');
      return;
    }
    expect(typeof s.code).toBe('string');
    if (s.recovery === 'failed') {
      expect(d instanceof MigError && d.recovery).toBe('reset');
      expect(await dstCore.getState()).toBe(S.RUNNING);
    } else {
      // Past 'validated': the source no longer needs its device; the destination runs or holds the state.
      expect(s.recovery).toBe('held');
      if (!(d instanceof MigError)) expect(await dstCore.getState()).toBe(S.RUNNING);
      else expect(['held', 'none']).toContain(d.recovery);
    }
  }, 30_000);

  it.each(PHASES)("the destination's host killed as the source enters %s", async (phase) => {
    const { s, d, srcCore } = await killedAt('destination', phase);
    if (!(d instanceof MigError)) {
      // The destination had resumed before its host died: the migration succeeded.
      expect(s).not.toBeInstanceOf(MigError);
      return;
    }
    expect(typeof d.code).toBe('string');
    if (!(s instanceof MigError)) return; // the source finished before the loss reached it
    if (s.recovery === 'recovered') {
      // Before the handover: the source runs its state again, intact.
      expect(await srcCore.getState()).toBe(S.RUNNING);
    } else {
      // Past it: the source holds the state, stopped, for its caller to resume.
      expect(s.recovery).toBe('held');
      expect(await srcCore.getState()).not.toBe(S.RUNNING);
    }
  }, 30_000);
});
