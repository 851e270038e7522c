/**
 * The resuming side of a SimDevice session: parses sim-format.ts records incrementally inside
 * write(), in any segmentation, like mlx5's resume state machine.
 *
 * Errors follow the kernel drivers: malformed framing -> EINVAL; a record too large -> ENOMEM;
 * an unknown mandatory tag -> EOPNOTSUPP (optional ones are skipped); match data that differs from
 * this device, a page whose content is not what (seed, index, version) produces, or a digest that
 * does not match -> EFAULT. Any error is sticky: later writes fail with ENODEV (mlx5 puts the file in
 * an error state). Loaded versions are kept apart and replace the device's state only when RESUMING ->
 * STOP succeeds.
 */
import { migError } from '../fsm/errors.js';
import type { ResumingBackend } from './method-session.js';
import { DigestAccumulator, PageVersions, type SimMemory } from './sim-memory.js';
import { PAGE_SIZE, PROFILE_CODE } from './sim-pages.js';
import {
  END_PAYLOAD,
  HEADER_PAYLOAD,
  MAX_RECORD_PAGES,
  PAGES_PREFIX,
  PAGE_DESC,
  REC_FLAG_OPTIONAL,
  REC_HEADER_BYTES,
  SIM_MAGIC_HI,
  SIM_MAGIC_LO,
  SIM_VERSION_MAJOR,
  STOP_COPY_SIZE_PAYLOAD,
  TAG_END,
  TAG_HEADER,
  TAG_PAGES,
  TAG_STOP_COPY_SIZE,
  readU64,
} from './sim-format.js';

export interface LoaderFaults {
  writeError?: { afterBytes: number; code?: string };
}

const P_HDR = 0; // collecting a 16-byte record header
const P_FIXED = 1; // collecting a small fixed payload (HEADER, STOP_COPY_SIZE, END)
const P_PAGES_PREFIX = 2; // u32 count, u32 reserved
const P_PAGES_DESC = 3; // count x {index, version}
const P_PAGES_DATA = 4; // count x 4096
const P_SKIP = 5; // an optional record of unknown tag
const P_DONE = 6; // END was loaded: nothing may follow

const ACC_BYTES = Math.max(HEADER_PAYLOAD, PAGES_PREFIX + MAX_RECORD_PAGES * PAGE_DESC);

export class SimLoader implements ResumingBackend {
  private readonly _mem: SimMemory;
  private readonly _faults: LoaderFaults;
  private _phase: number;
  private readonly _hdr: Buffer;
  private _hdrFill: number;
  private _recSize: number;
  private _recTag: number;
  private _skipLeft: number;
  private readonly _acc: Buffer;
  private _accFill: number;
  private _accNeed: number;
  private _count: number;
  private readonly _idx: Uint32Array;
  private readonly _ver: Uint32Array;
  private _page: number;
  private _inPage: number;
  private readonly _scratch: Buffer;

  private _sawHeader: boolean;
  private _endPageCount: number;
  private _received: Uint32Array | null;
  private _receivedCount: number;
  private readonly _loaded: PageVersions;
  private readonly _digest: DigestAccumulator;
  private _failed: Error | null;
  private _bytesWritten: number;

  constructor(mem: SimMemory, faults: LoaderFaults = {}) {
    this._mem = mem;
    this._faults = faults;
    this._phase = P_HDR;
    this._hdr = Buffer.alloc(REC_HEADER_BYTES);
    this._hdrFill = 0;
    this._recSize = 0;
    this._recTag = 0;
    this._skipLeft = 0;
    this._acc = Buffer.alloc(ACC_BYTES);
    this._accFill = 0;
    this._accNeed = 0;
    this._count = 0;
    this._idx = new Uint32Array(MAX_RECORD_PAGES);
    this._ver = new Uint32Array(MAX_RECORD_PAGES);
    this._page = 0;
    this._inPage = 0;
    this._scratch = Buffer.alloc(PAGE_SIZE);
    this._sawHeader = false;
    this._endPageCount = -1;
    this._received = null;
    this._receivedCount = 0;
    this._loaded = new PageVersions();
    this._digest = new DigestAccumulator(mem.seed);
    this._failed = null;
    this._bytesWritten = 0;
  }

  get bytesWritten(): number {
    return this._bytesWritten;
  }

  /** True when the image is complete and consistent: END arrived and every page was loaded. */
  get complete(): boolean {
    return (
      this._failed === null &&
      this._phase === P_DONE &&
      this._endPageCount === this._mem.pageCount &&
      this._receivedCount === this._mem.pageCount
    );
  }

  /** Why the image is not complete (for the RESUMING -> STOP error). */
  incompleteReason(): string {
    if (this._failed) return `the stream failed: ${this._failed.message}`;
    if (this._phase !== P_DONE) return 'no END record';
    if (this._endPageCount !== this._mem.pageCount) {
      return `END carries ${this._endPageCount} pages, the device has ${this._mem.pageCount}`;
    }
    return `${this._receivedCount} of ${this._mem.pageCount} pages received`;
  }

  /** Make the loaded state the device's state (successful RESUMING -> STOP). */
  commit(): void {
    this._mem.replace(this._loaded, this._digest.hi, this._digest.lo);
  }

  write(buf: Buffer): number {
    if (this._failed) throw migError('ENODEV', 'resume stream is in error state', { cause: this._failed });
    let limit = buf.length;
    const wf = this._faults.writeError;
    if (wf) {
      const left = wf.afterBytes - this._bytesWritten;
      if (left <= 0) {
        this._failed = migError(wf.code ?? 'EIO', `injected write error after ${wf.afterBytes} bytes`);
        throw this._failed;
      }
      limit = Math.min(limit, left);
    }
    try {
      this._consume(buf, limit);
    } catch (err) {
      this._failed = err as Error;
      throw err;
    }
    this._bytesWritten += limit;
    return limit;
  }

  private _fail(code: string, message: string): never {
    throw migError(code, message, { detail: { offset: this._bytesWritten } });
  }

  private _consume(buf: Buffer, end: number): void {
    let pos = 0;
    while (pos < end) {
      switch (this._phase) {
        case P_HDR: {
          const n = Math.min(end - pos, REC_HEADER_BYTES - this._hdrFill);
          buf.copy(this._hdr, this._hdrFill, pos, pos + n);
          this._hdrFill += n;
          pos += n;
          if (this._hdrFill === REC_HEADER_BYTES) {
            this._hdrFill = 0;
            this._onRecordHeader();
          }
          break;
        }
        case P_FIXED:
        case P_PAGES_PREFIX:
        case P_PAGES_DESC: {
          const n = Math.min(end - pos, this._accNeed - this._accFill);
          buf.copy(this._acc, this._accFill, pos, pos + n);
          this._accFill += n;
          pos += n;
          if (this._accFill === this._accNeed) this._onAccumulated();
          break;
        }
        case P_PAGES_DATA: {
          if (this._inPage === 0 && end - pos >= PAGE_SIZE) {
            // Fast path: verify whole pages in place, no copy, as many as this write holds in one call.
            const k = this._page;
            const pages = Math.min(this._count - k, Math.floor((end - pos) / PAGE_SIZE));
            const good = this._mem.gen.verifyPages(buf, pos, this._idx, this._ver, k, pages);
            for (let j = 0; j < good; j++) this._accept();
            if (good < pages) this._mismatch();
            pos += pages * PAGE_SIZE;
          } else {
            // Slow path: a page split across writes is gathered in scratch first.
            const n = Math.min(end - pos, PAGE_SIZE - this._inPage);
            buf.copy(this._scratch, this._inPage, pos, pos + n);
            this._inPage += n;
            pos += n;
            if (this._inPage === PAGE_SIZE) {
              this._inPage = 0;
              this._loadPage(this._scratch, 0);
            }
          }
          break;
        }
        case P_SKIP: {
          const n = Math.min(end - pos, this._skipLeft);
          this._skipLeft -= n;
          pos += n;
          if (this._skipLeft === 0) this._phase = P_HDR;
          break;
        }
        default:
          this._fail('EINVAL', 'data after the END record');
      }
    }
  }

  private _expect(need: number, phase: number): void {
    this._accFill = 0;
    this._accNeed = need;
    this._phase = phase;
  }

  private _onRecordHeader(): void {
    const h = this._hdr;
    const hi = h.readUInt32LE(4);
    const flags = h.readUInt32LE(8);
    const tag = h.readUInt32LE(12);
    // mlx5 refuses a record its firmware cannot take in one load (size field is 32-bit).
    if (hi !== 0) this._fail('ENOMEM', `record of ${readU64(h, 0)} bytes is too large`);
    const size = h.readUInt32LE(0);
    if ((flags & ~REC_FLAG_OPTIONAL) !== 0) this._fail('EINVAL', `unknown record flags 0x${flags.toString(16)}`);
    if (!this._sawHeader && tag !== TAG_HEADER) this._fail('EINVAL', `stream must start with a HEADER record (got tag ${tag})`);
    this._recSize = size;
    this._recTag = tag;
    switch (tag) {
      case TAG_HEADER:
        if (this._sawHeader) this._fail('EINVAL', 'second HEADER record');
        if (size !== HEADER_PAYLOAD) this._fail('EINVAL', `HEADER record of ${size} bytes`);
        return this._expect(size, P_FIXED);
      case TAG_STOP_COPY_SIZE:
        if (size !== STOP_COPY_SIZE_PAYLOAD) this._fail('EINVAL', `STOP_COPY_SIZE record of ${size} bytes`);
        return this._expect(size, P_FIXED);
      case TAG_END:
        if (size !== END_PAYLOAD) this._fail('EINVAL', `END record of ${size} bytes`);
        return this._expect(size, P_FIXED);
      case TAG_PAGES:
        if (size > PAGES_PREFIX + MAX_RECORD_PAGES * (PAGE_DESC + PAGE_SIZE)) {
          this._fail('ENOMEM', `PAGES record of ${size} bytes exceeds ${MAX_RECORD_PAGES} pages`);
        }
        if (size < PAGES_PREFIX + PAGE_DESC + PAGE_SIZE) this._fail('EINVAL', `PAGES record of ${size} bytes`);
        return this._expect(PAGES_PREFIX, P_PAGES_PREFIX);
      default:
        // mlx5: unknown optional records are skipped, unknown mandatory ones are refused.
        if ((flags & REC_FLAG_OPTIONAL) === 0) this._fail('EOPNOTSUPP', `unknown mandatory record tag ${tag}`);
        this._skipLeft = size;
        this._phase = size === 0 ? P_HDR : P_SKIP;
    }
  }

  private _onAccumulated(): void {
    const a = this._acc;
    if (this._phase === P_PAGES_PREFIX) {
      const count = a.readUInt32LE(0);
      if (a.readUInt32LE(4) !== 0) this._fail('EINVAL', 'PAGES reserved field is not 0');
      if (count === 0 || PAGES_PREFIX + count * (PAGE_DESC + PAGE_SIZE) !== this._recSize) {
        this._fail('EINVAL', `PAGES record of ${this._recSize} bytes cannot carry ${count} pages`);
      }
      this._count = count;
      return this._expect(count * PAGE_DESC, P_PAGES_DESC);
    }
    if (this._phase === P_PAGES_DESC) {
      const pages = this._mem.pageCount;
      for (let i = 0, o = 0; i < this._count; i++, o += PAGE_DESC) {
        const index = a.readUInt32LE(o);
        if (index >= pages) this._fail('EINVAL', `page index ${index} beyond the device's ${pages} pages`);
        this._idx[i] = index;
        this._ver[i] = a.readUInt32LE(o + 4);
      }
      this._page = 0;
      this._inPage = 0;
      this._phase = P_PAGES_DATA;
      return;
    }
    switch (this._recTag) {
      case TAG_HEADER:
        this._checkHeader(a);
        this._sawHeader = true;
        break;
      case TAG_END: {
        const pageCount = readU64(a, 0);
        const lo = a.readUInt32LE(8);
        const hi = a.readUInt32LE(12);
        const d = this._mem.digestWith(this._digest.hi, this._digest.lo);
        if (d.hi !== hi || d.lo !== lo) this._fail('EFAULT', 'digest of the loaded state differs from the source');
        this._endPageCount = pageCount;
        this._phase = P_DONE;
        return;
      }
      default:
        break; // STOP_COPY_SIZE: a hint; nothing to prepare here
    }
    this._phase = P_HDR;
  }

  /** Match data, checked once like mtty's header and hisi's match data: mismatch -> EFAULT. */
  private _checkHeader(a: Buffer): void {
    const mem = this._mem;
    if (a.readUInt32LE(0) !== SIM_MAGIC_LO || a.readUInt32LE(4) !== SIM_MAGIC_HI) this._fail('EFAULT', 'bad magic');
    if (a.readUInt16LE(8) !== SIM_VERSION_MAJOR) this._fail('EFAULT', `stream major version ${a.readUInt16LE(8)} unsupported`);
    if (a.readUInt32LE(12) !== PAGE_SIZE) this._fail('EFAULT', `page size ${a.readUInt32LE(12)}`);
    const pageCount = readU64(a, 16);
    if (pageCount !== mem.pageCount) this._fail('EFAULT', `stream has ${pageCount} pages, device ${mem.pageCount}`);
    if (a.readUInt32LE(24) !== mem.seed) this._fail('EFAULT', `stream seed ${a.readUInt32LE(24)}, device ${mem.seed}`);
    if (a.readUInt32LE(28) !== PROFILE_CODE[mem.profile]) this._fail('EFAULT', `stream profile ${a.readUInt32LE(28)} differs`);
  }

  private _loadPage(src: Buffer, off: number): void {
    const k = this._page;
    if (!this._mem.gen.verifyPage(src, off, this._idx[k], this._ver[k])) this._mismatch();
    this._accept();
  }

  /** The current page's content differs from the generator's: fail naming it. */
  private _mismatch(): never {
    const k = this._page;
    this._fail('EFAULT', `page ${this._idx[k]} version ${this._ver[k]}: content differs from the generator`);
  }

  /** The current page was verified: count it as loaded and move to the next. */
  private _accept(): void {
    const k = this._page;
    const index = this._idx[k];
    const version = this._ver[k];
    const old = this._loaded.set(index, version);
    this._digest.change(index, old, version);
    let bits = this._received;
    if (bits === null) bits = this._received = new Uint32Array(Math.ceil(this._mem.pageCount / 32));
    const w = index >>> 5;
    const m = 1 << (index & 31);
    if ((bits[w] & m) === 0) {
      bits[w] |= m;
      this._receivedCount++;
    }
    this._page = k + 1;
    if (this._page === this._count) this._phase = P_HDR;
  }
}
