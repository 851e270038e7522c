/**
 * PairDuplex: one Duplex over a separate Readable and Writable (a pair of pipes passed as fd:R,W,
 * or a checkpoint file read with its return path discarded). Backpressure crosses in both
 * directions: the readable is paused while our buffer is full, and a write's callback waits for
 * the writable's own callback of that chunk. So, as on a socket, a chunk whose write callback ran
 * has been written (a net.Socket handed it to the kernel) and its memory may be reused: migrate()
 * recycles device buffers and compressed frames on that promise. Chunks queued meanwhile go down
 * together (_writev), so waiting costs no batching.
 */
import { Duplex, Writable, type Readable } from 'node:stream';
import { INPUT_RELEASE, READ_TARGET, inputReleaseHook, readTargetHook } from '../streams/read-target.js';

type Callback = (err?: Error | null) => void;

export class PairDuplex extends Duplex {
  readonly #r: Readable;
  readonly #w: Writable;
  /** The callback of the write (or batch) the writable still holds. */
  #pending: Callback | null;

  constructor(readable: Readable, writable: Writable, opts: { highWaterMark?: number } = {}) {
    super({ readableHighWaterMark: opts.highWaterMark, writableHighWaterMark: opts.highWaterMark, allowHalfOpen: true });
    this.#r = readable;
    this.#w = writable;
    this.#pending = null;
    readable.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) readable.pause();
    });
    readable.on('end', () => this.push(null));
    readable.on('error', (err) => this.destroy(err));
    writable.on('error', (err) => this.destroy(err));
    readable.pause();
    // The readable's chunks are pushed on as they are: what it offers a RecordDecoder (read targets,
    // chunks taken back) is offered here. A read target's answer stays correct with bytes waiting in
    // this stream's buffer: the decoder compares what it received with what the readable pushed.
    const targets = readTargetHook(readable);
    if (targets !== null) (this as unknown as Record<symbol, unknown>)[READ_TARGET] = targets;
    const release = inputReleaseHook(readable);
    if (release !== null) (this as unknown as Record<symbol, unknown>)[INPUT_RELEASE] = release;
  }

  override _read(): void {
    this.#r.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: Callback): void {
    this.#w.write(chunk, this.#hold(cb));
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: Callback): void {
    const last = chunks.length - 1;
    for (let i = 0; i < last; i++) this.#w.write(chunks[i]!.chunk);
    this.#w.write(chunks[last]!.chunk, this.#hold(cb));
  }

  override _final(cb: Callback): void {
    this.#w.end((err?: Error | null) => cb(err));
  }

  override _destroy(err: Error | null, cb: Callback): void {
    const pending = this.#pending;
    this.#pending = null;
    if (!this.#r.destroyed) this.#r.destroy();
    if (!this.#w.destroyed) this.#w.destroy();
    pending?.(err ?? new Error('destroyed'));
    cb(err);
  }

  /** `cb`, run once: by the writable's callback, or by destroy if that never comes. */
  #hold(cb: Callback): Callback {
    this.#pending = cb;
    return (err) => {
      if (this.#pending !== cb) return;
      this.#pending = null;
      cb(err);
    };
  }
}

/** A writable side that goes nowhere: a one-way connection's return path (a checkpoint read, a pipe's read end). */
export function discardWrites(): Writable {
  return new Writable({
    write(_chunk, _enc, cb) {
      cb();
    },
  });
}
