/**
 * The Writable under ResumingStream and FdSink, with one of two backends chosen by the subclass:
 *
 * - push: an async `push(buf)` that accepts some bytes (a method-backed session's `write`, or
 *   `fs.write(fd, ..., position: null)` for character devices and FUSE files). Partial writes loop
 *   on the rest; EAGAIN and 0-byte writes retry with bounded backoff (reset on progress).
 * - epoll: `net.Socket({fd})` for pipes, FIFOs and sockets: non-blocking writev on the loop thread,
 *   the rest queued by libuv until EPOLLOUT (node-streams-performance.md A3w), EPIPE reported as
 *   an error (Node ignores SIGPIPE).
 *
 * Buffer ownership: a chunk given to write() is read until its callback runs, never after; the
 * writer may reuse it then. The write callback runs only once every byte is accepted, so the
 * Writable's highWaterMark is the only queue and it has a byte cap.
 */
import { Writable } from 'node:stream';
import net from 'node:net';
import { isErrno, type MigError } from '../fsm/errors.js';
import { Backoff, RetryTimer, destroyOnAbort, ioError, type BackoffOptions } from './retry.js';

export interface ChunkSinkOptions extends BackoffOptions {
  /** Writable highWaterMark in bytes (default 1 MiB). */
  highWaterMark?: number;
  /** Aborting destroys the stream with VFIO_MIG_ERR_ABORTED. */
  signal?: AbortSignal;
}

export abstract class ChunkSink extends Writable {
  /** Bytes accepted by the fd or session so far. */
  bytesWritten: number;
  protected readonly backoff: Backoff;
  #push: ((buf: Buffer) => Promise<number>) | null;
  #inflight: Promise<number> | null;
  #socket: net.Socket | null;
  readonly #retry = new RetryTimer();
  /** Detaches the AbortSignal's listener. */
  #unlistenAbort: () => void;

  constructor(opts: ChunkSinkOptions = {}) {
    super({ highWaterMark: opts.highWaterMark ?? 1024 * 1024 });
    this.bytesWritten = 0;
    this.backoff = new Backoff(opts);
    this.#push = null;
    this.#inflight = null;
    this.#socket = null;
    this.#unlistenAbort = destroyOnAbort(this, opts.signal);
  }

  /** The push in flight, if any (settles; never rejects). */
  protected get inflight(): Promise<void> | null {
    return this.#inflight === null ? null : this.#inflight.then(noop, noop);
  }

  protected usePush(push: (buf: Buffer) => Promise<number>): void {
    this.#push = push;
  }

  /**
   * Serve this stream with an epoll-capable fd. libuv sets O_NONBLOCK on its open file description
   * and closes the fd (when > 2) on destroy: the fd passes to this stream.
   */
  protected useSocket(fd: number): void {
    const sock = new net.Socket({ fd, readable: false, writable: true });
    this.#socket = sock;
    sock.on('error', (err) => void this.settleWriteError(err).then((e) => this.destroy(e)));
  }

  /** Typed error for a failed write. */
  protected mapWriteError(err: unknown): MigError {
    return ioError(err, 'write');
  }

  /** Typed error for a failed epoll write; a subclass may wait for context before deciding. */
  protected settleWriteError(err: unknown): Promise<MigError> {
    return Promise.resolve(this.mapWriteError(err));
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const sock = this.#socket;
    if (sock !== null) {
      sock.write(chunk, (err) => {
        if (err) return void this.settleWriteError(err).then(cb);
        this.bytesWritten += chunk.length;
        cb();
      });
      return;
    }
    this.#writeAll(chunk).then(
      () => cb(),
      (err: unknown) => void this.settleWriteError(err).then(cb),
    );
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    const sock = this.#socket;
    if (sock === null) {
      void this.#writeList(chunks).then(
        () => cb(),
        (err: unknown) => void this.settleWriteError(err).then(cb),
      );
      return;
    }
    // One writev for the batch (cork/uncork), the callback on the last chunk.
    let total = 0;
    sock.cork();
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!.chunk;
      total += c.length;
      if (i < chunks.length - 1) sock.write(c);
      else {
        sock.write(c, (err) => {
          if (err) return void this.settleWriteError(err).then(cb);
          this.bytesWritten += total;
          cb();
        });
      }
    }
    sock.uncork();
  }

  async #writeList(chunks: Array<{ chunk: Buffer }>): Promise<void> {
    for (const c of chunks) await this.#writeAll(c.chunk);
  }

  /** Loop until the push backend accepted all of `chunk` (partial writes, EAGAIN, 0 accepted). */
  async #writeAll(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      if (this.destroyed) return;
      let n: number;
      try {
        const p = this.#push!(off === 0 ? chunk : chunk.subarray(off));
        this.#inflight = p;
        n = await p;
      } catch (err) {
        if (!isErrno(err, 'EAGAIN')) throw err;
        n = 0;
      } finally {
        this.#inflight = null;
      }
      if (n > 0) {
        off += n;
        this.bytesWritten += n;
        this.backoff.reset();
      } else {
        await this.#retry.sleep(this.backoff.next());
      }
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#retry.wake();
    this.#unlistenAbort();
    // Never wait for a blocked write: libuv drops queued bytes and closes at once.
    if (this.#socket !== null) this.#socket.destroy();
    cb(err);
  }
}

function noop(): void {}
