/**
 * Socket send buffers, through the optional native addon (native/sockopt, built by
 * scripts/build-native.mjs with nothing but a C compiler): Node sets no SO_SNDBUF on a stream socket.
 *
 * On a unix stream socket the sender's send buffer is the whole window between the two processes
 * (the receiver has none of its own): at Linux's default 208 KiB a 1 GiB device stream crosses in
 * about 5000 windows, each a wake-up on the other side. With 4 MiB, 1 GiB pairs (bench/_pair.mjs
 * runPair) ran 30% faster here. The kernel caps a request at net.core.wmem_max (208 KiB on a stock
 * kernel, so there nothing changes until the administrator raises it) and doubles what it accepts.
 * TCP sockets are left alone: the kernel sizes their buffers itself, and a fixed SO_SNDBUF would
 * switch that off.
 */
import { createRequire } from 'node:module';
import type net from 'node:net';

interface SockoptAddon {
  sndbuf(fd: number, bytes: number): number;
}

let addon: SockoptAddon | null | undefined;

/** The addon, or null when it was not built (no C compiler at install time) or does not load. */
export function sockoptAddon(): SockoptAddon | null {
  if (addon === undefined) {
    try {
      // Two levels below the package root both in src/transport and in dist/transport.
      addon = createRequire(import.meta.url)('../../native/sockopt/build/vfio-mig-sockopt.node') as SockoptAddon;
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

/**
 * Ask for a send buffer of `bytes` (0: only read it). Returns the size the kernel now uses (twice
 * what it accepted), or null when it cannot be known or set: no addon, no fd, or a failed call (the
 * socket then keeps what it had; a buffer size is never worth failing a migration for).
 */
export function sendBufferSize(socket: net.Socket, bytes = 0): number | null {
  const a = sockoptAddon();
  const fd = fdOf(socket);
  if (a === null || fd < 0 || !Number.isInteger(bytes) || bytes < 0 || bytes > 0x7fffffff) return null;
  const r = a.sndbuf(fd, bytes);
  return r < 0 ? null : r;
}
