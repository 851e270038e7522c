/**
 * The source side of a live migration: `migrate(opts)`.
 *
 * Phases (each failure names the one it happened in):
 *   connect -> handshake (device table; the destination refuses incompatible devices and answers
 *   'ready' only once its devices are in RESUMING: no source device has left RUNNING before) ->
 *   precopy (PRE_COPY streaming under the switchover policy, switchover-ack from the destination,
 *   re-armed on REINIT) -> switchover (every device to its P2P state, then every device to
 *   STOP_COPY) -> stop-copy (drain every saving session to its end, send digests, commit) ->
 *   validate (the destination's RESUMING -> STOP succeeded for every device: 'validated') ->
 *   resume (the destination is RUNNING: 'running') -> complete.
 *
 * Nothing is lost: until 'validated' arrives every failure returns every source device to RUNNING
 * (P2P-ordered) with its state intact, and tells the destination to reset its devices. After it, the
 * source devices go STOP_COPY -> STOP, outside the downtime.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { Duplex, Writable } from 'node:stream';
import type { TransportOptions } from '../transport/types.js';
import type { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, type MigError, migError } from '../fsm/errors.js';
import { DeviceState } from '../fsm/states.js';
import type { SavingSession, Session } from '../fsm/types.js';
import { PrecopyEstimator, stopCopyReadBytes } from '../streams/estimator.js';
import { createSavingStream, type SavingStream } from '../streams/saving-stream.js';
import { chunksOf } from '../streams/chunks.js';
import { RecordType, ROUND_FLAG_EMPTY } from '../streams/wire-format.js';
import {
  CONTROL_PROTOCOL_VERSION,
  SOURCE_FEATURES,
  FrameParser,
  LOADED_REPORT_MS,
  parseReturnMessage,
  type ControlFeatures,
  type ForwardMessage,
  type MigrationPhase,
  type ReturnMessage,
} from './control.js';
import { FailureLatch, asPhaseError, sleep, watchRun } from './latch.js';
import { checkP2PSet, enterP2P, enterStopCopy, hasPrecopy, resumeAll, rollbackAll } from './p2p.js';
import { sharedCompressionPool, validateMinSaving } from '../streams/compression-pool.js';
import { digestOf, openForward, openTransport, parseCompression, type Compression, type ForwardWriter } from './wire.js';
import { DefaultSwitchoverPolicy, StepwiseSwitchoverPolicy, TokenBucket, policyAbortError, type SwitchoverPolicy } from './policy.js';
import {
  throughputMBps,
  type DecisionEvent,
  type DeviceSummary,
  type MigrationEvents,
  type MigrationSummary,
  type ProgressEvent,
} from './summary.js';

export interface MigrateOptions {
  /** The devices to migrate, in device-table order (the destination lists its devices in the same order). */
  devices: readonly MigrationCore[];
  /**
   * A connected Duplex, or a transport URL (`unix:PATH`, `tcp:HOST:PORT`, `tls:HOST:PORT`, `fd:N`).
   * A plain Writable (or `file:PATH`) only with `checkpoint`.
   */
  transport: Duplex | Writable | string;
  /** Options for connectTransport() when `transport` is a URL (tls certificates, timeouts). */
  transportOptions?: TransportOptions;
  /**
   * One-way checkpoint (save): no return path, no PRE_COPY; the devices go through STOP_COPY, the
   * stream ends with their digests, and the devices return to RUNNING afterwards. `save()` sets it.
   */
  checkpoint?: boolean;
  /** Device names for the stream's device table (default dev0, dev1, ...). */
  names?: readonly string[];
  /** 'none' (default), 'zstd', 'zstd:LEVEL' or { zstd: LEVEL }. */
  compression?: Compression;
  /**
   * With compression: the share of a record's bytes its zstd frame must save, in [0, 1), else the
   * record goes raw (the destination then takes a view instead of decompressing). Default
   * DEFAULT_MIN_SAVING (1/32); 0 sends every frame smaller by a byte.
   */
  compressionMinSaving?: number;
  /**
   * Digest of each device's raw data in its DEVICE_END record, which the destination's decoder
   * verifies: 'crc32' (default), 'sha256', any node:crypto hash name, or null for none (every record
   * still carries its payload crc32, sequence number and the device's byte count). 'crc32' chains the
   * records' own crcs, so it costs nothing more for uncompressed records; 'sha256' reads every byte
   * once more at each end, about a quarter of each side's CPU on an uncompressed local link
   * (docs/PERFORMANCE.md), and catches nothing more in transit: an attacker who can alter records can
   * recompute either (use the tls transport against that).
   */
  digest?: string | null;
  /** Downtime limit given to the policy, ms. Default 300. */
  downtimeLimitMs?: number;
  /** A SwitchoverPolicy object, or 'default' / 'stepwise'. */
  policy?: PolicyChoice;
  /**
   * PRE_COPY time budget of the built-in policies, ms: past it they abort (a workload that never
   * lets PRE_COPY converge must not keep a migration alive forever). Default 60000.
   */
  precopyBudgetMs?: number;
  /** Bandwidth cap on the wire bytes, bytes per second (0 or absent: none). */
  bandwidth?: number;
  signal?: AbortSignal;
  /** Fail with VFIO_MIG_ERR_STALLED after this long without progress, ms. Default 15000. */
  stallTimeoutMs?: number;
  /** Migrate a multi-device set although a device lacks P2P (its DMA into a stopped peer is not quiesced). */
  acceptP2PRisk?: boolean;
  /** Use PRE_COPY on devices that support it. Default true. */
  precopy?: boolean;
  /**
   * Policy period in PRE_COPY, ms: the devices' sizes are queried and the policy asked this often.
   * Default 25: two size ioctls per device per tick cost microseconds. While the initial data is
   * read and an early verdict's numbers are still forming, the policy is asked every 10 ms whatever
   * the tick, so an infeasible migration is seen as soon as a tenth of the state was sent. Progress
   * events come at most every 100 ms in PRE_COPY.
   */
  tickMs?: number;
  /** Progress event period outside PRE_COPY, ms. Default 250. */
  progressMs?: number;
  /**
   * Connections carrying device data, this one included (default 1). More than 1 needs a URL
   * transport: the extra ones are opened to the same URL after the handshake; DATA records go round
   * robin and carry their per-device sequence number (mod 2^16) in the record's channel field; the
   * destination puts them back in order in a byte-capped reorder buffer.
   */
  channels?: number;
  /**
   * Bytes per device read (and per DATA record). Default from the device's estimated state size
   * (its identity's stateSize): 256 KiB, doubled up to 1 MiB while the state still fills 256 reads.
   */
  chunkSize?: number;
}

/** A policy object, or the name of a built-in one ('stepwise' raises the limit up to 4x). */
export type PolicyChoice = SwitchoverPolicy | 'default' | 'stepwise';

export function resolvePolicy(p: PolicyChoice | undefined, limitMs: number, precopyBudgetMs = Infinity): SwitchoverPolicy {
  if (p === undefined || p === 'default') return new DefaultSwitchoverPolicy({ precopyBudgetMs });
  if (p === 'stepwise') return new StepwiseSwitchoverPolicy({ maxLimitMs: 4 * limitMs, precopyBudgetMs });
  if (typeof p === 'object' && p !== null && typeof p.decide === 'function') return p;
  throw migError(ErrorCodes.USAGE, `unknown policy ${String(p)}: expected 'default', 'stepwise' or a SwitchoverPolicy`);
}

/**
 * Device read size, for a small state or one of unknown size. Smaller than the streams' 1 MiB
 * default: the estimator samples the generation and wire rates per read, and a small state needs a
 * few dozen samples for a tight band...
 */
const DEFAULT_CHUNK = 256 * 1024;
/**
 * ...while a large one reads in chunks of up to 1 MiB, as long as its state fills this many reads:
 * each record costs a header, a crc call, a write and a decoder pass, and 1 GiB pairs of
 * runMigratePair moved 804-845 MB/s with 1 MiB reads against 673-731 with 256 KiB.
 */
const MAX_AUTO_CHUNK = 1024 * 1024;
const MIN_READS_PER_STATE = 256;

/** The default device read size for an estimated state of `stateSize` bytes (0 or less: unknown). */
export function autoChunkSize(stateSize: number): number {
  let chunk = DEFAULT_CHUNK;
  while (chunk < MAX_AUTO_CHUNK && stateSize >= 2 * chunk * MIN_READS_PER_STATE) chunk *= 2;
  return chunk;
}
/** Device reads are batched into generation-rate samples of at least this much read time. */
const GEN_SAMPLE_MS = 10;
/** Reads and wire batches smaller than this are counted but not used as rate samples. */
const MIN_SAMPLE_BYTES = 64 * 1024;
/** The policy's period while an early verdict's numbers form (the initial data's first part), ms. */
const FORMING_TICK_MS = 10;
/** PRE_COPY's default policy period, ms (MigrateOptions.tickMs). */
const DEFAULT_TICK_MS = 25;
/** Least ms between two progress events in PRE_COPY (its ticks are shorter). */
const PRECOPY_PROGRESS_MS = 100;
/** Bytes queued before the link at both ends of a tick for it to sample the whole path's rate. */
const PIPELINE_BACKLOG_BYTES = 256 * 1024;

/** A checkpoint has no return path: nobody reads 'validated', nobody waits for 'release'. */
const CHECKPOINT_FEATURES: ControlFeatures = { ...SOURCE_FEATURES, release: false };
/** Round trips timed before PRE_COPY (the first one warms both sides' code paths). */
const PINGS = 5;
/** How long a failed migration waits for its `abort` record to reach the kernel, ms. */
const ABORT_FLUSH_MS = 500;
/** The id of the drain's barrier ping (calibration pings count from 0). */
const DRAIN_PING_ID = 0x7fff_ffff;
/** The id of the idle ping that follows the barrier's pong (#drain). */
const IDLE_PING_ID = 0x7fff_fffe;
/** The drain's end-of-stream sample counts at most this many idle round trips plus END_COST_SLACK_MS. */
const END_COST_RTTS = 4;
const END_COST_SLACK_MS = 2;
/** How often a switchover's drain looks at the queues, ms. */
const DRAIN_POLL_MS = 1;
/** A drain's budget: this many times its predicted time, plus DRAIN_SLACK_MS, at most DRAIN_MAX_MS. */
const DRAIN_BUDGET_FACTOR = 3;
const DRAIN_SLACK_MS = 20;
const DRAIN_MAX_MS = 2000;

/** How long a switchover may spend draining the source's queues before it stops the devices anyway. */
function drainBudget(predictedMs: number): number {
  if (!Number.isFinite(predictedMs) || predictedMs < 0) return DRAIN_MAX_MS;
  return Math.min(DRAIN_MAX_MS, DRAIN_BUDGET_FACTOR * predictedMs + DRAIN_SLACK_MS);
}

interface DeviceRun {
  core: MigrationCore;
  session: SavingSession | null;
  stream: SavingStream | null;
  pump: Promise<void> | null;
  bytes: number;
  precopyBytes: number;
  /** PRE_COPY rounds started (passes over the data pending when each began). */
  rounds: number;
  /** Bytes left in the current round; <= 0 when it is complete. */
  roundLeft: number;
  precopy: boolean;
}

/** A running source migration: events while it runs, `done` for its summary. */
export class SourceMigration extends EventEmitter<MigrationEvents> {
  /** Resolves with the summary; rejects with a MigError naming the phase (`phase`, `code`, `cause`). */
  readonly done: Promise<MigrationSummary>;
  #phase: MigrationPhase;
  readonly #opts: MigrateOptions;
  readonly #latch: FailureLatch;
  readonly #devs: DeviceRun[];
  readonly #est: PrecopyEstimator;
  #transport: Duplex | Writable | null;
  #w: ForwardWriter | null;
  /** Every data channel's writer: [main, extra...]. */
  #writers: ForwardWriter[];
  /** Raw bytes read from the devices and not yet taken by the destination's, at its last 'loaded' report. */
  #destBacklog = 0;
  /** Raw bytes the destination's devices had taken at its last 'loaded' report. */
  #destLoaded = 0;
  #loadedReports = 0;
  /** Temporary ends of stream seen, all devices (a tick with one is not a pipeline-rate sample). */
  #empties = 0;
  /** The bandwidth cap shared by every channel, if any. */
  #bucket: TokenBucket | null = null;
  #extra: Duplex[];
  /** DATA records sent per device, all channels. */
  #records: number[];
  #rr: number;
  #waiters: { type: ReturnMessage['type']; resolve: (m: ReturnMessage) => void }[];
  #received: ReturnMessage[];
  #t0: number;
  #phaseAt: number;
  #phases: Partial<Record<MigrationPhase, number>>;
  #lastProgressAt: number;
  #validated: boolean;
  /** The destination gave the state back after 'validated' (its 'error' with `returned`): roll back after all. */
  #returned = false;
  /** The destination takes the handover ('ready' features `release`): 'validated' is answered with 'release'. */
  #releases = false;
  /** The destination acknowledges the initial data ('ready' features `switchoverAck`). */
  #acks = false;
  /** The last return-path message (or the connection's start): a silent return path is a stall too. */
  #lastReturnAt = 0;
  /** The destination reported its devices RUNNING. */
  #running: boolean;
  #switching: boolean;
  /** Every device entered STOP_COPY (the switchover's arcs completed). */
  #inStopCopy: boolean;
  #predicted: number | null;
  /** The limit the switchover was confirmed under (summary.switchoverLimitMs). */
  #switchLimit: number | null = null;
  /** The destination answers pings in band: a ping after the drain is a barrier (see #drain). */
  #pingable = false;
  /** DATA records are compressed (the shared CompressionPool's workers are needed). */
  #compressing = false;
  /** The least idle round trip of the calibration pings, ms (NaN without pings). */
  #rtt = Number.NaN;
  #downStart: number;
  #lastRateAt: number;
  #lastRateBytes: number;
  #rate: number;

  constructor(opts: MigrateOptions) {
    super();
    this.#opts = opts;
    this.#phase = 'connect';
    this.#latch = new FailureLatch();
    this.#devs = opts.devices.map((core) => ({
      core,
      session: null,
      stream: null,
      pump: null,
      bytes: 0,
      precopyBytes: 0,
      rounds: 0,
      roundLeft: 0,
      precopy: opts.precopy !== false && hasPrecopy(core),
    }));
    // Queried every PRE_COPY tick: a dirtying sample per tick (the early verdict needs a few).
    const tick = opts.tickMs ?? DEFAULT_TICK_MS;
    this.#est = new PrecopyEstimator({ devices: Math.max(1, opts.devices.length), maxQueryIntervalMs: tick, minQueryIntervalMs: Math.min(tick, 50) });
    this.#transport = null;
    this.#w = null;
    this.#writers = [];
    this.#extra = [];
    this.#records = opts.devices.map(() => 0);
    this.#rr = 0;
    this.#waiters = [];
    this.#received = [];
    this.#t0 = performance.now();
    this.#phaseAt = this.#t0;
    this.#phases = {};
    this.#lastProgressAt = this.#t0;
    this.#validated = false;
    this.#running = false;
    this.#switching = false;
    this.#inStopCopy = false;
    this.#predicted = null;
    this.#downStart = 0;
    this.#lastRateAt = this.#t0;
    this.#lastRateBytes = 0;
    this.#rate = 0;
    this.done = this.#run();
    // The caller observes `done`; keep an ignored copy from counting as unhandled meanwhile.
    this.done.catch(() => {});
  }

  get phase(): MigrationPhase {
    return this.#phase;
  }

  /**
   * Abort: the devices go back to RUNNING and the destination is told (docs/migration.md, "Nothing
   * lost"). Returns false, and changes nothing, when it comes too late: the migration already
   * ended or failed, or it is past the handover's point of no return (the destination validated
   * the state and this side released it: the destination may run it already, so this side can no
   * longer take it back). The migration then runs to its end: 'running' (success), the
   * destination giving the state back (rolled back), or silence until the stall timeout ('held').
   */
  abort(reason = 'aborted by the caller'): boolean {
    if (this.#latch.error !== null || this.#phase === 'complete' || (this.#validated && !this.#returned)) return false;
    this.#latch.fail(migError(ErrorCodes.ABORTED, reason, { phase: this.#phase }));
    return true;
  }

  // ---- the run ---------------------------------------------------------------------------------

  async #run(): Promise<MigrationSummary> {
    const opts = this.#opts;
    let unwatch = (): void => {};
    // PRE_COPY reports progress on its own ticks; the other phases on this timer.
    const progressTimer = setInterval(() => {
      if (this.#phase !== 'precopy' && this.#phase !== 'connect') this.#emitProgress(this.#predicted, null);
    }, opts.progressMs ?? 250);
    // The stall watchdog counts any progress, the source's own sends included: a return path that
    // went silent while PRE_COPY goes on sending (its acknowledgement never comes) would only end at
    // the policy's PRE_COPY budget (60 s by default, blamed on the budget). Silence while an answer
    // is due is a stall of its own.
    const stallMs = opts.stallTimeoutMs ?? 15_000;
    const silenceTimer = setInterval(
      () => {
        const due = this.#answerDue();
        if (due === null || this.#lastReturnAt === 0 || performance.now() - this.#lastReturnAt <= stallMs) return;
        this.#latch.fail(
          migError(ErrorCodes.STALLED, `no message from the destination for ${stallMs} ms in phase ${this.#phase} (waiting for ${due})`, {
            phase: this.#phase,
            detail: { stallTimeoutMs: stallMs },
          }),
        );
      },
      Math.min(250, Math.max(10, stallMs / 4)),
    );
    try {
      if (opts.devices.length === 0) throw migError(ErrorCodes.USAGE, 'migrate: no devices');
      unwatch = watchRun(this.#latch, opts, this, () => this.#lastProgressAt);
      checkP2PSet(opts.devices, opts.acceptP2PRisk === true);
      const compression = parseCompression(opts.compression ?? 'none');
      const minSaving = opts.compressionMinSaving === undefined ? undefined : validateMinSaving(opts.compressionMinSaving);
      this.#compressing = compression !== false;
      const limitMs = opts.downtimeLimitMs ?? 300;
      if (!(limitMs > 0)) throw migError(ErrorCodes.USAGE, `downtimeLimitMs must be positive, got ${limitMs}`);
      const policy = resolvePolicy(opts.policy, limitMs, opts.precopyBudgetMs ?? 60_000);
      policy.reset?.();
      this.#latch.check();

      const checkpoint = opts.checkpoint === true;
      this.#transport = await this.#latch.guard(openTransport(opts.transport, opts.transportOptions));
      this.#watchTransport(this.#transport, checkpoint);
      this.#progress();
      if (!checkpoint) this.#lastReturnAt = performance.now();

      this.#setPhase('handshake');
      const identities = opts.devices.map((c) => c.identity());
      const channels = opts.channels ?? 1;
      if (!Number.isInteger(channels) || channels < 1 || channels > 64) throw migError(ErrorCodes.USAGE, `channels must be 1..64, got ${channels}`);
      if (channels > 1 && (typeof opts.transport !== 'string' || checkpoint)) {
        throw migError(ErrorCodes.USAGE, 'channels > 1 need a transport URL (the extra connections are opened to it) and a live migration');
      }
      const migrationId = randomBytes(8).toString('hex');
      // One bucket for every channel: the cap is on the migration's total wire bytes.
      const bucket = (opts.bandwidth ?? 0) > 0 ? new TokenBucket({ bytesPerSecond: opts.bandwidth as number }) : undefined;
      this.#bucket = bucket ?? null;
      const table = identities.map((identity, i) => ({ name: opts.names?.[i] ?? `dev${i}`, identity }));
      const onWire = (wire: number, raw: number, durationMs: number | undefined) => {
        if (durationMs !== undefined && wire >= MIN_SAMPLE_BYTES) this.#est.recordWire(wire, raw, { durationMs });
        else this.#unsampled(() => this.#est.recordWire(wire, raw));
        this.#progress();
      };
      const onError = (err: unknown) => this.#latch.fail(asPhaseError(err, this.#phase));
      this.#w = openForward(this.#transport, {
        devices: table,
        compression,
        minSaving,
        bandwidth: 0,
        bucket,
        sender: { channel: 0, migration: migrationId },
        onWire,
        digest: opts.digest,
        onWritten: this.#released,
      }, onError);
      this.#writers = [this.#w];
      await this.#send({
        type: 'hello',
        version: CONTROL_PROTOCOL_VERSION,
        features: checkpoint ? CHECKPOINT_FEATURES : SOURCE_FEATURES,
        devices: identities,
        precopy: this.#devs.map((d) => d.precopy),
        channels,
        migration: migrationId,
      });
      if (!checkpoint) {
        const reply = await this.#expect('ready', 'refuse');
        if (reply.type === 'refuse') {
          throw migError(reply.code, `destination refused: ${reply.message}`, { phase: 'handshake', device: reply.device });
        }
        this.#releases = reply.type === 'ready' && reply.features.release === true;
        this.#acks = reply.type === 'ready' && reply.features.switchoverAck === true;
        await this.#calibrate(reply);
      }

      for (let k = 1; k < channels; k++) {
        const t = (await this.#latch.guard(openTransport(opts.transport as string, opts.transportOptions))) as Duplex;
        this.#extra.push(t);
        this.#watchTransport(t, false, false);
        this.#writers.push(openForward(t, { devices: table, compression, minSaving, bandwidth: 0, bucket, sender: { channel: k, migration: migrationId }, onWire, digest: opts.digest, onWritten: this.#released }, onError));
      }

      // Devices without PRE_COPY have no PRE_COPY data: their counters are 0 from the start.
      for (let i = 0; i < this.#devs.length; i++) if (!this.#devs[i].precopy) this.#est.recordEmpty(i);
      this.#est.on('initial-sent', (e) => {
        if (e.all) this.#sendSoon({ type: 'initial-sent', epoch: e.epoch, records: [...this.#records] });
      });
      this.#est.on('reinit', (e) => this.#sendSoon({ type: 'reinit', device: e.device, epoch: e.epoch }));
      this.#est.on('query-failed', (e) => {
        this.emit('decision', { action: 'continue', reason: 'query-failed', message: e.error.message, numbers: { device: e.device, consecutive: e.consecutive } });
      });

      if (!checkpoint && this.#devs.some((d) => d.precopy)) {
        this.#setPhase('precopy');
        // Returns drained, in the switchover phase, with the policy's confirmation.
        await this.#precopy(policy, limitMs);
      } else {
        this.#warmCompression();
        this.#setPhase('switchover');
        await this.#drain(DRAIN_MAX_MS);
      }
      this.#switching = true;
      await this.#send({ type: 'switchover' });
      const cores = opts.devices;
      // Downtime starts with the first device leaving RUNNING (the send above may wait on
      // backpressure while every device still runs).
      this.#downStart = performance.now();
      const tStop = performance.now();
      await this.#latch.guard(enterP2P(cores));
      await this.#latch.guard(enterStopCopy(cores));
      this.#est.recordFixedCost('enterStopCopy', performance.now() - tStop);
      this.#inStopCopy = true;
      // The state is frozen from here: the digests are taken while the stop-copy is read (a device
      // host's digest is a round trip, a SimDevice's 0.1-0.2 ms), not after it, inside the downtime.
      const digests = this.#devs.map((d) => digestOf(d.core));
      for (const p of digests) p.catch(() => {});
      for (let i = 0; i < this.#devs.length; i++) this.#splitStopCopy(i);
      // A PRE_COPY stream idling in its backoff after a temporary end would sleep into the downtime.
      // A read started from here reads STOP_COPY, where a 0 is the end: no precopy-info round trip
      // to learn it (stopCopyEntered(); the drain held the reads, so none is normally in flight).
      for (const d of this.#devs) {
        d.stream?.stopCopyEntered();
        d.stream?.retryNow();
        d.stream?.releaseReads();
      }

      this.#setPhase('stop-copy');
      for (let i = 0; i < this.#devs.length; i++) {
        const d = this.#devs[i];
        if (d.pump === null) this.#startPump(i, this.#savingSession(d.core, null));
      }
      await this.#latch.guard(Promise.all(this.#devs.map((d) => d.pump)));
      for (let i = 0; i < this.#devs.length; i++) {
        const digest = await this.#latch.guard(digests[i]);
        if (digest !== null) await this.#send({ type: 'digest', device: i, digest });
      }
      await this.#send({ type: 'commit', records: [...this.#records] });
      if (checkpoint) return await this.#finishCheckpoint();

      this.#setPhase('validate');
      // #onReturn marked the point of no return (#validated) as 'validated' arrived, and released.
      const validated = await this.#expect('validated');
      if (validated.type !== 'validated') throw migError(ErrorCodes.PROTOCOL, 'expected validated');

      // The destination holds the state now: the source leaves STOP_COPY, but once 'running' came
      // (or cannot come), not inside the downtime: its arcs (0.1-0.3 ms on SimDevice) ran on the
      // event loop that had 'running' to read next, often already in the same socket read. Each
      // device's outcome is its own (never a rejection: a device that fails here fails no other).
      const leaveStopCopy = () => Promise.allSettled(cores.map((c) => (c.state === DeviceState.STOP ? undefined : c.setState(DeviceState.STOP))));
      this.#setPhase('resume');
      const running = await this.#expect('running').catch((err: unknown) => {
        // No 'running' (the destination failed to resume, or is gone): the source still gives the
        // state up, started here and not awaited, as a failure must not wait on a device.
        void leaveStopCopy();
        throw err;
      });
      const downtimeMs = performance.now() - this.#downStart;
      if (running.type !== 'running') throw migError(ErrorCodes.PROTOCOL, 'expected running');
      this.#running = true;
      // The destination runs the state: the migration has succeeded. A source device that cannot
      // leave STOP_COPY now (its host died, its driver failed the arc) is the caller's to close or
      // reset, said in its summary, not a failed migration (that made the command exit 2,
      // "rolled back", with the state running at the destination).
      const stopped = await leaveStopCopy();
      // The destination runs the devices: a transport that fails now loses nothing.
      await Promise.all(this.#writers.map((w) => w.finish().catch(() => {})));
      for (const t of this.#extra) t.end();
      this.#setPhase('complete');

      const durationMs = performance.now() - this.#t0;
      const bytes = this.#bytesRead();
      const wireBytes = this.#writers.reduce((sum, w) => sum + w.wireBytes, 0);
      const devices: DeviceSummary[] = this.#devs.map((d, i) => {
        const left = stopped[i];
        return {
          bytes: d.bytes,
          precopyBytes: d.precopyBytes,
          validateMs: validated.validateMs[i] ?? null,
          verified: validated.verified,
          ...(left.status === 'rejected' ? { sourceError: errorInfo(left.reason) } : {}),
        };
      });
      this.#transport.end();
      return {
        ok: true,
        role: 'source',
        verified: validated.verified,
        bytes,
        wireBytes,
        compressionRatio: wireBytes > 0 ? bytes / wireBytes : 1,
        durationMs,
        downtimeMs,
        predictedDowntimeMs: this.#predicted,
        switchoverLimitMs: this.#switchLimit,
        precopyRounds: this.#rounds(),
        throughputMBps: throughputMBps(bytes, durationMs),
        phases: this.#phases,
        devices,
      };
    } catch (e) {
      throw await this.#rollback(e);
    } finally {
      unwatch();
      clearInterval(progressTimer);
      clearInterval(silenceTimer);
    }
  }

  /** What the source waits to hear from the destination now, or null (nothing is due). */
  #answerDue(): string | null {
    if (this.#waiters.length > 0) return [...new Set(this.#waiters.map((w) => `'${w.type}'`))].join(' or ');
    if (this.#acks && !this.#switching && this.#est.initialSent && !this.#est.switchoverAcked) return 'its switchover-ack';
    return null;
  }

  /** Checkpoint: the stream is complete on its medium, then the devices run again. */
  async #finishCheckpoint(): Promise<MigrationSummary> {
    const w = this.#w as ForwardWriter;
    const t = this.#transport as Writable;
    const bytes = this.#bytesRead();
    await this.#latch.guard(w.finish());
    const closed = new Promise<void>((resolve, reject) => {
      t.once('finish', resolve);
      t.once('error', reject);
    });
    t.end();
    await this.#latch.guard(closed);
    this.#validated = true; // the checkpoint is written: nothing to roll back any more
    this.#setPhase('resume');
    await this.#latch.guard(resumeAll(this.#opts.devices));
    const downtimeMs = performance.now() - this.#downStart;
    this.#setPhase('complete');
    const durationMs = performance.now() - this.#t0;
    return {
      ok: true,
      role: 'source',
      verified: false,
      bytes,
      wireBytes: w.wireBytes,
      compressionRatio: w.wireBytes > 0 ? bytes / w.wireBytes : 1,
      durationMs,
      downtimeMs,
      predictedDowntimeMs: null,
      switchoverLimitMs: null,
      precopyRounds: 0,
      throughputMBps: throughputMBps(bytes, durationMs),
      phases: this.#phases,
      devices: this.#devs.map((d) => ({ bytes: d.bytes, precopyBytes: 0, validateMs: null, verified: null })),
    };
  }

  /**
   * Boot the compression workers now, not awaited: until one is up the encoder compresses on the
   * event loop (RecordEncoder inlineWhileBooting). Called once the fixed-cost priors are timed (the
   * destination's setup arcs, the calibration pings, the arcs into PRE_COPY), because booting two
   * workers takes 60-70 ms of CPU each and on two cores it slowed what was being timed: the
   * destination's setup arcs read 7-16 ms against its 1 ms validation, and dirty-none cells with
   * zstd were predicted 2-3 x their downtime. PRE_COPY now begins 30-50 ms sooner; the 64 MiB zstd
   * abort cell decided after 192-226 ms, against 180-206 with the boot during the handshake.
   */
  #warmCompression(): void {
    if (this.#compressing) void sharedCompressionPool().warm();
  }

  /** PRE_COPY: open every PRE_COPY device's saving session, stream, and ask the policy every tick. */
  async #precopy(policy: SwitchoverPolicy, limitMs: number): Promise<void> {
    const tick = this.#opts.tickMs ?? DEFAULT_TICK_MS;
    let progressAt = -Infinity;
    this.#est.restartClock();
    let lastKey = '';
    // Until a switchover measures PRE_COPY -> STOP_COPY, the arcs into PRE_COPY stand for it: the
    // slowest device's (a switchover moves the devices concurrently). Each device is asked its
    // state first, so the first call's one-time costs (code loading, a host's first round trip)
    // are not taken for the arc's: on SimDevice the cold arc took 3.7 ms, a warm one 0.1.
    let arcMs = 0;
    for (let i = 0; i < this.#devs.length; i++) {
      const d = this.#devs[i];
      if (!d.precopy) continue;
      await this.#latch.guard(d.core.getState());
      const t = performance.now();
      const session = await this.#latch.guard(d.core.setState(DeviceState.PRE_COPY));
      arcMs = Math.max(arcMs, performance.now() - t);
      this.#startPump(i, this.#savingSession(d.core, session));
    }
    if (this.#devs.some((d) => d.precopy)) this.#est.setFixedCostPrior('enterStopCopy', arcMs);
    this.#warmCompression();
    const pool = this.#compressing ? sharedCompressionPool() : null;
    const chunk = Math.max(...this.#devs.map((d) => d.stream?.chunkSize ?? this.#opts.chunkSize ?? autoChunkSize(d.core.identity().stateSize)));
    this.#est.setStopCopyShape(chunk, pool?.size ?? 1);
    let timed = pool?.compressWork.jobs ?? 0;
    let tickAt = performance.now();
    let tickBytes = this.#bytesRead();
    let tickEmpties = this.#empties;
    let tickBacklogged = false;
    for (;;) {
      await this.#latch.guard(this.#query());
      const queued = this.#reportInFlight();
      if (pool !== null) {
        // How long a record takes to compress, job by job, from those that found a worker idle
        // (the pool may serve other migrations too: the time per byte is still what a record meets).
        for (const [raw, ms] of pool.timedJobs(timed)) this.#est.recordCompressionWork(raw, ms);
        timed = pool.compressWork.jobs;
      }
      // The path's own rate: a tick that started and ended with data pending on the devices and
      // queued on the source's side of the link, and saw no temporary end, was paced by the path,
      // not by the dirtying (a trickle of new dirt keeps data pending but the queues empty).
      const now = performance.now();
      const bytes = this.#bytesRead();
      const view = this.#est.snapshot();
      const backlogged = view.initialBytes + view.dirtyBytes > 0 && queued >= PIPELINE_BACKLOG_BYTES;
      if (tickBacklogged && backlogged && this.#empties === tickEmpties && bytes - tickBytes >= MIN_SAMPLE_BYTES) {
        this.#est.recordPipeline(bytes - tickBytes, now - tickAt);
      }
      tickAt = now;
      tickBytes = bytes;
      tickEmpties = this.#empties;
      tickBacklogged = backlogged;
      const snap = this.#est.snapshot();
      const decision = policy.decide({ ...snap, downtimeLimitMs: limitMs });
      if (now - progressAt >= PRECOPY_PROGRESS_MS || decision.action !== 'continue') {
        progressAt = now;
        this.#emitProgress(snap.prediction.valid ? snap.prediction.downtimeMs : null, snap.initialBytes + snap.dirtyBytes);
      }
      const key = `${decision.action}/${decision.reason}`;
      if (decision.action !== 'continue' || key !== lastKey) {
        lastKey = key;
        this.emit('decision', { action: decision.action, reason: decision.reason, message: decision.message, numbers: decision.numbers } satisfies DecisionEvent);
      }
      if (decision.action === 'abort') throw policyAbortError(decision, 'precopy');
      if (decision.action === 'switchover') {
        // The switchover begins with the drain, the devices still running; then the policy decides
        // again on what the drain left: nothing queued, the tail measured, fresh sizes. That second
        // decision is the one that stops the devices, and its prediction is the one reported.
        this.#setPhase('switchover');
        await this.#drain(drainBudget(snap.prediction.drainMs));
        await this.#latch.guard(this.#query(true));
        this.#reportInFlight();
        const after = this.#est.snapshot();
        const confirm = policy.decide({ ...after, downtimeLimitMs: limitMs });
        this.emit('decision', {
          action: confirm.action,
          reason: confirm.reason,
          message: `after the drain: ${confirm.message}`,
          numbers: { ...confirm.numbers, drained: true },
        } satisfies DecisionEvent);
        lastKey = `${confirm.action}/${confirm.reason}`;
        if (confirm.action === 'switchover') {
          this.#predicted = after.prediction.downtimeMs;
          const limit = confirm.numbers.limitMs;
          this.#switchLimit = typeof limit === 'number' && Number.isFinite(limit) ? limit : null;
          return;
        }
        if (confirm.action === 'abort') throw policyAbortError(confirm, 'switchover');
        // The drain took longer or more was dirtied than predicted: back to PRE_COPY.
        for (const d of this.#devs) d.stream?.releaseReads();
        this.#setPhase('precopy');
      }
      // The next look comes after a tick, or sooner when a device's query falls due (the estimator's
      // learning pace). While the initial data is read and the numbers an early verdict needs are
      // still forming (no confident prediction yet, or the dirtying model not ready on devices that
      // dirty), every FORMING_TICK_MS: the verdict is due the moment they form, and the bytes read
      // meanwhile (which make the model ready) need no query.
      const p = snap.prediction;
      const forming = !snap.initialSent && (!p.confident || (p.dirtyRateBytesPerMs > 0 && Number.isNaN(p.stateDirtyRateBytesPerMs)));
      let wait = forming ? Math.min(tick, FORMING_TICK_MS) : tick;
      for (let i = 0; i < this.#devs.length; i++) wait = Math.min(wait, this.#est.nextQueryInMs(i));
      await this.#latch.guard(sleep(Math.max(1, wait)));
    }
  }

  /** Raw bytes read from every device so far. */
  #bytesRead(): number {
    return this.#devs.reduce((sum, d) => sum + d.bytes, 0);
  }

  /**
   * Tell the estimator what is read but not yet on the wire: the device's own counts no longer
   * include it, and it leaves before any STOP_COPY byte. The source's queues (stream buffers, the
   * writers' input, compression and output) drain before the devices stop (#drain); what is beyond
   * them, in the network or waiting at the destination, is still moving after the stop. Returns the
   * bytes queued at the source (raw plus wire, as counted).
   */
  #reportInFlight(): number {
    let raw = 0;
    let wire = 0;
    for (const d of this.#devs) raw += d.stream?.readableLength ?? 0;
    for (const w of this.#writers) {
      const q = w.queued();
      raw += q.rawBytes;
      wire += q.wireBytes;
    }
    // The destination's backlog includes the source's queues; beyond them it is bytes in the network
    // or waiting at the destination, which the switchover waits for just the same, at about the
    // link's rate when the link is the limit. The drain's ping barrier waits for them before the
    // stop; a destination that does not answer pings leaves them to the downtime. Past a bandwidth
    // cap they drain at the destination's own (uncapped) pace instead: counting them at the capped
    // rate predicted 34 ms for 6.
    let beyond = 0;
    if (this.#bucket === null) {
      const ratio = this.#est.predict().compressionRatio;
      beyond = Math.max(0, this.#destBacklog - (raw + wire * ratio));
    } else {
      this.#est.setLinkCredit(Math.max(0, this.#bucket.available()), this.#bucket.bytesPerMs);
    }
    this.#est.setDrain(wire, raw + (this.#pingable ? beyond : 0));
    this.#est.setInFlight(0, this.#pingable ? 0 : beyond);
    return raw + wire;
  }

  /**
   * The first step of a switchover, while the devices still run: hold their reads and let every
   * byte already read leave the source's queues, so that it crosses the link before the downtime
   * starts instead of inside it (at a 50 MB/s cap the queues hold ~40 ms). The devices dirty
   * meanwhile, which the prediction counted (drainMs). Bounded by `budgetMs`: whatever is still
   * queued then is sent in the downtime, as it would have been without the drain.
   */
  async #drain(budgetMs: number): Promise<void> {
    const started = performance.now();
    const deadline = started + budgetMs;
    const streams = this.#devs.map((d) => d.stream).filter((s): s is SavingStream => s !== null && !s.destroyed);
    // A read in progress completes (a blocked one is bounded by the deadline).
    await this.#until(Promise.all(streams.map((s) => s.holdReads())), deadline);
    // With a destination that answers pings, the wait ends once every byte read is in an encoder:
    // the ping queues behind the main channel's records (other channels must have sent theirs).
    // Without, it ends when every queue is empty.
    const main = this.#w as ForwardWriter;
    const drained = () =>
      streams.every((s) => s.readableLength === 0) &&
      this.#writers.every((w) => {
        const q = w.queued();
        return q.rawBytes === 0 && (q.wireBytes === 0 || (this.#pingable && w === main));
      });
    // A device reset meanwhile disables its session; its held stream would only notice once released.
    const reset = () => this.#devs.findIndex((d) => d.stream !== null && d.session !== null && d.session.disabled);
    while (!drained() && reset() < 0 && performance.now() < deadline) await this.#latch.guard(sleep(DRAIN_POLL_MS));
    const i = reset();
    if (i >= 0) {
      throw migError('ENODEV', `device ${i} was reset during the switchover drain: its saving session is disabled`, { phase: 'switchover', device: i });
    }
    // What the source sent may still wait in the kernel and in the destination's decoder: without
    // a cap, the destination is often the slower side. A ping goes in band, after every record, and
    // the destination answers it once it has handed them all to its devices' resuming streams
    // (1 MiB each): the barrier that the rest has arrived. From the moment the ping left to its
    // answer is what the end of a stream costs on this link: the way there, the destination's lag
    // behind the last byte, the way back. The end of the stop-copy pays the same, so it is measured
    // as the link's latency (the idle pings at the start only gave its prior).
    if (this.#pingable && performance.now() < deadline) {
      const pong = this.#expect('pong');
      pong.catch(() => {});
      await this.#send({ type: 'ping', id: DRAIN_PING_ID });
      if (await this.#awaitPong(pong, deadline, started)) {
        // Every byte read so far has reached the destination's resuming streams (reads are held):
        // the backlog of its last 'loaded' report, up to a report period old, is gone. Left as it
        // was, it came back as megabytes still to drain in the prediction after the drain (4 MB,
        // predicting 24 ms for an 8.5 ms switchover).
        this.#destBacklog = 0;
        // One sample, so a hiccup of either event loop would stand alone: it counts at most
        // END_COST_RTTS idle round trips plus END_COST_SLACK_MS (samples read 1.3-4.5 ms on a 0.5-1 ms
        // round trip, and twice 9.2-9.4 ms where the switchover then cost 2-3 ms).
        const tail = performance.now() - main.lastWireAt;
        const bound = Number.isFinite(this.#rtt) ? END_COST_RTTS * this.#rtt + END_COST_SLACK_MS : tail;
        const sample = Math.min(tail, bound);
        const lastRaw = main.lastDataRawBytes;
        // Part of that is the destination catching up with the last record before the ping (a
        // 1 MiB record: 1.5-3 ms of the 1.8-3.9 ms such tails read, on a 0.4-0.9 ms round trip),
        // which a stop-copy of 32 bytes never waits for. A ping on the now idle link separates
        // the two: the round trip is the link's latency, the rest the lag behind `lastRaw` bytes,
        // which the prediction scales to the stop-copy's own last record.
        const idle = lastRaw > 0 ? await this.#roundTrip(IDLE_PING_ID, Math.max(deadline, performance.now() + bound)) : null;
        if (idle !== null) {
          this.#est.recordFixedCost('linkLatency', Math.min(idle, sample));
          this.#est.setEndLag(Math.max(0, sample - idle), lastRaw);
        } else {
          this.#est.recordFixedCost('linkLatency', sample);
        }
      }
    }
  }

  /**
   * The drain's wait for its barrier ping. Its budget came from what the destination had not taken
   * at its last 'loaded' report, up to a report period old: without a cap the destination can fall
   * megabytes further behind meanwhile (a test's destination at ~100 MB/s: 2-15 MB more than the
   * budget's, and the switchover then moved them in the downtime). Past the budget the wait goes
   * on while each report period brings a report of more bytes taken (what the destination still
   * takes now would cross in the downtime otherwise), up to DRAIN_MAX_MS from the drain's start.
   * True when the pong came.
   */
  async #awaitPong(pong: Promise<ReturnMessage>, deadline: number, started: number): Promise<boolean> {
    if (await this.#until(pong, deadline)) return true;
    const hard = started + DRAIN_MAX_MS;
    for (;;) {
      const loaded = this.#destLoaded;
      const now = performance.now();
      if (now >= hard) return false;
      if (await this.#until(pong, Math.min(hard, now + 1.5 * LOADED_REPORT_MS))) return true;
      if (this.#destLoaded === loaded) return false;
    }
  }

  /**
   * One ping's round trip on the main connection, ms: without a `deadline` as long as it takes (the
   * run's latch bounds it), with one null when the pong did not come by then.
   */
  async #roundTrip(id: number, deadline?: number): Promise<number | null> {
    const pong = this.#expect('pong');
    pong.catch(() => {});
    const t = performance.now();
    await this.#send({ type: 'ping', id });
    if (deadline === undefined) await pong;
    else if (!(await this.#until(pong, deadline))) return null;
    return performance.now() - t;
  }

  /** Wait for `p` (through the latch) or until the clock reaches `deadline`; true when `p` came first. */
  async #until(p: Promise<unknown>, deadline: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, deadline - performance.now()))));
    try {
      return await this.#latch.guard(Promise.race([p.then(() => true), expired]));
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Fixed costs a first prediction can know before any switchover. A switchover ends with a round
   * trip on an idle link (commit out, 'running' back): the least of PINGS ping/pong round trips
   * measures it (the least, because the peer's first steps only ever add to a round trip). The
   * destination's arcs into RESUMING ('ready'.setupMs) stand for both of its own steps, the
   * validation (RESUMING -> STOP and the digest check) and the resume (STOP -> RUNNING through
   * RUNNING_P2P): all three are arcs of the same device. (The round trip stood for the resume until
   * 2026-12-02: the resume took 1.5-2 ms on SimDevice where the round trip read 0.5-0.9, and every
   * dirty-none cell was predicted 0.4-2.8 ms short; the setup arcs had been tried before and
   * dropped while booting compression workers still inflated them to 7-24 ms.) Priors, not
   * samples: they shape the prediction, never an abort's lower bound.
   */
  async #calibrate(ready: ReturnMessage): Promise<void> {
    if (ready.type !== 'ready') return;
    const setupMs = typeof ready.setupMs === 'number' ? ready.setupMs : Number.NaN;
    if (Number.isFinite(setupMs)) {
      this.#est.setFixedCostPrior('destValidate', setupMs);
      this.#est.setFixedCostPrior('destResume', setupMs);
    }
    if (ready.features.ping !== true) return;
    this.#pingable = true;
    const rtts: number[] = [];
    // Without a deadline a round trip is never null.
    for (let id = 0; id < PINGS; id++) rtts.push((await this.#roundTrip(id)) as number);
    const rtt = Math.min(...rtts);
    this.#rtt = rtt;
    this.#est.setFixedCostPrior('linkLatency', rtt);
    // With the handover the destination resumes only once 'validated' came here and 'release'
    // went back: one more round trip before its resume.
    const handover = this.#releases ? rtt : 0;
    this.#est.setFixedCostPrior('destResume', (Number.isFinite(setupMs) ? setupMs : rtt) + handover);
  }

  /** Query precopy info and stop-copy size of the devices whose estimator view is due (every device: `force`). */
  async #query(force = false): Promise<void> {
    await Promise.all(
      this.#devs.map(async (d, i) => {
        if (!force && !this.#est.queryDue(i)) return;
        const s = d.session;
        if (d.precopy && s !== null && !s.disabled) {
          try {
            const info = await s.precopyInfo();
            this.#est.updatePrecopyInfo(info, i);
            this.#nextRound(i, info.initialBytes + info.dirtyBytes);
          } catch (err) {
            this.#est.precopyInfoFailed(err, i);
          }
        }
        try {
          this.#est.updateStopCopySize(await d.core.stopCopySize(), i);
        } catch (err) {
          this.#est.stopCopySizeFailed(err, i);
        }
      }),
    );
  }

  #savingSession(core: MigrationCore, opened: Session | null): SavingSession {
    const s = opened ?? core.session;
    if (s === null || s.direction !== 'saving') {
      throw migError('EIO', 'the device opened no saving session', { state: core.state });
    }
    return s;
  }

  /** Stream one device's saving session into DATA records until its STOP_COPY end of stream. */
  #startPump(i: number, session: SavingSession): void {
    const d = this.#devs[i];
    d.session = session;
    // The read's own duration samples the device's generation rate (not the gaps between reads).
    let readMs: number | undefined;
    // recycle: a chunk the transport has written comes back (#released) and a later read reuses its
    // memory instead of faulting in fresh pages.
    const stream = createSavingStream(session, {
      chunkSize: this.#opts.chunkSize ?? autoChunkSize(d.core.identity().stateSize),
      recycle: true,
      // Compressed, each chunk goes to a worker: in shared memory it is read there, not copied.
      // Only for a data fd, which the kernel fills at full speed: JavaScript writes into shared
      // memory through V8's relaxed copies (here 3 x slower to set, 13 x to fill), which a
      // method-backed device such as SimDevice would pay on every page.
      sharedMemory: this.#compressing && session.fd !== null,
      onRead: (_bytes, ms) => {
        readMs = ms;
      },
    });
    d.stream = stream;
    if (this.#inStopCopy) stream.stopCopyEntered();
    if (this.#switching) this.#splitStopCopy(i);
    // Every read reaches the estimator's view at once (a query resets the view, so a read reported
    // after it would be subtracted twice). Generation samples are separate: reads batched until their
    // own durations add up to GEN_SAMPLE_MS; one read takes a fraction of a millisecond and its
    // timing is mostly event-loop noise. A batch that ends short (temporary end, STOP_COPY end) is
    // dropped as a sample.
    const batch = { bytes: 0, ms: 0 };
    const resetBatch = () => {
      batch.bytes = 0;
      batch.ms = 0;
    };
    stream.on('precopy-empty', (e: { bytesRead: number; initialBytes?: number; dirtyBytes?: number; reinit?: boolean }) => {
      resetBatch();
      this.#empties++;
      // VFIO_PRECOPY_INFO_REINIT is reported once, to whichever precopy-info query comes first: when
      // the stream's own query at the temporary end saw it, it must reach the estimator from here.
      if (e.reinit === true) this.#est.updatePrecopyInfo({ initialBytes: e.initialBytes ?? 0, dirtyBytes: e.dirtyBytes ?? 0, reinit: true }, i);
      // New initial data announced with the end is not sent yet: only a plain end empties the view.
      if (!(e.reinit === true && (e.initialBytes ?? 0) > 0)) this.#est.recordEmpty(i);
      // A temporary end of stream ends the round whatever was estimated for it.
      d.roundLeft = 0;
      this.#sendSoon(null, {
        type: RecordType.ROUND,
        device: i,
        round: Math.max(0, d.rounds - 1),
        roundFlags: ROUND_FLAG_EMPTY,
        bytes: d.bytes,
        initialBytes: e.initialBytes ?? 0,
        dirtyBytes: e.dirtyBytes ?? 0,
      });
    });
    const pump = (async () => {
      // Chunk by chunk as read (for-await would hand over copies of several chunks joined).
      for await (const chunk of chunksOf(stream)) {
        this.#latch.check();
        // The record is queued before the estimator hears of the read, so an 'initial-sent' control
        // it may trigger follows the data it speaks of.
        const accepted = this.#data(i, chunk);
        d.bytes += chunk.length;
        this.#est.recordRead(chunk.length, { device: i, sample: false });
        batch.bytes += chunk.length;
        batch.ms += readMs ?? 0;
        readMs = undefined;
        if (batch.ms >= GEN_SAMPLE_MS) {
          if (batch.bytes >= MIN_SAMPLE_BYTES) this.#est.sampleGeneration(batch.bytes, batch.ms, i);
          resetBatch();
        }
        if (!this.#switching) {
          d.precopyBytes += chunk.length;
          d.roundLeft -= chunk.length;
          if (d.roundLeft <= 0 && d.roundLeft + chunk.length > 0) this.#roundDone(i, session);
        }
        this.#progress();
        await accepted;
      }
      resetBatch();
      await Promise.all(this.#writers.map((cw) => cw.record({ type: RecordType.DEVICE_END, device: i })));
    })();
    pump.catch((err) => this.#latch.fail(asPhaseError(err, this.#phase)));
    d.pump = pump;
  }

  /**
   * A compressed stop-copy smaller than a chunk per worker would leave in one record, compressed by
   * one worker while the others idle, all of it inside the downtime (650 KB of zstd level 1 on one
   * worker here: ~3 ms, most of a 10 ms downtime). Its reads are limited instead, so it leaves in as
   * many records as there are workers, compressed side by side (bench/stop-copy-split.mjs: 0.6 x
   * the time for 650 KB on two workers). A stop-copy of more than a chunk per worker keeps whole
   * chunks (stopCopyReadBytes): the workers are all busy anyway.
   */
  #splitStopCopy(i: number): void {
    const stream = this.#devs[i].stream;
    if (!this.#compressing || stream === null) return;
    // One worker compresses one record at a time: pieces would only add records.
    const workers = sharedCompressionPool().size;
    if (workers < 2) return;
    const piece = stopCopyReadBytes(this.#est.expectedStopCopyBytes(i), stream.chunkSize, workers);
    stream.readLimit = piece > 0 && piece < stream.chunkSize ? piece : 0;
  }

  /**
   * A chunk the transport wrote: when it is a device's SavingStream chunk (an uncompressed DATA
   * payload, passed on whole), its memory goes back to that stream for a later read. Anything else
   * (headers, compressed frames, control records) is refused by every stream and left to the GC.
   */
  #released = (chunk: Buffer): void => {
    for (const d of this.#devs) if (d.stream?.release(chunk)) return;
  };

  /** One DATA record: on the main connection, or round robin over the channels with its sequence number. */
  #data(i: number, chunk: Buffer): Promise<void> {
    const seq = this.#records[i]++;
    if (this.#writers.length === 1) return this.#writers[0].data(i, chunk);
    const w = this.#writers[this.#rr++ % this.#writers.length];
    return w.record({ type: RecordType.DATA, device: i, payload: chunk, channel: seq & 0xffff });
  }

  /**
   * Count bytes without sampling a rate: a short read or a small control record says nothing about
   * throughput, and the estimator would otherwise time it against the previous call (a pause).
   */
  #unsampled(fn: () => void): void {
    this.#est.markIdle();
    fn();
    this.#est.markIdle();
  }

  // ---- control -------------------------------------------------------------------------------

  #send(msg: ForwardMessage): Promise<void> {
    return this.#latch.guard((this.#w as ForwardWriter).control(msg));
  }

  /** Queue a control message or record from an event handler (order kept; failures go to the latch). */
  #sendSoon(msg: ForwardMessage | null, record?: Parameters<ForwardWriter['record']>[0]): void {
    const w = this.#w;
    if (w === null || this.#latch.error) return;
    const p = msg ? w.control(msg) : w.record(record as Parameters<ForwardWriter['record']>[0]);
    p.catch((err: unknown) => this.#latch.fail(asPhaseError(err, this.#phase)));
  }

  #watchTransport(t: Duplex | Writable, checkpoint: boolean, control = true): void {
    const lost = (err?: unknown) => {
      if (this.#phase === 'complete' || this.#running || (checkpoint && err === undefined)) return;
      this.#latch.fail(
        migError(ErrorCodes.TRANSPORT, `transport to the destination lost in phase ${this.#phase}${err instanceof Error ? `: ${err.message}` : ''}`, {
          phase: this.#phase,
          cause: err,
        }),
      );
    };
    t.on('error', lost);
    t.on('close', () => lost());
    if (checkpoint || !control) {
      if (!control) (t as Duplex).resume?.(); // a data channel's return direction carries nothing
      return;
    }
    const parser = new FrameParser();
    t.on('data', (chunk: Buffer) => {
      let values: unknown[];
      try {
        values = parser.push(chunk);
        for (const v of values) this.#onReturn(parseReturnMessage(v));
      } catch (err) {
        this.#latch.fail(asPhaseError(err, this.#phase));
      }
    });
    t.on('end', () => lost());
  }

  #onReturn(msg: ReturnMessage): void {
    this.#progress();
    this.#lastReturnAt = performance.now();
    if (msg.type === 'switchover-ack') {
      this.#est.acknowledgeSwitchover(msg.epoch);
      return;
    }
    if (msg.type === 'error') {
      // `returned`: the destination reset every device after 'validated': nothing of the state runs
      // there, and this side, which still holds it, may run it again (#rollback).
      if (msg.returned === true && this.#latch.error === null && !this.#running) this.#returned = true;
      this.#latch.fail(migError(msg.code, `destination failed in phase ${msg.phase}: ${msg.message}${msg.returned === true ? ' (it reset its devices and gave the state back)' : ''}`, { phase: msg.phase }));
      return;
    }
    if (msg.type === 'validated') {
      for (const ms of msg.validateMs) this.#est.recordFixedCost('destValidate', ms);
      // The handover, at once (it is inside the downtime): from here the source never runs the
      // state again, so the destination may. A source that already failed does not release: it
      // rolls back, and its 'abort' makes the destination reset instead.
      if (this.#latch.error === null && !this.#validated) {
        this.#validated = true;
        if (this.#releases) this.#sendSoon({ type: 'release' });
      }
    }
    if (msg.type === 'loaded') {
      // Read from the devices but not yet in the destination's: source queues, the network and
      // the destination's own queues. The report is at most one period and half a round trip old.
      this.#destBacklog = Math.max(0, this.#bytesRead() - msg.bytes);
      this.#destLoaded = msg.bytes;
      this.#loadedReports++;
      return;
    }
    const i = this.#waiters.findIndex((w) => w.type === msg.type);
    if (i >= 0) this.#waiters.splice(i, 1)[0].resolve(msg);
    else this.#received.push(msg);
  }

  /** Wait for the next return message of one of `types`. */
  #expect(...types: ReturnMessage['type'][]): Promise<ReturnMessage> {
    const i = this.#received.findIndex((m) => types.includes(m.type));
    if (i >= 0) return Promise.resolve(this.#received.splice(i, 1)[0]);
    return this.#latch.guard(
      new Promise<ReturnMessage>((resolve) => {
        for (const type of types) {
          this.#waiters.push({
            type,
            resolve: (m) => {
              this.#waiters = this.#waiters.filter((w) => !types.includes(w.type));
              resolve(m);
            },
          });
        }
      }),
    );
  }

  // ---- bookkeeping -------------------------------------------------------------------------

  #setPhase(phase: MigrationPhase): void {
    const now = performance.now();
    this.#phases[this.#phase] = (this.#phases[this.#phase] ?? 0) + (now - this.#phaseAt);
    this.#phase = phase;
    this.#phaseAt = now;
    this.#progress();
    this.emit('phase', { phase, elapsedMs: now - this.#t0 });
    if (phase !== 'precopy') this.#emitProgress(this.#predicted, null);
  }

  /**
   * The bytes pending at a round's start were read: ask the device what is pending now (the data it
   * dirtied meanwhile), which is the next round. Fed to the estimator like any query.
   */
  #roundDone(i: number, session: SavingSession): void {
    // Both sizes together, as the estimator's own queries: a fresh precopy count against a stale
    // stop-copy size would make a stop-copy floor out of bytes that are simply not counted yet.
    Promise.all([session.precopyInfo(), this.#devs[i].core.stopCopySize()]).then(
      ([info, size]) => {
        if (this.#switching || this.#latch.error) return;
        this.#est.updatePrecopyInfo(info, i);
        this.#est.updateStopCopySize(size, i);
        this.#nextRound(i, info.initialBytes + info.dirtyBytes);
      },
      () => {
        // The periodic query retries and reports failures to the estimator; a round boundary is not worth one.
      },
    );
  }

  /** PRE_COPY rounds: the most any device started. */
  #rounds(): number {
    return Math.max(0, ...this.#devs.map((d) => d.rounds));
  }

  /**
   * A round ends once the bytes pending at its start were read (or at a temporary end of stream);
   * the next one starts at the next precopy-info query that finds data pending (QEMU's iterations).
   */
  #nextRound(i: number, pending: number): void {
    const d = this.#devs[i];
    if (d.roundLeft > 0 || pending <= 0 || this.#switching) return;
    d.rounds++;
    d.roundLeft = pending;
  }

  #progress(): void {
    this.#lastProgressAt = performance.now();
  }

  #emitProgress(predicted: number | null, remaining: number | null): void {
    const now = performance.now();
    const wireBytes = this.#writers.reduce((sum, w) => sum + w.wireBytes, 0);
    if (now - this.#lastRateAt >= 200) {
      this.#rate = ((wireBytes - this.#lastRateBytes) * 1000) / (now - this.#lastRateAt);
      this.#lastRateAt = now;
      this.#lastRateBytes = wireBytes;
    }
    const ev: ProgressEvent = {
      phase: this.#phase,
      bytes: this.#bytesRead(),
      devices: this.#devs.map((d) => ({ bytes: d.bytes, round: d.rounds })),
      wireBytes,
      rate: this.#rate,
      round: this.#rounds(),
      predictedDowntimeMs: predicted,
      remainingBytes: remaining,
      backlogBytes: this.#loadedReports > 0 ? this.#destBacklog : null,
      elapsedMs: now - this.#t0,
    };
    this.emit('progress', ev);
  }

  /** Undo everything: source devices back to RUNNING, the destination told to reset, the error named. */
  async #rollback(e: unknown): Promise<MigError> {
    const err = asPhaseError(this.#latch.error ?? e, this.#phase);
    this.#latch.fail(err);
    const phase = (err.phase ?? this.#phase) as MigrationPhase;
    // Before 'validated', or after it with the state given back: the devices go back to RUNNING.
    if (!this.#validated || this.#returned) {
      const w = this.#w;
      const live = w !== null && this.#transport !== null && !this.#transport.destroyed;
      // Best effort: a destination that still listens resets at once instead of at transport loss,
      // and names the cause. The record queues behind what was already sent (under a cap, up to a
      // bucket's debt of it): the devices go back to RUNNING first, then the abort gets
      // ABORT_FLUSH_MS to reach the kernel before the transport is destroyed. (It was destroyed
      // with the record still queued, and the destination reported a connection lost mid-stream.)
      const told = live ? w.control({ type: 'abort', code: err.code, message: err.message, phase }).catch(() => {}) : null;
      for (const d of this.#devs) d.stream?.destroy();
      const outcome = await rollbackAll(this.#opts.devices);
      const failed = outcome.filter((o) => o.error !== undefined);
      err.recovery = failed.length === 0 ? 'recovered' : 'failed';
      err.detail = { ...err.detail, rollback: outcome.map((o) => ({ device: o.device, state: o.state, error: o.error instanceof Error ? o.error.message : undefined })) };
      if (live) {
        const deadline = performance.now() + ABORT_FLUSH_MS;
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([told, new Promise((resolve) => (timer = setTimeout(resolve, ABORT_FLUSH_MS)))]);
        clearTimeout(timer);
        await w.flushed(deadline);
      }
    } else {
      // Past 'validated' the source does not roll back. Before 'running' its devices hold the
      // state, stopped (the destination may run it, or not: the caller decides); after it, the
      // destination runs it.
      err.recovery = this.#running || this.#opts.checkpoint === true ? 'none' : 'held';
    }
    // The writers go first: a pump waits on its writer's queue, which a transport the destination
    // closed never drains (the chaos test's seed 134 under a cap: done never settled, the devices
    // already RUNNING). Destroyed, the queue rejects its waiters and every pump ends.
    for (const w of this.#writers) w.destroy();
    this.#w?.destroy();
    this.#transport?.destroy();
    for (const t of this.#extra) t.destroy();
    await Promise.allSettled(this.#devs.map((d) => d.pump));
    return err;
  }
}

/** An error's code and message, for a summary. */
function errorInfo(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown } | null;
  return { code: typeof e?.code === 'string' ? e.code : 'EIO', message: typeof e?.message === 'string' ? e.message : String(err) };
}

/** Start a live migration of `opts.devices` to the destination at the other end of `opts.transport`. */
export function migrate(opts: MigrateOptions): SourceMigration {
  return new SourceMigration(opts);
}

