// Shared helpers for the benchmarks: timing, medians, baselines run as child processes, result rows.
// Every benchmark file exports `default async function run({ quick }) => Result[]`, where a Result is
// { name, value, unit, baseline, baselineValue, ratio, detail? }; ratio = value / baselineValue
// (throughput: higher is better). Benchmarks import the built package from ../dist/index.js.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mallocTuning } from '../dist/index.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export function median(values) {
  const v = [...values].sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Run `fn` `runs` times and return the median of what it returns (a number). */
export async function medianOf(runs, fn) {
  const values = [];
  for (let i = 0; i < runs; i++) values.push(await fn(i));
  return median(values);
}

/** MB/s (decimal) for `bytes` moved in `ms`. */
export function mbps(bytes, ms) {
  return bytes / 1e6 / (ms / 1000);
}

/**
 * Run a shell pipeline under GNU time and resolve { ms, maxRssKB, stdout, stderr, code }.
 * maxRssKB is the largest RSS among the processes GNU time waited for (the shell's children).
 */
export function runShell(command, { env } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn('/usr/bin/time', ['-f', '__MAXRSS__%M', 'bash', '-c', command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const m = /__MAXRSS__(\d+)/.exec(stderr);
      resolve({ ms, maxRssKB: m ? Number(m[1]) : NaN, stdout, stderr: stderr.replace(/__MAXRSS__\d+\n?/, ''), code });
    });
  });
}

/** A result row with the ratio computed. */
export function result(name, value, unit, baseline, baselineValue, detail) {
  const ratio = baselineValue > 0 && Number.isFinite(value) ? value / baselineValue : NaN;
  return { name, value, unit, baseline, baselineValue, ratio, ...(detail ? { detail } : {}) };
}

/**
 * An A/B throughput row: `ours(bytes)` and `baseline(bytes)` each move `bytes` and resolve the ms it
 * took. One untimed round of each first on `warmBytes` (module code warm, as in a long-lived
 * process), then `runs` alternating timed rounds; the row is the medians in MB/s, every run in its
 * detail.
 */
export async function alternatingRow(name, baselineName, { bytes, warmBytes, runs, detail = {} }, ours, baseline) {
  await ours(warmBytes);
  await baseline(warmBytes);
  const a = [];
  const b = [];
  for (let i = 0; i < runs; i++) {
    a.push(mbps(bytes, await ours(bytes)));
    b.push(mbps(bytes, await baseline(bytes)));
  }
  return result(name, median(a), 'MB/s', baselineName, median(b), {
    runs,
    bytes,
    ...detail,
    allMBps: a.map((v) => Math.round(v)),
    baselineAllMBps: b.map((v) => Math.round(v)),
  });
}

/**
 * Run `dd` with `args` (stdin `stdin`: 'ignore' or an fd to read) and resolve { ms, bytes }: the time
 * from spawn to exit and the byte count dd reports on stderr. Rejects when dd fails.
 */
export async function runDd(args, stdin = 'ignore') {
  const t0 = performance.now();
  const child = spawn('dd', args, { stdio: [stdin, 'ignore', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s) => (err += s));
  const code = await new Promise((res, rej) => {
    child.once('error', rej);
    child.once('close', res);
  });
  const ms = performance.now() - t0;
  if (code !== 0) throw new Error(`dd exited ${code}: ${err.trim()}`);
  const m = /^(\d+) bytes/m.exec(err);
  return { ms, bytes: m ? Number(m[1]) : NaN };
}

/**
 * The FIFO benches (fd-read, fd-write): `variants` (name -> (fifo, count) => { ms, bytes }) and the
 * `dd` baseline (`ddScript(fifo, count)`: a shell line moving `count` MiB through the FIFO) each move
 * 2 GiB (256 MiB quick) of zeros through one FIFO in a temporary directory. One untimed warm-up run
 * of each variant on 64 MiB, then `runs` interleaved rounds; rows are medians in MB/s against dd's.
 */
export async function fifoRows({ quick, log, variants, ddScript, ddName, what }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-mig-bench-'));
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const size = quick ? 256 * MiB : 2 * GiB;
  const count = size / MiB;
  const runs = quick ? 3 : 5;
  const samples = { dd: [] };
  for (const name of Object.keys(variants)) samples[name] = [];
  const dd = async () => {
    const t0 = performance.now();
    const child = spawn('sh', ['-c', ddScript(fifo, count)], { stdio: 'ignore' });
    const code = await new Promise((res, rej) => {
      child.once('error', rej);
      child.once('close', res);
    });
    if (code !== 0) throw new Error(`dd baseline exited ${code}`);
    return { ms: performance.now() - t0, bytes: count * MiB };
  };
  try {
    // Warm-up (untimed): JIT, the pipe's pages, the allocator's first mappings.
    for (const fn of Object.values(variants)) await fn(fifo, 64);
    for (let i = 0; i < runs; i++) {
      samples.dd.push(await dd());
      for (const [name, fn] of Object.entries(variants)) samples[name].push(await fn(fifo, count));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const rate = (list) => median(list.map((s) => mbps(s.bytes, s.ms)));
  const ddRate = rate(samples.dd);
  const rssMB = Math.round(process.resourceUsage().maxRSS / 1024);
  log(`${count} MiB of zeros ${what}, ${runs} runs each, medians; maxRSS of this process ${rssMB} MB`);
  return Object.keys(variants).map((name) =>
    result(name, rate(samples[name]), 'MB/s', ddName, ddRate, {
      bytes: size,
      runs,
      ms: samples[name].map((s) => Math.round(s.ms)),
      ddMs: samples.dd.map((s) => Math.round(s.ms)),
      maxRssMB: rssMB,
    }),
  );
}

export function machine() {
  const cpus = os.cpus();
  return {
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / GiB),
    malloc: mallocTuning(),
  };
}
