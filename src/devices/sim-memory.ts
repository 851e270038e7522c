/**
 * The simulated device's memory: page count, content generator, sparse page versions and an
 * incrementally maintained digest.
 *
 * Only pages ever dirtied have an entry (memory is O(pages dirtied)); every other page is at
 * version 0. The digest is base(seed, page count, profile) XOR, over the pages at a non-zero
 * version v, of term(i, v) XOR term(i, 0), where term is a 64-bit hash of (seed, i, v): it is a
 * function of the whole state, updated in O(1) per dirtied page and read in O(1).
 */
import { PAGE_SIZE, PROFILE_CODE, PageGenerator, digestHi, digestLo, mix32, type SimProfile } from './sim-pages.js';
import { digestHex } from './sim-format.js';

/** Pages per bit of the map of where versioned pages are (a bit per 128 KiB of state). */
const GROUP_PAGES = 32;

function mark(groups: Uint32Array, index: number): void {
  const g = Math.floor(index / GROUP_PAGES);
  groups[g >>> 5] |= 1 << (g & 31);
}

/** Listener told about each page that changes (the saving session's dirty tracker). */
export type DirtyListener = (index: number) => void;

export class SimMemory {
  readonly pageCount: number;
  readonly seed: number;
  readonly profile: SimProfile;
  readonly gen: PageGenerator;
  /** page index -> version, only for pages at a non-zero version. */
  private _versions: Map<number, number>;
  /**
   * Bit g set when some page in [32 g, 32 g + 32) may have a version. Null until a saver asks
   * (versionsInto() builds it from the map, touch() keeps it), and again after replace(): a loaded
   * state becomes the device's at RESUMING -> STOP, inside the downtime, where O(pages) is not spent.
   */
  private _groups: Uint32Array | null;
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
    this._versions = new Map();
    this._groups = null;
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
    return this._versions.get(index) ?? 0;
  }

  /**
   * out[j] = version(first + j) for j < count: a run of zeros at once wherever no page of a
   * 32-page group was ever dirtied (savers read the versions of every page they send).
   */
  versionsInto(first: number, count: number, out: Uint32Array): void {
    const versions = this._versions;
    if (versions.size === 0) {
      out.fill(0, 0, count);
      return;
    }
    const groups = this._groups ?? this._buildGroups();
    for (let j = 0; j < count; ) {
      const g = Math.floor((first + j) / GROUP_PAGES);
      const end = Math.min(count, (g + 1) * GROUP_PAGES - first);
      if ((groups[g >>> 5] & (1 << (g & 31))) === 0) out.fill(0, j, end);
      else for (let i = j; i < end; i++) out[i] = versions.get(first + i) ?? 0;
      j = end;
    }
  }

  private _buildGroups(): Uint32Array {
    const groups = new Uint32Array(Math.ceil(this.pageCount / GROUP_PAGES / 32));
    for (const index of this._versions.keys()) mark(groups, index);
    this._groups = groups;
    return groups;
  }

  /** Set the (single) dirty listener; null to clear. */
  setListener(listener: DirtyListener | null): void {
    this._listener = listener;
  }

  /** Change page `index` (new content = next version) and tell the dirty tracker. */
  touch(index: number): void {
    const old = this._versions.get(index) ?? 0;
    const next = (old + 1) >>> 0 || 1; // u32 wrap skips 0: version 0 means "never dirtied"
    this._apply(index, old, next);
    if (old === 0 && this._groups !== null) mark(this._groups, index);
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
  replace(versions: Map<number, number>, accHi: number, accLo: number): void {
    this._versions = versions;
    this._groups = null;
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
