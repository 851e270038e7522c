// Shared helpers for the benchmarks: timing, medians, baselines run as child processes, result rows.
// Every benchmark file exports `default async function run({ quick }) => Result[]`, where a Result is
// { name, value, unit, baseline, baselineValue, ratio, detail? }; ratio = value / baselineValue
// (throughput: higher is better). Benchmarks import the built package from ../dist/index.js.
import { spawn } from 'node:child_process';
import os from 'node:os';

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

export function machine() {
  const cpus = os.cpus();
  return {
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / GiB),
  };
}
