// Shared helpers of the wire-format tests: device tables, content profiles, and driving the encoder
// and decoder to completion while collecting what they produced (and the error, if any).
import { randomBytes } from 'node:crypto';
import { RecordEncoder, type RecordEncoderOptions } from '../../src/streams/record-encoder.js';
import { RecordDecoder, type RecordDecoderOptions } from '../../src/streams/record-decoder.js';
import {
  encodeStreamHeader,
  encodeRecord,
  Features,
  type DecodedObject,
  type RecordInput,
  type WireDevice,
} from '../../src/streams/wire-format.js';
import type { DeviceIdentity } from '../../src/fsm/types.js';
import type { CompressionPool } from '../../src/streams/compression-pool.js';
import { xorshift } from '../../src/devices/sim-pages.js';

export function identity(over: Partial<DeviceIdentity> = {}): DeviceIdentity {
  return { kind: 'sim', model: 'size=1048576', version: '1.0', flags: 0x7, stateSize: 1 << 20, ...over };
}

export function devices(n: number): WireDevice[] {
  return Array.from({ length: n }, (_, i) => ({ name: `dev${i}`, identity: identity() }));
}

/** Deterministic pseudo-random u32s (xorshift), for repeatable splits and "random" content. */
export const prng = xorshift;

const TEMPLATES = Array.from({ length: 16 }, () => randomBytes(4096));
const TEXT = Buffer.from(
  Array.from({ length: 200 }, (_, i) => `2026-11-23T19:${String(i % 60).padStart(2, '0')}:00Z vfio-pci 0000:3b:00.${i % 8}: migration state ${i * 37} bytes ok\n`).join(''),
);

/** Mixed 4 KiB pages: 25% zero, 25% one of 16 templates, 25% text, 25% random. */
export function mixedData(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  const r = prng(seed);
  for (let off = 0; off < size; off += 4096) {
    const page = out.subarray(off, Math.min(size, off + 4096));
    switch (r() & 3) {
      case 0:
        break;
      case 1:
        TEMPLATES[r() & 15]!.copy(page);
        break;
      case 2: {
        const start = r() % (TEXT.length - 4096);
        TEXT.copy(page, 0, start, start + page.length);
        break;
      }
      default:
        randomBytes(page.length).copy(page);
    }
  }
  return out;
}

/** Resolve on 'drain', or when the stream is destroyed (an error never drains). */
function drainOrClose(s: NodeJS.WritableStream & { destroyed: boolean; once(e: string, f: () => void): unknown; off(e: string, f: () => void): unknown }): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.once('drain', done);
    s.once('close', done);
  });
}

/** Run records through a RecordEncoder and return its whole output and the chunks it pushed. */
export async function encodeAll(records: RecordInput[], opts: RecordEncoderOptions = {}): Promise<{ bytes: Buffer; chunks: Buffer[]; enc: RecordEncoder }> {
  const enc = new RecordEncoder(opts);
  const chunks: Buffer[] = [];
  enc.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<void>((resolve, reject) => {
    enc.on('end', resolve);
    enc.on('error', reject);
  });
  for (const r of records) {
    if (enc.destroyed) break;
    if (!enc.write(r)) await drainOrClose(enc);
  }
  enc.end();
  await done;
  return { bytes: Buffer.concat(chunks), chunks, enc };
}

export interface DecodeOutcome {
  objects: DecodedObject[];
  error: (Error & { code?: string }) | null;
  dec: RecordDecoder;
}

/** Feed chunks into a RecordDecoder (one write each) and collect objects until end or error. */
export async function decodeChunks(chunks: Buffer[], opts: RecordDecoderOptions = {}): Promise<DecodeOutcome> {
  const dec = new RecordDecoder(opts);
  const objects: DecodedObject[] = [];
  dec.on('data', (o: DecodedObject) => objects.push(o));
  const result = new Promise<DecodeOutcome>((resolve) => {
    dec.on('end', () => resolve({ objects, error: null, dec }));
    dec.on('error', (error: Error) => resolve({ objects, error, dec }));
  });
  for (const c of chunks) {
    if (dec.destroyed) break;
    if (!dec.write(c)) await drainOrClose(dec);
  }
  if (!dec.destroyed) dec.end();
  return result;
}

/** Split `buf` into chunks at random points (sizes 1..max). */
export function randomSplit(buf: Buffer, seed: number, max = 300): Buffer[] {
  const r = prng(seed);
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length; ) {
    const n = Math.min(buf.length - at, 1 + (r() % max));
    out.push(buf.subarray(at, at + n));
    at += n;
  }
  return out;
}

export function byteByByte(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i++) out.push(buf.subarray(i, i + 1));
  return out;
}

/** A hand-built stream: header then raw records with consecutive seqs (for crafting bad input). */
export function craftStream(
  recs: Array<{ type: number; flags?: number; device?: number; payload: Buffer }>,
  opts: { devices?: number; features?: number } = {},
): Buffer {
  const parts: Buffer[] = [
    encodeStreamHeader({ features: opts.features ?? Features.CRC32, devices: devices(opts.devices ?? 1) }),
  ];
  recs.forEach((r, seq) => parts.push(...encodeRecord({ ...r, seq }, r.payload)));
  return Buffer.concat(parts);
}

/**
 * A stand-in for a CompressionPool that a RecordDecoder can take: everything it asks of a pool but
 * decompress() goes to a real one; a test's subclass decides how decompress() reaches it.
 */
export abstract class ForwardingPool {
  constructor(readonly inner: CompressionPool) {}
  get closed(): boolean {
    return this.inner.closed;
  }
  get readyWorkers(): number {
    return this.inner.readyWorkers;
  }
  get workers(): number {
    return this.inner.workers;
  }
  get size(): number {
    return this.inner.size;
  }
  warm(): Promise<void> {
    return this.inner.warm();
  }
  lend(length: number): Buffer {
    return this.inner.lend(length);
  }
  releaseFrame(frame: Buffer): boolean {
    return this.inner.releaseFrame(frame);
  }
  abstract decompress(frame: Buffer, rawLength: number, opts?: { into?: Buffer }): Promise<Buffer>;
  asPool(): CompressionPool {
    return this as unknown as CompressionPool;
  }
}
