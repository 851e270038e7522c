/**
 * PRE_COPY estimator: turns the kernel's byte counts into time.
 *
 * Pure arithmetic fed by the caller (no I/O of its own): the orchestrator reports what it queried
 * (VFIO_MIG_GET_PRECOPY_INFO, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE), what it read from each device and
 * what it put on the wire; the estimator keeps a local view of the remaining bytes between queries,
 * measures rates with exponentially weighted averages over a sliding window of samples, and predicts
 * the downtime a switchover would cost now, with a confidence band.
 *
 * Rules it implements (spec §3.10/§3.11, QEMU hw/vfio/migration.c):
 * - initial, dirty and stop-copy bytes are kept apart: MIG_DATA_SIZE already includes the PRE_COPY
 *   data not yet read, so the two are never added (QEMU double-counted them before 9.2).
 * - Between queries the local view is decremented by the bytes read (initial first, then dirty;
 *   stop-copy by every byte), floored at 0: the counters are estimates and reads may exceed them.
 * - A failed query, or a value that is negative or above Number.MAX_SAFE_INTEGER, is a failure that
 *   is visible ('query-failed' event, `queryFailed` in the snapshot) and pessimistic: the prediction
 *   becomes invalid (no switchover on it) and the initial data counts as not yet sent.
 * - VFIO_PRECOPY_INFO_REINIT restarts the initial-data accounting and clears the destination's
 *   switchover acknowledgement (a new epoch: an ack for an older epoch no longer counts).
 *
 * One estimator covers every device of a migration (devices share the link): per-device counters and
 * generation rates, one wire.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { migError, ErrorCodes, type MigError } from '../fsm/errors.js';
import type { PrecopyInfo } from '../fsm/types.js';

/** Fixed (size-independent) costs of a switchover, in milliseconds. */
export type FixedCostKind =
  /** Source: from PRE_COPY to STOP_COPY (through PRE_COPY_P2P where used), all devices. */
  | 'enterStopCopy'
  /** Destination: RESUMING -> STOP, where the driver validates the state it received. */
  | 'destValidate'
  /** Destination: STOP -> RUNNING (through RUNNING_P2P where used). */
  | 'destResume'
  /** One-way latency of the link: the last byte's flight time plus the final acknowledgement. */
  | 'linkLatency';

export const FIXED_COST_KINDS: readonly FixedCostKind[] = ['enterStopCopy', 'destValidate', 'destResume', 'linkLatency'];

export interface PrecopyEstimatorOptions {
  /** Devices covered (indices 0..devices-1). Default 1. */
  devices?: number;
  /** Clock in milliseconds (tests pass a scripted one). Default performance.now. */
  now?: () => number;
  /** Samples kept per measurement (the sliding window). Default 32. */
  window?: number;
  /** Weight of the newest sample in the exponential average (0 < alpha <= 1). Default 0.25. */
  alpha?: number;
  /** Never re-query a device more often than this. Default 50 ms. */
  minQueryIntervalMs?: number;
  /** Re-query a device at least this often. Default 250 ms (PRECOPY_INFO is cheap; stale views mislead). */
  maxQueryIntervalMs?: number;
  /**
   * While a device's dirtying is still being learned (its initial data not all read, fewer than
   * minSamples of λ), re-query it this often, for at most `learnQueries` queries per epoch: an
   * infeasible device is known from three λ samples, and at the ordinary pace they took 150-300 ms.
   * Default 10 ms.
   */
  learnQueryIntervalMs?: number;
  /** See learnQueryIntervalMs; 0 turns the learning pace off. Default 24. */
  learnQueries?: number;
  /**
   * While learning, a device whose last λ sample counted at least this many dirtied bytes is
   * queried twice as often (every learnQueryIntervalMs / 2): a sample's precision is the number of
   * pages it counts, so a heavily dirtying device gives precise samples in less time, and a lightly
   * dirtying one keeps the longer interval. Default 256 KiB (64 pages of 4 KiB). Infinity: never.
   */
  learnFastDirtyBytes?: number;
  /** Re-query early (after minQueryIntervalMs) once this many bytes were read since the last query. Default 64 MiB. */
  requeryBytes?: number;
  /** Width of the confidence band in standard deviations. Default 2. */
  bandSigmas?: number;
  /** Smallest relative half-width of the rate band (drift the variance cannot see). Default 0.05. */
  minRelativeBand?: number;
  /** Rate samples (per measurement in use) needed before the prediction is `confident`. Default 3. */
  minSamples?: number;
  /** A pause longer than this between two reads (or two wire writes) starts a new measurement streak. Default 5000 ms. */
  idleGapMs?: number;
  /**
   * Stop-copy sizes up to this many bytes need no rate samples of their own for a confident
   * prediction (an mtty's 60 bytes never yield a rate; their time is noise). Default 1 MiB.
   */
  smallStateBytes?: number;
  /** Raw bytes per ms assumed before anything was measured (prediction not confident). Default 100_000 (100 MB/s). */
  priorRateBytesPerMs?: number;
  /** Fixed costs assumed until measured. Default 0 each. */
  fixedCosts?: Partial<Record<FixedCostKind, number>>;
}

/** What predict() returns. Times in ms, rates in bytes per ms. */
export interface Prediction {
  /** False while any device's stop-copy size is unknown or its last query failed: never switch over on it. */
  valid: boolean;
  /** True once every rate that matters (stop-copy sizes above smallStateBytes) has at least `minSamples` samples; else priors fill in. */
  confident: boolean;
  /**
   * True once `rateHighBytesPerMs` rests on measurements: the wire or the whole path has `minSamples`
   * samples. A device whose generation rate is not measured yet can only make the transfer slower,
   * so the fast edge is a sound upper bound before `confident` (under a cap a device that reads at
   * 750 MB/s fills its 10 ms generation samples only every 7.5 MB: three of them took 430 ms of a
   * 64 MiB migration at 50 MB/s). What an abort on "the path cannot keep up" needs.
   */
  rateBounded: boolean;
  /** Predicted downtime of a switchover now: fixed costs + stop-copy bytes at the effective rate. Infinity when invalid. */
  downtimeMs: number;
  /** Lower edge of the confidence band. */
  lowMs: number;
  /** Upper edge of the confidence band (what a switchover decision should use). Infinity when invalid. */
  highMs: number;
  /**
   * Lower bound of the downtime even if PRE_COPY ran on with zero dirtying: the stop-copy bytes PRE_COPY
   * can never send (`floorBytes`) at the best measured rate, plus the fixed costs' lower edges.
   */
  lowerBoundMs: number;
  /** Remaining stop-copy bytes, all devices (local view: last query minus bytes read since). */
  stopCopyBytes: number;
  /** Stop-copy bytes beyond the PRE_COPY counters: sum over devices of max(0, stopCopy - initial - dirty). */
  floorBytes: number;
  /**
   * Bytes the devices are expected to dirty from their last size query until they stop (dirty rate x
   * (time since the query + drainMs + time to enter STOP_COPY)).
   */
  growthBytes: number;
  /** Wire bytes (raw ones counted at the compression ratio) moved after the stop, ahead of STOP_COPY's data (setInFlight()). */
  inFlightBytes: number;
  /** Wire bytes (raw ones counted at the compression ratio) a switchover empties before the stop (setDrain()). */
  drainBytes: number;
  /** Time the drain takes, ms: the devices still run and dirty meanwhile (it counts in growthBytes, not in downtimeMs). */
  drainMs: number;
  /** Raw-byte equivalent the transfer has to move: stopCopyBytes + growthBytes + inFlightBytes x compressionRatio. */
  transferBytes: number;
  /** Effective raw rate used: the slower of device generation and wire (raw = wire rate x compression ratio). */
  rateBytesPerMs: number;
  /** Best measured effective raw rate (used by lowerBoundMs). */
  bestRateBytesPerMs: number;
  /** Slowest per-device generation rate measured (NaN when none). */
  generationRateBytesPerMs: number;
  /** Wire throughput in wire (compressed) bytes per ms (NaN when not measured). */
  wireRateBytesPerMs: number;
  /** Raw bytes per wire byte (1 without compression). */
  compressionRatio: number;
  /** The whole path's raw rate from recordPipeline (NaN before minSamples); it bounds the transfer when below the link's. */
  pipelineRateBytesPerMs: number;
  /** Wire bytes the link takes at once, ahead of its rate (setLinkCredit): the first of a switchover's bytes leave unpaced. */
  linkCreditBytes: number;
  /** Bytes the devices dirty per ms (0 when not measured): of their clean sent state, as observed. */
  dirtyRateBytesPerMs: number;
  /**
   * How fast the devices dirty their whole state, sent or not, bytes per ms: each device's λ (the
   * share of its clean sent state dirtied per ms, sampled between queries) times its state size. The
   * rate PRE_COPY has to outrun to converge. NaN until the model is ready: at least a tenth of the
   * state (and smallStateBytes) sent, and minSamples of λ for each device that dirties.
   */
  stateDirtyRateBytesPerMs: number;
  /** The slow edge of stateDirtyRateBytesPerMs's band (bandSigmas of λ's error); NaN until ready. */
  stateDirtyRateLowBytesPerMs: number;
  /** The fast edge of the transfer rate's band (transferBytes / the band's short edge); Infinity when unbounded. */
  rateHighBytesPerMs: number;
  /**
   * The most raw bytes per ms a capped link sustains past its credit: the cap (setLinkCredit) times
   * the compression ratio's fast edge. Infinity without a cap or before the wire is measured.
   */
  rateCapBytesPerMs: number;
  /**
   * Where PRE_COPY settles: the dirty bytes at which the devices re-dirty their clean state as fast
   * as the link sends dirty data. With λ the share of the clean state dirtied per ms, dirtying
   * (λ x clean) equals sending (rate) at total - rate / λ. A uniform workload settles there; a hot
   * set's λ, measured over more of the state than the hot set, underestimates it (the model speaks
   * once a tenth of the state was sent). NaN when the model is not ready.
   */
  steadyDirtyBytes: number;
  /** Time to move transferBytes at the effective rate. */
  transferMs: number;
  /**
   * The stop-copy's pipeline fill, in downtimeMs beside transferMs: a record goes through reading,
   * compressing (one worker) and the link one stage after the other, so one record's time through
   * all of them, less one period of the slowest stage (already in transferMs), adds to a rate that
   * only the stages' overlap reaches. Nearly all of a small stop-copy of one record per worker.
   * 0 when no stage is measured.
   */
  fillMs: number;
  /** The size each STOP_COPY read asks for (stopCopyReadBytes for the largest device's bytes); the fill's record is at most those bytes. */
  stopCopyReadBytes: number;
  /** One record's compression rate, dispatch to result (raw bytes per ms), NaN when not measured. */
  compressWorkerRateBytesPerMs: number;
  /**
   * The destination's lag behind the stop-copy's last record (setEndLag scaled to that record),
   * included in fixedMs.linkLatency and its total; 0 until a lag was timed.
   */
  endLagMs: number;
  /** Fixed costs in use (measured means or priors) and their sum. */
  fixedMs: Record<FixedCostKind, number> & { total: number };
}

/** The estimator's numbers at one moment: what a switchover policy is fed (see PolicySnapshot). */
export interface EstimatorSnapshot {
  /** Clock value of the snapshot. */
  nowMs: number;
  /** Since the estimator was created (or `restartClock()`): the PRE_COPY time so far. */
  elapsedMs: number;
  /** Remaining initial / dirty / stop-copy bytes, summed over devices (local view). */
  initialBytes: number;
  dirtyBytes: number;
  stopCopyBytes: number;
  /** Every device's initial data was read (and its precopy counters are trustworthy). */
  initialSent: boolean;
  /** The destination acknowledged loading the initial data of the current epoch. */
  switchoverAcked: boolean;
  /** Initial-data epoch: 0 at start, +1 on each REINIT. */
  epoch: number;
  /** Raw bytes read from the devices, all phases. */
  bytesRead: number;
  /** Wire bytes written (after compression) and the raw bytes they carried. */
  wireBytes: number;
  wireRawBytes: number;
  /** A device's last query failed (precopy info or stop-copy size). */
  queryFailed: boolean;
  /** Failed queries so far. */
  queryFailures: number;
  /** REINITs seen so far. */
  reinits: number;
  dirtyRateBytesPerMs: number;
  /** Effective raw throughput (prediction.rateBytesPerMs). */
  throughputBytesPerMs: number;
  prediction: Prediction;
}

export interface QueryFailedEvent {
  kind: 'precopy-info' | 'stop-copy-size';
  device: number;
  error: MigError;
  /** Consecutive failures of this kind on this device. */
  consecutive: number;
}
export interface ReinitEvent {
  device: number;
  epoch: number;
  initialBytes: number;
}
export interface InitialSentEvent {
  device: number;
  epoch: number;
  /** True when every device's initial data is now sent. */
  all: boolean;
}

export interface PrecopyEstimatorEvents {
  'query-failed': [QueryFailedEvent];
  reinit: [ReinitEvent];
  'initial-sent': [InitialSentEvent];
}

/**
 * Exponentially weighted ratio estimator over a ring of (amount, duration) samples.
 * mean = sum(w*amount) / sum(w*duration), w = (1-alpha)^age: long samples weigh more than short
 * ones (a 1 MiB read timed at 20 us says little). Variance is of the per-sample rates around it.
 */
export class RateWindow {
  private readonly amounts: Float64Array;
  private readonly durations: Float64Array;
  private readonly decay: number;
  private head: number;
  private size: number;
  /** Samples added since creation (not capped by the window). */
  total: number;

  constructor(window: number, alpha: number) {
    this.amounts = new Float64Array(window);
    this.durations = new Float64Array(window);
    this.decay = 1 - alpha;
    this.head = 0;
    this.size = 0;
    this.total = 0;
  }

  get count(): number {
    return this.size;
  }

  add(amount: number, durationMs: number): void {
    if (!(durationMs > 0) || !Number.isFinite(amount) || !Number.isFinite(durationMs)) return;
    this.amounts[this.head] = amount;
    this.durations[this.head] = durationMs;
    this.head = (this.head + 1) % this.amounts.length;
    if (this.size < this.amounts.length) this.size++;
    this.total++;
  }

  clear(): void {
    this.size = 0;
    this.head = 0;
  }

  /** Weighted mean rate (amount per ms), NaN when empty. */
  mean(): number {
    return this.stats().mean;
  }

  /**
   * The median of the samples' rates in the window, NaN when empty: for a time that a stall now
   * and then stretches tenfold (a compression job whose result waited for a busy event loop), where
   * the weighted mean follows the stalls.
   */
  median(): number {
    if (this.size === 0) return Number.NaN;
    const n = this.amounts.length;
    const rates: number[] = [];
    for (let i = 0; i < this.size; i++) {
      const k = (this.head - 1 - i + n) % n;
      rates.push(this.amounts[k] / this.durations[k]);
    }
    rates.sort((a, b) => a - b);
    const m = rates.length >> 1;
    return rates.length % 2 === 1 ? rates[m] : (rates[m - 1] + rates[m]) / 2;
  }

  /**
   * mean, the relative standard error of the mean (std / sqrt(effective n) / mean), and the best
   * rate among samples of at least `minDurationMs`.
   */
  stats(minDurationMs = 0): { mean: number; relErr: number; best: number } {
    const n = this.amounts.length;
    let w = 1;
    let sa = 0;
    let sd = 0;
    let best = NaN;
    for (let i = 0; i < this.size; i++) {
      const k = (this.head - 1 - i + n) % n;
      sa += w * this.amounts[k];
      sd += w * this.durations[k];
      if (this.durations[k] >= minDurationMs) {
        const r = this.amounts[k] / this.durations[k];
        if (!(r <= best)) best = r;
      }
      w *= this.decay;
    }
    if (this.size === 0 || sd <= 0) return { mean: NaN, relErr: NaN, best };
    const mean = sa / sd;
    // Weighted variance of per-sample rates (weight w*duration) and Kish's effective sample size.
    w = 1;
    let sv = 0;
    let sw = 0;
    let sw2 = 0;
    for (let i = 0; i < this.size; i++) {
      const k = (this.head - 1 - i + n) % n;
      const wd = w * this.durations[k];
      const r = this.amounts[k] / this.durations[k];
      sv += wd * (r - mean) * (r - mean);
      sw += wd;
      sw2 += wd * wd;
      w *= this.decay;
    }
    const variance = sv / sw;
    const nEff = (sw * sw) / sw2;
    const relErr = mean > 0 ? Math.sqrt(variance / nEff) / mean : this.size > 1 ? Infinity : 0;
    return { mean, relErr, best };
  }
}

/** Exponentially weighted mean and variance of plain values (fixed costs). */
class ValueWindow {
  private readonly values: Float64Array;
  private readonly decay: number;
  private head = 0;
  private size = 0;

  constructor(window: number, alpha: number) {
    this.values = new Float64Array(window);
    this.decay = 1 - alpha;
  }

  get count(): number {
    return this.size;
  }

  add(v: number): void {
    this.values[this.head] = v;
    this.head = (this.head + 1) % this.values.length;
    if (this.size < this.values.length) this.size++;
  }

  stats(): { mean: number; std: number; min: number } {
    const n = this.values.length;
    let w = 1;
    let s = 0;
    let sw = 0;
    let min = Infinity;
    for (let i = 0; i < this.size; i++) {
      const v = this.values[(this.head - 1 - i + n) % n];
      s += w * v;
      sw += w;
      if (v < min) min = v;
      w *= this.decay;
    }
    const mean = s / sw;
    w = 1;
    let sv = 0;
    for (let i = 0; i < this.size; i++) {
      const v = this.values[(this.head - 1 - i + n) % n];
      sv += w * (v - mean) * (v - mean);
      w *= this.decay;
    }
    return { mean, std: Math.sqrt(sv / sw), min };
  }
}

/** Per-device counters (the local view) and measurements. */
interface DeviceView {
  initial: number;
  dirty: number;
  stopCopy: number;
  /** A stop-copy size was ever accepted. */
  stopCopyKnown: boolean;
  /** Clock of the last accepted stop-copy size. */
  stopCopyAt: number;
  precopyValid: boolean;
  stopCopyValid: boolean;
  precopyFailures: number;
  stopCopyFailures: number;
  initialSent: boolean;
  /** Clock of the last accepted precopy query, -1 before the first. */
  lastQueryAt: number;
  /** Clock of the last attempted query (accepted or failed), -1 before the first. */
  lastAttemptAt: number;
  /** Initial and dirty bytes reported by the last accepted query (for the dirty rate). */
  initialAtQuery: number;
  dirtyAtQuery: number;
  /** Bytes read since the last accepted precopy query, and those that went beyond initial data. */
  readSinceQuery: number;
  readBeyondInitialSinceQuery: number;
  /** Clock of the last read of the current streak, -1 when no streak. */
  lastReadAt: number;
  generation: RateWindow;
  /** Bytes dirtied per ms, sampled between queries. */
  dirtying: RateWindow;
  /**
   * The share of the clean sent state dirtied per ms (λ), sampled between queries: bytes dirtied
   * over the clean sent bytes they were dirtied from, averaged over the interval, times its length.
   * Unlike the dirty rate, it does not grow with how much of the state has been sent.
   */
  hazard: RateWindow;
  /** A query past the initial data reported dirty bytes: the device dirties, rate known or not. */
  dirtySeen: boolean;
  /** The most initial bytes reported in this epoch: the state PRE_COPY sends once (the steady-state model's total). */
  initialTotal: number;
  /** Good PRE_COPY info queries in this epoch (the learning pace counts them). */
  queries: number;
  /** Bytes the last λ sample counted as dirtied (the learning pace's precision test). */
  lastSampleDirtied: number;
}

const DEFAULTS = {
  window: 32,
  alpha: 0.25,
  minQueryIntervalMs: 50,
  maxQueryIntervalMs: 250,
  learnQueryIntervalMs: 10,
  learnQueries: 24,
  learnFastDirtyBytes: 256 * 1024,
  requeryBytes: 64 * 1024 * 1024,
  bandSigmas: 2,
  minRelativeBand: 0.05,
  minSamples: 3,
  idleGapMs: 5000,
  smallStateBytes: 1024 * 1024,
  priorRateBytesPerMs: 100_000,
};

/**
 * The slow edge of a band is at most 10x below the mean: noisy samples make a pessimistic
 * prediction, not an infinite one (which would block a switchover of 32 bytes).
 */
const MAX_RELATIVE_BAND = 0.9;

/** A link measured at this share of its cap or more is paced by the cap (its credit counts). */
const LINK_BOUND_SHARE = 0.9;

/** Compression-ratio samples sum wire chunks up to at least this many bytes. */
const RATIO_SAMPLE_WIRE_BYTES = 64 * 1024;

/** Samples shorter than this are not trusted for the "best measured rate". */
const BEST_RATE_MIN_SAMPLE_MS = 10;

/** setStopCopyShape()'s default read size. */
const DEFAULT_STOP_COPY_CHUNK = 1024 * 1024;
/** Smallest STOP_COPY read when a small stop-copy is split over the compression workers. */
export const MIN_STOP_COPY_PIECE = 64 * 1024;
/**
 * A stop-copy of more than this many chunks per worker keeps whole chunks: bench/stop-copy-split.mjs
 * measured equal pieces 0.58-0.89 x the time of whole chunks up to one chunk per worker, and 0.91-1.20
 * x beyond (2.5 MiB on two workers: four pieces of 640 KiB took longer than 1 + 1 + 0.5 MiB).
 */
export const MAX_STOP_COPY_SPLIT_ROUNDS = 1;

/**
 * The size of each STOP_COPY read for a device expected to produce `bytes`, read in chunks of
 * `chunkBytes` and compressed by `workers` workers: always a whole number of bytes. With one worker
 * (or none) whole chunks, or all of it when smaller. With more workers, a stop-copy of up to MAX_STOP_COPY_SPLIT_ROUNDS
 * chunk per worker is read in one equal piece per worker (whole pages, at least
 * MIN_STOP_COPY_PIECE): compressed side by side, they finish together, where one record would keep
 * one worker busy and the others idle. migrate() limits its reads to this at the switchover; the
 * prediction times the last record with it.
 */
export function stopCopyReadBytes(bytes: number, chunkBytes: number, workers: number): number {
  if (!(bytes > 0)) return 0;
  // `bytes` is an estimate (a dirty rate times a time): a read size is a whole number of bytes.
  if (workers < 2) return Math.min(Math.ceil(bytes), chunkBytes);
  const rounds = Math.ceil(bytes / (workers * chunkBytes));
  if (rounds > MAX_STOP_COPY_SPLIT_ROUNDS) return chunkBytes;
  const piece = Math.ceil(Math.max(MIN_STOP_COPY_PIECE, bytes / (workers * rounds)) / 4096) * 4096;
  return Math.min(piece, chunkBytes);
}

/**
 * Validate a kernel-reported byte count: an integer in [0, MAX_SAFE_INTEGER]. u64 values above 2^53
 * (QEMU checks INT64_MAX) cannot be represented exactly and mean a driver bug: reject them.
 */
function checkCount(name: string, value: unknown): number | MigError {
  if (typeof value === 'bigint') {
    if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
      return migError('EOVERFLOW', `${name} ${value} is outside 0..Number.MAX_SAFE_INTEGER`, { detail: { [name]: value.toString() } });
    }
    return Number(value);
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > Number.MAX_SAFE_INTEGER) {
    return migError('EOVERFLOW', `${name} ${String(value)} is not an integer in 0..Number.MAX_SAFE_INTEGER`, { detail: { [name]: value } });
  }
  return value;
}

function toMigError(kind: string, err: unknown): MigError {
  if (typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string') {
    const e = err as { code: string; message?: string };
    return migError(e.code, `${kind} query failed: ${e.message ?? e.code}`, { cause: err });
  }
  return migError(ErrorCodes.PROTOCOL, `${kind} query failed: ${String(err)}`, { cause: err });
}

export class PrecopyEstimator extends EventEmitter<PrecopyEstimatorEvents> {
  readonly devices: number;
  private readonly now: () => number;
  private readonly opts: typeof DEFAULTS;
  private readonly priors: Record<FixedCostKind, number>;
  private readonly views: DeviceView[];
  private readonly wire: RateWindow;
  private readonly ratio: RateWindow;
  /** Raw bytes per ms the whole path moved while the devices had data the whole time. */
  private readonly pipeline: RateWindow;
  /** Raw bytes per ms of one record's compression (dispatch to result on an idle worker). */
  private readonly compressWork: RateWindow;
  /** How STOP_COPY is read: bytes per read, and the compression workers its records spread over. */
  private chunkBytes = DEFAULT_STOP_COPY_CHUNK;
  private compressWorkers = 1;
  /** The destination's lag behind the last record of a stream end the source timed (setEndLag). */
  private endLag: { ms: number; bytes: number } | null = null;
  private readonly fixed: Record<FixedCostKind, ValueWindow>;
  private startedAt: number;
  private lastWireAt: number;
  private epochValue: number;
  private ackedEpoch: number;
  private reinitCount: number;
  private failures: number;
  private totalRead: number;
  private totalWire: number;
  private totalWireRaw: number;
  private inFlight: number;
  private inFlightRaw: number;
  private drainWire = 0;
  private drainRaw = 0;
  private ratioRaw = 0;
  private ratioWire = 0;
  private linkCredit = 0;
  private linkCap = Number.NaN;

  constructor(options: PrecopyEstimatorOptions = {}) {
    super();
    const devices = options.devices ?? 1;
    if (!Number.isInteger(devices) || devices < 1) {
      throw migError(ErrorCodes.USAGE, `devices must be a positive integer, got ${devices}`);
    }
    const alpha = options.alpha ?? DEFAULTS.alpha;
    if (!(alpha > 0 && alpha <= 1)) throw migError(ErrorCodes.USAGE, `alpha must be in (0, 1], got ${alpha}`);
    this.devices = devices;
    this.now = options.now ?? (() => performance.now());
    this.opts = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
      const v = options[key];
      if (v !== undefined) {
        if (typeof v !== 'number' || !(v >= 0)) throw migError(ErrorCodes.USAGE, `${key} must be a non-negative number, got ${String(v)}`);
        this.opts[key] = v;
      }
    }
    this.opts.alpha = alpha;
    this.opts.window = Math.max(1, Math.floor(this.opts.window));
    this.priors = { enterStopCopy: 0, destValidate: 0, destResume: 0, linkLatency: 0, ...options.fixedCosts };
    const w = this.opts.window;
    this.views = [];
    for (let d = 0; d < devices; d++) {
      this.views.push({
        initial: 0,
        dirty: 0,
        stopCopy: 0,
        stopCopyKnown: false,
        stopCopyAt: 0,
        precopyValid: true,
        stopCopyValid: true,
        precopyFailures: 0,
        stopCopyFailures: 0,
        initialSent: false,
        lastQueryAt: -1,
        lastAttemptAt: -1,
        initialAtQuery: 0,
        dirtyAtQuery: 0,
        readSinceQuery: 0,
        readBeyondInitialSinceQuery: 0,
        lastReadAt: -1,
        generation: new RateWindow(w, alpha),
        dirtying: new RateWindow(w, alpha),
        hazard: new RateWindow(w, alpha),
        dirtySeen: false,
        initialTotal: 0,
        queries: 0,
        lastSampleDirtied: 0,
      });
    }
    this.wire = new RateWindow(w, alpha);
    this.pipeline = new RateWindow(w, alpha);
    this.compressWork = new RateWindow(w, alpha);
    this.ratio = new RateWindow(w, alpha);
    this.fixed = {
      enterStopCopy: new ValueWindow(w, alpha),
      destValidate: new ValueWindow(w, alpha),
      destResume: new ValueWindow(w, alpha),
      linkLatency: new ValueWindow(w, alpha),
    };
    this.startedAt = this.now();
    this.lastWireAt = -1;
    this.epochValue = 0;
    this.ackedEpoch = -1;
    this.reinitCount = 0;
    this.failures = 0;
    this.totalRead = 0;
    this.totalWire = 0;
    this.totalWireRaw = 0;
    this.inFlight = 0;
    this.inFlightRaw = 0;
  }

  /** Initial-data epoch: 0 at start, +1 on every REINIT (any device). */
  get epoch(): number {
    return this.epochValue;
  }

  /** Restart the elapsed-time clock (call when PRE_COPY starts, if the estimator was created earlier). */
  restartClock(): void {
    this.startedAt = this.now();
  }

  private view(device: number): DeviceView {
    const v = this.views[device];
    if (v === undefined) throw migError(ErrorCodes.USAGE, `device ${device} is not in 0..${this.devices - 1}`);
    return v;
  }

  /**
   * The STOP_COPY bytes `device` is expected to produce if it stopped now: its last MIG_DATA_SIZE
   * answer plus what it dirtied since, at its measured dirty rate. NaN when its size is unknown or
   * its last query failed.
   */
  expectedStopCopyBytes(device = 0): number {
    const v = this.view(device);
    if (!v.stopCopyKnown || !v.stopCopyValid) return Number.NaN;
    const now = this.now();
    return v.stopCopy + this.dirtyRateOf(v, now).rate * Math.max(0, now - v.stopCopyAt);
  }

  /**
   * How fast `v` dirties, for extrapolating its stop-copy size: its measured rate; with dirty data
   * seen but no rate yet (it takes two queries past the initial data), pessimistically everything
   * read since the last query, as if dirtied again meanwhile (`measured` false).
   */
  private dirtyRateOf(v: DeviceView, now: number): { rate: number; measured: boolean } {
    if (v.dirtying.count > 0) return { rate: v.dirtying.mean(), measured: true };
    if (!v.dirtySeen) return { rate: 0, measured: true };
    const age = now - v.lastQueryAt;
    return { rate: age > 0 ? v.readBeyondInitialSinceQuery / age : 0, measured: false };
  }

  /**
   * True when `device` should be queried now (both VFIO_MIG_GET_PRECOPY_INFO and MIG_DATA_SIZE):
   * never queried; or at least minQueryIntervalMs since the last attempt and either maxQueryIntervalMs
   * passed, the local PRE_COPY view reached 0 (the device may hold more: mlx5 only produces new
   * dirty data when queried), `requeryBytes` were read, or the last query failed. While the device's
   * dirtying is being learned, every learnQueryIntervalMs.
   */
  queryDue(device = 0): boolean {
    const v = this.view(device);
    if (v.lastAttemptAt < 0) return true;
    const since = this.now() - v.lastAttemptAt;
    if (this.learning(v) && since >= this.learnInterval(v)) return true;
    if (since < this.opts.minQueryIntervalMs) return false;
    if (since >= this.opts.maxQueryIntervalMs) return true;
    if (!v.precopyValid || !v.stopCopyValid) return true;
    if (v.initial + v.dirty === 0) return true;
    return v.readSinceQuery >= this.opts.requeryBytes;
  }

  /** Milliseconds until queryDue(device) can next become true (0 when due now). */
  nextQueryInMs(device = 0): number {
    if (this.queryDue(device)) return 0;
    const v = this.view(device);
    const since = this.now() - v.lastAttemptAt;
    if (this.learning(v)) return Math.max(0, this.learnInterval(v) - since);
    const early = v.initial + v.dirty === 0 || v.readSinceQuery >= this.opts.requeryBytes;
    return Math.max(0, (early ? this.opts.minQueryIntervalMs : this.opts.maxQueryIntervalMs) - since);
  }

  /**
   * The device's initial data is being read and its λ has fewer than minSamples samples (within
   * learnQueries queries). Not after a failed query: failures are retried at the ordinary pace.
   */
  private learning(v: DeviceView): boolean {
    return v.precopyValid && v.stopCopyValid && v.initial > 0 && v.hazard.count < this.opts.minSamples && v.queries < this.opts.learnQueries;
  }

  /** The learning pace: half the interval once the last λ sample counted learnFastDirtyBytes. */
  private learnInterval(v: DeviceView): number {
    const o = this.opts;
    return v.lastSampleDirtied >= o.learnFastDirtyBytes ? o.learnQueryIntervalMs / 2 : o.learnQueryIntervalMs;
  }

  /**
   * Feed a VFIO_MIG_GET_PRECOPY_INFO result. Returns false when a value is out of range (negative,
   * fractional, above MAX_SAFE_INTEGER): that is handled as a failed query.
   */
  updatePrecopyInfo(info: PrecopyInfo | { initialBytes: number | bigint; dirtyBytes: number | bigint; reinit?: boolean }, device = 0): boolean {
    const v = this.view(device);
    const initial = checkCount('initialBytes', info.initialBytes);
    if (typeof initial !== 'number') return this.precopyInfoFailed(initial, device);
    const dirty = checkCount('dirtyBytes', info.dirtyBytes);
    if (typeof dirty !== 'number') return this.precopyInfoFailed(dirty, device);
    const now = this.now();
    if (info.reinit === true) {
      // REINIT: initial data restarts at a fresh value and dirty is relative to it; the old
      // dirty baseline means nothing, and the destination must acknowledge the new initial data.
      this.epochValue++;
      this.reinitCount++;
      v.initialSent = false;
      v.initialTotal = initial;
      v.initial = initial;
      v.dirty = dirty;
      v.initialAtQuery = initial;
      v.dirtyAtQuery = dirty;
      v.lastQueryAt = now;
      v.lastAttemptAt = now;
      v.readSinceQuery = 0;
      v.readBeyondInitialSinceQuery = 0;
      v.precopyValid = true;
      v.precopyFailures = 0;
      v.queries = 1;
      v.lastSampleDirtied = 0;
      this.emit('reinit', { device, epoch: this.epochValue, initialBytes: initial });
      if (initial === 0) this.markInitialSent(v, device);
      return true;
    }
    if (v.lastQueryAt >= 0 && v.precopyValid) {
      // Bytes the device dirtied since the last query: growth of dirty_bytes plus what was read of
      // it meanwhile (reads beyond the initial data drained dirty data).
      // Between two queries past the initial data; during it only for a driver that reports
      // dirty_bytes then (SimDevice: what was sent and dirtied again). Drivers such as mlx5 report
      // dirty_bytes 0 while initial data remains, so their jump right after it would be a backlog,
      // not a rate.
      const dt = now - v.lastQueryAt;
      const dirtied = Math.max(0, dirty - v.dirtyAtQuery + v.readBeyondInitialSinceQuery);
      const pastInitial = v.initialAtQuery === 0 && initial === 0;
      const reportsDuringInitial = v.initialAtQuery > 0 && initial > 0 && v.dirtyAtQuery > 0;
      if (dt > 0 && (pastInitial || reportsDuringInitial)) {
        v.dirtying.add(dirtied, dt);
        // λ over the clean sent bytes, at the last query and now (what was read meanwhile was dirtied or not: both ends count).
        const cleanBefore = Math.max(0, v.initialTotal - v.initialAtQuery - v.dirtyAtQuery);
        const cleanNow = Math.max(0, Math.max(v.initialTotal, initial) - initial - dirty);
        const exposure = ((cleanBefore + cleanNow) / 2) * dt;
        if (exposure > 0) {
          v.hazard.add(dirtied, exposure);
          v.lastSampleDirtied = dirtied;
        }
      }
    }
    if (initial === 0 && dirty > 0) v.dirtySeen = true;
    v.initialTotal = Math.max(v.initialTotal, initial);
    v.initial = initial;
    v.dirty = dirty;
    v.initialAtQuery = initial;
    v.dirtyAtQuery = dirty;
    v.lastQueryAt = now;
    v.lastAttemptAt = now;
    v.readSinceQuery = 0;
    v.readBeyondInitialSinceQuery = 0;
    v.precopyValid = true;
    v.precopyFailures = 0;
    v.queries++;
    if (initial === 0) this.markInitialSent(v, device);
    return true;
  }

  /**
   * A VFIO_MIG_GET_PRECOPY_INFO query failed. Pessimistic and visible: emits 'query-failed', and
   * until the next good query (or a temporary end of stream) the device's initial data counts as
   * not sent, so no switchover happens on a number nobody could read. Always returns false.
   */
  precopyInfoFailed(err: unknown, device = 0): false {
    const v = this.view(device);
    v.precopyValid = false;
    v.precopyFailures++;
    v.lastAttemptAt = this.now();
    this.failures++;
    this.emit('query-failed', { kind: 'precopy-info', device, error: toMigError('precopy info', err), consecutive: v.precopyFailures });
    return false;
  }

  /** Feed a VFIO_DEVICE_FEATURE_MIG_DATA_SIZE result. Returns false (a failed query) when out of range. */
  updateStopCopySize(bytes: number | bigint, device = 0): boolean {
    const v = this.view(device);
    const n = checkCount('stopCopyBytes', bytes);
    if (typeof n !== 'number') return this.stopCopySizeFailed(n, device);
    v.stopCopy = n;
    v.stopCopyKnown = true;
    v.stopCopyAt = this.now();
    v.stopCopyValid = true;
    v.stopCopyFailures = 0;
    v.lastAttemptAt = this.now();
    return true;
  }

  /**
   * A MIG_DATA_SIZE query failed. Pessimistic and visible: emits 'query-failed' and the prediction
   * is invalid (downtime Infinity) until the next good query; QEMU's equivalent is its blind 100 GiB.
   */
  stopCopySizeFailed(err: unknown, device = 0): false {
    const v = this.view(device);
    v.stopCopyValid = false;
    v.stopCopyFailures++;
    v.lastAttemptAt = this.now();
    this.failures++;
    this.emit('query-failed', { kind: 'stop-copy-size', device, error: toMigError('stop-copy size', err), consecutive: v.stopCopyFailures });
    return false;
  }

  /**
   * `bytes` (> 0) were read from `device`'s saving session. Decrements the local view (initial first,
   * then dirty; stop-copy by all of it; floored at 0) and, when `durationMs` is given or the previous
   * read belongs to the same streak, samples the device's generation rate. Call recordEmpty() when a
   * read finds no data, so the pause is not taken for slowness.
   */
  recordRead(bytes: number, opts: { device?: number; durationMs?: number; sample?: boolean } = {}): void {
    if (!(bytes > 0)) return;
    const device = opts.device ?? 0;
    const v = this.view(device);
    const now = this.now();
    const hadInitial = v.initial > 0;
    const fromInitial = Math.min(v.initial, bytes);
    v.initial -= fromInitial;
    const rest = bytes - fromInitial;
    v.dirty -= Math.min(v.dirty, rest);
    // Every byte read is a byte STOP_COPY will not have to move (the size includes unread PRE_COPY data).
    v.stopCopy -= Math.min(v.stopCopy, bytes);
    v.readSinceQuery += bytes;
    v.readBeyondInitialSinceQuery += rest;
    this.totalRead += bytes;
    if (opts.sample === false) {
      // The caller samples the generation rate itself (sampleGeneration()).
    } else if (opts.durationMs !== undefined) {
      v.generation.add(bytes, opts.durationMs);
    } else if (v.lastReadAt >= 0 && now - v.lastReadAt <= this.opts.idleGapMs) {
      v.generation.add(bytes, now - v.lastReadAt);
    }
    v.lastReadAt = opts.sample === false ? -1 : now;
    // QEMU sends INIT_DATA_SENT once its local initial count reaches 0 by reading.
    if (hadInitial && v.initial === 0 && v.precopyValid) this.markInitialSent(v, device);
  }

  /**
   * A generation-rate sample taken by the caller: `bytes` read from `device` in `durationMs` of read
   * time. For callers that report reads as they happen (recordRead with `sample: false`, so the
   * local view is always current) and time them in batches long enough to be more than noise.
   */
  sampleGeneration(bytes: number, durationMs: number, device = 0): void {
    if (!(bytes > 0) || !(durationMs > 0) || !Number.isFinite(durationMs)) return;
    this.view(device).generation.add(bytes, durationMs);
  }

  /**
   * A read of `device` found no data (ENOMSG, or 0 in PRE_COPY for mtty-like drivers): the PRE_COPY
   * counters are 0 for now (the kernel only reports a temporary end when both are), the read streak
   * and the wire streak end (the pause that follows is the device having nothing, not slowness).
   */
  recordEmpty(device = 0): void {
    const v = this.view(device);
    v.initial = 0;
    v.dirty = 0;
    v.lastReadAt = -1;
    this.lastWireAt = -1;
    v.precopyValid = true;
    if (!v.initialSent) this.markInitialSent(v, device);
  }

  /** End the current read and wire streaks without touching the counters (the caller paused on purpose). */
  markIdle(): void {
    for (const v of this.views) v.lastReadAt = -1;
    this.lastWireAt = -1;
  }

  /**
   * `wireBytes` left for the link (after compression), carrying `rawBytes` of device data (records'
   * framing counts as wire bytes only). Call it when the transport accepted them (write callback);
   * the interval since the previous call in the same streak samples the wire throughput.
   */
  recordWire(wireBytes: number, rawBytes: number, opts: { durationMs?: number } = {}): void {
    if (!(wireBytes > 0) || !(rawBytes >= 0)) return;
    const now = this.now();
    this.totalWire += wireBytes;
    this.totalWireRaw += rawBytes;
    // Ratio samples from sums of at least RATIO_SAMPLE_WIRE_BYTES: a record's header chunk carries
    // no raw bytes and its payload chunk all of them; per-chunk ratios would be noise.
    this.ratioRaw += rawBytes;
    this.ratioWire += wireBytes;
    if (this.ratioWire >= RATIO_SAMPLE_WIRE_BYTES) {
      if (this.ratioRaw > 0) this.ratio.add(this.ratioRaw, this.ratioWire);
      this.ratioRaw = 0;
      this.ratioWire = 0;
    }
    if (opts.durationMs !== undefined) {
      this.wire.add(wireBytes, opts.durationMs);
    } else if (this.lastWireAt >= 0 && now - this.lastWireAt <= this.opts.idleGapMs) {
      this.wire.add(wireBytes, now - this.lastWireAt);
    }
    this.lastWireAt = now;
  }

  /**
   * Bytes a switchover moves after the devices stop, ahead of their STOP_COPY data: `wireBytes`
   * already encoded and `rawBytes` read from the devices but not encoded yet (or, past the
   * source's queues, not yet loaded by the destination). The devices no longer count them and the
   * link has yet to carry them: they are downtime. Call it before each decision; 0 when unknown.
   * Negative or non-finite values are ignored.
   */
  setInFlight(wireBytes: number, rawBytes = 0): void {
    if (wireBytes >= 0 && Number.isFinite(wireBytes)) this.inFlight = wireBytes;
    if (rawBytes >= 0 && Number.isFinite(rawBytes)) this.inFlightRaw = rawBytes;
  }

  /**
   * Bytes a switchover empties onto the link before it stops the devices (the orchestrator holds
   * the device reads and waits for its queues): `wireBytes` encoded, `rawBytes` not encoded yet.
   * They are not downtime, but the devices run, and dirty, while they leave: their time adds to
   * the growth of the stop-copy data (`drainMs`). Call it before each decision; 0 when unknown.
   * Negative or non-finite values are ignored.
   */
  setDrain(wireBytes: number, rawBytes = 0): void {
    if (wireBytes >= 0 && Number.isFinite(wireBytes)) this.drainWire = wireBytes;
    if (rawBytes >= 0 && Number.isFinite(rawBytes)) this.drainRaw = rawBytes;
  }

  /**
   * The value a fixed cost takes until it is measured (the `fixedCosts` option, or a proxy the caller
   * measured, e.g. the link's round trip before any switchover). It enters the prediction and its
   * band, never the lower bound. Negative or non-finite values are ignored.
   */
  setFixedCostPrior(kind: FixedCostKind, ms: number): void {
    if (!(kind in this.priors)) throw migError(ErrorCodes.USAGE, `unknown fixed cost kind ${String(kind)}`);
    if (!(ms >= 0) || !Number.isFinite(ms)) return;
    this.priors[kind] = ms;
  }

  /**
   * The whole path's throughput: `rawBytes` read from the devices in `durationMs` during which every
   * device had data pending the whole time (no temporary end of stream), so the path, not the
   * devices' dirtying, set the pace. It bounds the transfer rate: a bottleneck between device and
   * link (compression workers, the destination's loading) shows here and in neither the generation
   * nor the wire samples, which time the device reads and the link's bursts.
   */
  recordPipeline(rawBytes: number, durationMs: number): void {
    if (!(rawBytes > 0) || !(durationMs > 0) || !Number.isFinite(durationMs)) return;
    this.pipeline.add(rawBytes, durationMs);
  }

  /**
   * A compression job of `rawBytes` took `ms` from dispatch to result on an idle worker
   * (CompressionPool.timedJobs()): how long one record takes to compress, where the pipeline's rate
   * is all the workers'. The prediction uses the median rate of the window. Jobs smaller than the
   * smallest STOP_COPY piece (MIN_STOP_COPY_PIECE), whose time is mostly the round trip, and
   * values that are not positive are ignored.
   */
  recordCompressionWork(rawBytes: number, ms: number): void {
    if (!(rawBytes >= MIN_STOP_COPY_PIECE) || !(ms > 0) || !Number.isFinite(ms)) return;
    this.compressWork.add(rawBytes, ms);
  }

  /**
   * How STOP_COPY data will be read and sent: `chunkBytes` per read, and the compression workers its
   * records are spread over (1 without compression). The prediction times the stop-copy's last
   * record through every stage with it (see stopCopyReadBytes). Defaults: 1 MiB, 1 worker.
   */
  setStopCopyShape(chunkBytes: number, compressWorkers = 1): void {
    if (!(chunkBytes >= 1) || !Number.isFinite(chunkBytes)) throw migError(ErrorCodes.USAGE, `chunkBytes must be a positive number, got ${String(chunkBytes)}`);
    if (!Number.isInteger(compressWorkers) || compressWorkers < 1) throw migError(ErrorCodes.USAGE, `compressWorkers must be a positive integer, got ${String(compressWorkers)}`);
    this.chunkBytes = chunkBytes;
    this.compressWorkers = compressWorkers;
  }

  /**
   * Wire bytes the link would take at once, ahead of its measured rate: a bandwidth cap's token
   * bucket credit (TokenBucket.available()). A switchover's first bytes up to it leave unpaced.
   * 0 (the default) when the link has no such credit. `capBytesPerMs`, the bucket's rate: the credit
   * counts only while the measured wire rate is that cap's (a slower stage before the link keeps the
   * bucket full, and its bytes wait for that stage, not for the bucket). Negative or non-finite
   * values are ignored.
   */
  setLinkCredit(wireBytes: number, capBytesPerMs?: number): void {
    if (wireBytes >= 0 && Number.isFinite(wireBytes)) this.linkCredit = wireBytes;
    if (capBytesPerMs !== undefined && capBytesPerMs > 0 && Number.isFinite(capBytesPerMs)) this.linkCap = capBytesPerMs;
  }

  /**
   * How far the destination lagged behind the last `bytes` (raw) of a stream it was sent: a barrier
   * ping right after them came back `ms` later than an idle round trip (which goes to the
   * linkLatency fixed cost on its own). A stop-copy ends the same way, but behind its own last
   * record: the prediction counts `ms` scaled by that record's share of `bytes` (a 32-byte
   * stop-copy nearly nothing; one as large as `bytes` all of it). The last call counts; values that
   * are negative, non-finite, or with no bytes are ignored.
   */
  setEndLag(ms: number, bytes: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms) || !(bytes > 0) || !Number.isFinite(bytes)) return;
    this.endLag = { ms, bytes };
  }

  /** A fixed cost was measured (e.g. a MigrationCore 'arc' event's ms, or the destination's validation time it reported). */
  recordFixedCost(kind: FixedCostKind, ms: number): void {
    const w = this.fixed[kind];
    if (w === undefined) throw migError(ErrorCodes.USAGE, `unknown fixed cost kind ${String(kind)}`);
    if (!(ms >= 0) || !Number.isFinite(ms)) return;
    w.add(ms);
  }

  /**
   * The destination acknowledged loading the initial data (switchover-ack). An ack for an older
   * epoch (sent before a REINIT it had not seen) is ignored. Returns whether it counted.
   */
  acknowledgeSwitchover(epoch = this.epochValue): boolean {
    if (epoch !== this.epochValue) return false;
    this.ackedEpoch = epoch;
    return true;
  }

  /** Every device's initial data is sent (and no device's precopy query is currently failing). */
  get initialSent(): boolean {
    return this.views.every((v) => v.initialSent && v.precopyValid);
  }

  get switchoverAcked(): boolean {
    return this.ackedEpoch === this.epochValue;
  }

  private markInitialSent(v: DeviceView, device: number): void {
    if (v.initialSent) return;
    v.initialSent = true;
    this.emit('initial-sent', { device, epoch: this.epochValue, all: this.initialSent });
  }

  /** The downtime a switchover would cost now. */
  predict(): Prediction {
    const o = this.opts;
    const k = o.bandSigmas;
    const now = this.now();

    // Fixed costs first: the time to enter STOP_COPY also decides how much more gets dirtied.
    const fixedMs = { enterStopCopy: 0, destValidate: 0, destResume: 0, linkLatency: 0, total: 0 };
    let fixedLow = 0;
    // The lower bound (an abort's proof) counts measured costs only: a prior or a proxy proves nothing.
    let fixedFloor = 0;
    let fixedVar = 0;
    for (const kind of FIXED_COST_KINDS) {
      const w = this.fixed[kind];
      if (w.count === 0) {
        fixedMs[kind] = this.priors[kind];
        fixedLow += this.priors[kind];
        continue;
      }
      const s = w.stats();
      fixedMs[kind] = s.mean;
      const low = Math.min(s.min, Math.max(0, s.mean - k * s.std));
      fixedLow += low;
      fixedFloor += low;
      fixedVar += s.std * s.std;
    }
    fixedMs.total = fixedMs.enterStopCopy + fixedMs.destValidate + fixedMs.destResume + fixedMs.linkLatency;
    const fixedHigh = fixedMs.total + k * Math.sqrt(fixedVar);
    fixedLow = Math.min(fixedLow, fixedMs.total);

    const ws = this.wire.stats(BEST_RATE_MIN_SAMPLE_MS);
    const rs = this.ratio.stats();
    const ratio = rs.mean > 0 ? rs.mean : 1;
    const ratioRel = Number.isFinite(rs.relErr) ? rs.relErr : 0;
    const wireKnown = this.wire.count >= o.minSamples && ws.mean > 0;
    // Wire bytes already queued go out before anything STOP_COPY produces; in raw-byte terms.
    const inFlightRaw = this.inFlight * ratio + this.inFlightRaw;
    const drainRaw = this.drainWire * ratio + this.drainRaw;
    const ps = this.pipeline.count >= o.minSamples ? this.pipeline.stats() : null;
    const pipeMean = ps !== null ? ps.mean : Number.NaN;
    // An unmeasured link is not a slower one: the link shows its rate only while data waits for it,
    // which it never does when a stage before it is the bottleneck (uncapped, with zstd, the
    // compression workers), and then the whole path's measured rate stands for it, not the prior.
    const pipeKnown = pipeMean > 0;
    // A token bucket's credit leaves at once, not at the capped rate: only the rest is paced.
    // Only while the cap paces the link: when something before it is slower (compression workers),
    // the bucket stays full and its credit says nothing; the measured wire rate is that bottleneck's.
    // Once the whole path's rate is measured, though, it bounds the transfer itself (pipeMs below,
    // and the drain), so the credit counts for the prediction whatever the wire samples read: a
    // PRE_COPY that sends only what the workload dirties never waits for the cap, and its wire
    // samples time that supply (55-166 MB/s on a 200 MB/s cap), not the link. The lower bound keeps
    // the stricter rule (its transfer has no path term). The drain spends the credit first.
    const capBound = !(this.linkCap > 0) || ws.mean >= LINK_BOUND_SHARE * this.linkCap;
    const creditTotal = wireKnown && (capBound || pipeKnown) ? this.linkCredit * ratio : 0;
    const creditBestRaw = Math.max(0, (wireKnown && capBound ? this.linkCredit * ratio : 0) - drainRaw);
    // Past its credit a capped link moves no more than its cap, whatever the samples say: samples
    // taken while a refilled bucket let a burst through read above it (230 MB/s under a 200 MB/s
    // cap, and a stop-copy predicted 13% too fast).
    const linkRate = this.linkCap > 0 ? Math.min(ws.mean, this.linkCap) : ws.mean;
    const creditRaw = Math.max(0, creditTotal - drainRaw);
    // The drain's time: the queued bytes beyond the credit at the link's raw rate, and never less
    // than all of them at the whole path's measured rate (a credit does not speed up what is beyond
    // the link: at a 200 MB/s cap with 6 MB of credit, 6 MB drained in 20 ms, not at once).
    const drainMs = Math.max(
      Math.max(0, drainRaw - creditTotal) / (wireKnown ? linkRate * ratio : pipeKnown ? pipeMean : o.priorRateBytesPerMs),
      pipeKnown ? drainRaw / pipeMean : 0,
    );

    let stopCopyBytes = 0;
    let floorBytes = 0;
    let growthBytes = 0;
    let valid = true;
    let confident = true;
    // Devices produce their STOP_COPY data in parallel; the link is shared: the transfer takes the
    // longest of each device at its own generation rate and all bytes at the wire's raw rate.
    let genMs = 0;
    let genMsLow = 0;
    let genMsHigh = 0;
    let genMsBest = 0;
    let slowestGen = NaN;
    let largestDeviceBytes = 0;
    /** The stop-copy bytes of the device whose generation takes longest (genMs's). */
    let genBottleneckBytes = 0;
    let dirtyRateBytesPerMs = 0;
    // The dirtying model: each device's λ (share of its clean sent state dirtied per ms) times its
    // whole state is how fast it dirties the state, sent or not (a uniform extrapolation).
    let sentBytes = 0;
    let totalBytes = 0;
    let stateDirty = 0;
    let stateDirtyLow = 0;
    let hazardSamples = Infinity;
    for (const v of this.views) {
      // The part of the state PRE_COPY has covered: the workload was observed over it.
      sentBytes += Math.max(0, v.initialTotal - v.initial);
      totalBytes += v.initialTotal;
      if (v.hazard.count > 0) {
        const h = v.hazard.stats();
        if (h.mean > 0) {
          stateDirty += h.mean * v.initialTotal;
          const rel = Math.min(MAX_RELATIVE_BAND, Math.max(o.minRelativeBand, k * (Number.isFinite(h.relErr) ? h.relErr : Infinity)));
          stateDirtyLow += h.mean * (1 - rel) * v.initialTotal;
        }
        hazardSamples = Math.min(hazardSamples, v.hazard.count);
      } else if (v.dirtySeen) {
        hazardSamples = 0;
      }
      if (!v.stopCopyKnown || !v.stopCopyValid) valid = false;
      // The device keeps dirtying from its last size query until it stops: that much more for STOP_COPY.
      const { rate: dirtyRate, measured } = this.dirtyRateOf(v, now);
      if (!measured) confident = false;
      else dirtyRateBytesPerMs += dirtyRate;
      // Until it stops: since the query, the drain, the arcs. (What is in flight after the stop is not dirtied any more.)
      const growth = v.stopCopyKnown ? dirtyRate * Math.max(0, now - v.stopCopyAt + drainMs + fixedMs.enterStopCopy) : 0;
      growthBytes += growth;
      const bytes = v.stopCopy + growth;
      largestDeviceBytes = Math.max(largestDeviceBytes, bytes);
      stopCopyBytes += v.stopCopy;
      const floor = Math.max(0, v.stopCopy - v.initial - v.dirty);
      floorBytes += floor;
      const s = v.generation.stats(BEST_RATE_MIN_SAMPLE_MS);
      if (v.generation.count < o.minSamples || !(s.mean > 0)) {
        // Unmeasured: the wire term (or the prior) stands for it.
        if (bytes > o.smallStateBytes) confident = false;
        continue;
      }
      if (!(s.mean >= slowestGen)) slowestGen = s.mean;
      const rel = Math.max(o.minRelativeBand, k * s.relErr);
      if (bytes / s.mean > genMs) genBottleneckBytes = bytes;
      genMs = Math.max(genMs, bytes / s.mean);
      genMsLow = Math.max(genMsLow, bytes / (s.mean * (1 + rel)));
      genMsHigh = Math.max(genMsHigh, bytes / (s.mean * (1 - Math.min(rel, MAX_RELATIVE_BAND))));
      const best = Math.max(s.mean * (1 + rel), Number.isFinite(s.best) ? s.best : 0);
      genMsBest = Math.max(genMsBest, floor / best);
    }
    const transferBytes = stopCopyBytes + growthBytes + inFlightRaw;
    // A capped link moves no more wire bytes than its cap past the credit, whatever its samples'
    // spread: only the compression ratio's spread lifts the raw rate's fast edge above cap x ratio.
    // (Samples taken while the first credit went out put the fast edge 1.5 x above the cap on a
    // 50 MB/s zstd cell, and held its early abort back by ~170 ms.)
    const rateCap = wireKnown && this.linkCap > 0 ? this.linkCap * ratio * (1 + Math.max(o.minRelativeBand, k * ratioRel)) : Infinity;
    let wireMs: number;
    let wireMsLow: number;
    let wireMsHigh: number;
    let wireMsBest: number;
    if (wireKnown) {
      const raw = linkRate * ratio;
      const rel = Math.max(o.minRelativeBand, k * Math.sqrt(ws.relErr * ws.relErr + ratioRel * ratioRel));
      const paced = Math.max(0, transferBytes - creditRaw);
      wireMs = paced / raw;
      wireMsLow = paced / Math.min(raw * (1 + rel), Math.max(raw, rateCap));
      wireMsHigh = paced / (raw * (1 - Math.min(rel, MAX_RELATIVE_BAND)));
      const best = Math.max(raw * (1 + rel), Number.isFinite(ws.best) ? ws.best * ratio : 0);
      wireMsBest = Math.max(0, floorBytes - creditBestRaw) / best;
    } else if (pipeKnown) {
      // The link never had to wait for: the path's measured rate bounds it (pipeMs below), and a
      // prior would only stand in for a measurement that exists.
      wireMs = 0;
      wireMsLow = 0;
      wireMsHigh = 0;
      wireMsBest = 0; // an unmeasured link proves nothing about a lower bound
    } else {
      // Nothing measured on the wire yet: the prior rate, with a wide band (x4 either way).
      if (transferBytes > o.smallStateBytes) confident = false;
      const p = o.priorRateBytesPerMs;
      wireMs = transferBytes / p;
      wireMsLow = transferBytes / (p * 4);
      wireMsHigh = (transferBytes * 4) / p;
      wireMsBest = 0; // an unmeasured link proves nothing about a lower bound
    }
    // The whole path's rate, when measured, bounds the transfer: a bottleneck between the device and
    // the link (compression workers, the destination) shows in it and in neither of the others, and a
    // link's credit does not speed up what is beyond the link. Under a cap the path is measured at
    // the cap, and what a credit's burst meets beyond it was never seen: on the bench's 64 MiB cells
    // on a 200 MB/s cap, 4-6 MB under 7-8 MB of credit crossed at 150-180 MB/s, not at once, and were
    // predicted 51-66% short while the credit counted. So the path's measured rate is the bound.
    let pipeMs = 0;
    let pipeMsLow = 0;
    let pipeMsHigh = 0;
    let pipelineRate = Number.NaN;
    if (ps !== null) {
      pipelineRate = ps.mean;
      if (ps.mean > 0) {
        const rel = Math.max(o.minRelativeBand, k * ps.relErr);
        pipeMs = transferBytes / ps.mean;
        pipeMsLow = transferBytes / (ps.mean * (1 + rel));
        pipeMsHigh = transferBytes / (ps.mean * (1 - Math.min(rel, MAX_RELATIVE_BAND)));
      }
    }
    const transferMs = Math.max(genMs, wireMs, pipeMs);
    const transferLow = Math.max(genMsLow, wireMsLow, pipeMsLow);
    const transferHigh = Math.max(genMsHigh, wireMsHigh, pipeMsHigh);
    const transferBest = Math.max(genMsBest, wireMsBest);

    // The pipeline's fill. A rate is what overlapping stages sustain; one record goes through them
    // one after the other: read, compressed by one worker (the pipeline's rate is all of them), then
    // sent. n records take the first one's time through every stage plus n - 1 periods of the
    // slowest stage: transferMs + (sum of stages - one period), a period being a record's share of
    // transferMs (of its device's bytes when a device's generation is the slowest). A stop-copy of one
    // record per worker is nearly all fill (650 KB of zstd level 1 took 2.3 ms on one worker in
    // process, against 1.3 at the two workers' rate). The link counts only past a cap's credit
    // (within it a record leaves at once): a record's share of the link's paced time. The
    // destination's lag behind the last byte is in the linkLatency fixed cost (the drain's ping
    // measures it), so it is not a stage here.
    const piece = stopCopyReadBytes(largestDeviceBytes, this.chunkBytes, this.compressWorkers);
    // The median: a job's result waits for the event loop, which PRE_COPY's reads keep busy in
    // bursts (256 KiB jobs took 1.0-1.5 ms, a fifth of them 4-13 ms; the mean read 5 ms).
    const cw = this.compressWork.median();
    let fillMs = 0;
    // A read asks for `piece` and gets no more than the device has.
    const record = Math.min(piece, largestDeviceBytes);
    // The destination's lag behind that last record, scaled from the lag the source timed.
    const endLagMs = this.endLag === null ? 0 : this.endLag.ms * Math.min(1, record / this.endLag.bytes);
    fixedMs.linkLatency += endLagMs;
    fixedMs.total += endLagMs;
    if (record > 0 && transferMs > 0 && transferBytes > 0) {
      let stages = 0;
      if (slowestGen > 0) stages += record / slowestGen;
      if (cw > 0) stages += record / cw;
      // On the link a record takes its share of the paced time: with a cap's credit ahead of it,
      // less than its size at the cap (a stop-copy of one 700 KB record behind 320 KB of credit
      // on a 50 MB/s link was counted twice, 8.7 ms of transfer and 15.6 of fill: predicted
      // 21.6 ms for 11.8).
      if (wireKnown) stages += (record * wireMs) / transferBytes;
      const bottleneckBytes = genMs >= transferMs && genBottleneckBytes > 0 ? genBottleneckBytes : transferBytes;
      fillMs = Math.max(0, stages - (Math.min(record, bottleneckBytes) * transferMs) / bottleneckBytes);
    }

    const rateBytesPerMs = transferMs > 0 ? transferBytes / transferMs : this.effectiveRate(ws.mean * ratio, slowestGen);
    const rateHighBytesPerMs = transferMs > 0 ? (transferLow > 0 ? transferBytes / transferLow : Infinity) : rateBytesPerMs;
    const bestRateBytesPerMs = transferBest > 0 ? floorBytes / transferBest : rateBytesPerMs;
    // The model speaks once a tenth of the state (at least smallStateBytes) was observed and each
    // dirtying device has minSamples of λ: a hot set smaller than that tenth is diluted, not extrapolated.
    const modelReady =
      stateDirty > 0 && Number.isFinite(hazardSamples) && hazardSamples >= o.minSamples && sentBytes >= Math.max(o.smallStateBytes, totalBytes / 10);
    const stateDirtyRateBytesPerMs = modelReady ? stateDirty : Number.NaN;
    const stateDirtyRateLowBytesPerMs = modelReady ? stateDirtyLow : Number.NaN;
    const steadyDirtyBytes = modelReady && rateBytesPerMs > 0 ? Math.max(0, totalBytes * (1 - rateBytesPerMs / stateDirty)) : Number.NaN;
    return {
      valid,
      confident,
      rateBounded: wireKnown || pipeKnown,
      downtimeMs: valid ? fixedMs.total + transferMs + fillMs : Infinity,
      lowMs: valid ? fixedLow + endLagMs + transferLow + fillMs : Infinity,
      highMs: valid ? fixedHigh + endLagMs + transferHigh + fillMs : Infinity,
      lowerBoundMs: Math.min(fixedFloor, fixedLow) + transferBest,
      stopCopyBytes,
      floorBytes,
      growthBytes,
      inFlightBytes: this.inFlight + this.inFlightRaw / ratio,
      drainBytes: this.drainWire + this.drainRaw / ratio,
      drainMs,
      transferBytes,
      rateBytesPerMs,
      bestRateBytesPerMs,
      generationRateBytesPerMs: slowestGen,
      wireRateBytesPerMs: this.wire.count > 0 ? ws.mean : NaN,
      compressionRatio: ratio,
      pipelineRateBytesPerMs: pipelineRate,
      linkCreditBytes: this.linkCredit,
      dirtyRateBytesPerMs,
      stateDirtyRateBytesPerMs,
      stateDirtyRateLowBytesPerMs,
      rateHighBytesPerMs,
      rateCapBytesPerMs: rateCap,
      steadyDirtyBytes,
      transferMs,
      fillMs,
      stopCopyReadBytes: piece,
      compressWorkerRateBytesPerMs: cw,
      endLagMs,
      fixedMs,
    };
  }

  private effectiveRate(wireRaw: number, gen: number): number {
    const a = wireRaw > 0 ? wireRaw : this.opts.priorRateBytesPerMs;
    return gen > 0 ? Math.min(a, gen) : a;
  }

  /** All the numbers at once: what a switchover policy is fed (spread it into a PolicySnapshot). */
  snapshot(): EstimatorSnapshot {
    const prediction = this.predict();
    const nowMs = this.now();
    let initialBytes = 0;
    let dirtyBytes = 0;
    for (const v of this.views) {
      initialBytes += v.initial;
      dirtyBytes += v.dirty;
    }
    return {
      nowMs,
      elapsedMs: nowMs - this.startedAt,
      initialBytes,
      dirtyBytes,
      stopCopyBytes: prediction.stopCopyBytes,
      initialSent: this.initialSent,
      switchoverAcked: this.switchoverAcked,
      epoch: this.epochValue,
      bytesRead: this.totalRead,
      wireBytes: this.totalWire,
      wireRawBytes: this.totalWireRaw,
      queryFailed: this.views.some((v) => !v.precopyValid || !v.stopCopyValid),
      queryFailures: this.failures,
      reinits: this.reinitCount,
      dirtyRateBytesPerMs: prediction.dirtyRateBytesPerMs,
      throughputBytesPerMs: prediction.rateBytesPerMs,
      prediction,
    };
  }
}
