import { describe, it, expect, afterAll } from 'vitest';
import { crc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { CompressionPool, zstd, validateZstdLevel, validateMinSaving, MIN_ZSTD_LEVEL, DEFAULT_ZSTD_LEVEL, DEFAULT_MIN_SAVING } from '../../src/streams/compression-pool.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { mixedData } from './wire-helpers.js';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, ensureBuilt } from '../e2e/helpers.js';

function decompress(frame: Buffer, size: number): Buffer {
  const out = Buffer.alloc(size);
  const n = new zstd.DCtx().decompress(out, frame);
  expect(n).toBe(size);
  return out;
}

/** Run `node ...args`; its stdout, stderr and exit code, or 'alive' (then killed) after 10 s. */
async function nodeChild(args: string[]): Promise<{ out: string; err: string; exited: number | 'alive' }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = await Promise.race([
    once(child, 'exit').then(([code]) => code as number),
    new Promise<'alive'>((resolve) => setTimeout(() => resolve('alive'), 10_000)),
  ]);
  if (exited === 'alive') child.kill('SIGKILL');
  return { out, err, exited };
}

describe('CompressionPool', () => {
  const pool = new CompressionPool({ size: 2 });
  afterAll(() => pool.close());

  it('warm() starts every worker before the first job; the jobs then use them', async () => {
    const p = new CompressionPool({ size: 2 });
    try {
      expect(p.workers).toBe(0);
      await p.warm();
      expect(p.workers).toBe(2);
      await p.warm();
      expect(p.workers).toBe(2);
      const data = mixedData(256 * 1024, 3);
      const r = await p.compress(data);
      expect(decompress(r.compressed as Buffer, data.length).equals(data)).toBe(true);
      expect(p.workers).toBe(2);
    } finally {
      await p.close();
    }
    // A closed pool starts nothing.
    await p.warm();
    expect(p.workers).toBe(0);
  });

  it('readyWorkers counts the booted workers; compressSync() gives what a worker gives', async () => {
    const p = new CompressionPool({ size: 2 });
    try {
      expect(p.readyWorkers).toBe(0);
      const booting = p.warm();
      expect(p.workers).toBe(2);
      await booting;
      expect(p.readyWorkers).toBe(2);
      const data = mixedData(512 * 1024, 9);
      const here = p.compressSync(data);
      const there = await p.compress(data);
      expect(here.compressed).not.toBeNull();
      expect(here.compressed!.equals(there.compressed!)).toBe(true);
      expect(here.crc).toBe(crc32(here.compressed!));
      expect(here.raw).toBe(data);
      expect(decompress(here.compressed!, data.length).equals(data)).toBe(true);
      const noise = randomBytes(100_000);
      expect(p.compressSync(noise, { level: 3 })).toEqual({ compressed: null, crc: crc32(noise), raw: noise });
      expect(p.compressSync(data, { crc: false }).crc).toBe(0);
      expect(() => p.compressSync(data, { level: 99 })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    } finally {
      await p.close();
    }
    expect(p.closed).toBe(true);
    expect(p.readyWorkers).toBe(0);
  });

  // Node 20 refs a worker's port again when a 'message' listener is added after unref()
  // (nodejs/node#53036): a worker that booted and never got a job kept a migration's process alive
  // after an abort. The child warms a pool, compresses once on its own thread, and must exit. It
  // runs as `node --input-type module -e` (both spellings): the workers must not inherit that flag,
  // their source is CommonJS.
  for (const flags of [['--input-type=module'], ['--input-type', 'module']]) {
    it(`an idle pool never keeps its process alive, booted workers that got no job included (child: node ${flags.join(' ')} -e)`, async () => {
      await ensureBuilt();
      const script = [
        `import { CompressionPool } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'index.js')).href)};`,
        'const pool = new CompressionPool({ size: 2 });',
        'await pool.warm();',
        'pool.compressSync(Buffer.alloc(65536, 1));',
        "process.stdout.write(`ready ${pool.readyWorkers}`);",
      ].join('\n');
      const { out, exited } = await nodeChild([...flags, '-e', script]);
      expect(out).toBe('ready 2');
      expect(exited).toBe(0);
    });
  }

  // The other side of the same switch: a worker's ready message read after close() unref'd it, and
  // an unref'd worker's pending terminate() does not hold the event loop. A process whose last work
  // was `await pool.close()` then ended with that await unsettled (exit 13 here; `vfio-mig restore
  // --decompression-workers 1` of a corrupt file exited 0 with its command unfinished, once in CI).
  // The child blocks its event loop while the worker boots, so the ready message waits until after
  // close(): the old code lost the await every time.
  it('close() while a worker boots settles, its ready message read after the close included', async () => {
    await ensureBuilt();
    const script = [
      `import { CompressionPool } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'index.js')).href)};`,
      'const pool = new CompressionPool({ size: 2 });',
      'pool.warm().catch(() => {});',
      'const until = Date.now() + 800;',
      'while (Date.now() < until);',
      'await pool.close();',
      "process.stdout.write('closed');",
    ].join('\n');
    const { out, err, exited } = await nodeChild(['--input-type=module', '-e', script]);
    expect(out, err).toBe('closed');
    expect(exited).toBe(0);
  });

  // Node refuses V8 and per-process flags in a worker's explicit execArgv (ERR_WORKER_INVALID_EXEC_ARGV):
  // an agent started with `--max-old-space-size` (or `--trace-gc`, `--expose-gc`, next to flags a worker
  // may take, like --no-deprecation) must still compress and decompress.
  it('workers boot and compress in a process started with flags a worker may not take (node --max-old-space-size=4096 --trace-gc --expose-gc)', async () => {
    await ensureBuilt();
    const script = [
      `import { CompressionPool } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'index.js')).href)};`,
      'const pool = new CompressionPool({ size: 2 });',
      'await pool.warm();',
      'const r = await pool.compress(Buffer.alloc(1 << 20, 7), { level: 1 });',
      'const back = await pool.decompress(r.compressed, 1 << 20);',
      // On a line of its own: --trace-gc's lines (V8 writes them to stdout too) may come before or after it.
      "process.stdout.write(`\\nready ${pool.readyWorkers} ${back.equals(Buffer.alloc(1 << 20, 7))}\\n`);",
      'await pool.close();',
    ].join('\n');
    const flags = ['--max-old-space-size=4096', '--trace-gc', '--expose-gc', '--no-deprecation', '--input-type=module'];
    const { out, err, exited } = await nodeChild([...flags, '-e', script]);
    // --trace-gc prints its lines on stdout, also after the result (a GC while the pool closes).
    expect(out.split('\n'), err).toContain('ready 2 true');
    expect(exited).toBe(0);
  });

  it('compresses into independent frames with the crc of the wire bytes', async () => {
    const data = mixedData(1024 * 1024, 1);
    for (const level of [-1, 1, 3, 19]) {
      const r = await pool.compress(data, { level });
      expect(r.compressed).not.toBeNull();
      expect(r.compressed!.length).toBeLessThan(data.length * 0.7);
      expect(r.crc).toBe(crc32(r.compressed!));
      expect(r.raw).toBe(data);
      expect(decompress(r.compressed!, data.length).equals(data)).toBe(true);
    }
    expect((await pool.compress(data, { crc: false })).crc).toBe(0);
  });

  it('returns null for data that does not shrink, with the crc of the raw bytes', async () => {
    const data = randomBytes(300_000);
    const r = await pool.compress(data);
    expect(r.compressed).toBeNull();
    expect(r.raw).toBe(data);
    expect(r.crc).toBe(crc32(data));
  });

  it('minSaving: a frame that saves less than that share of its input is not used (default 1/32), in a worker and on the calling thread', async () => {
    expect(DEFAULT_MIN_SAVING).toBe(1 / 32);
    // Random bytes with a run of zeros: the frame saves about the run's share of the input.
    const withZeros = (share: number): Buffer => {
      const b = randomBytes(512 * 1024);
      b.fill(0, 0, Math.floor(b.length * share));
      return b;
    };
    const barely = withZeros(0.01); // saves ~1%: under the default
    const some = withZeros(0.1); // saves ~10%
    const saved = (r: { compressed: Buffer | null }, data: Buffer) => (r.compressed === null ? 0 : 1 - r.compressed.length / data.length);
    for (const lendFrame of [false, true]) {
      const d = await pool.compress(barely, { lendFrame });
      expect(d.compressed).toBeNull();
      expect(d.crc).toBe(crc32(barely));
      const any = await pool.compress(barely, { lendFrame, minSaving: 0 });
      expect(saved(any, barely)).toBeGreaterThan(0.005);
      expect(saved(any, barely)).toBeLessThan(1 / 32);
      expect(decompress(any.compressed!, barely.length).equals(barely)).toBe(true);
      const s = await pool.compress(some, { lendFrame });
      expect(saved(s, some)).toBeGreaterThan(0.05);
      expect((await pool.compress(some, { lendFrame, minSaving: 0.5 })).compressed).toBeNull();
      for (const r of [any, s]) if (lendFrame) pool.releaseFrame(r.compressed!);
    }
    expect(pool.compressSync(barely).compressed).toBeNull();
    expect(saved(pool.compressSync(barely, { minSaving: 0 }), barely)).toBeGreaterThan(0.005);
    expect(saved(pool.compressSync(some), some)).toBeGreaterThan(0.05);
    expect(pool.compressSync(some, { minSaving: 0.5 }).compressed).toBeNull();
    for (const bad of [-0.1, 1, Number.NaN, '0.1' as unknown as number]) {
      expect(() => validateMinSaving(bad)).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
      expect(() => pool.compressSync(some, { minSaving: bad })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    }
    // Like a bad level, before any job is queued.
    expect(() => pool.compress(some, { minSaving: 1 })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
  });

  it('resolves every job with its own result when many run at once, and respects the in-flight cap', async () => {
    const small = new CompressionPool({ size: 2, maxInFlightBytes: 1024 * 1024 });
    try {
      const inputs = Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? randomBytes(200_000 + i) : mixedData(100_000 + i * 1000, i)));
      let maxInFlight = 0;
      const timer = setInterval(() => (maxInFlight = Math.max(maxInFlight, small.inFlightBytes)), 0);
      const results = await Promise.all(inputs.map((d) => small.compress(d)));
      clearInterval(timer);
      results.forEach((r, i) => {
        const d = inputs[i]!;
        const back = r.compressed === null ? r.raw : decompress(r.compressed, d.length);
        expect(back.equals(d)).toBe(true);
      });
      expect(maxInFlight).toBeLessThanOrEqual(1024 * 1024);
      expect(small.pending).toBe(0);
      expect(small.inFlightBytes).toBe(0);
    } finally {
      await small.close();
    }
  });

  it('compressWork/timedJobs: times each job that found a booted worker idle, dispatch to result; jobs queued behind another are not timed', async () => {
    const p = new CompressionPool({ size: 2 });
    try {
      await p.warm();
      expect(p.compressWork).toEqual({ jobs: 0, rawBytes: 0, latencyMs: 0 });
      const data = mixedData(512 * 1024, 5);
      for (let i = 0; i < 3; i++) await p.compress(data);
      let w = p.compressWork;
      expect(w.jobs).toBe(3);
      expect(w.rawBytes).toBe(3 * data.length);
      expect(w.latencyMs).toBeGreaterThan(0);
      const jobs = p.timedJobs(0);
      expect(jobs.map(([bytes]) => bytes)).toEqual([data.length, data.length, data.length]);
      expect(jobs.reduce((sum, [, ms]) => sum + ms, 0)).toBeCloseTo(w.latencyMs, 6);
      expect(p.timedJobs(2)).toEqual(jobs.slice(2));
      expect(p.timedJobs(3)).toEqual([]);
      // Six at once on two workers: the two that found a worker idle are timed, the four queued are not.
      await Promise.all(Array.from({ length: 6 }, () => p.compress(data)));
      w = p.compressWork;
      expect(w.jobs).toBe(5);
      // Decompressions are not timed.
      const frame = (await p.compress(data)).compressed as Buffer;
      await p.decompress(frame, data.length);
      expect(p.compressWork.jobs).toBe(6);
      // At most the last 64 are kept one by one.
      for (let i = 0; i < 70; i++) await p.compress(data.subarray(0, 4096 + i));
      expect(p.compressWork.jobs).toBe(76);
      const kept = p.timedJobs(0);
      expect(kept).toHaveLength(64);
      expect(kept.at(-1)![0]).toBe(4096 + 69);
    } finally {
      await p.close();
    }
  });

  it('transfers only buffers that own their whole ArrayBuffer, and gives the bytes back when raw', async () => {
    const owned = Buffer.allocUnsafeSlow(100_000);
    randomBytes(100_000).copy(owned);
    const copy = Buffer.from(owned);
    const r = await pool.compress(owned, { transfer: true });
    expect(owned.byteLength).toBe(0);
    expect(r.compressed).toBeNull();
    expect(r.raw.equals(copy)).toBe(true);

    const big = Buffer.allocUnsafeSlow(200_000);
    const view = big.subarray(1000, 150_000);
    view.fill(7);
    const rv = await pool.compress(view, { transfer: true });
    expect(big.byteLength).toBe(200_000); // a view is copied, never detached under its owner
    expect(rv.compressed).not.toBeNull();
    const pooled = Buffer.from('a pooled small buffer '.repeat(50));
    await pool.compress(pooled, { transfer: true });
    expect(pooled.toString()).toContain('pooled');
  });

  it('lendFrame: the frame is written into lent shared memory that releaseFrame() gives back for a later frame', async () => {
    const p = new CompressionPool({ size: 1 });
    try {
      const a = mixedData(1024 * 1024, 11);
      const ra = await p.compress(a, { lendFrame: true });
      const frameA = ra.compressed!;
      expect(frameA.buffer).toBeInstanceOf(SharedArrayBuffer);
      expect(ra.crc).toBe(crc32(frameA));
      expect(decompress(frameA, a.length).equals(a)).toBe(true);
      // Not given back yet: the next frame gets other memory.
      const b = mixedData(1024 * 1024, 12);
      const rb = await p.compress(b, { lendFrame: true });
      expect(rb.compressed!.buffer).not.toBe(frameA.buffer);
      const copyB = Buffer.from(rb.compressed!);
      // Given back once (a second time, or anything not lent, is refused and changes nothing).
      expect(p.releaseFrame(frameA)).toBe(true);
      expect(p.releaseFrame(frameA)).toBe(false);
      expect(p.releaseFrame(Buffer.from(copyB))).toBe(false);
      expect(pool.releaseFrame(rb.compressed!)).toBe(false); // another pool's
      const c = mixedData(1024 * 1024, 13);
      const rc = await p.compress(c, { lendFrame: true });
      expect(rc.compressed!.buffer).toBe(frameA.buffer);
      expect(decompress(rc.compressed!, c.length).equals(c)).toBe(true);
      expect(rb.compressed!.equals(copyB)).toBe(true); // still lent: untouched
      // Data that does not shrink goes out raw; its unused frame memory serves the next job.
      const rnd = randomBytes(300_000);
      const rr = await p.compress(rnd, { lendFrame: true });
      expect(rr.compressed).toBeNull();
      expect(rr.raw).toBe(rnd);
      expect(rr.crc).toBe(crc32(rnd));
    } finally {
      await p.close();
    }
  });

  it('reads a view of a SharedArrayBuffer in place, at its offset', async () => {
    const data = mixedData(300_000, 21);
    const shared = Buffer.from(new SharedArrayBuffer(400_000));
    data.copy(shared, 12_345);
    const view = shared.subarray(12_345, 12_345 + data.length);
    const r = await pool.compress(view);
    expect(r.raw).toBe(view);
    expect(decompress(r.compressed!, data.length).equals(data)).toBe(true);
    const rnd = randomBytes(100_000);
    rnd.copy(shared, 7);
    const rr = await pool.compress(shared.subarray(7, 100_007));
    expect(rr.compressed).toBeNull();
    expect(rr.crc).toBe(crc32(rnd));
  });

  it('decompresses in a worker to exactly the declared size, else CORRUPT', async () => {
    const data = mixedData(500_000, 4);
    const { compressed } = await pool.compress(data);
    expect((await pool.decompress(compressed!, data.length)).equals(data)).toBe(true);
    await expect(pool.decompress(compressed!, data.length - 1)).rejects.toMatchObject({ code: ErrorCodes.CORRUPT });
    await expect(pool.decompress(compressed!, data.length + 1)).rejects.toMatchObject({ code: ErrorCodes.CORRUPT });
    await expect(pool.decompress(Buffer.from('junk'), 10)).rejects.toMatchObject({ code: ErrorCodes.CORRUPT });
  });

  it('decompresses into memory moved in with `into` when it is exactly the output and owns its ArrayBuffer', async () => {
    const data = mixedData(300_000, 5);
    const { compressed } = await pool.compress(data);
    const into = Buffer.allocUnsafeSlow(data.length);
    const out = await pool.decompress(compressed!, data.length, { into });
    expect(out.equals(data)).toBe(true);
    // Moved: the caller's Buffer is detached and the result owns an ArrayBuffer of exactly its size.
    expect(into.length).toBe(0);
    expect(out.buffer.byteLength).toBe(data.length);
    // Not moved: a slice of a larger buffer, or the wrong size, is left alone.
    const big = Buffer.allocUnsafeSlow(2 * data.length);
    const wrong = Buffer.allocUnsafeSlow(data.length + 1);
    for (const other of [big.subarray(0, data.length), wrong]) {
      expect((await pool.decompress(compressed!, data.length, { into: other })).equals(data)).toBe(true);
      expect(other.length).toBeGreaterThan(0);
    }
  });

  it('close() rejects queued and running jobs with ECANCELED and later jobs too', async () => {
    const p = new CompressionPool({ size: 1, maxInFlightBytes: 1 });
    const jobs = Array.from({ length: 5 }, () => p.compress(mixedData(1024 * 1024, 2), { level: 19 }));
    const settled = Promise.allSettled(jobs);
    await p.close();
    const out = await settled;
    expect(out.some((o) => o.status === 'rejected' && (o.reason as { code?: string }).code === 'ECANCELED')).toBe(true);
    await expect(p.compress(Buffer.alloc(10))).rejects.toMatchObject({ code: 'ECANCELED' });
    await p.close();
  });

  it('validates levels: integers from zstd minimum to 19', () => {
    expect(DEFAULT_ZSTD_LEVEL).toBe(1);
    expect(validateZstdLevel(-1)).toBe(-1);
    expect(validateZstdLevel(MIN_ZSTD_LEVEL)).toBe(MIN_ZSTD_LEVEL);
    for (const bad of [20, 22, 1.5, NaN, MIN_ZSTD_LEVEL - 1]) {
      expect(() => validateZstdLevel(bad)).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    }
    expect(() => new CompressionPool({ size: 0 })).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
  });
});
