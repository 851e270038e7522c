/**
 * Classify a non-seekable fd to pick its fastest I/O path (node-streams-performance.md, A3/A3w):
 * pipes, FIFOs and stream sockets go through libuv's epoll stream (`net.Socket`), everything else
 * (character devices, anon inodes, FUSE stream files, which fstat reports as regular files) through
 * `fs.read`/`fs.write` with `position: null` on the threadpool.
 */
import fs from 'node:fs';
import { migError, ErrorCodes } from '../fsm/errors.js';
import { ioError } from './retry.js';
import { tunePipe, type PipeCapacityOption } from './fd-tuning.js';

export type FdKind = 'fifo' | 'socket' | 'char' | 'file' | 'other';

/** fstat the fd. Pipes and FIFOs are both S_IFIFO: the kernel does not tell them apart. */
export function fdKind(fd: number): FdKind {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (err) {
    throw ioError(err, `fstat(${fd})`);
  }
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'char';
  if (st.isFile()) return 'file';
  return 'other';
}

/** True for the kinds served by the epoll (`net.Socket`) path. */
export function isEpollKind(kind: FdKind): boolean {
  return kind === 'fifo' || kind === 'socket';
}

/**
 * Open a second, private open file description of a pipe/FIFO through /proc/self/fd, with
 * O_NONBLOCK set on it only. Used when the caller keeps ownership of `fd` (autoClose false): libuv
 * closes the fd it was given on destroy and sets O_NONBLOCK on its description, so we give it our
 * own. Sockets cannot be reopened this way (ENXIO); returns null then, or on any failure.
 */
export function reopenFifo(fd: number, mode: 'r' | 'w'): number | null {
  const flags = (mode === 'r' ? fs.constants.O_RDONLY : fs.constants.O_WRONLY) | fs.constants.O_NONBLOCK;
  try {
    return fs.openSync(`/proc/self/fd/${fd}`, flags);
  } catch {
    return null;
  }
}

/** Options FdSource and FdSink share: who closes the fd, which path serves it, a pipe's capacity. */
export interface FdStreamOptions extends PipeCapacityOption {
  /** Close the fd when the stream closes (default true). Never closes fds 0-2. */
  autoClose?: boolean;
  /** 'auto' (default) picks by fd kind; 'fs' forces the threadpool fs path (e.g. a blocking fd another API must keep using blocking). */
  io?: 'auto' | 'fs';
}

/** How an fd stream serves `fd`: on libuv's epoll stream (`epollFd`, libuv's to close) or through fs calls. */
export interface FdPlan {
  kind: FdKind;
  path: 'epoll' | 'fs';
  /** The fd handed to the epoll stream: the caller's own (autoClose) or a private reopen; null on the fs path. */
  epollFd: number | null;
  /** The stream closes `fd` itself once its fs call in flight returns (fs path, autoClose, not 0-2). */
  closeFd: boolean;
}

/**
 * Classify `fd`, ask for the pipe capacity, and pick the path for a stream that reads ('r') or
 * writes ('w') it. Without autoClose a pipe/FIFO is reopened so that libuv's O_NONBLOCK and close
 * land on a private description; a socket (which cannot be reopened) goes the fs path then.
 */
export function planFd(fd: number, opts: FdStreamOptions, mode: 'r' | 'w'): FdPlan {
  if (!Number.isInteger(fd) || fd < 0) throw migError(ErrorCodes.USAGE, `invalid fd ${String(fd)}`);
  const kind = fdKind(fd);
  tunePipe(fd, kind, opts);
  const autoClose = opts.autoClose ?? true;
  let epollFd: number | null = null;
  if (isEpollKind(kind) && opts.io !== 'fs') epollFd = autoClose ? fd : kind === 'fifo' ? reopenFifo(fd, mode) : null;
  if (epollFd !== null) return { kind, path: 'epoll', epollFd, closeFd: false };
  return { kind, path: 'fs', epollFd: null, closeFd: autoClose && fd > 2 };
}

/**
 * Close `fd` once `pending` (an fs call in flight on it, or null) has settled: closing earlier could
 * let the number be reused under that call. Errors are ignored (the stream is going away).
 */
export function closeAfter(fd: number, pending: Promise<void> | null): void {
  const close = (): void => fs.close(fd, () => {});
  if (pending === null) close();
  else void pending.then(close);
}
