/**
 * The project's errors: one class, a stable `code` like Node's system errors.
 *
 * Protocol errors use errno names (EINVAL, ENOMSG, ENODEV, ...) with the Linux `errno` number;
 * the project's own failures use `VFIO_MIG_ERR_*` codes. Extra context (the failed arc, the
 * device's state read back afterwards, the migration phase) rides on optional fields.
 */
import { constants as osConstants } from 'node:os';
import type { DeviceState } from './states.js';

/** Linux errno numbers for the names this protocol uses (asm-generic numbering). */
export const ERRNO: Readonly<Record<string, number>> = Object.freeze({
  EINTR: 4,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  ENODEV: 19,
  EINVAL: 22,
  EMFILE: 24,
  ENOTTY: 25,
  ESPIPE: 29,
  EPIPE: 32,
  ERANGE: 34,
  ENOMSG: 42,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECANCELED: 125,
});

const NAME_BY_ERRNO = new Map<number, string>(Object.entries(ERRNO).map(([k, v]) => [v, k]));

/** The project's own error codes. */
export const ErrorCodes = {
  /** The wire stream is corrupt: bad magic, bad crc32, impossible lengths. */
  CORRUPT: 'VFIO_MIG_ERR_CORRUPT',
  /** The wire stream ended in the middle of a record or before its end record. */
  TRUNCATED: 'VFIO_MIG_ERR_TRUNCATED',
  /** A length or a queue exceeded its configured bound. */
  LIMIT: 'VFIO_MIG_ERR_LIMIT',
  /** The peer speaks a version or a mandatory record type we do not. */
  UNSUPPORTED: 'VFIO_MIG_ERR_UNSUPPORTED',
  /** Source and destination devices are not compatible. */
  INCOMPATIBLE: 'VFIO_MIG_ERR_INCOMPATIBLE',
  /** The integrity check of a device's state failed (digest mismatch). */
  DIGEST: 'VFIO_MIG_ERR_DIGEST',
  /** The switchover policy decided the migration cannot meet its limits. */
  POLICY_ABORT: 'VFIO_MIG_ERR_POLICY_ABORT',
  /** The user aborted (AbortSignal). */
  ABORTED: 'VFIO_MIG_ERR_ABORTED',
  /** No progress for longer than allowed. */
  STALLED: 'VFIO_MIG_ERR_STALLED',
  /** The peer closed or the transport failed. */
  TRANSPORT: 'VFIO_MIG_ERR_TRANSPORT',
  /** The peer violated the migration protocol (unexpected message). */
  PROTOCOL: 'VFIO_MIG_ERR_PROTOCOL',
  /** Invalid arguments or options given by the caller. */
  USAGE: 'VFIO_MIG_ERR_USAGE',
} as const;
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface MigErrorInfo {
  /** Linux errno number, when the code is an errno name. Set automatically for known names. */
  errno?: number;
  /** The arc that failed, when the error comes from a transition. */
  arc?: { from: DeviceState; to: DeviceState };
  /** The state requested by the setState call that failed. */
  target?: DeviceState;
  /** The device's actual state after the failure, read back from the driver. */
  state?: DeviceState;
  /** What recovery was done after the failure ("none", "recovered", "reset", "failed"; a migration also "held"). */
  recovery?: string;
  /** Migration phase in which the failure happened (orchestrator). */
  phase?: string;
  /** Which device (index in the migration's device table). */
  device?: number;
  /** The underlying error. */
  cause?: unknown;
  /** Any further structured detail (byte counts, limits). */
  detail?: Record<string, unknown>;
}

const kMigError = Symbol.for('vfio-mig.MigError');

export class MigError extends Error {
  readonly code: string;
  errno: number | undefined;
  arc: { from: DeviceState; to: DeviceState } | undefined;
  target: DeviceState | undefined;
  state: DeviceState | undefined;
  recovery: string | undefined;
  phase: string | undefined;
  device: number | undefined;
  detail: Record<string, unknown> | undefined;

  constructor(code: string, message: string, info: MigErrorInfo = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    this.name = 'MigError';
    this.code = code;
    this.errno = info.errno ?? ERRNO[code];
    this.arc = info.arc;
    this.target = info.target;
    this.state = info.state;
    this.recovery = info.recovery;
    this.phase = info.phase;
    this.device = info.device;
    this.detail = info.detail;
    Object.defineProperty(this, kMigError, { value: true });
  }

  /** instanceof that works across duplicated copies of the package (undici's habit). */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[kMigError] === true;
  }
}

/** Create a protocol (errno-named) or project error. */
export function migError(code: string, message: string, info?: MigErrorInfo): MigError {
  const err = new MigError(code, message, info);
  Error.captureStackTrace?.(err, migError);
  return err;
}

/**
 * Map any thrown value to an errno name: Node system errors carry `code` ('EAGAIN'), but errnos Node
 * has no name for (ENOMSG) arrive as code "Unknown system error -42" with errno -42, so the number wins.
 */
export function errnoName(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as { code?: unknown; errno?: unknown };
  if (typeof e.errno === 'number') {
    const name = NAME_BY_ERRNO.get(Math.abs(e.errno));
    if (name) return name;
  }
  return typeof e.code === 'string' ? e.code : undefined;
}

/** True when `err` is the errno `name`, recognised by number where Node has no name for it. */
export function isErrno(err: unknown, name: string): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { code?: unknown; errno?: unknown };
  if (e.code === name) return true;
  const n = ERRNO[name] ?? (osConstants.errno as Record<string, number>)[name];
  return typeof e.errno === 'number' && n !== undefined && Math.abs(e.errno) === n;
}
