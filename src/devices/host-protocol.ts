/**
 * Control channel of the device host: JSON messages over the child_process IPC channel.
 *
 * Parent -> child: requests `{t:'req', id, op, args}` answered by `{t:'res', id, ok, value|error}`,
 * and fire-and-forget session notes (`opened`, `disable`, `close`, `ack`).
 * Child -> parent: responses, `down` notices (a session's stream ended: 'eos', 'disabled' or
 * 'error'; the parent records it and answers `ack`, and only then does a saving provider close
 * its FIFO end), and `event` (the device reset on its own).
 * Errors cross as {code, message, errno, detail} and are rebuilt with migError, so a parent sees
 * the device's own errno names (EINVAL, EFAULT, ENODEV...).
 */
import { MigError, errnoName, migError } from '../fsm/errors.js';
import type { DeviceState } from '../fsm/states.js';
import type { DeviceIdentity, PrecopyInfo, SessionDirection } from '../fsm/types.js';
import type { FdKind } from './host-fifo.js';

export interface WireError {
  code: string;
  message: string;
  errno?: number;
  detail?: Record<string, unknown>;
}

/** A device the host can run: a built-in kind, or a module exporting a factory (options) => driver. */
export type HostDeviceSpec = 'sim' | 'mtty' | { module: string; export?: string };

export interface InitArgs {
  device: HostDeviceSpec;
  options: Record<string, unknown>;
  fdKind: FdKind;
  dir: string;
  chunkSize: number;
}
export interface InitResult {
  identity: DeviceIdentity;
  flags: number;
  state: DeviceState;
  pid: number;
}

export interface SessionRef {
  id: number;
  direction: SessionDirection;
  path: string;
}

/** Requests and their results. */
export interface OpMap {
  init: { args: InitArgs; result: InitResult };
  getState: { args: null; result: DeviceState };
  step: { args: { from: DeviceState; to: DeviceState }; result: SessionRef | null };
  reset: { args: null; result: null };
  stopCopySize: { args: null; result: number };
  precopyInfo: { args: { sid: number }; result: PrecopyInfo };
  call: { args: { method: string; params: unknown[] }; result: unknown };
  shutdown: { args: null; result: null };
}
export type Op = keyof OpMap;

export type ParentMessage =
  | { t: 'req'; id: number; op: Op; args: unknown }
  | { t: 'opened'; sid: number }
  | { t: 'disable'; sid: number }
  | { t: 'close'; sid: number }
  | { t: 'ack'; sid: number };

export type DownKind = 'eos' | 'disabled' | 'error';

export type ChildMessage =
  | { t: 'res'; id: number; ok: true; value: unknown }
  | { t: 'res'; id: number; ok: false; error: WireError }
  | { t: 'down'; sid: number; kind: DownKind; error?: WireError }
  | { t: 'event'; name: 'reset' };

export function toWireError(err: unknown): WireError {
  if (err instanceof MigError) {
    const w: WireError = { code: err.code, message: err.message };
    if (err.errno !== undefined) w.errno = err.errno;
    if (err.detail) w.detail = err.detail;
    return w;
  }
  const e = err as { message?: unknown } | null;
  return {
    code: errnoName(err) ?? 'EIO',
    message: typeof e?.message === 'string' ? e.message : String(err),
  };
}

export function fromWireError(w: WireError, prefix?: string): MigError {
  return migError(w.code, prefix ? `${prefix}: ${w.message}` : w.message, {
    errno: w.errno,
    detail: w.detail,
  });
}
