/**
 * The saving side of a SimDevice session: produces the stream of sim-format.ts straight into the
 * caller's buffer.
 *
 * PRE_COPY: the initial image (HEADER, STOP_COPY_SIZE, every page once), then pages dirtied since
 * they were read. The dirty tracker is exact: a page changed before the initial pass reached it is
 * simply read at its new version; a page changed after it was read gets a bit in a bitmap. At the
 * temporary end of stream (nothing initial, nothing dirty) read fails with ENOMSG (or returns 0 when
 * configured like mtty/hisi/qat). STOP_COPY: whatever is left, then END, then 0 forever.
 */
import { migError } from '../fsm/errors.js';
import { DeviceState } from '../fsm/states.js';
import type { PrecopyInfo } from '../fsm/types.js';
import type { SavingBackend } from './method-session.js';
import { sleepUnlessAborted } from './method-session.js';
import type { SimMemory } from './sim-memory.js';
import { PAGE_SIZE, PROFILE_CODE } from './sim-pages.js';
import {
  END_BYTES,
  META_BYTES,
  PAGES_PREFIX,
  PAGE_DESC,
  REC_HEADER_BYTES,
  RUN_PAGES,
  TAG_PAGES,
  encodeEnd,
  encodeMeta,
  pagesBytes,
  writeRecordHeader,
} from './sim-format.js';

/** Read-side fault options (see SimFaults in sim-device.ts). */
export interface SaverFaults {
  readError?: { afterBytes: number; code?: string };
  flipByte?: { offset: number; mask?: number };
  resetAfterBytes?: number;
  stallRead?: { afterBytes?: number; ms: number | null };
}

export interface SaverOptions {
  precopyEmpty: 'enomsg' | 'zero';
  /** Bytes/s; 0 = unlimited. */
  generationRate: number;
  faults: SaverFaults;
  /** The device's current state (precopy info is only valid in PRE_COPY/PRE_COPY_P2P). */
  state: () => DeviceState;
  /** Trigger the device's asynchronous reset (resetAfterBytes fault). */
  asyncReset: () => void;
  /** Bring the device's workload up to now before the state is looked at (read, precopy info). */
  observe?: () => void;
}

const MODE_PRECOPY = 0;
const MODE_STOPCOPY = 1;

const REC_RAW = 0; // bytes held in `raw` (HEADER+SIZE at the start, END at the end)
const REC_INITIAL = 1; // a PAGES record of the initial pass
const REC_DIRTY = 2; // a PAGES record of dirty pages

const RECORD_PREFIX_MAX = REC_HEADER_BYTES + PAGES_PREFIX + RUN_PAGES * PAGE_DESC;

export class SimSaver implements SavingBackend {
  private readonly _mem: SimMemory;
  private readonly _opts: SaverOptions;
  private _mode: number;

  // Initial pass: next page to snapshot (always a multiple of RUN_PAGES).
  private _nextInitial: number;
  // Dirty tracking: one bit per page read at least once and changed since; allocated on first use.
  private _dirtyBits: Uint32Array | null;
  private _dirtyCount: number;
  private _dirtyScan: number;

  // The record being emitted. Page versions are snapshot when the record starts, so a page changed
  // while its record is being read is both sent (old version) and marked dirty (resent later).
  private _recKind: number;
  private _recSize: number;
  private _recOff: number;
  private _raw: Buffer | null;
  private readonly _prefix: Buffer;
  private _prefixLen: number;
  private readonly _idx: Uint32Array;
  private readonly _ver: Uint32Array;
  private _count: number;
  private _endQueued: boolean;
  private readonly _scratch: Buffer;

  private _reinit: boolean;
  private _bytesRead: number;
  private _readFailed: Error | null;
  private _stalled: boolean;
  private _resetFired: boolean;
  // Token bucket for generationRate.
  private _tokens: number;
  private _tokensAt: number;

  constructor(mem: SimMemory, stopCopy: boolean, opts: SaverOptions) {
    this._mem = mem;
    this._opts = opts;
    this._mode = stopCopy ? MODE_STOPCOPY : MODE_PRECOPY;
    this._nextInitial = 0;
    this._dirtyBits = null;
    this._dirtyCount = 0;
    this._dirtyScan = 0;
    this._recKind = REC_RAW;
    this._recSize = 0;
    this._recOff = 0;
    this._raw = null;
    this._prefix = Buffer.alloc(RECORD_PREFIX_MAX);
    this._prefixLen = 0;
    this._idx = new Uint32Array(RUN_PAGES);
    this._ver = new Uint32Array(RUN_PAGES);
    this._count = 0;
    this._endQueued = false;
    this._scratch = Buffer.alloc(PAGE_SIZE);
    this._reinit = false;
    this._bytesRead = 0;
    this._readFailed = null;
    this._stalled = false;
    this._resetFired = false;
    this._tokens = this._burst();
    this._tokensAt = performance.now();

    // The stream opens with the match data and mlx5's optional STOP_COPY size hint.
    const meta = encodeMeta(
      { pageSize: PAGE_SIZE, pageCount: mem.pageCount, seed: mem.seed, profileCode: PROFILE_CODE[mem.profile] },
      META_BYTES + pagesBytes(mem.pageCount, PAGE_SIZE) + END_BYTES,
    );
    this._startRaw(meta);
  }

  /** Total bytes handed out so far. */
  get bytesRead(): number {
    return this._bytesRead;
  }

  /** PRE_COPY(_P2P) -> STOP_COPY: the same session now carries the final state. */
  enterStopCopy(): void {
    this._mode = MODE_STOPCOPY;
  }

  /** The memory tells us page `index` changed. */
  onDirty(index: number): void {
    if (this._mode === MODE_STOPCOPY) return; // stopped: nothing changes (defensive)
    // Not read yet: the initial pass will read its new version. Pages of the in-flight initial
    // record were snapshot and are below _nextInitial, so they are tracked.
    if (index >= this._nextInitial) return;
    let bits = this._dirtyBits;
    if (bits === null) bits = this._dirtyBits = new Uint32Array(Math.ceil(this._mem.pageCount / 32));
    const w = index >>> 5;
    const m = 1 << (index & 31);
    if ((bits[w] & m) === 0) {
      bits[w] |= m;
      this._dirtyCount++;
    }
  }

  /** VFIO_PRECOPY_INFO_REINIT: new initial data; the whole image is sent again. */
  raiseReinit(): void {
    this._nextInitial = 0;
    if (this._dirtyBits) this._dirtyBits.fill(0);
    this._dirtyCount = 0;
    this._reinit = true;
  }

  // ---- accounting (kernel definitions, exact for this format) ----

  private _unreadOf(kind: number): number {
    return this._recKind === kind && this._recOff < this._recSize ? this._recSize - this._recOff : 0;
  }

  /** initial_bytes: initial image not yet read. */
  initialBytes(): number {
    const raw = this._recKind === REC_RAW && !this._endQueued ? this._unreadOf(REC_RAW) : 0;
    return raw + this._unreadOf(REC_INITIAL) + pagesBytes(this._mem.pageCount - this._nextInitial, PAGE_SIZE);
  }

  /** dirty_bytes: data changed since it was read, not yet read again. */
  dirtyBytes(): number {
    return this._unreadOf(REC_DIRTY) + pagesBytes(this._dirtyCount, PAGE_SIZE);
  }

  /** Bytes STOP_COPY still has to produce from here (MIG_DATA_SIZE). */
  remainingBytes(): number {
    const end = this._endQueued ? this._unreadOf(REC_RAW) : END_BYTES;
    return this.initialBytes() + this.dirtyBytes() + end;
  }

  precopyInfo(): PrecopyInfo {
    const st = this._opts.state();
    if (st !== DeviceState.PRE_COPY && st !== DeviceState.PRE_COPY_P2P) {
      throw migError('EINVAL', 'precopy info is only valid in PRE_COPY or PRE_COPY_P2P');
    }
    this._opts.observe?.();
    const info = { initialBytes: this.initialBytes(), dirtyBytes: this.dirtyBytes(), reinit: this._reinit };
    this._reinit = false; // reported once, like the kernel's per-query flag
    return info;
  }

  // ---- read ----

  async read(buf: Buffer, signal: AbortSignal): Promise<number> {
    const f = this._opts.faults;
    if (this._readFailed) throw this._readFailed; // sticky, like mlx5's error state
    if (buf.length === 0) return 0; // read(2) of 0 bytes
    this._opts.observe?.();
    if (f.stallRead && !this._stalled && this._bytesRead >= (f.stallRead.afterBytes ?? 0)) {
      this._stalled = true;
      await sleepUnlessAborted(f.stallRead.ms ?? Infinity, signal); // null: JSON's Infinity
    }
    let limit = buf.length;
    if (f.readError) {
      const left = f.readError.afterBytes - this._bytesRead;
      if (left <= 0) {
        this._readFailed = migError(f.readError.code ?? 'EIO', `injected read error after ${f.readError.afterBytes} bytes`);
        throw this._readFailed;
      }
      limit = Math.min(limit, left);
    }
    if (f.resetAfterBytes !== undefined) {
      const left = f.resetAfterBytes - this._bytesRead;
      if (left <= 0) {
        this._fireReset();
        await sleepUnlessAborted(Infinity, signal); // the reset disables us: ENODEV
      }
      limit = Math.min(limit, left);
    }
    if (this._opts.generationRate > 0 && limit > 0) limit = await this._throttle(limit, signal);

    const n = this._produce(buf, limit);
    if (n === 0) {
      if (this._mode === MODE_STOPCOPY || this._opts.precopyEmpty === 'zero') return 0;
      // PRE_COPY temporary end of stream: more may come once the device dirties pages.
      throw migError('ENOMSG', 'no pre-copy data available now');
    }
    if (this._opts.generationRate > 0) this._tokens -= n;
    if (f.flipByte) {
      const at = f.flipByte.offset - this._bytesRead;
      if (at >= 0 && at < n) buf[at] ^= f.flipByte.mask ?? 0xff;
    }
    this._bytesRead += n;
    if (f.resetAfterBytes !== undefined && this._bytesRead >= f.resetAfterBytes) this._fireReset();
    return n;
  }

  private _fireReset(): void {
    if (this._resetFired) return;
    this._resetFired = true;
    // Asynchronous, like an FLR reaching reset_done: the read in progress completes first.
    setImmediate(this._opts.asyncReset);
  }

  private _burst(): number {
    return Math.max(64 * 1024, Math.floor(this._opts.generationRate / 50));
  }

  /** Wait until the token bucket allows some bytes; returns how many may be produced now. */
  private async _throttle(limit: number, signal: AbortSignal): Promise<number> {
    const rate = this._opts.generationRate;
    const burst = this._burst();
    const refill = (): void => {
      const now = performance.now();
      this._tokens = Math.min(burst, this._tokens + ((now - this._tokensAt) * rate) / 1000);
      this._tokensAt = now;
    };
    refill();
    const want = Math.min(limit, burst);
    if (this._tokens < want) {
      await sleepUnlessAborted(((want - this._tokens) * 1000) / rate, signal);
      refill();
    }
    return Math.max(1, Math.min(limit, Math.floor(this._tokens)));
  }

  private _startRaw(raw: Buffer): void {
    this._recKind = REC_RAW;
    this._raw = raw;
    this._recSize = raw.length;
    this._recOff = 0;
  }

  /** Start the next record; false when there is nothing to send now. */
  private _nextRecord(): boolean {
    const mem = this._mem;
    if (this._nextInitial < mem.pageCount) {
      const first = this._nextInitial;
      const count = Math.min(RUN_PAGES, mem.pageCount - first);
      for (let i = 0; i < count; i++) this._idx[i] = first + i;
      mem.versionsInto(first, count, this._ver);
      this._nextInitial = first + count;
      this._startPages(REC_INITIAL, count);
      return true;
    }
    if (this._dirtyCount > 0) {
      this._startPages(REC_DIRTY, this._takeDirty());
      return true;
    }
    if (this._mode === MODE_STOPCOPY && !this._endQueued) {
      this._endQueued = true;
      const d = mem.digestParts();
      this._startRaw(encodeEnd(mem.pageCount, d.hi, d.lo));
      return true;
    }
    return false;
  }

  /** Move up to RUN_PAGES dirty pages into the record arrays, clearing their bits. */
  private _takeDirty(): number {
    const bits = this._dirtyBits as Uint32Array;
    const words = bits.length;
    const mem = this._mem;
    let count = 0;
    let w = this._dirtyScan;
    for (let scanned = 0; scanned <= words && count < RUN_PAGES; scanned++) {
      if (w >= words) w = 0;
      let word = bits[w];
      while (word !== 0 && count < RUN_PAGES) {
        const bit = 31 - Math.clz32(word & -word);
        word &= ~(1 << bit);
        const index = w * 32 + bit; // not (w << 5): indices reach 2^32 - 1
        this._idx[count] = index;
        this._ver[count] = mem.version(index);
        count++;
      }
      bits[w] = word;
      if (word === 0) w++;
    }
    this._dirtyScan = w;
    this._dirtyCount -= count;
    return count;
  }

  private _startPages(kind: number, count: number): void {
    const p = this._prefix;
    const payload = PAGES_PREFIX + count * (PAGE_DESC + PAGE_SIZE);
    writeRecordHeader(p, 0, payload, 0, TAG_PAGES);
    p.writeUInt32LE(count, REC_HEADER_BYTES);
    p.writeUInt32LE(0, REC_HEADER_BYTES + 4);
    let o = REC_HEADER_BYTES + PAGES_PREFIX;
    for (let i = 0; i < count; i++, o += PAGE_DESC) {
      p.writeUInt32LE(this._idx[i], o);
      p.writeUInt32LE(this._ver[i], o + 4);
    }
    this._prefixLen = o;
    this._recKind = kind;
    this._raw = null;
    this._count = count;
    this._recSize = REC_HEADER_BYTES + payload;
    this._recOff = 0;
  }

  /** Fill buf[0 .. limit) as far as data allows; returns the byte count. */
  private _produce(buf: Buffer, limit: number): number {
    let pos = 0;
    const gen = this._mem.gen;
    while (pos < limit) {
      if (this._recOff >= this._recSize && !this._nextRecord()) break;
      if (this._raw !== null) {
        const n = Math.min(limit - pos, this._recSize - this._recOff);
        this._raw.copy(buf, pos, this._recOff, this._recOff + n);
        pos += n;
        this._recOff += n;
        continue;
      }
      if (this._recOff < this._prefixLen) {
        const n = Math.min(limit - pos, this._prefixLen - this._recOff);
        this._prefix.copy(buf, pos, this._recOff, this._recOff + n);
        pos += n;
        this._recOff += n;
        continue;
      }
      const dataOff = this._recOff - this._prefixLen;
      const k = dataOff >>> 12;
      const inPage = dataOff & (PAGE_SIZE - 1);
      if (inPage === 0 && limit - pos >= PAGE_SIZE) {
        // Fast path: whole pages generated straight into the caller's buffer, a run per call.
        const pages = Math.min(this._count - k, Math.floor((limit - pos) / PAGE_SIZE));
        gen.writePages(buf, pos, this._idx, this._ver, k, pages);
        pos += pages * PAGE_SIZE;
        this._recOff += pages * PAGE_SIZE;
      } else {
        // Slow path: a page split across reads is generated in scratch and copied in part.
        gen.writePage(this._scratch, 0, this._idx[k], this._ver[k]);
        const n = Math.min(limit - pos, PAGE_SIZE - inPage);
        this._scratch.copy(buf, pos, inPage, inPage + n);
        pos += n;
        this._recOff += n;
      }
    }
    return pos;
  }
}
