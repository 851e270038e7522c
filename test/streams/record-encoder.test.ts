import { describe, it, expect, afterAll } from 'vitest';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { once } from 'node:events';
import { RecordEncoder } from '../../src/streams/record-encoder.js';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';
import {
  decodeRecordHeader,
  RecordFlags,
  RecordType,
  RECORD_HEADER_SIZE,
  type DataRecord,
  type DecodedObject,
  type RecordInput,
} from '../../src/streams/wire-format.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { decodeChunks, devices, encodeAll, mixedData, prng, randomSplit } from './wire-helpers.js';

const pool = new CompressionPool({ size: 2 });
afterAll(() => pool.close());

function dataOf(objects: DecodedObject[], device = 0): Buffer {
  return Buffer.concat(objects.filter((o): o is DataRecord => o.type === RecordType.DATA && o.device === device).map((o) => o.payload));
}

describe('RecordEncoder round trips', () => {
  const profiles: Record<string, () => Buffer> = {
    zero: () => Buffer.alloc(3 * 1024 * 1024),
    random: () => randomBytes(3 * 1024 * 1024),
    mixed: () => mixedData(3 * 1024 * 1024, 11),
  };
  for (const [name, make] of Object.entries(profiles)) {
    for (const level of [null, -1, 1, 3]) {
      it(`${name} data, ${level === null ? 'no compression' : `zstd level ${level}`}`, async () => {
        const state = make();
        const records: RecordInput[] = [];
        for (let off = 0; off < state.length; off += 256 * 1024) {
          records.push({ type: RecordType.DATA, device: 0, payload: state.subarray(off, off + 256 * 1024) });
        }
        records.push({ type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END });
        const { bytes, enc } = await encodeAll(records, {
          devices: devices(1),
          compression: level === null ? false : { level, pool },
          digest: 'sha256',
        });
        const { objects, error } = await decodeChunks(randomSplit(bytes, 7, 128 * 1024));
        expect(error).toBeNull();
        expect(dataOf(objects).equals(state)).toBe(true);
        if (level === null) {
          expect(enc.compressedRecords).toBe(0);
          expect(bytes.length).toBeGreaterThan(state.length);
        } else if (name === 'random') {
          // Incompressible data goes out raw: no record flagged COMPRESSED, no expansion beyond headers.
          expect(enc.compressedRecords).toBe(0);
          expect(objects.some((o) => o.type === RecordType.DATA && (o.flags & RecordFlags.COMPRESSED) !== 0)).toBe(false);
          expect(bytes.length).toBeLessThan(state.length + 4096);
        } else {
          expect(enc.compressedRecords).toBe(12);
          expect(bytes.length).toBeLessThan(state.length * (name === 'zero' ? 0.01 : 0.7));
        }
      });
    }
  }
});

describe('RecordEncoder framing', () => {
  it('pushes header and payload as separate buffers, the payload uncopied', async () => {
    const payload = Buffer.alloc(100_000, 5);
    const { chunks } = await encodeAll([{ type: RecordType.DATA, device: 0, payload, channel: 3 }, { type: RecordType.STREAM_END }], { devices: devices(1) });
    // chunks: stream header, record header, payload, end header, end payload.
    expect(chunks.length).toBe(5);
    expect(chunks[1]!.length).toBe(RECORD_HEADER_SIZE);
    expect(decodeRecordHeader(chunks[1]!)).toMatchObject({ type: RecordType.DATA, device: 0, channel: 3, seq: 0, payloadLength: 100_000 });
    expect(chunks[2]).toBe(payload);
  });

  it('preserves order under the worker pool with small and large, compressible and random records interleaved', async () => {
    const r = prng(5);
    const sent: Buffer[][] = [[], []];
    const records: RecordInput[] = [];
    for (let i = 0; i < 400; i++) {
      const size = r() % 4 === 0 ? 256 * 1024 + (r() % 100_000) : 1 + (r() % 3000);
      const payload = r() % 2 === 0 ? mixedData(size, i) : randomBytes(size);
      payload.writeUInt32LE(i, 0 % Math.max(1, size - 4));
      const device = i % 2;
      sent[device]!.push(payload);
      records.push({ type: RecordType.DATA, device, payload });
      if (i % 50 === 0) records.push({ type: RecordType.CONTROL, message: { i } });
    }
    records.push({ type: RecordType.STREAM_END });
    const { bytes, enc } = await encodeAll(records, { devices: devices(2), compression: { level: 1, pool, minBytes: 64 }, maxInFlightBytes: 4 * 1024 * 1024 });
    expect(enc.compressedRecords).toBeGreaterThan(50);
    const { objects, error } = await decodeChunks(randomSplit(bytes, 2, 64 * 1024));
    expect(error).toBeNull();
    expect(dataOf(objects, 0).equals(Buffer.concat(sent[0]!))).toBe(true);
    expect(dataOf(objects, 1).equals(Buffer.concat(sent[1]!))).toBe(true);
    const controls = objects.filter((o) => o.type === RecordType.CONTROL).map((o) => (o as { message: { i: number } }).message.i);
    expect(controls).toEqual([0, 50, 100, 150, 200, 250, 300, 350]);
  });

  it('compresses on the event loop while no worker has booted, then in the workers (inlineWhileBooting)', async () => {
    const state = mixedData(2 * 1024 * 1024, 21);
    const records = (): RecordInput[] => {
      const out: RecordInput[] = [];
      for (let off = 0; off < state.length; off += 256 * 1024) out.push({ type: RecordType.DATA, device: 0, payload: state.subarray(off, off + 256 * 1024) });
      out.push({ type: RecordType.STREAM_END });
      return out;
    };
    const fresh = new CompressionPool({ size: 2 });
    try {
      // An idle pool: the encoder starts it, and the records written before a worker booted are
      // compressed here rather than queued behind the boot.
      const first = await encodeAll(records(), { devices: devices(1), compression: { pool: fresh } });
      expect(fresh.workers).toBe(2);
      expect(first.enc.inlineCompressedRecords).toBeGreaterThan(0);
      expect(first.enc.compressedRecords).toBe(8);
      const a = await decodeChunks([first.bytes]);
      expect(a.error).toBeNull();
      expect(dataOf(a.objects).equals(state)).toBe(true);
      // Booted: the workers take every record.
      await fresh.warm();
      const second = await encodeAll(records(), { devices: devices(1), compression: { pool: fresh } });
      expect(second.enc.inlineCompressedRecords).toBe(0);
      expect(second.enc.compressedRecords).toBe(8);
      expect(second.bytes.equals(first.bytes)).toBe(true);
    } finally {
      await fresh.close();
    }
    // inlineWhileBooting: false waits for the workers, and so does a slow level (9: 12 ms per MiB).
    for (const compression of [{ inlineWhileBooting: false }, { level: 9 }]) {
      const waiting = new CompressionPool({ size: 2 });
      try {
        const w = await encodeAll(records(), { devices: devices(1), compression: { pool: waiting, ...compression } });
        expect(w.enc.inlineCompressedRecords).toBe(0);
        expect(w.enc.compressedRecords).toBe(8);
      } finally {
        await waiting.close();
      }
    }
  });

  it('transferPayloads moves whole-buffer payloads to the workers and still round-trips', async () => {
    const a = mixedData(512 * 1024, 1);
    const b = randomBytes(300_000);
    const copyA = Buffer.from(a);
    const copyB = Buffer.from(b);
    const owned = Buffer.allocUnsafeSlow(a.length);
    a.copy(owned);
    const ownedB = Buffer.allocUnsafeSlow(b.length);
    b.copy(ownedB);
    const { bytes } = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: owned }, { type: RecordType.DATA, device: 0, payload: ownedB }, { type: RecordType.STREAM_END }],
      { devices: devices(1), compression: { pool }, transferPayloads: true },
    );
    expect(owned.byteLength).toBe(0); // detached: the memory went to the worker
    const { objects, error } = await decodeChunks([bytes]);
    expect(error).toBeNull();
    expect(dataOf(objects).equals(Buffer.concat([copyA, copyB]))).toBe(true);
  });

  it('onPayloadFree hands back a payload that went out compressed, once its frame is ready; never one sent raw or moved', async () => {
    const compressible = mixedData(256 * 1024, 4);
    const random = randomBytes(200_000); // does not shrink: goes out as it is
    const small = Buffer.from('tiny'); // under minBytes: raw without trying
    const freed: Buffer[] = [];
    // Each freed payload is overwritten at once, as a reader reusing its memory would: the stream
    // must still carry the original bytes.
    const onPayloadFree = (p: Buffer): void => {
      freed.push(p);
      p.fill(0xee);
    };
    const originals = [Buffer.from(compressible), Buffer.from(random), Buffer.from(small)];
    const { bytes, enc } = await encodeAll(
      [compressible, random, small].map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as const).concat([{ type: RecordType.STREAM_END } as never]),
      { devices: devices(1), compression: { pool }, onPayloadFree },
    );
    expect(enc.compressedRecords).toBe(1);
    expect(freed).toEqual([compressible]);
    const { objects, error } = await decodeChunks([bytes]);
    expect(error).toBeNull();
    expect(dataOf(objects).equals(Buffer.concat(originals))).toBe(true);
    // Moved to a worker (a booted one: while the pool boots, records compress here): detached, not handed back.
    await pool.warm();
    const moved: Buffer[] = [];
    const owned = Buffer.allocUnsafeSlow(compressible.length);
    originals[0]!.copy(owned);
    await encodeAll([{ type: RecordType.DATA, device: 0, payload: owned }, { type: RecordType.STREAM_END }], {
      devices: devices(1),
      compression: { pool },
      transferPayloads: true,
      onPayloadFree: (p) => moved.push(p),
    });
    expect(owned.byteLength).toBe(0);
    expect(moved).toEqual([]);
  });

  it('minSaving: a record whose frame saves less than 1/32 goes raw unless asked otherwise; both streams decode to the same bytes', async () => {
    const barely = randomBytes(256 * 1024);
    barely.fill(0, 0, 2600); // its frame saves ~1%
    const good = mixedData(256 * 1024, 8);
    const recs: RecordInput[] = [
      { type: RecordType.DATA, device: 0, payload: barely },
      { type: RecordType.DATA, device: 0, payload: good },
      { type: RecordType.STREAM_END },
    ];
    await pool.warm();
    for (const [minSaving, compressed] of [
      [undefined, 1],
      [0, 2],
      [0.9, 0],
    ] as const) {
      // On the event loop (a pool whose workers have not booted: compressSync) and in the workers:
      // the same rule.
      for (const inline of [true, false]) {
        const cold = new CompressionPool({ size: 1 });
        try {
          const compression = inline ? { pool: cold, minSaving } : { pool, minSaving, inlineWhileBooting: false };
          const { bytes, enc } = await encodeAll(recs, { devices: devices(1), digest: 'crc32', compression });
          expect(enc.inlineCompressedRecords).toBe(inline ? 2 : 0);
          expect(enc.compressedRecords).toBe(compressed);
          const { objects, error } = await decodeChunks([bytes]);
          expect(error).toBeNull();
          expect(dataOf(objects).equals(Buffer.concat([barely, good]))).toBe(true);
        } finally {
          await cold.close();
        }
      }
    }
    expect(() => new RecordEncoder({ devices: devices(1), compression: { pool, minSaving: 1 } })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
  });

  it('recycleFrames: frames given back with release() once read carry later frames, and the stream stays intact', async () => {
    const p = new CompressionPool({ size: 2 });
    try {
      await p.warm(); // frames from the workers (records compressed inline while booting are fresh memory)
      // A small in-flight cap: few frames out at once, so later ones meet released memory.
      const enc = new RecordEncoder({ devices: devices(1), compression: { pool: p }, recycleFrames: true, maxInFlightBytes: 1024 * 1024 });
      const out: Buffer[] = [];
      const memory = new Set<ArrayBufferLike>();
      let released = 0;
      let refused = 0;
      // The reader copies each chunk out (as a transport writes it), then gives it back and
      // scribbles over a released frame, as the frame's next user would.
      enc.on('data', (c: Buffer) => {
        out.push(Buffer.from(c));
        if (c.buffer instanceof SharedArrayBuffer) memory.add(c.buffer);
        if (enc.release(c)) {
          released++;
          c.fill(0xee);
        } else refused++;
      });
      const ended = once(enc, 'end');
      const payloads = Array.from({ length: 40 }, (_, i) => (i % 5 === 4 ? randomBytes(100_000) : mixedData(256 * 1024, 100 + i)));
      for (const payload of payloads) if (!enc.write({ type: RecordType.DATA, device: 0, payload })) await once(enc, 'drain');
      enc.end({ type: RecordType.STREAM_END });
      await ended;
      expect(released).toBe(enc.compressedRecords);
      expect(enc.compressedRecords).toBe(32);
      expect(refused).toBeGreaterThan(40); // the headers and the raw payloads are the caller's
      expect(memory.size).toBeLessThan(16); // later frames reused released memory
      const { objects, error } = await decodeChunks(out);
      expect(error).toBeNull();
      expect(dataOf(objects).equals(Buffer.concat(payloads))).toBe(true);
    } finally {
      await p.close();
    }
  });

  it('without checksums the stream says so and the decoder accepts it', async () => {
    const { bytes } = await encodeAll([{ type: RecordType.DATA, device: 0, payload: Buffer.from('abc') }, { type: RecordType.STREAM_END }], { devices: devices(1), checksums: false });
    const { objects, error, dec } = await decodeChunks([bytes]);
    expect(error).toBeNull();
    expect(dec.header?.features).toBe(0);
    expect(dataOf(objects).toString()).toBe('abc');
  });
});

describe('RecordEncoder carried counts', () => {
  it('countCarried: each chunk says the raw bytes it carries, also when a burst waited in the buffer', async () => {
    const enc = new RecordEncoder({ devices: devices(1), compression: { level: 1, pool }, countCarried: true });
    const sizes = [4096, 300_000, 0, 65_536, 1 << 20];
    // Written while nobody reads: everything waits in the readable buffer, then flows at once.
    for (const n of sizes) enc.write({ type: RecordType.DATA, device: 0, payload: mixedData(n, n + 1) });
    enc.write({ type: RecordType.CONTROL, message: { type: 'x' } });
    enc.end();
    while (enc.recordsOut < sizes.length + 1) await new Promise((r) => setTimeout(r, 5));
    const seen: { len: number; raw: number; dataOut: number }[] = [];
    enc.on('data', (chunk: Buffer) => seen.push({ len: chunk.length, raw: enc.shiftChunkRawBytes(), dataOut: enc.dataBytesOut }));
    await new Promise((r) => enc.once('end', r));
    // Stream header, then header + payload per non-empty record (an empty DATA record is a header alone).
    const raws = seen.map((c) => c.raw);
    expect(raws[0]).toBe(0);
    expect(raws.reduce((a, b) => a + b, 0)).toBe(sizes.reduce((a, b) => a + b, 0));
    const payloadRaws = raws.filter((r) => r > 0);
    expect(payloadRaws).toEqual(sizes.filter((n) => n > 0));
    // Every chunk carrying raw bytes is a payload, never a 32-byte record header.
    for (const c of seen) if (c.raw > 0) expect(c.len).not.toBe(RECORD_HEADER_SIZE);
    // The cumulative counter was already at its end for the whole burst: it cannot attribute.
    expect(seen[1].dataOut).toBe(sizes.reduce((a, b) => a + b, 0));
    // Without the option nothing is tracked.
    const plain = new RecordEncoder({ devices: devices(1) });
    expect(plain.shiftChunkRawBytes()).toBe(0);
    plain.destroy();
  });
});

describe('RecordEncoder backpressure', () => {
  for (const compression of [false, true]) {
    it(`stops accepting records while the reader is paused (compression ${compression})`, async () => {
      const enc = new RecordEncoder({
        devices: devices(1),
        compression: compression ? { pool } : false,
        maxInFlightBytes: 2 * 1024 * 1024,
        readableHighWaterMark: 1024 * 1024,
        writableHighWaterMark: 4,
      });
      let accepted = 0;
      let offered = 0;
      const chunk = mixedData(256 * 1024, 2);
      // Offer 400 MiB worth of records without ever reading; count how many the encoder accepts.
      const offer = () => {
        while (offered < 1600) {
          offered++;
          const ok = enc.write({ type: RecordType.DATA, device: 0, payload: chunk }, () => accepted++);
          if (!ok) return;
        }
      };
      enc.on('drain', offer);
      offer();
      await new Promise((r) => setTimeout(r, 300));
      // Bounded: readable hwm (1 MiB) + in-flight cap (2 MiB) + the writable queue (4 records) + one record.
      expect(offered).toBeLessThan(40);
      expect(accepted).toBeLessThan(offered + 1);
      expect(enc.readableLength).toBeLessThan(4 * 1024 * 1024);
      const stuck = offered;
      await new Promise((r) => setTimeout(r, 100));
      expect(offered).toBe(stuck);
      // Reading resumes the flow until every record is out.
      let out = 0;
      enc.on('data', (c: Buffer) => (out += c.length));
      const ended = new Promise((r) => enc.on('end', r));
      await new Promise<void>((resolve) => {
        const wait = () => (offered >= 1600 ? resolve() : setTimeout(wait, 5));
        wait();
      });
      enc.end({ type: RecordType.STREAM_END });
      await ended;
      expect(accepted).toBe(1600);
      expect(enc.dataBytes).toBe(1600 * chunk.length);
      expect(out).toBe(enc.bytesOut);
    });
  }

  it('works in stream.pipeline into a slow sink, memory bounded by the caps', async () => {
    const enc = new RecordEncoder({ devices: devices(1), compression: { pool }, maxInFlightBytes: 1024 * 1024 });
    const dec = new RecordDecoder();
    let got = 0;
    let maxPending = 0;
    const sink = new Writable({
      objectMode: true,
      highWaterMark: 2,
      write(rec: DecodedObject, _e, cb) {
        if (rec.type === RecordType.DATA) got += rec.payload.length;
        maxPending = Math.max(maxPending, enc.inFlightBytes + enc.readableLength);
        setTimeout(cb, 1);
      },
    });
    const src = mixedData(128 * 1024, 9);
    const done = pipeline(enc, dec, sink);
    for (let i = 0; i < 64; i++) {
      if (!enc.write({ type: RecordType.DATA, device: 0, payload: src })) await new Promise((r) => enc.once('drain', r));
    }
    enc.end({ type: RecordType.STREAM_END });
    await done;
    expect(got).toBe(64 * src.length);
    expect(maxPending).toBeLessThan(4 * 1024 * 1024);
  });
});

describe('RecordEncoder usage errors', () => {
  const cases: Array<[string, RecordInput[]]> = [
    ['device out of range', [{ type: RecordType.DATA, device: 2, payload: Buffer.from('x') }]],
    ['data after DEVICE_END', [{ type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.DATA, device: 0, payload: Buffer.from('x') }]],
    ['a record after STREAM_END', [{ type: RecordType.STREAM_END }, { type: RecordType.CONTROL, message: 1 }]],
    ['a wrong DEVICE_END byte count', [{ type: RecordType.DATA, device: 0, payload: Buffer.from('x') }, { type: RecordType.DEVICE_END, device: 0, bytes: 2 }]],
    ['an unknown type that is not raw', [{ type: 77 } as unknown as RecordInput]],
    ['a non-JSON control message', [{ type: RecordType.CONTROL, message: undefined }]],
    ['a raw record with a device index beyond u16', [{ type: 0x30, raw: true, device: 70_000, payload: Buffer.from('x') }]],
    ['a ROUND with a negative byte count', [{ type: RecordType.ROUND, device: 0, round: 1, bytes: -5 }]],
    ['a channel beyond u16', [{ type: RecordType.CONTROL, message: 1, channel: 65_536 }]],
  ];
  for (const [name, records] of cases) {
    it(`${name} is VFIO_MIG_ERR_USAGE`, async () => {
      const err = await encodeAll(records, { devices: devices(1) }).then(
        () => null,
        (e: { code?: string }) => e,
      );
      expect(err?.code).toBe(ErrorCodes.USAGE);
    });
  }

  it('refuses compression levels outside [min, 19]', () => {
    expect(() => new RecordEncoder({ compression: 20 })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    expect(() => new RecordEncoder({ compression: 1.5 })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    expect(() => new RecordEncoder({ compression: { level: -5, pool } })).not.toThrow();
  });

  it('raw records carry future types through (OPTIONAL ones are skipped by this decoder)', async () => {
    const { bytes } = await encodeAll(
      [
        { type: 0x30, raw: true, flags: RecordFlags.OPTIONAL, payload: Buffer.from('ext') },
        { type: RecordType.CONTROL, message: 'after' },
        { type: RecordType.STREAM_END },
      ],
      { devices: devices(1) },
    );
    const { objects, error, dec } = await decodeChunks([bytes]);
    expect(error).toBeNull();
    expect(dec.skippedRecords).toBe(1);
    expect(objects[1]).toMatchObject({ type: RecordType.CONTROL, message: 'after', seq: 1 });
  });
});
