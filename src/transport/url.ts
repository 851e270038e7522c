/** Transport URLs: "scheme:address" (a "//" after the colon is tolerated: tcp://host:port). */
import { usageError } from './errors.js';

export interface TransportUrl {
  scheme: string;
  address: string;
}

const SCHEME = /^[a-z][a-z0-9+.-]*$/;

export function isValidScheme(scheme: string): boolean {
  return SCHEME.test(scheme);
}

/** Split a transport URL; throws VFIO_MIG_ERR_USAGE when it has no scheme or no address. */
export function parseTransportUrl(url: string): TransportUrl {
  if (typeof url !== 'string') throw usageError(`transport URL must be a string, got ${typeof url}`);
  const i = url.indexOf(':');
  const scheme = i > 0 ? url.slice(0, i).toLowerCase() : '';
  if (!isValidScheme(scheme)) throw usageError(`transport URL '${url}' has no scheme: expected scheme:address, e.g. tcp:127.0.0.1:7000`, { url });
  let address = url.slice(i + 1);
  if (address.startsWith('//')) address = address.slice(2);
  if (address === '') throw usageError(`transport URL '${url}' has no address`, { url });
  return { scheme, address };
}

/** "host:port" or "[v6]:port" -> parts; the port is 0..65535 (0 asks listen() for an ephemeral one). */
export function parseHostPort(url: string, address: string): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (address.startsWith('[')) {
    const end = address.indexOf(']');
    if (end < 0 || address[end + 1] !== ':') throw usageError(`bad address in '${url}': expected [IPv6]:PORT`, { url });
    host = address.slice(1, end);
    portText = address.slice(end + 2);
  } else {
    const i = address.lastIndexOf(':');
    if (i < 0) throw usageError(`bad address in '${url}': expected HOST:PORT`, { url });
    host = address.slice(0, i);
    portText = address.slice(i + 1);
    if (host.includes(':')) throw usageError(`bad address in '${url}': write IPv6 hosts in brackets, [::1]:PORT`, { url });
  }
  if (host === '') throw usageError(`bad address in '${url}': empty host`, { url });
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw usageError(`bad port in '${url}': expected 0..65535`, { url });
  return { host, port: Number(portText) };
}

/** The inverse of parseHostPort (brackets around IPv6 hosts). */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
