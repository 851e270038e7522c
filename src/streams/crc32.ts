/**
 * crc32 of the wire format (zlib's polynomial, the value zlib's crc32() gives), computed by the
 * optional native addon (native/crc32, built by scripts/build-native.mjs with nothing but a C
 * compiler) when the CPU has carry-less multiplication, else by node:zlib.
 *
 * Every record's payload is checksummed once on each side of a migration. Node 20's bundled zlib
 * computes crc32 at ~5 GB/s on this VM, a fifth of a core at the data path's 1 GB/s; the addon's
 * PCLMULQDQ folding runs at ~12 GB/s, ~20 with VPCLMULQDQ (docs/PERFORMANCE.md). Both give the
 * same values; the tests compare them for every length class and start value.
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

interface CrcAddon {
  crc32(data: Uint8Array, value: number): number;
  accelerated(): boolean;
}

/** The addon and its path, when built, loadable, and the CPU has PCLMULQDQ. */
function load(): { addon: CrcAddon; path: string } | null {
  const require = createRequire(import.meta.url);
  try {
    // Two levels below the package root both in src/streams and in dist/streams.
    const path = require.resolve('../../native/crc32/build/vfio-mig-crc32.node');
    const addon = require(path) as CrcAddon;
    return addon.accelerated() ? { addon, path } : null;
  } catch {
    return null;
  }
}

const loaded = load();
const addon = loaded?.addon ?? null;

/** Where the addon is, for worker threads that load it themselves (null: not in use). */
export const CRC32_ADDON_PATH: string | null = loaded?.path ?? null;

/** The addon is in use (built, loaded, and the CPU has PCLMULQDQ). */
export const crc32Accelerated = addon !== null;

/** Below this many bytes the call costs more than the bytes: zlib's is as good. */
const NATIVE_MIN = 64;

/**
 * crc32 of `data` continuing from `value` (0 to start). Unlike node:zlib's, an empty `data`
 * returns `value` itself (zlib's returns 0, which would reset a running crc).
 */
export function crc32(data: Uint8Array, value = 0): number {
  if (data.length >= NATIVE_MIN && addon !== null) return addon.crc32(data, value);
  return data.length === 0 ? value >>> 0 : zlibCrc32(data, value);
}
