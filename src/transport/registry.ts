/**
 * The transport registry: URL scheme -> plugin. Built-ins are registered by src/transport/index.ts;
 * another package registers its own with registerTransport() (docs/transports.md).
 */
import type { Duplex } from 'node:stream';
import { migError, ErrorCodes, MigError } from '../fsm/errors.js';
import type { TransportListener, TransportOptions, TransportPlugin } from './types.js';
import { abortError, connectError, usageError } from './errors.js';
import { isValidScheme, parseTransportUrl } from './url.js';

const plugins = new Map<string, TransportPlugin>();

/**
 * Register `plugin` under its scheme. A scheme already taken is refused (VFIO_MIG_ERR_USAGE)
 * unless `replace` is set, so two packages cannot silently shadow each other.
 */
export function registerTransport(plugin: TransportPlugin, opts: { replace?: boolean } = {}): void {
  if (typeof plugin !== 'object' || plugin === null || typeof plugin.connect !== 'function' || typeof plugin.listen !== 'function') {
    throw usageError('a transport plugin needs scheme, connect(url, opts) and listen(url, opts)');
  }
  const scheme = plugin.scheme;
  if (typeof scheme !== 'string' || !isValidScheme(scheme)) throw usageError(`bad transport scheme '${String(scheme)}': lowercase letters, digits, + - .`);
  if (plugins.has(scheme) && opts.replace !== true) throw usageError(`transport scheme '${scheme}' is already registered (pass { replace: true } to override it)`, { scheme });
  plugins.set(scheme, plugin);
}

/** Remove a scheme; returns whether it was registered. */
export function unregisterTransport(scheme: string): boolean {
  return plugins.delete(scheme);
}

/** The plugin for `scheme`, or undefined. */
export function getTransport(scheme: string): TransportPlugin | undefined {
  return plugins.get(scheme.toLowerCase());
}

/** The registered schemes. */
export function listTransports(): string[] {
  return [...plugins.keys()].sort();
}

function pluginFor(url: string): TransportPlugin {
  const { scheme } = parseTransportUrl(url);
  const plugin = plugins.get(scheme);
  if (!plugin) throw migError(ErrorCodes.USAGE, `no transport for scheme '${scheme}' (registered: ${listTransports().join(', ')})`, { detail: { url, scheme } });
  return plugin;
}

function checkSignal(url: string, op: string, opts: TransportOptions): void {
  if (opts.signal?.aborted) throw abortError(url, op, opts.signal);
}

/** Connect to a transport URL ("tcp:host:port", "unix:/run/x.sock", ...). Rejections are MigErrors. */
export async function connectTransport(url: string, opts: TransportOptions = {}): Promise<Duplex> {
  const plugin = pluginFor(url);
  checkSignal(url, 'connect', opts);
  try {
    return await plugin.connect(url, opts);
  } catch (err) {
    throw err instanceof MigError ? err : connectError(err, url, 'connect');
  }
}

/** Listen on a transport URL. Rejections are MigErrors. */
export async function listenTransport(url: string, opts: TransportOptions = {}): Promise<TransportListener> {
  const plugin = pluginFor(url);
  checkSignal(url, 'listen', opts);
  try {
    return await plugin.listen(url, opts);
  } catch (err) {
    throw err instanceof MigError ? err : connectError(err, url, 'listen');
  }
}
