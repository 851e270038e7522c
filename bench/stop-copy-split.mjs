// Question: how much of a small compressed stop-copy's time does splitting it over the compression
// workers save? At the switchover migrate() reads a stop-copy of up to a chunk per worker in one
// equal piece per worker (stopCopyReadBytes), one record each, so that they compress side by side;
// before, it left in whole 1 MiB chunks, and a stop-copy under a chunk was one record on one worker
// while the others idled, all of it inside the downtime.
//
// - stop-copy-split-SIZE: ms from the first compress() call to the last result for SIZE bytes of the
//   'mixed' profile read in stopCopyReadBytes(SIZE, 1 MiB, workers) pieces, all submitted at once to
//   a warm CompressionPool of the machine's size. Baseline: the same bytes in whole 1 MiB chunks.
//   Lower is better: ratio = split / whole.
// In one process, from memory; the two alternate, medians over `runs`.
import os from 'node:os';
import { CompressionPool, PageGenerator, stopCopyReadBytes } from '../dist/index.js';
import { MiB, median, result } from './lib.mjs';

export const names = ['stop-copy-split-'];

const CHUNK = MiB;
// SPLIT_SIZES=bytes,bytes,...: other sizes (stopCopyReadBytes keeps whole chunks past a chunk per
// worker: equal pieces measured 0.91-1.20 x whole chunks there).
const SIZES = process.env.SPLIT_SIZES
  ? process.env.SPLIT_SIZES.split(',').map((b) => ({ label: `${b}B`, bytes: Number(b) }))
  : [
      { label: '256KiB', bytes: 256 * 1024 },
      { label: '650KB', bytes: 650_000 },
      { label: '1MiB', bytes: MiB },
      { label: '1.5MiB', bytes: 1.5 * MiB },
    ];

/** Compress `bytes` of `data` in pieces of `piece`, all at once; resolve the ms until the last result. */
async function compressAll(pool, data, bytes, piece) {
  const t0 = performance.now();
  const jobs = [];
  for (let off = 0; off < bytes; off += piece) jobs.push(pool.compress(data.subarray(off, Math.min(bytes, off + piece)), { level: 1 }));
  await Promise.all(jobs);
  return performance.now() - t0;
}

export default async function run({ quick }) {
  const workers = Math.max(1, os.availableParallelism());
  const pool = new CompressionPool({ size: workers });
  try {
    await pool.warm();
    const data = Buffer.alloc(4 * MiB);
    const gen = new PageGenerator(11, 'mixed');
    for (let p = 0; p < data.length / 4096; p++) gen.writePage(data, p * 4096, p, 1);
    const runs = quick ? 15 : 60;
    const rows = [];
    for (const { label, bytes } of SIZES) {
      const piece = stopCopyReadBytes(bytes, CHUNK, workers);
      // Warm both shapes first.
      await compressAll(pool, data, bytes, piece);
      await compressAll(pool, data, bytes, CHUNK);
      const split = [];
      const whole = [];
      for (let i = 0; i < runs; i++) {
        split.push(await compressAll(pool, data, bytes, piece));
        whole.push(await compressAll(pool, data, bytes, CHUNK));
      }
      rows.push(
        result(`stop-copy-split-${label}`, median(split), 'ms', 'whole 1 MiB records', median(whole), {
          workers,
          bytes,
          pieceBytes: piece,
          records: Math.ceil(bytes / piece),
          runs,
        }),
      );
    }
    return rows;
  } finally {
    await pool.close();
  }
}
