/**
 * Classify a non-seekable fd to pick its fastest I/O path (node-streams-performance.md, A3/A3w):
 * pipes, FIFOs and stream sockets go through libuv's epoll stream (`net.Socket`), everything else
 * (character devices, anon inodes, FUSE stream files, which fstat reports as regular files) through
 * `fs.read`/`fs.write` with `position: null` on the threadpool.
 */
import fs from 'node:fs';
import { ioError } from './retry.js';

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
