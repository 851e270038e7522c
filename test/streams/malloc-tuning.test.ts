/**
 * glibc's allocator settings (malloc-tuning.ts): how a process's settings are read, what
 * withMallocTuning() gives a child, and that they do what they are for: a pipe read through
 * createFdSource into a sink that drops its chunks faults fewer pages in (a count, not a timing;
 * docs/PERFORMANCE.md has the throughput).
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MALLOC_TUNING_ENV, mallocTuning, withMallocTuning } from '../../src/streams/malloc-tuning.js';
import { fdTuningAddon } from '../../src/streams/fd-tuning.js';
import { ROOT, ensureBuilt } from '../e2e/helpers.js';

const DIST = pathToFileURL(join(ROOT, 'dist', 'index.js')).href;
const glibc = mallocTuning() !== 'not-glibc';
/** tuneMalloc() needs the native addon (built at install time with a C compiler). */
const mallopt = glibc && typeof fdTuningAddon()?.mallopt === 'function';

/** The environment of this test process without any allocator setting. */
function cleanEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('MALLOC_')) delete env[k];
  delete env.GLIBC_TUNABLES;
  return env;
}

/** Run `code` (an ES module) in a child Node with `env`; its stdout, trimmed. */
function nodeChild(code: string, env: Record<string, string | undefined>, input?: Buffer, args: string[] = []): string {
  return execFileSync(process.execPath, ['--input-type=module', '-e', code, ...args], { env, input, encoding: 'utf8', maxBuffer: 1 << 20 }).trim();
}

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

describe('mallocTuning(env)', () => {
  it('tells the recommended settings, a caller’s own and glibc’s defaults apart', () => {
    expect(mallocTuning({})).toBe('default');
    expect(mallocTuning({ PATH: '/bin', GLIBC_TUNABLES: 'glibc.pthread.rseq=0' })).toBe('default');
    expect(mallocTuning({ ...MALLOC_TUNING_ENV })).toBe('tuned');
    expect(mallocTuning({ ...MALLOC_TUNING_ENV, GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' })).toBe('tuned');
    // Any one parameter that decides trimming is the caller's choice, one of ours alone too.
    expect(mallocTuning({ MALLOC_TOP_PAD_: '0' })).toBe('caller');
    expect(mallocTuning({ MALLOC_MMAP_MAX_: '0' })).toBe('caller');
    expect(mallocTuning({ MALLOC_MMAP_THRESHOLD_: MALLOC_TUNING_ENV.MALLOC_MMAP_THRESHOLD_ })).toBe('caller');
    expect(mallocTuning({ ...MALLOC_TUNING_ENV, MALLOC_TRIM_THRESHOLD_: '131072' })).toBe('caller');
    expect(mallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=1048576' })).toBe('caller');
    expect(mallocTuning({ GLIBC_TUNABLES: 'glibc.pthread.rseq=0:glibc.malloc.mmap_threshold=65536' })).toBe('caller');
    // A tunable whose name merely ends like one of them is not it.
    expect(mallocTuning({ GLIBC_TUNABLES: 'glibc.malloc.xtop_pad=1' })).toBe('default');
  });

  it('withMallocTuning() adds the settings to a copy, and leaves a caller’s own alone', () => {
    const env = { PATH: '/bin' };
    const tuned = withMallocTuning(env);
    expect(tuned).toEqual({ PATH: '/bin', ...MALLOC_TUNING_ENV });
    expect(env).toEqual({ PATH: '/bin' });
    expect(mallocTuning(tuned)).toBe('tuned');
    const own = { PATH: '/bin', MALLOC_TRIM_THRESHOLD_: '0' };
    const kept = withMallocTuning(own);
    expect(kept).toEqual(own);
    expect(kept).not.toBe(own);
    const tunables = { GLIBC_TUNABLES: 'glibc.malloc.top_pad=0' };
    expect(withMallocTuning(tunables)).toEqual(tunables);
  });
});

describe.runIf(glibc)('a process’s own settings', () => {
  it('are those it started with, whatever process.env says later', () => {
    const code = `import { mallocTuning } from '${DIST}';
      const before = mallocTuning();
      Object.assign(process.env, { MALLOC_TOP_PAD_: '0' });
      for (const k of ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_']) delete process.env[k];
      console.log(before, mallocTuning());`;
    expect(nodeChild(code, withMallocTuning(cleanEnv()))).toBe('tuned tuned');
    expect(nodeChild(code, cleanEnv())).toBe('default default');
    expect(nodeChild(code, { ...cleanEnv(), MALLOC_TRIM_THRESHOLD_: '131072' })).toBe('caller caller');
  });
});

describe.runIf(mallopt)('tuneMalloc()', () => {
  it('gives a running process the settings, unless it started with its own', () => {
    const code = `import { mallocTuning, tuneMalloc } from '${DIST}';
      const before = mallocTuning();
      console.log(before, tuneMalloc(), mallocTuning(), tuneMalloc());`;
    expect(nodeChild(code, cleanEnv())).toBe('default true tuned true');
    expect(nodeChild(code, withMallocTuning(cleanEnv()))).toBe('tuned true tuned true');
    expect(nodeChild(code, { ...cleanEnv(), MALLOC_TOP_PAD_: '0' })).toBe('caller false caller false');
  });
});

describe.runIf(glibc)('vfio-mig --version', () => {
  it('names how the command’s process was started', () => {
    const version = (env: Record<string, string | undefined>) =>
      /malloc (\S+)\)$/.exec(execFileSync(process.execPath, [join(ROOT, 'bin', 'vfio-mig.js'), '--version'], { env, encoding: 'utf8' }).trim())?.[1];
    expect(version(cleanEnv())).toBe('default');
    expect(version(withMallocTuning(cleanEnv()))).toBe('tuned');
    expect(version({ ...cleanEnv(), GLIBC_TUNABLES: 'glibc.malloc.top_pad=0' })).toBe('caller');
  });
});

describe.runIf(glibc)('what the settings are for', () => {
  it('a 256 MiB pipe read into fresh chunks faults in fewer pages with them', () => {
    // A child reads stdin (a pipe) through createFdSource, its sink dropping each chunk, and
    // counts the minor faults of the read alone. Measured: 17-23 thousand with glibc's defaults,
    // 8.8-9.7 thousand with the settings (the heap's growth to its steady size).
    const code = `import { Writable } from 'node:stream';
      import { pipeline } from 'node:stream/promises';
      import { createFdSource, tuneMalloc } from '${DIST}';
      if (process.argv.includes('tune') && !tuneMalloc()) throw new Error('tuneMalloc() failed');
      const f0 = process.resourceUsage().minorPageFault;
      const src = createFdSource(0);
      await pipeline(src, new Writable({ highWaterMark: 1 << 20, write: (_c, _e, cb) => cb() }));
      console.log(src.bytesRead, process.resourceUsage().minorPageFault - f0);`;
    const data = Buffer.alloc(256 << 20, 0x5a);
    const faults = (env: Record<string, string | undefined>, args: string[] = []) => {
      const [bytes, n] = nodeChild(code, env, data, args).split(' ').map(Number);
      expect(bytes).toBe(data.length);
      return n;
    };
    const plain = faults(cleanEnv());
    const tuned = faults(withMallocTuning(cleanEnv()));
    expect(tuned).toBeLessThan(0.75 * plain);
    // The same settings given at run time, before the read (1 GiB by hand: 23-29 thousand faults
    // against 9.0-9.3 thousand).
    if (mallopt) expect(faults(cleanEnv(), ['tune'])).toBeLessThan(0.75 * plain);
  }, 60_000);
});
