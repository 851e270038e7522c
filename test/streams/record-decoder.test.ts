import { describe, it, expect } from 'vitest';
import { crc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { zstd } from '../../src/streams/compression-pool.js';
import {
  encodeStreamHeader,
  encodeRecordHeader,
  encodeRecord,
  encodeDeviceEndPayload,
  encodeStreamEndPayload,
  Features,
  RecordFlags,
  RecordType,
  RECORD_HEADER_SIZE,
  STREAM_HEADER_SIZE,
  type DataRecord,
  type DecodedObject,
  type RecordInput,
} from '../../src/streams/wire-format.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { byteByByte, craftStream, decodeChunks, devices, encodeAll, mixedData, randomSplit } from './wire-helpers.js';

/** A stream with every record type, two devices, compressed and raw records, and a digest. */
async function sampleStream(compression: boolean): Promise<{ bytes: Buffer; data: Buffer[] }> {
  const data = [mixedData(64 * 1024, 3), randomBytes(10_000), Buffer.alloc(70_000), Buffer.from('tiny'), mixedData(200_000, 4)];
  const records: RecordInput[] = [
    { type: RecordType.CONTROL, message: { hello: 'world', n: [1, 2] } },
    { type: RecordType.DATA, device: 0, payload: data[0]! },
    { type: RecordType.DATA, device: 1, payload: data[1]!, channel: 2 },
    { type: RecordType.ROUND, device: 0, round: 0, initialBytes: 100, dirtyBytes: 7 },
    { type: RecordType.DATA, device: 0, payload: data[2]! },
    { type: RecordType.DATA, device: 1, payload: data[3]! },
    { type: RecordType.DEVICE_END, device: 1 },
    { type: RecordType.DATA, device: 0, payload: data[4]! },
    { type: RecordType.DEVICE_END, device: 0 },
    { type: RecordType.STREAM_END },
  ];
  const { bytes } = await encodeAll(records, { devices: devices(2), compression, digest: 'sha256', sender: { host: 'a' } });
  return { bytes, data };
}

function summary(objects: DecodedObject[]): unknown[] {
  return objects.map((o) => (o.type === RecordType.DATA ? { ...o, flags: 0, payload: o.payload.toString('base64') } : o.type === RecordType.STREAM_HEADER ? o : { ...o, flags: 0 }));
}

/** Each chunk copied into memory of its own, so that no two are consecutive views of one buffer. */
function apart(chunks: Buffer[]): Buffer[] {
  return chunks.map((c) => {
    const own = Buffer.allocUnsafeSlow(c.length);
    c.copy(own);
    return own;
  });
}

function seqs(objects: DecodedObject[]): number[] {
  return objects.flatMap((o) => (o.type === RecordType.STREAM_HEADER ? [] : [o.seq]));
}

describe('RecordDecoder: segmentation', () => {
  for (const compression of [false, true]) {
    it(`decodes the same records whole, byte by byte and in random splits (compression ${compression})`, async () => {
      const { bytes, data } = await sampleStream(compression);
      const whole = await decodeChunks([bytes]);
      expect(whole.error).toBeNull();
      expect(whole.objects.map((o) => o.type)).toEqual([0, 4, 1, 1, 2, 1, 1, 3, 1, 3, 5]);
      const got = whole.objects.filter((o): o is DataRecord => o.type === RecordType.DATA).map((o) => o.payload);
      expect(got.map((b) => b.toString('hex'))).toEqual([data[0], data[1], data[2], data[3], data[4]].map((b) => b!.toString('hex')));
      expect(whole.objects[1]).toMatchObject({ type: RecordType.CONTROL, message: { hello: 'world', n: [1, 2] }, seq: 0 });
      expect(whole.objects[3]).toMatchObject({ device: 1, channel: 2 });
      expect(whole.objects[4]).toMatchObject({ type: RecordType.ROUND, device: 0, round: 0, bytes: 65536, initialBytes: 100, dirtyBytes: 7 });
      expect(whole.objects[10]).toMatchObject({ type: RecordType.STREAM_END, bytes: 64 * 1024 + 10_000 + 70_000 + 4 + 200_000 });
      expect(whole.dec.header?.sender).toEqual({ host: 'a' });
      const ref = summary(whole.objects);

      const bbb = await decodeChunks(byteByByte(bytes));
      expect(bbb.error).toBeNull();
      expect(summary(bbb.objects)).toEqual(ref);
      for (const seed of [1, 2, 3, 4, 5]) {
        const split = await decodeChunks(randomSplit(bytes, seed, seed * 5000));
        expect(split.error).toBeNull();
        expect(summary(split.objects)).toEqual(ref);
      }
      // The same cuts in separate memory: records span chunks and take the copy (or scratch) path.
      const apartBbb = await decodeChunks(apart(byteByByte(bytes)));
      expect(apartBbb.error).toBeNull();
      expect(summary(apartBbb.objects)).toEqual(ref);
      for (const seed of [1, 2, 3]) {
        const split = await decodeChunks(apart(randomSplit(bytes, seed, seed * 5000)));
        expect(split.error).toBeNull();
        expect(summary(split.objects)).toEqual(ref);
      }
    });
  }

  it('merges consecutive views of one buffer: a record spread over them is emitted as a view, not copied', async () => {
    const a = mixedData(100_000, 5);
    const { bytes } = await encodeAll([{ type: RecordType.DATA, device: 0, payload: a }, { type: RecordType.STREAM_END }], { devices: devices(1) });
    // What FdSource pushes while a pipe fills its chunk: consecutive 64 KiB views of one buffer.
    const { objects, error } = await decodeChunks(randomSplit(bytes, 7, 64 * 1024));
    expect(error).toBeNull();
    const data = objects.filter((o): o is DataRecord => o.type === RecordType.DATA);
    expect(data[0]!.payload.buffer).toBe(bytes.buffer);
    expect(data[0]!.payload.equals(a)).toBe(true);
  });

  it('compressed frames spanning chunks share a reused scratch; no payload handed out is overwritten by a later record', async () => {
    // Frames of growing and shrinking sizes (the scratch grows, then is reused), split into separate
    // 1000-byte chunks so that every frame spans chunks.
    const sizes = [10_000, 300_000, 40_000, 700_000, 5_000, 300_000];
    const data = sizes.map((n, i) => mixedData(n, 20 + i).fill(0, 0, 4096)); // a zero page: always compressible
    const records: RecordInput[] = data.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
    records.push({ type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(records, { devices: devices(1), compression: true });
    const chunks = apart(Array.from({ length: Math.ceil(bytes.length / 1000) }, (_, i) => bytes.subarray(i * 1000, (i + 1) * 1000)));
    // Hold every payload unread until the end: a buffer reused under a consumer would show here.
    const { objects, error } = await decodeChunks(chunks, { readableHighWaterMark: 100, maxOutputBytes: 64 * 1024 * 1024 });
    expect(error).toBeNull();
    const got = objects.filter((o): o is DataRecord => o.type === RecordType.DATA);
    expect(got.every((d) => (d.flags & RecordFlags.COMPRESSED) !== 0)).toBe(true);
    expect(got.map((d, i) => d.payload.equals(data[i]!))).toEqual(sizes.map(() => true));
    expect(new Set(got.map((d) => d.payload.buffer)).size).toBe(sizes.length);
  });

  it('decodes thousands of records from one chunk, as views into that chunk (zero-copy)', async () => {
    const n = 3000;
    const records: RecordInput[] = [];
    for (let i = 0; i < n; i++) records.push({ type: RecordType.DATA, device: 0, payload: Buffer.from(`record-${i}`) });
    records.push({ type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(records, { devices: devices(1) });
    const dec = new RecordDecoder({ readableHighWaterMark: n + 10 });
    const out: DecodedObject[] = [];
    dec.on('data', (o: DecodedObject) => out.push(o));
    dec.end(bytes);
    await new Promise((res) => dec.on('end', res));
    const data = out.filter((o): o is DataRecord => o.type === RecordType.DATA);
    expect(data.length).toBe(n);
    expect(data[1234]!.payload.toString()).toBe('record-1234');
    expect(data.every((d) => d.payload.buffer === bytes.buffer)).toBe(true);
  });

  it('copies only the records that span chunks', async () => {
    const a = Buffer.alloc(5000, 1);
    const b = Buffer.alloc(5000, 2);
    const { bytes } = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: a }, { type: RecordType.DATA, device: 0, payload: b }, { type: RecordType.STREAM_END }],
      { devices: devices(1) },
    );
    // Cut in the middle of the second payload: the first record lies in chunk 1, the second spans.
    const cut = bytes.length - 36 - 2500;
    const c1 = Buffer.from(bytes.subarray(0, cut));
    const c2 = Buffer.from(bytes.subarray(cut));
    const { objects, error } = await decodeChunks([c1, c2]);
    expect(error).toBeNull();
    const data = objects.filter((o): o is DataRecord => o.type === RecordType.DATA);
    expect(data[0]!.payload.buffer).toBe(c1.buffer);
    expect(data[1]!.payload.buffer).not.toBe(c1.buffer);
    expect(data[1]!.payload.buffer).not.toBe(c2.buffer);
    expect(data[1]!.payload.equals(b)).toBe(true);
  });
});

describe('RecordDecoder: recycle', () => {
  /** 24 raw or compressed 256 KiB records cut into 64 KiB chunks (every payload spans chunks), one zero-copy record in a chunk of its own. */
  async function stream(compression: boolean): Promise<{ chunks: Buffer[]; data: Buffer[] }> {
    const data = Array.from({ length: 24 }, (_, i) => mixedData(256 * 1024, 40 + i));
    const records: RecordInput[] = data.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
    records.push({ type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(records, { devices: devices(1), compression });
    const chunks = apart(Array.from({ length: Math.ceil(bytes.length / 65536) }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536)));
    return { chunks, data };
  }

  for (const compression of [false, true]) {
    it(`payloads given back are reused for later records; kept ones are never overwritten (${compression ? 'zstd' : 'raw'})`, async () => {
      const { chunks, data } = await stream(compression);
      const dec = new RecordDecoder({ recycle: true });
      const got: Buffer[] = [];
      const copies: Buffer[] = [];
      const memories = new Set<ArrayBufferLike>();
      let n = 0;
      dec.on('data', (o: DecodedObject) => {
        if (o.type !== RecordType.DATA) return;
        got.push(o.payload);
        copies.push(Buffer.from(o.payload));
        memories.add(o.payload.buffer);
        // Keep every fourth payload; give the others back at once.
        if (n++ % 4 !== 0) {
          expect(dec.release(o.payload)).toBe(true);
          expect(dec.release(o.payload)).toBe(false); // once only
        }
      });
      for (const c of chunks) dec.write(c);
      dec.end();
      await new Promise((r) => dec.on('end', r));
      expect(copies.map((c, i) => c.equals(data[i]!))).toEqual(data.map(() => true));
      // The kept payloads still hold their bytes; the released ones were reused.
      for (let i = 0; i < got.length; i += 4) expect(got[i]!.equals(data[i]!)).toBe(true);
      expect(memories.size).toBeLessThan(data.length);
    });
  }

  it('keeps a burst of released payloads (up to 16 MiB), so the records after it reuse all of them', async () => {
    const { chunks, data } = await stream(true);
    const dec = new RecordDecoder({ recycle: true });
    const held: Buffer[] = [];
    const memories = new Set<ArrayBufferLike>();
    const copies: Buffer[] = [];
    dec.on('data', (o: DecodedObject) => {
      if (o.type !== RecordType.DATA) return;
      memories.add(o.payload.buffer);
      copies.push(Buffer.from(o.payload));
      // The first 13 are held (a sink still writing them), then given back at once, as a sink's
      // completed writes come back together; the later ones are all held.
      held.push(o.payload);
      if (copies.length === 13) for (const p of held.splice(0)) expect(dec.release(p)).toBe(true);
    });
    for (const c of chunks) dec.write(c);
    dec.end();
    await new Promise((r) => dec.on('end', r));
    expect(copies.map((c, i) => c.equals(data[i]!))).toEqual(data.map(() => true));
    // 13 buffers were out at once; each of the 11 later records found one of them released.
    expect(memories.size).toBe(13);
  });

  it('refuses what it did not allocate: zero-copy views, foreign buffers, and everything without the option', async () => {
    const { bytes } = await encodeAll([{ type: RecordType.DATA, device: 0, payload: Buffer.from('in one chunk') }, { type: RecordType.STREAM_END }], { devices: devices(1) });
    const dec = new RecordDecoder({ recycle: true });
    const out: DataRecord[] = [];
    dec.on('data', (o: DecodedObject) => o.type === RecordType.DATA && out.push(o));
    dec.end(bytes);
    await new Promise((r) => dec.on('end', r));
    expect(out[0]!.payload.buffer).toBe(bytes.buffer);
    expect(dec.release(out[0]!.payload)).toBe(false);
    expect(dec.release(Buffer.alloc(16))).toBe(false);
    const { chunks } = await stream(false);
    const plain = new RecordDecoder();
    let refused = 0;
    plain.on('data', (o: DecodedObject) => o.type === RecordType.DATA && !plain.release(o.payload) && refused++);
    for (const c of chunks) plain.write(c);
    plain.end();
    await new Promise((r) => plain.on('end', r));
    expect(refused).toBe(24);
  });
});

describe('RecordDecoder: backpressure', () => {
  it('holds its input while the records not yet read exceed maxOutputBytes, then drains to the end', async () => {
    const payload = Buffer.alloc(256 * 1024, 4);
    const records: RecordInput[] = Array.from({ length: 64 }, () => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
    records.push({ type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(records, { devices: devices(1) });
    const chunks = randomSplit(bytes, 12, 64 * 1024);
    // A large object highWaterMark, so only the byte cap can stop it.
    const dec = new RecordDecoder({ maxOutputBytes: 1024 * 1024, readableHighWaterMark: 1000 });
    let accepted = 0;
    for (const c of chunks) dec.write(c, () => accepted++);
    await new Promise((r) => setTimeout(r, 50));
    // Nothing read: about 1 MiB of records (plus the chunk that crossed the cap) and no more.
    expect(dec.readableLength).toBeLessThan(8);
    expect(accepted).toBeLessThan(chunks.length / 3);
    let got = 0;
    const done = new Promise((r) => dec.on('end', r));
    dec.on('data', (o: DecodedObject) => {
      if (o.type === RecordType.DATA) got += o.payload.length;
    });
    dec.end();
    await done;
    expect(got).toBe(64 * payload.length);
    expect(accepted).toBe(chunks.length);
  });

  it('async iteration with a slow consumer delivers everything under the cap', async () => {
    const payload = Buffer.alloc(100_000, 6);
    const records: RecordInput[] = Array.from({ length: 40 }, () => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
    records.push({ type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(records, { devices: devices(1) });
    const dec = new RecordDecoder({ maxOutputBytes: 300_000, readableHighWaterMark: 1000 });
    const feeding = (async () => {
      for (const c of randomSplit(bytes, 4, 64 * 1024)) {
        if (!dec.write(c)) await new Promise((r) => dec.once('drain', r));
      }
      dec.end();
    })();
    let got = 0;
    let maxQueued = 0;
    for await (const o of dec as AsyncIterable<DecodedObject>) {
      maxQueued = Math.max(maxQueued, dec.readableLength);
      if (o.type === RecordType.DATA) got += o.payload.length;
      await new Promise((r) => setTimeout(r, 1));
    }
    await feeding;
    expect(got).toBe(40 * payload.length);
    // 300 kB of 100 kB records, plus what one 64 KiB input chunk completes.
    expect(maxQueued).toBeLessThanOrEqual(5);
  });
});

/** Decode `bytes` whole, byte by byte and in random splits: same error code each way, and nothing at or after `badSeq`. */
async function expectFailure(bytes: Buffer, code: string, badSeq: number, opts = {}): Promise<DecodedObject[]> {
  let first: DecodedObject[] | null = null;
  for (const chunks of [[bytes], byteByByte(bytes), randomSplit(bytes, 9, 700)]) {
    const { objects, error } = await decodeChunks(chunks, opts);
    expect(error?.code).toBe(code);
    expect(seqs(objects).every((s) => s < badSeq)).toBe(true);
    first ??= objects;
  }
  return first!;
}

describe('RecordDecoder: bad input', () => {
  const payloads = [Buffer.from('aaaa'), Buffer.from('bbbb'), Buffer.from('cccc'), Buffer.from('dddd')];
  const good = (): Buffer =>
    craftStream([
      ...payloads.map((p) => ({ type: RecordType.DATA, device: 0, payload: p })),
      { type: RecordType.STREAM_END, payload: encodeStreamEndPayload(16) },
    ]);
  const recordOffset = (i: number) => STREAM_HEADER_SIZE + encodeStreamHeader({ features: Features.CRC32, devices: devices(1) }).length - STREAM_HEADER_SIZE + i * (RECORD_HEADER_SIZE + 4);

  it('the unmodified crafted stream decodes', async () => {
    const { error, objects } = await decodeChunks([good()]);
    expect(error).toBeNull();
    expect(seqs(objects)).toEqual([0, 1, 2, 3, 4]);
  });

  it('a flipped payload byte is CORRUPT; the records before it were emitted, none after', async () => {
    const b = good();
    b[recordOffset(2) + RECORD_HEADER_SIZE + 1] ^= 0x40;
    const objects = await expectFailure(b, ErrorCodes.CORRUPT, 2);
    expect(seqs(objects)).toEqual([0, 1]);
  });

  it('a corrupt length is caught by the header crc before it is trusted', async () => {
    const b = good();
    b.writeUInt32LE(0x7fffffff, recordOffset(1) + 12);
    await expectFailure(b, ErrorCodes.CORRUPT, 1);
  });

  it('a bad sync byte is CORRUPT', async () => {
    const b = good();
    b[recordOffset(3)] = 0;
    await expectFailure(b, ErrorCodes.CORRUPT, 3);
  });

  it('an oversized length (valid crc) is LIMIT as soon as the header arrives, before any payload', async () => {
    const head = encodeStreamHeader({ features: Features.CRC32, devices: devices(1) });
    const rec = encodeRecordHeader({ type: RecordType.DATA, flags: 0, device: 0, channel: 0, seq: 0, payloadLength: 0xfffffff0, rawLength: 0xfffffff0, payloadCrc: 0 });
    const dec = new RecordDecoder({ maxPayload: 1 << 20 });
    const err = new Promise<{ code?: string }>((res) => dec.on('error', res));
    dec.resume();
    dec.write(Buffer.concat([head, rec]));
    expect((await err).code).toBe(ErrorCodes.LIMIT);
    // A compressed record whose raw length exceeds the limit is refused the same way.
    const rec2 = encodeRecordHeader({ type: RecordType.DATA, flags: RecordFlags.COMPRESSED, device: 0, channel: 0, seq: 0, payloadLength: 10, rawLength: (1 << 20) + 1, payloadCrc: 0 });
    const zhead = encodeStreamHeader({ features: Features.CRC32 | Features.ZSTD, devices: devices(1) });
    await expectFailure(Buffer.concat([zhead, rec2, Buffer.alloc(10)]), ErrorCodes.LIMIT, 0, { maxPayload: 1 << 20 });
  });

  it('an unknown mandatory type is UNSUPPORTED; an unknown optional type is skipped', async () => {
    const p = Buffer.from('future');
    const bad = craftStream([
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
      { type: 0x40, payload: p },
      { type: RecordType.DATA, device: 0, payload: payloads[1]! },
    ]);
    await expectFailure(bad, ErrorCodes.UNSUPPORTED, 1);
    const ok = craftStream([
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
      { type: 0x40, flags: RecordFlags.OPTIONAL, payload: p },
      { type: RecordType.DATA, device: 0, payload: payloads[1]! },
      { type: RecordType.STREAM_END, payload: encodeStreamEndPayload(8) },
    ]);
    const { error, objects, dec } = await decodeChunks(randomSplit(ok, 4, 20));
    expect(error).toBeNull();
    expect(seqs(objects)).toEqual([0, 2, 3]);
    expect(dec.skippedRecords).toBe(1);
  });

  it('a skipped optional record is still crc-checked', async () => {
    const b = craftStream([
      { type: 0x41, flags: RecordFlags.OPTIONAL, payload: Buffer.from('xyzw') },
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
    ]);
    b[b.length - RECORD_HEADER_SIZE - 4 - 1] ^= 1; // last byte of the optional record's payload
    await expectFailure(b, ErrorCodes.CORRUPT, 0);
  });

  it('a version it does not speak is UNSUPPORTED before anything is emitted', async () => {
    const b = good();
    b.writeUInt16LE(2, 4);
    b.writeUInt32LE(crc32(b.subarray(0, 24)), 24);
    const { objects, error } = await decodeChunks([b]);
    expect(error?.code).toBe(ErrorCodes.UNSUPPORTED);
    expect(objects).toEqual([]);
  });

  it('unknown record flag bits are UNSUPPORTED', async () => {
    const b = craftStream([{ type: RecordType.DATA, device: 0, payload: payloads[0]! }]);
    const at = b.length - 4 - RECORD_HEADER_SIZE;
    b[at + 2] = 0x80;
    b.writeUInt32LE(crc32(b.subarray(at, at + 24)), at + 24);
    await expectFailure(b, ErrorCodes.UNSUPPORTED, 0);
  });

  it('a lost or repeated record is CORRUPT (sequence)', async () => {
    const b = good();
    const lost = Buffer.concat([b.subarray(0, recordOffset(1)), b.subarray(recordOffset(2))]);
    await expectFailure(lost, ErrorCodes.CORRUPT, 1);
    const repeated = Buffer.concat([b.subarray(0, recordOffset(2)), b.subarray(recordOffset(1))]);
    await expectFailure(repeated, ErrorCodes.CORRUPT, 2);
  });

  it('truncation: mid-record, mid-header, before the header, and without STREAM_END', async () => {
    const b = good();
    for (const cut of [recordOffset(2) + 10, recordOffset(2) + RECORD_HEADER_SIZE + 2, 10, STREAM_HEADER_SIZE + 3, 0, recordOffset(2)]) {
      const { objects, error } = await decodeChunks(cut === 0 ? [] : [b.subarray(0, cut)]);
      expect(error?.code, `cut ${cut}`).toBe(ErrorCodes.TRUNCATED);
      expect(seqs(objects).every((s) => s < 2)).toBe(true);
    }
    // requireEnd false: a stream may stop between records, but never inside one.
    const between = await decodeChunks([b.subarray(0, recordOffset(2))], { requireEnd: false });
    expect(between.error).toBeNull();
    expect(seqs(between.objects)).toEqual([0, 1]);
    const inside = await decodeChunks([b.subarray(0, recordOffset(2) + 30)], { requireEnd: false });
    expect(inside.error?.code).toBe(ErrorCodes.TRUNCATED);
  });

  it('bytes after STREAM_END are CORRUPT, whether in the same chunk or a later one', async () => {
    const b = Buffer.concat([good(), Buffer.from([0xa5])]);
    const same = await decodeChunks([b]);
    expect(same.error?.code).toBe(ErrorCodes.CORRUPT);
    const later = await decodeChunks([good(), Buffer.from([1, 2])]);
    expect(later.error?.code).toBe(ErrorCodes.CORRUPT);
  });

  it('records for a device outside the table, or after its DEVICE_END, are CORRUPT', async () => {
    await expectFailure(craftStream([{ type: RecordType.DATA, device: 1, payload: payloads[0]! }]), ErrorCodes.CORRUPT, 0);
    const after = craftStream([
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
      { type: RecordType.DEVICE_END, device: 0, payload: encodeDeviceEndPayload(4, '', '') },
      { type: RecordType.DATA, device: 0, payload: payloads[1]! },
    ]);
    await expectFailure(after, ErrorCodes.CORRUPT, 2);
  });

  it('a DEVICE_END or STREAM_END byte count that differs from what arrived is CORRUPT', async () => {
    const dev = craftStream([
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
      { type: RecordType.DEVICE_END, device: 0, payload: encodeDeviceEndPayload(5, '', '') },
    ]);
    await expectFailure(dev, ErrorCodes.CORRUPT, 1);
    const end = craftStream([
      { type: RecordType.DATA, device: 0, payload: payloads[0]! },
      { type: RecordType.STREAM_END, payload: encodeStreamEndPayload(3) },
    ]);
    await expectFailure(end, ErrorCodes.CORRUPT, 1);
  });

  it('a digest mismatch is DIGEST', async () => {
    const { bytes } = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: Buffer.from('state') }, { type: RecordType.DEVICE_END, device: 0, digest: '00'.repeat(32) }, { type: RecordType.STREAM_END }],
      { devices: devices(1), digest: 'sha256' },
    );
    await expectFailure(bytes, ErrorCodes.DIGEST, 1);
    // The digest check can be switched off.
    expect((await decodeChunks([bytes], { verifyDigest: false })).error).toBeNull();
  });

  it("the cheap 'crc32' digest round-trips and catches a mismatch; an unknown algorithm is UNSUPPORTED", async () => {
    const state = mixedData(300_000, 8);
    const good = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: state.subarray(0, 100_000) }, { type: RecordType.DATA, device: 0, payload: state.subarray(100_000) }, { type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END }],
      { devices: devices(1), digest: 'crc32', compression: true },
    );
    const ok = await decodeChunks(randomSplit(good.bytes, 5, 50_000));
    expect(ok.error).toBeNull();
    expect(ok.objects[3]).toMatchObject({ type: RecordType.DEVICE_END, algorithm: 'crc32', digest: crc32(state).toString(16).padStart(8, '0') });
    const bad = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: state }, { type: RecordType.DEVICE_END, device: 0, digest: '00000000' }, { type: RecordType.STREAM_END }],
      { devices: devices(1), digest: 'crc32' },
    );
    await expectFailure(bad.bytes, ErrorCodes.DIGEST, 1);
    expect(() => encodeStreamHeader({ features: 0, devices: devices(1), digest: 'no-such-hash' })).not.toThrow();
    const unknown = Buffer.concat([encodeStreamHeader({ features: 0, devices: devices(1), digest: 'no-such-hash' })]);
    const { error } = await decodeChunks([unknown]);
    expect(error?.code).toBe(ErrorCodes.UNSUPPORTED);
    await expect(encodeAll([], { devices: devices(1), digest: 'no-such-hash' })).rejects.toMatchObject({ code: ErrorCodes.UNSUPPORTED });
  });

  it("the 'crc32' digest, chained from the records' crcs, equals crc32 over the raw data with and without compression or record crcs", async () => {
    // Compressible pages, random bytes that go out raw even when compressing, an empty record.
    const parts = [mixedData(200_000, 3), randomBytes(70_000), Buffer.alloc(0), mixedData(1_000_001, 4), randomBytes(1)];
    const whole = crc32(Buffer.concat(parts)).toString(16).padStart(8, '0');
    for (const compression of [false, true]) {
      for (const checksums of [true, false]) {
        const { bytes, enc } = await encodeAll(
          [...parts.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as const), { type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END }],
          { devices: devices(1), digest: 'crc32', compression, checksums },
        );
        if (compression) expect(enc.compressedRecords).toBeGreaterThan(0);
        const out = await decodeChunks(randomSplit(bytes, 11, 70_000));
        expect(out.error).toBeNull();
        expect(out.objects.find((o) => o.type === RecordType.DEVICE_END)).toMatchObject({ algorithm: 'crc32', digest: whole });
      }
    }
  });

  it("the 'crc32' digest still reads the data: a payload altered along with its record crc is DIGEST", async () => {
    const state = mixedData(100_000, 9);
    const altered = Buffer.from(state);
    altered[5000] ^= 0x40;
    const bytes = Buffer.concat([
      encodeStreamHeader({ features: Features.CRC32, devices: devices(1), digest: 'crc32' }),
      // encodeRecord computes the crc of the altered payload: the record itself is consistent.
      ...encodeRecord({ type: RecordType.DATA, device: 0, seq: 0 }, altered),
      ...encodeRecord({ type: RecordType.DEVICE_END, device: 0, seq: 1 }, encodeDeviceEndPayload(state.length, 'crc32', crc32(state).toString(16).padStart(8, '0'))),
      ...encodeRecord({ type: RecordType.STREAM_END, seq: 2 }, encodeStreamEndPayload(state.length)),
    ]);
    await expectFailure(bytes, ErrorCodes.DIGEST, 1);
  });

  it('CONTROL records: invalid JSON is CORRUPT, an oversized one LIMIT before its payload is read', async () => {
    await expectFailure(craftStream([{ type: RecordType.CONTROL, payload: Buffer.from('{nope') }]), ErrorCodes.CORRUPT, 0);
    const big = craftStream([{ type: RecordType.CONTROL, payload: Buffer.from(JSON.stringify({ s: 'x'.repeat(2000) })) }]);
    await expectFailure(big, ErrorCodes.LIMIT, 0, { maxControlBytes: 1000 });
  });

  it('limits: device table size and the bytes held for a record spanning chunks', async () => {
    const many = craftStream([], { devices: 9 });
    await expectFailure(many, ErrorCodes.LIMIT, 0, { maxDevices: 8 });
    const payload = Buffer.alloc(100_000, 9);
    const b = craftStream([{ type: RecordType.DATA, device: 0, payload }, { type: RecordType.STREAM_END, payload: encodeStreamEndPayload(100_000) }]);
    // Whole, the record needs no holding; split, it would have to be held whole: over the limit.
    expect((await decodeChunks([b], { maxQueuedBytes: 64 * 1024 })).error).toBeNull();
    const split = await decodeChunks(randomSplit(b, 3, 8192), { maxQueuedBytes: 64 * 1024 });
    expect(split.error?.code).toBe(ErrorCodes.LIMIT);
  });

  describe('compressed records', () => {
    const zhead = () => encodeStreamHeader({ features: Features.CRC32 | Features.ZSTD, devices: devices(1) });
    const frame = (data: Buffer) => {
      const out = Buffer.alloc(zstd.compressBound(data.length));
      return out.subarray(0, new zstd.CCtx().compress(out, data, 1));
    };
    const rec = (f: Buffer, rawLength: number, seq = 0) =>
      Buffer.concat([
        encodeRecordHeader({ type: RecordType.DATA, flags: RecordFlags.COMPRESSED, device: 0, channel: 0, seq, payloadLength: f.length, rawLength, payloadCrc: crc32(f) }),
        f,
      ]);

    it('a frame that expands past its declared raw length is CORRUPT (no decompression bomb)', async () => {
      const bomb = frame(Buffer.alloc(8 * 1024 * 1024));
      expect(bomb.length).toBeLessThan(1024);
      await expectFailure(Buffer.concat([zhead(), rec(bomb, 4096)]), ErrorCodes.CORRUPT, 0);
    });

    it('a frame smaller than its declared raw length is CORRUPT', async () => {
      const f = frame(Buffer.alloc(1000, 3));
      await expectFailure(Buffer.concat([zhead(), rec(f, 2000)]), ErrorCodes.CORRUPT, 0);
    });

    it('a payload that is not a zstd frame is CORRUPT; the decoder is not poisoned for the next stream', async () => {
      const junk = Buffer.from('definitely not zstd');
      await expectFailure(Buffer.concat([zhead(), rec(junk, 100)]), ErrorCodes.CORRUPT, 0);
      const f = frame(Buffer.alloc(5000, 1));
      const ok = Buffer.concat([zhead(), rec(f, 5000), ...encodeRecord({ type: RecordType.STREAM_END, seq: 1 }, encodeStreamEndPayload(5000))]);
      const { error, objects } = await decodeChunks([ok]);
      expect(error).toBeNull();
      expect((objects[1] as DataRecord).payload.equals(Buffer.alloc(5000, 1))).toBe(true);
    });

    it('a compressed record in a stream that did not announce ZSTD is CORRUPT', async () => {
      const f = frame(Buffer.alloc(5000, 1));
      await expectFailure(Buffer.concat([encodeStreamHeader({ features: Features.CRC32, devices: devices(1) }), rec(f, 5000)]), ErrorCodes.CORRUPT, 0);
    });
  });
});

describe('RecordDecoder: property', () => {
  it('any sequence of records, cut at any points, decodes to what was encoded', async () => {
    const fc = await import('fast-check');
    const record = fc.oneof(
      fc.record({ kind: fc.constant('data' as const), device: fc.integer({ min: 0, max: 2 }), bytes: fc.uint8Array({ maxLength: 3000 }) }),
      fc.record({ kind: fc.constant('control' as const), message: fc.jsonValue({ maxDepth: 2 }) }),
      fc.record({ kind: fc.constant('round' as const), device: fc.integer({ min: 0, max: 2 }), round: fc.nat(1000) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(record, { maxLength: 30 }), fc.array(fc.nat(), { maxLength: 20 }), fc.boolean(), async (recs, cuts, compression) => {
        const input: RecordInput[] = recs.map((r) =>
          r.kind === 'data'
            ? { type: RecordType.DATA, device: r.device, payload: Buffer.from(r.bytes) }
            : r.kind === 'control'
              ? { type: RecordType.CONTROL, message: r.message }
              : { type: RecordType.ROUND, device: r.device, round: r.round },
        );
        input.push({ type: RecordType.STREAM_END });
        const { bytes } = await encodeAll(input, { devices: devices(3), compression: compression ? { minBytes: 1 } : false });
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const p of [...points, bytes.length]) {
          chunks.push(bytes.subarray(prev, p));
          prev = p;
        }
        const { objects, error } = await decodeChunks(chunks);
        expect(error).toBeNull();
        const got = objects.slice(1);
        expect(got.length).toBe(input.length);
        got.forEach((o, i) => {
          const want = input[i]!;
          expect(o.type).toBe(want.type);
          expect(o.type === RecordType.STREAM_HEADER ? -1 : o.seq).toBe(i);
          if (o.type === RecordType.DATA) expect(o.payload.equals((want as { payload: Buffer }).payload)).toBe(true);
          if (o.type === RecordType.CONTROL) expect(o.message).toEqual(JSON.parse(JSON.stringify((want as { message: unknown }).message)));
          if (o.type === RecordType.ROUND) expect(o.round).toBe((want as { round: number }).round);
        });
      }),
      { numRuns: 60 },
    );
  });
});
