/**
 * Kernel buffer sizes Node has no API for, through the optional native addon (native/sockopt, built
 * by scripts/build-native.mjs with nothing but a C compiler). Without the addon every function here
 * returns null and the fds keep the kernel's defaults.
 *
 * Both are the window between two processes, and every time it fills each side waits for the other
 * to be woken:
 *
 * - A unix stream socket's send buffer (SO_SNDBUF; the receiver has none of its own): at Linux's
 *   default 208 KiB a 1 GiB device stream crosses in about 5000 windows. With 4 MiB, 1 GiB pairs
 *   (bench/_pair.mjs runPair) ran 30% faster here. The kernel caps a request at
 *   net.core.wmem_max (208 KiB on a stock kernel, so there nothing changes until the administrator
 *   raises it) and doubles what it accepts. The unix transport asks for it (src/transport/net.ts);
 *   TCP sockets are left alone: the kernel sizes their buffers itself, and a fixed SO_SNDBUF would
 *   switch that off.
 * - A pipe's or FIFO's capacity (64 KiB by default, F_SETPIPE_SZ): FdSource, FdSink and the saving
 *   and resuming streams over a pipe or FIFO data fd ask for 1 MiB (tunePipe), fs.pipe-max-size for
 *   an unprivileged process. The capacity belongs to the pipe, so the process
 *   at the other end sees it too (only more room; nothing else changes for it).
 */
import { createRequire } from 'node:module';
import type net from 'node:net';
import { migError, ErrorCodes } from '../fsm/errors.js';
import type { FdKind } from './fd-kind.js';

interface FdAddon {
  sndbuf(fd: number, bytes: number): number;
  pipesz(fd: number, bytes: number): number;
  /** glibc's mallopt(3): 1 set, 0 refused, -ENOSYS without glibc (malloc-tuning.ts). Absent in builds before it. */
  mallopt?(param: number, value: number): number;
}

let addon: FdAddon | null | undefined;

/** The addon, or null when it was not built (no C compiler at install time) or does not load. */
export function fdTuningAddon(): FdAddon | null {
  if (addon === undefined) {
    try {
      // Two levels below the package root both in src/streams and in dist/streams.
      addon = createRequire(import.meta.url)('../../native/sockopt/build/vfio-mig-sockopt.node') as FdAddon;
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** The socket's file descriptor, or -1 (not connected yet, closed, or not fd-backed). */
function fdOf(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** The capacity the fd streams ask for on a pipe or FIFO by default. */
export const PIPE_CAPACITY = 1024 * 1024;

const validBytes = (bytes: number): boolean => Number.isInteger(bytes) && bytes >= 0 && bytes <= 0x7fffffff;

/**
 * Ask for a send buffer of `bytes` (0: only read it). Returns the size the kernel now uses (twice
 * what it accepted), or null when it cannot be known or set: no addon, no fd, or a failed call (the
 * socket then keeps what it had; a buffer size is never worth failing a migration for).
 */
export function sendBufferSize(socket: net.Socket, bytes = 0): number | null {
  const a = fdTuningAddon();
  const fd = fdOf(socket);
  if (a === null || fd < 0 || !validBytes(bytes)) return null;
  const r = a.sndbuf(fd, bytes);
  return r < 0 ? null : r;
}

/**
 * Ask for a pipe or FIFO capacity of `bytes` (0: only read it). Returns the capacity now, or null
 * when it cannot be known or set: no addon, not a pipe, or refused (over fs.pipe-max-size, or the
 * user's pipe memory is spent); the pipe then keeps what it had.
 */
export function pipeCapacity(fd: number, bytes = 0): number | null {
  const a = fdTuningAddon();
  if (a === null || !Number.isInteger(fd) || fd < 0 || !validBytes(bytes)) return null;
  const r = a.pipesz(fd, bytes);
  return r < 0 ? null : r;
}

/** The fd streams' `pipeCapacity` option, documented once. */
export interface PipeCapacityOption {
  /**
   * Pipes and FIFOs: the capacity to ask for (F_SETPIPE_SZ, through the optional native addon). The
   * pipe's own, so its other end gets it too. 0 keeps the kernel's (64 KiB). Default 1 MiB,
   * fs.pipe-max-size for an unprivileged process.
   */
  pipeCapacity?: number;
}

/**
 * What the fd streams do with their `pipeCapacity` option before they start: ask for it when `fd` is
 * a pipe or FIFO (best effort: 64 KiB is the window between this process and the other end, and
 * each time it fills one of them waits for the other to be woken). A bad value is USAGE.
 */
export function tunePipe(fd: number, kind: FdKind, opts: PipeCapacityOption): void {
  const capacity = opts.pipeCapacity ?? PIPE_CAPACITY;
  if (!Number.isInteger(capacity) || capacity < 0) throw migError(ErrorCodes.USAGE, `pipeCapacity must be a byte count, got ${String(capacity)}`);
  if (kind === 'fifo' && capacity > 0) pipeCapacity(fd, capacity);
}
