/**
 * Parsing of the command's quantities: sizes ("1GiB", "32MiB", "4096", "1.5G"), rates (bytes per
 * second, same suffixes, optional "/s"), durations ("500", "500ms", "2s"), fractions ("0.05", "5%",
 * "1/32").
 */
import { ErrorCodes, migError } from '../fsm/errors.js';

const BINARY: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

function usage(message: string) {
  return migError(ErrorCodes.USAGE, message);
}

/** Bytes: an integer or decimal with an optional unit (KiB/MiB/GiB/TiB binary, KB/MB/GB decimal, K/M/G binary). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? BINARY[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw usage(`invalid ${what} '${text}': expected a number of bytes, optionally with KiB, MiB, GiB (or KB, MB, GB)`);
  }
  const value = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(value)) throw usage(`${what} '${text}' is too large`);
  return value;
}

/** Bytes per second: a size with an optional "/s" suffix ("64MiB/s", "100MB", "0" = unlimited). */
export function parseRate(text: string, what = 'rate'): number {
  return parseSize(text.replace(/\/s$/i, ''), what);
}

/** Milliseconds: "500", "500ms", "2s", "1.5s". */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  if (!m) throw usage(`invalid ${what} '${text}': expected milliseconds, or a number with ms, s or m`);
  const factor = m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1;
  return Math.round(Number(m[1]) * factor);
}

/**
 * A share in [0, 1): a decimal ("0.05"), a percentage ("5%") or a ratio of integers ("1/32"). The
 * upper end is open: a share of 1 (all of it) is never meaningful for the options that take one.
 */
export function parseFraction(text: string, what = 'fraction'): number {
  const t = text.trim();
  let value = NaN;
  let m: RegExpExecArray | null;
  if ((m = /^(\d+(?:\.\d+)?)%$/.exec(t))) value = Number(m[1]) / 100;
  else if ((m = /^(\d+)\/(\d+)$/.exec(t))) value = Number(m[2]) === 0 ? NaN : Number(m[1]) / Number(m[2]);
  else if (/^\d+(?:\.\d+)?$/.test(t)) value = Number(t);
  if (!(value >= 0 && value < 1)) {
    throw usage(`invalid ${what} '${text}': expected a share below 1, as a decimal (0.05), a percentage (5%) or a ratio (1/32)`);
  }
  return value;
}

/** A positive integer option (counts: devices, channels). */
export function parseCount(text: string, what: string, min = 1, max = 1024): number {
  if (!/^\s*\d+\s*$/.test(text)) throw usage(`invalid ${what} '${text}': expected an integer`);
  const n = Number(text);
  if (n < min || n > max) throw usage(`${what} must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** Human form of a byte count: "1.00 GiB", "512 KiB", "17 B". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

/** Human form of milliseconds: "850 ms", "12.3 s". */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
