/**
 * The orchestrator's use of the data path: the forward record stream onto a transport (encoder,
 * optional bandwidth cap, wire accounting), compression options, transports given as URLs, and the
 * device digests used for verification.
 */
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import os from 'node:os';
import type { Duplex, Readable, Writable } from 'node:stream';
import type { TransportOptions } from '../transport/types.js';
import type { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { RecordEncoder } from '../streams/record-encoder.js';
import { DEFAULT_ZSTD_LEVEL } from '../streams/compression-pool.js';
import { RecordType, type RecordInput, type WireDevice } from '../streams/wire-format.js';
import { connectTransport } from '../transport/index.js';
import { TokenBucket, createBandwidthLimiter } from './policy.js';
import type { ForwardMessage } from './control.js';

/** Wire samples are taken over at least this long and this many bytes. */
const SAMPLE_MS = 10;
const MIN_SAMPLE_BYTES = 64 * 1024;

/** 'none', 'zstd', 'zstd:LEVEL', or { zstd: LEVEL }. */
export type Compression = 'none' | 'zstd' | `zstd:${number}` | { zstd: number } | string;

/** The zstd level, or false for no compression. Throws VFIO_MIG_ERR_USAGE on anything else. */
export function parseCompression(c: Compression): number | false {
  if (typeof c === 'object' && c !== null) {
    if (!Number.isInteger(c.zstd)) throw migError(ErrorCodes.USAGE, `bad zstd level ${String(c.zstd)}`);
    return c.zstd;
  }
  if (c === 'none' || c === '') return false;
  if (c === 'zstd') return DEFAULT_ZSTD_LEVEL;
  const m = /^zstd:(-?\d+)$/.exec(c);
  if (m) {
    const level = Number(m[1]);
    if (level < -7 || level > 19) throw migError(ErrorCodes.USAGE, `zstd level ${level} is outside -7..19`);
    return level;
  }
  throw migError(ErrorCodes.USAGE, `unknown compression '${c}': expected none, zstd or zstd:LEVEL`);
}

/** A connected Duplex for a URL, or the caller's stream as is. */
export async function openTransport<T extends Duplex | Writable>(t: T | string, opts: TransportOptions = {}): Promise<T | Duplex> {
  if (typeof t !== 'string') return t;
  return connectTransport(t, opts);
}

/** The device's state digest when its driver offers one (SimDevice, MttyDevice, HostedDevice), else null. */
export async function digestOf(core: MigrationCore): Promise<string | null> {
  const d = core.driver as { digest?: () => string | Promise<string> };
  return typeof d.digest === 'function' ? await d.digest() : null;
}

export interface ForwardOptions {
  devices: WireDevice[];
  compression: number | false;
  /** With compression: the share of a record its frame must save, else it goes raw (the encoder's minSaving). */
  minSaving?: number;
  /** Bytes per second on the wire; 0 = no cap. */
  bandwidth: number;
  /** A token bucket shared with other channels (their sum is capped); overrides `bandwidth`. */
  bucket?: TokenBucket;
  /** Extra fields of the stream header's sender (a channel's number and migration id). */
  sender?: Record<string, unknown>;
  /**
   * Called as wire bytes leave for the transport, with the raw device bytes they carried
   * (approximately) and, for samples of a busy streak, the milliseconds they took.
   */
  onWire?: (wireBytes: number, rawBytes: number, durationMs: number | undefined) => void;
  /**
   * Digest algorithm of DEVICE_END records (the decoder verifies). Default 'crc32': the chain of the
   * records' own crcs, free where records go uncompressed; 'sha256' costs a pass over every byte.
   */
  digest?: string | null;
  /**
   * Called with each chunk once the transport has written it (its write callback, without error):
   * an uncompressed DATA payload is the caller's own buffer, free again from then on. Also called
   * with a DATA payload that went out compressed, once its frame is ready (the encoder's
   * onPayloadFree). Compressed frames are not passed: with onWritten they are written into memory
   * the compression pool lends, and go back to it once written.
   */
  onWritten?: (chunk: Buffer) => void;
}

/** Queues ahead of a capped link hold about this many milliseconds of its rate... */
const QUEUE_MS = 20;
/** ...but at least this much (one record of a small chunk size)... */
const MIN_QUEUE_BYTES = 64 * 1024;
/** ...and at most the uncapped depth. */
const MAX_QUEUE_BYTES = 8 * 1024 * 1024;
/** How often flushed() looks at the queues, ms (an error path's wait: a timer is simpler than every stream's events). */
const FLUSH_POLL_MS = 2;

/** The forward record stream of one migration. */
export interface ForwardWriter {
  /** Queue a DATA record; resolves when the encoder accepted it (backpressure). */
  data(device: number, payload: Buffer): Promise<void>;
  /** Queue a CONTROL record. */
  control(msg: ForwardMessage): Promise<void>;
  /** Queue any record. */
  record(rec: RecordInput): Promise<void>;
  /** STREAM_END (the encoder fills in its byte count), then wait until every byte was handed to the transport (which stays open). */
  finish(): Promise<void>;
  /** Wire bytes handed to the transport so far (stream header included). */
  readonly wireBytes: number;
  /** performance.now() when the last chunk was handed to the transport (-1: none yet). */
  readonly lastWireAt: number;
  /** Raw device bytes the last chunk that carried any carried (a DATA record's payload): 0 before one. */
  readonly lastDataRawBytes: number;
  /**
   * What this writer holds that has not reached the kernel yet: raw device bytes not yet encoded
   * (queued for the encoder or being compressed) and encoded wire bytes (the encoder's output, the
   * bandwidth limiter, the transport's buffer). A switchover waits for all of it.
   */
  queued(): { rawBytes: number; wireBytes: number };
  /**
   * Resolves true once every record queued so far has been handed to the kernel (nothing in the
   * encoder, compression, the limiter or the transport's buffer), false when `deadline`
   * (performance.now() ms) comes first or the stream failed. A failing migration waits on it so
   * that its `abort` reaches the destination instead of dying in a destroyed queue.
   */
  flushed(deadline: number): Promise<boolean>;
  destroy(): void;
}

/**
 * Encoder -> (bandwidth cap) -> transport. The transport is not ended by the stream: its other
 * direction carries the destination's acknowledgements, and a socket without half-open support
 * would close both.
 */
export function openForward(transport: Writable, opts: ForwardOptions, onError: (err: unknown) => void): ForwardWriter {
  // Under a bandwidth cap every queue before the limiter stays full, and whatever is queued when
  // the switchover comes is downtime: keep them to ~QUEUE_MS of the capped rate. Uncapped, deep
  // queues keep the link busy.
  const capped = opts.bucket !== undefined || opts.bandwidth > 0;
  const rate = opts.bucket !== undefined ? opts.bucket.bytesPerMs * 1000 : opts.bandwidth;
  const queue = capped ? Math.min(MAX_QUEUE_BYTES, Math.max(MIN_QUEUE_BYTES, Math.round((rate * QUEUE_MS) / 1000))) : MAX_QUEUE_BYTES;
  const enc = new RecordEncoder({
    countCarried: true,
    devices: opts.devices,
    sender: { program: 'vfio-mig', host: os.hostname(), pid: process.pid, ...opts.sender },
    compression: opts.compression === false ? false : { level: opts.compression, ...(opts.minSaving !== undefined ? { minSaving: opts.minSaving } : {}) },
    digest: opts.digest === undefined ? 'crc32' : opts.digest,
    // A payload that went out compressed is free once its frame is ready, not once written; the
    // frame itself is free once written (below).
    ...(opts.onWritten !== undefined ? { onPayloadFree: opts.onWritten, recycleFrames: true } : {}),
    readableHighWaterMark: queue,
    ...(capped ? { writableHighWaterMark: 2, maxInFlightBytes: Math.max(queue, 2 * MIN_QUEUE_BYTES) } : {}),
  });
  let out: Readable = enc;
  if (opts.bucket !== undefined || opts.bandwidth > 0) {
    const limiter = createBandwidthLimiter(opts.bucket ?? { bytesPerSecond: opts.bandwidth });
    enc.pipe(limiter);
    limiter.on('error', onError);
    out = limiter;
  }
  enc.on('error', onError);
  let wireBytes = 0;
  // The raw bytes each chunk carried, as the encoder counted them when it pushed the chunk; the
  // limiter (if any) passes chunks whole and in order, so the chunks that leave `out` pop this
  // queue (without a limiter, as they are emitted).
  const carried: number[] = [];
  // First among the listeners: the pipe's own may run the limiter synchronously.
  enc.prependListener('data', () => carried.push(enc.shiftChunkRawBytes()));
  // Wire throughput samples. The link's rate shows only while data waits for it: an interval
  // between two chunks counts when the encoder (or the limiter) still held data when the first one
  // left; otherwise the source was starved (PRE_COPY dirty trickle) and the pause says nothing
  // about the link. Counted intervals are batched into samples of SAMPLE_MS.
  let acc = 0;
  let accRaw = 0;
  let accMs = 0;
  let lastAt = -1;
  let lastRaw = 0;
  let backlog = false;
  const queued = () =>
    enc.readableLength > 0 || enc.writableLength > 0 || (out !== enc && (out.readableLength > 0 || (out as unknown as Writable).writableLength > 0));
  out.on('data', (chunk: Buffer) => {
    const now = performance.now();
    wireBytes += chunk.length;
    const raw = carried.shift() ?? 0;
    if (raw > 0) lastRaw = raw;
    if (backlog && lastAt >= 0) {
      acc += chunk.length;
      accRaw += raw;
      accMs += now - lastAt;
      if (accMs >= SAMPLE_MS && acc >= MIN_SAMPLE_BYTES) {
        opts.onWire?.(acc, accRaw, accMs);
        acc = 0;
        accRaw = 0;
        accMs = 0;
      }
    } else {
      opts.onWire?.(chunk.length, raw, undefined);
    }
    lastAt = now;
    backlog = queued();
  });
  // Forwarded by hand rather than with pipe(): each write gets a callback, so the caller learns when
  // a chunk's memory is free again (onWritten). The transport is never ended from here.
  const written = opts.onWritten;
  const onWritten =
    written === undefined
      ? undefined
      : (chunk: Buffer): void => {
          // A compressed frame goes back to the pool's lent memory; anything else is the caller's.
          if (!enc.release(chunk)) written(chunk);
        };
  let waiting = false;
  const resume = (): void => {
    waiting = false;
    out.resume();
  };
  const forward = (chunk: Buffer): void => {
    const ok = onWritten === undefined ? transport.write(chunk) : transport.write(chunk, (err) => err == null && onWritten(chunk));
    if (!ok && !waiting && !transport.destroyed) {
      waiting = true;
      out.pause();
      transport.once('drain', resume);
    }
  };
  out.on('data', forward);
  let error: unknown = null;
  enc.once('error', (err) => (error = err));
  // Raw DATA bytes handed to write(); enc.dataBytes counts those the encoder has taken in.
  let submitted = 0;

  // Writers waiting for the encoder to drain share one waiter: one set of listeners however many
  // devices and control messages wait at once.
  let drained: Promise<void> | null = null;
  const waitDrain = (): Promise<void> =>
    (drained ??= new Promise<void>((resolve, reject) => {
      const settle = (): void => {
        drained = null;
        enc.off('drain', onDrain);
        enc.off('error', onErr);
        enc.off('close', onClose);
      };
      const onDrain = (): void => {
        settle();
        resolve();
      };
      const onErr = (err: unknown): void => {
        settle();
        reject(err);
      };
      const onClose = (): void => {
        settle();
        reject(migError(ErrorCodes.TRANSPORT, 'the forward stream closed'));
      };
      enc.once('drain', onDrain);
      enc.once('error', onErr);
      enc.once('close', onClose);
    }));

  const write = (rec: RecordInput): Promise<void> => {
    if (error !== null) return Promise.reject(error);
    if (enc.destroyed) return Promise.reject(migError(ErrorCodes.TRANSPORT, 'the forward stream is closed'));
    if (enc.write(rec)) return Promise.resolve();
    return waitDrain();
  };

  return {
    data: (device, payload) => {
      submitted += payload.length;
      return write({ type: RecordType.DATA, device, payload });
    },
    control: (message) => write({ type: RecordType.CONTROL, message }),
    record: write,
    async finish(): Promise<void> {
      await write({ type: RecordType.STREAM_END });
      const ended = once(out, 'end');
      enc.end();
      await ended;
      // The last streak's bytes that did not make a whole sample still count.
      if (acc > 0) {
        opts.onWire?.(acc, accRaw, undefined);
        acc = 0;
        accRaw = 0;
        accMs = 0;
      }
      // Every byte is in the transport's queue; wait until it has been handed to the kernel.
      if (transport.writableLength > 0) {
        await new Promise<void>((resolve, reject) => transport.write(Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
      }
    },
    get wireBytes() {
      return wireBytes;
    },
    get lastWireAt() {
      return lastAt;
    },
    get lastDataRawBytes() {
      return lastRaw;
    },
    queued() {
      let wire = enc.readableLength + transport.writableLength;
      if (out !== enc) wire += out.readableLength + (out as unknown as Writable).writableLength;
      return { rawBytes: Math.max(0, submitted - enc.dataBytes) + enc.inFlightBytes, wireBytes: wire };
    },
    async flushed(deadline) {
      const pending = () => queued() || enc.inFlightBytes > 0 || transport.writableLength > 0;
      while (pending()) {
        if (error !== null || enc.destroyed || transport.destroyed || performance.now() >= deadline) return false;
        await new Promise((resolve) => setTimeout(resolve, FLUSH_POLL_MS));
      }
      return error === null;
    },
    destroy() {
      out.off('data', forward);
      transport.off('drain', resume);
      enc.destroy();
      if (out !== enc) out.destroy();
    },
  };
}
