// Read targets (src/streams/read-target.ts): a RecordDecoder tells the source piped into it where
// the next bytes belong. With a scripted source (every answer observed) and with a real unix socket
// accepted by the transport, whose reads then land in the payload buffers the decoder hands out.
import { describe, it, expect } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { createFdSource } from '../../src/streams/fd-source.js';
import { mkfifo, openFifoReader, tempDir as fdTempDir } from './fd-fixtures.js';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';
import { FIRST_READ_BYTES, READ_TARGET, ReadTargets, type ReadTargetProvider } from '../../src/streams/read-target.js';
import { RecordType, RECORD_HEADER_SIZE, type DecodedObject, type RecordInput } from '../../src/streams/wire-format.js';
import { listenTransport, connectTransport } from '../../src/transport/index.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { devices, encodeAll, mixedData, prng } from './wire-helpers.js';
import { tempDir } from '../transport/helpers.js';

const KIB = 1024;
const MIB = 1024 * KIB;

/** Same buffers in the same order (toEqual compares large buffers byte by byte, slowly). */
function expectSame(got: Buffer[], want: Buffer[]): void {
  expect(got.map((b) => b.length)).toEqual(want.map((b) => b.length));
  expect(got.findIndex((b, i) => !b.equals(want[i]!))).toBe(-1);
}

/** Records of every kind and size: large ones (read in place), small ones, compressible ones. */
function records(seed: number): { recs: RecordInput[]; payloads: Buffer[] } {
  const r = prng(seed);
  const payloads: Buffer[] = [];
  const recs: RecordInput[] = [];
  const sizes = [MIB, 100, 300 * KIB, MIB, MIB, 5, 64 * KIB, 2 * MIB + 3, MIB, 4096, MIB];
  sizes.forEach((n, i) => {
    const p = mixedData(n, seed * 100 + i);
    payloads.push(p);
    recs.push({ type: RecordType.DATA, device: 0, payload: p });
    if (r() % 3 === 0) recs.push({ type: RecordType.CONTROL, message: { i } });
  });
  recs.push({ type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END });
  return { recs, payloads };
}

/**
 * A byte source that takes read targets as the unix transport does: before each "read" of up to
 * `step()` bytes it asks the provider, reads into the answer, and pushes a view of what it read.
 * `honour: false` reads into its own memory whatever the answer (a source may).
 */
class ScriptedSource extends Readable {
  provider: ReadTargetProvider | null = null;
  answers: Array<Buffer | number | null> = [];
  /** Bytes that went into a consumer's buffer. */
  inPlace = 0;
  /** Of those, bytes that went into shared memory (a CompressionPool's lent memory). */
  inPlaceShared = 0;
  #at = 0;
  #pushed = 0;
  constructor(
    private readonly data: Buffer,
    private readonly step: () => number,
    private readonly honour = true,
  ) {
    super();
    (this as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET] = (p) => (this.provider = p);
  }

  override _read(): void {
    // A socket reads from its own event-loop callback, once what it pushed before has flowed on.
    setImmediate(() => this.#readOnce());
  }

  #readOnce(): void {
    if (this.destroyed) return;
    if (this.#at >= this.data.length) {
      this.push(null);
      return;
    }
    const want = this.provider?.(this.#pushed) ?? null;
    this.answers.push(want);
    let n = Math.min(this.step(), this.data.length - this.#at);
    let into: Buffer;
    if (this.honour && Buffer.isBuffer(want)) {
      n = Math.min(n, want.length);
      into = want;
      this.inPlace += n;
      if (want.buffer instanceof SharedArrayBuffer) this.inPlaceShared += n;
    } else {
      if (this.honour && typeof want === 'number') n = Math.min(n, want);
      into = Buffer.allocUnsafe(n);
    }
    this.data.copy(into, 0, this.#at, this.#at + n);
    this.#at += n;
    this.#pushed += n;
    this.push(into.subarray(0, n));
  }
}

/** Pipe `source` into a recycling decoder; DATA payloads are copied out and released. */
async function decodeFrom(source: Readable, opts: ConstructorParameters<typeof RecordDecoder>[0] = {}) {
  const dec = new RecordDecoder({ recycle: true, ...opts });
  const objects: DecodedObject[] = [];
  const data: Buffer[] = [];
  const lent: boolean[] = [];
  const sink = new Writable({
    objectMode: true,
    write(o: DecodedObject, _e, cb) {
      objects.push(o);
      if (o.type === RecordType.DATA) {
        data.push(Buffer.from(o.payload));
        lent.push(dec.release(o.payload));
      }
      cb();
    },
  });
  let error: Error | null = null;
  await pipeline(source, dec, sink).catch((e: Error) => (error = e));
  return { dec, objects, data, lent, error: error as Error | null };
}

describe('read targets', () => {
  it('a scripted source reads large payloads into the buffers the decoder hands out, and the header after one alone', async () => {
    const { recs, payloads } = records(1);
    const { bytes } = await encodeAll(recs, { devices: devices(1), digest: 'crc32' });
    const r = prng(5);
    const src = new ScriptedSource(bytes, () => 1 + (r() % (256 * KIB)));
    const out = await decodeFrom(src);
    expect(out.error).toBeNull();
    expectSame(out.data, payloads);
    // Payloads that spanned reads were assembled in buffers of the decoder's (release() takes them).
    expect(out.lent.filter(Boolean).length).toBeGreaterThanOrEqual(6);
    const large = payloads.filter((p) => p.length >= 64 * KIB).reduce((a, p) => a + p.length, 0);
    // Most large payload bytes were read in place (the first large record's start was not: its
    // header came with the stream header, in the source's memory).
    expect(src.inPlace).toBeGreaterThan(0.8 * large);
    // After each large record the next header was asked for alone.
    expect(src.answers.filter((a) => a === RECORD_HEADER_SIZE).length).toBeGreaterThanOrEqual(6);
  });

  it('compressed frames are read in place too: into the buffer they are decompressed from, or into memory the pool lends when a pool decompresses them', async () => {
    const payloads = Array.from({ length: 12 }, (_, i) => mixedData(MIB, 30 + i));
    const { bytes, enc } = await encodeAll(
      [...payloads.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as const), { type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END }],
      { devices: devices(1), digest: 'crc32', compression: { level: 1, inlineWhileBooting: true } },
    );
    expect(enc.compressedRecords).toBe(payloads.length);
    const r = prng(3);
    const src = new ScriptedSource(bytes, () => 1 + (r() % (128 * KIB)));
    const out = await decodeFrom(src);
    expect(out.error).toBeNull();
    expectSame(out.data, payloads);
    // All but the first frame's start (it came with the stream header).
    expect(src.inPlace).toBeGreaterThan(0.9 * (bytes.length - 64 * KIB - 128 * KIB));
    expect(src.inPlaceShared).toBe(0);
    const pool = new CompressionPool({ size: 1 });
    try {
      // Booted first: a frame started while no worker is up is assembled in the decoder's scratch.
      await pool.warm();
      const r2 = prng(3);
      const pooled = new ScriptedSource(bytes, () => 1 + (r2() % (128 * KIB)));
      const out2 = await decodeFrom(pooled, { pool, poolMinBytes: 1 });
      expect(out2.error).toBeNull();
      expectSame(out2.data, payloads);
      // The same bytes read in place, every one into the pool's shared memory a worker reads.
      expect(pooled.inPlace).toBeGreaterThan(0.9 * (bytes.length - 64 * KIB - 128 * KIB));
      expect(pooled.inPlaceShared).toBe(pooled.inPlace);
    } finally {
      await pool.close();
    }
  });

  it('gives no target while bytes are on their way to the decoder, and a source that ignores targets still decodes', async () => {
    const { recs, payloads } = records(2);
    const { bytes } = await encodeAll(recs, { devices: devices(1) });
    // Ignoring every answer: each spanning payload is copied as its chunks come.
    const r = prng(9);
    const deaf = new ScriptedSource(bytes, () => 1 + (r() % (200 * KIB)), false);
    const out = await decodeFrom(deaf);
    expect(out.error).toBeNull();
    expectSame(out.data, payloads);
    expect(deaf.inPlace).toBe(0);
    // The provider compares the pushed count with what reached it.
    const dec = new RecordDecoder();
    let provider: ReadTargetProvider | null = null;
    const fake = Object.assign(new Readable({ read() {} }), { [READ_TARGET]: (p: ReadTargetProvider | null) => (provider = p) });
    fake.pipe(dec);
    expect(provider).not.toBeNull();
    const head = bytes.subarray(0, 200);
    dec.write(head);
    expect(provider!(head.length + 1)).toBeNull();
    fake.unpipe(dec);
    expect(provider).toBeNull();
    dec.destroy();
  });

  it('a payload read in place is still checked: a bad crc is CORRUPT and nothing of it reaches the consumer', async () => {
    const payload = mixedData(MIB, 3);
    const { bytes } = await encodeAll([{ type: RecordType.DATA, device: 0, payload }, { type: RecordType.STREAM_END }], { devices: devices(1) });
    const bad = Buffer.from(bytes);
    bad[bad.length - RECORD_HEADER_SIZE - 8 - 1000] ^= 1; // inside the payload's tail, which is read in place
    const src = new ScriptedSource(bad, () => 64 * KIB);
    const out = await decodeFrom(src);
    expect(out.error).toMatchObject({ code: ErrorCodes.CORRUPT });
    expect(out.data).toHaveLength(0);
    expect(src.inPlace).toBeGreaterThan(MIB / 2);
  });

  it('ReadTargets (the source side): the first read is limited, an unsettled source does not ask, a target binds one read', () => {
    const t = new ReadTargets();
    expect(t.active).toBe(false);
    expect(t.ask(0, true)).toBe(FIRST_READ_BYTES); // no consumer yet: the first read only is limited
    expect(t.ask(0, true)).toBe(0);
    const into = Buffer.alloc(100);
    const asked: number[] = [];
    t.hook((pushed) => (asked.push(pushed), pushed === 7 ? into : 32));
    expect(t.active).toBe(true);
    expect(t.ask(5, false)).toBe(0); // bytes not pushed yet: the consumer is not asked
    expect(asked).toEqual([]);
    expect(t.ask(5, true)).toBe(32);
    expect(t.took(10)).toBeNull(); // that read went to the source's memory
    expect(t.ask(7, true)).toBe(into);
    const view = t.took(40)!;
    expect(view.buffer).toBe(into.buffer);
    expect(view.length).toBe(40);
    expect(t.took(1)).toBeNull(); // one read only
    t.hook(null);
    expect(t.active).toBe(false);
  });

  it('readTargets: false registers nothing', async () => {
    const { recs, payloads } = records(3);
    const { bytes } = await encodeAll(recs, { devices: devices(1) });
    const src = new ScriptedSource(bytes, () => 128 * KIB);
    const out = await decodeFrom(src, { readTargets: false });
    expect(out.error).toBeNull();
    expectSame(out.data, payloads);
    expect(src.provider).toBeNull();
    expect(src.inPlace).toBe(0);
  });

  it('over a real unix socket, a decoder piped from the accepted connection gets large payloads read in place; a stalling consumer gets them intact', async () => {
    // Large uncompressed records only, and a consumer that keeps up: the decoder's parse state is
    // current at every read, each header after a large record is read alone and the payload after it
    // straight into its buffer; only the first record's start comes with the stream header.
    const sizes = [MIB, 300 * KIB, 2 * MIB + 3, 64 * KIB, MIB];
    const bulk = Array.from({ length: 30 }, (_, i) => mixedData(sizes[i % sizes.length]!, 50 + i));
    const bulkBytes = (
      await encodeAll([...bulk.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as const), { type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END }], {
        devices: devices(1),
        digest: 'crc32',
      })
    ).bytes;
    const fast = await overSocket(bulkBytes, 0);
    expectSame(fast.got, bulk);
    const total = bulk.reduce((a, p) => a + p.length, 0);
    expect(fast.inPlace).toBeGreaterThan(0.9 * total);
    // Records of every size, some compressed, and a consumer that stops now and then: bytes pile up
    // on their way to the decoder, whose provider then answers null (reads go to the socket's own
    // chunks, and a record within one is not copied either); how often depends on the timing, the
    // bytes do not.
    const all: RecordInput[] = [];
    const expected: Buffer[] = [];
    for (let k = 0; k < 6; k++) {
      const { recs, payloads } = records(10 + k);
      all.push(...recs.filter((x) => x.type === RecordType.DATA || x.type === RecordType.CONTROL));
      expected.push(...payloads);
    }
    all.push({ type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END });
    const { bytes } = await encodeAll(all, { devices: devices(1), digest: 'crc32', compression: { level: 1, minBytes: 2 * MIB } });
    const slow = await overSocket(bytes, 7);
    expectSame(slow.got, expected);
    expect(slow.targets).toBeGreaterThan(0);
  });

  it('a peer that dies in the middle of a payload read in place: TRUNCATED, and nothing of that record reaches the consumer', async () => {
    const first = mixedData(MIB, 21);
    const second = mixedData(2 * MIB, 22);
    const { bytes } = await encodeAll(
      [{ type: RecordType.DATA, device: 0, payload: first }, { type: RecordType.DATA, device: 0, payload: second }, { type: RecordType.STREAM_END }],
      { devices: devices(1) },
    );
    const t = tempDir();
    try {
      const l = await listenTransport(`unix:${join(t.dir, 'cut.sock')}`);
      const [client, server] = await Promise.all([connectTransport(l.url, {}), l.accept()]);
      let targets = 0;
      const hook = (server as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET];
      (server as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET] = (p) =>
        hook(p === null ? null : (n) => {
          const a = p(n);
          if (Buffer.isBuffer(a)) targets++;
          return a;
        });
      // Everything up to the middle of the second payload, then the peer is gone.
      const cut = bytes.length - MIB;
      client.write(bytes.subarray(0, cut), () => client.destroy());
      const dec = new RecordDecoder({ recycle: true });
      const got: Buffer[] = [];
      const sink = new Writable({
        objectMode: true,
        write(o: DecodedObject, _e, cb) {
          if (o.type === RecordType.DATA) got.push(Buffer.from(o.payload));
          cb();
        },
      });
      const err = await pipeline(server, dec, sink).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: ErrorCodes.TRUNCATED });
      expectSame(got, [first]);
      expect(targets).toBeGreaterThan(0);
      await l.close();
    } finally {
      t.cleanup();
    }
  });

  it('an FdSource on a FIFO fed by a child process offers read targets too: payloads and frames land in the decoder\'s buffers, bytes intact', async () => {
    // Uncompressed and compressed large records, written to the FIFO by `cat` in another process.
    const payloads = Array.from({ length: 16 }, (_, i) => mixedData(MIB, 60 + i));
    const { bytes, enc } = await encodeAll(
      [...payloads.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as const), { type: RecordType.DEVICE_END, device: 0 }, { type: RecordType.STREAM_END }],
      { devices: devices(1), digest: 'crc32', compression: { level: 1, minBytes: MIB } },
    );
    expect(enc.compressedRecords).toBeGreaterThan(0);
    const dir = fdTempDir();
    try {
      const file = join(dir, 'stream.bin');
      writeFileSync(file, bytes);
      const fifo = mkfifo(dir, 'feed');
      const src = createFdSource(openFifoReader(fifo));
      expect(src.path).toBe('epoll');
      let inPlace = 0;
      const memories = new WeakSet<ArrayBufferLike>();
      const hook = (src as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET];
      expect(typeof hook).toBe('function');
      (src as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET] = (p) =>
        hook(p === null ? null : (n) => {
          const a = p(n);
          if (Buffer.isBuffer(a)) memories.add(a.buffer);
          return a;
        });
      src.on('data', (c: Buffer) => {
        if (memories.has(c.buffer)) inPlace += c.length;
      });
      const child = spawn('sh', ['-c', `cat "${file}" > "${fifo}"`], { stdio: 'ignore' });
      const out = await decodeFrom(src);
      await new Promise((r) => child.on('close', r));
      expect(out.error).toBeNull();
      expectSame(out.data, payloads);
      // A pipe reads 64 KiB at a time; all but the first record's start (it came with the stream
      // header) went straight where the decoder wanted it.
      expect(inPlace).toBeGreaterThan(0.9 * bytes.length);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /** Send `bytes` over a unix transport connection into a recycling decoder; `stallEvery` > 0 makes the consumer wait 5 ms every that many records. */
  async function overSocket(bytes: Buffer, stallEvery: number): Promise<{ got: Buffer[]; inPlace: number; targets: number }> {
    const t = tempDir();
    try {
      const l = await listenTransport(`unix:${join(t.dir, 'rt.sock')}`);
      const [client, server] = await Promise.all([connectTransport(l.url, {}), l.accept()]);
      // Count what the socket reads into the decoder's buffers: wrap the provider it is given.
      let targets = 0;
      const targetMemory = new WeakSet<ArrayBufferLike>();
      const hook = (server as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET];
      expect(typeof hook).toBe('function');
      (server as unknown as { [READ_TARGET]: (p: ReadTargetProvider | null) => void })[READ_TARGET] = (p) =>
        hook(
          p === null
            ? null
            : (n) => {
                const a = p(n);
                if (Buffer.isBuffer(a)) {
                  targets++;
                  targetMemory.add(a.buffer);
                }
                return a;
              },
        );
      let inPlace = 0;
      server.on('data', (c: Buffer) => {
        if (targetMemory.has(c.buffer)) inPlace += c.length;
      });
      const writing = (async () => {
        const r = prng(77);
        for (let at = 0; at < bytes.length; ) {
          const n = Math.min(bytes.length - at, 1 + (r() % (512 * KIB)));
          if (!client.write(bytes.subarray(at, at + n))) await new Promise((res) => client.once('drain', res));
          at += n;
        }
        client.end();
      })();
      const dec = new RecordDecoder({ recycle: true });
      const got: Buffer[] = [];
      let i = 0;
      const sink = new Writable({
        objectMode: true,
        write(o: DecodedObject, _e, cb) {
          if (o.type === RecordType.DATA) {
            got.push(Buffer.from(o.payload));
            dec.release(o.payload);
          }
          if (stallEvery > 0 && ++i % stallEvery === 0) setTimeout(cb, 5);
          else cb();
        },
      });
      await Promise.all([pipeline(server, dec, sink), writing]);
      client.destroy();
      await l.close();
      return { got, inPlace, targets };
    } finally {
      t.cleanup();
    }
  }
});
