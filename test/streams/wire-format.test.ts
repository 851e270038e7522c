import { describe, it, expect } from 'vitest';
import { crc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import {
  encodeStreamHeader,
  decodeStreamHeader,
  encodeRecordHeader,
  decodeRecordHeader,
  encodeRecord,
  encodeRoundPayload,
  decodeRoundPayload,
  encodeDeviceEndPayload,
  decodeDeviceEndPayload,
  encodeStreamEndPayload,
  decodeStreamEndPayload,
  Features,
  RecordFlags,
  RecordType,
  RECORD_HEADER_SIZE,
  RECORD_SYNC,
  STREAM_HEADER_SIZE,
  STREAM_MAGIC,
  NO_DEVICE,
  crc32Combine,
  createDataDigest,
} from '../../src/streams/wire-format.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { devices, identity } from './wire-helpers.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

describe('stream header', () => {
  it('round-trips the device table, sender and digest with the documented fixed layout', () => {
    const devs = [{ name: '0000:3b:00.1', identity: identity({ kind: 'mtty', model: 'ports=2', stateSize: 4096 }) }];
    const buf = encodeStreamHeader({ features: Features.ZSTD | Features.CRC32, sender: { host: 'h1', pid: 42 }, devices: devs, digest: 'sha256' });
    expect(buf.readUInt32LE(0)).toBe(STREAM_MAGIC);
    expect(buf.subarray(0, 4).toString('latin1')).toBe('VFMG');
    expect(buf.readUInt16LE(4)).toBe(1);
    expect(buf.readUInt16LE(6)).toBe(0);
    expect(buf.readUInt32LE(8)).toBe(3);
    expect(buf.readUInt16LE(12)).toBe(1);
    expect(buf.readUInt32LE(16)).toBe(buf.length - STREAM_HEADER_SIZE);
    expect(buf.readUInt32LE(20)).toBe(crc32(buf.subarray(STREAM_HEADER_SIZE)));
    expect(buf.readUInt32LE(24)).toBe(crc32(buf.subarray(0, 24)));
    const { header, size } = decodeStreamHeader(buf);
    expect(size).toBe(buf.length);
    expect(header).toEqual({ versionMajor: 1, versionMinor: 0, features: 3, sender: { host: 'h1', pid: 42 }, devices: devs, digest: 'sha256' });
  });

  it('accepts a newer minor version and refuses another major with UNSUPPORTED', () => {
    const buf = encodeStreamHeader({ features: 0, devices: devices(1) });
    const minor = Buffer.from(buf);
    minor.writeUInt16LE(7, 6);
    minor.writeUInt32LE(crc32(minor.subarray(0, 24)), 24);
    expect(decodeStreamHeader(minor).header.versionMinor).toBe(7);
    const major = Buffer.from(buf);
    major.writeUInt16LE(2, 4);
    major.writeUInt32LE(crc32(major.subarray(0, 24)), 24);
    expect(codeOf(() => decodeStreamHeader(major))).toBe(ErrorCodes.UNSUPPORTED);
  });

  it('refuses a bad magic, a bad header crc, a bad body crc and unknown feature bits', () => {
    const buf = encodeStreamHeader({ features: Features.CRC32, devices: devices(2) });
    const magic = Buffer.from(buf);
    magic[0] = 0x41;
    expect(codeOf(() => decodeStreamHeader(magic))).toBe(ErrorCodes.CORRUPT);
    const hcrc = Buffer.from(buf);
    hcrc[12] = 3; // device count changed, crc not
    expect(codeOf(() => decodeStreamHeader(hcrc))).toBe(ErrorCodes.CORRUPT);
    const body = Buffer.from(buf);
    body[STREAM_HEADER_SIZE + 5] ^= 1;
    expect(codeOf(() => decodeStreamHeader(body))).toBe(ErrorCodes.CORRUPT);
    const feat = Buffer.from(buf);
    feat.writeUInt32LE(0x80, 8);
    feat.writeUInt32LE(crc32(feat.subarray(0, 24)), 24);
    expect(codeOf(() => decodeStreamHeader(feat))).toBe(ErrorCodes.UNSUPPORTED);
  });

  it('checks the device count and body length against limits from the fixed part alone', () => {
    const buf = encodeStreamHeader({ features: 0, devices: devices(5) });
    const fixedOnly = buf.subarray(0, STREAM_HEADER_SIZE);
    expect(codeOf(() => decodeStreamHeader(buf, { maxDevices: 4, maxHeaderBytes: 1 << 20 }))).toBe(ErrorCodes.LIMIT);
    expect(codeOf(() => decodeStreamHeader(buf, { maxDevices: 8, maxHeaderBytes: 16 }))).toBe(ErrorCodes.LIMIT);
    expect(codeOf(() => decodeStreamHeader(fixedOnly))).toBe(ErrorCodes.TRUNCATED);
  });

  it('refuses a device table that disagrees with the count or lacks an identity', () => {
    const body = Buffer.from(JSON.stringify({ sender: {}, devices: [{ name: 'x', identity: { kind: 'sim' } }], digest: null }));
    const fixed = Buffer.alloc(STREAM_HEADER_SIZE);
    fixed.writeUInt32LE(STREAM_MAGIC, 0);
    fixed.writeUInt16LE(1, 4);
    fixed.writeUInt16LE(1, 12);
    fixed.writeUInt32LE(body.length, 16);
    fixed.writeUInt32LE(crc32(body), 20);
    fixed.writeUInt32LE(crc32(fixed.subarray(0, 24)), 24);
    expect(codeOf(() => decodeStreamHeader(Buffer.concat([fixed, body])))).toBe(ErrorCodes.CORRUPT);
  });
});

describe('record header', () => {
  const h = { type: RecordType.DATA, flags: RecordFlags.COMPRESSED, device: 3, channel: 9, seq: 0xfffffffe, payloadLength: 100, rawLength: 4096, payloadCrc: 0xdeadbeef };

  it('has the documented 28-byte little-endian layout and round-trips', () => {
    const b = encodeRecordHeader(h);
    expect(b.length).toBe(RECORD_HEADER_SIZE);
    expect(b[0]).toBe(RECORD_SYNC);
    expect(b[1]).toBe(1);
    expect(b[2]).toBe(2);
    expect(b[3]).toBe(0);
    expect(b.readUInt16LE(4)).toBe(3);
    expect(b.readUInt16LE(6)).toBe(9);
    expect(b.readUInt32LE(8)).toBe(0xfffffffe);
    expect(b.readUInt32LE(12)).toBe(100);
    expect(b.readUInt32LE(16)).toBe(4096);
    expect(b.readUInt32LE(20)).toBe(0xdeadbeef);
    expect(b.readUInt32LE(24)).toBe(crc32(b.subarray(0, 24)));
    expect(decodeRecordHeader(b)).toEqual(h);
  });

  it('catches any single flipped bit in the header (so a corrupt length is never trusted)', () => {
    const b = encodeRecordHeader(h);
    for (let bit = 0; bit < RECORD_HEADER_SIZE * 8; bit++) {
      const c = Buffer.from(b);
      c[bit >> 3] ^= 1 << (bit & 7);
      expect(codeOf(() => decodeRecordHeader(c)), `bit ${bit}`).toBeDefined();
    }
  });

  it('refuses unknown flag bits (UNSUPPORTED) and inconsistent lengths (CORRUPT)', () => {
    const bad = encodeRecordHeader({ ...h, flags: 0x10 });
    expect(codeOf(() => decodeRecordHeader(bad))).toBe(ErrorCodes.UNSUPPORTED);
    const lens = encodeRecordHeader({ ...h, flags: 0, payloadLength: 10, rawLength: 11 });
    expect(codeOf(() => decodeRecordHeader(lens))).toBe(ErrorCodes.CORRUPT);
    const empty = encodeRecordHeader({ ...h, payloadLength: 0 });
    expect(codeOf(() => decodeRecordHeader(empty))).toBe(ErrorCodes.CORRUPT);
  });

  it('encodeRecord frames a payload as two buffers without copying it', () => {
    const payload = Buffer.from('hello');
    const [head, body] = encodeRecord({ type: RecordType.CONTROL, seq: 5 }, payload);
    expect(body).toBe(payload);
    const d = decodeRecordHeader(head);
    expect(d).toMatchObject({ type: RecordType.CONTROL, device: NO_DEVICE, seq: 5, payloadLength: 5, rawLength: 5, payloadCrc: crc32(payload) });
    const [head0] = encodeRecord({ type: RecordType.CONTROL, seq: 5 }, payload, false);
    expect(decodeRecordHeader(head0).payloadCrc).toBe(0);
  });
});

describe('typed payloads', () => {
  it('ROUND carries u64 byte counts beyond 4 GiB', () => {
    const r = { round: 7, roundFlags: 3, bytes: 2 ** 40 + 5, initialBytes: 2 ** 33, dirtyBytes: 12345 };
    expect(decodeRoundPayload(encodeRoundPayload(r))).toEqual(r);
    expect(codeOf(() => decodeRoundPayload(Buffer.alloc(31)))).toBe(ErrorCodes.CORRUPT);
    const huge = encodeRoundPayload(r);
    huge.writeUInt32LE(0xffffffff, 12); // above 2^53
    expect(codeOf(() => decodeRoundPayload(huge))).toBe(ErrorCodes.CORRUPT);
  });

  it('DEVICE_END carries the byte count, the algorithm and the digest', () => {
    const digest = 'ab'.repeat(32);
    expect(decodeDeviceEndPayload(encodeDeviceEndPayload(2 ** 35, 'sha256', digest))).toEqual({ bytes: 2 ** 35, algorithm: 'sha256', digest });
    expect(decodeDeviceEndPayload(encodeDeviceEndPayload(0, '', ''))).toEqual({ bytes: 0, algorithm: '', digest: '' });
    const p = encodeDeviceEndPayload(1, 'sha256', digest);
    expect(codeOf(() => decodeDeviceEndPayload(p.subarray(0, p.length - 1)))).toBe(ErrorCodes.CORRUPT);
    expect(codeOf(() => encodeDeviceEndPayload(1, 'sha256', 'xyz'))).toBe(ErrorCodes.USAGE);
  });

  it('STREAM_END carries the total data bytes', () => {
    expect(decodeStreamEndPayload(encodeStreamEndPayload(2 ** 45))).toBe(2 ** 45);
    expect(codeOf(() => decodeStreamEndPayload(Buffer.alloc(4)))).toBe(ErrorCodes.CORRUPT);
    expect(codeOf(() => encodeStreamEndPayload(-1))).toBe(ErrorCodes.USAGE);
  });
});

describe('crc32Combine', () => {
  it('gives the crc32 of two buffers joined, from their crcs and the second length', () => {
    const data = randomBytes(3_000_000);
    for (const [a, b] of [[0, 0], [0, 17], [17, 17], [1, 2], [4096, 1 << 20], [999_999, 3_000_000], [0, 3_000_000], [3_000_000, 3_000_000]] as const) {
      const left = data.subarray(0, a);
      const right = data.subarray(a, b);
      expect(crc32Combine(crc32(left), crc32(right), right.length)).toBe(crc32(data.subarray(0, b)));
    }
    // Lengths past 32 bits: appending 2^32 + 5 zero bytes twice equals appending them in one go.
    const z = crc32Combine(crc32Combine(0x12345678, 0, 2 ** 32 + 5), 0, 2 ** 32 + 5);
    expect(z).toBe(crc32Combine(0x12345678, 0, 2 ** 33 + 10));
    expect(() => crc32Combine(0, 0, -1)).toThrow(RangeError);
    expect(() => crc32Combine(0, 0, 1.5)).toThrow(RangeError);
  });

  it("the 'crc32' digest mixes appendCrc and update in any order", () => {
    const parts = [randomBytes(10), randomBytes(70_000), Buffer.alloc(0), randomBytes(5)];
    const d = createDataDigest('crc32');
    parts.forEach((p, i) => (i % 2 === 0 ? d.update(p) : d.appendCrc!(crc32(p), p.length)));
    expect(d.digest('hex')).toBe(crc32(Buffer.concat(parts)).toString(16).padStart(8, '0'));
    expect(createDataDigest('sha256').appendCrc).toBeUndefined();
  });
});
