/**
 * unix:PATH and tcp:HOST:PORT, and the socket plumbing tls: shares.
 *
 * Sockets are half-open capable (allowHalfOpen) on both sides: the source ends its forward stream
 * and still reads the destination's acknowledgement on the return path.
 */
import net from 'node:net';
import { unlink } from 'node:fs/promises';
import { migError } from '../fsm/errors.js';
import type { TransportListener, TransportOptions, TransportPlugin } from './types.js';
import { abortError, connectError, usageError, withTypedErrors } from './errors.js';
import { QueueListener } from './listener.js';
import { formatHostPort, parseHostPort, parseTransportUrl } from './url.js';
import { INPUT_RELEASE, READ_TARGET, ReadTargets, type InputReleaseHook, type ReadTargetHook } from '../streams/read-target.js';
import { DEFAULT_CHUNK_SIZE, MIN_READ_SPACE } from '../streams/chunk-source.js';
import { ChunkLoans } from '../streams/chunk-loans.js';
import { sendBufferSize } from '../streams/fd-tuning.js';

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** Bytes per chunk an accepted connection reads into (see withChunkReads): ChunkSource's size. */
const READ_CHUNK = DEFAULT_CHUNK_SIZE;

/**
 * An accepted connection (from a server with pauseOnConnect, so it has not read yet) that reads
 * into chunks of READ_CHUNK bytes: each read lands in the free tail of the current chunk and is
 * pushed as a view of it, a full chunk is replaced by a new one, and no pushed byte is ever written
 * again. Node's own reads allocate 64 KiB per read; this takes whatever the kernel holds in one
 * read (a unix socket's ~200 KiB), and consecutive reads are consecutive views of one buffer,
 * which the RecordDecoder merges: a record within one chunk arrives in one piece, without a copy.
 * The socket also offers read targets (src/streams/read-target.ts): a RecordDecoder piped from it
 * has the rest of a payload that spans reads read straight into the buffer it hands out, and the
 * header after a large record read alone, so large records are not copied at all.
 * And it takes chunks back (INPUT_RELEASE): once a consumer registers for read targets (a
 * RecordDecoder, which gives each input chunk back when done with it) the chunks are lent in
 * tracked views and reused instead of fresh memory. That matters for records smaller than a read
 * (they land in chunks whole; docs/PERFORMANCE.md, transport-16KiB-records) and whenever the
 * decoder cannot offer a target.
 * Node's server gives no `onread` option for accepted sockets, so the connection's handle moves to
 * a new net.Socket that has one (the `handle` option, as Node's own server uses it). When the
 * handle cannot be taken (a Node without `_handle`), the socket is returned as it is, resumed.
 * The fd: transport passes its inherited sockets and read pipes the same way (made with
 * `manualStart`, so they have not read either); `writable: false` for a pipe's read end.
 */
export function withChunkReads(socket: net.Socket, opts: { writable?: boolean } = {}): net.Socket {
  const owner = socket as unknown as { _handle?: object | null };
  const handle = owner._handle;
  if (handle === null || handle === undefined || socket.destroyed) {
    socket.resume();
    return socket;
  }
  let chunk: Buffer | null = null;
  let fill = 0;
  let out: net.Socket | null = null;
  const targets = new ReadTargets();
  const loans = new ChunkLoans(READ_CHUNK);
  /**
   * The chunk being filled when tracking began: views of it went out untracked, so it is never lent
   * as tracked nor reused; the next buffer asked for starts a new chunk (one read may still be
   * landing in it: libuv asks for the next buffer as soon as a read completes).
   */
  let stale: Buffer | null = null;
  /** Bytes pushed so far (what a provider compares with what reached it). */
  let pushed = 0;
  const buffer = (): Buffer => {
    const t = targets.ask(pushed, true);
    if (typeof t !== 'number') return t;
    if (chunk === null || chunk === stale || chunk.length - fill < MIN_READ_SPACE) {
      if (chunk !== null && chunk !== stale) loans.retire(chunk);
      stale = null;
      chunk = loans.newChunk();
      fill = 0;
    }
    return t > 0 ? chunk.subarray(fill, fill + t) : chunk.subarray(fill);
  };
  const callback = (n: number): boolean => {
    let view = targets.took(n);
    if (view === null) {
      const c = chunk as Buffer;
      view = c.subarray(fill, fill + n);
      if (c !== stale) loans.lend(c, view, true);
      fill += n;
    }
    pushed += n;
    return (out as net.Socket).push(view);
  };
  const hook: ReadTargetHook = (provider) => {
    if (provider !== null && !loans.tracking) {
      loans.track();
      stale = chunk;
    }
    targets.hook(provider);
  };
  // The old object lets go of the handle first: destroying it then closes nothing, and the
  // server forgets it (its connection count).
  owner._handle = null;
  out = new net.Socket({ handle, allowHalfOpen: true, readable: true, writable: opts.writable ?? true, onread: { buffer, callback } } as net.SocketConstructorOpts);
  socket.destroy();
  (out as unknown as { [READ_TARGET]: ReadTargetHook })[READ_TARGET] = hook;
  (out as unknown as { [INPUT_RELEASE]: InputReleaseHook })[INPUT_RELEASE] = (view) => loans.release(view);
  out.once('close', () => loans.close());
  return out;
}

/**
 * Wait for `socket` to reach `event` ('connect' or 'secureConnect'), honouring opts.timeoutMs and
 * opts.signal; on failure the socket is destroyed and the rejection is a typed MigError.
 */
export function whenConnected<T extends net.Socket>(socket: T, url: string, opts: TransportOptions, event: 'connect' | 'secureConnect'): Promise<T> {
  const signal = opts.signal;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  return new Promise<T>((resolve, reject) => {
    let timer: NodeJS.Timeout | null = null;
    const cleanup = (): void => {
      if (timer) clearTimeout(timer);
      socket.off(event, onReady);
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onReady = (): void => {
      cleanup();
      resolve(socket);
    };
    const onError = (err: Error): void => fail(connectError(err, url, 'connect'));
    const onAbort = (): void => fail(abortError(url, 'connect', signal as AbortSignal));
    if (signal?.aborted) {
      onAbort();
      return;
    }
    socket.once(event, onReady);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs > 0) {
      timer = setTimeout(() => fail(migError('ETIMEDOUT', `connect ${url}: no connection within ${timeoutMs} ms`, { detail: { url, op: 'connect' } })), timeoutMs);
    }
  });
}

/** server.listen(options) as a promise; errors are typed. */
export function listenServer(server: net.Server, url: string, options: net.ListenOptions, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(url, 'listen', signal));
      return;
    }
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(connectError(err, url, 'listen'));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options);
  });
}

/**
 * Stop a server listening. Connections already accepted live on: server.close()'s own callback
 * waits for them all to end, so it is not awaited; one turn of the loop lets libuv close the
 * listening handle (and unlink a unix socket's file).
 */
export function closeServer(server: net.Server): Promise<void> {
  if (server.listening) server.close();
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Hand a listening server's connections (event `event`) to a QueueListener. `setup` may replace
 * the socket (withChunkReads).
 */
export function serveInto(server: net.Server, listener: QueueListener, event: 'connection' | 'secureConnection', setup: (s: net.Socket) => net.Socket | void): void {
  server.on(event, (socket: net.Socket) => {
    const s = setup(socket) ?? socket;
    listener.push(withTypedErrors(s, listener.url));
  });
  server.on('error', (err) => listener.fail(connectError(err, listener.url, 'accept')));
}

export function tuneTcp(socket: net.Socket): void {
  // Control records (acks, switchover) are small and latency-bound; bulk data goes in big writes anyway.
  socket.setNoDelay(true);
  // Let the kernel notice a vanished peer (host down, cable cut) on an idle connection.
  socket.setKeepAlive(true, 15_000);
}

/** unix:PATH; "unix:@NAME" is Linux's abstract namespace (no file, nothing to clean up). */
function unixPath(url: string): string {
  const { address } = parseTransportUrl(url);
  return address.startsWith('@') ? `\0${address.slice(1)}` : address;
}

export const unixTransport: TransportPlugin = {
  scheme: 'unix',
  async connect(url: string, opts: TransportOptions) {
    const sendBuffer = unixSendBuffer(opts);
    const socket = net.connect({ path: unixPath(url), allowHalfOpen: true });
    await whenConnected(socket, url, opts, 'connect');
    sendBufferSize(socket, sendBuffer);
    return withTypedErrors(socket, url);
  },
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const path = unixPath(url);
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    try {
      await listenServer(server, url, { path }, opts.signal);
    } catch (err) {
      // A socket file left by a dead process: nobody answers on it, so it is safe to replace.
      if ((err as { code?: string }).code !== 'EADDRINUSE' || path.startsWith('\0') || !(await isStale(path))) throw err;
      await unlink(path).catch(() => {});
      await listenServer(server, url, { path }, opts.signal);
    }
    const listener = new QueueListener(url, parseTransportUrl(url).address, () => closeServer(server), { maxPending: opts.maxPending });
    const sendBuffer = unixSendBuffer(opts);
    serveInto(server, listener, 'connection', (socket) => {
      const s = withChunkReads(socket);
      sendBufferSize(s, sendBuffer);
      return s;
    });
    return listener;
  },
};

/**
 * The send buffer a unix connection asks for (TransportOptions.sendBufferBytes): the window between
 * the two processes, see src/streams/fd-tuning.ts. The kernel doubles it. 1 GiB e2e pairs, three
 * rounds: 642-768 MB/s with the default 208 KiB, 776-910 asking 1 MiB, 832-961 asking 2 MiB,
 * 887-1120 asking 4 MiB.
 */
const UNIX_SEND_BUFFER = 4 * 1024 * 1024;

function unixSendBuffer(opts: TransportOptions): number {
  const n = opts.sendBufferBytes ?? UNIX_SEND_BUFFER;
  if (!Number.isInteger(n) || n < 0) throw usageError(`sendBufferBytes must be a byte count, got ${String(n)}`, { option: 'sendBufferBytes' });
  return n;
}

/** True when nothing accepts connections on the unix socket at `path`. */
function isStale(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

export const tcpTransport: TransportPlugin = {
  scheme: 'tcp',
  async connect(url: string, opts: TransportOptions) {
    const { host, port } = parseHostPort(url, parseTransportUrl(url).address);
    if (port === 0) throw usageError(`connect ${url}: port 0 is only for listen()`, { url });
    const socket = net.connect({ host, port, allowHalfOpen: true });
    await whenConnected(socket, url, opts, 'connect');
    tuneTcp(socket);
    return withTypedErrors(socket, url);
  },
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const { host, port } = parseHostPort(url, parseTransportUrl(url).address);
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    await listenServer(server, url, { host, port }, opts.signal);
    const real = server.address() as net.AddressInfo;
    const address = formatHostPort(real.address, real.port);
    const listener = new QueueListener(`tcp:${address}`, address, () => closeServer(server), { maxPending: opts.maxPending });
    serveInto(server, listener, 'connection', (socket) => {
      const s = withChunkReads(socket);
      tuneTcp(s);
      return s;
    });
    return listener;
  },
};
