// Question: with zstd, does vfio-mig's record encoder (+ decoder) keep up with the `zstd` command on
// the same bytes, through pipes?
//
// Data: a file in the temp dir (page cache) of SimDevice pages: 'mixed' (25% zero, 25% templates,
// 25% text, 25% random pages) and 'random' (incompressible), from the package's PageGenerator.
// - zstd-compress-L{L}-{profile}: `cat file | node encoder | cat >/dev/null`, where the node child
//   reads stdin with createFdSource (recycle: each chunk given back once cut), cuts 1 MiB DATA
//   records (into shared-memory buffers the encoder gives back with onPayloadFree once compressed,
//   or the sink once written raw), RecordEncoder
//   (zstd level L in the worker pool sized to the cores; recycleFrames: each frame given back once
//   the sink wrote it), createFdSink(1). The same reuse of memory as migrate(). MB/s of raw input.
//   Baseline: `cat file | zstd -L -T2 -c | cat >/dev/null` (level -1 is `--fast=1`); `-T1` in detail.
// - zstd-decompress-L{L}-{profile}: `cat stream | node decoder | cat >/dev/null`, the child decoding the
//   encoder's stream (one-shot decompression on the main thread, as a migration's destination does)
//   and writing the DATA payloads out one record at a time, each given back to the decoder once
//   written (RecordDecoder `recycle`), and stdin's chunks given back by the decoder once parsed
//   (createFdSource `recycle`, INPUT_RELEASE); BENCH_ZSTD_RECYCLE=0: both off. MB/s of raw output.
//   Baseline: `cat file.zst | zstd -d -c | cat >/dev/null` of the CLI's own frame.
// Also measured in detail, to answer whether the worker pool helps decompression: the same child with
// RecordDecoder's `pool` (frames decompressed in a CompressionPool sized to the cores, in order;
// `poolMBps`; with one worker `pool1MBps`, the main thread parsing and writing beside it), and the
// bare frames decompressed in-process, on the main thread and through pool.decompress with 8 in
// flight.
// Medians over runs, interleaved. RSS: maxRSS of the pipeline's processes (GNU time).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
import { PageGenerator, RecordType, CompressionPool } from '../dist/index.js';
import { MiB, mbps, median, result, runShell } from './lib.mjs';

export const names = ['zstd-compress-', 'zstd-decompress-'];

const zstd = createRequire(import.meta.url)('zstd-napi/binding');

const here = path.dirname(fileURLToPath(import.meta.url));
const DIST = pathToFileURL(path.join(here, '..', 'dist', 'index.js')).href;

// The encoder child: stdin (pipe) -> 1 MiB records -> RecordEncoder -> stdout (pipe).
const ENCODER_CHILD = `
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createFdSource, createFdSink, RecordEncoder, RecordType, CompressionPool } from '${DIST}';
const level = process.argv[2] === 'none' ? null : Number(process.argv[2]);
const MiB = 1024 * 1024;
const pool = level === null ? null : new CompressionPool();
// The workers boot before the clock starts, as Node's own start-up does and as migrate() boots them
// during its handshake: otherwise the first ~16 records are compressed on the main thread while
// they boot (60-70 ms each here), and the boot is counted against the CLI, which starts in a
// millisecond.
await pool?.warm();
const enc = new RecordEncoder({
  devices: [{ name: 'd0', identity: { kind: 'sim', model: 'bench', version: '1.0', flags: 7, stateSize: 0 } }],
  compression: level === null ? false : { level, pool },
  // A record that went out compressed gives its buffer back for a later record (the pool copied
  // it into its slab): fresh memory costs a page fault per 4 KiB. (Moving the buffers to the
  // workers instead, transferPayloads, means a fresh buffer for every record: ~13% slower here.)
  onPayloadFree: (p) => {
    if (p.length === MiB && free.length < 32) free.push(p);
  },
  // Frames are written into memory the pool lends and go back once the sink wrote them (below).
  recycleFrames: true,
});
// Input chunks go back to the source once cut into records: later reads reuse their memory.
const src = createFdSource(0, { recycle: true });
const sink = createFdSink(1);
const free = [];
// Records are cut into shared memory, which the workers read in place, as migrate() reads a data fd.
const newBuf = () => Buffer.from(new SharedArrayBuffer(MiB));
let cur = newBuf();
let fill = 0;
let t0 = 0;
const send = (buf, cb) => (enc.write({ type: RecordType.DATA, device: 0, payload: buf }) ? cb() : enc.once('drain', cb));
const cutter = new Writable({
  highWaterMark: MiB,
  write(chunk, _e, done) {
    if (t0 === 0) t0 = performance.now();
    const cb = () => {
      src.release(chunk);
      done();
    };
    let at = 0;
    const step = () => {
      while (at < chunk.length) {
        const n = Math.min(chunk.length - at, MiB - fill);
        chunk.copy(cur, fill, at, at + n);
        fill += n;
        at += n;
        if (fill === MiB) {
          const full = cur;
          cur = free.pop() ?? newBuf();
          fill = 0;
          return send(full, step);
        }
      }
      cb();
    };
    step();
  },
  final(cb) {
    const done = () => { enc.end({ type: RecordType.STREAM_END }); cb(); };
    if (fill > 0) send(cur.subarray(0, fill), done); else done();
  },
});
// Forwarded by hand, as migrate() does, so each frame or raw payload goes back once written.
const forward = new Writable({
  highWaterMark: 4 * MiB,
  write(c, _e, cb) {
    // A frame goes back to the pool; a record that went out raw is one of our 1 MiB buffers.
    const done = () => enc.release(c) || (c.length === MiB && free.length < 32 && free.push(c));
    if (sink.write(c, done)) cb();
    else sink.once('drain', cb);
  },
  final(cb) { sink.end(cb); },
});
await Promise.all([pipeline(src, cutter), pipeline(enc, forward)]);
process.stderr.write('__MS__' + (performance.now() - t0) + '\\n');
await pool?.close();
`;

// The decoder child: stdin (pipe) -> RecordDecoder -> DATA payloads -> stdout (pipe).
const DECODER_CHILD = `
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createFdSource, createFdSink, RecordDecoder, RecordType, CompressionPool } from '${DIST}';
// argv[2] 'pool': frames decompress in a worker pool sized to the cores (RecordDecoder's \`pool\`,
// receive()'s decompressionPool), 'pool1' in a pool of one worker, else on the main thread. Its
// workers boot before the clock starts (and before stdin is read), as in the encoder child.
const pool = process.argv[2] === 'pool' ? new CompressionPool() : process.argv[2] === 'pool1' ? new CompressionPool({ size: 1 }) : null;
await pool?.warm();
const sink = createFdSink(1);
// The decompressed payloads go back to the decoder once the sink wrote them (RecordDecoder recycle):
// later frames decompress into memory already mapped; and the decoder gives stdin's chunks back to
// the source once parsed (INPUT_RELEASE), so later pipe reads land in memory already mapped too.
// BENCH_ZSTD_RECYCLE=0 turns both off.
const recycle = process.env.BENCH_ZSTD_RECYCLE !== '0';
// With the pool the chunks are shared memory, so that a frame within one is read in place by a worker.
const src = createFdSource(0, { recycle, sharedMemory: pool !== null });
let t0 = 0;
src.once('data', () => (t0 = performance.now()));
const dec = new RecordDecoder({ recycle, pool });
// One record at a time into the sink (whose queue holds 1 MiB), as receive() writes each payload
// into a device's ResumingStream.
const out = new Writable({
  objectMode: true,
  highWaterMark: 1,
  write(rec, _e, cb) {
    if (rec.type !== RecordType.DATA) return cb();
    const payload = rec.payload;
    const done = recycle ? () => dec.release(payload) : undefined;
    if (sink.write(payload, done)) cb(); else sink.once('drain', cb);
  },
  final(cb) { sink.end(cb); },
});
await pipeline(src, dec, out);
process.stderr.write('__MS__' + (performance.now() - t0) + '\\n');
await pool?.close();
`;

function makeData(file, profile, bytes) {
  const gen = new PageGenerator(1, profile);
  const fd = fs.openSync(file, 'w');
  const buf = Buffer.allocUnsafe(4 * MiB);
  let page = 0;
  try {
    for (let off = 0; off < bytes; off += buf.length) {
      for (let p = 0; p < buf.length; p += 4096) gen.writePage(buf, p, page++, 0);
      fs.writeSync(fd, buf);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function cliLevel(level) {
  return level < 0 ? `--fast=${-level}` : `-${level}`;
}

/**
 * Run a pipeline; when the node child reports its own time (first byte in to last byte out, so Node's
 * startup, module loading and worker spawn are not counted: the CLI starts in a millisecond), use it.
 */
async function shell(cmd) {
  const r = await runShell(cmd);
  if (r.code !== 0) throw new Error(`${cmd} failed (${r.code}): ${r.stderr.slice(0, 500)}`);
  const m = /__MS__([\d.]+)/.exec(r.stderr);
  return m ? { ...r, ms: Number(m[1]), wallMs: r.ms } : r;
}

/**
 * Does the worker pool help decompression? The same frames decompressed in-process, in order, one shot
 * on the main thread (what RecordDecoder does) and through the pool (8 in flight). MB/s of the
 * frames' output, raw records left out; null when no record went compressed (incompressible data:
 * the encoder's minSaving sends it raw).
 */
async function decompressInProcess(streamFile, rawBytes) {
  const data = fs.readFileSync(streamFile);
  // Walk the records by the header layout of docs/wire-format.md to collect the DATA payloads.
  const frames = [];
  let off = 28 + data.readUInt32LE(16);
  while (off + 28 <= data.length) {
    const len = data.readUInt32LE(off + 12);
    if (data[off + 1] === RecordType.DATA) {
      frames.push({ frame: data.subarray(off + 28, off + 28 + len), raw: data.readUInt32LE(off + 16), compressed: (data[off + 2] & 2) !== 0 });
    }
    off += 28 + len;
  }
  const rawOnly = frames.reduce((n, f) => n + (f.compressed ? 0 : f.frame.length), 0);
  const zframes = frames.filter((f) => f.compressed);
  const dctx = new zstd.DCtx();
  let t0 = performance.now();
  let out = 0;
  for (const f of zframes) {
    const dst = Buffer.allocUnsafe(f.raw);
    out += dctx.decompress(dst, f.frame);
  }
  const main = zframes.length > 0 ? mbps(out, performance.now() - t0) : null;
  if (out + rawOnly !== rawBytes) throw new Error(`main-thread decompression produced ${out + rawOnly} bytes, expected ${rawBytes}`);
  const pool = new CompressionPool();
  await pool.decompress(zframes[0]?.frame ?? Buffer.alloc(0), 0).catch(() => {}); // start the workers
  t0 = performance.now();
  const inflight = [];
  out = 0;
  for (const f of zframes) {
    inflight.push(pool.decompress(f.frame, f.raw));
    if (inflight.length >= 8) out += (await inflight.shift()).length;
  }
  for (const p of inflight) out += (await p).length;
  const viaPool = zframes.length > 0 ? mbps(out, performance.now() - t0) : null;
  await pool.close();
  if (out + rawOnly !== rawBytes) throw new Error(`pool decompression produced ${out + rawOnly} bytes, expected ${rawBytes}`);
  return { main, viaPool };
}

export default async function run({ quick }) {
  const bytes = (quick ? 32 : 256) * MiB;
  const runs = quick ? 1 : 3;
  const levels = [-1, 1, 3];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-mig-bench-zstd-'));
  const encScript = path.join(dir, 'encoder.mjs');
  const decScript = path.join(dir, 'decoder.mjs');
  fs.writeFileSync(encScript, ENCODER_CHILD);
  fs.writeFileSync(decScript, DECODER_CHILD);
  const results = [];
  try {
    for (const profile of ['mixed', 'random']) {
      const data = path.join(dir, `${profile}.bin`);
      makeData(data, profile, bytes);
      for (const level of levels) {
        const ours = path.join(dir, `${profile}.L${level}.vfm`);
        const theirs = path.join(dir, `${profile}.L${level}.zst`);
        const m = { enc: [], t2: [], t1: [], dec: [], pool: [], pool1: [], zdec: [], rss: { enc: 0, t2: 0, dec: 0, zdec: 0 } };
        // One untimed warm-up of our encoder writes the stream file the decoder runs read.
        await shell(`cat ${data} | node ${encScript} ${level} > ${ours}`);
        await shell(`cat ${data} | zstd -q ${cliLevel(level)} -T2 -c > ${theirs}`);
        for (let i = 0; i < runs; i++) {
          const a = await shell(`cat ${data} | node ${encScript} ${level} | cat > /dev/null`);
          m.enc.push(mbps(bytes, a.ms));
          m.rss.enc = Math.max(m.rss.enc, a.maxRssKB);
          const b = await shell(`cat ${data} | zstd -q ${cliLevel(level)} -T2 -c | cat > /dev/null`);
          m.t2.push(mbps(bytes, b.ms));
          m.rss.t2 = Math.max(m.rss.t2, b.maxRssKB);
          const c = await shell(`cat ${data} | zstd -q ${cliLevel(level)} -T1 -c | cat > /dev/null`);
          m.t1.push(mbps(bytes, c.ms));
          const d = await shell(`cat ${ours} | node ${decScript} | cat > /dev/null`);
          m.dec.push(mbps(bytes, d.ms));
          m.rss.dec = Math.max(m.rss.dec, d.maxRssKB);
          const dp = await shell(`cat ${ours} | node ${decScript} pool | cat > /dev/null`);
          m.pool.push(mbps(bytes, dp.ms));
          const dp1 = await shell(`cat ${ours} | node ${decScript} pool1 | cat > /dev/null`);
          m.pool1.push(mbps(bytes, dp1.ms));
          const e = await shell(`cat ${theirs} | zstd -q -d -c | cat > /dev/null`);
          m.zdec.push(mbps(bytes, e.ms));
          m.rss.zdec = Math.max(m.rss.zdec, e.maxRssKB);
        }
        // The decoded bytes must be the input: check once (outside the timing).
        for (const mode of ['', 'pool', 'pool1']) {
          const check = await shell(`cat ${ours} | node ${decScript} ${mode} | cmp - ${data} && echo same`);
          if (!check.stdout.includes('same')) throw new Error(`decoded stream differs from the input (${profile}, level ${level}${mode ? ', pool' : ''})`);
        }
        const ourSize = fs.statSync(ours).size;
        const cliSize = fs.statSync(theirs).size;
        const inProc = await decompressInProcess(ours, bytes);
        const tag = `L${level}-${profile}`;
        results.push(
          result(`zstd-compress-${tag}`, median(m.enc), 'MB/s', `zstd ${cliLevel(level)} -T2`, median(m.t2), {
            ratio: +(bytes / ourSize).toFixed(3),
            cliRatio: +(bytes / cliSize).toFixed(3),
            cliT1MBps: +median(m.t1).toFixed(0),
            rssKB: m.rss.enc,
            cliRssKB: m.rss.t2,
            bytes,
            runs,
          }),
          result(`zstd-decompress-${tag}`, median(m.dec), 'MB/s', 'zstd -d', median(m.zdec), {
            poolMBps: +median(m.pool).toFixed(0),
            pool1MBps: +median(m.pool1).toFixed(0),
            inProcessMainThreadMBps: inProc.main === null ? null : +inProc.main.toFixed(0),
            inProcessWorkerPoolMBps: inProc.viaPool === null ? null : +inProc.viaPool.toFixed(0),
            rssKB: m.rss.dec,
            cliRssKB: m.rss.zdec,
            bytes,
            runs,
          }),
        );
        fs.rmSync(ours);
        fs.rmSync(theirs);
      }
      fs.rmSync(data);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
