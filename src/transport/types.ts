/**
 * The transport plugin contract: a URL scheme, and two functions that yield Node Duplex streams.
 *
 * A transport knows nothing of devices or records: it moves bytes both ways (the forward data and
 * the destination's return path). Built-ins: unix, tcp, tls, fd, file. A plugin from another
 * package implements TransportPlugin and calls registerTransport() (docs/transports.md).
 */
import type { Duplex } from 'node:stream';

/** Options every built-in understands; plugins may read their own extra keys. */
export interface TransportOptions {
  /** Cancels a pending connect/listen/accept: it rejects with VFIO_MIG_ERR_ABORTED. */
  signal?: AbortSignal;
  /** connect(): give up after this long (ETIMEDOUT). Default 10 000 ms; 0 = no timeout. */
  timeoutMs?: number;
  /** listen(): connections accepted by the kernel but not yet taken by accept(); more are dropped. Default 16. */
  maxPending?: number;
  /** tls: this side's certificate chain (PEM). */
  cert?: string | Buffer | Array<string | Buffer>;
  /** tls: this side's private key (PEM). */
  key?: string | Buffer | Array<string | Buffer>;
  /** tls: passphrase of the key. */
  passphrase?: string;
  /** tls: the CA(s) the peer's certificate must chain to. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** tls: verify the peer's certificate (both directions). Default true. */
  rejectUnauthorized?: boolean;
  /** tls (server): request a client certificate. Default true (mutual authentication). */
  requestCert?: boolean;
  /** tls (client): name checked against the server certificate. Default the host. */
  servername?: string;
  /**
   * unix: the send buffer (SO_SNDBUF) to ask for on both ends of a connection, in bytes; 0 keeps
   * the kernel's default. Needs the native addon (src/streams/fd-tuning.ts) and is capped by
   * net.core.wmem_max; the kernel doubles it. Default 4 MiB.
   */
  sendBufferBytes?: number;
  /** file (connect): mode of the checkpoint file. Default 0o600. */
  mode?: number;
  /** Plugin-specific options. */
  [option: string]: unknown;
}

/** A listening endpoint: yields one Duplex per incoming connection. */
export interface TransportListener extends AsyncIterable<Duplex> {
  /** The URL this listener can be reached at, with the real values (e.g. the ephemeral port). */
  readonly url: string;
  /** The address part of `url` ("127.0.0.1:40123", "[::1]:40123", "/run/x.sock", "7"). */
  readonly address: string;
  /** The next connection. Rejects with VFIO_MIG_ERR_TRANSPORT once the listener is closed (or its single connection was taken). */
  accept(opts?: { signal?: AbortSignal; timeoutMs?: number }): Promise<Duplex>;
  /** Stop listening; connections not yet accepted are destroyed, pending accept() calls reject. Idempotent. */
  close(): Promise<void>;
}

export interface TransportPlugin {
  /** URL scheme without the colon: "tcp", "unix", "mem". Lowercase letters, digits, "+", "-", ".". */
  readonly scheme: string;
  /** Connect to `url` ("scheme:address"): resolves when bytes can flow; rejects with a MigError. */
  connect(url: string, opts: TransportOptions): Promise<Duplex>;
  /** Listen on `url`: resolves once connections can arrive. */
  listen(url: string, opts: TransportOptions): Promise<TransportListener>;
}
