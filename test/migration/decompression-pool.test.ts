/**
 * receive()'s decompressionPool: compressed DATA records decompress in the pool's workers, on the
 * main connection and on extra channels, and the state arrives verified.
 */
import { describe, it, expect } from 'vitest';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';
import { MiB, withSimPair } from '../e2e/helpers.js';

/** A pool that counts the frames it was asked to decompress. */
function countingPool(size: number): { pool: CompressionPool; frames: () => number } {
  const pool = new CompressionPool({ size });
  let frames = 0;
  const inner = pool.decompress.bind(pool);
  pool.decompress = (frame, rawLength, opts) => {
    frames++;
    return inner(frame, rawLength, opts);
  };
  return { pool, frames: () => frames };
}

async function run(channels: number, poolSize: number) {
  const { pool, frames } = countingPool(poolSize);
  // Warmed first, as a destination that expects compressed streams would: a cold pool boots at the
  // first compressed record, and on a loaded machine a small migration can end before it is up
  // (the decoder's cold start has its own test, record-decoder-pool.test.ts).
  await pool.warm();
  try {
    return await withSimPair(2, { size: 16 * MiB, dirtyRate: 2 * MiB }, async (src, dst, listener) => {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept(), accept: () => listener.accept(), decompressionPool: pool });
      const out = migrate({ devices: src.cores, transport: listener.url, compression: 'zstd', channels });
      const [s, d] = await Promise.all([out.done, incoming.done]);
      expect(s.verified && d.verified).toBe(true);
      for (let i = 0; i < 2; i++) expect(dst.sims[i].digest()).toBe(src.sims[i].digest());
      expect(pool.workers).toBe(poolSize);
      return { frames: frames(), s };
    });
  } finally {
    await pool.close();
  }
}

describe('receive() with a decompression pool', () => {
  it('decompresses the compressed records in its worker, and the devices verify', async () => {
    const { frames, s } = await run(1, 1);
    expect(s.compressionRatio).toBeGreaterThan(1.5);
    // 32 MiB in records of up to 1 MiB: most of them through the worker (records under the
    // decoder's poolMinBytes decompress inline).
    expect(frames).toBeGreaterThan(16);
  });

  it('on extra channels too', async () => {
    const { frames } = await run(3, 2);
    expect(frames).toBeGreaterThan(16);
  });
});
