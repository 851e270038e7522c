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
import { migError, ErrorCodes } from '../fsm/errors.js';
import { ChunkSink, type ChunkSinkOptions } from './chunk-sink.js';
import { fdKind, isEpollKind, reopenFifo, type FdKind } from './fd-kind.js';
import { tunePipe, type PipeCapacityOption } from './fd-tuning.js';

export interface FdSinkOptions extends ChunkSinkOptions, PipeCapacityOption {
  /** Close the fd when the stream closes (default true). Never closes fds 0-2. */
  autoClose?: boolean;
  /** 'auto' (default) picks by fd kind; 'fs' forces the threadpool fs path (e.g. a blocking fd another API must keep using blocking). */
  io?: 'auto' | 'fs';
}

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
    if (!Number.isInteger(fd) || fd < 0) throw migError(ErrorCodes.USAGE, `invalid fd ${String(fd)}`);
    const kind = fdKind(fd);
    tunePipe(fd, kind, opts);
    super(opts);
    const autoClose = opts.autoClose ?? true;
    this.fd = fd;
    this.kind = kind;
    let epollFd: number | null = null;
    if (isEpollKind(kind) && opts.io !== 'fs') epollFd = autoClose ? fd : kind === 'fifo' ? reopenFifo(fd, 'w') : null;
    if (epollFd !== null) {
      this.path = 'epoll';
      this.#closeFd = false; // libuv closes epollFd (ours or, with autoClose, the caller's)
      this.useSocket(epollFd);
    } else {
      this.path = 'fs';
      this.#closeFd = autoClose && fd > 2;
      this.usePush((buf) => fdWrite(fd, buf));
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#closeFd) {
      const fd = this.fd;
      const pending = this.inflight;
      const close = (): void => fs.close(fd, noop);
      if (pending === null) close();
      else void pending.then(close);
    }
    super._destroy(err, cb);
  }
}

function noop(): void {}

/** A Writable into a non-seekable fd, on the fastest path for its kind. */
export function createFdSink(fd: number, opts?: FdSinkOptions): FdSink {
  return new FdSink(fd, opts);
}
