// One side of a bench/prediction.mjs cell: the orchestrator's migrate() (source) or receive()
// (destination) with a SimDevice, over a unix socket, in its own process. Not run by bench/run.mjs.
//
//   node _prediction-peer.mjs dest   '<cell JSON>'
//   node _prediction-peer.mjs source '<cell JSON>'
// cell: { socket, size, profile, seed, dirtyRate (bytes/s), bandwidth (wire bytes/s), compression
// ('none' | 'zstd'), limitMs, windowMs (the policy's non-convergence window), timeoutMs, blind }.
// blind: true runs the blind baseline instead of the default policy (BLIND_POLICY below).
// stalls: true records each side's event-loop stalls (stallRecorder below).
// warmUp: true makes the side call warmUp() first (the destination before it listens, the source
// before its clock starts, with the cell's compression), as docs/migration.md recommends.
// cpus: { source, dest } pins each side's main thread (pin() below).
// decompressionWorkers: N > 0 gives the destination's receive() a decompressionPool of N workers.
// Reports over IPC: the summary (predicted and measured downtime, totalMs since migrate() was
// called) or the abort with the decision that caused it and when it came (ms since migrate()).
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { PerformanceObserver } from 'node:perf_hooks';
import {
  CompressionPool,
  DefaultSwitchoverPolicy,
  DeviceState,
  MigrationCore,
  SimDevice,
  listenTransport,
  migrate,
  receive,
  warmUp,
} from '../dist/index.js';

/** Peak RSS of this process image, KiB (VmHWM; see _e2e-peer.mjs for why not getrusage). */
const maxRssKB = () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN);

/**
 * A migration without prediction: switch over as soon as the spec allows (initial data sent and
 * acknowledged), whatever the numbers say; only the downtime measured afterwards shows whether the
 * limit was met. What the default policy's early abort is measured against.
 */
const BLIND_POLICY = {
  name: 'blind',
  decide(s) {
    const ready = s.initialSent && s.switchoverAcked && !s.queryFailed;
    return { action: ready ? 'switchover' : 'continue', reason: ready ? 'within-limit' : 'initial-pending', message: 'blind', numbers: {} };
  },
};

/**
 * BENCH_PREDICTION_TRACE=FILE: every snapshot the policy is asked about, and its answer, one JSON line
 * each (ms since migrate(), the snapshot's scalars and prediction): how a verdict formed over time.
 */
function traced(policy, t0) {
  const file = process.env.BENCH_PREDICTION_TRACE;
  if (!file) return policy;
  const fd = fs.openSync(file, 'w');
  const scalars = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => typeof v !== 'object' || v === null));
  return {
    name: policy.name,
    decide(s) {
      const d = policy.decide(s);
      fs.writeSync(fd, JSON.stringify({ atMs: performance.now() - t0, action: d.action, reason: d.reason, ...scalars(s), prediction: scalars(s.prediction) }) + '\n');
      return d;
    },
  };
}

/**
 * cell.stalls (BENCH_PREDICTION_STALLS=1): what this process lost to the machine around its
 * switchover. Garbage collections of 0.5 ms and more (a 'gc' PerformanceObserver; epoch times,
 * comparable across the peers) and the main thread's run delay (/proc/thread-self/schedstat: time it
 * was ready to run but not running) between two marks, read once each so as to change nothing.
 */
function stallRecorder(enabled) {
  const gcs = [];
  const marks = {};
  if (!enabled) return { gcs, marks, mark() {}, stop() {} };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.duration >= 0.5) gcs.push({ kind: `gc-${e.detail?.kind ?? '?'}`, at: performance.timeOrigin + e.startTime, ms: e.duration });
  });
  obs.observe({ entryTypes: ['gc'] });
  const runDelayMs = () => {
    try {
      return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[1]) / 1e6;
    } catch {
      return Number.NaN; // not Linux, or no schedstats
    }
  };
  return {
    gcs,
    marks,
    mark(name) {
      marks[name] ??= { at: performance.timeOrigin + performance.now(), runDelayMs: runDelayMs() };
    },
    stop() {
      obs.disconnect();
    },
  };
}

function send(msg) {
  return new Promise((resolve) => process.send(msg, () => resolve()));
}

/** CPU milliseconds (user, system) since `from` (a process.cpuUsage() value), as _e2e-peer.mjs reports it. */
const cpuMs = (from) => {
  const c = process.cpuUsage(from);
  return { userMs: c.user / 1000, sysMs: c.system / 1000 };
};

function errorInfo(err) {
  return { code: err?.code ?? 'ERROR', message: String(err?.message ?? err), phase: err?.phase ?? null };
}

/**
 * cell.cpus ({ source, dest }: a CPU list each, as taskset takes it): confine this process's main
 * thread to its side's CPUs, after warmUp() started the compression workers, which stay free to run
 * on any CPU. Two hosts' main threads never share a core; on one VM, without this, the kernel's
 * wake-up placement often runs both peers' main threads on one core while the other idles, each
 * waiting for the other at every message of the switchover (perf sched timehist, PERFORMANCE.md).
 */
function pin(cell, role) {
  const cpus = cell.cpus?.[role];
  if (cpus !== undefined) execFileSync('taskset', ['-p', '-c', String(cpus), String(process.pid)], { stdio: 'ignore' });
}

/**
 * Every arc `core` takes, with how long it took (the destination's setup arcs, which the source's
 * fixed-cost priors come from, and each side's arcs in the downtime, which those priors stand for).
 */
function arcLog(core) {
  const arcs = [];
  core.on('arc', (a) => arcs.push({ from: a.from, to: a.to, ms: a.ms }));
  return arcs;
}

async function dest(cell) {
  const dev = new SimDevice({ size: cell.size, profile: cell.profile, seed: cell.seed });
  if (cell.warmUp) await warmUp();
  pin(cell, 'dest');
  const stalls = stallRecorder(cell.stalls);
  const listener = await listenTransport(`unix:${cell.socket}`);
  await send({ listening: listener.url });
  // CPU over the migration only (the device's content pools are built before).
  const cpu0 = process.cpuUsage();
  const core = new MigrationCore(dev);
  const arcs = arcLog(core);
  const pool = cell.decompressionWorkers > 0 ? new CompressionPool({ size: cell.decompressionWorkers }) : null;
  const run = receive({ devices: [core], transport: () => listener.accept(), stallTimeoutMs: cell.timeoutMs, decompressionPool: pool });
  run.on('phase', (p) => (p.phase === 'stop-copy' || p.phase === 'complete') && stalls.mark(p.phase));
  try {
    const s = await run.done;
    // A collection that starts in the downtime is reported when it ends.
    if (cell.stalls) await new Promise((resolve) => setTimeout(resolve, 20));
    stalls.stop();
    await send({ ok: true, downtimeMs: s.downtimeMs, phases: s.phases, arcs, bytes: s.bytes, verified: s.verified, digest: dev.digest(), maxRssKB: maxRssKB(), cpu: cpuMs(cpu0), stalls: { gcs: stalls.gcs, marks: stalls.marks } });
  } catch (err) {
    await send({ ok: false, ...errorInfo(err) });
  } finally {
    stalls.stop();
    await listener.close();
    await pool?.close();
    dev.close();
  }
}

async function source(cell) {
  const dev = new SimDevice({ size: cell.size, profile: cell.profile, seed: cell.seed, dirtyRate: cell.dirtyRate });
  const core = new MigrationCore(dev);
  if (cell.warmUp) await warmUp({ compression: cell.compression });
  pin(cell, 'source');
  const stalls = stallRecorder(cell.stalls);
  // The downtime begins when the first device leaves PRE_COPY (or RUNNING) for the switchover's arcs.
  let downStartAt = null;
  const arcs = arcLog(core);
  core.on('arc', (a) => {
    if (downStartAt === null && (a.to === DeviceState.PRE_COPY_P2P || a.to === DeviceState.RUNNING_P2P || a.to === DeviceState.STOP_COPY || a.to === DeviceState.STOP)) {
      downStartAt = performance.timeOrigin + performance.now() - a.ms;
      stalls.mark('down');
    }
  });
  const decisions = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const run = migrate({
    devices: [core],
    transport: `unix:${cell.socket}`,
    downtimeLimitMs: cell.limitMs,
    bandwidth: cell.bandwidth,
    compression: cell.compression,
    ...(cell.digest !== undefined ? { digest: cell.digest } : {}),
    ...(cell.chunkSize !== undefined ? { chunkSize: cell.chunkSize } : {}),
    policy: traced(cell.blind ? BLIND_POLICY : new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: cell.windowMs }), t0),
    stallTimeoutMs: cell.timeoutMs,
    signal: globalThis.AbortSignal.timeout(cell.timeoutMs),
  });
  // When each phase began, ms since migrate() was called (where an abort's time went).
  const phaseAtMs = {};
  run.on('phase', (p) => {
    phaseAtMs[p.phase] ??= Math.round((performance.now() - t0) * 10) / 10;
    if (p.phase === 'complete') stalls.mark('complete');
  });
  run.on('decision', (d) => decisions.push({ atMs: performance.now() - t0, action: d.action, reason: d.reason, message: d.message, numbers: d.numbers }));
  try {
    const s = await run.done;
    if (cell.stalls) await new Promise((resolve) => setTimeout(resolve, 20));
    stalls.stop();
    const last = decisions.at(-1);
    await send({
      ok: true,
      predictedDowntimeMs: s.predictedDowntimeMs,
      predictedHighMs: last?.action === 'switchover' ? last.numbers.highMs : null,
      downtimeMs: s.downtimeMs,
      durationMs: s.durationMs,
      totalMs: performance.now() - t0,
      bytes: s.bytes,
      wireBytes: s.wireBytes,
      compressionRatio: s.compressionRatio,
      rounds: s.precopyRounds,
      phases: s.phases,
      arcs,
      devices: s.devices,
      verified: s.verified,
      switchoverAtMs: last?.atMs ?? null,
      switchNumbers: last?.action === 'switchover' ? last.numbers : null,
      digest: dev.digest(),
      maxRssKB: maxRssKB(),
      cpu: cpuMs(cpu0),
      stalls: { gcs: stalls.gcs, marks: stalls.marks },
      downStartAt,
    });
  } catch (err) {
    stalls.stop();
    const abort = decisions.find((d) => d.action === 'abort') ?? null;
    await send({
      ok: false,
      ...errorInfo(err),
      abort,
      failedAtMs: performance.now() - t0,
      phaseAtMs,
      // An aborted migration must leave the device running with its state (the rollback's promise).
      stateAfter: await core.getState(),
      running: (await core.getState()) === DeviceState.RUNNING,
      lastDecision: decisions.at(-1) ?? null,
    });
  } finally {
    dev.close();
  }
}

const roles = { dest, source };
const [role, json] = process.argv.slice(2);
const fn = roles[role];
if (!fn) {
  process.stderr.write(`_prediction-peer: unknown role ${role}\n`);
  process.exit(64);
}
fn(JSON.parse(json)).then(
  () => process.disconnect?.(),
  (err) => {
    process.stderr.write(`_prediction-peer ${role}: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
