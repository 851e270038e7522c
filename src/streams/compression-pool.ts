/**
 * zstd off the event loop: a pool of worker_threads, each running zstd-napi's synchronous one-shot
 * compressor on independent frames.
 *
 * zstd-napi has no async API: at level 1 one MiB of mixed data costs about 1.1 ms of CPU, which would
 * come straight out of the event loop. Independent frames in worker_threads scaled 1.8-1.9x on the two
 * cores measured (research A5), better than libzstd's own nbWorkers. Jobs finish in any order; callers
 * that need order (RecordEncoder) keep their own FIFO of promises.
 *
 * The worker source is a string run with `eval: true`, so the same code works from src under vitest
 * and from dist; it loads zstd-napi's binding by an absolute path resolved here.
 */
import { Worker } from 'node:worker_threads';
import { crc32, CRC32_ADDON_PATH } from './crc32.js';
import { createRequire } from 'node:module';
import os from 'node:os';
import { migError, ErrorCodes } from '../fsm/errors.js';

const require = createRequire(import.meta.url);
const BINDING_PATH = require.resolve('zstd-napi/binding');

/** The subset of zstd-napi's binding this package uses (its own .d.ts is not an ES module). */
export interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(size: number): number;
  minCLevel(): number;
  maxCLevel(): number;
}
export const zstd = require(BINDING_PATH) as ZstdBinding;

/**
 * Default level: 1. Measured on the 2-core box (SimDevice 'mixed' pages, 1 MiB records, 2 workers,
 * in-process, 256 MiB; the box was shared, so ranges): level -1 ran 0.94-1.27 GB/s at ratio 2.29,
 * level 1 0.91-1.33 GB/s at 2.46, level 3 0.49-0.85 GB/s at 2.63. Through the pool -1 bought no speed
 * over 1 (per-job costs and the incompressible quarter of the pages dominate) for a 7% worse ratio,
 * and 3 cost 40-50% of the throughput for 7% more ratio. Through pipes (bench/compression.mjs) level 1
 * ran at 0.77-0.99x `zstd -1 -T2`.
 */
export const DEFAULT_ZSTD_LEVEL = 1;
/** Levels above 19 need zstd's "ultra" windows (tens of MiB per context): not worth it for 1 MiB frames. */
export const MAX_ZSTD_LEVEL = 19;
export const MIN_ZSTD_LEVEL = zstd.minCLevel();

export function validateZstdLevel(level: number): number {
  if (!Number.isInteger(level) || level < MIN_ZSTD_LEVEL || level > MAX_ZSTD_LEVEL) {
    throw migError(ErrorCodes.USAGE, `zstd level must be an integer in [${MIN_ZSTD_LEVEL}, ${MAX_ZSTD_LEVEL}], got ${level}`);
  }
  return level;
}

const OP_COMPRESS = 1;
const OP_DECOMPRESS = 2;

// Runs in each worker (CommonJS, eval). Once the binding is loaded it posts { id: 0, ready: true }
// (job ids start at 1). Messages: { id, op, buf: ArrayBuffer | SharedArrayBuffer, off, len, level,
// crc, back, rawLength, into, frame }. With `frame` (a SharedArrayBuffer of at least compressBound
// bytes, lent by the pool) the compressor writes the frame straight into it and replies with its
// length only. Without, it writes into a reused scratch buffer and copies the result into an exactly
// sized ArrayBuffer that is transferred out, so nothing larger than the frame crosses back. `back`
// returns a transferred-in source when it is still needed (not shrunk). A decompression writes into
// `into` (an ArrayBuffer of exactly rawLength bytes moved in by the caller: memory already mapped)
// or else into fresh memory.
const WORKER_SOURCE = `
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const zstd = require(workerData.bindingPath);
// The crc32 addon when the main thread uses it (src/streams/crc32.ts), else zlib's: same values.
const crc32 = workerData.crcPath ? require(workerData.crcPath).crc32 : require('node:zlib').crc32;
const cctx = new zstd.CCtx();
const dctx = new zstd.DCtx();
let scratch = Buffer.allocUnsafeSlow(0);
parentPort.on('message', (m) => {
  try {
    const src = Buffer.from(m.buf, m.off, m.len);
    if (m.op === ${OP_COMPRESS}) {
      const bound = zstd.compressBound(m.len);
      let dst;
      if (m.frame) dst = Buffer.from(m.frame, 0, bound);
      else if (scratch.length < bound) dst = scratch = Buffer.allocUnsafeSlow(bound);
      else dst = scratch;
      const n = cctx.compress(dst, src, m.level);
      if (n <= m.max && m.frame) {
        parentPort.postMessage({ id: m.id, out: null, n, crc: m.crc ? crc32(dst.subarray(0, n)) : 0, back: null });
      } else if (n <= m.max) {
        // allocUnsafeSlow: an unpooled ArrayBuffer of exactly n bytes, not zero-filled (new
        // ArrayBuffer(n) clears memory that the copy overwrites at once).
        const out = Buffer.allocUnsafeSlow(n);
        const ab = out.buffer;
        dst.copy(out, 0, 0, n);
        parentPort.postMessage({ id: m.id, out: ab, crc: m.crc ? crc32(out) : 0, back: null }, [ab]);
      } else {
        const crc = m.crc ? crc32(src) : 0;
        if (m.back) parentPort.postMessage({ id: m.id, out: null, crc, back: m.buf }, [m.buf]);
        else parentPort.postMessage({ id: m.id, out: null, crc, back: null });
      }
    } else {
      const dst = m.into ? Buffer.from(m.into, 0, m.rawLength) : Buffer.allocUnsafeSlow(m.rawLength);
      const ab = dst.buffer;
      const n = dctx.decompress(dst, src);
      if (n !== m.rawLength) throw new Error('frame holds ' + n + ' bytes, header says ' + m.rawLength);
      parentPort.postMessage({ id: m.id, out: ab, crc: 0, back: null }, [ab]);
    }
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String(e && e.message || e) });
  }
});
parentPort.postMessage({ id: 0, ready: true });
`;

export interface CompressResult {
  /** The zstd frame, or null when it would not save `minSaving` of the input (send raw). */
  compressed: Buffer | null;
  /** crc32 of what goes on the wire: the frame, or the raw bytes when not compressed (0 if not asked). */
  crc: number;
  /** The raw bytes (the caller's buffer, or the same bytes returned after a transfer). */
  raw: Buffer;
}

export interface CompressOptions {
  level?: number;
  /** Also compute the crc32 of the wire bytes in the worker. Default true. */
  crc?: boolean;
  /**
   * Move the payload's memory to the worker instead of copying it. Only honoured when the Buffer spans
   * its whole ArrayBuffer (not a pooled slice or a view); the caller's Buffer is then detached and the
   * bytes come back in `raw`. Default false: copy into a reused shared slab when the job starts (about
   * 70 µs per MiB, against about 1 ms to compress), unless `data` is a view of a SharedArrayBuffer,
   * which the worker reads in place. Either way `data` must not change until the promise settles.
   */
  transfer?: boolean;
  /**
   * Write the frame into memory the pool lends (a SharedArrayBuffer from its free list) instead of
   * fresh memory: the worker compresses straight into it, with no copy. Give it back with
   * `releaseFrame(compressed)` once nothing reads it any more (a transport's write callback); a
   * frame never given back is garbage-collected like any other. Default false.
   */
  lendFrame?: boolean;
  /**
   * The share of the input a frame must save to be worth sending, in [0, 1): with less, the result
   * is raw (`compressed: null`). Default DEFAULT_MIN_SAVING; 0 takes any frame smaller by a byte.
   */
  minSaving?: number;
}

/**
 * CompressOptions.minSaving's default: a frame must be at least 1/32 (3.1%) smaller than its
 * input. A frame that barely shrinks still costs the receiver a decompression where a raw record
 * is a view of its input: on incompressible data (SimDevice 'random' pages, whose 1 MiB records
 * shrink by 0-2.3% at level 1, median 0.4%) the decoder took ~10% longer for ~0.6% fewer bytes on
 * the wire (docs/PERFORMANCE.md, zstd-*). Storage systems draw the same line higher (ZFS keeps a
 * block compressed only when it saves 1/8); 1/32 keeps what a bandwidth-capped link gains.
 */
export const DEFAULT_MIN_SAVING = 1 / 32;

/** A minSaving a compression accepts (a number in [0, 1)), or VFIO_MIG_ERR_USAGE. */
export function validateMinSaving(minSaving: number): number {
  if (typeof minSaving !== 'number' || !(minSaving >= 0 && minSaving < 1)) {
    throw migError(ErrorCodes.USAGE, `minSaving must be a number in [0, 1), got ${String(minSaving)}`);
  }
  return minSaving;
}

/** The largest frame worth sending for `len` raw bytes: it saves at least `minSaving` of them, and a byte. */
function maxFrameLength(len: number, minSaving = DEFAULT_MIN_SAVING): number {
  return len - Math.max(1, Math.ceil(len * validateMinSaving(minSaving)));
}

/** Timed compression jobs a CompressionPool keeps one by one (timedJobs()). */
const TIMED_JOBS_KEPT = 64;

/** CompressionPool.compressWork: compression jobs timed, their raw bytes, and their time. */
export interface CompressionWork {
  jobs: number;
  rawBytes: number;
  latencyMs: number;
}

/**
 * The default pool size stops here however many cores the host has. Each worker is a V8 isolate
 * of its own (8.5 MiB of RSS booted, measured here), and one worker compresses 400-1000 MB/s of
 * 'mixed' data at level 1 on this machine: eight already outrun one connection of a 25 GbE link
 * even at ratio 1, while a VMM host's 64-256 cores would mean as many threads and 0.5-2 GiB for
 * nothing (the pool's 64 MiB in-flight cap lets at most 64 1 MiB records be in workers anyway).
 * A larger pool is an explicit `size`.
 */
export const DEFAULT_MAX_POOL_SIZE = 8;

/** A worker count a pool accepts (a positive integer), or VFIO_MIG_ERR_USAGE. */
function validatePoolSize(size: number): number {
  if (!Number.isInteger(size) || size < 1) throw migError(ErrorCodes.USAGE, `pool size must be >= 1, got ${size}`);
  return size;
}

/** The default worker count: the cores this process may run on (its affinity), at most DEFAULT_MAX_POOL_SIZE. */
export function defaultPoolSize(): number {
  return Math.max(1, Math.min(os.availableParallelism(), DEFAULT_MAX_POOL_SIZE));
}

export interface CompressionPoolOptions {
  /**
   * Worker count; default defaultPoolSize(): the process's available parallelism, at most
   * DEFAULT_MAX_POOL_SIZE. Workers start on first use.
   */
  size?: number;
  /** Default level of `compress`. */
  level?: number;
  /** Bytes handed to workers at once; further jobs wait in the pool's queue. Default 64 MiB. */
  maxInFlightBytes?: number;
  /**
   * Idle slabs kept for reuse (SharedArrayBuffers: job inputs and lent frames). Default
   * min(maxInFlightBytes, 48 MiB).
   */
  maxCachedBytes?: number;
}

/** Input slabs come in power-of-two sizes from 64 KiB, so a few classes serve every record size. */
const MIN_SLAB = 64 * 1024;
function slabSize(len: number): number {
  let n = MIN_SLAB;
  while (n < len) n *= 2;
  return n;
}

/**
 * Lent frames hold zstd's bound for the input (a little over its length), rounded up to 64 KiB: a
 * 1 MiB record's frame slab is 1 MiB + 64 KiB, not 2 MiB. Only the pages a frame is written into
 * are ever touched.
 */
function frameSlabSize(len: number): number {
  return Math.ceil(zstd.compressBound(len) / MIN_SLAB) * MIN_SLAB;
}

interface Job {
  id: number;
  op: number;
  /** The caller's bytes. */
  src: Buffer;
  /** Move src's ArrayBuffer to the worker (it owns all of it) instead of copying into a slab. */
  transfer: boolean;
  /** The slab src was copied into while the job runs, returned to the free list when it settles. */
  slab: SharedArrayBuffer | null;
  /** compress() with lendFrame: the frame is written into `frame`, a slab of the free list. */
  lend: boolean;
  frame: SharedArrayBuffer | null;
  len: number;
  level: number;
  /** Compression only: the largest frame kept (maxFrameLength); a larger one means raw. */
  max: number;
  crc: boolean;
  back: boolean;
  rawLength: number;
  /** Decompression only: the output memory, transferred to the worker and back. */
  into: ArrayBuffer | null;
  /** When it was sent to an idle worker (timed), or -1. */
  sentAt: number;
  resolve: (v: JobResult) => void;
  reject: (e: Error) => void;
}

interface JobResult {
  out: ArrayBuffer | null;
  /** The lent slab the frame was written into (its first `n` bytes), or null. */
  frame: SharedArrayBuffer | null;
  n: number;
  crc: number;
  back: ArrayBuffer | null;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, Job>;
  bytes: number;
  /** The worker loaded its binding and takes jobs at once. */
  ready: boolean;
  /** Settles when the worker is ready, or failed or exited before. */
  booted: Promise<void>;
}

/** An order-agnostic zstd worker pool. `compress`/`decompress` resolve per job. */
export class CompressionPool {
  readonly size: number;
  readonly level: number;
  readonly maxInFlightBytes: number;
  readonly maxCachedBytes: number;
  #slots: Slot[];
  /** Free input slabs by size: fresh memory costs page faults (about 4x a copy into warm memory). */
  #freeSlabs: Map<number, SharedArrayBuffer[]>;
  #freeSlabBytes: number;
  /** Slabs lent out as frames (compress with lendFrame) and not given back yet. */
  #lent: WeakSet<SharedArrayBuffer>;
  #waiting: Job[];
  #inFlightBytes: number;
  #nextId: number;
  #closed: boolean;
  /** compressSync()'s context and output scratch, made on first use. */
  #cctx: InstanceType<ZstdBinding['CCtx']> | null = null;
  #scratch: Buffer = Buffer.alloc(0);
  readonly #work: CompressionWork = { jobs: 0, rawBytes: 0, latencyMs: 0 };
  /** The last TIMED_JOBS_KEPT timed jobs (ring, by compressWork.jobs): raw bytes and ms. */
  readonly #timedBytes = new Float64Array(TIMED_JOBS_KEPT);
  readonly #timedMs = new Float64Array(TIMED_JOBS_KEPT);

  constructor(opts: CompressionPoolOptions = {}) {
    this.size = validatePoolSize(opts.size ?? defaultPoolSize());
    this.level = validateZstdLevel(opts.level ?? DEFAULT_ZSTD_LEVEL);
    this.maxInFlightBytes = opts.maxInFlightBytes ?? 64 * 1024 * 1024;
    this.maxCachedBytes = opts.maxCachedBytes ?? Math.min(this.maxInFlightBytes, 48 * 1024 * 1024);
    this.#slots = [];
    this.#freeSlabs = new Map();
    this.#freeSlabBytes = 0;
    this.#lent = new WeakSet();
    this.#waiting = [];
    this.#inFlightBytes = 0;
    this.#nextId = 1;
    this.#closed = false;
  }

  /** Workers started (they start on demand, or all at once with warm()). */
  get workers(): number {
    return this.#slots.length;
  }

  /** Workers that have booted (their zstd binding loaded): a job sent now starts at once. */
  get readyWorkers(): number {
    let n = 0;
    for (const s of this.#slots) if (s.ready) n++;
    return n;
  }

  /** close() was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes currently inside workers. */
  get inFlightBytes(): number {
    return this.#inFlightBytes;
  }

  /**
   * Compression jobs that found a booted worker idle, since the pool was made: how many, their raw
   * bytes, and their time from dispatch to result on this thread (the copy into the worker's memory,
   * the worker's wake-up, compressing and the crc, the way back). rawBytes / latencyMs is what one
   * record goes through, where the pool's throughput is up to `size` times that (1 MiB of zstd
   * level 1 'mixed' data: 2.6-3.4 ms here on an otherwise idle pool, of which the worker's own
   * compression is 1.4-2.5). The counters only grow: sample
   * differences. Jobs queued behind another are not counted (their time is the queue's).
   */
  get compressWork(): CompressionWork {
    return { ...this.#work };
  }

  /**
   * Each timed job (see compressWork) since the `after`-th, oldest first, as [rawBytes, ms] pairs:
   * at most the last TIMED_JOBS_KEPT. Pass compressWork.jobs of an earlier call to get what is new.
   */
  timedJobs(after: number): [number, number][] {
    const out: [number, number][] = [];
    for (let j = Math.max(after, this.#work.jobs - TIMED_JOBS_KEPT); j < this.#work.jobs; j++) {
      const k = j % TIMED_JOBS_KEPT;
      out.push([this.#timedBytes[k]!, this.#timedMs[k]!]);
    }
    return out;
  }

  /** Jobs queued or running. */
  get pending(): number {
    let n = this.#waiting.length;
    for (const s of this.#slots) n += s.jobs.size;
    return n;
  }

  /**
   * Start every worker now rather than on first use; resolves when all have booted (those already
   * booting included), or died trying. A worker takes
   * tens of ms to boot (a thread, an isolate, the zstd binding): a caller that knows compression is
   * coming boots them all at once instead of one per busy moment. migrate() calls it (not awaited)
   * once the fixed costs it predicts from are timed, since booting costs tens of ms of CPU per
   * worker and would slow whatever else runs on the cores meanwhile.
   */
  warm(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    while (this.#slots.length < this.size) this.#spawn();
    return Promise.all(this.#slots.map((s) => s.booted)).then(() => undefined);
  }

  /** Compress `data` as one independent zstd frame. */
  compress(data: Buffer, opts: CompressOptions = {}): Promise<CompressResult> {
    const level = opts.level === undefined ? this.level : validateZstdLevel(opts.level);
    const crc = opts.crc ?? true;
    // Fast path: hand over the caller's memory (it owns the whole ArrayBuffer). Slow path: one copy
    // into a slab, because a pooled slice or a reused buffer must not be detached under its owner.
    const owned =
      opts.transfer === true &&
      data.byteOffset === 0 &&
      data.buffer instanceof ArrayBuffer &&
      data.byteLength === data.buffer.byteLength;
    const len = data.length;
    const max = maxFrameLength(len, opts.minSaving);
    const lend = opts.lendFrame === true;
    return new Promise<JobResult>((resolve, reject) => {
      this.#submit({ id: 0, op: OP_COMPRESS, src: data, transfer: owned, slab: null, frame: null, len, level, max, crc, back: owned, rawLength: len, into: null, lend, sentAt: -1, resolve, reject });
    }).then((r) => ({
      compressed: r.out !== null ? Buffer.from(r.out) : r.frame !== null ? Buffer.from(r.frame, 0, r.n) : null,
      crc: r.crc,
      raw: r.back !== null ? Buffer.from(r.back, 0, len) : data,
    }));
  }

  /**
   * Give back a frame that compress() wrote into lent memory (`lendFrame`), once nothing reads it
   * any more; its memory holds a later frame. Returns false (and does nothing) for any other
   * Buffer, or for a frame already given back.
   */
  releaseFrame(frame: Buffer): boolean {
    const sab = frame.buffer;
    if (!(sab instanceof SharedArrayBuffer) || !this.#lent.has(sab)) return false;
    this.#lent.delete(sab);
    this.#giveSlab(sab);
    return true;
  }

  /**
   * Lend `length` bytes of the pool's shared memory for the caller to fill, e.g. a frame gathered
   * from pieces before decompress(): a worker reads shared memory in place, and a slab is memory
   * already mapped where a fresh buffer costs a page fault per 4 KiB. Give it back with
   * releaseFrame() once no job reads it any more.
   */
  lend(length: number): Buffer {
    const slab = this.#takeSlab(slabSize(length));
    this.#lent.add(slab);
    return Buffer.from(slab, 0, length);
  }

  /**
   * Compress `data` here, on the calling thread (what a worker does, same result), for the moments
   * when no worker can take a job yet: about 3 ms of CPU per MiB at level 1 on the two-core VM
   * (160 at level 19), against tens of ms of a stream stalled behind booting workers. The caller's buffer is not
   * modified and may be reused once this returns.
   */
  compressSync(data: Buffer, opts: Omit<CompressOptions, 'transfer'> = {}): CompressResult {
    const level = opts.level === undefined ? this.level : validateZstdLevel(opts.level);
    const crc = opts.crc ?? true;
    const max = maxFrameLength(data.length, opts.minSaving);
    const bound = zstd.compressBound(data.length);
    if (this.#scratch.length < bound) this.#scratch = Buffer.allocUnsafeSlow(bound);
    this.#cctx ??= new zstd.CCtx();
    let n: number;
    try {
      n = this.#cctx.compress(this.#scratch, data, level);
    } catch (err) {
      throw migError('EIO', `zstd compression failed: ${(err as Error).message}`, { cause: err });
    }
    if (n <= max) {
      const out = Buffer.allocUnsafeSlow(n);
      this.#scratch.copy(out, 0, 0, n);
      return { compressed: out, crc: crc ? crc32(out) : 0, raw: data };
    }
    return { compressed: null, crc: crc ? crc32(data) : 0, raw: data };
  }

  /**
   * Decompress one zstd frame whose content is exactly `rawLength` bytes (else CORRUPT). The frame is
   * copied into a slab when its job starts: it must not change until then (until the promise
   * settles, to be safe). `into`: a Buffer of exactly `rawLength` bytes spanning its whole
   * ArrayBuffer (Buffer.allocUnsafeSlow), moved to the worker to hold the output, so that memory
   * already mapped is reused instead of fresh pages faulted in. The caller must not touch it again:
   * it is detached when the job starts, and the result is a new Buffer over the same memory. Any
   * other `into` is ignored.
   */
  decompress(frame: Buffer, rawLength: number, opts: { into?: Buffer } = {}): Promise<Buffer> {
    const into = opts.into;
    const owned =
      into !== undefined &&
      into.length === rawLength &&
      into.byteOffset === 0 &&
      into.buffer instanceof ArrayBuffer &&
      into.buffer.byteLength === rawLength;
    return new Promise<JobResult>((resolve, reject) => {
      this.#submit({
        id: 0,
        sentAt: -1,
        op: OP_DECOMPRESS,
        src: frame,
        transfer: false,
        slab: null,
        frame: null,
        lend: false,
        len: frame.length,
        level: 0,
        max: 0,
        crc: false,
        back: false,
        rawLength,
        into: owned ? (into.buffer as ArrayBuffer) : null,
        resolve,
        reject,
      });
    }).then((r) => Buffer.from(r.out!));
  }

  /** Stop the workers; queued and running jobs reject with ECANCELED. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const err = migError('ECANCELED', 'compression pool closed');
    for (const j of this.#waiting.splice(0)) j.reject(err);
    const slots = this.#slots.splice(0);
    for (const s of slots) for (const j of s.jobs.values()) j.reject(err);
    this.#freeSlabs.clear();
    this.#freeSlabBytes = 0;
    // Ref'd until each has exited: an unref'd worker's pending terminate() does not keep the event
    // loop alive, and a process whose last work is this await then ended with it unsettled (the
    // CLI exited 0 with its command unfinished). #updateRef keeps them so from here on.
    for (const s of slots) s.worker.ref();
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  #submit(job: Job): void {
    if (this.#closed) {
      job.reject(migError('ECANCELED', 'compression pool closed'));
      return;
    }
    job.id = this.#nextId++;
    this.#waiting.push(job);
    this.#pump();
  }

  #pump(): void {
    while (this.#waiting.length > 0) {
      const job = this.#waiting[0]!;
      // A job larger than the cap still runs alone, or it would wait forever.
      if (this.#inFlightBytes > 0 && this.#inFlightBytes + job.len > this.maxInFlightBytes) return;
      this.#waiting.shift();
      const slot = this.#pickSlot();
      // A compression that finds its worker idle is timed from here (see compressWork).
      job.sentAt = job.op === OP_COMPRESS && slot.ready && slot.jobs.size === 0 ? performance.now() : -1;
      slot.jobs.set(job.id, job);
      slot.bytes += job.len;
      this.#inFlightBytes += job.len;
      if (slot.jobs.size === 1) this.#updateRef(slot);
      let buf: ArrayBuffer | SharedArrayBuffer;
      let off = 0;
      if (job.transfer) {
        buf = job.src.buffer as ArrayBuffer;
      } else if (job.src.buffer instanceof SharedArrayBuffer) {
        // Shared memory already: the worker reads the caller's bytes where they are.
        buf = job.src.buffer;
        off = job.src.byteOffset;
      } else {
        // A shared slab is not transferred: the worker reads it and replies before it is reused.
        job.slab = this.#takeSlab(slabSize(job.len));
        new Uint8Array(job.slab, 0, job.len).set(job.src);
        buf = job.slab;
      }
      const into = job.into;
      job.into = null;
      if (job.lend) job.frame = this.#takeSlab(frameSlabSize(job.len));
      const msg = { id: job.id, op: job.op, buf, off, len: job.len, level: job.level, max: job.max, crc: job.crc, back: job.back, rawLength: job.rawLength, into, frame: job.frame };
      const moved: ArrayBuffer[] = [];
      if (job.transfer) moved.push(buf as ArrayBuffer);
      if (into !== null) moved.push(into);
      slot.worker.postMessage(msg, moved);
    }
  }

  /** The least loaded worker, spawning another while all are busy and the pool is not full. */
  #pickSlot(): Slot {
    let best: Slot | undefined;
    for (const s of this.#slots) if (best === undefined || s.bytes < best.bytes) best = s;
    if (best !== undefined && (best.bytes === 0 || this.#slots.length >= this.size)) return best;
    return this.#spawn();
  }

  #spawn(): Slot {
    const worker = spawnWorker({ bindingPath: BINDING_PATH, crcPath: CRC32_ADDON_PATH });
    let booted = (): void => {};
    const slot: Slot = { worker, jobs: new Map(), bytes: 0, ready: false, booted: new Promise<void>((resolve) => (booted = resolve)) };
    worker.once('error', () => booted());
    worker.once('exit', () => booted());
    worker.on('message', (m: { id: number; ready?: boolean; out?: ArrayBuffer | null; n?: number; crc?: number; back?: ArrayBuffer | null; error?: string }) => {
      if (m.ready === true) {
        slot.ready = true;
        this.#updateRef(slot);
        booted();
        return;
      }
      const job = slot.jobs.get(m.id);
      if (job === undefined) return;
      // A frame written into the lent slab: the slab is the caller's until releaseFrame().
      let frame: SharedArrayBuffer | null = null;
      if (m.n !== undefined && job.frame !== null) {
        frame = job.frame;
        job.frame = null;
        this.#lent.add(frame);
      }
      this.#done(slot, job);
      if (job.sentAt >= 0 && m.error === undefined) {
        const ms = performance.now() - job.sentAt;
        const k = this.#work.jobs % TIMED_JOBS_KEPT;
        this.#timedBytes[k] = job.len;
        this.#timedMs[k] = ms;
        this.#work.jobs++;
        this.#work.rawBytes += job.len;
        this.#work.latencyMs += ms;
      }
      if (m.error !== undefined) {
        const code = job.op === OP_DECOMPRESS ? ErrorCodes.CORRUPT : 'EIO';
        job.reject(migError(code, `zstd ${job.op === OP_DECOMPRESS ? 'decompression' : 'compression'} failed: ${m.error}`));
      } else {
        job.resolve({ out: m.out ?? null, frame, n: m.n ?? 0, crc: m.crc ?? 0, back: m.back ?? null });
      }
      this.#pump();
    });
    const fail = (cause: unknown): void => {
      const i = this.#slots.indexOf(slot);
      if (i >= 0) this.#slots.splice(i, 1);
      const err = migError('EIO', 'compression worker died', { cause });
      for (const j of slot.jobs.values()) {
        this.#inFlightBytes -= j.len;
        // The slabs are not reused: a dying worker may still have been using them.
        j.slab = null;
        j.frame = null;
        j.reject(err);
      }
      slot.jobs.clear();
      slot.bytes = 0;
      if (!this.#closed) this.#pump();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (slot.jobs.size > 0) fail(new Error(`worker exited with code ${code}`));
    });
    // Ref'd while it boots, then only while it has jobs (#updateRef). After the listeners: on
    // Node 20 a 'message' listener added after unref() refs the worker's port again
    // (nodejs/node#53036), and a worker that never got a job (booted, then the migration aborted
    // while records were compressed inline) kept its process alive for good.
    this.#updateRef(slot);
    this.#slots.push(slot);
    return slot;
  }

  /** A slab of exactly `size` bytes from the free list, or a new one. */
  #takeSlab(size: number): SharedArrayBuffer {
    const free = this.#freeSlabs.get(size);
    const slab = free?.pop();
    if (slab !== undefined) {
      this.#freeSlabBytes -= size;
      return slab;
    }
    return new SharedArrayBuffer(size);
  }

  #giveSlab(slab: SharedArrayBuffer | null): void {
    if (slab === null) return;
    if (this.#closed || this.#freeSlabBytes + slab.byteLength > this.maxCachedBytes) return;
    let free = this.#freeSlabs.get(slab.byteLength);
    if (free === undefined) this.#freeSlabs.set(slab.byteLength, (free = []));
    free.push(slab);
    this.#freeSlabBytes += slab.byteLength;
  }

  #done(slot: Slot, job: Job): void {
    this.#giveSlab(job.slab);
    this.#giveSlab(job.frame);
    job.slab = null;
    job.frame = null;
    slot.jobs.delete(job.id);
    slot.bytes -= job.len;
    this.#inFlightBytes -= job.len;
    if (slot.jobs.size === 0) this.#updateRef(slot);
  }

  /**
   * A worker keeps the process alive while it boots (whoever awaits warm() gets an answer) and
   * while it has jobs; an idle booted worker never does.
   */
  #updateRef(slot: Slot): void {
    // A worker that boots after close() (its ready message comes while it is being terminated) stays ref'd.
    if (!slot.ready || slot.jobs.size > 0 || this.#closed) slot.worker.ref();
    else slot.worker.unref();
  }
}

/**
 * The process's node flags for a worker, without --input-type: the worker source is CommonJS, and
 * a host started as `node --input-type=module -e ...` would hand that flag on and every worker
 * would die on its first `require`.
 */
function workerExecArgv(): string[] {
  const out: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--input-type') i++;
    else if (!argv[i]!.startsWith('--input-type=')) out.push(argv[i]!);
  }
  return out;
}

/** The execArgv a worker was last spawned with (null until one was). */
let acceptedExecArgv: string[] | null = null;

/**
 * A worker with the process's node flags, less those Node refuses in a worker's execArgv: V8 and
 * per-process options (--max-old-space-size, --trace-gc, --expose-gc, --title...) throw
 * ERR_WORKER_INVALID_EXEC_ARGV, which names them. Every zstd migration of an agent started with
 * `--max-old-space-size` failed on it. Those flags are dropped (the worker only compresses); if
 * the error cannot be read, the worker gets none of the process's flags.
 */
function spawnWorker(workerData: Record<string, unknown>): Worker {
  const first = acceptedExecArgv ?? workerExecArgv();
  const tried: string[][] = [first];
  for (;;) {
    const execArgv = tried[tried.length - 1]!;
    try {
      const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv, workerData });
      acceptedExecArgv = execArgv;
      return worker;
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV' || execArgv.length === 0) throw err;
      const message = err instanceof Error ? err.message : '';
      const refused = new Set(message.slice(message.indexOf(': ') + 2).split(', '));
      const kept = execArgv.filter((a) => !refused.has(a));
      tried.push(kept.length < execArgv.length && tried.length === 1 ? kept : []);
    }
  }
}

let shared: CompressionPool | null = null;
let sharedOptions: CompressionPoolOptions = {};

/**
 * The process-wide pool used by encoders that are given none, and by migrate() (level 1, size
 * defaultPoolSize() unless configureSharedCompressionPool() said otherwise).
 */
export function sharedCompressionPool(): CompressionPool {
  if (shared === null) shared = new CompressionPool(sharedOptions);
  return shared;
}

/**
 * Set the options of the process-wide pool (its worker count, say) before it is made: call it
 * before the first compressed migration, warmUp() or encoder that uses the shared pool. Once the
 * pool exists its workers may be busy with a migration, so different options then throw
 * VFIO_MIG_ERR_USAGE (the same options are accepted). Validated here with the constructor's checks.
 */
export function configureSharedCompressionPool(opts: CompressionPoolOptions): void {
  if (opts.size !== undefined) validatePoolSize(opts.size);
  if (opts.level !== undefined) validateZstdLevel(opts.level);
  if (shared !== null) {
    const same =
      (opts.size === undefined || opts.size === shared.size) &&
      (opts.level === undefined || opts.level === shared.level) &&
      (opts.maxInFlightBytes === undefined || opts.maxInFlightBytes === shared.maxInFlightBytes) &&
      (opts.maxCachedBytes === undefined || opts.maxCachedBytes === shared.maxCachedBytes);
    if (same) return;
    throw migError(ErrorCodes.USAGE, `the shared compression pool already exists (${shared.size} workers): configure it before its first use`);
  }
  sharedOptions = { ...opts };
}
