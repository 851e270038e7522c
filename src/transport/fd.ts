/**
 * fd:N and fd:R,W: a connection inherited from the process that started us, as a VMM's management
 * process passes one (a socket, or a pair of pipes: R read, W written), or one end of a pipe for a
 * stream that goes one way (fd:N opened for reading or for writing only: a checkpoint piped).
 *
 * Both connect() and listen() wrap the inherited fd(s); listen() yields that one connection once.
 * The transport takes ownership: the fds are closed when the stream is destroyed. Sockets, pipes and
 * FIFOs go through net.Socket({ fd }), libuv's epoll path (the fastest here, see
 * node-streams-performance.md), reading into 1 MiB chunks with read targets as the unix and tcp
 * transports' accepted connections do (net.ts withChunkReads). stdio (0-2) is refused: closing it
 * would break the process.
 */
import net from 'node:net';
import { fstatSync, readFileSync } from 'node:fs';
import { PassThrough, type Duplex } from 'node:stream';
import type { TransportListener, TransportOptions, TransportPlugin } from './types.js';
import { connectError, usageError, withTypedErrors } from './errors.js';
import { QueueListener } from './listener.js';
import { PairDuplex, discardWrites } from './pair.js';
import { parseTransportUrl } from './url.js';
import { withChunkReads } from './net.js';

function parseFds(url: string): number[] {
  const { address } = parseTransportUrl(url);
  const parts = address.split(',');
  if (parts.length > 2 || !parts.every((p) => /^\d+$/.test(p))) throw usageError(`bad fd URL '${url}': expected fd:N or fd:R,W`, { url });
  const fds = parts.map(Number);
  for (const fd of fds) {
    if (fd <= 2) throw usageError(`fd ${fd} in '${url}' is stdio; pass the connection on fd 3 or above`, { url });
  }
  if (fds.length === 2 && fds[0] === fds[1]) throw usageError(`fd:R,W in '${url}' needs two different fds; use fd:${fds[0]} for a socket`, { url });
  return fds;
}

/** Check the fd exists and is a socket, pipe or FIFO (a regular file belongs to file:); true for a pipe or FIFO. */
function checkStreamFd(fd: number, url: string): boolean {
  let st;
  try {
    st = fstatSync(fd);
  } catch (err) {
    throw connectError(err, url, 'connect');
  }
  if (!st.isSocket() && !st.isFIFO()) {
    throw usageError(`fd ${fd} in '${url}' is not a socket, pipe or FIFO${st.isFile() ? ' (use file: for a checkpoint file)' : ''}`, { url, fd });
  }
  return st.isFIFO();
}

/**
 * How the fd was opened: 'r', 'w' or 'rw' (O_ACCMODE of its flags, from /proc/self/fdinfo; Node
 * has no fcntl). 'rw' when that cannot be read.
 */
function accessMode(fd: number): 'r' | 'w' | 'rw' {
  try {
    const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    if (m === null) return 'rw';
    const acc = parseInt(m[1]!, 8) & 3;
    return acc === 0 ? 'r' : acc === 1 ? 'w' : 'rw';
  } catch {
    return 'rw';
  }
}

/**
 * One end of a pipe as a connection that goes one way: a checkpoint streamed out (`vfio-mig save
 * fd:3 3>&1 | ...`) or in (`... | vfio-mig restore fd:3 3<&0`). Written to: its readable side
 * carries nothing and ends once everything written was handed to the pipe, as a checkpoint file's
 * ends once committed (a writer waiting for its peer to close learns its stream is out). Read
 * from: what is written to it (a destination's return path) is discarded.
 */
function oneWay(fd: number, mode: 'r' | 'w', opts: net.SocketConstructorOpts): Duplex {
  if (mode === 'w') {
    const w = new net.Socket({ fd, readable: false, writable: true });
    const r = new PassThrough();
    w.once('finish', () => r.end());
    return new PairDuplex(r, w);
  }
  const r = withChunkReads(new net.Socket({ ...opts, fd, readable: true, writable: false }), { writable: false });
  return new PairDuplex(r, discardWrites());
}

function open(url: string): Duplex {
  const fds = parseFds(url);
  const pipes = fds.map((fd) => checkStreamFd(fd, url));
  // Read as the unix and tcp transports' accepted connections do (withChunkReads: 1 MiB chunks
  // given back by the decoder, read targets); manualStart: no read before the handle moves.
  const opts = { manualStart: true } as net.SocketConstructorOpts;
  if (fds.length === 1) {
    const mode = pipes[0] ? accessMode(fds[0]!) : 'rw';
    if (mode !== 'rw') return withTypedErrors(oneWay(fds[0]!, mode, opts), url);
    return withTypedErrors(withChunkReads(new net.Socket({ ...opts, fd: fds[0], readable: true, writable: true, allowHalfOpen: true })), url);
  }
  const r = withChunkReads(new net.Socket({ ...opts, fd: fds[0], readable: true, writable: false }), { writable: false });
  const w = new net.Socket({ fd: fds[1], readable: false, writable: true });
  return withTypedErrors(new PairDuplex(r, w), url);
}

export const fdTransport: TransportPlugin = {
  scheme: 'fd',
  async connect(url: string, _opts: TransportOptions) {
    return open(url);
  },
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const conn = open(url);
    const listener = new QueueListener(url, parseTransportUrl(url).address, async () => {}, { limit: 1, maxPending: opts.maxPending });
    listener.push(conn);
    return listener;
  },
};
