/**
 * FdSource: the fastest Readable for a non-seekable fd, by its kind (fd-kind.ts).
 *
 * - pipe, FIFO, socket: epoll (`net.Socket` + reused `onread` buffer). Side effect: libuv sets
 *   O_NONBLOCK on the fd's open file description, which is shared with every process and fd that
 *   inherited it, and it stays set. With `autoClose: false` a pipe/FIFO is reopened through
 *   /proc/self/fd, so the flag lands on a private description and the caller's fd stays untouched;
 *   a socket cannot be reopened and then goes through the fs path instead.
 * - everything else (character devices, anon inodes, FUSE stream files): `fs.read` with
 *   `position: null` (ESPIPE otherwise), one read outstanding on the threadpool. A pending read
 *   cannot be cancelled: destroy() completes at once, and an owned fd is closed only when that read
 *   returns (closing earlier could let the number be reused under the read).
 *
 * Never mix APIs on one fd: once given to an FdSource the fd is read only through it.
 */
import fs from 'node:fs';
import { migError, ErrorCodes } from '../fsm/errors.js';
import { ChunkSource, type ChunkSourceOptions } from './chunk-source.js';
import { fdKind, isEpollKind, reopenFifo, type FdKind } from './fd-kind.js';
import { tunePipe, type PipeCapacityOption } from './fd-tuning.js';

export interface FdSourceOptions extends ChunkSourceOptions, PipeCapacityOption {
  /** Close the fd when the stream closes (default true). Never closes fds 0-2. */
  autoClose?: boolean;
  /** 'auto' (default) picks by fd kind; 'fs' forces the threadpool fs path (e.g. a blocking fd another API must keep using blocking). */
  io?: 'auto' | 'fs';
}

/** `fs.read` at the current file position (`position: null`), as a promise. */
export function fdRead(fd: number, buf: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

export class FdSource extends ChunkSource {
  readonly fd: number;
  readonly kind: FdKind;
  /** 'epoll' or 'fs': which path serves the fd. */
  readonly path: 'epoll' | 'fs';
  readonly #closeFd: boolean;

  constructor(fd: number, opts: FdSourceOptions = {}) {
    if (!Number.isInteger(fd) || fd < 0) throw migError(ErrorCodes.USAGE, `invalid fd ${String(fd)}`);
    const kind = fdKind(fd);
    tunePipe(fd, kind, opts);
    super(opts);
    const autoClose = opts.autoClose ?? true;
    this.fd = fd;
    this.kind = kind;
    let epollFd: number | null = null;
    if (isEpollKind(kind) && opts.io !== 'fs') epollFd = autoClose ? fd : kind === 'fifo' ? reopenFifo(fd, 'r') : null;
    if (epollFd !== null) {
      this.path = 'epoll';
      // libuv owns epollFd now (it closes it unless it is 0-2). With autoClose the caller's fd is
      // epollFd itself; without it, epollFd is our private reopen.
      this.#closeFd = false;
      this.useSocket(epollFd);
    } else {
      this.path = 'fs';
      this.#closeFd = autoClose && fd > 2;
      this.usePull((buf) => fdRead(fd, buf));
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

/** A Readable over a non-seekable fd, on the fastest path for its kind. */
export function createFdSource(fd: number, opts?: FdSourceOptions): FdSource {
  return new FdSource(fd, opts);
}
