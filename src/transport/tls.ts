/**
 * tls:HOST:PORT: TCP with node:tls and mutual authentication.
 *
 * The server requests and verifies the client's certificate (requestCert, rejectUnauthorized) and
 * the client verifies the server's against `ca`. With TLS 1.3 a client learns that the server
 * refused its certificate only after its own handshake finished, so the server confirms each
 * authenticated connection with one byte (0x01) and connect() resolves only on it: a refused client
 * fails in connect() with a typed error instead of at its first read.
 */
import net from 'node:net';
import tls from 'node:tls';
import { migError, ErrorCodes } from '../fsm/errors.js';
import type { TransportListener, TransportOptions, TransportPlugin } from './types.js';
import { connectError, usageError, withTypedErrors } from './errors.js';
import { QueueListener } from './listener.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, closeServer, listenServer, serveInto, tuneTcp, whenConnected } from './net.js';
import { formatHostPort, parseHostPort, parseTransportUrl } from './url.js';

/** The server's "you are authenticated" byte. */
const ACCEPTED = 0x01;

function credentials(opts: TransportOptions): Pick<tls.TlsOptions, 'cert' | 'key' | 'ca' | 'passphrase'> {
  const out: Pick<tls.TlsOptions, 'cert' | 'key' | 'ca' | 'passphrase'> = {};
  if (opts.cert !== undefined) out.cert = opts.cert;
  if (opts.key !== undefined) out.key = opts.key as tls.TlsOptions['key'];
  if (opts.ca !== undefined) out.ca = opts.ca;
  if (opts.passphrase !== undefined) out.passphrase = opts.passphrase;
  return out;
}

/** Wait for the server's acceptance byte; leaves the socket paused with any later bytes buffered. */
function awaitAcceptance(socket: tls.TLSSocket, url: string, opts: TransportOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  return new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | null = null;
    const cleanup = (): void => {
      if (timer) clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('error', onError);
    };
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onReadable = (): void => {
      const b = socket.read(1) as Buffer | null;
      if (b === null) return;
      cleanup();
      if (b[0] !== ACCEPTED) {
        fail(migError(ErrorCodes.PROTOCOL, `connect ${url}: the server is not a vfio-mig tls transport (first byte ${b[0]})`, { detail: { url } }));
        return;
      }
      resolve();
    };
    const onEnd = (): void => fail(migError(ErrorCodes.TRANSPORT, `connect ${url}: the server closed the connection during authentication`, { detail: { url, op: 'connect' } }));
    const onError = (err: Error): void => fail(connectError(err, url, 'connect'));
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('error', onError);
    if (opts.signal) {
      const signal = opts.signal;
      const onAbort = (): void => fail(migError(ErrorCodes.ABORTED, `connect ${url}: aborted`, { cause: signal.reason }));
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener('abort', onAbort, { once: true });
        socket.once('close', () => signal.removeEventListener('abort', onAbort));
      }
    }
    if (timeoutMs > 0) {
      timer = setTimeout(() => fail(migError('ETIMEDOUT', `connect ${url}: not authenticated within ${timeoutMs} ms`, { detail: { url, op: 'connect' } })), timeoutMs);
    }
  });
}

export const tlsTransport: TransportPlugin = {
  scheme: 'tls',
  async connect(url: string, opts: TransportOptions) {
    const { host, port } = parseHostPort(url, parseTransportUrl(url).address);
    if (port === 0) throw usageError(`connect ${url}: port 0 is only for listen()`, { url });
    let socket: tls.TLSSocket;
    try {
      // allowHalfOpen reaches the TLSSocket at run time (tls.connect passes it on); @types omits it.
      const options: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
        host,
        port,
        allowHalfOpen: true,
        minVersion: 'TLSv1.2',
        rejectUnauthorized: opts.rejectUnauthorized ?? true,
        // SNI carries names only; an IP host is still checked against the certificate's IP SANs.
        ...(opts.servername !== undefined ? { servername: opts.servername } : net.isIP(host) ? {} : { servername: host }),
        ...credentials(opts),
      };
      socket = tls.connect(options);
    } catch (err) {
      throw usageError(`connect ${url}: bad tls options: ${(err as Error).message}`, { url });
    }
    await whenConnected(socket, url, opts, 'secureConnect');
    await awaitAcceptance(socket, url, opts);
    tuneTcp(socket);
    return withTypedErrors(socket, url);
  },
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const { host, port } = parseHostPort(url, parseTransportUrl(url).address);
    if (opts.cert === undefined || opts.key === undefined) throw usageError(`listen ${url}: tls needs cert and key options`, { url });
    let server: tls.Server;
    try {
      server = tls.createServer({
        allowHalfOpen: true,
        minVersion: 'TLSv1.2',
        requestCert: opts.requestCert ?? true,
        rejectUnauthorized: opts.rejectUnauthorized ?? true,
        ...credentials(opts),
      });
    } catch (err) {
      // Unparsable PEM, a key that does not match its certificate...
      throw usageError(`listen ${url}: bad tls credentials: ${(err as Error).message}`, { url });
    }
    await listenServer(server, url, { host, port }, opts.signal);
    const real = server.address() as net.AddressInfo;
    const address = formatHostPort(real.address, real.port);
    const listener = new QueueListener(`tls:${address}`, address, () => closeServer(server), { maxPending: opts.maxPending });
    // Only authenticated connections reach 'secureConnection'; refused ones are reported as 'rejected'.
    server.on('tlsClientError', (err) => listener.reject(err));
    serveInto(server, listener, 'secureConnection', (s) => {
      tuneTcp(s);
      s.write(Buffer.of(ACCEPTED));
    });
    return listener;
  },
};
