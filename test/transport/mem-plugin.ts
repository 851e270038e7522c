// An in-memory transport, "mem:NAME": both ends live in one process (tests, embedding).
import { Duplex } from 'node:stream';
import { registerTransport, QueueListener, parseTransportUrl, withTypedErrors } from '../../src/transport/index.js';
import type { TransportPlugin, TransportListener, TransportOptions } from '../../src/transport/index.js';

/** One end of an in-memory connection; what it writes, its peer reads. */
class MemEnd extends Duplex {
  peer: MemEnd | null = null;
  /** Our last write's callback, held until the peer's reader wants more (backpressure). */
  #waiting: (() => void) | null = null;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {
    const peer = this.peer;
    const cb = peer ? peer.#waiting : null;
    if (peer) peer.#waiting = null;
    cb?.();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (!this.peer || this.peer.destroyed) {
      cb(Object.assign(new Error('peer closed'), { code: 'EPIPE' }));
      return;
    }
    // A copy: the writer may reuse the chunk's memory once cb runs (migrate() does), while the
    // peer's reader may not have taken it yet.
    if (this.peer.push(Buffer.from(chunk))) cb();
    else this.#waiting = () => cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.peer?.push(null);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Torn down before we finished writing: the peer sees a reset, as over a socket.
    if (this.peer && !this.peer.destroyed && !this.writableFinished) {
      this.peer.destroy(Object.assign(new Error('connection reset by peer'), { code: 'ECONNRESET' }));
    }
    cb(err);
  }
}

function memoryPair(): [MemEnd, MemEnd] {
  const a = new MemEnd();
  const b = new MemEnd();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

const listening = new Map<string, QueueListener>();

export const memTransport: TransportPlugin = {
  scheme: 'mem',
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const { address } = parseTransportUrl(url);
    // Plain errors with an errno-like code are fine: the registry turns them into MigErrors.
    if (listening.has(address)) throw Object.assign(new Error(`${url} is in use`), { code: 'EADDRINUSE' });
    const listener = new QueueListener(`mem:${address}`, address, async () => {
      listening.delete(address);
    }, { maxPending: opts.maxPending });
    listening.set(address, listener);
    return listener;
  },
  async connect(url: string): Promise<Duplex> {
    const { address } = parseTransportUrl(url);
    const listener = listening.get(address);
    if (!listener) throw Object.assign(new Error(`nobody listens on ${url}`), { code: 'ECONNREFUSED' });
    const [client, server] = memoryPair();
    listener.push(withTypedErrors(server, url));
    return withTypedErrors(client, url);
  },
};

registerTransport(memTransport);
