/**
 * PairDuplex: one Duplex over a separate Readable and Writable (a pair of pipes passed as fd:R,W,
 * or a checkpoint file read with its return path discarded). Backpressure crosses in both
 * directions: the readable is paused while our buffer is full, and a write's callback waits for
 * the writable's 'drain'.
 */
import { Duplex, type Readable, type Writable } from 'node:stream';

export class PairDuplex extends Duplex {
  readonly #r: Readable;
  readonly #w: Writable;
  #pending: ((err?: Error | null) => void) | null;

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
    writable.on('drain', () => {
      const cb = this.#pending;
      this.#pending = null;
      cb?.();
    });
    readable.pause();
  }

  override _read(): void {
    this.#r.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    // Fast path: the writable took it under its high-water mark; acknowledge at once.
    if (this.#w.write(chunk)) cb();
    else this.#pending = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#w.end((err?: Error | null) => cb(err));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const pending = this.#pending;
    this.#pending = null;
    if (!this.#r.destroyed) this.#r.destroy();
    if (!this.#w.destroyed) this.#w.destroy();
    pending?.(err ?? new Error('destroyed'));
    cb(err);
  }
}
