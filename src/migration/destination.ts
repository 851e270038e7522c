/**
 * The destination side of a live migration: `receive(opts)`.
 *
 * It reads the source's record stream, refuses incompatible device tables before the source touches
 * a device, moves its devices to RESUMING and answers 'ready', loads DATA records into each device's
 * resuming session, acknowledges the initial PRE_COPY data (switchover-ack) once every byte before
 * the source's 'initial-sent' was accepted by the devices, and on 'commit' validates every device
 * (RESUMING -> STOP), compares digests, answers 'validated', and once the source has released the
 * state ('release', the handover) resumes the set (P2P-ordered) and answers 'running'.
 *
 * Any failure before 'validated' resets every device (the only way out of RESUMING that will not
 * validate) and, when the transport still works, tells the source, which then resumes its devices.
 * Between 'validated' and 'release' the devices hold the state, stopped: an 'abort' from the source
 * (which had not read 'validated') resets them; any other failure leaves them so (recovery 'held').
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex, Readable, Writable } from 'node:stream';
import type { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, MigError, migError } from '../fsm/errors.js';
import { DeviceState } from '../fsm/states.js';
import type { ResumingSession } from '../fsm/types.js';
import type { CompressionPool } from '../streams/compression-pool.js';
import type { TransportListener } from '../transport/types.js';
import { RecordDecoder } from '../streams/record-decoder.js';
import { createResumingStream } from '../streams/resuming-stream.js';
import { RecordType, type DecodedObject, type StreamHeader } from '../streams/wire-format.js';
import {
  CONTROL_PROTOCOL_VERSION,
  LOADED_REPORT_MS,
  compatibilityProblem,
  encodeFrame,
  parseForwardMessage,
  type ControlFeatures,
  type MigrationPhase,
  type ReturnMessage,
} from './control.js';
import { FailureLatch, asPhaseError, watchRun } from './latch.js';
import { resetAll, resumeAll, stepAll } from './p2p.js';
import { digestOf } from './wire.js';
import { throughputMBps, type DeviceSummary, type MigrationEvents, type MigrationSummary } from './summary.js';

export interface ReceiveOptions {
  /** The devices to load, in the source's device-table order. */
  devices: readonly MigrationCore[];
  /**
   * A connected Duplex, a listener (listenTransport()'s: its connections, and the extra channels'
   * unless `accept` is given), or a function that yields a connection (e.g. `() => l.accept()`). A
   * plain Readable (a checkpoint file) works too: there is no return path to answer on. Once the
   * migration is complete, receive() ends its side and reads on to the source's end, so that the
   * connection closes (a source that keeps its side open is cut off after 2 s).
   */
  transport: Duplex | Readable | TransportListener | (() => Promise<Duplex | Readable>);
  signal?: AbortSignal;
  /**
   * Fail with VFIO_MIG_ERR_STALLED after this long without progress, ms. Default 15000. Not while
   * a `transport` function is still waiting for the source's connection: that wait is
   * `acceptTimeoutMs`'s.
   */
  stallTimeoutMs?: number;
  /**
   * With a `transport` function (a listener's accept): fail with VFIO_MIG_ERR_STALLED when no
   * source has connected this long after the call, ms (pre-flight checks and stray connections
   * are not a source). Default 0: wait until the caller's signal says stop.
   */
  acceptTimeoutMs?: number;
  /**
   * With a `transport` function: drop a connection that fails before its hello (it closes, sends
   * something else, or is silent for stallTimeoutMs: a probe, a health check) and wait for the
   * next (`'stray'`). Default true; false where every connection is the stream to load (a file
   * re-opened on each call, an inherited socket): its failure then ends the receive.
   */
  dropStrays?: boolean;
  /** Largest record payload accepted, bytes. Default 16 MiB. */
  maxPayload?: number;
  /** Progress event period, ms. Default 250. */
  progressMs?: number;
  /** The source's extra data channels (its `channels` option) arrive through this (e.g. `() => listener.accept()`). */
  accept?: () => Promise<Duplex>;
  /** Cap on DATA bytes held out of order across channels. Default 64 MiB. */
  maxReorderBytes?: number;
  /**
   * Decompress the compressed DATA records in this pool's workers (in order, on every channel)
   * instead of on the event loop, which then only parses, checks and loads. Its workers start at
   * the first compressed record (records decompress inline until one has booted), not during the
   * handshake, whose timed arcs and pings a boot would inflate; a pool warmed beforehand (warm())
   * is used at once. The caller owns the pool (close it when done). A decoder with a core to
   * spare decodes faster with one worker (docs/PERFORMANCE.md, zstd-*); on a host whose cores
   * the source's compression already keeps busy it does not help. Default none.
   */
  decompressionPool?: CompressionPool | null;
}

interface Reorder {
  /** DATA records of the device passed to its resuming stream (the next sequence number). */
  next: number;
  /** Records that arrived ahead of their turn, by sequence number mod 2^16. */
  pending: Map<number, Buffer>;
}

const FEATURES: ControlFeatures = { switchoverAck: true, digest: true, ping: true, loaded: true, release: true };
/** #consume's outcome for a connection that only carried a pre-flight check. */
const CHECKED = Symbol('checked');

/**
 * A connection to a receive(): before its hello ('pre'), a source ('source'), a pre-flight check
 * answered ('checked'), or dropped as a stray before its hello ('dropped').
 */
interface Conn {
  state: 'pre' | 'source' | 'checked' | 'dropped';
  /** Behind a listener and a connection (not a file): dropped, not fatal, when it fails before its hello. */
  strayable: boolean;
}

/** Why a destination refuses a source (the 'refuse' message's fields). */
interface Refusal {
  code: string;
  message: string;
  device?: number;
}
/** How long a finished migration waits for the source to close its side of a connection, ms. */
const LINGER_MS = 2000;

interface DeviceLoad {
  core: MigrationCore;
  session: ResumingSession | null;
  stream: Writable | null;
  /** The last write's completion: all bytes before it are in the device. */
  lastWrite: Promise<void>;
  bytes: number;
  rounds: number;
  digest: string | null;
  validateMs: number | null;
  verified: boolean | null;
}

export class DestinationMigration extends EventEmitter<MigrationEvents> {
  readonly done: Promise<MigrationSummary>;
  #phase: MigrationPhase;
  readonly #opts: ReceiveOptions;
  readonly #latch: FailureLatch;
  readonly #devs: DeviceLoad[];
  #transport: Duplex | Readable | null;
  #t0: number;
  /** When the connection being read arrived: the destination's durationMs starts there. */
  #connectedAt: number;
  #phaseAt: number;
  #phases: Partial<Record<MigrationPhase, number>>;
  #lastProgressAt: number;
  #switchAt: number;
  /** The source asked for 'loaded' reports (hello features). */
  #reportLoaded = false;
  #validated: boolean;
  /** The source offered the handover (hello features `release`) and can read our 'validated': resume only after its 'release'. */
  #awaitRelease = false;
  /** The source released the state (or never offers to): the devices may resume. */
  #released = false;
  /** A device was reset during the migration: what it loaded is gone. */
  #lostState = false;
  /** A device was asked to leave its state (the setup's arcs into RESUMING began): a failure resets them. */
  #touched: boolean;
  #resumed: boolean;
  #decoder: RecordDecoder | null;
  #downtimeMs: number;
  /** When every byte was in the devices, before the validation. */
  #drainedAt = 0;
  #channels: number;
  #migrationId: string;
  #reorder: Reorder[];
  #buffered: number;
  #waiters: (() => void)[];
  #extra: Duplex[];
  #extraDecoders: RecordDecoder[];
  #extraLoops: Promise<void>[];
  #reordered: number;
  #maxBuffered: number;

  constructor(opts: ReceiveOptions) {
    super();
    this.#opts = fromListener(opts);
    this.#phase = 'connect';
    this.#latch = new FailureLatch();
    this.#devs = opts.devices.map((core) => ({
      core,
      session: null,
      stream: null,
      lastWrite: Promise.resolve(),
      bytes: 0,
      rounds: 0,
      digest: null,
      validateMs: null,
      verified: null,
    }));
    this.#transport = null;
    this.#t0 = performance.now();
    this.#connectedAt = this.#t0;
    this.#phaseAt = this.#t0;
    this.#phases = {};
    this.#lastProgressAt = this.#t0;
    this.#switchAt = 0;
    this.#validated = false;
    this.#touched = false;
    this.#resumed = false;
    this.#decoder = null;
    this.#downtimeMs = 0;
    this.#channels = 1;
    this.#migrationId = '';
    this.#reorder = opts.devices.map(() => ({ next: 0, pending: new Map<number, Buffer>() }));
    this.#buffered = 0;
    this.#waiters = [];
    this.#extra = [];
    this.#extraDecoders = [];
    this.#extraLoops = [];
    this.#reordered = 0;
    this.#maxBuffered = 0;
    this.done = this.#run();
    this.done.catch(() => {});
  }

  get phase(): MigrationPhase {
    return this.#phase;
  }

  /** Channels: DATA records that arrived early and waited, and the most bytes held at once. */
  get reorderStats(): { reordered: number; maxBufferedBytes: number } {
    return { reordered: this.#reordered, maxBufferedBytes: this.#maxBuffered };
  }

  /**
   * Abort: the devices are reset (or, before the setup, left as they were) and the source is told;
   * between 'validated' and the resume the state is given back to the source (docs/migration.md,
   * "The handover"). Returns false, and changes nothing, when it comes too late: the migration
   * already ended or failed, or the devices resumed (they run the state; the source let it go).
   */
  abort(reason = 'aborted by the caller'): boolean {
    if (this.#latch.error !== null || this.#phase === 'complete' || this.#resumed) return false;
    this.#latch.fail(migError(ErrorCodes.ABORTED, reason, { phase: this.#phase }));
    return true;
  }

  async #run(): Promise<MigrationSummary> {
    const opts = this.#opts;
    let unwatch = (): void => {};
    const unwatchResets = this.#watchResets();
    const progressTimer = setInterval(() => this.#emitProgress(), opts.progressMs ?? 250);
    // 'loaded' reports for a source that asked: PRE_COPY only, and only when bytes moved.
    let reported = -1;
    const loadedTimer = setInterval(() => {
      if (!this.#reportLoaded || this.#phase !== 'precopy') return;
      const bytes = this.#devs.reduce((sum, d) => sum + d.bytes, 0);
      if (bytes === reported) return;
      reported = bytes;
      this.#reply({ type: 'loaded', bytes });
    }, LOADED_REPORT_MS);
    try {
      if (opts.devices.length === 0) throw migError(ErrorCodes.USAGE, 'receive: no devices');
      const acceptTimeoutMs = opts.acceptTimeoutMs ?? 0;
      if (!(acceptTimeoutMs >= 0)) throw migError(ErrorCodes.USAGE, `acceptTimeoutMs must be a duration in ms, got ${String(acceptTimeoutMs)}`);
      const factory = typeof opts.transport === 'function' ? opts.transport : null;
      // The connection being read, and whether it has shown itself a source (its hello came).
      let conn: Conn = { state: 'pre', strayable: false };
      // Waiting for a source is not a stall: neither is the wait for a connection, nor, behind a
      // listener, a connection's wait for its hello (a stray one is dropped below, not fatal).
      const waiting = (): boolean => this.#phase === 'connect' || (this.#phase === 'handshake' && conn.state === 'pre' && conn.strayable);
      // acceptTimeoutMs counts from the call: pre-flight checks and strays are not the source.
      unwatch = watchRun(this.#latch, opts, this, () => this.#lastProgressAt, { active: waiting, since: () => this.#t0, timeoutMs: acceptTimeoutMs, what: 'no source connected' });
      const stallMs = opts.stallTimeoutMs ?? 15_000;
      // The last connection dropped as a stray: if no other connection can come after it (a
      // listener of one connection), its failure is the receive's.
      let lastStray: MigError | null = null;
      const yielded = new WeakSet<Duplex | Readable>();
      // One connection per pre-flight check (checkDestination()) or stray connection, then the migration's.
      for (;;) {
        let t: Duplex | Readable;
        try {
          t = factory !== null ? await this.#latch.guard(factory()) : (opts.transport as Duplex | Readable);
        } catch (err) {
          throw lastStray !== null && this.#latch.error === null ? lastStray : err;
        }
        // A function that hands out the same stream again (or a destroyed one) has no next
        // connection: waiting on it would only repeat the stray's failure.
        if (lastStray !== null && (yielded.has(t) || t.destroyed)) throw lastStray;
        yielded.add(t);
        // Only a listener's connection can be a stray: a file (restore(), a `file:` URL) or a lone
        // stream is the stream to load, and its failure is the receive's.
        const strayable = factory !== null && opts.dropStrays !== false;
        const c: Conn = { state: 'pre', strayable };
        conn = c;
        this.#transport = t;
        this.#connectedAt = performance.now();
        this.#progress();
        this.#setPhase('handshake');
        // Payloads the decoder assembled (records spanning socket reads, decompressed frames) go back
        // to it once their device took them: later records reuse that memory instead of fresh pages.
        const decoder = new RecordDecoder({ maxPayload: opts.maxPayload, recycle: true, pool: opts.decompressionPool ?? null });
        this.#decoder = decoder;
        // Behind a listener, a connection that fails before its hello (closed, not our stream, or
        // silent for stallTimeoutMs: a port probe, a health check, a source that died at once) is
        // dropped and the next one awaited; it touched nothing.
        let drop: (err: MigError) => void = () => {};
        const dropped = new Promise<never>((_, reject) => (drop = reject));
        dropped.catch(() => {});
        const gone = (err?: unknown): void => {
          if (c.state === 'checked' || c.state === 'dropped') return;
          if (c.state === 'pre' && strayable) {
            drop(migError(ErrorCodes.TRANSPORT, `a connection closed before its hello${err instanceof Error ? `: ${err.message}` : ''}`, { phase: 'handshake', cause: err }));
          } else {
            this.#lost(err);
          }
        };
        t.on('error', gone);
        // A socket closing before the commit is a lost source; a file (a Readable) just ends, and the
        // decoder says whether it ended early (TRUNCATED).
        if ((t as Duplex).writable === true) t.on('close', () => gone());
        t.pipe(decoder);
        const helloTimer =
          !strayable ? null : setTimeout(() => c.state === 'pre' && drop(migError(ErrorCodes.STALLED, `no hello within ${stallMs} ms of connecting`, { phase: 'handshake' })), stallMs);
        let outcome: MigrationSummary | typeof CHECKED;
        try {
          const consumed = this.#consume(decoder, c);
          outcome = await this.#latch.guard(strayable ? Promise.race([consumed, dropped]) : consumed);
        } catch (err) {
          if (!strayable || c.state !== 'pre' || this.#latch.error !== null) throw err;
          c.state = 'dropped';
          t.destroy();
          decoder.destroy();
          this.#transport = null;
          this.#decoder = null;
          lastStray = asPhaseError(err, 'handshake');
          this.emit('stray', lastStray);
          this.#setPhase('connect');
          continue;
        } finally {
          if (helloTimer !== null) clearTimeout(helloTimer);
        }
        if (outcome !== CHECKED) return outcome;
        letGo(t, decoder);
        this.#transport = null;
        this.#decoder = null;
        if (factory === null) {
          throw migError(ErrorCodes.TRANSPORT, 'the source only ran a pre-flight check: this receive() has no other connection to migrate on', { phase: 'handshake' });
        }
        this.#setPhase('connect');
      }
    } catch (e) {
      // Resumed, the devices run the state and 'running' is sent: whatever fails after that (the
      // caller's abort, a connection lost before the source's STREAM_END, the record loop's own
      // error) ends nothing; the migration succeeded. One place for every way a failure arrives.
      if (this.#resumed) return this.#summary();
      throw await this.#cleanup(e);
    } finally {
      unwatch();
      unwatchResets();
      clearInterval(progressTimer);
      clearInterval(loadedTimer);
    }
  }

  /**
   * A device reset between the setup's first arc and the resume (by its driver, or by a caller's
   * core.reset()) discards what it loaded: the migration fails. Before, a reset after the last
   * write went unseen: the validation's setState(STOP) walked from RUNNING and the migration
   * verified and resumed a device whose loaded state was gone. Our own cleanup's resets come after
   * the failure and are not news; after the resume the devices are the caller's.
   */
  #watchResets(): () => void {
    const offs = this.#opts.devices.map((core, i) => {
      const onReset = () => {
        if (!this.#touched || this.#resumed || this.#latch.error !== null) return;
        this.#lostState = true;
        this.#latch.fail(migError('ENODEV', `device ${i} was reset in phase ${this.#phase}: the state it was loading is gone`, { phase: this.#phase, device: i }));
      };
      core.on('reset', onReset);
      return () => core.off('reset', onReset);
    });
    return () => offs.forEach((off) => off());
  }

  #lost(err?: unknown): void {
    if (this.#phase === 'complete') return;
    // Once released the devices are ours: a source that hangs up (or is killed) before 'running'
    // reached it or before its STREAM_END changes nothing; the resume goes on. The decoder is
    // stopped, since a connection reset (ECONNRESET, not an end) would leave it waiting for more
    // until the stall timeout failed a migration that had succeeded.
    if (this.#released) {
      this.#decoder?.destroy();
      return;
    }
    this.#latch.fail(
      migError(ErrorCodes.TRANSPORT, `transport from the source lost in phase ${this.#phase}${err instanceof Error ? `: ${err.message}` : ''}`, {
        phase: this.#phase,
        cause: err,
      }),
    );
  }

  /** Read every record and act on it; resolves with the summary at STREAM_END. */
  async #consume(decoder: RecordDecoder, conn: Conn): Promise<MigrationSummary | typeof CHECKED> {
    let header: StreamHeader | null = null;
    let helloSeen = false;
    try {
      for await (const obj of decoder as AsyncIterable<DecodedObject>) {
        this.#latch.check();
        this.#progress();
        switch (obj.type) {
          case RecordType.STREAM_HEADER:
            header = obj.header;
            break;
          case RecordType.DATA: {
            if (!helloSeen) throw migError(ErrorCodes.PROTOCOL, 'DATA before the handshake', { phase: this.#phase });
            if (this.#channels > 1) await this.#deliver(obj.device, obj.channel, obj.payload);
            else await this.#load(obj.device, obj.payload, () => decoder.release(obj.payload));
            break;
          }
          case RecordType.ROUND:
            if (this.#devs[obj.device]) this.#devs[obj.device].rounds = Math.max(this.#devs[obj.device].rounds, obj.round + 1);
            break;
          case RecordType.DEVICE_END: {
            const d = this.#devs[obj.device];
            // With channels the device's data may still be on its way elsewhere: ended at commit.
            if (d && this.#channels === 1) this.#endStream(d);
            break;
          }
          case RecordType.CONTROL: {
            const msg = parseForwardMessage(obj.message, this.#devs.length);
            switch (msg.type) {
              case 'hello':
                if (header === null) throw migError(ErrorCodes.PROTOCOL, 'hello before the stream header', { phase: 'handshake' });
                if (msg.check === true) {
                  conn.state = 'checked';
                  this.#answerCheck(header, msg.version, msg.channels ?? 1);
                  return CHECKED;
                }
                conn.state = 'source';
                this.#channels = msg.channels ?? 1;
                this.#migrationId = msg.migration ?? '';
                await this.#handshake(header, msg.version, msg.features);
                helloSeen = true;
                break;
              case 'initial-sent': {
                // Every byte before this record must be in the devices before the ack (QEMU's
                // switchover-ack: the destination approves once the initial data is loaded).
                const epoch = msg.epoch;
                if (msg.records && this.#channels > 1) await this.#waitDelivered(msg.records);
                await this.#latch.guard(Promise.all(this.#devs.map((d) => d.lastWrite)));
                this.#reply({ type: 'switchover-ack', epoch, loadedBytes: this.#devs.reduce((s, d) => s + d.bytes, 0) });
                break;
              }
              case 'reinit':
                break;
              case 'ping':
                this.#reply({ type: 'pong', id: msg.id });
                break;
              case 'switchover':
                this.#switchAt = performance.now();
                this.#setPhase('stop-copy');
                break;
              case 'digest':
                this.#devs[msg.device].digest = msg.digest;
                break;
              case 'commit':
                if (msg.records && this.#channels > 1) await this.#waitDelivered(msg.records);
                if (this.#channels > 1) this.#endStreams();
                await this.#validate();
                if (!this.#awaitRelease) await this.#resume();
                break;
              case 'release':
                if (!this.#validated || this.#released) throw migError(ErrorCodes.PROTOCOL, `'release' in phase ${this.#phase}, not after 'validated'`, { phase: this.#phase });
                await this.#resume();
                break;
              case 'abort':
                throw migError(msg.code, `source aborted in phase ${msg.phase}: ${msg.message}`, { phase: msg.phase });
            }
            break;
          }
          case RecordType.STREAM_END: {
            if (!this.#resumed) {
              throw migError(ErrorCodes.PROTOCOL, 'STREAM_END before the migration committed', { phase: this.#phase });
            }
            return this.#summary();
          }
        }
      }
    } catch (err) {
      // (Resumed, the devices run the state whatever this error is: #run's catch returns the summary.)
      // The decoder's typed errors (CORRUPT, TRUNCATED, DIGEST, LIMIT) arrive here. A connection that
      // ends mid-stream is a lost source (the decoder's TRUNCATED is the cause); a file stays TRUNCATED.
      const live = this.#transport instanceof net.Socket;
      if (live && err instanceof MigError && err.code === ErrorCodes.TRUNCATED) {
        throw migError(ErrorCodes.TRANSPORT, `the source's connection ended mid-stream in phase ${this.#phase}`, { phase: this.#phase, cause: err });
      }
      throw asPhaseError(err, this.#phase);
    }
    if (this.#resumed) return this.#summary();
    throw migError(ErrorCodes.TRANSPORT, `the source's stream ended in phase ${this.#phase}`, { phase: this.#phase });
  }

  /** Compare the device tables, then RESUMING on every device, then 'ready'. */
  async #handshake(header: StreamHeader, version: number, features: ControlFeatures): Promise<void> {
    const refuse = (code: string, message: string, device?: number): never => {
      this.#reply({ type: 'refuse', code, message, ...(device !== undefined ? { device } : {}) });
      throw migError(code, `refused the source: ${message}`, { phase: 'handshake', device });
    };
    const refusal = this.#refusal(header, version, this.#channels);
    if (refusal !== null) refuse(refusal.code, refusal.message, refusal.device);
    this.#reportLoaded = features.loaded === true;
    // A stream with no return path (a checkpoint piped in) cannot read our 'validated'.
    this.#awaitRelease = features.release === true && (this.#transport as Duplex | null)?.writable === true;
    this.#setPhase('setup');
    // setupMs times the arcs alone (the source's prior for this side's validation): each device is
    // asked its state first, so a first call's one-time costs are not taken for the arcs', and the
    // resuming streams are made after.
    let setupMs = 0;
    try {
      await this.#latch.guard(Promise.all(this.#opts.devices.map((c) => c.getState())));
      const tSetup = performance.now();
      this.#touched = true;
      await this.#latch.guard(stepAll(this.#opts.devices, () => DeviceState.RESUMING));
      setupMs = performance.now() - tSetup;
    } catch (err) {
      const e = asPhaseError(err, 'setup');
      refuse(e.code, `could not enter RESUMING: ${e.message}`, e.device);
    }
    for (const d of this.#devs) {
      const s = d.core.session;
      if (s === null || s.direction !== 'resuming') {
        refuse('EIO', 'a device opened no resuming session');
        return;
      }
      d.session = s;
      const stream = createResumingStream(s, {});
      stream.on('error', (err: unknown) => this.#latch.fail(asPhaseError(err, this.#phase)));
      d.stream = stream;
    }
    this.#reply({ type: 'ready', version: CONTROL_PROTOCOL_VERSION, features: FEATURES, setupMs });
    for (let k = 1; k < this.#channels; k++) {
      const loop = this.#channelLoop();
      loop.catch((err: unknown) => this.#latch.fail(asPhaseError(err, this.#phase)));
      this.#extraLoops.push(loop);
    }
    this.#setPhase('precopy');
  }

  /**
   * Why these devices cannot be taken (the handshake's rules, a pre-flight check's too), or null:
   * the control protocol version, the device count, each device's identity, the channels.
   */
  #refusal(header: StreamHeader, version: number, channels: number): Refusal | null {
    if (version !== CONTROL_PROTOCOL_VERSION) {
      return { code: ErrorCodes.UNSUPPORTED, message: `control protocol ${version} (this destination speaks ${CONTROL_PROTOCOL_VERSION})` };
    }
    if (header.devices.length !== this.#devs.length) {
      return { code: ErrorCodes.INCOMPATIBLE, message: `the source sends ${header.devices.length} device(s), this destination has ${this.#devs.length}` };
    }
    for (let i = 0; i < this.#devs.length; i++) {
      const problem = compatibilityProblem(header.devices[i].identity, this.#devs[i].core.identity());
      if (problem !== null) return { code: ErrorCodes.INCOMPATIBLE, message: `device ${i} (${header.devices[i].name}): ${problem}`, device: i };
    }
    if (channels > 1 && this.#opts.accept === undefined) {
      return { code: ErrorCodes.UNSUPPORTED, message: `the source wants ${channels} channels; this destination takes one connection` };
    }
    return null;
  }

  /** A pre-flight check: answer by the handshake's rules; no device moves. */
  #answerCheck(header: StreamHeader, version: number, channels: number): void {
    const refusal = this.#refusal(header, version, channels);
    this.#reply(refusal === null ? { type: 'compatible', version: CONTROL_PROTOCOL_VERSION, features: FEATURES } : { type: 'refuse', ...refusal });
    this.emit('check', refusal === null ? { compatible: true } : { compatible: false, ...refusal });
  }

  /**
   * One extra data channel: accept it, check it belongs to this migration, deliver its DATA in
   * order. A connection is a channel once its stream header names this migration; one that closes
   * before, sends something else (a probe, a pre-flight check, another source) or says nothing for
   * stallTimeoutMs is dropped (`'stray'`) and the next connection accepted.
   */
  async #channelLoop(): Promise<void> {
    const accept = this.#opts.accept as () => Promise<Duplex>;
    const stallMs = this.#opts.stallTimeoutMs ?? 15_000;
    for (;;) {
      const t = await this.#latch.guard(accept());
      const dec = new RecordDecoder({ maxPayload: this.#opts.maxPayload, pool: this.#opts.decompressionPool ?? null });
      t.pipe(dec);
      const records = (dec as AsyncIterable<DecodedObject>)[Symbol.asyncIterator]();
      let gone: (err?: unknown) => void = () => {};
      const unidentified = new Promise<never>((_, reject) => {
        gone = (err?: unknown): void => reject(err ?? migError(ErrorCodes.TRANSPORT, 'a connection closed before its stream header'));
      });
      unidentified.catch(() => {});
      const closed = (): void => gone();
      t.on('error', gone);
      t.on('close', closed);
      const timer = setTimeout(() => gone(migError(ErrorCodes.STALLED, `no stream header within ${stallMs} ms of connecting`)), stallMs);
      let why: MigError | null = null;
      try {
        const first = await this.#latch.guard(Promise.race([records.next(), unidentified]));
        if (first.done === true || first.value.type !== RecordType.STREAM_HEADER) {
          why = migError(ErrorCodes.PROTOCOL, 'a connection ended or sent records before its stream header');
        } else if (first.value.header.sender.migration !== this.#migrationId) {
          why = migError(ErrorCodes.PROTOCOL, 'a connection that is not a data channel of this migration (another source, or a pre-flight check) came while it took its channels');
        }
      } catch (err) {
        if (this.#latch.error !== null) throw err;
        why = asPhaseError(err, this.#phase);
      } finally {
        clearTimeout(timer);
      }
      if (why !== null) {
        t.on('error', () => {});
        t.destroy();
        dec.destroy();
        this.emit('stray', why);
        continue;
      }
      // A channel of this migration: from now on its loss is the migration's.
      t.off('error', gone);
      t.off('close', closed);
      t.on('error', (err) => this.#lost(err));
      this.#extra.push(t);
      this.#extraDecoders.push(dec);
      for (;;) {
        const r = await records.next();
        if (r.done === true) break;
        const obj = r.value;
        this.#latch.check();
        this.#progress();
        if (obj.type === RecordType.DATA) {
          await this.#deliver(obj.device, obj.channel, obj.payload);
        } else if (obj.type === RecordType.STREAM_END) {
          return;
        }
        // DEVICE_END: the decoder checked this channel's share of the device's bytes and digest.
      }
      if (!this.#released) throw migError(ErrorCodes.TRANSPORT, `a data channel ended in phase ${this.#phase}`, { phase: this.#phase });
      return;
    }
  }

  /**
   * DATA from any channel, in each device's order: the record whose sequence number (mod 2^16, in
   * the channel field) is the device's next goes to the device, with any that were waiting for it;
   * one that is early waits in the reorder buffer, and when that is full its channel stops reading
   * (backpressure). No deadlock: the earliest record at the head of any channel is always a
   * device's next (each channel is in send order).
   */
  async #deliver(device: number, seq: number, payload: Buffer): Promise<void> {
    const r = this.#reorder[device];
    if (!r) throw migError(ErrorCodes.PROTOCOL, `DATA for device ${device}, which the table does not hold`, { phase: this.#phase });
    if ((r.next & 0xffff) !== seq) {
      const cap = this.#opts.maxReorderBytes ?? 64 * 1024 * 1024;
      while (this.#buffered + payload.length > cap && (r.next & 0xffff) !== seq) {
        await this.#latch.guard(new Promise<void>((resolve) => this.#waiters.push(resolve)));
      }
      if ((r.next & 0xffff) !== seq) {
        if (r.pending.has(seq)) throw migError(ErrorCodes.PROTOCOL, `device ${device}: sequence ${seq} received twice`, { phase: this.#phase });
        r.pending.set(seq, payload);
        this.#buffered += payload.length;
        this.#reordered++;
        if (this.#buffered > this.#maxBuffered) this.#maxBuffered = this.#buffered;
        return;
      }
    }
    r.next++;
    const loads = [this.#load(device, payload)];
    for (let b = r.pending.get(r.next & 0xffff); b !== undefined; b = r.pending.get(r.next & 0xffff)) {
      r.pending.delete(r.next & 0xffff);
      this.#buffered -= b.length;
      r.next++;
      loads.push(this.#load(device, b));
    }
    this.#wake();
    await Promise.all(loads);
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Until every device received `records` DATA records (over all channels). */
  async #waitDelivered(records: number[]): Promise<void> {
    while (records.some((n, d) => (this.#reorder[d]?.next ?? n) < n)) {
      await this.#latch.guard(new Promise<void>((resolve) => this.#waiters.push(resolve)));
    }
  }

  /** Every device's data is in: end the resuming streams (after their last write). */
  #endStreams(): void {
    for (const d of this.#devs) this.#endStream(d);
  }

  /** End a device's resuming stream after its last write; `lastWrite` settles when it finished. */
  #endStream(d: DeviceLoad): void {
    const s = d.stream;
    if (!s) return;
    d.lastWrite = d.lastWrite.then(
      () =>
        new Promise<void>((resolve, reject) => {
          s.once('error', reject);
          s.end(() => resolve());
        }),
    );
    d.lastWrite.catch(() => {});
  }

  /**
   * One DATA record into its device's resuming stream, honouring the stream's backpressure.
   * `done` runs once the device took every byte of it (the stream no longer reads it).
   */
  async #load(device: number, payload: Buffer, done?: () => void): Promise<void> {
    const d = this.#devs[device];
    const s = d?.stream;
    if (!s) throw migError(ErrorCodes.PROTOCOL, `DATA for device ${device}, which has no resuming session`, { phase: this.#phase, device });
    d.bytes += payload.length;
    const written = new Promise<void>((resolve, reject) => {
      s.write(payload, (err) => {
        if (err) {
          reject(err);
          return;
        }
        done?.();
        resolve();
      });
    });
    written.catch(() => {});
    d.lastWrite = written;
    if (s.writableNeedDrain) {
      await this.#latch.guard(
        new Promise<void>((resolve, reject) => {
          const onDrain = () => {
            s.off('error', onErr);
            resolve();
          };
          const onErr = (err: unknown) => {
            s.off('drain', onDrain);
            reject(err);
          };
          s.once('drain', onDrain);
          s.once('error', onErr);
        }),
      );
    }
  }

  /** Drain, validate every device (RESUMING -> STOP), verify digests, answer 'validated'. */
  async #validate(): Promise<void> {
    await this.#latch.guard(Promise.all(this.#devs.map((d) => d.lastWrite)));
    const drainedAt = performance.now();
    this.#setPhase('validate');
    await this.#latch.guard(
      Promise.all(
        this.#devs.map(async (d, i) => {
          const t = performance.now();
          try {
            await d.core.setState(DeviceState.STOP);
          } catch (err) {
            const e = asPhaseError(err, 'validate');
            e.device ??= i;
            throw e;
          }
          d.validateMs = performance.now() - t;
        }),
      ),
    );
    let verified = true;
    for (let i = 0; i < this.#devs.length; i++) {
      const d = this.#devs[i];
      const mine = await digestOf(d.core);
      if (mine === null || d.digest === null) {
        d.verified = null;
        verified = false;
        continue;
      }
      d.verified = mine === d.digest;
      if (!d.verified) {
        throw migError(ErrorCodes.DIGEST, `device ${i}: state digest after loading ${mine.slice(0, 16)}... differs from the source's ${d.digest.slice(0, 16)}...`, {
          phase: 'validate',
          device: i,
        });
      }
    }
    this.#reply({ type: 'validated', validateMs: this.#devs.map((d) => d.validateMs ?? 0), verified, bytes: this.#devs.map((d) => d.bytes) });
    this.#validated = true;
    this.#drainedAt = drainedAt;
    // From here the devices hold the state, stopped, until the source releases it ('release'):
    // the source may not have read 'validated', and rolls back on any failure until it does.
    this.#setPhase('resume');
  }

  /** The state is ours (released, or a source that does not release): resume every device, answer 'running'. */
  async #resume(): Promise<void> {
    this.#released = true;
    const drainedAt = this.#drainedAt;
    const t = performance.now();
    await this.#latch.guard(resumeAll(this.#opts.devices));
    this.#resumed = true;
    this.#downtimeMs = performance.now() - (this.#switchAt || drainedAt);
    this.#reply({ type: 'running', resumeMs: performance.now() - t, drainMs: drainedAt - (this.#switchAt || drainedAt) });
  }

  #summary(): MigrationSummary {
    this.#setPhase('complete');
    const durationMs = performance.now() - this.#connectedAt;
    const bytes = this.#devs.reduce((s, d) => s + d.bytes, 0);
    const wireBytes = (this.#decoder?.bytesIn ?? 0) + this.#extraDecoders.reduce((sum, dec) => sum + dec.bytesIn, 0);
    this.#extra.forEach((x, k) => letGo(x, this.#extraDecoders[k]));
    const devices: DeviceSummary[] = this.#devs.map((d) => ({ bytes: d.bytes, precopyBytes: 0, validateMs: d.validateMs, verified: d.verified }));
    letGo(this.#transport as Duplex | null, this.#decoder);
    return {
      ok: true,
      role: 'destination',
      verified: this.#devs.every((d) => d.verified === true),
      bytes,
      wireBytes,
      compressionRatio: wireBytes > 0 ? bytes / wireBytes : 1,
      durationMs,
      downtimeMs: this.#downtimeMs,
      predictedDowntimeMs: null,
      switchoverLimitMs: null,
      precopyRounds: Math.max(0, ...this.#devs.map((d) => d.rounds)),
      throughputMBps: throughputMBps(bytes, durationMs),
      phases: this.#phases,
      devices,
    };
  }

  #reply(msg: ReturnMessage): void {
    if (!this.#canReply()) return;
    (this.#transport as Duplex).write(encodeFrame(msg));
  }

  /** Is there a return path to write to? (A checkpoint file has none: a Readable has no `writable`.) */
  #canReply(): boolean {
    const t = this.#transport as Duplex | null;
    return t !== null && !t.destroyed && t.writable === true;
  }

  #setPhase(phase: MigrationPhase): void {
    const now = performance.now();
    this.#phases[this.#phase] = (this.#phases[this.#phase] ?? 0) + (now - this.#phaseAt);
    this.#phase = phase;
    this.#phaseAt = now;
    this.#progress();
    this.emit('phase', { phase, elapsedMs: now - this.#t0 });
  }

  #progress(): void {
    this.#lastProgressAt = performance.now();
  }

  #emitProgress(): void {
    if (this.#phase === 'connect' || this.#phase === 'complete') return;
    this.emit('progress', {
      phase: this.#phase,
      bytes: this.#devs.reduce((s, d) => s + d.bytes, 0),
      devices: this.#devs.map((d) => ({ bytes: d.bytes, round: d.rounds })),
      // Every channel's, as in the summary.
      wireBytes: (this.#decoder?.bytesIn ?? 0) + this.#extraDecoders.reduce((sum, dec) => sum + dec.bytesIn, 0),
      rate: 0,
      round: Math.max(0, ...this.#devs.map((d) => d.rounds)),
      predictedDowntimeMs: null,
      remainingBytes: null,
      elapsedMs: performance.now() - this.#t0,
    });
  }

  /**
   * Reset every device (unless the run never asked them to move, or they hold the validated state
   * for the handover) and tell the source. Recovery 'failed' when a reset failed.
   */
  async #cleanup(e: unknown): Promise<MigError> {
    const err = asPhaseError(this.#latch.error ?? e, this.#phase);
    this.#latch.fail(err);
    const fromSource = err.message.startsWith('source aborted');
    const phase = (err.phase ?? this.#phase) as MigrationPhase;
    const reset = async (): Promise<boolean> => {
      const clean = await resetAll(this.#opts.devices);
      err.recovery = clean ? 'reset' : 'failed';
      return clean;
    };
    if (!this.#validated) {
      if (!fromSource) this.#reply({ type: 'error', code: err.code, message: err.message, phase });
      for (const d of this.#devs) d.stream?.destroy();
      // Devices the run never asked to move (no source, or refused at the handshake) keep their
      // state: a reset would undo nothing and lose what they held.
      if (this.#touched) await reset();
      else err.recovery = 'none';
    } else {
      // Validated. Until 'running' reaches it the source holds the state too, stopped (it never
      // lets go of a copy before then). A source that aborts has not read 'validated' and runs the
      // state again: reset ours, as before the validation.
      for (const d of this.#devs) d.stream?.destroy();
      if (fromSource) {
        await reset();
      } else if (this.#lostState || this.#released || (err.code === ErrorCodes.ABORTED && this.#canReply())) {
        // The state cannot or shall not run here: a device was reset (what it loaded is gone), the
        // resume failed with the source's release in (its devices part RUNNING, part not, some
        // maybe in ERROR), or our caller aborted while the source can still be told. Give it back:
        // reset every device, then tell the source that nothing of it runs here (`returned`), and
        // the source, which still holds it, runs it again. A reset that fails leaves a device that
        // may run it: then the source is not told to, and holds it.
        const clean = await reset();
        this.#reply({ type: 'error', code: err.code, message: err.message, phase, ...(clean ? { returned: true } : {}) });
      } else {
        // The connection lost or a stall, before the release: the source may have released the
        // state (its 'release' on the way) or not, and may be gone. Resuming could run it twice
        // and a reset could lose it (a source killed since holds nothing): the devices stay
        // stopped with it and the caller decides ('held').
        this.#reply({ type: 'error', code: err.code, message: err.message, phase });
        err.recovery = 'held';
      }
    }
    this.#decoder?.destroy();
    for (const dec of this.#extraDecoders) dec.destroy();
    for (const x of this.#extra) x.destroy();
    this.#wake();
    const t = this.#transport as Duplex | null;
    if (t !== null && !t.destroyed) {
      // Let the error frame leave before the socket closes.
      if (t.writable === true) t.end();
      setTimeout(() => t.destroy(), 200).unref();
    }
    return err;
  }
}

/**
 * A connection whose source is done (STREAM_END read): end our side, and read on to the source's
 * end of stream so that the socket closes. Nothing reads it after STREAM_END, so it stayed paused
 * with the source's FIN unread and, half-open, never closed: one fd per migration in a long-lived
 * destination. A source that does not end its side within LINGER_MS is cut off.
 */
function letGo(t: Duplex | Readable | null, decoder: RecordDecoder | null | undefined): void {
  if (t === null || t.destroyed) return;
  if (decoder) t.unpipe(decoder);
  if ((t as Duplex).writable === true) (t as Duplex).end();
  const timer = setTimeout(() => t.destroy(), LINGER_MS).unref();
  t.once('close', () => clearTimeout(timer));
  t.resume();
}

/**
 * A listener given as `transport` (listenTransport()'s): its connections are the source's, its
 * pre-flight checks' and strays' (`transport`), and the extra channels' (`accept`, unless given).
 */
function fromListener(opts: ReceiveOptions): ReceiveOptions {
  const t = opts.transport as Partial<TransportListener>;
  if (typeof t !== 'object' || t === null || typeof t.accept !== 'function' || typeof t.url !== 'string') return opts;
  const l = t as TransportListener;
  const next = (): Promise<Duplex> => l.accept({ signal: opts.signal });
  return { ...opts, transport: next, accept: opts.accept ?? next };
}

/** Receive a live migration into `opts.devices` from the source at the other end of `opts.transport`. */
export function receive(opts: ReceiveOptions): DestinationMigration {
  return new DestinationMigration(opts);
}
