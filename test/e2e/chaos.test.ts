/**
 * Seeded random faults over whole migrations, and the invariants that must hold after each,
 * whatever the fault and wherever it struck:
 *
 * - never both sides running the state (the source's devices RUNNING while the destination's
 *   resumed with what they loaded);
 * - nothing lost: the source runs its state intact, or the destination runs a verified copy, or a
 *   side that reports 'held' holds it, stopped, with the source's digest;
 * - every failure a MigError with a code and a recovery, and that recovery true of the devices;
 * - both sides settle (no hang).
 *
 * Faults: a connection (the main one, or an extra channel) cut at a random byte of either
 * direction or frozen there (no more bytes read or forwarded that way, the connection left open:
 * a hung peer), a byte of the forward stream flipped, either side aborted or a device of either
 * side reset by its caller at a random moment, a source device resetting itself mid-stream, an
 * arc of either side failing, a device read or write failing after a random byte count; with 1-2
 * devices of any capability word, 1 or 3 channels, with or without zstd, a workload, a bandwidth
 * cap, a downtime limit the policy must abort at, a REINIT in PRE_COPY; with zstd, a destination
 * decompressing in a pool of one worker, booted before or booting. Real unix sockets through
 * a proxy that applies the wire faults. A failing seed is printed in the assertion message;
 * `CHAOS_SEEDS=N` runs more of them (1500 passed in ~6 min), `CHAOS_SEED=K` only seed K, printing
 * both sides' arcs and resets, and `CHAOS_REPEAT=N` each seed N times (its timing faults land where
 * they land). A run that does not settle names its step and each side's phase or outcome.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MigrationCore } from '../../src/fsm/core.js';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState, stateName } from '../../src/fsm/states.js';
import { SimDevice, type SimFaults } from '../../src/devices/sim-device.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import type { MigrationSummary } from '../../src/migration/summary.js';
import { listenTransport } from '../../src/transport/index.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';

const S = DeviceState;
const MiB = 1024 * 1024;
const SIZE = 2 * MiB;
const SEEDS = Number(process.env.CHAOS_SEEDS ?? 60);
// CHAOS_REPEAT=N runs each seed N times: a seed's timing faults land where they land.
const REPEAT = Number(process.env.CHAOS_REPEAT ?? 1);
const RECOVERIES = new Set(['recovered', 'reset', 'held', 'none', 'failed']);

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** mulberry32: a small seeded PRNG, so that a failing seed replays. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Event = { kind: 'arc'; from: DeviceState; to: DeviceState } | { kind: 'reset' };

interface Side {
  sims: SimDevice[];
  cores: MigrationCore[];
  /** Per device, its arcs and resets in order. */
  log: Event[][];
}

function side(n: number, faults: (i: number) => SimFaults | undefined, flags = 0x7, dirtyRate = 0): Side {
  const sims: SimDevice[] = [];
  const cores: MigrationCore[] = [];
  const log: Event[][] = [];
  for (let i = 0; i < n; i++) {
    const sim = new SimDevice({ size: SIZE, seed: 11 + i, faults: faults(i), flags, dirtyRate });
    const core = new MigrationCore(sim);
    const events: Event[] = [];
    core.on('arc', (a) => events.push({ kind: 'arc', from: a.from, to: a.to }));
    core.on('reset', () => events.push({ kind: 'reset' }));
    sims.push(sim);
    cores.push(core);
    log.push(events);
  }
  cleanups.push(() => {
    for (const c of cores) c.detach();
    for (const s of sims) s.close();
  });
  return { sims, cores, log };
}

/** The destination device runs what it loaded: it left RESUMING, reached RUNNING, and was not reset since. */
function tookOver(events: Event[]): boolean {
  let loaded = false;
  let running = false;
  for (const e of events) {
    if (e.kind === 'reset') {
      loaded = false;
      running = false;
    } else if (e.from === S.RESUMING) {
      loaded = true;
    } else if (e.to === S.RUNNING && loaded) {
      running = true;
    }
  }
  return running;
}

/** Since the source's arcs after a failure past 'validated' are not awaited by it, wait until no arc is in flight. */
async function quiet(cores: MigrationCore[]): Promise<void> {
  for (let i = 0; i < 200 && cores.some((c) => c.busy); i++) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, 20));
}

interface Plan {
  devices: number;
  channels: number;
  zstd: boolean;
  /**
   * With zstd: the destination decompresses in a pool of one worker (fresh, closed after the run),
   * booted before the run ('warm': every frame goes to it) or not ('cold': it boots while the
   * first frames decompress on the event loop, and a fault may strike while it boots).
   */
  pool?: 'warm' | 'cold';
  /** Capability word of every device (0x7 all; 0x5 no P2P; 0x3 no PRE_COPY; 0x1 neither). */
  flags?: number;
  /** The source's workload, bytes/s: PRE_COPY rounds and a state that changes while it runs. */
  dirtyRate?: number;
  /** The policy's limit (1 ms: its aborts), and a cap on the wire. */
  limitMs?: number;
  bandwidth?: number;
  /** Wire faults: cut after this many bytes of a direction, or flip the forward byte at an offset. */
  cutForward?: number;
  cutBack?: number;
  /** ...or, after this many bytes of a direction, stop reading it and forward nothing more, the connection left open (a hung peer). */
  freezeForward?: number;
  freezeBack?: number;
  /** Which connection the wire faults strike, in accept order (0, the main one, unless set: an extra channel). */
  faultConn?: number;
  flipForward?: number;
  abortAfterMs?: number;
  /** receive()'s abort, or a caller's reset of a destination device, at a random moment. */
  dstAbortAfterMs?: number;
  dstResetAfterMs?: number;
  /** A caller's reset of a source device at a random moment. */
  srcResetAfterMs?: number;
  /** A source device reports REINIT (new initial data) at a random moment of PRE_COPY: not a fault, a path. */
  reinitAfterMs?: number;
  srcFaults?: SimFaults;
  dstFaults?: SimFaults;
}

const SRC_ARCS: [DeviceState, DeviceState][] = [
  [S.RUNNING, S.RUNNING_P2P],
  [S.RUNNING_P2P, S.PRE_COPY_P2P],
  [S.RUNNING, S.PRE_COPY],
  [S.PRE_COPY, S.PRE_COPY_P2P],
  [S.PRE_COPY_P2P, S.STOP_COPY],
  [S.STOP_COPY, S.STOP],
];
const DST_ARCS: [DeviceState, DeviceState][] = [
  [S.RUNNING_P2P, S.STOP],
  [S.STOP, S.RESUMING],
  [S.RESUMING, S.STOP],
  [S.STOP, S.RUNNING_P2P],
  [S.RUNNING_P2P, S.RUNNING],
];

/** A plan from a seed; `forward` and `back` are a clean run's byte counts, so that cuts land inside the stream. */
function plan(seed: number, forward: number, back: number): Plan {
  const r = prng(seed);
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const p: Plan = { devices: 1 + Math.floor(r() * 2), channels: r() < 0.3 ? 3 : 1, zstd: r() < 0.3 };
  // From a PRNG of its own, so that adding this choice left every earlier seed's plan as it was.
  if (p.zstd) {
    const q = prng(seed ^ 0x5eed)();
    if (q < 0.6) p.pool = q < 0.3 ? 'warm' : 'cold';
  }
  if (r() < 0.3) p.flags = pick([0x5, 0x3, 0x1]);
  if (r() < 0.3) p.dirtyRate = 8 * MiB;
  if (r() < 0.15) p.limitMs = 1;
  if (r() < 0.15) p.bandwidth = 50e6;
  if (r() < 0.2) p.reinitAfterMs = r() * 30;
  // With channels, a wire fault strikes an extra channel half the time.
  if (p.channels > 1 && r() < 0.5) p.faultConn = 1 + Math.floor(r() * (p.channels - 1));
  const fault = pick(['cutForward', 'cutBack', 'freezeForward', 'freezeBack', 'flipForward', 'abort', 'dstAbort', 'dstReset', 'srcReset', 'srcCoreReset', 'srcArc', 'dstArc', 'srcRead', 'dstWrite'] as const);
  switch (fault) {
    case 'cutForward':
      p.cutForward = Math.floor(r() * forward);
      break;
    case 'cutBack':
      p.cutBack = Math.floor(r() * back);
      break;
    case 'freezeForward':
      p.freezeForward = Math.floor(r() * forward);
      break;
    case 'freezeBack':
      p.freezeBack = Math.floor(r() * back);
      break;
    case 'flipForward':
      p.flipForward = Math.floor(r() * forward);
      break;
    case 'abort':
      p.abortAfterMs = r() * 60;
      break;
    case 'dstAbort':
      p.dstAbortAfterMs = r() * 60;
      break;
    case 'dstReset':
      p.dstResetAfterMs = r() * 60;
      break;
    case 'srcCoreReset':
      p.srcResetAfterMs = r() * 60;
      break;
    case 'srcReset':
      // The source device resets itself (a driver-initiated reset) after this many bytes read.
      p.srcFaults = { resetAfterBytes: Math.floor(r() * SIZE) };
      break;
    case 'srcArc': {
      const [from, to] = pick(SRC_ARCS);
      p.srcFaults = { arc: { from, to, code: 'EIO', toError: r() < 0.3 } };
      break;
    }
    case 'dstArc': {
      const [from, to] = pick(DST_ARCS);
      p.dstFaults = { arc: { from, to, code: 'EIO', toError: r() < 0.3 } };
      break;
    }
    case 'srcRead':
      p.srcFaults = { readError: { afterBytes: Math.floor(r() * SIZE), code: 'EIO' } };
      break;
    case 'dstWrite':
      p.dstFaults = { writeError: { afterBytes: Math.floor(r() * SIZE), code: 'EIO' } };
      break;
  }
  return p;
}

interface Outcome {
  src: Side;
  dst: Side;
  before: string[];
  srcResult: MigrationSummary | MigError;
  dstResult: MigrationSummary | MigError;
  forward: number;
  back: number;
}

/** A side's outcome in a line. */
const what = (r: MigrationSummary | MigError) => (r instanceof MigError ? `${r.code} in ${r.phase}, recovery ${r.recovery}` : 'ok');

/** Where the current run is, for the message of one that does not settle. */
const progress = { step: '', source: () => '', destination: () => '' };

async function run(p: Plan): Promise<Outcome> {
  progress.step = 'setting up';
  progress.source = () => 'not started';
  progress.destination = () => 'not started';
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-chaos-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const listener = await listenTransport(`unix:${join(dir, 'd.sock')}`);
  cleanups.push(() => listener.close());
  // Each connection's bytes are counted; the wire faults strike one of them (the main one unless
  // the plan names an extra channel), and a cut or a closed socket ends that connection alone: the
  // migration must notice and close the others itself.
  const counts: { forward: number; back: number }[] = [];
  const socks: net.Socket[] = [];
  const cutAll = () => socks.forEach((s) => s.destroy());
  /** Relay `from` to `to`, with one direction's faults when `faulted`; `cut` ends this connection. */
  const relay = (from: net.Socket, to: net.Socket, count: { forward: number; back: number }, faulted: boolean, dir: 'forward' | 'back', cut: () => void, cutAt?: number, freezeAt?: number, flipAt?: number) => {
    from.on('data', (chunk: Buffer) => {
      const seen = count[dir];
      if (faulted) {
        if (cutAt !== undefined && seen + chunk.length > cutAt) {
          to.write(chunk.subarray(0, cutAt - seen));
          count[dir] = cutAt;
          return cut();
        }
        if (freezeAt !== undefined && seen + chunk.length > freezeAt) {
          if (seen < freezeAt) to.write(chunk.subarray(0, freezeAt - seen));
          count[dir] = freezeAt;
          from.pause();
          return;
        }
        if (flipAt !== undefined && seen <= flipAt && flipAt < seen + chunk.length) {
          chunk = Buffer.from(chunk);
          chunk[flipAt - seen] ^= 0x5a;
        }
      }
      count[dir] += chunk.length;
      to.write(chunk);
    });
  };
  const server = net.createServer((down) => {
    const up = net.connect(listener.address);
    socks.push(down, up);
    const count = { forward: 0, back: 0 };
    const faulted = counts.length === (p.faultConn ?? 0);
    counts.push(count);
    const cut = () => {
      down.destroy();
      up.destroy();
    };
    relay(down, up, count, faulted, 'forward', cut, p.cutForward, p.freezeForward, p.flipForward);
    relay(up, down, count, faulted, 'back', cut, p.cutBack, p.freezeBack);
    for (const s of [up, down]) {
      s.on('error', cut);
      s.on('close', cut);
    }
  });
  const proxyPath = join(dir, 'p.sock');
  await new Promise<void>((r) => server.listen(proxyPath, r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  cleanups.push(cutAll);

  const src = side(p.devices, () => p.srcFaults, p.flags, p.dirtyRate);
  const dst = side(p.devices, () => p.dstFaults, p.flags);
  const before = src.sims.map((s) => s.digest());
  // A hung peer is found by the stall timeout: shorter where the plan hangs one, to keep the suite quick.
  const stallTimeoutMs = p.freezeForward !== undefined || p.freezeBack !== undefined ? 1500 : 3000;
  // Closed once both sides settled (the cleanup closes it too if the run threw before that).
  const pool = p.pool !== undefined ? new CompressionPool({ size: 1 }) : null;
  if (pool !== null) cleanups.push(() => pool.close());
  if (p.pool === 'warm') await pool!.warm();
  const incoming = receive({ devices: dst.cores, transport: listener, stallTimeoutMs, decompressionPool: pool });
  const m = migrate({
    devices: src.cores,
    transport: `unix:${proxyPath}`,
    channels: p.channels,
    compression: p.zstd ? 'zstd' : 'none',
    downtimeLimitMs: p.limitMs ?? 2000,
    bandwidth: p.bandwidth,
    acceptP2PRisk: ((p.flags ?? 0x7) & 0x2) === 0,
    stallTimeoutMs,
  });
  const timers: NodeJS.Timeout[] = [];
  if (p.abortAfterMs !== undefined) timers.push(setTimeout(() => m.abort(), p.abortAfterMs));
  if (p.dstAbortAfterMs !== undefined) timers.push(setTimeout(() => incoming.abort(), p.dstAbortAfterMs));
  // A reset once the device runs the migrated state is the caller's business, not the migration's: only before.
  // After the source is done its devices are the caller's: a reset then runs them again, rightly.
  let srcSettled = false;
  m.done.then(
    () => (srcSettled = true),
    () => (srcSettled = true),
  );
  if (p.reinitAfterMs !== undefined) {
    timers.push(
      setTimeout(() => {
        try {
          src.sims[0].raiseReinit();
        } catch {
          // Not in PRE_COPY (yet, or any more, or a device without it): nothing to reinit.
        }
      }, p.reinitAfterMs),
    );
  }
  if (p.srcResetAfterMs !== undefined) timers.push(setTimeout(() => !srcSettled && void src.cores[0].reset().catch(() => {}), p.srcResetAfterMs));
  if (p.dstResetAfterMs !== undefined) timers.push(setTimeout(() => !tookOver(dst.log[0]) && void dst.cores[0].reset().catch(() => {}), p.dstResetAfterMs));
  const settle = (d: Promise<MigrationSummary>) => d.catch((e: unknown) => e as MigError);
  progress.source = () => `phase ${m.phase}`;
  progress.destination = () => `phase ${incoming.phase}`;
  m.done.then(
    (r) => (progress.source = () => `settled: ${what(r)}`),
    (e: MigError) => (progress.source = () => `settled: ${what(e)}`),
  );
  incoming.done.then(
    (r) => (progress.destination = () => `settled: ${what(r)}`),
    (e: MigError) => (progress.destination = () => `settled: ${what(e)}`),
  );
  // A destination behind a listener waits for its source as long as it takes (docs/migration.md):
  // a source that failed before its hello reached it (aborted while connecting; a connection that
  // brought no hello is dropped as a stray, after up to the stall timeout) leaves it waiting,
  // rightly. Its caller gives up then, as the test does once the source has settled and the
  // destination is back to waiting for a connection; it must settle untouched ('none').
  let giveUp: NodeJS.Timeout | undefined;
  void settle(m.done).then(() => {
    giveUp = setInterval(() => {
      if (incoming.phase !== 'connect') return;
      clearInterval(giveUp);
      progress.step = 'the destination aborted (no source came)';
      incoming.abort('no source came: the caller gives up');
    }, 250);
  });
  progress.step = 'waiting for both sides';
  const [srcResult, dstResult] = await Promise.all([settle(m.done), settle(incoming.done)]);
  clearInterval(giveUp);
  progress.step = 'closing';
  for (const t of timers) clearTimeout(t);
  cutAll();
  // Whatever the fault left in the pool (jobs in flight, a worker still booting), its close settles.
  await pool?.close();
  await quiet([...src.cores, ...dst.cores]);
  return { src, dst, before, srcResult, dstResult, forward: counts[0]?.forward ?? 0, back: counts[0]?.back ?? 0 };
}

async function check(seed: number, p: Plan, o: Outcome): Promise<void> {
  const srcStates = await Promise.all(o.src.cores.map((c) => c.getState()));
  const dstStates = await Promise.all(o.dst.cores.map((c) => c.getState()));
  const took = o.dst.log.map(tookOver);
  const srcDigests = o.src.sims.map((s) => s.digest());
  const dstDigests = o.dst.sims.map((s) => s.digest());
  if (process.env.CHAOS_SEED !== undefined) {
    const show = (log: Event[][]) => JSON.stringify(log.map((l) => l.map((e) => (e.kind === 'arc' ? `${stateName(e.from)}>${stateName(e.to)}` : 'reset'))));
    console.log(`source ${show(o.src.log)}\ndestination ${show(o.dst.log)}`);
  }
  const ctx = `seed ${seed} ${JSON.stringify(p)}: source ${what(o.srcResult)} [${srcStates.map(stateName)}], destination ${what(o.dstResult)} [${dstStates.map(stateName)}] took over ${took}`;

  for (const r of [o.srcResult, o.dstResult]) {
    if (!(r instanceof MigError)) continue;
    expect(typeof r.code, ctx).toBe('string');
    expect(r.code, ctx).toMatch(/^(VFIO_MIG_ERR_[A-Z_]+|E[A-Z0-9]+)$/);
    expect(RECOVERIES.has(r.recovery ?? ''), ctx).toBe(true);
  }
  // The migration never changes the source's state: without a workload it is intact whatever
  // happened (with one it changes while it runs, rightly).
  if (!p.dirtyRate) expect(srcDigests, ctx).toEqual(o.before);
  for (let i = 0; i < p.devices; i++) {
    // Never both sides running the state.
    expect(srcStates[i] === S.RUNNING && took[i], ctx).toBe(false);
    // Nothing lost: someone runs it, or someone holds it (the source always holds it intact, so a
    // source that does not run it must be stopped holding it, or the destination must run it).
    const srcHolds = srcStates[i] === S.RUNNING || srcStates[i] === S.STOP || srcStates[i] === S.STOP_COPY;
    // Except a device that failed into ERROR on its own: the source says so ('failed') and leaves
    // the reset, which loses the state, to the caller.
    const srcBroke = srcStates[i] === S.ERROR && o.srcResult instanceof MigError && o.srcResult.recovery === 'failed';
    expect(srcHolds || took[i] || srcBroke, ctx).toBe(true);
    // What the destination runs is the source's frozen state (a source past STOP_COPY stays
    // stopped), unless a reset ran the source device again after its state was read, with its
    // workload (then the summary's verification is the check: the digest taken in STOP_COPY).
    const srcRanAgain = p.dirtyRate !== undefined && (p.srcResetAfterMs !== undefined || p.srcFaults?.resetAfterBytes !== undefined);
    if (took[i] && !srcRanAgain) expect(dstDigests[i], ctx).toBe(srcDigests[i]);
  }
  // What each side reported is true of its devices.
  if (!(o.srcResult instanceof MigError)) {
    expect(o.srcResult.verified, ctx).toBe(true);
    expect(took.every(Boolean), ctx).toBe(true);
    // Stopped, or its own arc out of STOP_COPY failed afterwards, as its summary says; never running.
    srcStates.forEach((st, i) => {
      const summary = o.srcResult as MigrationSummary;
      if (st !== S.STOP) expect(summary.devices[i].sourceError, ctx).toBeDefined();
      expect(st, ctx).not.toBe(S.RUNNING);
    });
  } else if (o.srcResult.recovery === 'recovered') {
    expect(srcStates.every((s) => s === S.RUNNING), ctx).toBe(true);
  } else if (o.srcResult.recovery === 'held') {
    expect(srcStates.every((s) => s !== S.RUNNING), ctx).toBe(true);
  }
  if (!(o.dstResult instanceof MigError)) {
    expect(took.every(Boolean), ctx).toBe(true);
    expect(dstStates.every((s) => s === S.RUNNING), ctx).toBe(true);
  } else if (o.dstResult.recovery === 'reset') {
    expect(took.some(Boolean), ctx).toBe(false);
    expect(dstStates.every((s) => s === S.RUNNING), ctx).toBe(true);
  } else if (o.dstResult.recovery === 'held') {
    expect(took.some(Boolean), ctx).toBe(false);
    expect(dstStates.every((s) => s === S.STOP), ctx).toBe(true);
    if (!p.dirtyRate) expect(dstDigests, ctx).toEqual(o.before);
  } else if (o.dstResult.recovery === 'none' && o.dstResult.phase === 'connect') {
    // No source's hello reached it (the test gave up waiting): its devices never moved.
    expect(o.dst.log.every((l) => l.length === 0), ctx).toBe(true);
  }
  // A destination left holding the state means the source may or may not run it; a source that
  // rolled back must not find the destination running it (checked above), and a source that
  // released it must not run it again.
  if (o.srcResult instanceof MigError && o.srcResult.recovery === 'held') expect(srcStates.includes(S.RUNNING), ctx).toBe(false);
}

describe('chaos: seeded faults over whole migrations', () => {
  it(`${SEEDS} seeds: never both running, nothing lost, every error typed and true`, async () => {
    // A clean run first: the byte counts the cuts are drawn from.
    const clean = await run({ devices: 2, channels: 1, zstd: false });
    await check(0, { devices: 2, channels: 1, zstd: false }, clean);
    expect(clean.srcResult).not.toBeInstanceOf(MigError);
    const counts = new Map<string, number>();
    const only = process.env.CHAOS_SEED === undefined ? null : Number(process.env.CHAOS_SEED);
    for (let k = (only ?? 1) * REPEAT; k < ((only ?? SEEDS) + 1) * REPEAT; k++) {
      const seed = Math.floor(k / REPEAT);
      const p = plan(seed, clean.forward, clean.back);
      // Both sides settle: the stall timeout (3 s) bounds every wait, so 15 s means a hang.
      let hung: NodeJS.Timeout | undefined;
      const o = await Promise.race([
        run(p),
        new Promise<never>(
          (_, reject) =>
            (hung = setTimeout(
              () => reject(new Error(`seed ${seed} ${JSON.stringify(p)}: no outcome within 15 s (${progress.step}; source ${progress.source()}; destination ${progress.destination()})`)),
              15_000,
            )),
        ),
      ]).finally(() => clearTimeout(hung));
      await check(seed, p, o);
      const key = o.srcResult instanceof MigError ? `source ${o.srcResult.recovery}` : 'migrated';
      counts.set(key, (counts.get(key) ?? 0) + 1);
      for (const c of cleanups.splice(0).reverse()) await c();
    }
    // The faults must have struck: most seeds fail, and more than one way.
    if (only === null) expect([...counts.keys()].length, JSON.stringify([...counts])).toBeGreaterThanOrEqual(2);
  }, Math.max(240_000, (process.env.CHAOS_SEED === undefined ? SEEDS : 1) * REPEAT * 1000));
});
