/**
 * The vfio-mig wire format, version 1: constants, record types and the pure encode/decode functions
 * of the stream header and the record header. `docs/wire-format.md` is the byte-level description;
 * `RecordEncoder` and `RecordDecoder` are the streams built on these functions.
 *
 * Everything is little-endian. A stream is one stream header, then records. Every record header
 * carries a crc32 of itself, so a corrupt length is caught before it is trusted or allocated for.
 */
import { crc32 } from './crc32.js';
import { createHash, getHashes } from 'node:crypto';
import { migError, ErrorCodes } from '../fsm/errors.js';
import type { DeviceIdentity } from '../fsm/types.js';

/** "VFMG": the first four bytes of every stream. */
export const STREAM_MAGIC = 0x474d4656;
export const WIRE_VERSION_MAJOR = 1;
export const WIRE_VERSION_MINOR = 0;
export const STREAM_HEADER_SIZE = 28;
/** The first byte of every record header. */
export const RECORD_SYNC = 0xa5;
export const RECORD_HEADER_SIZE = 28;
/** Device index of records that belong to no device (control, stream end). */
export const NO_DEVICE = 0xffff;

/** Stream header feature bits. A decoder refuses bits it does not know (they change the format). */
export const Features = {
  /** Records may carry the COMPRESSED flag: payload is one zstd frame. */
  ZSTD: 0x1,
  /** Record headers carry the crc32 of the payload, checked before the record is emitted. */
  CRC32: 0x2,
} as const;
export const KNOWN_FEATURES = Features.ZSTD | Features.CRC32;

/** Record header flag bits. Unknown bits are refused (UNSUPPORTED). */
export const RecordFlags = {
  /** A decoder that does not know the type skips the record instead of failing. */
  OPTIONAL: 0x01,
  /** The payload is a zstd frame whose content is `rawLength` bytes. */
  COMPRESSED: 0x02,
} as const;
export const KNOWN_RECORD_FLAGS = RecordFlags.OPTIONAL | RecordFlags.COMPRESSED;

/** Record types. `STREAM_HEADER` (0) never appears in a record header: it tags the decoded preamble. */
export const RecordType = {
  STREAM_HEADER: 0,
  /** A slice of one device's opaque migration data, in order. */
  DATA: 1,
  /** A PRE_COPY round boundary of one device, with the precopy-info numbers. */
  ROUND: 2,
  /** One device's data is complete: byte count and digest of the raw data. */
  DEVICE_END: 3,
  /** A JSON control message (handshake, switchover, acks, errors). */
  CONTROL: 4,
  /** The stream is complete; nothing may follow. */
  STREAM_END: 5,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

const TYPE_NAMES = ['STREAM_HEADER', 'DATA', 'ROUND', 'DEVICE_END', 'CONTROL', 'STREAM_END'];
export function recordTypeName(type: number): string {
  return TYPE_NAMES[type] ?? `TYPE_${type}`;
}

/** Hard ceilings of the format itself (u32 lengths; u16 device indexes). */
export const MAX_WIRE_PAYLOAD = 0xffffffff;
export const MAX_DEVICES = 0xfffe;

/** ROUND payload flag: the source reported the PRE_COPY temporary end of stream for this round. */
export const ROUND_FLAG_EMPTY = 0x1;
/** ROUND payload flag: the last PRE_COPY round; STOP_COPY data follows. */
export const ROUND_FLAG_FINAL = 0x2;
export const ROUND_PAYLOAD_SIZE = 32;
export const STREAM_END_PAYLOAD_SIZE = 8;

// ---------------------------------------------------------------------------------------------
// Types

/** One device of the stream's device table. */
export interface WireDevice {
  /** Label the two sides agree on (e.g. a PCI address or "dev0"). */
  name: string;
  identity: DeviceIdentity;
}

export interface StreamHeader {
  versionMajor: number;
  versionMinor: number;
  /** Feature bits (Features.*). */
  features: number;
  /** Who sends (host, pid, program: free-form JSON). */
  sender: Record<string, unknown>;
  devices: WireDevice[];
  /** Hash algorithm of the DEVICE_END digests (a `crypto.createHash` name), or null when none is sent. */
  digest: string | null;
}

interface RecordCommon {
  /** Record flags as sent (RecordFlags.*); on decoded records COMPRESSED tells how it travelled. */
  flags: number;
  /** Device table index, NO_DEVICE for stream-level records. */
  device: number;
  /** Channel number, free for the orchestrator (0 by default). */
  channel: number;
  /** Per-stream record sequence number (u32, wraps), assigned by the encoder. */
  seq: number;
}

export interface DataRecord extends RecordCommon {
  type: typeof RecordType.DATA;
  /** Raw (decompressed) device bytes. On decoded records often a view into the received chunk. */
  payload: Buffer;
}

export interface RoundRecord extends RecordCommon {
  type: typeof RecordType.ROUND;
  /** Round number, from 0. */
  round: number;
  /** ROUND_FLAG_* bits. */
  roundFlags: number;
  /** Device bytes sent so far in this stream. */
  bytes: number;
  /** VFIO_MIG_GET_PRECOPY_INFO initial_bytes / dirty_bytes at the round boundary. */
  initialBytes: number;
  dirtyBytes: number;
}

export interface DeviceEndRecord extends RecordCommon {
  type: typeof RecordType.DEVICE_END;
  /** Total raw data bytes of the device in this stream. */
  bytes: number;
  /** Hash algorithm name ('' when no digest). */
  algorithm: string;
  /** Hex digest of the raw data ('' when none). */
  digest: string;
}

export interface ControlRecord extends RecordCommon {
  type: typeof RecordType.CONTROL;
  /** Any JSON value. */
  message: unknown;
}

export interface StreamEndRecord extends RecordCommon {
  type: typeof RecordType.STREAM_END;
  /** Total raw data bytes of all devices. */
  bytes: number;
}

/** The decoded stream header, delivered as the decoder's first object. */
export interface StreamHeaderRecord {
  type: typeof RecordType.STREAM_HEADER;
  header: StreamHeader;
}

export type WireRecord = DataRecord | RoundRecord | DeviceEndRecord | ControlRecord | StreamEndRecord;
export type DecodedObject = StreamHeaderRecord | WireRecord;

/** What a RecordEncoder accepts: flags/device/channel optional, seq assigned by the encoder. */
type Input<R extends WireRecord, Required extends keyof R> = Pick<R, 'type' | Required> &
  Partial<Pick<R, 'flags' | 'device' | 'channel'>>;
export type DataInput = Input<DataRecord, 'device' | 'payload'>;
export type RoundInput = Input<RoundRecord, 'device' | 'round'> &
  Partial<Pick<RoundRecord, 'roundFlags' | 'bytes' | 'initialBytes' | 'dirtyBytes'>>;
/** `bytes`/`digest` may be left out when the encoder tracks them (encoder option `digest`). */
export type DeviceEndInput = Input<DeviceEndRecord, 'device'> & Partial<Pick<DeviceEndRecord, 'bytes' | 'algorithm' | 'digest'>>;
export type ControlInput = Input<ControlRecord, 'message'>;
export type StreamEndInput = Input<StreamEndRecord, never> & Partial<Pick<StreamEndRecord, 'bytes'>>;
/** Any type with a prepared payload: for records of types this version does not define (set OPTIONAL). */
export interface RawInput {
  type: number;
  flags?: number;
  device?: number;
  channel?: number;
  payload: Buffer;
  raw: true;
}
export type RecordInput = DataInput | RoundInput | DeviceEndInput | ControlInput | StreamEndInput | RawInput;

/** The fixed fields of a record header. */
export interface RecordHeader {
  type: number;
  flags: number;
  device: number;
  channel: number;
  seq: number;
  /** Bytes of payload on the wire. */
  payloadLength: number;
  /** Bytes of payload once decompressed (= payloadLength when not compressed). */
  rawLength: number;
  /** crc32 of the wire payload (0 when the stream has no CRC32 feature). */
  payloadCrc: number;
}

// ---------------------------------------------------------------------------------------------
// u64 helpers: lengths are u64 on the wire, numbers in JS (safe up to 2^53).

const TWO_32 = 0x1_0000_0000;

function writeU64(buf: Buffer, value: number, offset: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw migError(ErrorCodes.USAGE, `not a byte count: ${value}`);
  }
  buf.writeUInt32LE(value % TWO_32, offset);
  buf.writeUInt32LE(Math.floor(value / TWO_32), offset + 4);
}

function readU64(buf: Buffer, offset: number): number {
  const lo = buf.readUInt32LE(offset);
  const hi = buf.readUInt32LE(offset + 4);
  // Above 2^53 a JS number loses bytes: no real device state is that large, so it is corruption.
  if (hi > 0x1fffff) throw migError(ErrorCodes.CORRUPT, 'u64 field beyond 2^53');
  return hi * TWO_32 + lo;
}

// ---------------------------------------------------------------------------------------------
// Stream header

export interface StreamHeaderInit {
  features: number;
  sender?: Record<string, unknown>;
  devices: WireDevice[];
  digest?: string | null;
}

/** Encode the stream header: 28 fixed bytes then the JSON body (one buffer; it is sent once). */
export function encodeStreamHeader(init: StreamHeaderInit): Buffer {
  if ((init.features & ~KNOWN_FEATURES) !== 0) {
    throw migError(ErrorCodes.USAGE, `unknown feature bits 0x${init.features.toString(16)}`);
  }
  if (init.devices.length > MAX_DEVICES) {
    throw migError(ErrorCodes.USAGE, `too many devices: ${init.devices.length}`);
  }
  const body = Buffer.from(
    JSON.stringify({ sender: init.sender ?? {}, devices: init.devices, digest: init.digest ?? null }),
    'utf8',
  );
  const out = Buffer.allocUnsafe(STREAM_HEADER_SIZE + body.length);
  out.writeUInt32LE(STREAM_MAGIC, 0);
  out.writeUInt16LE(WIRE_VERSION_MAJOR, 4);
  out.writeUInt16LE(WIRE_VERSION_MINOR, 6);
  out.writeUInt32LE(init.features >>> 0, 8);
  out.writeUInt16LE(init.devices.length, 12);
  out.writeUInt16LE(0, 14);
  out.writeUInt32LE(body.length, 16);
  out.writeUInt32LE(crc32(body), 20);
  out.writeUInt32LE(crc32(out.subarray(0, 24)), 24);
  body.copy(out, STREAM_HEADER_SIZE);
  return out;
}

/** The fixed part of a stream header, checked; the body is read and checked by `parseStreamHeaderBody`. */
export interface StreamHeaderFixed {
  versionMajor: number;
  versionMinor: number;
  features: number;
  deviceCount: number;
  bodyLength: number;
  bodyCrc: number;
}

export interface HeaderLimits {
  maxHeaderBytes: number;
  maxDevices: number;
}

/**
 * Check the 28 fixed bytes (`buf` holds at least that many). Throws a MigError: CORRUPT for a bad
 * magic or crc, UNSUPPORTED for another major version or unknown features, LIMIT for a body or
 * device table over the limits (checked before the body is buffered).
 */
export function decodeStreamHeaderFixed(buf: Buffer, limits: HeaderLimits): StreamHeaderFixed {
  const magic = buf.readUInt32LE(0);
  if (magic !== STREAM_MAGIC) {
    throw migError(ErrorCodes.CORRUPT, `not a vfio-mig stream (magic 0x${magic.toString(16)})`);
  }
  const versionMajor = buf.readUInt16LE(4);
  const versionMinor = buf.readUInt16LE(6);
  // The version is read before the crc: a later major may lay the rest of the header out differently.
  if (versionMajor !== WIRE_VERSION_MAJOR) {
    throw migError(ErrorCodes.UNSUPPORTED, `wire format version ${versionMajor}.${versionMinor} is not supported (speaks ${WIRE_VERSION_MAJOR}.x)`, {
      detail: { versionMajor, versionMinor },
    });
  }
  if (crc32(buf.subarray(0, 24)) !== buf.readUInt32LE(24)) {
    throw migError(ErrorCodes.CORRUPT, 'stream header crc mismatch');
  }
  const features = buf.readUInt32LE(8);
  if ((features & ~KNOWN_FEATURES) !== 0) {
    throw migError(ErrorCodes.UNSUPPORTED, `unknown stream features 0x${features.toString(16)}`, { detail: { features } });
  }
  const deviceCount = buf.readUInt16LE(12);
  const bodyLength = buf.readUInt32LE(16);
  if (deviceCount > limits.maxDevices) {
    throw migError(ErrorCodes.LIMIT, `stream has ${deviceCount} devices, limit ${limits.maxDevices}`, {
      detail: { deviceCount, maxDevices: limits.maxDevices },
    });
  }
  if (bodyLength > limits.maxHeaderBytes) {
    throw migError(ErrorCodes.LIMIT, `stream header body of ${bodyLength} bytes, limit ${limits.maxHeaderBytes}`, {
      detail: { bodyLength, maxHeaderBytes: limits.maxHeaderBytes },
    });
  }
  return { versionMajor, versionMinor, features, deviceCount, bodyLength, bodyCrc: buf.readUInt32LE(20) };
}

function isIdentity(v: unknown): v is DeviceIdentity {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.kind === 'string' &&
    typeof o.model === 'string' &&
    typeof o.version === 'string' &&
    typeof o.flags === 'number' &&
    typeof o.stateSize === 'number'
  );
}

/** Check and parse the JSON body of a stream header. Throws CORRUPT on any inconsistency. */
export function parseStreamHeaderBody(fixed: StreamHeaderFixed, body: Buffer): StreamHeader {
  if (crc32(body) !== fixed.bodyCrc) throw migError(ErrorCodes.CORRUPT, 'stream header body crc mismatch');
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (cause) {
    throw migError(ErrorCodes.CORRUPT, 'stream header body is not JSON', { cause });
  }
  const o = parsed as { sender?: unknown; devices?: unknown; digest?: unknown };
  if (typeof o !== 'object' || o === null || !Array.isArray(o.devices)) {
    throw migError(ErrorCodes.CORRUPT, 'stream header body has no device table');
  }
  if (o.devices.length !== fixed.deviceCount) {
    throw migError(ErrorCodes.CORRUPT, `device table has ${o.devices.length} entries, header says ${fixed.deviceCount}`);
  }
  const devices: WireDevice[] = [];
  for (const d of o.devices as unknown[]) {
    const e = d as { name?: unknown; identity?: unknown };
    if (typeof e !== 'object' || e === null || typeof e.name !== 'string' || !isIdentity(e.identity)) {
      throw migError(ErrorCodes.CORRUPT, 'malformed device table entry');
    }
    devices.push({ name: e.name, identity: e.identity });
  }
  const digest = o.digest === null || o.digest === undefined ? null : o.digest;
  if (digest !== null && typeof digest !== 'string') throw migError(ErrorCodes.CORRUPT, 'malformed digest algorithm');
  const sender = typeof o.sender === 'object' && o.sender !== null ? (o.sender as Record<string, unknown>) : {};
  return {
    versionMajor: fixed.versionMajor,
    versionMinor: fixed.versionMinor,
    features: fixed.features,
    sender,
    devices,
    digest,
  };
}

/** Decode a whole stream header from one buffer (tests, tools). Returns the header and its size. */
export function decodeStreamHeader(
  buf: Buffer,
  limits: HeaderLimits = { maxHeaderBytes: 1 << 20, maxDevices: 256 },
): { header: StreamHeader; size: number } {
  if (buf.length < STREAM_HEADER_SIZE) throw migError(ErrorCodes.TRUNCATED, 'stream header truncated');
  const fixed = decodeStreamHeaderFixed(buf, limits);
  const size = STREAM_HEADER_SIZE + fixed.bodyLength;
  if (buf.length < size) throw migError(ErrorCodes.TRUNCATED, 'stream header body truncated');
  return { header: parseStreamHeaderBody(fixed, buf.subarray(STREAM_HEADER_SIZE, size)), size };
}

// ---------------------------------------------------------------------------------------------
// Record header

/** Write a record header into `out` at `offset` (28 bytes), including its own crc. */
export function writeRecordHeader(out: Buffer, h: RecordHeader, offset = 0): void {
  out[offset] = RECORD_SYNC;
  out[offset + 1] = h.type;
  out[offset + 2] = h.flags;
  out[offset + 3] = 0;
  out.writeUInt16LE(h.device, offset + 4);
  out.writeUInt16LE(h.channel, offset + 6);
  out.writeUInt32LE(h.seq >>> 0, offset + 8);
  out.writeUInt32LE(h.payloadLength, offset + 12);
  out.writeUInt32LE(h.rawLength, offset + 16);
  out.writeUInt32LE(h.payloadCrc >>> 0, offset + 20);
  out.writeUInt32LE(crc32(out.subarray(offset, offset + 24)), offset + 24);
}

/** A fresh 28-byte record header. */
export function encodeRecordHeader(h: RecordHeader): Buffer {
  const out = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
  writeRecordHeader(out, h, 0);
  return out;
}

/**
 * Check and decode a record header (`buf` holds at least 28 bytes from `offset`). Throws CORRUPT on a
 * bad sync byte or header crc, or lengths that contradict each other; UNSUPPORTED on unknown flag bits.
 * Bounds against the receiver's limits are the caller's (RecordDecoder) business.
 */
export function decodeRecordHeader(buf: Buffer, offset = 0): RecordHeader {
  if (buf[offset] !== RECORD_SYNC) {
    throw migError(ErrorCodes.CORRUPT, `bad record sync byte 0x${(buf[offset] ?? 0).toString(16)}`);
  }
  if (crc32(buf.subarray(offset, offset + 24)) !== buf.readUInt32LE(offset + 24)) {
    throw migError(ErrorCodes.CORRUPT, 'record header crc mismatch');
  }
  const flags = buf[offset + 2]!;
  if ((flags & ~KNOWN_RECORD_FLAGS) !== 0 || buf[offset + 3] !== 0) {
    throw migError(ErrorCodes.UNSUPPORTED, `unknown record flags 0x${flags.toString(16)}`, { detail: { flags } });
  }
  const h: RecordHeader = {
    type: buf[offset + 1]!,
    flags,
    device: buf.readUInt16LE(offset + 4),
    channel: buf.readUInt16LE(offset + 6),
    seq: buf.readUInt32LE(offset + 8),
    payloadLength: buf.readUInt32LE(offset + 12),
    rawLength: buf.readUInt32LE(offset + 16),
    payloadCrc: buf.readUInt32LE(offset + 20),
  };
  if ((flags & RecordFlags.COMPRESSED) === 0 && h.rawLength !== h.payloadLength) {
    throw migError(ErrorCodes.CORRUPT, `uncompressed record with raw length ${h.rawLength} != payload length ${h.payloadLength}`);
  }
  if ((flags & RecordFlags.COMPRESSED) !== 0 && h.payloadLength === 0) {
    throw migError(ErrorCodes.CORRUPT, 'compressed record with an empty payload');
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// Payloads of the typed records

export function encodeRoundPayload(r: Pick<RoundRecord, 'round' | 'roundFlags' | 'bytes' | 'initialBytes' | 'dirtyBytes'>): Buffer {
  const out = Buffer.allocUnsafe(ROUND_PAYLOAD_SIZE);
  out.writeUInt32LE(r.round >>> 0, 0);
  out.writeUInt32LE(r.roundFlags >>> 0, 4);
  writeU64(out, r.bytes, 8);
  writeU64(out, r.initialBytes, 16);
  writeU64(out, r.dirtyBytes, 24);
  return out;
}

export function decodeRoundPayload(p: Buffer): Pick<RoundRecord, 'round' | 'roundFlags' | 'bytes' | 'initialBytes' | 'dirtyBytes'> {
  if (p.length !== ROUND_PAYLOAD_SIZE) throw migError(ErrorCodes.CORRUPT, `ROUND payload of ${p.length} bytes`);
  return {
    round: p.readUInt32LE(0),
    roundFlags: p.readUInt32LE(4),
    bytes: readU64(p, 8),
    initialBytes: readU64(p, 16),
    dirtyBytes: readU64(p, 24),
  };
}

export function encodeDeviceEndPayload(bytes: number, algorithm: string, digestHex: string): Buffer {
  const alg = Buffer.from(algorithm, 'latin1');
  const dig = Buffer.from(digestHex, 'hex');
  if (alg.length > 255 || dig.length > 255 || dig.length * 2 !== digestHex.length) {
    throw migError(ErrorCodes.USAGE, 'digest algorithm name or digest too long, or digest not hex');
  }
  const out = Buffer.allocUnsafe(10 + alg.length + dig.length);
  writeU64(out, bytes, 0);
  out[8] = alg.length;
  alg.copy(out, 9);
  out[9 + alg.length] = dig.length;
  dig.copy(out, 10 + alg.length);
  return out;
}

export function decodeDeviceEndPayload(p: Buffer): { bytes: number; algorithm: string; digest: string } {
  if (p.length < 10) throw migError(ErrorCodes.CORRUPT, `DEVICE_END payload of ${p.length} bytes`);
  const bytes = readU64(p, 0);
  const algLen = p[8]!;
  if (p.length < 10 + algLen) throw migError(ErrorCodes.CORRUPT, 'DEVICE_END payload truncated');
  const algorithm = p.toString('latin1', 9, 9 + algLen);
  const digLen = p[9 + algLen]!;
  if (p.length !== 10 + algLen + digLen) throw migError(ErrorCodes.CORRUPT, 'DEVICE_END payload length mismatch');
  return { bytes, algorithm, digest: p.toString('hex', 10 + algLen) };
}

export function encodeStreamEndPayload(bytes: number): Buffer {
  const out = Buffer.allocUnsafe(STREAM_END_PAYLOAD_SIZE);
  writeU64(out, bytes, 0);
  return out;
}

export function decodeStreamEndPayload(p: Buffer): number {
  if (p.length !== STREAM_END_PAYLOAD_SIZE) throw migError(ErrorCodes.CORRUPT, `STREAM_END payload of ${p.length} bytes`);
  return readU64(p, 0);
}

/**
 * Frame one record as [header, payload] buffers, uncompressed, with `seq` given: the pure form of what
 * RecordEncoder does, for tests, benches and tools that write raw streams.
 */
export function encodeRecord(
  h: { type: number; flags?: number; device?: number; channel?: number; seq: number },
  payload: Buffer,
  checksums = true,
): [Buffer, Buffer] {
  const header = encodeRecordHeader({
    type: h.type,
    flags: (h.flags ?? 0) & ~RecordFlags.COMPRESSED,
    device: h.device ?? NO_DEVICE,
    channel: h.channel ?? 0,
    seq: h.seq,
    payloadLength: payload.length,
    rawLength: payload.length,
    payloadCrc: checksums ? crc32(payload) : 0,
  });
  return [header, payload];
}

// ---------------------------------------------------------------------------------------------
// DEVICE_END digests

/** What both ends feed a device's raw DATA bytes into. */
export interface DataDigest {
  update(data: Buffer): unknown;
  digest(encoding: 'hex'): string;
  /**
   * Only on the 'crc32' digest: append `length` bytes whose crc32 is already known (a record's
   * payload crc), as if update() had been given them, without reading them again.
   */
  appendCrc?(crc: number, length: number): void;
}

// crc32 arithmetic for appendCrc: polynomials modulo the CRC-32 polynomial, in the reflected bit
// order zlib uses (bit 31 is the coefficient of x^0). Appending n bytes with crc c to a running
// value v gives v * x^(8n) + c (mod P), so a record's crc joins the chain in 32 steps per set bit of
// its length instead of a pass over its bytes.
const CRC32_POLY = 0xedb88320;
const X0 = 0x80000000;

/** a(x) * b(x) mod P. */
function mulModP(a: number, b: number): number {
  let product = 0;
  for (let term = X0; term !== 0; term >>>= 1) {
    if ((a & term) !== 0) product ^= b;
    b = (b & 1) !== 0 ? (b >>> 1) ^ CRC32_POLY : b >>> 1;
  }
  return product >>> 0;
}

/** X_POW2[k] = x^(2^k) mod P, grown on demand (k < 64 covers every safe-integer length). */
const X_POW2: number[] = [X0 >>> 1];

/** x^(8 * bytes) mod P. */
function shiftBytes(bytes: number): number {
  let p = X0;
  let k = 3;
  for (let n = bytes; n > 0; n = Math.floor(n / 2), k++) {
    while (X_POW2.length <= k) X_POW2.push(mulModP(X_POW2[X_POW2.length - 1]!, X_POW2[X_POW2.length - 1]!));
    if (n % 2 === 1) p = mulModP(X_POW2[k]!, p);
  }
  return p;
}

/** The crc32 of A followed by B, from crc32(A), crc32(B) and B's length (zlib's crc32_combine). */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (!Number.isSafeInteger(lengthB) || lengthB < 0) throw new RangeError(`bad length ${lengthB}`);
  return (mulModP(shiftBytes(lengthB), crcA >>> 0) ^ crcB) >>> 0;
}

/**
 * The digest algorithm names this package speaks: every `crypto.createHash` name, plus 'crc32'
 * (zlib.crc32 chained over the raw data: enough to catch a lost, repeated or mis-decompressed
 * record, not an adversary, like any unkeyed digest). The encoder and the decoder join an
 * uncompressed record's payload crc to the chain (appendCrc), so 'crc32' costs no pass over the
 * data where records carry crcs; sha256 is one more pass at about 1.5 GB/s a side.
 */
export function digestAvailable(algorithm: string): boolean {
  return algorithm === 'crc32' || getHashes().includes(algorithm);
}

/** A fresh digest; throws VFIO_MIG_ERR_UNSUPPORTED for an unknown algorithm. */
export function createDataDigest(algorithm: string): DataDigest {
  if (algorithm === 'crc32') {
    let value = 0;
    return {
      update(data: Buffer) {
        value = crc32(data, value);
      },
      appendCrc(crc: number, length: number) {
        value = crc32Combine(value, crc, length);
      },
      digest() {
        const out = Buffer.allocUnsafe(4);
        out.writeUInt32BE(value >>> 0, 0);
        return out.toString('hex');
      },
    };
  }
  if (!getHashes().includes(algorithm)) throw migError(ErrorCodes.UNSUPPORTED, `digest algorithm ${algorithm} is not available`);
  return createHash(algorithm);
}
