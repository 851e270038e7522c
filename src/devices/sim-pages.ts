/**
 * Page content of the simulated device: every 4 KiB page is a pure function of
 * (seed, page index, page version), so a state of any size is never held in memory, the saving side
 * regenerates pages as it streams them and the resuming side verifies each page it receives.
 *
 * Speed matters (the data path is benchmarked at several GB/s on top of this), so a page is never
 * computed byte by byte: it is a memcpy from one of a few pools built once per process, plus a
 * 16-byte stamp of (index, version, seed, hash) that makes every non-zero page unique.
 *
 * Profiles:
 * - 'random': every page copies one of 8192 pages of a 32 MiB AES-CTR keystream pool (a 1 MiB run of
 *   256 pages rarely repeats one), so it is incompressible.
 * - 'zero': every page is all zeros (no stamp: a real zero page).
 * - 'mixed': by a hash of (seed, index, version), about 25% zero pages, 25% copies of one of 16
 *   template pages, 25% text-like pages (log lines) and 25% random pages: about half compressible,
 *   like real device memory.
 */
import { createCipheriv } from 'node:crypto';
import { createRequire } from 'node:module';

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

export type SimProfile = 'mixed' | 'random' | 'zero';
export const SIM_PROFILES: readonly SimProfile[] = ['mixed', 'random', 'zero'];

/** Numbers of the profiles in the stream header. */
export const PROFILE_CODE: Readonly<Record<SimProfile, number>> = { mixed: 0, random: 1, zero: 2 };

const RANDOM_POOL_PAGES = 8192; // 32 MiB
const TEMPLATE_PAGES = 16;
// Text pages are page-aligned windows of a 4 MiB log: overlapping windows would let zstd match
// text across pages and overstate how compressible text-like memory is.
const TEXT_POOL_PAGES = 1024;
const STAMP_BYTES = 16;

const KIND_ZERO = 0;
const KIND_TEMPLATE = 1;
const KIND_TEXT = 2;
const KIND_RANDOM = 3;

// Salts that make the hashes used for different purposes independent.
const SALT_KIND = 0x9e3779b9;
const SALT_LO = 0x7f4a7c15;
const SALT_HI = 0x2545f491;

/** murmur3's 32-bit finaliser: cheap, good avalanche, integer-only (no BigInt in the hot path). */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** 32-bit hash of (seed, index, version) under `salt`; index is < 2^32 (16 TiB of pages). */
export function pageHash(seed: number, index: number, version: number, salt: number): number {
  return mix32(mix32(mix32(seed ^ salt) ^ index) + version);
}

/**
 * The content pools: three long-lived buffers. Pages are addressed by offset, with no view object
 * per page: 9232 views made at the first SimDevice were still young when its migration ran, and the
 * scavenge that promoted them took 9-18 ms (against 1-2 for an ordinary one); in a fresh process it
 * fell near the end of PRE_COPY and, in 5 of 8 runs of a 64 MiB move, inside the downtime
 * (docs/PERFORMANCE.md, prediction).
 */
interface Pools {
  random: Buffer;
  templates: Buffer;
  text: Buffer;
  zero: Buffer;
}

let pools: Pools | undefined;

/** Deterministic bytes: AES-128-CTR keystream under a fixed key (same in every process). */
function keystream(bytes: number, label: number): Buffer {
  const key = Buffer.alloc(16);
  key.writeUInt32LE(0x6d696776, 0); // "vgim"
  key.writeUInt32LE(label, 4);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const out = Buffer.allocUnsafe(bytes);
  const zeros = Buffer.alloc(1024 * 1024);
  for (let off = 0; off < bytes; off += zeros.length) {
    const n = Math.min(zeros.length, bytes - off);
    cipher.update(zeros.subarray(0, n)).copy(out, off);
  }
  return out;
}

/** Small deterministic PRNG (xorshift32) for building the text and template pools; tests use it for repeatable splits. */
export function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

const LOG_SOURCES = ['kernel', 'vfio-pci', 'mlx5_core', 'qemu-kvm', 'systemd', 'sshd', 'nvme', 'virtio_net'];
const LOG_VERBS = [
  'dma map iova',
  'dma unmap iova',
  'irq affinity set cpu',
  'queue doorbell write',
  'completion entry',
  'link state change',
  'page fault addr',
  'mailbox command',
  'tx ring head',
  'rx buffer posted',
];
const LOG_LEVELS = ['INFO', 'DEBUG', 'WARN', 'NOTICE'];

function hex(n: number, width: number): string {
  return (n >>> 0).toString(16).padStart(width, '0').slice(-width);
}

/** Log-like text: repetitive structure with varying numbers, as device/driver log buffers are. */
function buildText(bytes: number): Buffer {
  const rnd = xorshift(0x1f2e3d4c);
  const out = Buffer.allocUnsafe(bytes);
  let off = 0;
  let t = 1_700_000_000;
  while (off < bytes) {
    t += rnd() % 7;
    const r = rnd();
    const line =
      `${t}.${hex(rnd(), 6)} ${LOG_LEVELS[r & 3]} ${LOG_SOURCES[(r >>> 2) & 7]}[${(r >>> 5) & 0xffff}]: ` +
      `0000:${hex(r >>> 21, 2)}:00.${(r >>> 29) & 7} ${LOG_VERBS[rnd() % LOG_VERBS.length]}=0x${hex(rnd(), 8)}${hex(rnd(), 4)} ` +
      `len=${rnd() % 65536} seq=${rnd() % 1000000} crc=${hex(rnd(), 8)} data=${hex(rnd(), 8)}${hex(rnd(), 8)}${hex(rnd(), 8)}${hex(rnd(), 8)}\n`;
    off += out.write(line, off, 'latin1');
  }
  return out;
}

/** Templates: structured pages (descriptor tables) that real memory repeats verbatim. */
function buildTemplates(): Buffer {
  const rnd = xorshift(0x5eed7e11);
  const out = Buffer.alloc(TEMPLATE_PAGES * PAGE_SIZE);
  for (let t = 0; t < TEMPLATE_PAGES; t++) {
    const base = t * PAGE_SIZE;
    const stride = 16 << (t & 3);
    for (let off = 0; off < PAGE_SIZE; off += stride) {
      out.writeUInt32LE(rnd(), base + off);
      out.writeUInt32LE(t * 0x01010101, base + off + 4);
      out.writeUInt32LE(off, base + off + 8);
    }
  }
  return out;
}

/** Where page selector `h >>> 2` starts in `pool` (every pool holds a power of two of whole pages). */
function sourceOffset(pool: Buffer, h: number): number {
  return ((h >>> 2) & (pool.length / PAGE_SIZE - 1)) * PAGE_SIZE;
}

/** The shared pools, built on first use (~32 MiB of random pages; once per process). */
function getPools(): Pools {
  if (pools) return pools;
  const random = keystream(RANDOM_POOL_PAGES * PAGE_SIZE, 1);
  const templates = buildTemplates();
  const text = buildText(TEXT_POOL_PAGES * PAGE_SIZE);
  pools = { random, templates, text, zero: Buffer.alloc(PAGE_SIZE) };
  return pools;
}

/** The same page function, a run of pages per call (native/simpages/vfio-mig-simpages.c). */
interface PagesAddon {
  writePages(...args: PagesArgs): void;
  verifyPages(...args: PagesArgs): number;
}
type PagesArgs = [
  buf: Uint8Array,
  off: number,
  idx: Uint32Array,
  ver: Uint32Array,
  k: number,
  count: number,
  seed: number,
  kindMask: number,
  fixedKind: number,
  random: Buffer,
  templates: Buffer,
  text: Buffer,
];

/** The optional addon (built by scripts/build-native.mjs with a C compiler), or null. */
function loadAddon(): PagesAddon | null {
  if (process.env.VFIO_MIG_SIM_PAGES_JS === '1') return null;
  try {
    // Two levels below the package root both in src/devices and in dist/devices.
    return createRequire(import.meta.url)('../../native/simpages/build/vfio-mig-simpages.node') as PagesAddon;
  } catch {
    return null;
  }
}

const addon = loadAddon();

/** Pages are generated and verified by the native addon (a run per call), not page by page in JavaScript. */
export const simPagesNative = addon !== null;

/**
 * Generates and verifies the pages of one (seed, profile). Cheap to construct; the pools are shared.
 */
export class PageGenerator {
  readonly seed: number;
  readonly profile: SimProfile;
  private readonly _pools: Pools;
  private readonly _kindMask: number;
  private readonly _fixedKind: number;

  constructor(seed: number, profile: SimProfile) {
    this.seed = seed >>> 0;
    this.profile = profile;
    this._pools = getPools();
    // mixed: kind from 2 hash bits; the other profiles have one kind.
    this._kindMask = profile === 'mixed' ? 3 : 0;
    this._fixedKind = profile === 'zero' ? KIND_ZERO : profile === 'random' ? KIND_RANDOM : 0;
  }

  /**
   * The pool holding a page's source bytes, or null for a zero page; `h` is the kind hash. The
   * page starts at sourceOffset(pool, h) in it.
   */
  private _source(h: number): Buffer | null {
    const kind = this._kindMask === 0 ? this._fixedKind : h & 3;
    switch (kind) {
      case KIND_TEMPLATE:
        return this._pools.templates;
      case KIND_TEXT:
        return this._pools.text;
      case KIND_RANDOM:
        return this._pools.random;
      default:
        return null;
    }
  }

  /** Write page (index, version) at dst[off .. off+4096). */
  writePage(dst: Uint8Array, off: number, index: number, version: number): void {
    const h = pageHash(this.seed, index, version, SALT_KIND);
    const src = this._source(h);
    if (src === null) {
      dst.fill(0, off, off + PAGE_SIZE);
      return;
    }
    const at = sourceOffset(src, h);
    src.copy(dst, off, at, at + PAGE_SIZE);
    // Stamp: makes copies of one pool page differ per (index, version) and lets the loader
    // recognise a page sent for the wrong index or version.
    dst[off] = index;
    dst[off + 1] = index >>> 8;
    dst[off + 2] = index >>> 16;
    dst[off + 3] = index >>> 24;
    dst[off + 4] = version;
    dst[off + 5] = version >>> 8;
    dst[off + 6] = version >>> 16;
    dst[off + 7] = version >>> 24;
    const s = this.seed;
    dst[off + 8] = s;
    dst[off + 9] = s >>> 8;
    dst[off + 10] = s >>> 16;
    dst[off + 11] = s >>> 24;
    dst[off + 12] = h;
    dst[off + 13] = h >>> 8;
    dst[off + 14] = h >>> 16;
    dst[off + 15] = h >>> 24;
  }

  /**
   * Write pages (idx[k + j], ver[k + j]) for j < count at dst[off + 4096 j ..): what `count` calls
   * of writePage() write, in one call of the native addon when it is built.
   */
  writePages(dst: Uint8Array, off: number, idx: Uint32Array, ver: Uint32Array, k: number, count: number): void {
    if (addon !== null) {
      const p = this._pools;
      addon.writePages(dst, off, idx, ver, k, count, this.seed, this._kindMask, this._fixedKind, p.random, p.templates, p.text);
      return;
    }
    for (let j = 0; j < count; j++, off += PAGE_SIZE) this.writePage(dst, off, idx[k + j], ver[k + j]);
  }

  /**
   * How many of the pages (idx[k + j], ver[k + j]) at src[off + 4096 j ..), from the first, are
   * exactly what writePage() writes: `count` when all are.
   */
  verifyPages(src: Buffer, off: number, idx: Uint32Array, ver: Uint32Array, k: number, count: number): number {
    if (addon !== null) {
      const p = this._pools;
      return addon.verifyPages(src, off, idx, ver, k, count, this.seed, this._kindMask, this._fixedKind, p.random, p.templates, p.text);
    }
    for (let j = 0; j < count; j++, off += PAGE_SIZE) if (!this.verifyPage(src, off, idx[k + j], ver[k + j])) return j;
    return count;
  }

  /** True when src[off .. off+4096) is exactly page (index, version); no copy, no allocation. */
  verifyPage(src: Buffer, off: number, index: number, version: number): boolean {
    const h = pageHash(this.seed, index, version, SALT_KIND);
    const ref = this._source(h);
    if (ref === null) return src.compare(this._pools.zero, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0;
    if (
      src.readUInt32LE(off) !== index >>> 0 ||
      src.readUInt32LE(off + 4) !== version >>> 0 ||
      src.readUInt32LE(off + 8) !== this.seed ||
      src.readUInt32LE(off + 12) !== h
    ) {
      return false;
    }
    const at = sourceOffset(ref, h);
    return src.compare(ref, at + STAMP_BYTES, at + PAGE_SIZE, off + STAMP_BYTES, off + PAGE_SIZE) === 0;
  }
}

/** Low/high halves of the 64-bit digest term of page (index, version). */
export function digestLo(seed: number, index: number, version: number): number {
  return pageHash(seed, index, version, SALT_LO);
}
export function digestHi(seed: number, index: number, version: number): number {
  return pageHash(seed, index, version, SALT_HI);
}

/** Force the pools to be built now (so the first migration does not pay for it). */
export function warmPagePools(): void {
  getPools();
}
