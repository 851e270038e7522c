/**
 * RecordEncoder: record objects in, wire bytes out (a Transform whose writable side is in object mode).
 *
 * The stream header goes out first (from the constructor). Each record leaves as two buffers, its
 * 28-byte header and its payload, never concatenated (ws Sender). DATA records may be compressed in
 * the CompressionPool: several are in flight at once, they leave in the order they were written, and
 * a record whose frame would not be smaller goes out raw. While no worker has booted yet they are
 * compressed on the event loop instead (`inlineWhileBooting`, levels up to 3), so a stream does not
 * stall behind the workers' start.
 *
 * Backpressure: a write's callback runs at once while the bytes not yet pushed out stay under
 * `maxInFlightBytes` and the readable side is under its highWaterMark; otherwise it is held until
 * enough records are truly out and the reader wants more. So memory is bounded by
 * maxInFlightBytes + readableHighWaterMark + one record, whatever the reader does.
 *
 * Ownership: a written payload is referenced until its record is pushed out; do not modify it after
 * write() (Node's usual rule). With `transferPayloads` a payload that spans its whole ArrayBuffer is
 * moved to a worker and the caller's Buffer is detached.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { crc32 } from './crc32.js';
import { migError, ErrorCodes } from '../fsm/errors.js';
import {
  RecordType,
  RecordFlags,
  Features,
  NO_DEVICE,
  RECORD_HEADER_SIZE,
  encodeStreamHeader,
  writeRecordHeader,
  encodeRoundPayload,
  encodeDeviceEndPayload,
  encodeStreamEndPayload,
  recordTypeName,
  createDataDigest,
  type DataDigest,
  type RecordInput,
  type WireDevice,
  type RawInput,
} from './wire-format.js';
import { CompressionPool, sharedCompressionPool, validateZstdLevel, validateMinSaving, DEFAULT_ZSTD_LEVEL, type CompressResult } from './compression-pool.js';

export interface EncoderCompressionOptions {
  /** zstd level, negative (fastest) to 19. Default DEFAULT_ZSTD_LEVEL (1). */
  level?: number;
  /** The worker pool; default the process-wide `sharedCompressionPool()`. */
  pool?: CompressionPool;
  /** DATA records smaller than this are sent raw without trying (not worth a worker round trip). Default 512. */
  minBytes?: number;
  /**
   * The share of a record's bytes its frame must save, in [0, 1); a record that saves less goes raw
   * (the receiver then takes a view instead of decompressing). Default DEFAULT_MIN_SAVING (1/32).
   */
  minSaving?: number;
  /**
   * While none of the pool's workers has booted, compress on the event loop instead of queueing
   * behind the boot (an idle pool is started), at levels up to 3 (about 3-4 ms of CPU per MiB
   * here; slower levels always wait for the workers). Default true; false waits for the workers.
   */
  inlineWhileBooting?: boolean;
}

export interface RecordEncoderOptions {
  /** The device table of the stream header. Default none (a control-only stream). */
  devices?: WireDevice[];
  /** Sender identity for the stream header (host, pid, program...). */
  sender?: Record<string, unknown>;
  /** zstd per DATA record: false/undefined (off), true (default level), a level, or options. */
  compression?: boolean | number | EncoderCompressionOptions;
  /** crc32 of every payload (the CRC32 feature). Default true. */
  checksums?: boolean;
  /**
   * Digest algorithm of the raw data per device ('crc32', or a `crypto.createHash` name such as 'sha256',
   * which costs about 0.65 ms per MiB on the event loop at each end; 'crc32' reuses the records' own
   * crcs and costs nothing more for uncompressed records): the encoder fills DEVICE_END digests
   * itself and the decoder verifies them. Default null (no digest).
   */
  digest?: string | null;
  /** Cap on the raw bytes written but not yet pushed out (compressing). Default 16 MiB. */
  maxInFlightBytes?: number;
  /** Readable side highWaterMark in bytes. Default 1 MiB. */
  readableHighWaterMark?: number;
  /** Writable side highWaterMark in records. Default 16. */
  writableHighWaterMark?: number;
  /** Move whole-ArrayBuffer payloads to the workers instead of copying them. Default false. */
  transferPayloads?: boolean;
  /**
   * Track the raw DATA bytes each output chunk carries (a header chunk 0, a payload its raw length)
   * for shiftChunkRawBytes(). Exact even when chunks wait in the readable buffer, which comparing
   * `dataBytesOut` between 'data' events is not (a buffered burst would all be credited to its
   * first chunk). The caller must shift once per 'data' event: the count list is as long as the
   * chunks pushed and not yet shifted. Default false.
   */
  countCarried?: boolean;
  /**
   * Called with a DATA payload once the encoder no longer reads it because it went out compressed:
   * its frame is ready, so the caller may reuse the payload's memory (a SavingStream's release()).
   * Not called for a payload that goes out as it is (it is the output chunk: free it once written),
   * nor for one moved to a worker (transferPayloads; its memory is gone).
   */
  onPayloadFree?: (payload: Buffer) => void;
  /**
   * Write compressed frames into memory the pool lends (CompressionPool `lendFrame`) instead of
   * fresh memory. The reader gives each output chunk back with release(chunk) once it is written
   * (its transport's write callback); a frame never given back is garbage-collected like any other
   * chunk. Default false.
   */
  recycleFrames?: boolean;
}

/** Highest zstd level compressed on the event loop while the pool boots (see #compressHere). */
const INLINE_MAX_LEVEL = 3;

interface Entry {
  type: number;
  flags: number;
  device: number;
  channel: number;
  seq: number;
  /** What goes on the wire once ready (the frame, or the raw bytes). */
  wire: Buffer;
  rawLength: number;
  crc: number;
  /** crc already computed (by a worker). */
  crcDone: boolean;
  ready: boolean;
}

interface DeviceTrack {
  bytes: number;
  hash: DataDigest | null;
  ended: boolean;
}

export class RecordEncoder extends Transform {
  readonly devices: readonly WireDevice[];
  readonly features: number;
  readonly digestAlgorithm: string | null;
  /** Records pushed out, stream header excluded. */
  recordsOut: number;
  /** Bytes pushed out, stream header included. */
  bytesOut: number;
  /** Raw DATA bytes written. */
  dataBytes: number;
  /**
   * Raw DATA bytes pushed out (counted at push time, so it runs ahead of the chunks still in the
   * readable buffer; for what each emitted chunk carried, use countCarried/shiftChunkRawBytes).
   */
  dataBytesOut: number;
  /** DATA records that went out compressed. */
  compressedRecords: number;
  /** DATA records compressed on the event loop because no pool worker had booted yet. */
  inlineCompressedRecords: number;
  /** With `countCarried`: raw bytes per pushed chunk not yet shifted, in push order (null: not tracked). */
  #carried: number[] | null;
  #checksums: boolean;
  #level: number;
  #pool: CompressionPool | null;
  #minBytes: number;
  /** The caller's minSaving, checked; undefined leaves the pool's default. */
  #minSaving: number | undefined;
  #transfer: boolean;
  #onPayloadFree: ((payload: Buffer) => void) | null;
  #recycleFrames: boolean;
  #inlineWhileBooting: boolean;
  /** This encoder started the pool's workers (it does so once). */
  #warmed: boolean;
  #maxInFlight: number;
  #queue: Entry[];
  #inFlight: number;
  #seq: number;
  #tracks: DeviceTrack[];
  #ended: boolean;
  #heldCallback: TransformCallback | null;
  #flushCallback: TransformCallback | null;

  constructor(opts: RecordEncoderOptions = {}) {
    super({
      writableObjectMode: true,
      readableObjectMode: false,
      readableHighWaterMark: opts.readableHighWaterMark ?? 1024 * 1024,
      writableHighWaterMark: opts.writableHighWaterMark ?? 16,
    });
    const devices = opts.devices ?? [];
    const c = opts.compression;
    const copts: EncoderCompressionOptions | null =
      c === undefined || c === false ? null : c === true ? {} : typeof c === 'number' ? { level: c } : c;
    this.devices = devices;
    this.features = (copts ? Features.ZSTD : 0) | (opts.checksums === false ? 0 : Features.CRC32);
    this.digestAlgorithm = opts.digest ?? null;
    this.recordsOut = 0;
    this.bytesOut = 0;
    this.dataBytes = 0;
    this.dataBytesOut = 0;
    this.compressedRecords = 0;
    this.inlineCompressedRecords = 0;
    this.#carried = opts.countCarried === true ? [] : null;
    this.#checksums = opts.checksums !== false;
    this.#level = copts ? validateZstdLevel(copts.level ?? DEFAULT_ZSTD_LEVEL) : 0;
    this.#pool = copts ? (copts.pool ?? sharedCompressionPool()) : null;
    this.#minBytes = copts?.minBytes ?? 512;
    this.#minSaving = copts?.minSaving === undefined ? undefined : validateMinSaving(copts.minSaving);
    this.#transfer = opts.transferPayloads === true;
    this.#onPayloadFree = opts.onPayloadFree ?? null;
    this.#recycleFrames = opts.recycleFrames === true;
    this.#inlineWhileBooting = copts?.inlineWhileBooting !== false;
    this.#warmed = false;
    this.#maxInFlight = opts.maxInFlightBytes ?? 16 * 1024 * 1024;
    this.#queue = [];
    this.#inFlight = 0;
    this.#seq = 0;
    const alg = this.digestAlgorithm;
    // An unknown algorithm throws here (UNSUPPORTED) rather than mid-stream.
    this.#tracks = devices.map(() => ({ bytes: 0, hash: alg ? createDataDigest(alg) : null, ended: false }));
    this.#ended = false;
    this.#heldCallback = null;
    this.#flushCallback = null;
    const header = encodeStreamHeader({ features: this.features, sender: opts.sender, devices, digest: alg });
    this.bytesOut += header.length;
    this.#carried?.push(0);
    this.push(header);
  }

  /**
   * With `countCarried`: the raw DATA bytes the oldest chunk not yet shifted carries. Call it from a
   * 'data' listener, once per chunk, to learn what that chunk carried (0 when not tracked).
   */
  shiftChunkRawBytes(): number {
    return this.#carried?.shift() ?? 0;
  }

  /**
   * With `recycleFrames`: give back an output chunk once it is written. True when it was a
   * compressed frame in the pool's lent memory (which a later frame reuses); false, and nothing
   * done, for any other chunk (headers, raw payloads: the caller's own).
   */
  release(chunk: Buffer): boolean {
    return this.#pool !== null && this.#pool.releaseFrame(chunk);
  }

  /** Raw bytes written but not yet pushed out. */
  get inFlightBytes(): number {
    return this.#inFlight;
  }

  override _transform(rec: RecordInput, _enc: BufferEncoding, cb: TransformCallback): void {
    let entry: Entry;
    let compress = false;
    try {
      if (this.#ended) throw migError(ErrorCodes.USAGE, 'record written after STREAM_END');
      ({ entry, compress } = this.#build(rec));
    } catch (err) {
      cb(err as Error);
      return;
    }
    this.#queue.push(entry);
    this.#inFlight += entry.rawLength;
    const payload = entry.wire;
    const done = (r: CompressResult): void => {
      if (r.compressed !== null) {
        entry.wire = r.compressed;
        entry.flags |= RecordFlags.COMPRESSED;
        this.compressedRecords++;
        // The pool copied the payload (or read it here): nothing reads it any more. A payload moved
        // to a worker is detached (length 0) and not handed back.
        if (this.#onPayloadFree !== null && payload.length === entry.rawLength && !this.destroyed) this.#onPayloadFree(payload);
      } else {
        entry.wire = r.raw;
      }
      entry.crc = r.crc;
      entry.crcDone = true;
      entry.ready = true;
      this.#drainQueue();
    };
    if (compress && this.#compressHere()) {
      let r: CompressResult;
      try {
        r = this.#pool!.compressSync(entry.wire, { level: this.#level, crc: this.#checksums, minSaving: this.#minSaving });
      } catch (err) {
        cb(err as Error);
        return;
      }
      this.inlineCompressedRecords++;
      done(r);
    } else if (compress) {
      this.#pool!.compress(entry.wire, { level: this.#level, crc: this.#checksums, transfer: this.#transfer, lendFrame: this.#recycleFrames, minSaving: this.#minSaving }).then(done, (err: unknown) =>
        this.destroy(err as Error),
      );
    } else {
      entry.ready = true;
      this.#drainQueue();
    }
    if (this.#mayAccept()) cb();
    else this.#heldCallback = cb;
  }

  override _flush(cb: TransformCallback): void {
    if (this.#queue.length === 0) cb();
    else this.#flushCallback = cb;
  }

  override _read(size: number): void {
    // The reader wants more: a write held for readable-side backpressure may proceed. Readable calls
    // _read once (until the next push) as soon as a read would leave it under its highWaterMark, which
    // can be while readableLength is still just above it: so only the in-flight cap is checked here.
    this.#releaseHeld(true);
    super._read(size);
  }

  override _destroy(err: Error | null, cb: (error: Error | null) => void): void {
    // Results of jobs still in the pool arrive later and are dropped by #drainQueue.
    this.#queue.length = 0;
    this.#inFlight = 0;
    this.#heldCallback = null;
    this.#flushCallback = null;
    cb(err);
  }

  /**
   * Compress on the event loop, not in the pool: while no worker has booted (60-70 ms each on the
   * two-core box), a record sent to the pool waits for the boot and every record behind it waits
   * too; compressing here costs about 3 ms of CPU per MiB at level 1 instead (4 at level 3). Not
   * above INLINE_MAX_LEVEL: level 9 takes 12 ms per MiB and level 19 160, too long to hold the
   * event loop, and next to such levels the boot is no stall. An idle pool is started (once per
   * encoder: workers that die after that are respawned by the pool on demand, and their failures
   * reach the stream as before).
   */
  #compressHere(): boolean {
    const pool = this.#pool!;
    if (!this.#inlineWhileBooting || this.#level > INLINE_MAX_LEVEL || pool.closed || pool.readyWorkers > 0) return false;
    if (pool.workers === 0) {
      if (this.#warmed) return false;
      this.#warmed = true;
      void pool.warm();
    }
    return true;
  }

  #mayAccept(): boolean {
    return this.#inFlight <= this.#maxInFlight && this.readableLength < this.readableHighWaterMark;
  }

  #releaseHeld(readerWants = false): void {
    const cb = this.#heldCallback;
    if (cb !== null && (readerWants ? this.#inFlight <= this.#maxInFlight : this.#mayAccept())) {
      this.#heldCallback = null;
      cb();
    }
  }

  /** Push every ready record at the head of the queue, in write order. */
  #drainQueue(): void {
    if (this.destroyed) return;
    const q = this.#queue;
    let n = 0;
    while (n < q.length && q[n]!.ready) {
      const e = q[n++]!;
      const header = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
      const crc = !this.#checksums ? 0 : e.crcDone ? e.crc : crc32(e.wire);
      writeRecordHeader(header, {
        type: e.type,
        flags: e.flags,
        device: e.device,
        channel: e.channel,
        seq: e.seq,
        payloadLength: e.wire.length,
        rawLength: e.rawLength,
        payloadCrc: crc,
      });
      const raw = e.type === RecordType.DATA ? e.rawLength : 0;
      const payload = e.wire.length > 0;
      this.#carried?.push(payload ? 0 : raw);
      this.push(header);
      this.dataBytesOut += raw;
      if (payload) {
        this.#carried?.push(raw);
        this.push(e.wire);
      }
      this.#inFlight -= e.rawLength;
      this.recordsOut++;
      this.bytesOut += RECORD_HEADER_SIZE + e.wire.length;
    }
    if (n > 0) q.splice(0, n);
    this.#releaseHeld();
    if (q.length === 0 && this.#flushCallback !== null) {
      const cb = this.#flushCallback;
      this.#flushCallback = null;
      cb();
    }
  }

  #deviceIndex(device: number | undefined, type: string): number {
    if (device === undefined || !Number.isInteger(device) || device < 0 || device >= this.devices.length) {
      throw migError(ErrorCodes.USAGE, `${type} record for device ${device}, the stream has ${this.devices.length}`);
    }
    if (this.#tracks[device]!.ended) throw migError(ErrorCodes.USAGE, `${type} record for device ${device} after its DEVICE_END`);
    return device;
  }

  #build(rec: RecordInput): { entry: Entry; compress: boolean } {
    if (typeof rec !== 'object' || rec === null) throw migError(ErrorCodes.USAGE, 'records are objects');
    const channel = rec.channel ?? 0;
    if (!Number.isInteger(channel) || channel < 0 || channel > 0xffff) throw migError(ErrorCodes.USAGE, `bad channel ${channel}`);
    let flags = (rec.flags ?? 0) & RecordFlags.OPTIONAL;
    let device = NO_DEVICE;
    let payload: Buffer;
    let compress = false;
    let knownCrc = -1;
    if (isRaw(rec)) {
      const r = rec;
      if (!Number.isInteger(r.type) || r.type < 1 || r.type > 255 || !Buffer.isBuffer(r.payload)) {
        throw migError(ErrorCodes.USAGE, 'raw record needs a type 1..255 and a Buffer payload');
      }
      device = r.device ?? NO_DEVICE;
      if (!Number.isInteger(device) || device < 0 || device > NO_DEVICE) throw migError(ErrorCodes.USAGE, `bad device index ${device}`);
      payload = r.payload;
    } else {
      switch (rec.type) {
        case RecordType.DATA: {
          device = this.#deviceIndex(rec.device, 'DATA');
          payload = rec.payload;
          if (!Buffer.isBuffer(payload)) throw migError(ErrorCodes.USAGE, 'DATA payload must be a Buffer');
          const t = this.#tracks[device]!;
          t.bytes += payload.length;
          this.dataBytes += payload.length;
          compress = this.#pool !== null && payload.length >= this.#minBytes;
          if (t.hash?.appendCrc !== undefined && this.#checksums) {
            // One crc pass serves the digest and, when the payload goes out as it is, the record.
            const crc = crc32(payload);
            t.hash.appendCrc(crc, payload.length);
            if (!compress) knownCrc = crc;
          } else {
            t.hash?.update(payload);
          }
          break;
        }
        case RecordType.ROUND:
          device = this.#deviceIndex(rec.device, 'ROUND');
          payload = encodeRoundPayload({
            round: rec.round,
            roundFlags: rec.roundFlags ?? 0,
            bytes: rec.bytes ?? this.#tracks[device]!.bytes,
            initialBytes: rec.initialBytes ?? 0,
            dirtyBytes: rec.dirtyBytes ?? 0,
          });
          break;
        case RecordType.DEVICE_END: {
          device = this.#deviceIndex(rec.device, 'DEVICE_END');
          const t = this.#tracks[device]!;
          if (rec.bytes !== undefined && rec.bytes !== t.bytes) {
            throw migError(ErrorCodes.USAGE, `DEVICE_END says ${rec.bytes} bytes, ${t.bytes} were written`, { device });
          }
          const algorithm = rec.algorithm ?? this.digestAlgorithm ?? '';
          let digest = rec.digest ?? '';
          if (rec.digest === undefined && t.hash !== null) digest = t.hash.digest('hex');
          t.ended = true;
          payload = encodeDeviceEndPayload(t.bytes, digest === '' ? '' : algorithm, digest);
          break;
        }
        case RecordType.CONTROL: {
          const json = JSON.stringify(rec.message);
          if (json === undefined) throw migError(ErrorCodes.USAGE, 'CONTROL message is not JSON-serialisable');
          payload = Buffer.from(json, 'utf8');
          break;
        }
        case RecordType.STREAM_END:
          if (rec.bytes !== undefined && rec.bytes !== this.dataBytes) {
            throw migError(ErrorCodes.USAGE, `STREAM_END says ${rec.bytes} bytes, ${this.dataBytes} were written`);
          }
          payload = encodeStreamEndPayload(this.dataBytes);
          this.#ended = true;
          break;
        default:
          throw migError(ErrorCodes.USAGE, `unknown record type ${recordTypeName((rec as { type: number }).type)}; use a raw record`);
      }
    }
    if (payload.length > 0xffffffff) throw migError(ErrorCodes.USAGE, 'payload over 4 GiB');
    const seq = this.#seq;
    this.#seq = (seq + 1) >>> 0;
    flags &= ~RecordFlags.COMPRESSED;
    const entry: Entry = {
      type: rec.type,
      flags,
      device,
      channel,
      seq,
      wire: payload,
      rawLength: payload.length,
      crc: knownCrc === -1 ? 0 : knownCrc,
      crcDone: knownCrc !== -1,
      ready: false,
    };
    return { entry, compress };
  }
}

function isRaw(rec: RecordInput): rec is RawInput {
  return (rec as { raw?: unknown }).raw === true;
}

/** Factory form (for symmetry with the other streams). */
export function createRecordEncoder(opts?: RecordEncoderOptions): RecordEncoder {
  return new RecordEncoder(opts);
}
