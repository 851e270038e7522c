// Question: what does the data path cost per record and per MiB on the CPU, apart from I/O?
//
// Micro-benchmarks with the `benchmark` package (medians of its samples; async ops with defer):
// - record-encode-{4KiB,64KiB,1MiB}: records through a RecordEncoder stream (uncompressed, crc32 on),
//   in-process, K records per op so the op is about 4 MiB; MB/s of payload. Baseline: crc32 over
//   the same payload bytes (the one per-byte cost the format asks for). Detail: µs per record, and
//   the pure encodeRecord (header + crc) alone.
// - record-decode-{size}: a prepared stream of the same records fed to a RecordDecoder in 64 KiB chunks
//   (what a socket delivers), every check on, each payload given back once seen (`recycle`, as
//   receive() does); MB/s of payload. Baseline: crc32 as above. Detail: the same without `recycle`
//   (every record spanning input chunks copied into fresh memory).
// - crc32-1MiB: the package's crc32 (the native addon where built, src/streams/crc32.ts) over 1 MiB,
//   MB/s; zlib.crc32 in detail. Baseline: Buffer.copy of 1 MiB (memory bandwidth).
// The crc32 baselines of the record rows are the package's crc32, the one the encoder and decoder use.
//
// Other micro-benchmarks (the FSM's next-hop and path lookups) belong in the SUITES list at the end.
import Benchmark from 'benchmark';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { RecordEncoder, RecordDecoder, RecordType, encodeRecord, crc32, crc32Accelerated } from '../dist/index.js';
import { MiB, result } from './lib.mjs';

export const names = ['record-encode-', 'record-decode-', 'crc32-'];

const DEVICES = [{ name: 'd0', identity: { kind: 'sim', model: 'bench', version: '1.0', flags: 7, stateSize: 0 } }];
const SIZES = [
  ['4KiB', 4096],
  ['64KiB', 64 * 1024],
  ['1MiB', MiB],
];

/** Run one Benchmark and resolve { hz, meanMs, rme }. */
function measure(name, fn, { quick, defer = false }) {
  return new Promise((resolve, reject) => {
    const bench = new Benchmark(name, {
      defer,
      fn,
      maxTime: quick ? 0.3 : 2,
      minSamples: quick ? 3 : 10,
      onError: (e) => reject(e.target?.error ?? e),
      onComplete() {
        resolve({ hz: this.hz, meanMs: this.stats.mean * 1000, rme: this.stats.rme });
      },
    });
    bench.run({ async: true });
  });
}

function encodeOnce(payloads) {
  return new Promise((resolve, reject) => {
    const enc = new RecordEncoder({ devices: DEVICES });
    enc.on('data', () => {});
    enc.on('end', resolve);
    enc.on('error', reject);
    for (const p of payloads) enc.write({ type: RecordType.DATA, device: 0, payload: p });
    enc.end({ type: RecordType.STREAM_END });
  });
}

async function encodedStream(payloads) {
  const chunks = [];
  const enc = new RecordEncoder({ devices: DEVICES });
  enc.on('data', (c) => chunks.push(c));
  const ended = new Promise((r) => enc.on('end', r));
  for (const p of payloads) enc.write({ type: RecordType.DATA, device: 0, payload: p });
  enc.end({ type: RecordType.STREAM_END });
  await ended;
  const all = Buffer.concat(chunks);
  const out = [];
  for (let at = 0; at < all.length; at += 64 * 1024) out.push(Buffer.from(all.subarray(at, at + 64 * 1024)));
  return out;
}

/**
 * Decode the prepared stream once. `recycle`: each DATA payload is given back as soon as it is seen,
 * as receive() gives it back once its device took it, so a record spanning input chunks is copied
 * into memory already mapped (all but the op's first); without, every such record gets fresh memory.
 */
function decodeOnce(chunks, recycle) {
  return new Promise((resolve, reject) => {
    const dec = new RecordDecoder({ readableHighWaterMark: 1024, recycle });
    dec.on('data', recycle ? (o) => o.type === RecordType.DATA && dec.release(o.payload) : () => {});
    dec.on('end', resolve);
    dec.on('error', reject);
    for (const c of chunks) dec.write(c);
    dec.end();
  });
}

async function recordSuites(quick) {
  const rows = [];
  for (const [label, size] of SIZES) {
    const k = Math.max(1, Math.round((4 * MiB) / size));
    const payloads = Array.from({ length: k }, () => randomBytes(size));
    const bytes = k * size;
    const crc = await measure(`crc32-${label}`, () => {
      for (const p of payloads) crc32(p);
    }, { quick });
    const crcMBps = (crc.hz * bytes) / 1e6;
    let seq = 0;
    const pure = await measure(`encodeRecord-${label}`, () => {
      encodeRecord({ type: RecordType.DATA, device: 0, seq: seq++ }, payloads[seq % k]);
    }, { quick });
    const enc = await measure(`record-encode-${label}`, (d) => encodeOnce(payloads).then(() => d.resolve(), (e) => { throw e; }), { quick, defer: true });
    rows.push(
      result(`record-encode-${label}`, (enc.hz * bytes) / 1e6, 'MB/s', 'crc32 of the payloads', crcMBps, {
        usPerRecord: +((enc.meanMs * 1000) / k).toFixed(2),
        pureEncodeRecordUs: +(1e6 / pure.hz).toFixed(2),
        recordsPerOp: k,
        rme: +enc.rme.toFixed(1),
      }),
    );
    const chunks = await encodedStream(payloads);
    const dec = await measure(`record-decode-${label}`, (d) => decodeOnce(chunks, true).then(() => d.resolve(), (e) => { throw e; }), { quick, defer: true });
    const fresh = await measure(`record-decode-fresh-${label}`, (d) => decodeOnce(chunks, false).then(() => d.resolve(), (e) => { throw e; }), { quick, defer: true });
    rows.push(
      result(`record-decode-${label}`, (dec.hz * bytes) / 1e6, 'MB/s', 'crc32 of the payloads', crcMBps, {
        usPerRecord: +((dec.meanMs * 1000) / k).toFixed(2),
        recordsPerOp: k,
        inputChunk: '64 KiB',
        recycle: true,
        rme: +dec.rme.toFixed(1),
        withoutRecycleMBps: +((fresh.hz * bytes) / 1e6).toFixed(0),
      }),
    );
  }
  const mib = randomBytes(MiB);
  const dst = Buffer.allocUnsafe(MiB);
  const c = await measure('crc32-1MiB', () => crc32(mib), { quick });
  const z = await measure('zlib-crc32-1MiB', () => zlibCrc32(mib), { quick });
  const m = await measure('copy-1MiB', () => mib.copy(dst), { quick });
  rows.push(
    result('crc32-1MiB', (c.hz * MiB) / 1e6, 'MB/s', 'Buffer.copy 1 MiB', (m.hz * MiB) / 1e6, {
      usPerMiB: +(1e6 / c.hz).toFixed(1),
      accelerated: crc32Accelerated,
      zlibMBps: +((z.hz * MiB) / 1e6).toFixed(0),
    }),
  );
  return rows;
}

// Each suite: async (quick) => Result[]. Add further micro-benchmarks (e.g. the FSM's nextState and
// transitionPath lookups) as functions here; the `names` export above lists their result prefixes.
const SUITES = [recordSuites];

export default async function run({ quick }) {
  const rows = [];
  for (const suite of SUITES) rows.push(...(await suite(quick)));
  return rows;
}
