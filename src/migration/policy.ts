/**
 * Switchover policies: when to leave PRE_COPY for STOP_COPY, and when to give up.
 *
 * A policy is an object with one method, `decide(snapshot)`, fed the PRE_COPY estimator's numbers
 * plus the downtime limit; the orchestrator calls it after each estimator update and acts on the
 * returned Decision (and emits it as an event). A VMM replaces the built-ins by passing any object
 * implementing SwitchoverPolicy.
 *
 * Built in:
 * - DefaultSwitchoverPolicy: switch over once the initial data is sent (the spec's recommendation),
 *   the destination acknowledged it (switchover-ack, re-armed by REINIT through the estimator's
 *   epoch) and the upper edge of the predicted downtime is within the limit; abort early when even
 *   the lower bound exceeds the limit, when the device dirties at least as fast as the link moves
 *   for a whole window, or when the PRE_COPY time budget is spent.
 * - StepwiseSwitchoverPolicy: the same gates, but raise the limit step by step up to a maximum
 *   before aborting (KubeVirt's approach for vGPUs, which otherwise never converge).
 *
 * Also here: TokenBucket and createBandwidthLimiter, the bandwidth cap on wire bytes.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { migError, ErrorCodes, type MigError } from '../fsm/errors.js';
import type { EstimatorSnapshot } from '../streams/estimator.js';

export type DecisionAction = 'continue' | 'switchover' | 'abort';

export type DecisionReason =
  /** switchover: initial data sent, acked, and the prediction's upper edge fits the limit. */
  | 'within-limit'
  /** continue: some device's initial PRE_COPY data is still unread. */
  | 'initial-pending'
  /** continue: the destination has not acknowledged the current epoch's initial data. */
  | 'ack-pending'
  /** continue: a size query failed; no switchover on numbers nobody could read. */
  | 'query-failed'
  /** continue: no stop-copy size known yet. */
  | 'prediction-invalid'
  /** continue: the prediction's upper edge is above the limit; PRE_COPY goes on. */
  | 'above-limit'
  /** continue (stepwise): the limit was raised one step. */
  | 'limit-raised'
  /** abort: even the lower bound of the downtime exceeds the (maximum) limit. */
  | 'lower-bound-above-limit'
  /** abort: over a whole window, the switchover's bytes did not shrink or the dirty rate kept up with the throughput. */
  | 'not-converging'
  /** abort: the PRE_COPY time budget is spent. */
  | 'precopy-budget'
  /** abort (stepwise): at the maximum limit for a whole step and the prediction still does not fit. */
  | 'max-limit-exceeded';

/** The numbers a decision was made on (ms, bytes, bytes per ms). */
export interface DecisionNumbers {
  limitMs: number;
  downtimeMs: number;
  lowMs: number;
  highMs: number;
  lowerBoundMs: number;
  stopCopyBytes: number;
  floorBytes: number;
  initialBytes: number;
  dirtyBytes: number;
  rateBytesPerMs: number;
  bestRateBytesPerMs: number;
  dirtyRateBytesPerMs: number;
  /** How fast the devices dirty their whole state (the estimator's model; NaN until it is ready). */
  stateDirtyRateBytesPerMs: number;
  /** Where PRE_COPY would settle (NaN until the model is ready). */
  steadyDirtyBytes: number;
  compressionRatio: number;
  elapsedMs: number;
  bytesRead: number;
  wireBytes: number;
  /** The prediction's parts (see Prediction): bytes dirtied until the stop, bytes moved after it ahead of them, bytes drained before it and its time, the sum moved in the downtime and its time. */
  growthBytes: number;
  inFlightBytes: number;
  drainBytes: number;
  drainMs: number;
  transferBytes: number;
  transferMs: number;
  /** The stop-copy's pipeline fill (Prediction.fillMs) and the read size it assumes. */
  fillMs: number;
  stopCopyReadBytes: number;
  /** Fixed costs in use, ms: their sum and each one. */
  fixedMs: number;
  enterStopCopyMs: number;
  destValidateMs: number;
  destResumeMs: number;
  linkLatencyMs: number;
  /** The measured rates behind rateBytesPerMs (NaN when not measured) and the link's credit. */
  wireRateBytesPerMs: number;
  generationRateBytesPerMs: number;
  pipelineRateBytesPerMs: number;
  compressWorkerRateBytesPerMs: number;
  /** The destination's lag behind the stop-copy's last record, part of linkLatencyMs (Prediction.endLagMs). */
  endLagMs: number;
  linkCreditBytes: number;
  [extra: string]: number;
}

export interface Decision {
  action: DecisionAction;
  reason: DecisionReason;
  /** One sentence naming the numbers, e.g. for an abort error or a log line. */
  message: string;
  numbers: DecisionNumbers;
}

/** What a policy decides on: the estimator's snapshot plus the caller's limits. */
export interface PolicySnapshot extends EstimatorSnapshot {
  /** The downtime the user accepts, in ms. */
  downtimeLimitMs: number;
  /** Whether the destination's switchover-ack gates the switchover (default true). */
  switchoverAckRequired?: boolean;
}

/** The interface a VMM implements to plug in its own policy. */
export interface SwitchoverPolicy {
  readonly name: string;
  /** Called after each estimator update during PRE_COPY; must not throw. */
  decide(snapshot: PolicySnapshot): Decision;
  /** Forget per-migration state (the orchestrator calls it when a migration starts). */
  reset?(): void;
}

export interface DefaultPolicyOptions {
  /**
   * Abort as not converging when, over this window (past the initial data, prediction above the
   * limit), the bytes a switchover would move did not shrink, or the dirty rate was at or above
   * the throughput in 80% of the samples. Default 3000 ms.
   */
  nonConvergenceWindowMs?: number;
  /** Abort when PRE_COPY has lasted this long without a switchover. Default Infinity. */
  precopyBudgetMs?: number;
}

export interface StepwisePolicyOptions extends DefaultPolicyOptions {
  /** How much the limit rises per step, ms. Default: the snapshot's downtimeLimitMs (so 1x, 2x, 3x...). */
  stepMs?: number;
  /** Time spent at each limit before raising it. Default 2000 ms. */
  stepIntervalMs?: number;
  /** The highest limit accepted, ms. Required. */
  maxLimitMs: number;
}

const MIB = 1024 * 1024;

function fmtMs(ms: number): string {
  return Number.isFinite(ms) ? `${ms.toFixed(1)} ms` : String(ms);
}
function fmtBytes(n: number): string {
  return n >= MIB ? `${(n / MIB).toFixed(1)} MiB` : `${n} B`;
}
function fmtRate(bytesPerMs: number): string {
  return Number.isFinite(bytesPerMs) ? `${(bytesPerMs / 1000).toFixed(1)} MB/s` : String(bytesPerMs);
}

/** The numbers of a snapshot, for a decision made against `limitMs`. */
export function decisionNumbers(s: PolicySnapshot, limitMs: number): DecisionNumbers {
  const p = s.prediction;
  return {
    limitMs,
    downtimeMs: p.downtimeMs,
    lowMs: p.lowMs,
    highMs: p.highMs,
    lowerBoundMs: p.lowerBoundMs,
    stopCopyBytes: p.stopCopyBytes,
    floorBytes: p.floorBytes,
    initialBytes: s.initialBytes,
    dirtyBytes: s.dirtyBytes,
    rateBytesPerMs: p.rateBytesPerMs,
    bestRateBytesPerMs: p.bestRateBytesPerMs,
    dirtyRateBytesPerMs: p.dirtyRateBytesPerMs,
    stateDirtyRateBytesPerMs: p.stateDirtyRateBytesPerMs,
    steadyDirtyBytes: p.steadyDirtyBytes,
    compressionRatio: p.compressionRatio,
    elapsedMs: s.elapsedMs,
    bytesRead: s.bytesRead,
    wireBytes: s.wireBytes,
    growthBytes: p.growthBytes,
    inFlightBytes: p.inFlightBytes,
    drainBytes: p.drainBytes,
    drainMs: p.drainMs,
    transferBytes: p.transferBytes,
    transferMs: p.transferMs,
    fillMs: p.fillMs,
    stopCopyReadBytes: p.stopCopyReadBytes,
    fixedMs: p.fixedMs.total,
    enterStopCopyMs: p.fixedMs.enterStopCopy,
    destValidateMs: p.fixedMs.destValidate,
    destResumeMs: p.fixedMs.destResume,
    linkLatencyMs: p.fixedMs.linkLatency,
    wireRateBytesPerMs: p.wireRateBytesPerMs,
    generationRateBytesPerMs: p.generationRateBytesPerMs,
    pipelineRateBytesPerMs: p.pipelineRateBytesPerMs,
    compressWorkerRateBytesPerMs: p.compressWorkerRateBytesPerMs,
    endLagMs: p.endLagMs,
    linkCreditBytes: p.linkCreditBytes,
  };
}

function decision(action: DecisionAction, reason: DecisionReason, message: string, numbers: DecisionNumbers): Decision {
  return { action, reason, message, numbers };
}

/**
 * Convergence memory of a policy, kept for one window: each decision's diverging flag (dirtying
 * keeps up with the link, or PRE_COPY settles far above the limit), from the start, and past the
 * initial data the bytes a switchover would move (stop-copy, the dirtying until stop and what is
 * queued for the link).
 *
 * Not converging means either of, over a whole window:
 * - no drain: the least bytes seen in the window's second half are not below the least seen
 *   before it, all history included (a backlog that only wobbles: the devices re-dirty what
 *   PRE_COPY sends; its noise makes new lows ever rarer, a real drain makes them every half window);
 * - dirty rate >= throughput in at least DIVERGING_FRACTION of the samples (one noisy sample
 *   does not reset the verdict, as a strict "all the time" rule would).
 */
export class ConvergenceTracker {
  private readonly t: number[] = [];
  private readonly bytes: number[] = [];
  private readonly diverging: boolean[] = [];
  /** Times and raw bytes read of the samples of the last RECENT_MS (the recent moved rate). */
  private readonly recentT: number[] = [];
  private readonly recentRead: number[] = [];
  /** elapsedMs of the first sample since the last reset, NaN before. */
  private since = NaN;
  /** The least bytes among samples that left the window. */
  private lowBefore = Infinity;
  /** elapsedMs of the first sample with bytes, NaN before. */
  private bytesSince = NaN;

  reset(): void {
    this.t.length = 0;
    this.bytes.length = 0;
    this.diverging.length = 0;
    this.recentT.length = 0;
    this.recentRead.length = 0;
    this.since = NaN;
    this.lowBefore = Infinity;
    this.bytesSince = NaN;
  }

  /**
   * One decision's sample. `bytes` NaN: not judged for draining (the initial data is still being
   * sent, and drains by definition); its `diverging` flag still counts.
   */
  add(elapsedMs: number, bytes: number, diverging: boolean, windowMs: number, bytesRead?: number): void {
    if (Number.isNaN(this.since)) this.since = elapsedMs;
    if (Number.isNaN(this.bytesSince) && !Number.isNaN(bytes)) this.bytesSince = elapsedMs;
    this.t.push(elapsedMs);
    this.bytes.push(bytes);
    this.diverging.push(diverging);
    // Bounded: samples older than one window are dropped.
    while (this.t.length > 0 && this.t[0] < elapsedMs - windowMs) {
      this.t.shift();
      const b = this.bytes.shift() as number;
      if (!Number.isNaN(b)) this.lowBefore = Math.min(this.lowBefore, b);
      this.diverging.shift();
    }
    if (bytesRead !== undefined) this.addRead(elapsedMs, bytesRead);
  }

  /**
   * Raw bytes read so far at `elapsedMs`, for recentReadRate() alone (add() records it too when
   * given): what PRE_COPY moved is plain fact, usable before the estimator's rates are.
   */
  addRead(elapsedMs: number, bytesRead: number): void {
    this.recentT.push(elapsedMs);
    this.recentRead.push(bytesRead);
    // The oldest kept sample is the last one at least RECENT_MS old: the span covers RECENT_MS.
    while (this.recentT.length > 2 && this.recentT[1] <= elapsedMs - RECENT_MS) {
      this.recentT.shift();
      this.recentRead.shift();
    }
  }

  /**
   * Raw bytes read per ms over about the last RECENT_MS (from the oldest sample within it to the
   * newest), NaN with fewer than two samples. A path that is still speeding up (workers warming,
   * JIT) shows here before its average over the whole PRE_COPY catches up.
   */
  recentReadRate(): number {
    const n = this.recentT.length;
    if (n < 2) return Number.NaN;
    const dt = this.recentT[n - 1] - this.recentT[0];
    return dt > 0 ? (this.recentRead[n - 1] - this.recentRead[0]) / dt : Number.NaN;
  }

  /** The verdict over the last `windowMs`, or null while less than a window was observed. */
  verdict(elapsedMs: number, windowMs: number): { draining: boolean; divergingFraction: number; firstMin: number; secondMin: number } | null {
    if (Number.isNaN(this.since) || elapsedMs - this.since < windowMs) return null;
    const mid = elapsedMs - windowMs / 2;
    let firstMin = this.lowBefore;
    let secondMin = Infinity;
    let first = 0;
    let second = 0;
    let secondBytes = 0;
    let div = 0;
    for (let i = 0; i < this.t.length; i++) {
      const b = this.bytes[i];
      if (this.t[i] < mid) {
        first++;
        if (!Number.isNaN(b)) firstMin = Math.min(firstMin, b);
      } else {
        second++;
        if (!Number.isNaN(b)) {
          secondBytes++;
          secondMin = Math.min(secondMin, b);
        }
      }
      if (this.diverging[i]) div++;
    }
    if (first < 2 || second < 2) return null;
    // Draining is judged only once byte samples span a whole window (else: assumed).
    const bytesJudged = !Number.isNaN(this.bytesSince) && elapsedMs - this.bytesSince >= windowMs && secondBytes >= 2 && Number.isFinite(firstMin);
    return { draining: !bytesJudged || secondMin < firstMin, divergingFraction: div / this.t.length, firstMin, secondMin };
  }
}

/**
 * The early verdict needs the dirty rate's slow edge this many times above the fastest rate: λ
 * sampled on a busy event loop read up to ~20% high on SimDevice, and a device dirtying exactly as
 * fast as the path moves is the window's to judge, not a snapshot's.
 */
const EARLY_MARGIN = 1.25;

/** Span of the recent moved rate (ConvergenceTracker.recentReadRate), ms. */
const RECENT_MS = 100;

/** Share of a window's samples with dirty rate >= throughput that counts as not converging. */
const DIVERGING_FRACTION = 0.8;
/** PRE_COPY settling this many times the limit's worth of bytes above it counts as diverging. */
const STEADY_FACTOR = 4;

/** The abort checks shared by the built-ins, in order: budget, lower bound, non-convergence. */
function abortChecks(
  s: PolicySnapshot,
  limitMs: number,
  n: DecisionNumbers,
  budgetMs: number,
  windowMs: number,
  tracker: ConvergenceTracker,
  checkConvergence: boolean,
): Decision | null {
  const p = s.prediction;
  if (s.elapsedMs >= budgetMs) {
    return decision('abort', 'precopy-budget', `PRE_COPY ran ${fmtMs(s.elapsedMs)}, over its budget of ${fmtMs(budgetMs)}; predicted downtime ${fmtMs(p.highMs)} (limit ${fmtMs(limitMs)})`, { ...n, budgetMs });
  }
  // Only on valid, confident numbers: an unmeasured rate or an unreadable size proves nothing.
  if (p.valid && p.confident && p.lowerBoundMs > limitMs) {
    return decision(
      'abort',
      'lower-bound-above-limit',
      `downtime cannot meet the limit ${fmtMs(limitMs)}: even with zero dirtying ${fmtBytes(p.floorBytes)} of stop-copy data at the best measured ${fmtRate(p.bestRateBytesPerMs)} plus fixed costs take ${fmtMs(p.lowerBoundMs)}`,
      n,
    );
  }
  if (!checkConvergence || !Number.isFinite(windowMs)) return null;
  // On usable numbers only: an unreadable size proves nothing.
  if (!p.valid || s.queryFailed) return null;
  tracker.addRead(s.elapsedMs, s.bytesRead);
  // Without waiting for the window: even the slow edge of the devices' dirty rate (of their whole
  // state) is at or above the fast edge of the transfer rate, and above what PRE_COPY has plainly
  // moved per ms, on average and over the last RECENT_MS (a cross-check no model error can
  // inflate; the recent rate keeps a path still speeding up from being judged on its start). The
  // window guards means against noise; the bands already carry it. (NaN until the model has seen
  // a tenth of the state.) It needs the rate's fast edge measured (rateBounded), not every rate:
  // a device's unmeasured generation rate could only make the transfer slower.
  if (p.rateBounded && p.highMs > limitMs) {
    const recent = tracker.recentReadRate();
    // Under a cap, what PRE_COPY moved beyond cap x ratio went out on the bucket's first credit, a
    // burst the link cannot repeat: it proves nothing about the rate to outrun.
    const movedBytesPerMs = Math.min(
      p.rateCapBytesPerMs,
      Math.max(s.elapsedMs > 0 ? s.bytesRead / s.elapsedMs : Infinity, Number.isNaN(recent) ? 0 : recent),
    );
    if (p.stateDirtyRateLowBytesPerMs >= EARLY_MARGIN * Math.max(p.rateHighBytesPerMs, movedBytesPerMs)) {
      return decision(
        'abort',
        'not-converging',
        `PRE_COPY does not converge: the devices dirty their state at ${fmtRate(p.stateDirtyRateBytesPerMs)} (at least ${fmtRate(p.stateDirtyRateLowBytesPerMs)}, extrapolated from the ${fmtBytes(s.bytesRead)} read so far), ${EARLY_MARGIN} x or more the most the path moves, ${fmtRate(p.rateHighBytesPerMs)}, and the ${fmtRate(movedBytesPerMs)} PRE_COPY has moved; predicted downtime ${fmtMs(p.highMs)} (limit ${fmtMs(limitMs)})`,
        { ...n, stateDirtyRateLowBytesPerMs: p.stateDirtyRateLowBytesPerMs, rateHighBytesPerMs: p.rateHighBytesPerMs, movedBytesPerMs },
      );
    }
  }
  // The window's verdicts on confident numbers only: an unmeasured rate proves nothing. The dirty
  // rate counts from the start (devices that report dirtying during their initial data give a rate
  // then: re-dirtying of what was already sent at the link's pace already, with more of the state
  // exposed to it as the pass goes on); the bytes a switchover would move only past the initial
  // data (they drain by definition before).
  if (!p.confident) return null;
  // Diverging: dirtying keeps up with the link, or PRE_COPY would settle (steadyDirtyBytes) far
  // above what the limit can move, by STEADY_FACTOR: the model is an extrapolation, and a verdict
  // on it still needs DIVERGING_FRACTION of a window.
  const steadyMs = p.rateBytesPerMs > 0 ? p.steadyDirtyBytes / p.rateBytesPerMs : Number.NaN;
  const settlesHigh = Number.isFinite(steadyMs) && steadyMs > STEADY_FACTOR * limitMs;
  const diverging =
    (p.dirtyRateBytesPerMs > 0 && p.dirtyRateBytesPerMs >= p.rateBytesPerMs) || p.stateDirtyRateBytesPerMs >= p.rateBytesPerMs || settlesHigh;
  tracker.add(s.elapsedMs, s.initialSent ? p.transferBytes : Number.NaN, diverging, windowMs);
  if (p.highMs <= limitMs) return null;
  const v = tracker.verdict(s.elapsedMs, windowMs);
  if (v === null) return null;
  const numbers = { ...n, windowMs, divergingFraction: v.divergingFraction, windowFirstMinBytes: v.firstMin, windowSecondMinBytes: v.secondMin };
  if (v.divergingFraction >= DIVERGING_FRACTION && p.dirtyRateBytesPerMs < p.rateBytesPerMs && settlesHigh) {
    return decision(
      'abort',
      'not-converging',
      `PRE_COPY does not converge: the devices dirty ${fmtRate(p.dirtyRateBytesPerMs)} of their clean state, so PRE_COPY would settle at about ${fmtBytes(p.steadyDirtyBytes)} dirty, ${fmtMs(steadyMs)} at ${fmtRate(p.rateBytesPerMs)} (limit ${fmtMs(limitMs)}), in ${(v.divergingFraction * 100).toFixed(0)}% of the last ${fmtMs(windowMs)}`,
      { ...numbers, steadyDirtyBytes: p.steadyDirtyBytes, steadyMs },
    );
  }
  if (v.divergingFraction >= DIVERGING_FRACTION) {
    return decision(
      'abort',
      'not-converging',
      `PRE_COPY does not converge: the devices dirty ${fmtRate(p.dirtyRateBytesPerMs)}, at or above the throughput ${fmtRate(p.rateBytesPerMs)} in ${(v.divergingFraction * 100).toFixed(0)}% of the last ${fmtMs(windowMs)}; predicted downtime ${fmtMs(p.highMs)} (limit ${fmtMs(limitMs)})`,
      numbers,
    );
  }
  // Not shrinking matters only while even the optimistic edge is above the limit (a 32-byte
  // remainder does not shrink either).
  if (!v.draining && p.lowMs > limitMs) {
    return decision(
      'abort',
      'not-converging',
      `PRE_COPY does not converge: the data a switchover would move made no new low in ${fmtMs(windowMs / 2)} (least ${fmtBytes(v.firstMin)} before, ${fmtBytes(v.secondMin)} since; dirty ${fmtRate(p.dirtyRateBytesPerMs)}, throughput ${fmtRate(p.rateBytesPerMs)}); predicted downtime ${fmtMs(p.highMs)} (limit ${fmtMs(limitMs)})`,
      numbers,
    );
  }
  return null;
}

/** The gates before a switchover can be considered; null when all pass. */
function gateChecks(s: PolicySnapshot, n: DecisionNumbers): Decision | null {
  const p = s.prediction;
  if (s.queryFailed) {
    return decision('continue', 'query-failed', `a size query failed (${s.queryFailures} so far); waiting for a good one before any switchover`, { ...n, queryFailures: s.queryFailures });
  }
  if (!s.initialSent) {
    return decision('continue', 'initial-pending', `initial PRE_COPY data not yet sent: ${fmtBytes(s.initialBytes)} left`, n);
  }
  if ((s.switchoverAckRequired ?? true) && !s.switchoverAcked) {
    return decision('continue', 'ack-pending', `waiting for the destination to acknowledge the initial data (epoch ${s.epoch})`, { ...n, epoch: s.epoch });
  }
  if (!p.valid) {
    return decision('continue', 'prediction-invalid', 'no stop-copy size known yet', n);
  }
  return null;
}

function fitsMessage(s: PolicySnapshot, limitMs: number): string {
  const p = s.prediction;
  // The fill (the last record through every stage) only when it is worth a mention.
  const fill = p.fillMs >= 0.05 ? ` plus ${fmtMs(p.fillMs)} for the last record` : '';
  return `predicted downtime ${fmtMs(p.downtimeMs)} (band ${fmtMs(p.lowMs)}..${fmtMs(p.highMs)}): ${fmtBytes(p.stopCopyBytes)} at ${fmtRate(p.rateBytesPerMs)}${fill} plus ${fmtMs(p.fixedMs.total)} fixed, limit ${fmtMs(limitMs)}`;
}

function positive(name: string, v: number | undefined, dflt: number): number {
  const x = v ?? dflt;
  if (!(x > 0)) throw migError(ErrorCodes.USAGE, `${name} must be a positive number, got ${String(v)}`);
  return x;
}

export class DefaultSwitchoverPolicy implements SwitchoverPolicy {
  readonly name: string = 'default';
  protected readonly nonConvergenceWindowMs: number;
  protected readonly precopyBudgetMs: number;
  protected readonly tracker = new ConvergenceTracker();

  constructor(options: DefaultPolicyOptions = {}) {
    this.nonConvergenceWindowMs = positive('nonConvergenceWindowMs', options.nonConvergenceWindowMs, 3000);
    this.precopyBudgetMs = positive('precopyBudgetMs', options.precopyBudgetMs, Infinity);
  }

  reset(): void {
    this.tracker.reset();
  }

  decide(s: PolicySnapshot): Decision {
    const limit = s.downtimeLimitMs;
    const n = decisionNumbers(s, limit);
    const abort = abortChecks(s, limit, n, this.precopyBudgetMs, this.nonConvergenceWindowMs, this.tracker, true);
    if (abort) return abort;
    const gate = gateChecks(s, n);
    if (gate) return gate;
    if (s.prediction.highMs <= limit) return decision('switchover', 'within-limit', fitsMessage(s, limit), n);
    return decision('continue', 'above-limit', fitsMessage(s, limit), n);
  }
}

/**
 * Raise the limit by `stepMs` every `stepIntervalMs` spent above it, up to `maxLimitMs`; abort when
 * at the maximum for a whole interval (or at once when the lower bound exceeds the maximum).
 * Non-convergence does not abort here: raising the limit is this policy's answer to it.
 */
export class StepwiseSwitchoverPolicy implements SwitchoverPolicy {
  readonly name: string = 'stepwise';
  private readonly stepMs: number | undefined;
  private readonly stepIntervalMs: number;
  private readonly maxLimitMs: number;
  private readonly precopyBudgetMs: number;
  private readonly tracker = new ConvergenceTracker();
  /** The limit in force (NaN until the first decision). */
  private current: number;
  /** elapsedMs when the current limit took effect. */
  private since: number;

  constructor(options: StepwisePolicyOptions) {
    this.maxLimitMs = positive('maxLimitMs', options.maxLimitMs, NaN);
    this.stepMs = options.stepMs === undefined ? undefined : positive('stepMs', options.stepMs, NaN);
    this.stepIntervalMs = positive('stepIntervalMs', options.stepIntervalMs, 2000);
    this.precopyBudgetMs = positive('precopyBudgetMs', options.precopyBudgetMs, Infinity);
    this.current = NaN;
    this.since = 0;
  }

  /** The limit currently in force (NaN before the first decision). */
  get currentLimitMs(): number {
    return this.current;
  }

  reset(): void {
    this.current = NaN;
    this.since = 0;
    this.tracker.reset();
  }

  decide(s: PolicySnapshot): Decision {
    if (Number.isNaN(this.current)) {
      this.current = Math.min(s.downtimeLimitMs, this.maxLimitMs);
      this.since = s.elapsedMs;
    }
    const limit = this.current;
    const n = { ...decisionNumbers(s, limit), maxLimitMs: this.maxLimitMs };
    // The lower bound is judged against the maximum: a raise could still make room below it.
    const abort = abortChecks(s, this.maxLimitMs, n, this.precopyBudgetMs, Infinity, this.tracker, false);
    if (abort) return abort;
    const gate = gateChecks(s, n);
    if (gate) return gate;
    if (s.prediction.highMs <= limit) return decision('switchover', 'within-limit', fitsMessage(s, limit), n);
    if (s.elapsedMs - this.since < this.stepIntervalMs) return decision('continue', 'above-limit', fitsMessage(s, limit), n);
    if (limit >= this.maxLimitMs) {
      return decision('abort', 'max-limit-exceeded', `at the maximum limit ${fmtMs(limit)} for ${fmtMs(s.elapsedMs - this.since)} and still ${fitsMessage(s, limit)}`, n);
    }
    const step = this.stepMs ?? s.downtimeLimitMs;
    this.current = Math.min(this.maxLimitMs, limit + step);
    this.since = s.elapsedMs;
    return decision('continue', 'limit-raised', `limit raised from ${fmtMs(limit)} to ${fmtMs(this.current)}; ${fitsMessage(s, limit)}`, { ...n, limitMs: this.current, previousLimitMs: limit });
  }
}

/** The MigError an orchestrator raises for an 'abort' decision (code VFIO_MIG_ERR_POLICY_ABORT). */
export function policyAbortError(d: Decision, phase = 'precopy'): MigError {
  return migError(ErrorCodes.POLICY_ABORT, `${d.reason}: ${d.message}`, { phase, detail: { reason: d.reason, ...d.numbers } });
}

export interface TokenBucketOptions {
  /** Sustained rate, bytes per second. */
  bytesPerSecond: number;
  /** Bytes that may go at once after an idle period. Default max(64 KiB, 50 ms worth). */
  burstBytes?: number;
  /** Clock in ms (tests). Default performance.now. */
  now?: () => number;
}

/**
 * Token bucket on wire bytes. take(n) reserves n bytes and returns how long to wait before sending
 * them; reservations beyond the bucket become debt, so the long-run rate is bytesPerSecond whatever
 * the chunk sizes. One bucket shared by several channels caps their sum (sharing the link).
 */
export class TokenBucket {
  readonly bytesPerMs: number;
  readonly burstBytes: number;
  private readonly now: () => number;
  private tokens: number;
  private last: number;

  constructor(options: TokenBucketOptions) {
    const bps = options.bytesPerSecond;
    if (!(bps > 0) || !Number.isFinite(bps)) throw migError(ErrorCodes.USAGE, `bytesPerSecond must be a positive number, got ${String(bps)}`);
    this.bytesPerMs = bps / 1000;
    this.burstBytes = options.burstBytes ?? Math.max(64 * 1024, bps / 20);
    if (!(this.burstBytes > 0)) throw migError(ErrorCodes.USAGE, `burstBytes must be positive, got ${String(options.burstBytes)}`);
    this.now = options.now ?? (() => performance.now());
    this.tokens = this.burstBytes;
    this.last = this.now();
  }

  /** Bytes that could be sent now without waiting (the credit, after refilling; <= 0 while in debt). */
  available(): number {
    return Math.min(this.burstBytes, this.tokens + (this.now() - this.last) * this.bytesPerMs);
  }

  /** Reserve `bytes`; returns the delay in ms before they may be sent (0: now). */
  take(bytes: number): number {
    const now = this.now();
    this.tokens = Math.min(this.burstBytes, this.tokens + (now - this.last) * this.bytesPerMs);
    this.last = now;
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : -this.tokens / this.bytesPerMs;
  }
}

/**
 * A byte Transform that passes chunks through no faster than the bucket allows (the bucket may be
 * shared between several limiters). Backpressure holds: the next chunk is not accepted before the
 * current one's delay has passed.
 */
export function createBandwidthLimiter(bucket: TokenBucket | TokenBucketOptions): Transform {
  const b = bucket instanceof TokenBucket ? bucket : new TokenBucket(bucket);
  let timer: NodeJS.Timeout | null = null;
  return new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
      const delay = b.take(chunk.length);
      if (delay <= 0) {
        cb(null, chunk);
        return;
      }
      timer = setTimeout(() => {
        timer = null;
        cb(null, chunk);
      }, Math.ceil(delay));
    },
    destroy(err: Error | null, cb: (error: Error | null) => void): void {
      if (timer) clearTimeout(timer);
      timer = null;
      cb(err);
    },
  });
}
