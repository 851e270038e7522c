// A RecordDecoder piped from a recycling FdSource gives the source's chunks back once it is done with
// them (INPUT_RELEASE): a real FIFO written by a child process, records checked byte for byte, and
// the chunks that payload views or pool frames still point into never overwritten.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createFdSource } from '../../src/streams/fd-source.js';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';
import { INPUT_RELEASE, READ_TARGET, inputReleaseHook } from '../../src/streams/read-target.js';
import { RecordType, type DecodedObject, type RecordInput } from '../../src/streams/wire-format.js';
import { join } from 'node:path';
import net from 'node:net';
import { connectTransport, listenTransport } from '../../src/transport/index.js';
import { tempDir as transportDir } from '../transport/helpers.js';
import { MiB, mkfifo, openFifoReader, pattern, tempDir } from './fd-fixtures.js';
import { ForwardingPool, devices, encodeAll, mixedData } from './wire-helpers.js';

let dir: string;
/** Small records (a chunk holds hundreds, handed out as views of it) and some of 256 KiB (spanning chunks). */
const payloads: Buffer[] = [];
let rawFile: string;
let zstdFile: string;

beforeAll(async () => {
  dir = tempDir('vfio-mig-input-release-');
  for (let i = 0; i < 6000; i++) payloads.push(i % 500 === 499 ? mixedData(256 * 1024, i) : pattern(i * 13, 2000 + (i % 7) * 300));
  const records: RecordInput[] = payloads.map((payload) => ({ type: RecordType.DATA, device: 0, payload }) as RecordInput);
  records.push({ type: RecordType.STREAM_END });
  rawFile = path.join(dir, 'raw.vfm');
  zstdFile = path.join(dir, 'zstd.vfm');
  fs.writeFileSync(rawFile, (await encodeAll(records, { devices: devices(1) })).bytes);
  fs.writeFileSync(zstdFile, (await encodeAll(records, { devices: devices(1), compression: { level: 1 } })).bytes);
}, 60_000);

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Run {
  /** Distinct 1 MiB source chunk buffers that payloads were views of. */
  chunkMemories: number;
  views: number;
  mismatches: number[];
  /** Payloads never given back: still equal to what was sent at the end? */
  keptIntact: boolean;
}

/**
 * `cat file > fifo` in a child; FdSource on the FIFO piped into a decoder. Every payload is compared
 * with what was sent when it arrives; those whose index `keep` selects are never given back and
 * compared again at the end.
 */
async function run(file: string, opts: { recycleSource: boolean; recycleDecoder: boolean; keep: (i: number) => boolean; pool?: CompressionPool }): Promise<Run> {
  const fifo = mkfifo(dir, `f${Math.random().toString(36).slice(2)}`);
  const src = createFdSource(openFifoReader(fifo), { recycle: opts.recycleSource });
  const child = spawn('sh', ['-c', `cat "${file}" > "${fifo}"`], { stdio: 'ignore' });
  const exited = new Promise((r) => child.on('close', r));
  const dec = new RecordDecoder({ recycle: opts.recycleDecoder, ...(opts.pool ? { pool: opts.pool, poolMinBytes: 1 } : {}) });
  src.pipe(dec);
  src.on('error', (err) => dec.destroy(err));
  const r = await collect(dec, opts.keep, opts.recycleDecoder);
  await exited;
  fs.unlinkSync(fifo);
  return r;
}

/**
 * Compare every DATA payload with what was sent as the decoder emits it; never give back those
 * `keep` selects (compared again at the end), give the others back when `release`.
 */
function collect(dec: RecordDecoder, keep: (i: number) => boolean, release: boolean): Promise<Run> {
  const memories = new Set<ArrayBufferLike>();
  const kept: [number, Buffer][] = [];
  const mismatches: number[] = [];
  let i = 0;
  let views = 0;
  return new Promise<Run>((resolve, reject) => {
    dec.on('data', (o: DecodedObject) => {
      if (o.type !== RecordType.DATA) return;
      const n = i++;
      const p = o.payload;
      if (!p.equals(payloads[n]!)) mismatches.push(n);
      if (p.buffer.byteLength === MiB && p.length < MiB) {
        views++;
        memories.add(p.buffer);
      }
      if (keep(n)) kept.push([n, p]);
      else if (release) dec.release(p);
    });
    dec.on('end', () => {
      expect(i).toBe(payloads.length);
      resolve({ chunkMemories: memories.size, views, mismatches, keptIntact: kept.every(([n, p]) => p.equals(payloads[n]!)) });
    });
    dec.on('error', reject);
  });
}

/**
 * A pool whose jobs start a few ms late, as jobs queued behind others do: a frame is read only then,
 * so a chunk given back while its frame waits would be read into again under it.
 */
class LatePool extends ForwardingPool {
  decompress(frame: Buffer, rawLength: number, opts: { into?: Buffer } = {}): Promise<Buffer> {
    return new Promise((r) => setTimeout(r, 3)).then(() => this.inner.decompress(frame, rawLength, opts));
  }
}

describe('RecordDecoder gives input chunks back to a recycling FdSource', () => {
  it('only a source with recycle offers INPUT_RELEASE', () => {
    const fifo = mkfifo(dir, 'offer');
    const a = createFdSource(openFifoReader(fifo), { recycle: true });
    const b = createFdSource(openFifoReader(fifo));
    expect(typeof (a as unknown as Record<symbol, unknown>)[INPUT_RELEASE]).toBe('function');
    expect(inputReleaseHook(a)).not.toBeNull();
    expect(inputReleaseHook(b)).toBeNull();
    a.destroy();
    b.destroy();
    fs.unlinkSync(fifo);
  });

  it('raw records: zero-copy payloads keep their chunk until given back, then the chunk is read into again', async () => {
    // Four payloads are never given back: the chunks they point into must never be reused under them.
    const keep = (n: number) => n === 10 || n === 1234 || n === 3000 || n === 5999;
    const recycled = await run(rawFile, { recycleSource: true, recycleDecoder: true, keep });
    expect(recycled.mismatches).toEqual([]);
    expect(recycled.keptIntact).toBe(true);
    // ~13 MiB of small records went through ~1 MiB chunks: with chunks coming back, a handful of
    // memories (the kept ones' four, up to 16 free, a few in flight) instead of one per chunk.
    expect(recycled.views).toBeGreaterThan(5000);
    const fresh = await run(rawFile, { recycleSource: false, recycleDecoder: true, keep });
    expect(fresh.mismatches).toEqual([]);
    expect(fresh.chunkMemories).toBeGreaterThanOrEqual(12);
    expect(recycled.chunkMemories).toBeLessThan(fresh.chunkMemories / 2);
  });

  it('a decoder whose payloads are never given back (no recycle option) lets no chunk with a payload in it be reused', async () => {
    const all = await run(rawFile, { recycleSource: true, recycleDecoder: false, keep: () => true });
    expect(all.mismatches).toEqual([]);
    expect(all.keptIntact).toBe(true);
  });

  it('compressed records: frames read in place by pool workers keep their chunk until decompressed', async () => {
    const pool = new CompressionPool({ size: 2 });
    try {
      await pool.warm();
      const r = await run(zstdFile, { recycleSource: true, recycleDecoder: true, keep: (n) => n % 1000 === 7, pool });
      expect(r.mismatches).toEqual([]);
      expect(r.keptIntact).toBe(true);
      const late = await run(zstdFile, { recycleSource: true, recycleDecoder: true, keep: () => false, pool: new LatePool(pool).asPool() });
      expect(late.mismatches).toEqual([]);
      const main = await run(zstdFile, { recycleSource: true, recycleDecoder: true, keep: (n) => n % 1000 === 7 });
      expect(main.mismatches).toEqual([]);
      expect(main.keptIntact).toBe(true);
    } finally {
      await pool.close();
    }
  });

  it('the unix transport\'s accepted socket takes its chunks back from a RecordDecoder too; without read targets it lends nothing', async () => {
    const t = transportDir();
    try {
      const l = await listenTransport(`unix:${join(t.dir, 'ir.sock')}`);
      /** Send the raw stream; decode it on the accepted socket; count chunk memories of payload views. */
      const once = async (readTargets: boolean): Promise<Run> => {
        const [client, server] = await Promise.all([connectTransport(l.url, {}), l.accept()]);
        const dec = new RecordDecoder({ recycle: true, readTargets });
        // The first read lands before the decoder is piped (views lent before the socket tracks any):
        // that chunk must never be reused under the payload kept from it.
        client.write(fs.readFileSync(rawFile));
        await new Promise((r) => setTimeout(r, 50));
        expect(server.readableLength).toBeGreaterThan(0);
        server.pipe(dec);
        const done = collect(dec, (n) => n === 10 || n === 3000, true);
        client.end();
        const r = await done;
        client.destroy();
        server.destroy();
        return r;
      };
      const recycled = await once(true);
      expect(recycled.mismatches).toEqual([]);
      expect(recycled.keptIntact).toBe(true);
      expect(recycled.views).toBeGreaterThan(5000);
      const fresh = await once(false);
      expect(fresh.mismatches).toEqual([]);
      expect(fresh.chunkMemories).toBeGreaterThanOrEqual(12);
      expect(recycled.chunkMemories).toBeLessThan(fresh.chunkMemories / 2);
      await l.close();
    } finally {
      t.cleanup();
    }
  });

  it('an fd:R,W connection (a pipe pair a VMM passes) reads the same way: read targets and chunks taken back', async () => {
    const fifo = mkfifo(dir, 'fdrw-in');
    const back = mkfifo(dir, 'fdrw-back');
    // Readers first (non-blocking opens), then writers: no end blocks waiting for the other.
    const r = openFifoReader(fifo);
    const farW = fs.openSync(fifo, 'w');
    const farR = openFifoReader(back);
    const w = fs.openSync(back, 'w');
    const conn = await connectTransport(`fd:${r},${w}`);
    const far = new net.Socket({ fd: farW, readable: false, writable: true });
    try {
      expect(typeof (conn as unknown as Record<symbol, unknown>)[READ_TARGET]).toBe('function');
      expect(inputReleaseHook(conn)).not.toBeNull();
      const dec = new RecordDecoder({ recycle: true });
      const done = collect(dec, (n) => n === 10 || n === 3000, true);
      conn.pipe(dec);
      far.end(fs.readFileSync(rawFile));
      const r1 = await done;
      expect(r1.mismatches).toEqual([]);
      expect(r1.keptIntact).toBe(true);
      expect(r1.views).toBeGreaterThan(5000);
      // ~13 MiB of small records through a handful of chunk memories.
      expect(r1.chunkMemories).toBeLessThan(8);
    } finally {
      far.destroy();
      conn.destroy();
      fs.closeSync(farR);
      fs.unlinkSync(fifo);
      fs.unlinkSync(back);
    }
  });

  it('a file: checkpoint is restored the same way: chunks the decoder gives back are read into again', async () => {
    const l = await listenTransport(`file:${rawFile}`);
    try {
      const conn = await l.accept();
      expect(inputReleaseHook(conn)).not.toBeNull();
      const dec = new RecordDecoder({ recycle: true });
      const done = collect(dec, (n) => n === 10 || n === 3000, true);
      conn.pipe(dec);
      const r = await done;
      expect(r.mismatches).toEqual([]);
      expect(r.keptIntact).toBe(true);
      expect(r.views).toBeGreaterThan(5000);
      // ~13 MiB of small records through a handful of chunk memories (one per MiB before).
      expect(r.chunkMemories).toBeLessThan(8);
      conn.destroy();
    } finally {
      await l.close();
    }
  });
});
