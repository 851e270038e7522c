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
import { ChunkSource, type ChunkSourceOptions } from './chunk-source.js';
import { closeAfter, planFd, type FdKind, type FdStreamOptions } from './fd-kind.js';

export interface FdSourceOptions extends ChunkSourceOptions, FdStreamOptions {}

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
    const plan = planFd(fd, opts, 'r');
    super(opts);
    this.fd = fd;
    this.kind = plan.kind;
    this.path = plan.path;
    this.#closeFd = plan.closeFd;
    if (plan.epollFd !== null) this.useSocket(plan.epollFd);
    else this.usePull((buf) => fdRead(fd, buf));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#closeFd) closeAfter(this.fd, this.inflight);
    super._destroy(err, cb);
  }
}

/** A Readable over a non-seekable fd, on the fastest path for its kind. */
export function createFdSource(fd: number, opts?: FdSourceOptions): FdSource {
  return new FdSource(fd, opts);
}
