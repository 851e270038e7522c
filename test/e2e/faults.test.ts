/**
 * The fault matrix: every failure before the destination's acknowledgement leaves every source
 * device RUNNING with its state intact and the destination's devices reset, and names the phase.
 * Real unix sockets; the destination runs in this process (so its resets can be observed) except
 * where it is killed, which needs a child process.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState } from '../../src/fsm/states.js';
import type { SimDeviceOptions } from '../../src/devices/sim-device.js';
import { receive } from '../../src/migration/destination.js';
import { decisionNumbers, type Decision, type PolicySnapshot } from '../../src/migration/policy.js';
import { migrate, type MigrateOptions } from '../../src/migration/source.js';
import { listenTransport } from '../../src/transport/index.js';
import { MiB, ensureBuilt, makeSims, runCli, simArgs, startReceiver, type Sims } from './helpers.js';

const S = DeviceState;
const SIZE = 8 * MiB;

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

interface Case {
  src?: Partial<SimDeviceOptions>;
  dst?: Partial<SimDeviceOptions>;
  opts?: Partial<MigrateOptions>;
  /** Put a byte-flipping proxy between source and destination (flip the forward byte at this offset). */
  corruptAt?: number;
  /** Called with the run once it started (abort it, etc.). */
  during?: (run: ReturnType<typeof migrate>) => void;
  /** Called with the source devices before the run starts. */
  onSims?: (src: Sims) => void;
}

async function failingMigration(c: Case): Promise<{ err: MigError; src: Sims; dst: Sims; before: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-fault-'));
  const src = makeSims(1, { size: SIZE, ...c.src });
  const dst = makeSims(1, { size: SIZE, ...c.dst });
  const before = src.sims.map((s) => s.digest());
  c.onSims?.(src);
  const listener = await listenTransport(`unix:${join(dir, 'd.sock')}`);
  let proxy: net.Server | null = null;
  let url = listener.url;
  try {
    if (c.corruptAt !== undefined) {
      const at = c.corruptAt;
      proxy = net.createServer((down) => {
        const up = net.connect(listener.address);
        let seen = 0;
        const flip = new Transform({
          transform(chunk: Buffer, _e, cb) {
            if (seen <= at && at < seen + chunk.length) {
              chunk = Buffer.from(chunk);
              chunk[at - seen] ^= 0x5a;
            }
            seen += chunk.length;
            cb(null, chunk);
          },
        });
        down.pipe(flip).pipe(up);
        up.pipe(down);
        up.on('error', () => down.destroy());
        down.on('error', () => up.destroy());
        up.on('close', () => down.destroy());
        down.on('close', () => up.destroy());
      });
      const p = join(dir, 'proxy.sock');
      await new Promise<void>((r) => proxy!.listen(p, r));
      url = `unix:${p}`;
    }
    const incoming = receive({ devices: dst.cores, transport: () => listener.accept(), accept: () => listener.accept(), stallTimeoutMs: 5000 });
    const run = migrate({ devices: src.cores, transport: url, downtimeLimitMs: 500, stallTimeoutMs: 5000, ...c.opts });
    c.during?.(run);
    const err = await run.done.then(
      () => null,
      (e: unknown) => e,
    );
    await incoming.done.catch(() => {});
    expect(err).toBeInstanceOf(MigError);
    return { err: err as MigError, src, dst, before };
  } finally {
    await listener.close();
    proxy?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A source SimDevice with a workload and a destination one, joined through a unix-socket proxy
 * whose `relay` wires each connection (`down` from the source, `up` to the destination's
 * listener); the destination's receive() runs with a long stall timeout and is aborted after
 * `body`. Everything is closed and removed afterwards.
 */
async function throughProxy(size: number, relay: (down: net.Socket, up: net.Socket) => void, body: (src: Sims, dst: Sims, url: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-fault-'));
  const src = makeSims(1, { size, dirtyRate: 8 * MiB });
  const dst = makeSims(1, { size });
  const listener = await listenTransport(`unix:${join(dir, 'd.sock')}`);
  const socks: net.Socket[] = [];
  const proxy = net.createServer((down) => {
    const up = net.connect(listener.address);
    socks.push(down, up);
    for (const x of [up, down]) x.on('error', () => {});
    relay(down, up);
  });
  await new Promise<void>((r) => proxy.listen(join(dir, 'p.sock'), r));
  const incoming = receive({ devices: dst.cores, transport: listener, stallTimeoutMs: 30_000 });
  incoming.done.catch(() => {});
  try {
    await body(src, dst, `unix:${join(dir, 'p.sock')}`);
  } finally {
    incoming.abort();
    await incoming.done.catch(() => {});
    for (const x of socks) x.destroy();
    proxy.close();
    src.close();
    dst.close();
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The invariant every case checks. */
async function expectRolledBack(r: { err: MigError; src: Sims; dst: Sims; before: string[] }, phase: string, code?: string) {
  expect(r.err.phase).toBe(phase);
  if (code) expect(r.err.code).toBe(code);
  expect(r.err.recovery).toBe('recovered');
  expect(r.src.sims.map((s) => s.digest())).toEqual(r.before);
  await expectBothRunning(r);
}

/** Every source device RUNNING, the destination's devices reset and RUNNING; closes both sides. */
async function expectBothRunning(r: { src: Sims; dst: Sims }) {
  for (const c of r.src.cores) expect(await c.getState()).toBe(S.RUNNING);
  expect(r.dst.resets.length).toBeGreaterThan(0);
  for (const c of r.dst.cores) expect(await c.getState()).toBe(S.RUNNING);
  r.src.close();
  r.dst.close();
}

describe('fault matrix: rollback before the acknowledgement', () => {
  it('corrupt record on the wire: the destination refuses it, both sides roll back', async () => {
    const r = await failingMigration({ corruptAt: 3 * MiB });
    await expectRolledBack(r, 'precopy', 'VFIO_MIG_ERR_CORRUPT');
  });

  it('failed validation at the destination (RESUMING -> STOP)', async () => {
    const r = await failingMigration({ dst: { faults: { arc: { from: S.RESUMING, to: S.STOP, code: 'EINVAL' } } } });
    await expectRolledBack(r, 'validate', 'EINVAL');
  });

  it('a destination that stops reading: the stall rolls the source back, and done settles although its queue never drains', async () => {
    // A proxy forwards the first 4 MiB, then stops reading the source's connection and keeps it
    // open: the source's socket buffer and queues fill, nothing progresses, the stall timeout
    // fails the migration. The rollback waited for the device pumps, which waited on that queue
    // (found by the chaos test, seed 134): done never settled, the devices already RUNNING.
    const relay = (down: net.Socket, up: net.Socket) => {
      let seen = 0;
      down.on('data', (chunk: Buffer) => {
        if (seen >= 4 * MiB) return;
        seen += chunk.length;
        up.write(chunk);
        if (seen >= 4 * MiB) down.pause();
      });
      up.pipe(down);
    };
    await throughProxy(64 * MiB, relay, async (src, dst, url) => {
      const run = migrate({ devices: src.cores, transport: url, downtimeLimitMs: 500, stallTimeoutMs: 800 });
      const err = await run.done.then(
        () => null,
        (e: unknown) => e as MigError,
      );
      expect(err).toBeInstanceOf(MigError);
      expect(err!.code).toBe('VFIO_MIG_ERR_STALLED');
      expect(err!.recovery).toBe('recovered');
      expect(await src.cores[0].getState()).toBe(S.RUNNING);
    });
  }, 30_000);

  it("a return path gone silent while PRE_COPY goes on: the source stalls on the missing switchover-ack, not at the PRE_COPY budget", async () => {
    // A proxy drops the destination's switchover-ack and everything after it on the way back,
    // the connection left open. The source keeps sending (its workload dirties), so the stall
    // watchdog saw progress and only the policy's 60 s PRE_COPY budget ended the wait.
    const relay = (down: net.Socket, up: net.Socket) => {
      let silent = false;
      down.pipe(up);
      up.on('data', (chunk: Buffer) => {
        if (chunk.includes(Buffer.from('"type":"switchover-ack"'))) silent = true;
        if (!silent) down.write(chunk);
      });
    };
    await throughProxy(4 * MiB, relay, async (src, dst, url) => {
      const t0 = performance.now();
      const run = migrate({ devices: src.cores, transport: url, downtimeLimitMs: 500, stallTimeoutMs: 1000 });
      const err = await run.done.then(
        () => null,
        (e: unknown) => e as MigError,
      );
      expect(err).toBeInstanceOf(MigError);
      expect(err!.code).toBe('VFIO_MIG_ERR_STALLED');
      expect(err!.phase).toBe('precopy');
      expect(err!.message).toMatch(/no message from the destination for 1000 ms .*switchover-ack/);
      expect(performance.now() - t0).toBeLessThan(10_000);
      expect(err!.recovery).toBe('recovered');
      expect(await src.cores[0].getState()).toBe(S.RUNNING);
      // The source's abort went through (the forward path works): the destination reset.
      for (let i = 0; i < 100 && dst.resets.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(dst.resets.length).toBeGreaterThan(0);
    });
  }, 30_000);

  it('failed validation with the data on three channels', async () => {
    const r = await failingMigration({ opts: { channels: 3 }, dst: { faults: { arc: { from: S.RESUMING, to: S.STOP, code: 'EINVAL' } } } });
    await expectRolledBack(r, 'validate', 'EINVAL');
  });

  it('failed source arc at the switchover (PRE_COPY_P2P -> STOP_COPY)', async () => {
    const r = await failingMigration({ src: { faults: { arc: { from: S.PRE_COPY_P2P, to: S.STOP_COPY, code: 'EIO' } } } });
    await expectRolledBack(r, 'switchover', 'EIO');
    expect(r.err.device).toBe(0);
  });

  it('abort signal during PRE_COPY', async () => {
    const ac = new AbortController();
    const r = await failingMigration({
      src: { generationRate: 8 * MiB },
      opts: { signal: ac.signal },
      during: (run) => run.on('progress', (p) => p.bytes > MiB && ac.abort('test')),
    });
    await expectRolledBack(r, 'precopy', 'VFIO_MIG_ERR_ABORTED');
  });

  // A workload at half the cap keeps data pending, so the switchover finds the queues full (~50 ms
  // of the cap) and drains them while the devices run; the fault comes in the middle of that.
  const draining = { src: { dirtyRate: 8 * MiB }, opts: { bandwidth: 16_000_000, downtimeLimitMs: 500 } };

  it('abort signal during the switchover drain: nothing stopped, the source keeps running', async () => {
    const ac = new AbortController();
    const r = await failingMigration({
      ...draining,
      opts: { ...draining.opts, signal: ac.signal },
      during: (run) => run.on('phase', (p) => p.phase === 'switchover' && setImmediate(() => ac.abort('test'))),
    });
    expect(r.err.phase).toBe('switchover');
    expect(r.err.code).toBe('VFIO_MIG_ERR_ABORTED');
    expect(r.err.recovery).toBe('recovered');
    // The drain comes before any device stops: no arc into PRE_COPY_P2P or STOP_COPY.
    const to = r.src.arcs.map(([, , t]) => t);
    expect(to[0]).toBe(S.PRE_COPY);
    expect(to).not.toContain(S.PRE_COPY_P2P);
    expect(to).not.toContain(S.STOP_COPY);
    await expectBothRunning(r);
  });

  it('a source device reset during the switchover drain fails the migration (ENODEV), the source device running', async () => {
    let src: Sims | null = null;
    const r = await failingMigration({
      ...draining,
      during: (run) => run.on('phase', (p) => p.phase === 'switchover' && setImmediate(() => void src?.cores[0].reset())),
      onSims: (s) => (src = s),
    });
    expect(r.err.phase).toBe('switchover');
    expect(r.err.code).toBe('ENODEV');
    expect(r.err.device).toBe(0);
    expect(r.src.arcs.map(([, , t]) => t)).not.toContain(S.STOP_COPY);
    await expectBothRunning(r);
  });

  it('the policy aborts when it decides again after the drain: nothing stopped, the source state intact', async () => {
    let said = '';
    const policy = {
      name: 'abort-after-drain',
      decide(snap: PolicySnapshot): Decision {
        const numbers = decisionNumbers(snap, snap.downtimeLimitMs);
        if (said === 'switchover') {
          said = 'abort';
          return { action: 'abort', reason: 'lower-bound-above-limit', message: 'changed its mind after the drain', numbers };
        }
        if (!(snap.initialSent && snap.switchoverAcked)) return { action: 'continue', reason: 'initial-pending', message: 'waiting', numbers };
        said = 'switchover';
        return { action: 'switchover', reason: 'within-limit', message: 'go', numbers };
      },
    };
    const r = await failingMigration({ ...draining, src: {}, opts: { ...draining.opts, policy } });
    expect(said).toBe('abort');
    await expectRolledBack(r, 'switchover', 'VFIO_MIG_ERR_POLICY_ABORT');
    expect(r.err.message).toMatch(/changed its mind after the drain/);
    // No device was stopped: PRE_COPY, then only the rollback's walk back to RUNNING.
    const to = r.src.arcs.map(([, , t]) => t);
    expect(to[0]).toBe(S.PRE_COPY);
    expect(to).not.toContain(S.PRE_COPY_P2P);
    expect(to).not.toContain(S.STOP_COPY);
  });

  it('policy abort: the PRE_COPY budget is spent at the capped bandwidth', async () => {
    const r = await failingMigration({ opts: { bandwidth: 2 * MiB, precopyBudgetMs: 400 } });
    await expectRolledBack(r, 'precopy', 'VFIO_MIG_ERR_POLICY_ABORT');
    expect(r.err.message).toMatch(/precopy-budget: PRE_COPY ran .* ms/);
  });

  it('no progress: a device read that never returns', async () => {
    const r = await failingMigration({ src: { faults: { stallRead: { afterBytes: 2 * MiB, ms: Infinity } } }, opts: { stallTimeoutMs: 800 } });
    await expectRolledBack(r, 'precopy', 'VFIO_MIG_ERR_STALLED');
  });

  it('the workload keeps running after a rollback', async () => {
    const ac = new AbortController();
    const r = await failingMigration({
      src: { dirtyRate: 8 * MiB },
      opts: { signal: ac.signal },
      during: (run) => run.on('phase', (p) => p.phase === 'precopy' && ac.abort('test')),
    });
    expect(r.err.code).toBe('VFIO_MIG_ERR_ABORTED');
    expect(await r.src.cores[0].getState()).toBe(S.RUNNING);
    const d0 = r.src.sims[0].digest();
    await new Promise((res) => setTimeout(res, 200));
    expect(r.src.sims[0].digest()).not.toBe(d0);
    r.src.close();
    r.dst.close();
  });

  it('killed destination process', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-kill-'));
    const dest = startReceiver(`unix:${join(dir, 'k.sock')}`, simArgs(1, 32 * MiB));
    const src = makeSims(1, { size: 32 * MiB, generationRate: 16 * MiB });
    const before = src.sims[0].digest();
    try {
      const run = migrate({ devices: src.cores, transport: await dest.url, downtimeLimitMs: 500 });
      let killed = false;
      run.on('progress', (p) => {
        if (!killed && p.bytes > 4 * MiB) {
          killed = true;
          dest.child.kill('SIGKILL');
        }
      });
      const err = await run.done.then(
        () => null,
        (e: unknown) => e as MigError,
      );
      expect(err).toBeInstanceOf(MigError);
      expect(err!.code).toBe('VFIO_MIG_ERR_TRANSPORT');
      expect(err!.phase).toBe('precopy');
      expect(err!.recovery).toBe('recovered');
      expect(await src.cores[0].getState()).toBe(S.RUNNING);
      expect(src.sims[0].digest()).toBe(before);
      expect((await dest.exit).signal).toBe('SIGKILL');
    } finally {
      src.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('killed source process: the destination resets its devices and names the phase', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-ksrc-'));
    const dst = makeSims(1, { size: 32 * MiB });
    const listener = await listenTransport(`unix:${join(dir, 'd.sock')}`);
    try {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      // A feasible migration (dirtying a quarter of what the device can be read at), so the kill, not
      // the policy, ends it: at the CLI's default 16 MiB/s of dirt it would be borderline infeasible.
      const src = runCli(['migrate', '--to', listener.url, '--size', String(32 * MiB), '--seed', '1', '--generation-rate', String(16 * MiB), '--dirty-rate', String(4 * MiB), '--json']);
      let killed = false;
      incoming.on('progress', (p) => {
        if (!killed && p.bytes > 4 * MiB) {
          killed = true;
          src.child.kill('SIGKILL');
        }
      });
      const err = await incoming.done.then(
        () => null,
        (e: unknown) => e as MigError,
      );
      expect(killed).toBe(true);
      expect(err).toBeInstanceOf(MigError);
      expect(err!.code).toBe('VFIO_MIG_ERR_TRANSPORT');
      expect(err!.phase).toBe('precopy');
      expect(err!.recovery).toBe('reset');
      expect(dst.resets.length).toBeGreaterThan(0);
      expect(await dst.cores[0].getState()).toBe(S.RUNNING);
      expect((await src.exit).signal).toBe('SIGKILL');
    } finally {
      dst.close();
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('incompatible devices are refused before any source device leaves RUNNING', async () => {
    const r = await failingMigration({ dst: { size: 2 * SIZE } });
    expect(r.err.code).toBe('VFIO_MIG_ERR_INCOMPATIBLE');
    expect(r.err.phase).toBe('handshake');
    expect(r.src.arcs).toEqual([]);
    expect(r.dst.arcs).toEqual([]);
    // Nor was a destination device reset: it was never asked to move.
    expect(r.dst.resets).toEqual([]);
    r.src.close();
    r.dst.close();
  });
});

describe('fault matrix: after the acknowledgement', () => {
  // Until 2026-12-08 the source ended 'held' here (its devices stopped with the state, the
  // caller to settle it) and the destination 'none', one device RUNNING_P2P and one STOP: neither
  // side ran the whole state and nothing told the source why.
  it('the destination fails to resume after the release: it resets its devices and gives the state back; the source runs it again', async () => {
    const r = await failingMigration({ dst: { faults: { arc: { from: S.STOP, to: S.RUNNING_P2P, code: 'EIO' } } } });
    expect(r.err.phase).toBe('resume');
    expect(r.err.code).toBe('EIO');
    expect(r.err.message).toMatch(/gave the state back/);
    expect(r.err.recovery).toBe('recovered');
    // The source's devices went STOP_COPY -> STOP at the switchover, and back to RUNNING: the
    // state the migration never changed.
    for (const c of r.src.cores) expect(await c.getState()).toBe(S.RUNNING);
    expect(r.src.sims.map((s) => s.digest())).toEqual(r.before);
    expect(r.src.arcs.map((a) => a.slice(1))).toContainEqual([S.STOP_COPY, S.STOP]);
    expect(r.src.arcs.at(-1)?.slice(2)).toEqual([S.RUNNING]);
    // The destination's device was reset (what it had loaded is not run there).
    expect(r.dst.resets.length).toBeGreaterThan(0);
    r.src.close();
    r.dst.close();
  });
});
