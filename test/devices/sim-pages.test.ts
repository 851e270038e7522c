// SimDevice's pages, a run per call: the native addon (native/simpages) and the JavaScript fallback
// must write exactly what writePage() writes and accept exactly what verifyPage() accepts, and name
// the first page that differs.
import { describe, it, expect, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PageGenerator, SIM_PROFILES, simPagesNative, PAGE_SIZE, type SimProfile } from '../../src/devices/sim-pages.js';

const hasCompiler = spawnSync(process.env.CC || 'cc', ['--version']).status === 0;

/** The module again, loaded with VFIO_MIG_SIM_PAGES_JS=1: its run calls take the JavaScript loop. */
async function jsOnlyModule(): Promise<typeof import('../../src/devices/sim-pages.js')> {
  vi.stubEnv('VFIO_MIG_SIM_PAGES_JS', '1');
  vi.resetModules();
  try {
    return await import('../../src/devices/sim-pages.js');
  } finally {
    vi.unstubAllEnvs();
    vi.resetModules();
  }
}

/** Page indexes and versions that reach every kind, the u32 edges and repeats. */
function run(count: number, seed: number): { idx: Uint32Array; ver: Uint32Array } {
  const idx = new Uint32Array(count);
  const ver = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    idx[i] = i % 7 === 3 ? 0xffffffff - i : (i * 2654435761 + seed) >>> 0;
    ver[i] = i % 5 === 0 ? 0 : i % 5 === 1 ? 0xffffffff : (i * 40503) >>> 0;
  }
  return { idx, ver };
}

/** writePage() page by page: the definition of the content. */
function reference(gen: PageGenerator, idx: Uint32Array, ver: Uint32Array, k: number, count: number): Buffer {
  const out = Buffer.alloc(count * PAGE_SIZE);
  for (let j = 0; j < count; j++) gen.writePage(out, j * PAGE_SIZE, idx[k + j], ver[k + j]);
  return out;
}

describe('SimDevice pages, a run per call', () => {
  it('the native addon is in use wherever a C compiler was at install time', () => {
    expect(simPagesNative).toBe(hasCompiler);
  });

  it('writePages writes what writePage writes, for every profile, at any offset and start', async () => {
    const js = await jsOnlyModule();
    expect(js.simPagesNative).toBe(false);
    for (const profile of SIM_PROFILES) {
      for (const seed of [0, 11, 0xffffffff]) {
        const gen = new PageGenerator(seed, profile);
        const jsGen = new js.PageGenerator(seed, profile);
        const { idx, ver } = run(300, seed);
        const want = reference(gen, idx, ver, 17, 256);
        for (const g of [gen, jsGen]) {
          const dst = Buffer.alloc(256 * PAGE_SIZE + 3 * PAGE_SIZE, 0xee);
          g.writePages(dst, PAGE_SIZE + 5, idx, ver, 17, 256);
          expect(dst.subarray(PAGE_SIZE + 5, PAGE_SIZE + 5 + want.length).equals(want)).toBe(true);
          // Nothing outside the run is touched.
          expect(dst.subarray(0, PAGE_SIZE + 5).every((b) => b === 0xee)).toBe(true);
          expect(dst.subarray(PAGE_SIZE + 5 + want.length).every((b) => b === 0xee)).toBe(true);
        }
      }
    }
  });

  it('verifyPages accepts a good run and returns the index of the first page that differs', async () => {
    const js = await jsOnlyModule();
    for (const profile of ['mixed', 'random', 'zero'] as SimProfile[]) {
      const gen = new PageGenerator(7, profile);
      const jsGen = new js.PageGenerator(7, profile);
      const { idx, ver } = run(64, 7);
      const good = reference(gen, idx, ver, 0, 64);
      for (const g of [gen, jsGen]) {
        expect(g.verifyPages(good, 0, idx, ver, 0, 64)).toBe(64);
        expect(g.verifyPages(good, 4 * PAGE_SIZE, idx, ver, 4, 60)).toBe(60);
        expect(g.verifyPages(good, 0, idx, ver, 0, 0)).toBe(0);
        // One bit anywhere in page 9: the stamp, the body's first and last bytes.
        for (const at of [0, 5, 15, 16, 2000, PAGE_SIZE - 1]) {
          const bad = Buffer.from(good);
          bad[9 * PAGE_SIZE + at] ^= 0x01;
          expect(g.verifyPages(bad, 0, idx, ver, 0, 64)).toBe(9);
          expect(g.verifyPages(bad, 10 * PAGE_SIZE, idx, ver, 10, 54)).toBe(54);
        }
        // The right bytes under another version or index are wrong (except a zero page's).
        const other = Uint32Array.from(ver);
        other[20] = (other[20] + 1) >>> 0;
        expect(g.verifyPages(good, 0, idx, other, 0, 64)).toBe(profile === 'zero' ? 64 : 20);
      }
    }
  });

  it.runIf(simPagesNative)('the addon refuses runs outside the buffer or the page lists (RangeError) and wrong types (TypeError)', () => {
    const gen = new PageGenerator(1, 'mixed');
    const { idx, ver } = run(8, 1);
    const buf = Buffer.alloc(8 * PAGE_SIZE);
    expect(() => gen.writePages(buf, 1, idx, ver, 0, 8)).toThrow(RangeError);
    expect(() => gen.writePages(buf, 0, idx, ver, 1, 8)).toThrow(RangeError);
    expect(() => gen.verifyPages(buf, 0, idx.subarray(0, 4), ver, 0, 5)).toThrow(RangeError);
    expect(() => gen.verifyPages(buf, 0, new Uint16Array(8) as unknown as Uint32Array, ver, 0, 1)).toThrow(TypeError);
    expect(buf.every((b) => b === 0)).toBe(true);
  });

  it('building the pools keeps three buffers, not an object per page for a scavenge to promote', async () => {
    // 9232 page views used to be made with the pools: ~1 MiB of young objects whose promotion took
    // 9-18 ms, which in a fresh process fell inside the first migration's downtime in 5 of 8 runs.
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    vi.resetModules();
    const fresh = await import('../../src/devices/sim-pages.js');
    gc();
    gc();
    const before = v8.getHeapStatistics().used_heap_size;
    const gen = new fresh.PageGenerator(1, 'mixed');
    gc();
    gc();
    const kept = v8.getHeapStatistics().used_heap_size - before;
    expect(gen.seed).toBe(1);
    // 84 KiB measured now (the pools' strings and buffers' wrappers); 1030 KiB with the views.
    expect(kept).toBeLessThan(384 * 1024);
    vi.resetModules();
  });
});

describe('SimMemory.versionsInto', () => {
  it('reads what version() reads, for runs across dirtied and clean groups, before and after replace()', async () => {
    const { SimMemory, PageVersions } = await import('../../src/devices/sim-memory.js');
    const versions = (entries: [number, number][]): InstanceType<typeof PageVersions> => {
      const v = new PageVersions();
      for (const [i, ver] of entries) v.set(i, ver);
      return v;
    };
    const pageCount = 2 ** 32 - 5; // indexes up to u32: groups past 2^27
    const mem = new SimMemory(pageCount, 3, 'mixed');
    const out = new Uint32Array(300).fill(7);
    mem.versionsInto(1000, 300, out);
    expect(out.every((v) => v === 0)).toBe(true);
    const touched = [0, 31, 32, 1000, 1031, 1032, 1299, 4000, pageCount - 1, pageCount - 40, 2 ** 31 + 5];
    for (const i of touched) mem.touch(i);
    mem.touch(1000); // version 2
    const check = (m: InstanceType<typeof SimMemory>, first: number, count: number): void => {
      const got = new Uint32Array(count).fill(9);
      m.versionsInto(first, count, got);
      for (let j = 0; j < count; j++) expect(got[j], `page ${first + j}`).toBe(m.version(first + j));
    };
    for (const [first, count] of [[0, 300], [17, 256], [990, 320], [3990, 40], [pageCount - 300, 300], [2 ** 31 - 100, 256]]) check(mem, first, count);
    expect(mem.version(1000)).toBe(2);
    mem.touch(700);
    mem.touch(2 ** 31 + 77);
    check(mem, 640, 100);
    check(mem, 2 ** 31 + 64, 32);
    const loaded = new SimMemory(pageCount, 3, 'mixed');
    loaded.replace(versions([[5, 4], [pageCount - 2, 1]]), 0, 0);
    check(loaded, 0, 256);
    check(loaded, pageCount - 256, 256);
    expect(loaded.version(5)).toBe(4);
    // Replaced again (a later migration in), and dirtied before and after a saver asks.
    loaded.replace(versions([[9000, 2]]), 0, 0);
    loaded.touch(40);
    check(loaded, 0, 64);
    check(loaded, 8990, 20);
    loaded.touch(9001);
    check(loaded, 8990, 20);
    expect(loaded.version(5)).toBe(0);
  });
});

describe('PageVersions', () => {
  it('returns the previous version, counts non-zero pages, and makes no chunk for a version 0', async () => {
    const { PageVersions } = await import('../../src/devices/sim-memory.js');
    const v = new PageVersions();
    expect(v.set(2 ** 32 - 1, 0)).toBe(0);
    expect(v.size).toBe(0);
    const out = new Uint32Array(8).fill(5);
    v.copyInto(2 ** 32 - 8, 8, out);
    expect([...out]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(v.set(2 ** 32 - 1, 3)).toBe(0);
    expect(v.set(2 ** 31 + 1023, 1)).toBe(0); // the last page of a chunk past 2^31
    expect(v.set(2 ** 31 + 1024, 2)).toBe(0); // the first of the next
    expect(v.size).toBe(3);
    expect(v.set(2 ** 32 - 1, 4)).toBe(3);
    expect(v.size).toBe(3);
    expect(v.set(2 ** 32 - 1, 0)).toBe(4);
    expect(v.size).toBe(2);
    expect(v.get(2 ** 32 - 1)).toBe(0);
    const across = new Uint32Array(4).fill(9);
    v.copyInto(2 ** 31 + 1022, 4, across); // spans two chunks
    expect([...across]).toEqual([0, 1, 2, 0]);
  });

  it('a dirtied state keeps its versions outside the JavaScript heap, not an object per page', async () => {
    // A Map entry per dirtied page made 65536 heap entries for a 256 MiB state dirtied through, all
    // of them young objects for a scavenge to copy.
    const { SimMemory } = await import('../../src/devices/sim-memory.js');
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const pages = 65536;
    // The code's first runs (bytecode, feedback) are not the state's.
    const warm = new SimMemory(pages, 2, 'mixed');
    for (let i = 0; i < 4096; i++) warm.touch(i);
    const mem = new SimMemory(pages, 1, 'mixed');
    gc();
    gc();
    const before = v8.getHeapStatistics().used_heap_size;
    for (let i = 0; i < pages; i++) mem.touch((i * 7919) % pages);
    gc();
    gc();
    const kept = v8.getHeapStatistics().used_heap_size - before;
    expect(mem.dirtiedPages).toBe(pages);
    // 1024 chunks: ~66 KiB of wrappers, plus the test runner's own noise (20-140 KiB); the Map of
    // entries kept 1.7 MiB.
    expect(kept).toBeLessThan(512 * 1024);
  });
});
