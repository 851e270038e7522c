/**
 * RecordDecoder: wire bytes in, record objects out (a Transform whose readable side is in object mode).
 *
 * The first object out is the stream header ({ type: RecordType.STREAM_HEADER, header }; also the
 * 'header' event). Then one object per record, each emitted only after every check passed: header crc,
 * bounds (before anything is allocated for the record), sequence, payload crc, decompression to
 * exactly the declared size, per-device byte counts and digests. The first bad record fails the stream
 * with a typed MigError and nothing after it is emitted.
 *
 * Zero-copy: a record lying inside one input chunk is emitted as a `subarray` view of that chunk; only
 * records spanning chunks are copied, once, into an exactly sized buffer (ws `consume`). Consecutive
 * views of one buffer (a pipe filling FdSource's chunk 64 KiB at a time) count as one chunk. Input chunks
 * must therefore not be modified after they are written (Node's usual rule). A compressed frame that
 * spans chunks is gathered into a scratch buffer the decoder owns and reuses: the frame is read only
 * while its record is decoded (synchronously, before the next record) and never handed out (with a
 * `pool`, a frame bound for a worker is gathered in memory the pool lends instead).
 *
 * Piped from a source that takes its chunks back (INPUT_RELEASE: ChunkSource and FdSource with
 * `recycle`), the decoder gives each input chunk back once it is done with it: every byte parsed,
 * no payload handed out as a view of it still held (given back with release(), the `recycle`
 * option; one never given back keeps its chunk from reuse), no frame of it still in a worker. The
 * source then reads into memory already mapped instead of fresh pages.
 *
 * With a `pool`, large compressed frames decompress in its worker threads while the decoder goes on
 * parsing: the records after such a frame wait in a FIFO (bounded by `maxPendingBytes`) and every
 * check that depends on order (byte counts, digests, STREAM_END) runs as each record leaves it, so
 * what comes out, and the first error, are exactly what the synchronous decoder produces.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { crc32 } from './crc32.js';
import { migError, ErrorCodes, MigError } from '../fsm/errors.js';
import {
  RecordType,
  RecordFlags,
  Features,
  NO_DEVICE,
  RECORD_HEADER_SIZE,
  STREAM_HEADER_SIZE,
  decodeStreamHeaderFixed,
  parseStreamHeaderBody,
  decodeRecordHeader,
  decodeRoundPayload,
  decodeDeviceEndPayload,
  decodeStreamEndPayload,
  recordTypeName,
  createDataDigest,
  digestAvailable,
  type DataDigest,
  type StreamHeader,
  type StreamHeaderFixed,
  type RecordHeader,
  type WireRecord,
  type DecodedObject,
} from './wire-format.js';
import { zstd, type CompressionPool } from './compression-pool.js';
import { inputReleaseHook, readTargetHook, type InputReleaseHook, type ReadTargetProvider } from './read-target.js';
import { MAX_FREE_BYTES, MIN_FREE_CHUNKS } from './chunk-loans.js';

export interface RecordDecoderOptions {
  /** Largest payload accepted, on the wire and once decompressed. Default 16 MiB. */
  maxPayload?: number;
  /** Largest record held across input chunks (a record spanning chunks is buffered whole). Default maxPayload + 28. */
  maxQueuedBytes?: number;
  /** Largest device table. Default 256. */
  maxDevices?: number;
  /** Largest stream header body (JSON). Default 1 MiB. */
  maxHeaderBytes?: number;
  /** Largest CONTROL payload (JSON). Default 1 MiB. */
  maxControlBytes?: number;
  /** Input ending without a STREAM_END record is TRUNCATED. Default true. */
  requireEnd?: boolean;
  /** Verify DEVICE_END digests when the stream header names an algorithm. Default true. */
  verifyDigest?: boolean;
  /** Readable side highWaterMark in records. Default 16. */
  readableHighWaterMark?: number;
  /**
   * Byte cap on emitted records not yet read (the readable highWaterMark counts objects, not bytes):
   * above it the decoder takes no more input until the reader catches up. Default 4 MiB: a deeper
   * queue only adds payloads in flight, each in memory of its own (fresh pages, once), while the
   * reader sets the pace anyway (docs/PERFORMANCE.md, zstd-*).
   */
  maxOutputBytes?: number;
  /**
   * The consumer gives DATA payloads back with release() once done with them (written to the
   * device), and the decoder reuses their memory for later records that span input chunks or arrive
   * compressed. Default false: every such payload is a new buffer and release() refuses everything.
   */
  recycle?: boolean;
  /**
   * Decompress frames of `poolMinBytes` raw bytes or more in this pool's workers, in parallel with
   * the parsing and with each other, instead of on the event loop. Until a worker has booted (the
   * first such frame calls warm()) frames still decompress here. A frame within one input chunk goes
   * as it is (read in place when the chunk is shared memory: a source with `sharedMemory`, else
   * copied into a slab by the pool); a frame spanning chunks is assembled in memory the pool lends
   * (`lend()`; with read targets the source reads the rest of it straight in), given back once
   * decompressed. Default none.
   */
  pool?: CompressionPool | null;
  /** Smallest raw length sent to the pool: a smaller frame costs less here than a round trip. Default 64 KiB. */
  poolMinBytes?: number;
  /**
   * Byte cap (raw lengths) on records parsed but not yet emitted, waiting behind a frame in the pool:
   * above it the decoder takes no more input. Default 8 MiB.
   */
  maxPendingBytes?: number;
  /**
   * Offer read targets to a source piped into the decoder that takes them (src/streams/read-target.ts;
   * the unix and tcp transports' accepted sockets): the rest of a DATA payload that spans reads is
   * read straight into the buffer it is handed out in (a compressed frame into the buffer it is
   * decompressed from: the decoder's scratch, or memory a `pool` lends), and after a large record
   * the next header is read alone. Default true.
   */
  readTargets?: boolean;
}

/** A record parsed and checked, waiting for a decompression ahead of it (or its own) to finish. */
interface Pending {
  /** Null for an error entry. */
  h: RecordHeader | null;
  /** Stream offset of the record (error details). */
  offset: number;
  /** The payload, once there (null while its frame is in the pool). */
  payload: Buffer | null;
  /** The record failed (a decompression, or the parser at this point of the stream). */
  error: Error | null;
  /** Raw bytes it holds, counted in #pendingBytes. */
  bytes: number;
}

/** An input chunk a source wants back (INPUT_RELEASE), until the decoder is done with it. */
interface InputChunk {
  chunk: Buffer;
  /** Stream offset just past its last byte. */
  end: number;
  /** Payload views and pool frames that point into it and are still out. */
  refs: number;
  /** Every byte of it parsed. */
  parsed: boolean;
  give: InputReleaseHook;
}

/**
 * After a DATA payload of at least this size, a source taking read targets is asked to read the next
 * record header alone (one more read per record, so only where records are large): the payload after
 * it then goes straight to its buffer instead of partly into the source's memory and a copy.
 */
const HEADER_ALONE_AFTER = 64 * 1024;

// Parser states (ws Receiver style: one integer, fields set in the constructor in one order).
const S_PREAMBLE = 0;
const S_PREAMBLE_BODY = 1;
const S_HEADER = 2;
const S_PAYLOAD = 3;
const S_DONE = 4;
const S_ERRORED = 5;

interface DeviceTrack {
  bytes: number;
  hash: DataDigest | null;
  ended: boolean;
}

export class RecordDecoder extends Transform {
  /** The stream header once decoded. */
  header: StreamHeader | null;
  /** Bytes received. */
  bytesIn: number;
  /** Records emitted (stream header excluded). */
  records: number;
  /** Optional records of unknown types that were skipped. */
  skippedRecords: number;
  /** Raw DATA bytes emitted. */
  dataBytes: number;
  readonly maxPayload: number;
  readonly maxQueuedBytes: number;
  readonly maxDevices: number;
  readonly maxHeaderBytes: number;
  readonly maxControlBytes: number;
  readonly requireEnd: boolean;
  readonly verifyDigest: boolean;
  readonly maxOutputBytes: number;
  readonly maxPendingBytes: number;
  readonly poolMinBytes: number;
  #pool: CompressionPool | null;
  /** Records parsed but not emitted, in stream order (only with a pool; empty otherwise). */
  #pending: Pending[];
  #pendingBytes: number;
  /** _flush's callback, held until the records in #pending are out. */
  #flushCallback: TransformCallback | null;
  #state: number;
  #buffers: Buffer[];
  #buffered: number;
  /** Stream offset of the next byte to parse (for error details). */
  #offset: number;
  #fixed: StreamHeaderFixed | null;
  #record: RecordHeader | null;
  #recordOffset: number;
  #expectSeq: number;
  #tracks: DeviceTrack[];
  #dctx: InstanceType<typeof zstd.DCtx> | null;
  /**
   * Owned by the decoder: holds a compressed frame (or a skipped record) that spanned input chunks,
   * from #consume until #emitRecord returns; reused for the next one. Nothing handed out points into
   * it. Grows to the largest such frame, at most maxPayload.
   */
  #scratch: Buffer | null;
  /** Payload bytes of records sitting in the readable buffer. */
  #outputBytes: number;
  /** A write held while #outputBytes is over maxOutputBytes, released by read(). */
  #heldCallback: TransformCallback | null;
  /** With `recycle`: payload buffers this decoder allocated and handed out, not yet released. */
  #lent: WeakSet<Buffer> | null;
  /** With `recycle`: released payload buffers by length, reused before any new allocation. */
  #free: Map<number, Buffer[]>;
  /** Bytes in #free. */
  #freeBytes: number;
  /**
   * The payload (or compressed frame) of the current DATA record, assembled as its bytes arrive once
   * they span input chunks (a copy was due anyway, or a source read into it); null otherwise. While it is
   * set, #buffered counts its #asmFill bytes and #buffers holds only bytes after it.
   */
  #asm: Buffer | null;
  #asmFill: number;
  /** #asm is memory the pool lent (a compressed frame bound for a worker), not #scratch. */
  #asmLent: boolean;
  /** Payload length of the last record parsed (is the next header read alone?). */
  #lastPayload: number;
  /** The piped source's INPUT_RELEASE, or null: then no input chunk is tracked. */
  #giveInput: InputReleaseHook | null;
  /** Input chunks not yet wholly parsed, in stream order, from #inputHead on. */
  #inputs: InputChunk[];
  #inputHead: number;
  /** Zero-copy payloads handed out, to the input chunks they point into (released with release()). */
  #pins: WeakMap<Buffer, InputChunk[]>;
  /** The last #consume() returned a view of the input (no copy). */
  #viewOut: boolean;

  constructor(opts: RecordDecoderOptions = {}) {
    super({
      writableObjectMode: false,
      readableObjectMode: true,
      readableHighWaterMark: opts.readableHighWaterMark ?? 16,
    });
    this.header = null;
    this.bytesIn = 0;
    this.records = 0;
    this.skippedRecords = 0;
    this.dataBytes = 0;
    this.maxPayload = opts.maxPayload ?? 16 * 1024 * 1024;
    this.maxQueuedBytes = opts.maxQueuedBytes ?? this.maxPayload + RECORD_HEADER_SIZE;
    this.maxDevices = opts.maxDevices ?? 256;
    this.maxHeaderBytes = opts.maxHeaderBytes ?? 1024 * 1024;
    this.maxControlBytes = opts.maxControlBytes ?? 1024 * 1024;
    this.requireEnd = opts.requireEnd ?? true;
    this.verifyDigest = opts.verifyDigest ?? true;
    this.maxOutputBytes = opts.maxOutputBytes ?? 4 * 1024 * 1024;
    this.maxPendingBytes = opts.maxPendingBytes ?? 8 * 1024 * 1024;
    this.poolMinBytes = opts.poolMinBytes ?? 64 * 1024;
    this.#pool = opts.pool ?? null;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#flushCallback = null;
    this.#state = S_PREAMBLE;
    this.#buffers = [];
    this.#buffered = 0;
    this.#offset = 0;
    this.#fixed = null;
    this.#record = null;
    this.#recordOffset = 0;
    this.#expectSeq = 0;
    this.#tracks = [];
    this.#dctx = null;
    this.#scratch = null;
    this.#outputBytes = 0;
    this.#heldCallback = null;
    this.#lent = opts.recycle === true ? new WeakSet() : null;
    this.#free = new Map();
    this.#freeBytes = 0;
    this.#asm = null;
    this.#asmFill = 0;
    this.#asmLent = false;
    this.#lastPayload = 0;
    this.#giveInput = null;
    this.#inputs = [];
    this.#inputHead = 0;
    this.#pins = new WeakMap();
    this.#viewOut = false;
    this.on('pipe', (src: unknown) => (this.#giveInput = inputReleaseHook(src)));
    this.on('unpipe', () => (this.#giveInput = null));
    if (opts.readTargets ?? true) {
      const provider: ReadTargetProvider = (pushed) => this.#readTarget(pushed);
      this.on('pipe', (src: unknown) => readTargetHook(src)?.(provider));
      this.on('unpipe', (src: unknown) => readTargetHook(src)?.(null));
    }
  }

  /**
   * With the `recycle` option: give back a DATA payload this decoder allocated, once its bytes are
   * no longer needed (the device took them). Its memory then holds a later payload instead of fresh
   * memory, which costs a page fault per 4 KiB on first touch. After release() the caller must not
   * touch the payload. A payload that is a view of an input chunk (zero-copy) lets that chunk go back
   * to a source that takes chunks back (INPUT_RELEASE); any other source's memory is not ours: false.
   * Returns false (and does nothing) for one already released or any other buffer.
   */
  release(payload: Buffer): boolean {
    const pinned = this.#pins.get(payload);
    if (pinned !== undefined) {
      this.#pins.delete(payload);
      this.#unpin(pinned);
      return true;
    }
    if (this.#lent === null || !this.#lent.has(payload)) return false;
    this.#lent.delete(payload);
    if (this.destroyed) return true;
    let list = this.#free.get(payload.length);
    if (list === undefined) {
      list = [];
      this.#free.set(payload.length, list);
    }
    // ChunkSource's bound (MAX_FREE_BYTES, at least MIN_FREE_CHUNKS per size): releases come in
    // bursts, and with 4 per size the bench's zstd decoder child decompressed a third of its
    // payloads into fresh memory (20k of its 21k page faults were zstd writing output).
    if (list.length < MIN_FREE_CHUNKS || this.#freeBytes + payload.length <= MAX_FREE_BYTES) {
      list.push(payload);
      this.#freeBytes += payload.length;
    }
    return true;
  }

  /** A released buffer of exactly `n` bytes, if one is kept. */
  #takeFree(n: number): Buffer | undefined {
    const out = this.#free.get(n)?.pop();
    if (out !== undefined) this.#freeBytes -= n;
    return out;
  }

  /** A buffer of `n` bytes for a payload handed out: a released one of that size when recycling. */
  #payloadBuffer(n: number): Buffer {
    if (this.#lent === null) return Buffer.allocUnsafe(n);
    const out = this.#takeFree(n) ?? Buffer.allocUnsafeSlow(n);
    this.#lent.add(out);
    return out;
  }

  /**
   * Every consumer (flowing mode, pipe, async iteration, read()) takes buffered records through read():
   * account their bytes here and let a held write proceed once under the cap. Records handed straight
   * to a flowing reader never enter the buffer and are never counted.
   */
  override read(size?: number): any {
    const obj = super.read(size) as DecodedObject | null;
    if (obj !== null && obj.type === RecordType.DATA && this.#outputBytes > 0) {
      this.#outputBytes -= obj.payload.length;
      this.#releaseInput();
    }
    return obj;
  }

  /** Over a cap (records not read, or records waiting for the pool): hold the input. */
  #overCap(): boolean {
    return this.#outputBytes > this.maxOutputBytes || this.#pendingBytes > this.maxPendingBytes;
  }

  /** Let a held write proceed once both caps are met again (never one held for a parse error). */
  #releaseInput(): void {
    const cb = this.#heldCallback;
    if (cb === null || this.#state === S_ERRORED || this.#overCap()) return;
    this.#heldCallback = null;
    cb();
  }

  override _destroy(err: Error | null, cb: (error: Error | null) => void): void {
    this.#heldCallback = null;
    this.#flushCallback = null;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#buffers = [];
    this.#buffered = 0;
    this.#asm = null;
    this.#scratch = null;
    this.#free.clear();
    this.#freeBytes = 0;
    cb(err);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#state === S_ERRORED) {
      cb();
      return;
    }
    this.bytesIn += chunk.length;
    if (chunk.length === 0) {
      cb();
      return;
    }
    try {
      if (this.#state === S_DONE) throw migError(ErrorCodes.CORRUPT, `${chunk.length} bytes after STREAM_END`, { detail: { offset: this.#offset } });
      // Bytes a source read into our own buffer (a read target) are not its memory to take back.
      const give = this.#giveInput;
      if (give !== null && (this.#asm === null || chunk.buffer !== this.#asm.buffer)) {
        this.#inputs.push({ chunk, end: this.bytesIn, refs: 0, parsed: false, give });
      }
      this.#append(chunk);
      this.#parse();
      if (this.#inputs.length > 0) this.#freeInputs();
    } catch (err) {
      if (this.#pending.length === 0) {
        this.#fail(err, cb);
        return;
      }
      // Records before the bad one are still in the pool: the error takes its place in the line,
      // and this write's callback carries it once they are out.
      this.#pending.push({ h: null, offset: this.#offset, payload: null, error: asError(err), bytes: 0 });
      this.#state = S_ERRORED;
      this.#buffers = [];
      this.#buffered = 0;
      this.#asm = null;
      this.#heldCallback = cb;
      return;
    }
    if (this.#overCap()) this.#heldCallback = cb;
    else cb();
  }

  override _flush(cb: TransformCallback): void {
    if (this.#pending.length > 0) {
      // Whether the input ended early is known now, but said after the records still in the pool.
      this.#flushCallback = cb;
      return;
    }
    if (this.#state === S_ERRORED || this.#state === S_DONE) {
      cb();
      return;
    }
    const midRecord = this.#buffered > 0 || this.#state === S_PREAMBLE_BODY || this.#state === S_PAYLOAD;
    if (!midRecord && !this.requireEnd) {
      cb();
      return;
    }
    const what = midRecord
      ? this.#state === S_PREAMBLE || this.#state === S_PREAMBLE_BODY
        ? 'in the stream header'
        : 'in the middle of a record'
      : this.#state === S_PREAMBLE
        ? 'before the stream header'
        : 'without a STREAM_END record';
    this.#fail(
      migError(ErrorCodes.TRUNCATED, `wire stream ended ${what}`, {
        detail: { offset: this.#offset, buffered: this.#buffered, records: this.records },
      }),
      cb,
    );
  }

  #fail(err: unknown, cb: TransformCallback): void {
    this.#state = S_ERRORED;
    this.#buffers = [];
    this.#buffered = 0;
    this.#asm = null;
    this.#scratch = null;
    this.#pending = [];
    this.#pendingBytes = 0;
    cb(asError(err));
  }

  /**
   * Emit the records at the head of #pending whose payloads are there, in order; called as each
   * decompression in the pool settles. An error at the head fails the stream through the callback
   * held for it (a write's, or _flush's), or by destroying the stream when none is held.
   */
  #drainPending(): void {
    const list = this.#pending;
    while (list.length > 0 && !this.destroyed) {
      const p = list[0]!;
      if (p.payload === null && p.error === null) break;
      list.shift();
      this.#pendingBytes -= p.bytes;
      let err = p.error;
      if (err === null) {
        try {
          this.#finish(p.h!, p.payload!, p.offset);
        } catch (e) {
          err = asError(e);
        }
      }
      if (err !== null) {
        const cb = this.#heldCallback ?? this.#flushCallback;
        this.#heldCallback = null;
        this.#flushCallback = null;
        if (cb !== null) this.#fail(err, cb);
        else this.#fail(err, (e) => this.destroy(e ?? undefined));
        return;
      }
    }
    if (list.length > 0 || this.destroyed) return;
    const flush = this.#flushCallback;
    if (flush !== null) {
      this.#flushCallback = null;
      this._flush(flush);
      return;
    }
    this.#releaseInput();
  }

  /**
   * Queue an input chunk. A chunk that continues the previous one in the same memory (FdSource and
   * SavingStream push consecutive views of one buffer as a pipe fills it, 64 KiB at a time) extends
   * that view instead: a record spread over such views then lies in one buffer and needs no copy.
   * The merged view covers only bytes that were written to us, in the order they were written.
   */
  #append(chunk: Buffer): void {
    if (this.#asm !== null) {
      this.#buffered += chunk.length;
      chunk = this.#fillAsm(chunk);
      if (chunk.length === 0) return;
      this.#buffered -= chunk.length;
    } else if (this.#buffered > 0 && this.#assembles()) {
      const last = this.#buffers[this.#buffers.length - 1]!;
      if (last.buffer !== chunk.buffer || last.byteOffset + last.length !== chunk.byteOffset) {
        // The payload spans memory that is not contiguous: its copy starts now, as its bytes come.
        this.#startAsm();
        this.#append(chunk);
        return;
      }
    }
    const list = this.#buffers;
    const last = list.length > 0 ? list[list.length - 1]! : null;
    if (last !== null && last.buffer === chunk.buffer && last.byteOffset + last.length === chunk.byteOffset) {
      list[list.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + chunk.length);
    } else {
      list.push(chunk);
    }
    this.#buffered += chunk.length;
  }

  /**
   * Take `n` bytes off the front (the caller checked that `n` are buffered). `internal`: the bytes are
   * read only until the current record is decoded and never handed out, so when they span chunks they
   * may go into the reused #scratch. `data`: a DATA payload handed out, whose copy may take a buffer
   * given back with release() (the `recycle` option). `toPool`: a frame a worker decompresses, whose
   * copy goes into memory the pool lends (given back when the job settles).
   */
  #consume(n: number, internal = false, data = false, toPool = false): Buffer {
    this.#buffered -= n;
    this.#offset += n;
    const asm = this.#asm;
    this.#viewOut = false;
    if (asm !== null) {
      // The assembled payload (#parse consumes nothing else while it is set, and only once it is full).
      this.#asm = null;
      return asm;
    }
    const first = this.#buffers[0]!;
    // Fast path: inside one chunk, a view and no copy.
    if (first.length === n) {
      this.#buffers.shift();
      this.#viewOut = true;
      return first;
    }
    if (first.length > n) {
      this.#buffers[0] = first.subarray(n);
      this.#viewOut = true;
      return first.subarray(0, n);
    }
    // Slow path: the bytes span chunks; one copy, into the warm scratch when they stay internal (a fresh
    // buffer costs a page fault per 4 KiB, more than the copy), else into an exactly sized buffer. The
    // used chunks are dropped with one splice (shifting each would be quadratic when a record spans
    // many small chunks).
    const out = internal ? this.#takeScratch(n) : toPool ? this.#pool!.lend(n) : data ? this.#payloadBuffer(n) : Buffer.allocUnsafe(n);
    const list = this.#buffers;
    let at = 0;
    let i = 0;
    while (at < n) {
      const buf = list[i]!;
      const take = Math.min(buf.length, n - at);
      buf.copy(out, at, 0, take);
      at += take;
      if (take === buf.length) i++;
      else list[i] = buf.subarray(take);
    }
    list.splice(0, i);
    return out;
  }

  /**
   * Is the current record's payload assembled in #asm when it spans chunks? A DATA payload, in the
   * buffer it is handed out in; a compressed frame, in the reused #scratch (it is decompressed
   * before the next record is parsed), or, when it goes to the pool, in memory the pool lends (a
   * worker reads it there later).
   */
  #assembles(): boolean {
    if (this.#state !== S_PAYLOAD) return false;
    const h = this.#record!;
    return (
      h.type === RecordType.DATA &&
      this.#buffered < h.payloadLength &&
      // Over the queue limit #parse fails the record before anything is allocated for it.
      h.payloadLength + RECORD_HEADER_SIZE <= this.maxQueuedBytes
    );
  }

  /** Move the buffered start of the current payload into the buffer it is assembled in. */
  #startAsm(): void {
    const h = this.#record!;
    const compressed = (h.flags & RecordFlags.COMPRESSED) !== 0;
    this.#asmLent = compressed && this.#usePool(h);
    const out = !compressed ? this.#payloadBuffer(h.payloadLength) : this.#asmLent ? this.#pool!.lend(h.payloadLength) : this.#takeScratch(h.payloadLength);
    let at = 0;
    for (const b of this.#buffers) {
      b.copy(out, at);
      at += b.length;
    }
    this.#buffers = [];
    this.#asm = out;
    this.#asmFill = at;
  }

  /** Put the front of `chunk` into #asm (in place when a source read it there); returns the rest. */
  #fillAsm(chunk: Buffer): Buffer {
    const asm = this.#asm!;
    const take = Math.min(chunk.length, asm.length - this.#asmFill);
    if (chunk.buffer !== asm.buffer || chunk.byteOffset !== asm.byteOffset + this.#asmFill) chunk.copy(asm, this.#asmFill, 0, take);
    this.#asmFill += take;
    return take === chunk.length ? chunk.subarray(chunk.length) : chunk.subarray(take);
  }

  /** The ReadTargetProvider this decoder registers with a source piped into it (read-target.ts). */
  #readTarget(pushed: number): Buffer | number | null {
    // Bytes still on their way here: the parse state is not where the next read's bytes go.
    if (pushed !== this.bytesIn || this.destroyed || this.#state === S_ERRORED) return null;
    if (this.#asm !== null || this.#assembles()) {
      if (this.#asm === null) this.#startAsm();
      const asm = this.#asm!;
      return asm.subarray(this.#asmFill);
    }
    // The stream header and the first record header are read alone too: a source's first read takes
    // whatever it holds (a whole 1 MiB pipe), and the first payload would land in its memory.
    if (this.#state === S_PREAMBLE) return STREAM_HEADER_SIZE - this.#buffered;
    if (this.#state === S_PREAMBLE_BODY) return this.#fixed!.bodyLength - this.#buffered || null;
    if (this.#state === S_HEADER && this.#buffered === 0 && (this.#lastPayload >= HEADER_ALONE_AFTER || this.records === 0)) return RECORD_HEADER_SIZE;
    return null;
  }

  /** Give back the input chunks now wholly parsed that nothing out points into. */
  #freeInputs(): void {
    const list = this.#inputs;
    let i = this.#inputHead;
    while (i < list.length && list[i]!.end <= this.#offset) {
      const c = list[i++]!;
      c.parsed = true;
      if (c.refs === 0 && !this.destroyed) c.give(c.chunk);
    }
    if (i === list.length) {
      list.length = 0;
      i = 0;
    } else if (i >= 64 && i * 2 >= list.length) {
      list.splice(0, i);
      i = 0;
    }
    this.#inputHead = i;
  }

  /** The tracked input chunks holding stream bytes [start, end), each counted as pointed into. */
  #pin(start: number, end: number): InputChunk[] {
    const out: InputChunk[] = [];
    const list = this.#inputs;
    for (let i = this.#inputHead; i < list.length && list[i]!.end - list[i]!.chunk.length < end; i++) {
      const c = list[i]!;
      if (c.end <= start) continue;
      c.refs++;
      out.push(c);
    }
    return out;
  }

  /** What pointed into these chunks is done: give back those also wholly parsed. */
  #unpin(chunks: InputChunk[]): void {
    for (const c of chunks) {
      if (--c.refs === 0 && c.parsed && !this.destroyed) c.give(c.chunk);
    }
  }

  #takeScratch(n: number): Buffer {
    let s = this.#scratch;
    if (s === null || s.length < n) {
      // Grow geometrically (frame sizes vary record to record), never past the largest payload.
      s = Buffer.allocUnsafeSlow(Math.max(n, Math.min(2 * (s?.length ?? 0), this.maxPayload)));
      this.#scratch = s;
    }
    return s.subarray(0, n);
  }

  #parse(): void {
    for (;;) {
      switch (this.#state) {
        case S_PREAMBLE: {
          if (this.#buffered < STREAM_HEADER_SIZE) return;
          this.#fixed = decodeStreamHeaderFixed(this.#consume(STREAM_HEADER_SIZE), {
            maxHeaderBytes: this.maxHeaderBytes,
            maxDevices: this.maxDevices,
          });
          this.#state = S_PREAMBLE_BODY;
          break;
        }
        case S_PREAMBLE_BODY: {
          const fixed = this.#fixed!;
          if (this.#buffered < fixed.bodyLength) return;
          const header = parseStreamHeaderBody(fixed, this.#consume(fixed.bodyLength));
          let alg: string | null = null;
          if (header.digest !== null && this.verifyDigest) {
            if (!digestAvailable(header.digest)) {
              throw migError(ErrorCodes.UNSUPPORTED, `digest algorithm ${header.digest} is not available`);
            }
            alg = header.digest;
          }
          this.#tracks = header.devices.map(() => ({ bytes: 0, hash: alg ? createDataDigest(alg) : null, ended: false }));
          this.header = header;
          this.#state = S_HEADER;
          this.emit('header', header);
          this.push({ type: RecordType.STREAM_HEADER, header });
          break;
        }
        case S_HEADER: {
          if (this.#buffered < RECORD_HEADER_SIZE) return;
          this.#recordOffset = this.#offset;
          const h = decodeRecordHeader(this.#consume(RECORD_HEADER_SIZE));
          this.#checkHeader(h);
          this.#record = h;
          this.#lastPayload = h.payloadLength;
          this.#state = S_PAYLOAD;
          break;
        }
        case S_PAYLOAD: {
          const h = this.#record!;
          if (this.#buffered < h.payloadLength) {
            // The record spans chunks and will be held whole: bound what is held.
            if (h.payloadLength + RECORD_HEADER_SIZE > this.maxQueuedBytes) {
              throw this.#err(ErrorCodes.LIMIT, `record of ${h.payloadLength} bytes spans chunks, queue limit ${this.maxQueuedBytes}`, h);
            }
            return;
          }
          // A compressed frame is decompressed into a new buffer and an unknown record is skipped:
          // neither wire payload outlives #accept, so when they span chunks they may use the reused
          // scratch. Not a frame going to the pool: a worker reads it after #accept returns. A frame
          // already assembled went where #startAsm decided: into the scratch (decompressed here
          // whatever the pool says now), or into lent memory (decompressed here only if the pool
          // can no longer take it, then given back).
          const assembled = this.#asm !== null;
          const lent = assembled && this.#asmLent;
          this.#asmLent = false;
          const toPool = assembled && (h.flags & RecordFlags.COMPRESSED) !== 0 ? lent && this.#usePool(h) : this.#usePool(h);
          const internal = !toPool && ((h.flags & RecordFlags.COMPRESSED) !== 0 || h.type > RecordType.STREAM_END);
          const payload = h.payloadLength === 0 ? Buffer.alloc(0) : this.#consume(h.payloadLength, internal, h.type === RecordType.DATA, toPool);
          // A view of tracked input that outlives this call (a frame a worker reads, a raw payload
          // handed out) keeps its chunks until it is done with (before #accept: a flowing reader
          // may give the payload back from inside push()).
          let pins: InputChunk[] | null = null;
          if (this.#viewOut && h.payloadLength > 0 && (toPool || (h.type === RecordType.DATA && !internal)) && this.#inputHead < this.#inputs.length) {
            pins = this.#pin(this.#offset - h.payloadLength, this.#offset);
            // Without `recycle` nothing is given back: the chunks stay out for good (left to the GC).
            if (!toPool && this.#lent !== null) this.#pins.set(payload, pins);
          }
          try {
            this.#accept(h, payload, toPool, pins);
          } finally {
            if (lent && !toPool) this.#pool!.releaseFrame(payload);
          }
          this.#record = null;
          this.#state = h.type === RecordType.STREAM_END ? S_DONE : S_HEADER;
          if (this.#state === S_DONE) {
            if (this.#buffered > 0) {
              throw migError(ErrorCodes.CORRUPT, `${this.#buffered} bytes after STREAM_END`, { detail: { offset: this.#offset } });
            }
            return;
          }
          break;
        }
        default:
          return;
      }
    }
  }

  #err(code: string, message: string, h: RecordHeader, device?: number, offset = this.#recordOffset): MigError {
    return migError(code, message, {
      ...(device !== undefined ? { device } : {}),
      detail: { seq: h.seq, type: recordTypeName(h.type), offset },
    });
  }

  /** Every check that needs only the header, before a byte of payload is buffered or allocated. */
  #checkHeader(h: RecordHeader): void {
    if (h.seq !== this.#expectSeq) {
      throw this.#err(ErrorCodes.CORRUPT, `record sequence ${h.seq}, expected ${this.#expectSeq} (lost or repeated record)`, h);
    }
    if (h.payloadLength > this.maxPayload || h.rawLength > this.maxPayload) {
      throw this.#err(ErrorCodes.LIMIT, `record of ${Math.max(h.payloadLength, h.rawLength)} bytes, limit ${this.maxPayload}`, h);
    }
    if ((h.flags & RecordFlags.COMPRESSED) !== 0 && (this.header!.features & Features.ZSTD) === 0) {
      throw this.#err(ErrorCodes.CORRUPT, 'compressed record in a stream without the ZSTD feature', h);
    }
    switch (h.type) {
      case RecordType.DATA:
      case RecordType.ROUND:
      case RecordType.DEVICE_END: {
        if (h.device >= this.#tracks.length) {
          throw this.#err(ErrorCodes.CORRUPT, `record for device ${h.device}, the stream has ${this.#tracks.length}`, h);
        }
        if (this.#tracks[h.device]!.ended) {
          throw this.#err(ErrorCodes.CORRUPT, `${recordTypeName(h.type)} record after the device's DEVICE_END`, h, h.device);
        }
        break;
      }
      case RecordType.CONTROL:
        if (h.rawLength > this.maxControlBytes) {
          throw this.#err(ErrorCodes.LIMIT, `CONTROL record of ${h.rawLength} bytes, limit ${this.maxControlBytes}`, h);
        }
        break;
      case RecordType.STREAM_END:
        break;
      default:
        if ((h.flags & RecordFlags.OPTIONAL) === 0) {
          throw this.#err(ErrorCodes.UNSUPPORTED, `unknown mandatory record type ${h.type}`, h);
        }
    }
    this.#expectSeq = (this.#expectSeq + 1) >>> 0;
  }

  /** Should this record's frame decompress in the pool? (Warms the pool the first time it is asked.) */
  #usePool(h: RecordHeader): boolean {
    const pool = this.#pool;
    if (pool === null || (h.flags & RecordFlags.COMPRESSED) === 0 || h.type !== RecordType.DATA || h.rawLength < this.poolMinBytes) return false;
    if (pool.closed) return false;
    if (pool.readyWorkers > 0) return true;
    // No worker has booted: start them, and decompress here meanwhile rather than stall behind a boot.
    if (pool.workers < pool.size) pool.warm().catch(() => {});
    return false;
  }

  /**
   * A record whose header and payload arrived: verify the wire crc (before anything else looks at
   * the payload), then emit it now, or queue it behind the records still in the pool, or send its
   * frame to the pool and queue it.
   */
  #accept(h: RecordHeader, wire: Buffer, toPool: boolean, pins: InputChunk[] | null): void {
    if ((this.header!.features & Features.CRC32) !== 0 && crc32(wire) !== h.payloadCrc) {
      throw this.#err(ErrorCodes.CORRUPT, 'record payload crc mismatch', h, h.device === NO_DEVICE ? undefined : h.device);
    }
    if (h.type > RecordType.STREAM_END) {
      // Unknown and OPTIONAL (checked in #checkHeader): skipped whole, after its crc was verified.
      this.skippedRecords++;
      return;
    }
    const offset = this.#recordOffset;
    if (toPool) {
      const p: Pending = { h, offset, payload: null, error: null, bytes: h.rawLength };
      this.#pending.push(p);
      this.#pendingBytes += p.bytes;
      const into = this.#lent !== null ? this.#takeFree(h.rawLength) : undefined;
      // Once the worker is done with the frame: its input chunks, or the memory it was gathered in
      // (releaseFrame ignores a view of anything else).
      const done = (): void => {
        if (pins !== null) this.#unpin(pins);
        else this.#pool!.releaseFrame(wire);
      };
      this.#pool!.decompress(wire, h.rawLength, into !== undefined ? { into } : {}).then(
        (out) => {
          done();
          this.#lent?.add(out);
          p.payload = out;
          this.#drainPending();
        },
        (cause: unknown) => {
          done();
          // A bad frame is CORRUPT as on the event loop; a dead worker (EIO) or a closed pool
          // (ECANCELED) keeps its own code.
          p.error =
            cause instanceof MigError && cause.code !== ErrorCodes.CORRUPT
              ? migError(cause.code, `record ${h.seq} not decompressed: ${cause.message}`, { cause, detail: { seq: h.seq, offset } })
              : badFrame(h, offset, cause);
          this.#drainPending();
        },
      );
      return;
    }
    const payload = (h.flags & RecordFlags.COMPRESSED) !== 0 ? this.#decompress(h, wire) : wire;
    if (this.#pending.length === 0) {
      this.#finish(h, payload, offset);
      return;
    }
    this.#pending.push({ h, offset, payload, error: null, bytes: payload.length });
    this.#pendingBytes += payload.length;
  }

  /** Account a record in stream order (byte counts, digests, totals), then push it. */
  #finish(h: RecordHeader, payload: Buffer, offset: number): void {
    const base = { flags: h.flags, device: h.device, channel: h.channel, seq: h.seq };
    let rec: WireRecord;
    try {
      switch (h.type) {
        case RecordType.DATA: {
          const t = this.#tracks[h.device]!;
          t.bytes += payload.length;
          // An uncompressed payload's crc was verified in #accept: the digest joins it to its chain.
          if (t.hash?.appendCrc !== undefined && (h.flags & RecordFlags.COMPRESSED) === 0 && (this.header!.features & Features.CRC32) !== 0) {
            t.hash.appendCrc(h.payloadCrc, payload.length);
          } else {
            t.hash?.update(payload);
          }
          this.dataBytes += payload.length;
          rec = { type: RecordType.DATA, ...base, payload };
          break;
        }
        case RecordType.ROUND:
          rec = { type: RecordType.ROUND, ...base, ...decodeRoundPayload(payload) };
          break;
        case RecordType.DEVICE_END: {
          const end = decodeDeviceEndPayload(payload);
          const t = this.#tracks[h.device]!;
          if (end.bytes !== t.bytes) {
            throw this.#err(ErrorCodes.CORRUPT, `DEVICE_END says ${end.bytes} bytes, ${t.bytes} were received`, h, h.device, offset);
          }
          if (t.hash !== null) {
            const mine = t.hash.digest('hex');
            if (end.algorithm !== this.header!.digest || end.digest !== mine) {
              throw this.#err(ErrorCodes.DIGEST, `device ${h.device} data digest mismatch`, h, h.device, offset);
            }
          }
          t.ended = true;
          rec = { type: RecordType.DEVICE_END, ...base, ...end };
          break;
        }
        case RecordType.CONTROL: {
          let message: unknown;
          try {
            message = JSON.parse(payload.toString('utf8'));
          } catch (cause) {
            throw migError(ErrorCodes.CORRUPT, 'CONTROL payload is not JSON', { cause, detail: { seq: h.seq } });
          }
          rec = { type: RecordType.CONTROL, ...base, message };
          break;
        }
        default: {
          const bytes = decodeStreamEndPayload(payload);
          if (bytes !== this.dataBytes) {
            throw this.#err(ErrorCodes.CORRUPT, `STREAM_END says ${bytes} data bytes, ${this.dataBytes} were received`, h, undefined, offset);
          }
          this.#scratch = null;
          rec = { type: RecordType.STREAM_END, ...base, bytes };
        }
      }
    } catch (err) {
      if (err instanceof MigError && err.detail === undefined) err.detail = { seq: h.seq, offset };
      throw err;
    }
    this.records++;
    const queued = this.readableLength;
    this.push(rec);
    // Buffered (not handed straight to a flowing reader): count it until read() takes it.
    if (rec.type === RecordType.DATA && this.readableLength > queued) this.#outputBytes += rec.payload.length;
  }

  /**
   * One-shot decompression into a buffer of the declared raw length (already bounded by maxPayload),
   * so a frame can never expand past it: a decompression bomb fails as "destination too small".
   */
  #decompress(h: RecordHeader, frame: Buffer): Buffer {
    this.#dctx ??= new zstd.DCtx();
    const out = h.type === RecordType.DATA ? this.#payloadBuffer(h.rawLength) : Buffer.allocUnsafe(h.rawLength);
    let n: number;
    try {
      n = this.#dctx.decompress(out, frame);
    } catch (cause) {
      // A failed frame can leave the context mid-frame: start the next record from a fresh one.
      this.#dctx = null;
      throw badFrame(h, this.#recordOffset, cause);
    }
    if (n !== h.rawLength) {
      throw this.#err(ErrorCodes.CORRUPT, `record decompressed to ${n} bytes, header says ${h.rawLength}`, h);
    }
    return out;
  }
}

/** A frame zstd rejects, or one that would expand past its declared raw length: CORRUPT. */
function badFrame(h: RecordHeader, offset: number, cause: unknown): MigError {
  return migError(ErrorCodes.CORRUPT, `record does not decompress to its declared ${h.rawLength} bytes`, { cause, detail: { seq: h.seq, offset } });
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : migError(ErrorCodes.CORRUPT, String(err));
}

/** Factory form (for symmetry with the other streams). */
export function createRecordDecoder(opts?: RecordDecoderOptions): RecordDecoder {
  return new RecordDecoder(opts);
}
