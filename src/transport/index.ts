/**
 * Transports: plugins yielding Node Duplex streams, and the registry by URL scheme.
 * Importing this module registers the built-ins: unix, tcp, tls, fd, file.
 */
import { registerTransport, getTransport } from './registry.js';
import { unixTransport, tcpTransport } from './net.js';
import { tlsTransport } from './tls.js';
import { fdTransport } from './fd.js';
import { fileTransport } from './file.js';

for (const plugin of [unixTransport, tcpTransport, tlsTransport, fdTransport, fileTransport]) {
  if (getTransport(plugin.scheme) === undefined) registerTransport(plugin);
}

export type { TransportPlugin, TransportListener, TransportOptions } from './types.js';
export { registerTransport, unregisterTransport, getTransport, listTransports, connectTransport, listenTransport } from './registry.js';
export { parseTransportUrl, parseHostPort, formatHostPort } from './url.js';
export type { TransportUrl } from './url.js';
export { QueueListener } from './listener.js';
export { PairDuplex } from './pair.js';
export { CheckpointWriter } from './file.js';
export { connectError, streamError, withTypedErrors } from './errors.js';
export { unixTransport, tcpTransport, tlsTransport, fdTransport, fileTransport };
