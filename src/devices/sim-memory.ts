/**
 * The simulated device's memory: page count, content generator, sparse page versions and an
 * incrementally maintained digest.
 *
 * Only regions with a page ever dirtied hold versions (memory is O(regions dirtied), see
 * PageVersions); every other page is at version 0. The digest is base(seed, page count, profile)
 * XOR, over the pages at a non-zero version v, of term(i, v) XOR term(i, 0), where term is a 64-bit
 * hash of (seed, i, v): it is a function of the whole state, updated in O(1) per dirtied page and
 * read in O(1).
 */
import { PAGE_SIZE, PROFILE_CODE, PageGenerator, digestHi, digestLo, mix32, type SimProfile } from './sim-pages.js';
import { digestHex } from './sim-format.js';

/** Pages per chunk of PageVersions (256 KiB of state, 256 bytes of versions). */
const CHUNK_PAGES = 64;

/**
 * page index -> version, 0 for a page never dirtied: a typed array per 64-page chunk, made when a
 * page of the chunk first gets a non-zero version. A Map entry per page, as before, kept a heap
 * object per dirtied page (630 KiB for a 64 MiB state dirtied through), young objects for every
 * scavenge to copy; in typed arrays the versions are outside the JavaScript heap and the collector
 * sees one object per chunk (66 KiB). Chunks of 64 pages, not more: 20000 pages dirtied at random
 * over a 64 GiB device cost ~4.4 MiB; chunks of 1024 pages took 45.
 */
export class PageVersions {
  private readonly _chunks = new Map<number, Uint32Array>();
  private _nonZero = 0;

  /** Number of pages at a non-zero version. */
  get size(): number {
    return this._nonZero;
  }

  get(index: number): number {
    const c = this._chunks.get(Math.floor(index / CHUNK_PAGES));
    return c === undefined ? 0 : c[index % CHUNK_PAGES];
  }

  /** Set page `index` to `version` (0: never dirtied); returns its previous version. */
  set(index: number, version: number): number {
    const key = Math.floor(index / CHUNK_PAGES);
    let c = this._chunks.get(key);
    if (c === undefined) {
      if (version === 0) return 0;
      c = new Uint32Array(CHUNK_PAGES);
      this._chunks.set(key, c);
    }
    const at = index % CHUNK_PAGES;
    const old = c[at];
    c[at] = version;
    this._nonZero += (version !== 0 ? 1 : 0) - (old !== 0 ? 1 : 0);
    return old;
  }

  /** out[j] = get(first + j) for j < count, a chunk at a time (zeros where no chunk exists). */
  copyInto(first: number, count: number, out: Uint32Array): void {
    if (this._nonZero === 0) {
      out.fill(0, 0, count);
      return;
    }
    for (let j = 0; j < count; ) {
      const index = first + j;
      const key = Math.floor(index / CHUNK_PAGES);
      const at = index % CHUNK_PAGES;
      const n = Math.min(count - j, CHUNK_PAGES - at);
      const c = this._chunks.get(key);
      if (c === undefined) out.fill(0, j, j + n);
      else for (let k = 0; k < n; k++) out[j + k] = c[at + k]; // no view to allocate per run
      j += n;
    }
  }
}

/** Listener told about each page that changes (the saving session's dirty tracker). */
export type DirtyListener = (index: number) => void;

export class SimMemory {
  readonly pageCount: number;
  readonly seed: number;
  readonly profile: SimProfile;
  readonly gen: PageGenerator;
  /** Page versions (replaced by a loaded state at RESUMING -> STOP, in O(1): inside the downtime). */
  private _versions: PageVersions;
  private _accHi: number;
  private _accLo: number;
  private readonly _baseHi: number;
  private readonly _baseLo: number;
  private _listener: DirtyListener | null;

  constructor(pageCount: number, seed: number, profile: SimProfile) {
    this.pageCount = pageCount;
    this.seed = seed >>> 0;
    this.profile = profile;
    this.gen = new PageGenerator(this.seed, profile);
    this._versions = new PageVersions();
    this._accHi = 0;
    this._accLo = 0;
    const countLo = pageCount >>> 0;
    const countHi = Math.floor(pageCount / 0x100000000) >>> 0;
    this._baseLo = mix32(mix32(mix32(this.seed ^ 0x51ed270b) ^ countLo) ^ countHi) ^ PROFILE_CODE[profile];
    this._baseHi = mix32(mix32(mix32(this.seed ^ 0x2c1b3c6d) ^ countHi) ^ countLo) ^ (PROFILE_CODE[profile] << 8);
    this._listener = null;
  }

  get sizeBytes(): number {
    return this.pageCount * PAGE_SIZE;
  }

  /** Number of pages at a non-zero version. */
  get dirtiedPages(): number {
    return this._versions.size;
  }

  version(index: number): number {
    return this._versions.get(index);
  }

  /** out[j] = version(first + j) for j < count (savers read the versions of every page they send). */
  versionsInto(first: number, count: number, out: Uint32Array): void {
    this._versions.copyInto(first, count, out);
  }

  /** Set the (single) dirty listener; null to clear. */
  setListener(listener: DirtyListener | null): void {
    this._listener = listener;
  }

  /** Change page `index` (new content = next version) and tell the dirty tracker. */
  touch(index: number): void {
    const old = this._versions.get(index);
    const next = (old + 1) >>> 0 || 1; // u32 wrap skips 0: version 0 means "never dirtied"
    this._apply(index, old, next);
    this._versions.set(index, next);
    this._listener?.(index);
  }

  private _apply(index: number, oldV: number, newV: number): void {
    const s = this.seed;
    this._accLo = (this._accLo ^ digestLo(s, index, oldV) ^ digestLo(s, index, newV)) >>> 0;
    this._accHi = (this._accHi ^ digestHi(s, index, oldV) ^ digestHi(s, index, newV)) >>> 0;
  }

  digestParts(): { hi: number; lo: number } {
    return { hi: (this._baseHi ^ this._accHi) >>> 0, lo: (this._baseLo ^ this._accLo) >>> 0 };
  }

  /** The digest this memory would report with accumulator (hi, lo) instead of its own. */
  digestWith(accHi: number, accLo: number): { hi: number; lo: number } {
    return { hi: (this._baseHi ^ accHi) >>> 0, lo: (this._baseLo ^ accLo) >>> 0 };
  }

  digest(): string {
    const { hi, lo } = this.digestParts();
    return digestHex(hi, lo);
  }

  /** Replace the whole state with loaded versions (a successful RESUMING -> STOP). */
  replace(versions: PageVersions, accHi: number, accLo: number): void {
    this._versions = versions;
    this._accHi = accHi >>> 0;
    this._accLo = accLo >>> 0;
  }
}

/** Incremental digest of a state being loaded, with the same definition as SimMemory's. */
export class DigestAccumulator {
  hi = 0;
  lo = 0;
  constructor(private readonly seed: number) {}

  /** Page `index` moves from version `oldV` to `newV`. */
  change(index: number, oldV: number, newV: number): void {
    if (oldV === newV) return;
    const s = this.seed;
    this.lo = (this.lo ^ digestLo(s, index, oldV) ^ digestLo(s, index, newV)) >>> 0;
    this.hi = (this.hi ^ digestHi(s, index, oldV) ^ digestHi(s, index, newV)) >>> 0;
  }
}
