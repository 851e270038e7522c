// RecordDecoder with a CompressionPool: frames decompress in worker threads while the parser goes on,
// and what comes out (records, order, the first error) must be what the event-loop decoder produces.
import { describe, it, expect, afterAll } from 'vitest';
import { crc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { CompressionPool, zstd } from '../../src/streams/compression-pool.js';
import {
  encodeStreamHeader,
  encodeRecordHeader,
  encodeRecord,
  encodeStreamEndPayload,
  Features,
  RECORD_HEADER_SIZE,
  RecordFlags,
  RecordType,
  type DataRecord,
  type DecodedObject,
  type RecordInput,
} from '../../src/streams/wire-format.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { ForwardingPool, byteByByte, decodeChunks, devices, encodeAll, mixedData, randomSplit } from './wire-helpers.js';

const MiB = 1024 * 1024;
const pool = new CompressionPool({ size: 2 });
afterAll(() => pool.close());

interface Call {
  rawLength: number;
  into: number | null;
  settle: () => void;
}

/**
 * A pool that hands each job to the real one but lets the test decide when its result is seen:
 * `gate` false settles jobs as they finish; otherwise they wait in `calls` until settle() or
 * settleAll(order).
 */
class GatedPool extends ForwardingPool {
  calls: Call[] = [];
  gate: boolean;
  constructor(inner: CompressionPool, gate = true) {
    super(inner);
    this.gate = gate;
  }
  decompress(frame: Buffer, rawLength: number, opts: { into?: Buffer } = {}): Promise<Buffer> {
    const into = opts.into?.length ?? null;
    const job = this.inner.decompress(frame, rawLength, opts);
    if (!this.gate) {
      this.calls.push({ rawLength, into, settle: () => {} });
      return job;
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.calls.push({ rawLength, into, settle: () => job.then(resolve, reject) });
    });
  }
  /** Let the held jobs through, newest first when `reverse`. */
  settleAll(reverse = false): void {
    const held = this.calls.splice(0);
    if (reverse) held.reverse();
    for (const c of held) c.settle();
  }
}

/** Forwards every job, counting what it lends, what is given back and which frames are shared memory. */
class LendingPool extends ForwardingPool {
  lent: Buffer[] = [];
  released: boolean[] = [];
  framesShared = 0;
  override lend(length: number): Buffer {
    const b = super.lend(length);
    this.lent.push(b);
    return b;
  }
  override releaseFrame(frame: Buffer): boolean {
    const ok = super.releaseFrame(frame);
    if (ok) this.released.push(ok);
    return ok;
  }
  decompress(frame: Buffer, rawLength: number, opts: { into?: Buffer } = {}): Promise<Buffer> {
    if (frame.buffer instanceof SharedArrayBuffer) this.framesShared++;
    return this.inner.decompress(frame, rawLength, opts);
  }
}

/** A digest-checked stream of compressible 256 KiB records on two devices, compressed. */
async function zstdStream(n = 12, size = 256 * 1024): Promise<{ bytes: Buffer; data: Buffer[] }> {
  const data = Array.from({ length: n }, (_, i) => mixedData(size, 70 + i));
  const records: RecordInput[] = [{ type: RecordType.CONTROL, message: { first: true } }];
  data.forEach((payload, i) => {
    records.push({ type: RecordType.DATA, device: i % 2, payload });
    if (i % 4 === 3) records.push({ type: RecordType.ROUND, device: 0, round: i });
  });
  const incompressible = randomBytes(100_000); // does not shrink: sent raw
  records.push({ type: RecordType.DATA, device: 1, payload: incompressible });
  data.push(incompressible);
  records.push({ type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.DEVICE_END, device: 1 }, { type: RecordType.STREAM_END });
  const { bytes } = await encodeAll(records, { devices: devices(2), compression: true, digest: 'sha256' });
  return { bytes, data };
}

function dataOf(objects: DecodedObject[]): Buffer[] {
  return objects.flatMap((o) => (o.type === RecordType.DATA ? [o.payload] : []));
}

function seqs(objects: DecodedObject[]): number[] {
  return objects.flatMap((o) => (o.type === RecordType.STREAM_HEADER ? [] : [o.seq]));
}

/** Feed chunks one write at a time, in the background; resolves once the last write was taken or refused. */
async function feed(dec: RecordDecoder, chunks: Buffer[], end = true): Promise<void> {
  for (const c of chunks) {
    if (dec.destroyed) return;
    if (!dec.write(c)) await new Promise((r) => (dec.once('drain', r), dec.once('close', r)));
  }
  if (end && !dec.destroyed) dec.end();
}

function collect(dec: RecordDecoder): Promise<{ objects: DecodedObject[]; error: (Error & { code?: string }) | null }> {
  const objects: DecodedObject[] = [];
  dec.on('data', (o: DecodedObject) => objects.push(o));
  return new Promise((resolve) => {
    dec.on('end', () => resolve({ objects, error: null }));
    dec.on('error', (error: Error) => resolve({ objects, error }));
  });
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

/** zstd frame of `data` at level 1. */
function frame(data: Buffer): Buffer {
  const out = Buffer.alloc(zstd.compressBound(data.length));
  return out.subarray(0, new zstd.CCtx().compress(out, data, 1));
}

/** A hand-made compressed DATA record for device 0. */
function zrec(f: Buffer, rawLength: number, seq: number, crc = crc32(f)): Buffer {
  return Buffer.concat([
    encodeRecordHeader({ type: RecordType.DATA, flags: RecordFlags.COMPRESSED, device: 0, channel: 0, seq, payloadLength: f.length, rawLength, payloadCrc: crc }),
    f,
  ]);
}
const zhead = () => encodeStreamHeader({ features: Features.CRC32 | Features.ZSTD, devices: devices(1) });

describe('RecordDecoder: decompression in a pool', () => {
  it('decodes what the event-loop decoder decodes, whole, in random splits and byte by byte', async () => {
    await pool.warm();
    const { bytes, data } = await zstdStream();
    const plain = await decodeChunks([bytes]);
    expect(plain.error).toBeNull();
    for (const chunks of [[bytes], randomSplit(bytes, 3, 40_000), randomSplit(bytes, 8, 900), byteByByte(bytes.subarray(0, 300_000)).concat([bytes.subarray(300_000)])]) {
      const counting = new GatedPool(pool, false);
      const got = await decodeChunks(chunks, { pool: counting.asPool() });
      expect(got.error).toBeNull();
      expect(seqs(got.objects)).toEqual(seqs(plain.objects));
      expect(dataOf(got.objects).map((p, i) => p.equals(data[i]!))).toEqual(data.map(() => true));
      // Every compressed DATA record (all but the incompressible one) went through the pool.
      expect(counting.calls.length).toBe(data.length - 1);
    }
  });

  it('keeps stream order when the workers finish newest first; digests and byte counts still check', async () => {
    await pool.warm();
    const { bytes, data } = await zstdStream(16);
    const gated = new GatedPool(pool);
    const dec = new RecordDecoder({ pool: gated.asPool() });
    const out = collect(dec);
    const feeding = feed(dec, randomSplit(bytes, 5, 64 * 1024));
    // Settle whatever is held, newest first, until the stream ends.
    let done = false;
    void out.then(() => (done = true));
    while (!done) {
      await tick(2);
      gated.settleAll(true);
    }
    await feeding;
    const { objects, error } = await out;
    expect(error).toBeNull();
    const s = seqs(objects);
    expect(s).toEqual([...s].sort((a, b) => a - b));
    expect(dataOf(objects).map((p, i) => p.equals(data[i]!))).toEqual(data.map(() => true));
    expect(objects.at(-1)!.type).toBe(RecordType.STREAM_END);
  });

  it('holds its input while maxPendingBytes wait for the pool, and goes on when they come out', async () => {
    await pool.warm();
    const data = Array.from({ length: 40 }, (_, i) => mixedData(MiB, 200 + i));
    const records: RecordInput[] = data.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
    records.push({ type: RecordType.STREAM_END });
    const { chunks } = await encodeAll(records, { devices: devices(1), compression: true });
    const gated = new GatedPool(pool);
    const dec = new RecordDecoder({ pool: gated.asPool(), maxPendingBytes: 4 * MiB, readableHighWaterMark: 1000 });
    const out = collect(dec);
    let accepted = 0;
    for (const c of chunks) dec.write(c, () => accepted++);
    dec.end();
    await tick(50);
    // Nothing came back from the pool: the decoder stopped taking input a little past 4 MiB of raw
    // bytes (the write that crossed the cap is held), with five frames handed out.
    expect(gated.calls.length).toBe(5);
    expect(accepted).toBeLessThan(chunks.length / 2);
    let done = false;
    void out.then(() => (done = true));
    let most = 0;
    while (!done) {
      most = Math.max(most, gated.calls.length);
      gated.settleAll();
      await tick(2);
    }
    const { objects, error } = await out;
    expect(error).toBeNull();
    expect(most).toBeLessThanOrEqual(5);
    expect(dataOf(objects).map((p, i) => p.equals(data[i]!))).toEqual(data.map(() => true));
    expect(accepted).toBe(chunks.length);
  });

  describe('bad input: the first bad record fails the stream, in stream order', () => {
    const good = mixedData(200_000, 9);
    const f = frame(good);

    it('a frame that does not decompress in a worker is CORRUPT; the records before it come out, none after', async () => {
      await pool.warm();
      const bytes = Buffer.concat([
        zhead(),
        zrec(f, good.length, 0),
        zrec(frame(Buffer.alloc(300_000, 7)), 200_000, 1), // expands past its declared length
        zrec(f, good.length, 2),
        ...encodeRecord({ type: RecordType.STREAM_END, seq: 3 }, encodeStreamEndPayload(3 * good.length)),
      ]);
      for (const chunks of [[bytes], randomSplit(bytes, 2, 5000)]) {
        const { objects, error } = await decodeChunks(chunks, { pool });
        expect(error?.code).toBe(ErrorCodes.CORRUPT);
        expect((error as { detail?: { seq?: number } }).detail?.seq).toBe(1);
        expect(seqs(objects)).toEqual([0]);
        expect((objects[1] as DataRecord).payload.equals(good)).toBe(true);
      }
    });

    it('a bad crc behind a frame still in the pool: the frame comes out first, then the error, nothing after', async () => {
      await pool.warm();
      const gated = new GatedPool(pool);
      const bytes = Buffer.concat([
        zhead(),
        zrec(f, good.length, 0),
        zrec(f, good.length, 1, crc32(f) ^ 1),
        zrec(f, good.length, 2),
        ...encodeRecord({ type: RecordType.STREAM_END, seq: 3 }, encodeStreamEndPayload(3 * good.length)),
      ]);
      const dec = new RecordDecoder({ pool: gated.asPool() });
      const out = collect(dec);
      let accepted = 0;
      dec.write(bytes, () => accepted++);
      await tick(20);
      // The parser found the bad record, but the error waits behind record 0 (held in the pool).
      expect(dec.destroyed).toBe(false);
      expect(accepted).toBe(0);
      expect(gated.calls.length).toBe(1);
      gated.settleAll();
      const { objects, error } = await out;
      expect(error?.code).toBe(ErrorCodes.CORRUPT);
      expect(error?.message).toMatch(/crc/);
      expect((error as { detail?: { seq?: number } }).detail?.seq).toBe(1);
      expect(seqs(objects)).toEqual([0]);
    });

    it('a stream cut short behind frames in the pool: they come out, then TRUNCATED', async () => {
      await pool.warm();
      const gated = new GatedPool(pool);
      const whole = Buffer.concat([zhead(), zrec(f, good.length, 0), zrec(f, good.length, 1), zrec(f, good.length, 2)]);
      const dec = new RecordDecoder({ pool: gated.asPool() });
      const out = collect(dec);
      dec.end(whole.subarray(0, whole.length - 10));
      await tick(20);
      expect(dec.destroyed).toBe(false);
      gated.settleAll();
      const { objects, error } = await out;
      expect(error?.code).toBe(ErrorCodes.TRUNCATED);
      expect(seqs(objects)).toEqual([0, 1]);
    });

    it('bytes after STREAM_END, behind frames in the pool: the records come out, then CORRUPT', async () => {
      await pool.warm();
      const gated = new GatedPool(pool);
      const end = Buffer.concat(encodeRecord({ type: RecordType.STREAM_END, seq: 2 }, encodeStreamEndPayload(2 * good.length)));
      const dec = new RecordDecoder({ pool: gated.asPool() });
      const out = collect(dec);
      dec.write(Buffer.concat([zhead(), zrec(f, good.length, 0), zrec(f, good.length, 1), end]));
      dec.write(Buffer.from('trailing'));
      await tick(20);
      gated.settleAll();
      const { objects, error } = await out;
      expect(error?.code).toBe(ErrorCodes.CORRUPT);
      expect(error?.message).toMatch(/after STREAM_END/);
      expect(seqs(objects)).toEqual([0, 1, 2]);
    });

    it('a pool closed under the decoder fails it with ECANCELED, not a hang', async () => {
      const own = new CompressionPool({ size: 1 });
      await own.warm();
      const gated = new GatedPool(own, false);
      const dec = new RecordDecoder({ pool: gated.asPool() });
      const out = collect(dec);
      dec.write(Buffer.concat([zhead(), zrec(f, good.length, 0)]));
      await own.close();
      const { error } = await out;
      expect(error?.code).toBe('ECANCELED');
    });
  });

  it('recycle: payloads given back go to the workers to hold later frames; kept ones are never overwritten', async () => {
    await pool.warm();
    const { bytes, data } = await zstdStream(24);
    const counting = new GatedPool(pool, false);
    // A small pending cap, so that the parser waits for records to come out (and be given back).
    const dec = new RecordDecoder({ pool: counting.asPool(), recycle: true, maxPendingBytes: 512 * 1024 });
    const kept: Array<{ payload: Buffer; want: Buffer }> = [];
    let i = 0;
    let released = 0;
    dec.on('data', (o: DecodedObject) => {
      if (o.type !== RecordType.DATA) return;
      const want = data[i]!;
      expect(o.payload.equals(want)).toBe(true);
      if (i++ % 3 === 0) kept.push({ payload: o.payload, want });
      else if (dec.release(o.payload)) released++;
    });
    const done = new Promise((r) => dec.on('end', r));
    await feed(dec, randomSplit(bytes, 6, 64 * 1024));
    await done;
    expect(released).toBeGreaterThan(10);
    // Later frames were decompressed into released memory of their size.
    const reused = counting.calls.filter((c) => c.into !== null);
    expect(reused.length).toBeGreaterThan(0);
    expect(reused.every((c) => c.into === c.rawLength)).toBe(true);
    for (const k of kept) expect(k.payload.equals(k.want)).toBe(true);
  });

  it('frames spanning input chunks are gathered in memory the pool lends, and each is given back once decompressed, also when it is bad', async () => {
    await pool.warm();
    const { bytes, data } = await zstdStream(16);
    const good = mixedData(200_000, 9);
    const f = frame(good);
    const bad = Buffer.concat([
      zhead(),
      zrec(f, good.length, 0),
      zrec(frame(mixedData(300_000, 10)), 200_000, 1), // expands past its declared length
      ...encodeRecord({ type: RecordType.STREAM_END, seq: 2 }, encodeStreamEndPayload(good.length)),
    ]);
    // Chunks smaller than every frame: each frame is gathered.
    for (const [stream, want] of [
      [bytes, null],
      [bad, ErrorCodes.CORRUPT],
    ] as const) {
      const lending = new LendingPool(pool);
      const chunks: Buffer[] = [];
      for (let at = 0; at < stream.length; at += 20_000) chunks.push(Buffer.from(stream.subarray(at, at + 20_000)));
      const { objects, error } = await decodeChunks(chunks, { pool: lending.asPool() });
      expect(error?.code ?? null).toBe(want);
      if (want === null) expect(dataOf(objects).map((p, k) => p.equals(data[k]!))).toEqual(data.map(() => true));
      await tick(20);
      expect(lending.lent.length).toBe(want === null ? 16 : 2);
      // What went to the workers was the lent (shared) memory, and all of it came back once.
      expect(lending.framesShared).toBe(lending.lent.length);
      expect(lending.released).toEqual(lending.lent.map(() => true));
    }
  });

  it('a frame half assembled when the pool changes keeps where it was put: lent memory after a close, the scratch after a boot', async () => {
    const a = mixedData(300_000, 21);
    const b = mixedData(300_000, 22);
    const stream = Buffer.concat([
      zhead(),
      zrec(frame(a), a.length, 0),
      zrec(frame(b), b.length, 1),
      ...encodeRecord({ type: RecordType.STREAM_END, seq: 2 }, encodeStreamEndPayload(a.length + b.length)),
    ]);
    // Copies, so that no two chunks are consecutive views of one buffer (those count as one): the
    // second one puts the first frame in the memory it is assembled in, before the pool changes.
    const cut = zhead().length + RECORD_HEADER_SIZE + 1000;
    const head = [Buffer.from(stream.subarray(0, cut)), Buffer.from(stream.subarray(cut, cut + 1000))];
    const rest = () => randomSplit(stream.subarray(cut + 1000), 4, 50_000).map((c) => Buffer.from(c));
    // The head, then the pool changes, then the rest: both records come out intact.
    const decodeAcross = async (p: CompressionPool, change: () => Promise<void>): Promise<void> => {
      const dec = new RecordDecoder({ pool: p });
      const out = collect(dec);
      for (const c of head) dec.write(c);
      await change();
      for (const c of rest()) dec.write(c);
      dec.end();
      const r = await out;
      expect(r.error).toBeNull();
      expect(dataOf(r.objects).map((q, k) => q.equals([a, b][k]!))).toEqual([true, true]);
    };
    // 1. Booted pool, closed mid-frame: the frame assembled in lent memory decompresses here and
    //    the lent memory goes back; the next frame, with the pool closed, decompresses here too.
    const closing = new CompressionPool({ size: 1 });
    await closing.warm();
    const lending = new LendingPool(closing);
    await decodeAcross(lending.asPool(), async () => {
      expect(lending.lent).toHaveLength(1);
      await closing.close();
    });
    expect(lending.framesShared).toBe(0);
    expect(lending.released).toEqual([true]);
    // 2. Cold pool, booted mid-frame: the frame started in the decoder's scratch never goes to a
    //    worker (the scratch holds the next spanning frame); the one after it does.
    const cold = new CompressionPool({ size: 1 });
    try {
      const counting = new GatedPool(cold, false);
      await decodeAcross(counting.asPool(), () => cold.warm());
      expect(counting.calls.map((c) => c.rawLength)).toEqual([b.length]);
    } finally {
      await cold.close();
    }
  });

  it('a pool whose workers have not booted: the first frames decompress on the event loop and the workers start', async () => {
    const cold = new CompressionPool({ size: 2 });
    try {
      const counting = new GatedPool(cold, false);
      const { bytes, data } = await zstdStream(30);
      const dec = new RecordDecoder({ pool: counting.asPool() });
      const out = collect(dec);
      const chunks = randomSplit(bytes, 11, 64 * 1024);
      // The first quarter at once: no worker is up yet, so nothing goes to the pool.
      const quarter = Math.floor(chunks.length / 4);
      for (const c of chunks.slice(0, quarter)) dec.write(c);
      expect(counting.calls.length).toBe(0);
      expect(cold.workers).toBe(2);
      await cold.warm();
      await feed(dec, chunks.slice(quarter));
      const { objects, error } = await out;
      expect(error).toBeNull();
      expect(dataOf(objects).map((p, k) => p.equals(data[k]!))).toEqual(data.map(() => true));
      expect(counting.calls.length).toBeGreaterThan(0);
    } finally {
      await cold.close();
    }
  });
});
