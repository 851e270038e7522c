/**
 * The process-wide compression pool: its default size (the CPUs this process may use, capped) and
 * its configuration before first use. A file of its own: the shared pool is module state, and
 * vitest gives each test file fresh modules.
 */
import { describe, it, expect, afterAll } from 'vitest';
import os from 'node:os';
import { MigError } from '../../src/fsm/errors.js';
import {
  CompressionPool,
  DEFAULT_MAX_POOL_SIZE,
  configureSharedCompressionPool,
  defaultPoolSize,
  sharedCompressionPool,
} from '../../src/streams/compression-pool.js';

afterAll(async () => {
  await sharedCompressionPool().close();
});

describe('the shared compression pool', () => {
  it('defaults to the available parallelism, at most DEFAULT_MAX_POOL_SIZE', async () => {
    expect(DEFAULT_MAX_POOL_SIZE).toBe(8);
    expect(defaultPoolSize()).toBe(Math.max(1, Math.min(os.availableParallelism(), 8)));
    const p = new CompressionPool();
    expect(p.size).toBe(defaultPoolSize());
    await p.close();
    // An explicit size is taken as given, above the cap too (no worker starts until used).
    const big = new CompressionPool({ size: 12 });
    expect(big.size).toBe(12);
    expect(big.workers).toBe(0);
    await big.close();
  });

  it('takes its options before first use, refuses different ones after, and checks them', async () => {
    expect(() => configureSharedCompressionPool({ size: 0 })).toThrow(MigError);
    expect(() => configureSharedCompressionPool({ size: 1.5 })).toThrow(/pool size must be >= 1/);
    expect(() => configureSharedCompressionPool({ level: 99 })).toThrow(MigError);
    configureSharedCompressionPool({ size: 3 });
    configureSharedCompressionPool({ size: 1 }); // the last call before use wins
    const pool = sharedCompressionPool();
    expect(pool.size).toBe(1);
    expect(sharedCompressionPool()).toBe(pool);
    // The same options again are no change; different ones cannot apply to a pool that may be busy.
    configureSharedCompressionPool({ size: 1 });
    configureSharedCompressionPool({});
    let err: unknown = null;
    try {
      configureSharedCompressionPool({ size: 2 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MigError);
    expect((err as MigError).code).toBe('VFIO_MIG_ERR_USAGE');
    expect((err as MigError).message).toMatch(/already exists \(1 workers\)/);
    expect(sharedCompressionPool().size).toBe(1);
    // It works: one worker compresses.
    const r = await pool.compress(Buffer.alloc(256 * 1024, 7));
    expect(r).not.toBeNull();
    expect(pool.workers).toBe(1);
  });
});
