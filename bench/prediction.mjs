// Question: does the orchestrator turn bytes into time well? Over a matrix of state size x dirty rate
// x bandwidth cap x compression, a SimDevice ('mixed' profile) migrates with migrate()/receive() in
// two processes over a unix socket (_prediction-peer.mjs), under the default policy with a downtime
// limit. The PRE_COPY issue's three promises are checked per cell:
// - where a switchover happens, the predicted downtime (the estimator's, at the decision) is within
//   15% of the measured one (the source summary's downtimeMs: first device leaving RUNNING until the
//   destination's 'running' arrived);
// - no switchover exceeds the limit by more than 15%;
// - every infeasible cell (dirty rate above what the capped link moves) aborts, decided within the
//   first 10% of the time a blind run would take. The blind run is measured, in the same run, on the
//   same cell: migrate() without prediction (the peer's blind policy switches over as soon as the
//   initial data is sent and acknowledged), which sends the state once in PRE_COPY, then everything
//   dirtied meanwhile in STOP_COPY, and only learns from its measured downtime that the limit was
//   missed. blindMs is its time from the migrate() call to the end. (Earlier versions computed
//   2 x state / (cap x compression ratio), which assumed the capped link was the bottleneck; with
//   zstd the compression workers are, and the formula gave a blind run 2-4x shorter than a real one.)
// Each side of every run (blind runs included) first calls warmUp() with the cell's compression, as
// docs/migration.md recommends for a process's first migration: the switchover's code is compiled
// and the compression workers are up before the clock starts. BENCH_PREDICTION_WARM_UP=0 runs the
// matrix in cold processes instead.
// BENCH_PREDICTION_STALLS=1 makes both peers record what they lost to the machine in the downtime
// (garbage collections; the main thread's run delay, waiting for a core) and gives each switchover
// cell its error with that taken out: what the model missed, apart from what the machine did.
// BENCH_PREDICTION_PIN=1 confines the source's main thread to CPU 0 and the destination's to CPU 1
// (after warmUp(), so the compression workers stay free): two hosts' main threads never share a
// core, where on one VM the kernel's wake-up placement often puts both on one core for a whole
// switchover while the other idles (PERFORMANCE.md, prediction). Off by default: the table's rows
// are measured as the peers fall.
// Each switchover cell's detail carries both peers' device arcs (`arcs`, `destinationArcs`: from, to,
// ms): what the setup's arcs, which the source's fixed-cost priors come from, took beside the
// downtime's own.
// Rows: prediction-error-max (max |predicted - measured| / measured over the switchover cells; baseline
// the 15% target; ratio = value / 0.15: lower is better, <= 1 meets the target), prediction-overshoot-max
// (max measured / limit; baseline 1.15), prediction-abort-time-max (max abort time / blind time over the
// infeasible cells; baseline 0.10), and one row per cell.
import { GiB, MiB, result } from './lib.mjs';
import { runPredictionPeers } from './_pair.mjs';

export const names = ['prediction-'];

const LIMIT_MS = 100;
/** zstd's ratio on the 'mixed' profile, for classifying cells before any is measured. */
const PRIOR_ZSTD_RATIO = 2.4;
/** The policy's non-convergence window (DefaultSwitchoverPolicy option; its default is 3000 ms). */
const WINDOW_MS = 500;

const sizeLabel = (b) => (b >= GiB ? `${b / GiB}GiB` : `${b / MiB}MiB`);

function cells(quick) {
  const out = [];
  const sizes = quick ? [32 * MiB] : [64 * MiB, 256 * MiB];
  const caps = quick ? [50e6] : [50e6, 200e6];
  const comps = ['none', 'zstd'];
  // Dirty rates relative to the cap, in raw bytes per second: 'low' converges; 'high' dirties faster
  // than the link moves raw bytes even with zstd (~2.4x on this profile), so the cell is infeasible
  // when the whole state cannot move within the limit either (a state smaller than limit x rate can
  // always be stopped and copied in time, however fast it is dirtied).
  const dirt = { none: 0, low: 0.2, high: 4 };
  for (const size of sizes) {
    for (const cap of caps) {
      for (const compression of comps) {
        for (const [d, f] of Object.entries(dirt)) {
          if (quick && !((d === 'low') || (d === 'high' && compression === 'none'))) continue;
          const rawRate = cap * (compression === 'zstd' ? PRIOR_ZSTD_RATIO : 1);
          const dirtyRate = Math.round(f * cap);
          const feasible = !(dirtyRate >= rawRate && (size / rawRate) * 1000 > 1.15 * LIMIT_MS);
          out.push({ size, bandwidth: cap, compression, dirty: d, dirtyRate, feasible });
        }
      }
    }
  }
  return out;
}

function runCell(cell, timeoutMs, blind = false) {
  return runPredictionPeers({
    size: cell.size,
    profile: 'mixed',
    seed: 11,
    dirtyRate: cell.dirtyRate,
    bandwidth: cell.bandwidth,
    compression: cell.compression,
    limitMs: LIMIT_MS,
    windowMs: WINDOW_MS,
    timeoutMs,
    blind,
    // Both sides call warmUp() first, blind runs too (BENCH_PREDICTION_WARM_UP=0: cold processes).
    warmUp: process.env.BENCH_PREDICTION_WARM_UP !== '0',
    stalls: STALLS && !blind,
    ...(PIN ? { cpus: { source: 0, dest: 1 } } : {}),
  });
}

/** BENCH_PREDICTION_PIN=1: each peer's main thread on a CPU of its own (the header says why). */
const PIN = process.env.BENCH_PREDICTION_PIN === '1';

/** BENCH_PREDICTION_STALLS=1: both peers record their event loops' stalls (see stallsInDowntime). */
const STALLS = process.env.BENCH_PREDICTION_STALLS === '1';

/**
 * What each peer lost to the machine in the downtime: the garbage collections that overlap it (from
 * the source's first arc out of PRE_COPY to the destination's 'running' arriving, i.e. downtimeMs
 * later), clipped to it, and the main thread's run delay (ready but not scheduled) between the
 * peer's marks: the source's first arc to its 'complete', the destination's 'switchover' message to
 * its 'complete'. lostMs is the larger side's sum: a lower bound of what the two lost together
 * (their overlap is unknown), and an attribution, not a correction.
 */
function stallsInDowntime(src, dst) {
  if (!Number.isFinite(src.downStartAt) || !src.stalls || !dst.stalls) return null;
  const from = src.downStartAt;
  const to = from + src.downtimeMs;
  const side = (st, first) => {
    const gcs = st.gcs
      .map((e) => ({ kind: e.kind, atMs: Math.max(from, e.at) - from, ms: Math.min(to, e.at + e.ms) - Math.max(from, e.at) }))
      .filter((e) => e.ms > 0);
    const runDelayMs = (st.marks.complete?.runDelayMs ?? Number.NaN) - (st.marks[first]?.runDelayMs ?? Number.NaN);
    const gcMs = gcs.reduce((t, e) => t + e.ms, 0);
    const round = (x) => Math.round(x * 100) / 100;
    return { runDelayMs: round(runDelayMs), gcMs: round(gcMs), gcs: gcs.map((e) => ({ ...e, atMs: round(e.atMs), ms: round(e.ms) })) };
  };
  const source = side(src.stalls, 'down');
  const destination = side(dst.stalls, 'stop-copy');
  const lost = (x) => (Number.isFinite(x.runDelayMs) ? x.runDelayMs : 0) + x.gcMs;
  return { lostMs: Math.max(lost(source), lost(destination)), source, destination };
}

function cellName(c) {
  return `prediction-${sizeLabel(c.size)}-dirty-${c.dirty}-cap${c.bandwidth / 1e6}MBps-${c.compression}`;
}

export default async function run({ quick, log = () => {} }) {
  // BENCH_PREDICTION_CELLS: a regular expression on cell names, to run part of the matrix.
  const only = process.env.BENCH_PREDICTION_CELLS ? new RegExp(process.env.BENCH_PREDICTION_CELLS) : null;
  const matrix = cells(quick).filter((c) => only === null || only.test(cellName(c)));
  const rows = [];
  const errors = [];
  const overshoots = [];
  const errorsWithoutStalls = [];
  const abortFractions = [];
  const failures = [];
  for (const c of matrix) {
    // The blind baseline first, on infeasible cells only (a feasible cell has no abort to time).
    let blindMs = NaN;
    let blindDowntimeMs = NaN;
    if (!c.feasible) {
      const b = await runCell(c, 60_000, true);
      if (!b.src.ok) throw new Error(`${cellName(c)}: the blind run failed (${b.src.code}: ${b.src.message})`);
      if (b.lingering.length > 0) failures.push(`${cellName(c)} (blind): ${b.lingering.join(' and ')} still running 10 s after reporting`);
      blindMs = b.src.totalMs;
      blindDowntimeMs = b.src.downtimeMs;
      // Infeasible means the limit cannot be met: a blind downtime within it says the cell was
      // misclassified. (Against 1.15 x the limit, the overshoot a switchover is allowed, the 64 MiB /
      // 200 MB/s / zstd cell failed in 2 of 5 runs on 2026-12-07: its blind downtimes read 111-210 ms,
      // since a cap's 50 ms of burst credit carries a fifth of its compressed state at once.)
      if (blindDowntimeMs <= LIMIT_MS) failures.push(`${cellName(c)}: classified infeasible, but its blind run met the limit (${blindDowntimeMs.toFixed(0)} ms)`);
    }
    const timeoutMs = Math.round(Math.max(15_000, Math.min(60_000, 3 * (Number.isFinite(blindMs) ? blindMs : 0))));
    const { src, dst, lingering } = await runCell(c, timeoutMs);
    const name = cellName(c);
    if (lingering.length > 0) failures.push(`${name}: ${lingering.join(' and ')} still running 10 s after reporting`);
    const base = { stateBytes: c.size, dirtyRate: c.dirtyRate, bandwidth: c.bandwidth, compression: c.compression, limitMs: LIMIT_MS, windowMs: WINDOW_MS };
    if (src.ok) {
      const predicted = src.predictedDowntimeMs;
      const measured = src.downtimeMs;
      const err = Math.abs(predicted - measured) / measured;
      errors.push(err);
      overshoots.push(measured / LIMIT_MS);
      const stalls = STALLS ? stallsInDowntime(src, dst) : null;
      // The error once the time either side stood still is taken out of the measurement.
      const unstalled = stalls === null ? null : Math.max(1e-3, measured - stalls.lostMs);
      const errWithoutStalls = unstalled === null ? null : Math.abs(predicted - unstalled) / unstalled;
      if (errWithoutStalls !== null) errorsWithoutStalls.push(errWithoutStalls);
      if (!c.feasible) failures.push(`${name}: infeasible but switched over`);
      if (!src.verified || src.digest !== dst.digest) failures.push(`${name}: destination state not verified`);
      log(
        `${name}: switchover after ${(src.switchoverAtMs / 1000).toFixed(2)} s, ${src.rounds} rounds; downtime predicted ${predicted?.toFixed(2)} ms ` +
          `(high ${src.predictedHighMs?.toFixed(2)}), measured ${measured.toFixed(2)} ms: error ${(100 * err).toFixed(0)}%` +
          `${measured > 1.15 * LIMIT_MS ? `, OVER the limit ${LIMIT_MS} ms` : ''}; ratio ${src.compressionRatio.toFixed(2)}` +
          `${stalls === null ? '' : `; lost to the machine ${stalls.lostMs.toFixed(2)} ms of it (run delay ${stalls.source.runDelayMs} / ${stalls.destination.runDelayMs}, gc ${stalls.source.gcMs} / ${stalls.destination.gcMs}), error without it ${(100 * errWithoutStalls).toFixed(0)}%`}`,
      );
      rows.push(
        result(name, measured, 'ms', 'predicted downtime (ratio 1 = exact)', predicted, {
          ...base,
          outcome: 'switchover',
          relativeError: err,
          predictedHighMs: src.predictedHighMs,
          rounds: src.rounds,
          switchoverAtMs: src.switchoverAtMs,
          compressionRatio: src.compressionRatio,
          phases: src.phases,
          destinationPhases: dst.phases,
          arcs: src.arcs,
          destinationArcs: dst.arcs,
          devices: src.devices,
          atSwitchover: src.switchNumbers,
          ...(stalls === null ? {} : { stalls, relativeErrorWithoutStalls: errWithoutStalls }),
        }),
      );
    } else {
      const at = src.abort ? src.abort.atMs : src.failedAtMs;
      const fraction = at / blindMs;
      if (c.feasible) failures.push(`${name}: feasible but failed (${src.code}: ${src.message})`);
      else {
        abortFractions.push(src.abort ? fraction : Infinity);
        if (!src.abort) failures.push(`${name}: no abort decision (${src.code}: ${src.message})`);
      }
      if (!src.running) failures.push(`${name}: source device left in state ${src.stateAfter} after the failure`);
      log(
        `${name}: ${src.abort ? `abort (${src.abort.reason})` : `FAILED ${src.code}`} after ${(at / 1000).toFixed(2)} s = ${(100 * fraction).toFixed(0)}% of a blind run ` +
          `(${(blindMs / 1000).toFixed(2)} s, its downtime ${blindDowntimeMs.toFixed(0)} ms); device ${src.running ? 'RUNNING' : `in state ${src.stateAfter}`}`,
      );
      rows.push(
        result(name, at, 'ms', '10% of a blind run (<= 1 meets it)', blindMs / 10, {
          ...base,
          outcome: src.abort ? 'abort' : 'failed',
          reason: src.abort?.reason ?? src.code,
          message: src.abort?.message ?? src.message,
          blindMs,
          blindDowntimeMs,
          fractionOfBlind: fraction,
          phaseAtMs: src.phaseAtMs,
        }),
      );
    }
  }
  const max = (v) => (v.length ? Math.max(...v) : NaN);
  for (const f of failures) log(`FAIL ${f}`);
  const within = (v) => v.filter((e) => e <= 0.15).length;
  const summary = {
    cells: matrix.length,
    switchovers: errors.length,
    aborts: abortFractions.length,
    failures,
    limitMs: LIMIT_MS,
    windowMs: WINDOW_MS,
    within15: within(errors),
    ...(STALLS ? { within15WithoutStalls: within(errorsWithoutStalls) } : {}),
  };
  if (STALLS) log(`within 15%: ${summary.within15} of ${errors.length}; with what was lost to the machine taken out: ${summary.within15WithoutStalls}`);
  return [
    result('prediction-error-max', max(errors), 'frac', '15% target (lower is better)', 0.15, summary),
    result('prediction-overshoot-max', max(overshoots), 'x lim', '1.15 x limit (lower is better)', 1.15, summary),
    result('prediction-abort-time-max', max(abortFractions), 'x blnd', '10% of a blind run (lower is better)', 0.1, summary),
    ...rows,
  ];
}
