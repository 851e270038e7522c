/**
 * The Readable under SavingStream and FdSource: bytes in chunks of `chunkSize`, from one of two
 * backends chosen by the subclass:
 *
 * - pull: one outstanding async `pull(buf)` at a time (a method-backed session's `read`, or
 *   `fs.read(fd, ..., position: null)` on the threadpool for character devices and FUSE files).
 *   Zero reads and failures go to overridable verdict hooks (end, retry with backoff, or an error).
 * - epoll: `net.Socket({fd})` with an `onread` user buffer for pipes, FIFOs and sockets
 *   (node-streams-performance.md A3: about 1.7x `fs.read` on a pipe, no threadpool, destroy never
 *   waits on a blocked read). Returning false from `onread` stops reading (backpressure).
 *
 * Buffer ownership: every chunk pushed downstream belongs to the consumer from then on; this class
 * never writes into bytes it has pushed. On the epoll path libuv reads straight into the free tail
 * of the current chunk (no copy) and a partial chunk is pushed as a view of its filled part while
 * later reads fill the part behind it. On the pull path a buffer is reused only when its bytes
 * were copied out (a short read).
 *
 * Read targets (read-target.ts): on the epoll path the stream offers them to a consumer piped from
 * it (a RecordDecoder): while nothing read is waiting to be pushed, each read asks the consumer
 * where its bytes belong, and a read into the consumer's buffer is pushed at once as a view of it.
 */
import { Readable } from 'node:stream';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { migError, ErrorCodes, isErrno, MigError } from '../fsm/errors.js';
import { Backoff, RetryTimer, destroyOnAbort, ioError, type BackoffOptions } from './retry.js';
import { INPUT_RELEASE, READ_TARGET, ReadTargets, type InputReleaseHook, type ReadTargetHook } from './read-target.js';
import { ChunkLoans } from './chunk-loans.js';

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/**
 * Free space below which a chunk is retired on the epoll path: one read of a default 64 KiB pipe
 * (and of Node's own socket reads; the accepted sockets' withChunkReads uses it too).
 */
export const MIN_READ_SPACE = 64 * 1024;

export interface ChunkSourceOptions extends BackoffOptions {
  /** Bytes per chunk pushed downstream (default 1 MiB). */
  chunkSize?: number;
  /** Readable highWaterMark in bytes (default 2 chunks): the cap on bytes queued inside this stream. */
  highWaterMark?: number;
  /** Aborting destroys the stream with VFIO_MIG_ERR_ABORTED. */
  signal?: AbortSignal;
  /**
   * Called for every read that returned data: `bytes`, and `ms` the read took (pull path) or the time
   * since the previous delivery or resume (epoll path). The PRE_COPY estimator measures the device's
   * generation rate with it. Must not throw.
   */
  onRead?: (bytes: number, ms: number) => void;
  /**
   * The consumer gives chunks back with release() once done with them, and their memory is reused
   * for later reads; a RecordDecoder piped from this stream does so by itself (INPUT_RELEASE,
   * read-target.ts). Default false: nothing is tracked and release() refuses everything.
   */
  recycle?: boolean;
  /**
   * Allocate chunk buffers in SharedArrayBuffer memory: a compression worker then reads a chunk where
   * it is instead of copying it into memory of its own (CompressionPool.compress). For a consumer that
   * compresses; with `recycle`, the buffers are reused as usual. Default false.
   */
  sharedMemory?: boolean;
}

/** What the pull loop does after a 0-byte read or a failed pull. */
export type PullVerdict = 'end' | 'retry' | MigError;


/**
 * The pull loop gives the event loop a turn once it has run this long without one. A method-backed
 * session's read resolves at once, so without a turn the loop, the consumer and the encoder behind
 * it run on microtasks alone until some queue is full: a switchover read 4 MiB in one 12 ms stretch,
 * during which no socket write was flushed and no bandwidth-cap timer fired.
 */
const PULL_SLICE_MS = 1;


/** Backend states. */
const IDLE = 0;
const PULLING = 1;
const SOCKET_READING = 2;
const SOCKET_PAUSED = 3;
const DONE = 4;

export abstract class ChunkSource extends Readable {
  /** Bytes delivered downstream so far. */
  bytesRead: number;
  readonly chunkSize: number;
  protected readonly backoff: Backoff;
  #onRead: ((bytes: number, ms: number) => void) | null;
  #state: number;
  #pull: ((buf: Buffer) => Promise<number>) | null;
  /** The pending pull, so a subclass can release its fd only after it settles. */
  #inflight: Promise<number> | null;
  /** A chunk buffer that did not leave (short read, or a zero/failed read): reused by the next pull. */
  #spare: Buffer | null;
  readonly #retry = new RetryTimer();
  #socket: net.Socket | null;
  /** Chunk being filled on the epoll path: bytes [0, start) were pushed, [start, fill) are pending. */
  #chunk: Buffer | null;
  #start: number;
  #fill: number;
  /** A chunk with less free space than this is retired (a default pipe read is 64 KiB). */
  readonly #minReadSpace: number;
  #flushScheduled: boolean;
  #lastDelivery: number;
  /** Detaches the AbortSignal's listener. */
  #unlistenAbort: () => void;
  /** Chunk buffers, lent downstream in views and, with `recycle`, taken back (release()). */
  readonly #loans: ChunkLoans;
  /** holdReads(): no new read starts until releaseReads(). */
  #held: boolean;
  /** The consumer wanted data while reads were held: releaseReads() starts reading again. */
  #wanted: boolean;
  /** holdReads() waiting for the pull loop to stop, and its resolver. */
  #holding: Promise<void> | null;
  #onHeld: (() => void) | null;
  /** Epoll path: read targets offered to a consumer (READ_TARGET). */
  readonly #targets = new ReadTargets();
  /** Pull path: bytes per read while below chunkSize (0: whole chunks). See `readLimit`. */
  #readLimit = 0;
  /** Pull path under a read limit: the chunk being filled piece by piece, and its fill. */
  #pieceChunk: Buffer | null = null;
  #pieceFill = 0;

  constructor(opts: ChunkSourceOptions = {}) {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(chunkSize) || chunkSize < 1) {
      throw migError(ErrorCodes.USAGE, `chunkSize must be a positive integer, got ${String(chunkSize)}`);
    }
    super({ highWaterMark: opts.highWaterMark ?? 2 * chunkSize });
    this.bytesRead = 0;
    this.chunkSize = chunkSize;
    this.backoff = new Backoff(opts);
    this.#onRead = opts.onRead ?? null;
    this.#state = IDLE;
    this.#pull = null;
    this.#inflight = null;
    this.#spare = null;
    this.#socket = null;
    this.#chunk = null;
    this.#start = 0;
    this.#fill = 0;
    // Only when asked: weak tables keyed by every chunk's memory delay its reclaim to a full GC.
    this.#loans = new ChunkLoans(chunkSize, { shared: opts.sharedMemory === true, track: opts.recycle === true });
    // A RecordDecoder piped from a recycling source gives chunks back itself (read-target.ts).
    if (opts.recycle === true) (this as unknown as { [INPUT_RELEASE]: InputReleaseHook })[INPUT_RELEASE] = (chunk) => this.release(chunk);
    this.#minReadSpace = Math.min(chunkSize, MIN_READ_SPACE);
    this.#flushScheduled = false;
    this.#lastDelivery = 0;
    this.#held = false;
    this.#wanted = false;
    this.#holding = null;
    this.#onHeld = null;
    this.#unlistenAbort = destroyOnAbort(this, opts.signal);
  }

  /**
   * Bytes a read asks for, when fewer than `chunkSize` (0, the default: whole chunks). Consecutive
   * limited reads fill one chunk buffer piece by piece, each piece its own chunk downstream. A
   * switchover sets it so that a small STOP_COPY state leaves in as many records as there are
   * compression workers, compressed side by side, rather than in one record on one worker. Only
   * the pull path (method sessions, character devices, files) honours it: pipe and socket reads
   * are pipe-sized already. Takes effect at the next read.
   */
  get readLimit(): number {
    return this.#readLimit;
  }

  set readLimit(bytes: number) {
    if (!Number.isInteger(bytes) || bytes < 0) throw migError(ErrorCodes.USAGE, `readLimit must be a non-negative integer, got ${String(bytes)}`);
    this.#readLimit = bytes >= this.chunkSize ? 0 : bytes;
  }

  /** The pull in flight, if any (settles; never rejects). */
  protected get inflight(): Promise<void> | null {
    return this.#inflight === null ? null : this.#inflight.then(noop, noop);
  }

  /** True while the epoll path is reading (data wanted, not paused by backpressure). */
  protected get awaitingData(): boolean {
    return this.#state === SOCKET_READING;
  }

  /** Serve this stream from an async pull function (one call outstanding at a time). */
  protected usePull(pull: (buf: Buffer) => Promise<number>): void {
    this.#pull = pull;
  }

  /**
   * Serve this stream from an epoll-capable fd (pipe, FIFO, socket). libuv sets O_NONBLOCK on the
   * fd's open file description and closes the fd (when > 2) when the stream is destroyed: the fd
   * passes to this stream.
   */
  protected useSocket(fd: number): void {
    const sock = new net.Socket({
      fd,
      readable: true,
      writable: false,
      manualStart: true,
      // A buffer function: Node calls it for the first read and after every callback.
      onread: { buffer: () => this.#nextReadBuffer(), callback: (n: number, buf: Buffer) => this.#onSocketRead(n, buf) },
    } as net.SocketConstructorOpts);
    this.#socket = sock;
    this.#state = SOCKET_PAUSED;
    (this as unknown as { [READ_TARGET]: ReadTargetHook })[READ_TARGET] = this.#targets.hook;
    sock.on('end', () => this.#onSocketEof());
    sock.on('error', (err) => this.destroy(this.mapSocketError(err)));
  }

  /** Verdict for a 0-byte pull (default: end of stream). */
  protected onZeroRead(): Promise<PullVerdict> {
    return Promise.resolve('end');
  }

  /** Verdict for a failed pull (default: EAGAIN retries, anything else is a typed error). */
  protected onPullError(err: unknown): Promise<PullVerdict> {
    if (isErrno(err, 'EAGAIN')) return Promise.resolve('retry');
    return Promise.resolve(ioError(err, 'read'));
  }

  /** On the epoll path's EOF: an error to fail with instead of ending, or null to end. */
  protected onSocketEnd(): Promise<MigError | null> {
    return Promise.resolve(null);
  }

  /** Typed error for an epoll read failure. */
  protected mapSocketError(err: unknown): MigError {
    return ioError(err, 'read');
  }

  /** Called before each delivery with the bytes just read (SavingStream's 'precopy-data'). */
  protected beforeDeliver(_bytes: number): void {}

  override _read(): void {
    switch (this.#state) {
      case IDLE:
        if (this.#pull === null) return;
        if (this.#held) this.#wanted = true;
        else void this.#pullLoop();
        return;
      case SOCKET_PAUSED:
        if (this.#held) {
          this.#wanted = true;
          return;
        }
        this.#state = SOCKET_READING;
        this.#lastDelivery = performance.now();
        // Socket.read(0) restarts libuv reading (readStart) when a user onread buffer is set.
        this.#socket!.read(0);
        return;
      default:
        return;
    }
  }

  async #pullLoop(): Promise<void> {
    this.#state = PULLING;
    let sliceAt = performance.now();
    try {
      for (;;) {
        if (this.destroyed) return;
        if (this.#held) {
          this.#wanted = true;
          return;
        }
        const limit = this.#readLimit;
        if (limit === 0 && this.#pieceChunk !== null) this.#retirePieces();
        const buf = limit > 0 ? this.#pieceTarget(limit) : (this.#spare ?? this.#loans.newChunk());
        if (limit === 0) this.#spare = null;
        const t0 = performance.now();
        let n = 0;
        let failed = false;
        let failure: unknown;
        try {
          const p = this.#pull!(buf);
          this.#inflight = p;
          n = await p;
        } catch (err) {
          failed = true;
          failure = err;
        } finally {
          this.#inflight = null;
        }
        if (this.destroyed) return;
        if (!failed && n > 0) {
          const ms = performance.now() - t0;
          this.backoff.reset();
          let out: Buffer;
          if (limit > 0) {
            // A piece of the chunk being filled: later pieces only ever land behind it.
            const chunk = this.#pieceChunk!;
            out = chunk.subarray(this.#pieceFill, this.#pieceFill + n);
            this.#pieceFill += n;
            this.#loans.lend(chunk, out, true);
          } else if (n >= buf.length >>> 1) {
            // Fast path: the chunk buffer itself leaves; the next pull allocates a new one.
            out = n === buf.length ? buf : buf.subarray(0, n);
            this.#loans.lend(buf, out, false);
          } else {
            // Slow path: short read. Copy out so a small chunk does not pin a whole chunk buffer.
            out = Buffer.allocUnsafe(n);
            buf.copy(out, 0, 0, n);
            this.#spare = buf;
          }
          this.#deliver(out, ms);
          if (!this.push(out)) {
            this.#state = IDLE;
            return;
          }
          if (performance.now() - sliceAt >= PULL_SLICE_MS) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            sliceAt = performance.now();
          }
          continue;
        }
        if (limit === 0) this.#spare = buf;
        const verdict = failed ? await this.onPullError(failure) : await this.onZeroRead();
        if (this.destroyed) return;
        if (verdict === 'end') {
          this.#state = DONE;
          this.push(null);
          return;
        }
        if (verdict !== 'retry') {
          this.#state = DONE;
          this.destroy(verdict);
          return;
        }
        await this.#retry.sleep(this.backoff.next());
      }
    } catch (err) {
      // A hook threw: fail the stream rather than leave it hanging.
      this.destroy(ioError(err, 'read'));
    } finally {
      if (this.#state === PULLING) this.#state = IDLE;
      this.#settleHold();
    }
  }

  /** Where a limited read lands: the free part of the chunk being filled, or a new chunk's start. */
  #pieceTarget(limit: number): Buffer {
    let chunk = this.#pieceChunk;
    if (chunk === null || chunk.length - this.#pieceFill < limit) {
      if (chunk !== null) this.#loans.retire(chunk);
      chunk = this.#spare ?? this.#loans.newChunk();
      this.#spare = null;
      this.#pieceChunk = chunk;
      this.#pieceFill = 0;
    }
    return chunk.subarray(this.#pieceFill, this.#pieceFill + limit);
  }

  /** Reads are whole chunks again: the chunk filled piece by piece goes back once its pieces do. */
  #retirePieces(): void {
    const chunk = this.#pieceChunk!;
    this.#pieceChunk = null;
    if (this.#pieceFill === 0) this.#spare ??= chunk;
    else this.#loans.retire(chunk);
    this.#pieceFill = 0;
  }

  #settleHold(): void {
    const done = this.#onHeld;
    this.#holding = null;
    this.#onHeld = null;
    done?.();
  }

  /**
   * Hold the reads: no read of the source starts until releaseReads(); chunks already read are
   * still delivered. The promise settles once no read is in flight (at once when none is, or when
   * the stream ends or is destroyed); a retry wait (PRE_COPY temporary end, EAGAIN) is cut short. A
   * switchover uses it to empty its queues onto the link while the devices still run, so that the
   * bytes already read leave before the downtime starts instead of inside it.
   */
  holdReads(): Promise<void> {
    this.#held = true;
    if (this.#state === SOCKET_READING) {
      this.#wanted = true;
      this.#pauseSocket();
    }
    if (this.#state !== PULLING) return Promise.resolve();
    this.#holding ??= new Promise<void>((resolve) => (this.#onHeld = resolve));
    // A retry wait would only delay the hold: wake the loop, which stops at its top.
    this.#retry.wake();
    return this.#holding;
  }

  /** Reads are held (holdReads() without releaseReads() since). */
  get readsHeld(): boolean {
    return this.#held;
  }

  /** End a holdReads(): reading resumes if the consumer wants data. */
  releaseReads(): void {
    if (!this.#held) return;
    this.#held = false;
    if (!this.#wanted || this.destroyed) return;
    this.#wanted = false;
    this._read();
  }

  #deliver(out: Buffer, ms: number): void {
    this.bytesRead += out.length;
    this.beforeDeliver(out.length);
    if (this.#onRead !== null) this.#onRead(out.length, ms);
  }

  /**
   * libuv asks for the buffer of its next read: the free tail of the current chunk, so reads land
   * where the consumer will get them (no copy). A chunk whose free tail is smaller than a pipe read
   * is retired (its bytes were pushed) and a new one started.
   */
  #nextReadBuffer(): Buffer {
    // A consumer's answer is only good when everything read has been pushed (bytesRead counts it).
    const limit = this.#targets.ask(this.bytesRead, this.#fill === this.#start && !this.destroyed);
    if (typeof limit !== 'number') return limit;
    let chunk = this.#chunk;
    if (chunk === null || chunk.length - this.#fill < this.#minReadSpace) {
      if (chunk !== null) this.#loans.retire(chunk);
      chunk = this.#loans.newChunk();
      this.#chunk = chunk;
      this.#start = 0;
      this.#fill = 0;
    }
    return limit > 0 ? chunk.subarray(this.#fill, this.#fill + limit) : chunk.subarray(this.#fill);
  }

  #onSocketRead(n: number, _buf: Buffer): boolean {
    if (this.destroyed) return false;
    let more = true;
    const view = this.#targets.took(n);
    if (view !== null) {
      // Read into the consumer's own buffer: pushed at once, never lent or recycled here.
      more = this.#pushRead(view);
    } else {
      // The bytes are chunk[fill, fill + n): libuv read into the view #nextReadBuffer returned.
      this.#fill += n;
      if (this.#chunk!.length - this.#fill < this.#minReadSpace || this.#targets.active) {
        // Fast path: a full chunk goes downstream whole; the next read starts a new chunk. With a
        // consumer taking read targets every read goes at once, so that the next read can ask it.
        more = this.#flushChunk();
      } else if (!this.#flushScheduled) {
        // Push the partial chunk once libuv has drained what is readable now (the check phase runs
        // after poll); the rest of the chunk keeps filling behind the part handed out.
        this.#flushScheduled = true;
        setImmediate(this.#flushLater);
      }
    }
    if (this.#held) {
      this.#wanted = true;
      more = false;
    }
    if (!more) this.#state = SOCKET_PAUSED;
    return more;
  }

  readonly #flushLater = (): void => {
    this.#flushScheduled = false;
    if (this.destroyed || this.#fill === this.#start) return;
    if (!this.#flushChunk() && this.#state === SOCKET_READING) this.#pauseSocket();
    else if (this.#held && this.#state === SOCKET_READING) {
      this.#wanted = true;
      this.#pauseSocket();
    }
  };

  #pauseSocket(): void {
    this.#state = SOCKET_PAUSED;
    this.#socket!.pause();
  }

  /**
   * Push chunk[start, fill): the consumer owns those bytes from now on. Later reads only ever
   * write behind `fill`, never into a view already pushed. Returns push()'s verdict.
   */
  #flushChunk(): boolean {
    const chunk = this.#chunk!;
    const out = this.#start === 0 && this.#fill === chunk.length ? chunk : chunk.subarray(this.#start, this.#fill);
    this.#start = this.#fill;
    this.#loans.lend(chunk, out, true);
    return this.#pushRead(out);
  }

  /** Hand bytes read on the epoll path downstream (accounting first); false: stop reading. */
  #pushRead(out: Buffer): boolean {
    const now = performance.now();
    this.#deliver(out, now - this.#lastDelivery);
    this.#lastDelivery = now;
    return this.push(out);
  }

  #onSocketEof(): void {
    if (this.destroyed) return;
    if (this.#chunk !== null && this.#fill > this.#start) this.#flushChunk();
    this.#state = DONE;
    this.onSocketEnd().then(
      (err) => {
        if (this.destroyed) return;
        if (err) this.destroy(err);
        else this.push(null);
      },
      (err: unknown) => this.destroy(ioError(err, 'read')),
    );
  }

  /**
   * With the `recycle` option: give back a chunk this stream pushed, once the consumer is done with its bytes: its memory is
   * reused for a later chunk instead of fresh memory (which costs a page fault per 4 KiB on first
   * touch: on some VMs reading into fresh chunks runs at half the speed of reading into reused ones;
   * docs/PERFORMANCE.md). Optional: a chunk never released is left to the garbage collector as
   * usual. After release() the caller must not touch the chunk or any view of it, since its bytes will
   * be overwritten. Returns false (and does nothing) for a buffer this stream did not push or
   * already took back. A chunk buffer pushed in several views is reused once all of them are released.
   */
  release(chunk: Buffer): boolean {
    return this.#loans.release(chunk);
  }

  /**
   * Cut a retry wait short and restart the backoff: the caller knows data is coming (a PRE_COPY
   * session just entered STOP_COPY, where every ms of backoff is downtime). No effect otherwise.
   */
  retryNow(): void {
    this.backoff.reset();
    this.#retry.wake();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#state = DONE;
    this.#retry.wake();
    this.#unlistenAbort();
    this.#settleHold();
    // Never wait for a pending read: an idle pipe or a device may never answer. The epoll socket
    // closes at once; a pending pull is left to settle and its result dropped.
    if (this.#socket !== null) this.#socket.destroy();
    this.#chunk = null;
    this.#spare = null;
    this.#pieceChunk = null;
    this.#loans.close();
    cb(err);
  }
}

function noop(): void {}

