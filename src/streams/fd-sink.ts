/**
 * FdSink: the fastest Writable for a non-seekable fd, by its kind (fd-kind.ts).
 *
 * - pipe, FIFO, socket: epoll (`net.Socket`). Side effect: libuv sets O_NONBLOCK on the fd's open
 *   file description (shared with whoever else holds it) and leaves it set. With
 *   `autoClose: false` a pipe/FIFO is reopened through /proc/self/fd so that only a private
 *   description is changed (a FIFO without a reader cannot be reopened: ENXIO, then the fs path);
 *   a socket goes through the fs path then.
 * - everything else: `fs.write` with `position: null`, partial writes looped, EAGAIN retried with
 *   backoff (the description may already be non-blocking). An owned fd is closed only after the
 *   write in flight returns.
 *
 * A reader that goes away gives EPIPE as a typed error (Node ignores SIGPIPE).
 */
import fs from 'node:fs';
import { ChunkSink, type ChunkSinkOptions } from './chunk-sink.js';
import { closeAfter, planFd, type FdKind, type FdStreamOptions } from './fd-kind.js';

export interface FdSinkOptions extends ChunkSinkOptions, FdStreamOptions {}

/** `fs.write` at the current file position (`position: null`), as a promise of bytes accepted. */
export function fdWrite(fd: number, buf: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

export class FdSink extends ChunkSink {
  readonly fd: number;
  readonly kind: FdKind;
  readonly path: 'epoll' | 'fs';
  readonly #closeFd: boolean;

  constructor(fd: number, opts: FdSinkOptions = {}) {
    const plan = planFd(fd, opts, 'w');
    super(opts);
    this.fd = fd;
    this.kind = plan.kind;
    this.path = plan.path;
    this.#closeFd = plan.closeFd;
    if (plan.epollFd !== null) this.useSocket(plan.epollFd);
    else this.usePush((buf) => fdWrite(fd, buf));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#closeFd) closeAfter(this.fd, this.inflight);
    super._destroy(err, cb);
  }
}

/** A Writable into a non-seekable fd, on the fastest path for its kind. */
export function createFdSink(fd: number, opts?: FdSinkOptions): FdSink {
  return new FdSink(fd, opts);
}
