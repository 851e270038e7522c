/**
 * Transport errors as MigErrors.
 *
 * Failures to connect or listen keep the errno name as their code when it says something the user
 * can act on (ECONNREFUSED: nobody listens; ENOENT: no such socket or file; EADDRINUSE...). Errors
 * of an established connection (a reset, a broken pipe, a TLS alert) are VFIO_MIG_ERR_TRANSPORT:
 * the peer or the link is gone, whatever the errno; the errno number and name ride along.
 */
import type { Duplex } from 'node:stream';
import { MigError, migError, errnoName, ErrorCodes, ERRNO } from '../fsm/errors.js';
import { constants as osConstants } from 'node:os';

/** Errno names kept as the code of a connect/listen failure. */
const KEPT = new Set([
  'ECONNREFUSED',
  'ENOENT',
  'EACCES',
  'EPERM',
  'EADDRINUSE',
  'EADDRNOTAVAIL',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTDIR',
  'EISDIR',
  'EBADF',
  'ECONNRESET',
  'ENOTSOCK',
  'ENOSPC',
  'EROFS',
  // getaddrinfo: no such host / resolver unavailable.
  'ENOTFOUND',
  'EAI_AGAIN',
]);

function errnoNumber(name: string | undefined): number | undefined {
  if (name === undefined) return undefined;
  return ERRNO[name] ?? (osConstants.errno as Record<string, number>)[name];
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A connect or listen failure on `url`, as a MigError (errno name kept when meaningful). */
export function connectError(err: unknown, url: string, op: 'connect' | 'listen' | 'accept'): MigError {
  if (err instanceof MigError) return err;
  const name = errnoName(err);
  const code = name !== undefined && KEPT.has(name) ? name : ErrorCodes.TRANSPORT;
  return migError(code, `${op} ${url}: ${describe(err)}`, {
    errno: errnoNumber(name),
    cause: err,
    detail: { url, op, ...(name !== undefined ? { sysCode: name } : {}) },
  });
}

/** An error of an established connection, as VFIO_MIG_ERR_TRANSPORT (the original code in detail.sysCode). */
export function streamError(err: unknown, url: string): MigError {
  if (err instanceof MigError) return err;
  const name = errnoName(err);
  return migError(ErrorCodes.TRANSPORT, `transport ${url}: ${describe(err)}`, {
    errno: errnoNumber(name),
    cause: err,
    detail: { url, ...(name !== undefined ? { sysCode: name } : {}) },
  });
}

/**
 * Make every error `stream` emits a MigError: wraps the instance's `_destroy`, through which Node
 * streams (sockets included) route every error before emitting it. Costs nothing on the data path.
 */
export function withTypedErrors<T extends Duplex>(stream: T, url: string): T {
  const original = stream._destroy;
  stream._destroy = function (this: T, err: Error | null, cb: (error?: Error | null) => void): void {
    original.call(this, err, (e?: Error | null) => cb(e ? streamError(e, url) : e));
  };
  return stream;
}

/** The rejection of an aborted operation. */
export function abortError(url: string, op: string, signal: AbortSignal): MigError {
  return migError(ErrorCodes.ABORTED, `${op} ${url}: aborted`, { cause: signal.reason, detail: { url, op } });
}

/** A usage error for a malformed URL or option. */
export function usageError(message: string, detail?: Record<string, unknown>): MigError {
  return migError(ErrorCodes.USAGE, message, detail ? { detail } : undefined);
}
