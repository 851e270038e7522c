/**
 * glibc's allocator and the memory a Readable hands out.
 *
 * A stream whose consumer may keep its chunks (FdSource, SavingStream without `recycle`) reads
 * every chunk into fresh memory, and Node takes each Buffer's memory from glibc's malloc. Freed
 * chunks go back to malloc's heap, but by default glibc gives the free memory at the top of its
 * heap back to the kernel once more than the trim threshold lies there (adjusted at run time to
 * twice the largest chunk freed: ~2 MiB for 1 MiB chunks), and the garbage collector frees chunks
 * by the dozen. The next reads map and fault those pages in again, one fault per 4 KiB, and on a
 * paravirtual VM both are dear: a 256 MiB pipe read through createFdSource into a sink that drops
 * its chunks faulted 17-23 thousand pages in (8.8-9.7 thousand with the settings below, the heap's
 * growth to its steady size), four 1 GiB reads made ~1000 brk and madvise calls (~200), and bench
 * fd-read read a pipe at 1150-1440 MB/s against 2260-2520 (docs/PERFORMANCE.md, fd-read).
 *
 * Setting the trim threshold turns off glibc's run-time adjustment of the mmap threshold too (the
 * size from which an allocation gets a mapping of its own, fresh pages each time, 128 KiB by
 * default), so both are set: allocations up to 4 MiB (chunks of up to 1 MiB, the compression
 * pool's frames) come from the heap, and up to 64 MiB of freed memory stays mapped for reuse.
 * What the process keeps is bounded by its own peak, which the data path bounds.
 *
 * glibc reads these variables once, when the process starts: they take effect in a process
 * started with them (set them in the environment Node starts with, or pass `withMallocTuning()`
 * to the processes you spawn). A running process can set the same two parameters with
 * `tuneMalloc()` (glibc's mallopt(3), through the optional native addon of fd-tuning.ts). musl and
 * other C libraries ignore them.
 *
 * A recommendation for processes that read streams into chunks they keep, not a default: the
 * orchestrator's paths give their chunks back (`recycle`, read targets) and do not change with
 * them (e2e-unix, zstd, the switchover's downtime), so the `vfio-mig` command does not set them
 * (docs/PERFORMANCE.md, fd-read).
 */
import fs from 'node:fs';
import { fdTuningAddon } from './fd-tuning.js';

/** The two settings, bytes: what the environment variables and tuneMalloc() both give glibc. */
const MMAP_THRESHOLD = 4 * 1024 * 1024;
const TRIM_THRESHOLD = 64 * 1024 * 1024;

/** The allocator settings vfio-mig recommends, as environment variables (values in bytes). */
export const MALLOC_TUNING_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_MMAP_THRESHOLD_: String(MMAP_THRESHOLD),
  MALLOC_TRIM_THRESHOLD_: String(TRIM_THRESHOLD),
});

/**
 * - `tuned`: started with MALLOC_TUNING_ENV's values, or set to them by `tuneMalloc()`;
 * - `caller`: started with glibc allocator settings of its own (MALLOC_*_ variables or
 *   GLIBC_TUNABLES' glibc.malloc.* of the parameters that decide trimming), left as they are;
 * - `default`: glibc's defaults;
 * - `not-glibc`: the C library is not glibc, the variables mean nothing to it.
 */
export type MallocTuning = 'tuned' | 'caller' | 'default' | 'not-glibc';

/** The variables of glibc parameters that decide when freed memory goes back to the kernel. */
const MALLOC_VARS = ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_MMAP_MAX_'];
const TUNABLES = /(^|:)glibc\.malloc\.(mmap_threshold|trim_threshold|top_pad|mmap_max)=/;

type Env = Readonly<Record<string, string | undefined>>;

function setsMalloc(env: Env): boolean {
  return MALLOC_VARS.some((k) => env[k] !== undefined) || TUNABLES.test(env.GLIBC_TUNABLES ?? '');
}

/**
 * The environment this process started with (/proc/self/environ): what glibc read, whatever
 * `process.env` became since. `process.env` where /proc is not mounted.
 */
function startEnv(): Env {
  let raw: string;
  try {
    raw = fs.readFileSync('/proc/self/environ', 'latin1');
  } catch {
    return process.env;
  }
  const env: Record<string, string> = {};
  for (const entry of raw.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

let glibc: boolean | undefined;

/** Whether this process runs on glibc (Node's report names its version only there). */
function onGlibc(): boolean {
  if (glibc === undefined) {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
    glibc = typeof header?.glibcVersionRuntime === 'string';
  }
  return glibc;
}

/** Set by tuneMalloc() once glibc took both parameters. */
let tunedAtRunTime = false;

/** mallopt(3) parameter numbers (malloc.h). */
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;

/**
 * How the allocator of a process started with `env` is set; without `env`, this process's: from
 * the environment it started with, or `tuned` after tuneMalloc().
 */
export function mallocTuning(env?: Env): MallocTuning {
  if (env === undefined) {
    if (!onGlibc()) return 'not-glibc';
    if (tunedAtRunTime) return 'tuned';
    env = startEnv();
  }
  const ours = Object.entries(MALLOC_TUNING_ENV).every(([k, v]) => env[k] === v);
  if (ours) return 'tuned';
  return setsMalloc(env) ? 'caller' : 'default';
}

/**
 * `env` (default `process.env`) with MALLOC_TUNING_ENV added, for a Node process to spawn; a copy
 * either way. An environment that sets glibc's allocator parameters itself is left as it is: the
 * caller's settings are the caller's.
 */
export function withMallocTuning(env: Env = process.env): Record<string, string | undefined> {
  return setsMalloc(env) ? { ...env } : { ...env, ...MALLOC_TUNING_ENV };
}

/**
 * Give this process MALLOC_TUNING_ENV's settings now, through glibc's mallopt(3): what starting
 * it with them does, for a program that cannot choose its environment. True when the process has
 * them (already from its start, or now); false when it cannot (not glibc, no native addon: no C
 * compiler at install time) or must not (it started with allocator settings of its own, which are
 * the caller's). Memory glibc gave back to the kernel before the call stays given back; later
 * frees follow the settings.
 */
export function tuneMalloc(): boolean {
  const now = mallocTuning();
  if (now === 'tuned') return true;
  if (now !== 'default') return false;
  const mallopt = fdTuningAddon()?.mallopt;
  if (mallopt === undefined) return false;
  // The mmap threshold first: setting either one ends glibc's run-time adjustment of both.
  if (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) !== 1) return false;
  if (mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) !== 1) return false;
  tunedAtRunTime = true;
  return true;
}
