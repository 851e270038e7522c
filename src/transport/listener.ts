/**
 * QueueListener: the TransportListener built-ins share. The server side pushes connections as they
 * arrive; accept() takes them in order. The queue is bounded (maxPending): a connection arriving
 * while it is full is destroyed at once, so a flood cannot grow memory.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { MigError } from '../fsm/errors.js';
import type { TransportListener } from './types.js';
import { abortError, streamError } from './errors.js';
import { migError, ErrorCodes } from '../fsm/errors.js';

interface Waiter {
  resolve(conn: Duplex): void;
  reject(err: MigError): void;
}

const noop = (): void => {};

export interface QueueListenerEvents {
  /** A connection was refused before it reached accept(): TLS authentication failed, or the queue was full. */
  rejected: [MigError];
}

export class QueueListener extends EventEmitter<QueueListenerEvents> implements TransportListener {
  readonly url: string;
  readonly address: string;
  readonly #maxPending: number;
  /** Accept at most this many connections in total (1 for fd: and file:), else Infinity. */
  readonly #limit: number;
  readonly #closeImpl: () => Promise<void>;
  #queue: Duplex[];
  #waiters: Waiter[];
  #accepted: number;
  #closed: boolean;
  #closing: Promise<void> | null;
  #failure: MigError | null;

  constructor(url: string, address: string, closeImpl: () => Promise<void>, opts: { maxPending?: number; limit?: number } = {}) {
    super();
    this.url = url;
    this.address = address;
    this.#maxPending = opts.maxPending ?? 16;
    this.#limit = opts.limit ?? Infinity;
    this.#closeImpl = closeImpl;
    this.#queue = [];
    this.#waiters = [];
    this.#accepted = 0;
    this.#closed = false;
    this.#closing = null;
    this.#failure = null;
  }

  /** Server side: a new connection arrived. */
  push(conn: Duplex): void {
    if (this.#closed) {
      conn.destroy();
      return;
    }
    const w = this.#waiters.shift();
    if (w) {
      this.#accepted++;
      w.resolve(conn);
      return;
    }
    if (this.#queue.length >= this.#maxPending) {
      conn.destroy();
      this.emit('rejected', migError(ErrorCodes.LIMIT, `listener ${this.url}: ${this.#maxPending} connections already wait for accept(); one dropped`));
      return;
    }
    // An error while queued must not crash the process; accept() skips destroyed connections.
    conn.on('error', noop);
    this.#queue.push(conn);
  }

  /** Server side: a connection was refused (e.g. TLS authentication). */
  reject(err: unknown): void {
    this.emit('rejected', streamError(err, this.url));
  }

  /** Server side: the listener failed; pending and later accept() calls reject with `err`. */
  fail(err: MigError): void {
    if (this.#failure === null) this.#failure = err;
    void this.close();
  }

  #endedError(): MigError {
    if (this.#failure) return this.#failure;
    if (this.#accepted >= this.#limit) {
      return migError(ErrorCodes.TRANSPORT, `listener ${this.url} has a single connection and it was already accepted`, { detail: { url: this.url } });
    }
    return migError(ErrorCodes.TRANSPORT, `listener ${this.url} is closed`, { detail: { url: this.url } });
  }

  accept(opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Duplex> {
    while (this.#queue.length > 0) {
      const conn = this.#queue.shift() as Duplex;
      conn.off('error', noop);
      if (conn.destroyed) continue;
      this.#accepted++;
      if (this.#accepted >= this.#limit) void this.close();
      return Promise.resolve(conn);
    }
    if (this.#closed || this.#accepted >= this.#limit) return Promise.reject(this.#endedError());
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(abortError(this.url, 'accept', signal));
    return new Promise<Duplex>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
      };
      const waiter: Waiter = {
        resolve: (conn) => {
          cleanup();
          if (this.#accepted >= this.#limit) void this.close();
          resolve(conn);
        },
        reject: (err) => {
          cleanup();
          reject(err);
        },
      };
      const onAbort = (): void => waiter.reject(abortError(this.url, 'accept', signal as AbortSignal));
      signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.timeoutMs !== undefined && opts.timeoutMs > 0) {
        timer = setTimeout(() => waiter.reject(migError('ETIMEDOUT', `accept ${this.url}: no connection within ${opts.timeoutMs} ms`, { detail: { url: this.url } })), opts.timeoutMs);
      }
      this.#waiters.push(waiter);
    });
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    for (const conn of this.#queue.splice(0)) conn.destroy();
    const err = this.#endedError();
    for (const w of this.#waiters.splice(0)) w.reject(err);
    this.#closing = this.#closeImpl().catch(noop);
    return this.#closing;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Duplex> {
    for (;;) {
      if ((this.#closed || this.#accepted >= this.#limit) && this.#queue.length === 0) return;
      try {
        yield await this.accept();
      } catch (err) {
        if (this.#closed && this.#failure === null) return;
        throw err;
      }
    }
  }
}
