/**
 * Little-endian u64 fields. The number variants keep JavaScript numbers exact: values above
 * Number.MAX_SAFE_INTEGER (2^53 - 1) are refused with EOVERFLOW ("value too large for defined data
 * type") instead of being rounded. The bigint variants carry the full 64 bits.
 */
import { migError } from '../fsm/errors.js';

const U64_MAX = (1n << 64n) - 1n;

/** Read a u64 as an exact number; EOVERFLOW above Number.MAX_SAFE_INTEGER. */
export function readU64(buf: Buffer, offset: number, field = 'u64'): number {
  const v = buf.readBigUInt64LE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw migError('EOVERFLOW', `${field} ${v} does not fit a JavaScript number exactly; use the bigint decoder`, {
      detail: { field, value: v.toString() },
    });
  }
  return Number(v);
}

/** Read a u64 as a bigint (all 64 bits). */
export function readU64Big(buf: Buffer, offset: number): bigint {
  return buf.readBigUInt64LE(offset);
}

/** Write a u64 from a non-negative integer number (<= MAX_SAFE_INTEGER) or bigint (< 2^64); ERANGE otherwise. */
export function writeU64(buf: Buffer, offset: number, value: number | bigint, field = 'u64'): void {
  let v: bigint;
  if (typeof value === 'bigint') {
    v = value;
  } else {
    if (!Number.isSafeInteger(value)) {
      throw migError('ERANGE', `${field} ${value} is not an exact integer`, { detail: { field, value } });
    }
    v = BigInt(value);
  }
  if (v < 0n || v > U64_MAX) {
    throw migError('ERANGE', `${field} ${v} is outside 0..2^64-1`, { detail: { field, value: v.toString() } });
  }
  buf.writeBigUInt64LE(v, offset);
}

/** Check a u32 field value; ERANGE otherwise. */
export function checkU32(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw migError('ERANGE', `${field} ${value} is not a u32`, { detail: { field, value } });
  }
  return value;
}

/** Check an s32 field value; ERANGE otherwise. */
export function checkS32(value: number, field: string): number {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
    throw migError('ERANGE', `${field} ${value} is not an s32`, { detail: { field, value } });
  }
  return value;
}

/** A decoder was given fewer bytes than its struct: the kernel's copy_from_user would fault. */
export function needBytes(buf: Buffer, offset: number, size: number, struct: string): void {
  if (!Number.isInteger(offset) || offset < 0 || buf.length - offset < size) {
    throw migError('EFAULT', `${struct} needs ${size} bytes at offset ${offset}; the buffer has ${Math.max(0, buf.length - offset)}`, {
      detail: { struct, size, offset, length: buf.length },
    });
  }
}
