/**
 * The SimDevice migration stream format (version 1.0).
 *
 * Like mlx5 and virtio, the stream is a sequence of records, each a 16-byte little-endian header
 * followed by `size` payload bytes:
 *
 *   offset 0  u64 size    payload bytes that follow the header
 *   offset 8  u32 flags   bit 0 = OPTIONAL: a loader that does not know the tag skips the record;
 *                         other bits must be 0
 *   offset 12 u32 tag     record type, below
 *
 * Records, in stream order:
 *
 *   HEADER (tag 2, mandatory, first record, 32 bytes): the "match data" a destination checks before
 *     it accepts anything (like mtty's header and hisi's match data; mismatch -> EFAULT):
 *       u64 magic 0x3176656469766d73 (ASCII "smvidev1"), u16 major 1, u16 minor 0, u32 page size 4096,
 *       u64 page count, u32 seed, u32 profile (0 mixed, 1 random, 2 zero)
 *   STOP_COPY_SIZE (tag 1, OPTIONAL, 8 bytes): u64 bytes the source expects STOP_COPY to need,
 *     as mlx5 sends first so the target can prepare; loaders may ignore it.
 *   PAGES (tag 0, mandatory, any number): a run of 1..1024 pages
 *       u32 count, u32 reserved 0,
 *       count x { u32 page index, u32 page version },
 *       count x 4096 bytes of page content (the content of (seed, index, version))
 *     size must equal 8 + count * 4104. A page may appear many times (the initial pass, then each
 *     time it was dirtied); the last one wins. The saving side emits the initial pass in runs of
 *     256 pages aligned on 256-page blocks, then dirty pages in runs of up to 256 (not contiguous).
 *   END (tag 3, mandatory, last record, 16 bytes): u64 page count, u64 digest (the source's digest()
 *     when it stopped, as 16 hex digits = this u64). Nothing may follow it.
 *
 * Every page a loader receives is checked against the generator (EFAULT when it differs); the
 * digest it computes from the versions it loaded must equal END's (EFAULT otherwise); RESUMING ->
 * STOP fails with EINVAL unless END arrived and every page was received at least once.
 */

export const REC_HEADER_BYTES = 16;
export const REC_FLAG_OPTIONAL = 0x1;

export const TAG_PAGES = 0;
export const TAG_STOP_COPY_SIZE = 1;
export const TAG_HEADER = 2;
export const TAG_END = 3;

export const SIM_MAGIC_LO = 0x69766d73; // "smvi"
export const SIM_MAGIC_HI = 0x31766564; // "dev1"
export const SIM_VERSION_MAJOR = 1;
export const SIM_VERSION_MINOR = 0;

export const HEADER_PAYLOAD = 32;
export const STOP_COPY_SIZE_PAYLOAD = 8;
export const END_PAYLOAD = 16;
/** Per-record prefix of a PAGES payload: u32 count, u32 reserved. */
export const PAGES_PREFIX = 8;
/** Per-page cost inside a PAGES payload: descriptor + content. */
export const PAGE_DESC = 8;
/** Pages per record the saving side emits. */
export const RUN_PAGES = 256;
/** Largest run a loader accepts (bigger -> ENOMEM, as mlx5 refuses oversized records). */
export const MAX_RECORD_PAGES = 1024;

/** Bytes of a PAGES record (header included) carrying `count` pages. */
export function pagesRecordBytes(count: number, pageSize: number): number {
  return REC_HEADER_BYTES + PAGES_PREFIX + count * (PAGE_DESC + pageSize);
}

/** Bytes of the records carrying `pages` pages in runs of RUN_PAGES. */
export function pagesBytes(pages: number, pageSize: number): number {
  if (pages <= 0) return 0;
  return Math.ceil(pages / RUN_PAGES) * (REC_HEADER_BYTES + PAGES_PREFIX) + pages * (PAGE_DESC + pageSize);
}

/** Bytes of HEADER + STOP_COPY_SIZE at the start of every stream. */
export const META_BYTES = REC_HEADER_BYTES + HEADER_PAYLOAD + REC_HEADER_BYTES + STOP_COPY_SIZE_PAYLOAD;
export const END_BYTES = REC_HEADER_BYTES + END_PAYLOAD;

/** Write a record header at buf[off]. */
export function writeRecordHeader(buf: Buffer, off: number, size: number, flags: number, tag: number): void {
  buf.writeUInt32LE(size % 0x100000000, off);
  buf.writeUInt32LE(Math.floor(size / 0x100000000), off + 4);
  buf.writeUInt32LE(flags, off + 8);
  buf.writeUInt32LE(tag, off + 12);
}

/** u64 LE at buf[off] as a JS number (exact below 2^53). */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * 0x100000000;
}

export function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32LE(value % 0x100000000, off);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), off + 4);
}

export interface SimStreamHeader {
  pageSize: number;
  pageCount: number;
  seed: number;
  profileCode: number;
}

/** HEADER + STOP_COPY_SIZE records. */
export function encodeMeta(h: SimStreamHeader, stopCopyBytes: number): Buffer {
  const buf = Buffer.alloc(META_BYTES);
  writeRecordHeader(buf, 0, HEADER_PAYLOAD, 0, TAG_HEADER);
  let o = REC_HEADER_BYTES;
  buf.writeUInt32LE(SIM_MAGIC_LO, o);
  buf.writeUInt32LE(SIM_MAGIC_HI, o + 4);
  buf.writeUInt16LE(SIM_VERSION_MAJOR, o + 8);
  buf.writeUInt16LE(SIM_VERSION_MINOR, o + 10);
  buf.writeUInt32LE(h.pageSize, o + 12);
  writeU64(buf, o + 16, h.pageCount);
  buf.writeUInt32LE(h.seed >>> 0, o + 24);
  buf.writeUInt32LE(h.profileCode, o + 28);
  o += HEADER_PAYLOAD;
  writeRecordHeader(buf, o, STOP_COPY_SIZE_PAYLOAD, REC_FLAG_OPTIONAL, TAG_STOP_COPY_SIZE);
  writeU64(buf, o + REC_HEADER_BYTES, stopCopyBytes);
  return buf;
}

/** END record: page count and the digest as (hi, lo) u32 halves. */
export function encodeEnd(pageCount: number, digestHi: number, digestLo: number): Buffer {
  const buf = Buffer.alloc(END_BYTES);
  writeRecordHeader(buf, 0, END_PAYLOAD, 0, TAG_END);
  writeU64(buf, REC_HEADER_BYTES, pageCount);
  buf.writeUInt32LE(digestLo >>> 0, REC_HEADER_BYTES + 8);
  buf.writeUInt32LE(digestHi >>> 0, REC_HEADER_BYTES + 12);
  return buf;
}

/** digest() form of a (hi, lo) pair: 16 lower-case hex digits. */
export function digestHex(hi: number, lo: number): string {
  return (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}
