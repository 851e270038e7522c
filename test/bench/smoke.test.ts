/**
 * `npm run bench -- --quick` as CI's smoke test: every benchmark runs to the end on this machine and
 * prints the documented JSON document. No thresholds: the machine is shared and noisy, and numbers
 * belong in docs/PERFORMANCE.md, not in assertions.
 */
import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('../..', import.meta.url));

interface Row {
  name: string;
  value: number;
  unit: string;
  baseline: string;
  baselineValue: number;
  ratio: number;
}

function runBench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'bench/run.mjs'), ...args], { cwd: root, maxBuffer: 64 << 20, timeout: 400_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('bench smoke (--quick --json)', () => {
  it('runs every benchmark and prints { machine, results } with the documented names', async () => {
    const { code, stdout, stderr } = await runBench(['--quick', '--json']);
    expect(stderr, stderr).not.toMatch(/bench \S+ failed/);
    // The runner's own failure (an import, its options) is a stack on stderr: show it.
    expect(code, stderr).toBe(0);
    const doc = JSON.parse(stdout) as { machine: Record<string, unknown>; results: Row[] };
    expect(doc.machine).toMatchObject({ node: process.version, cores: expect.any(Number) });
    const names = new Set(doc.results.map((r) => r.name));
    for (const n of ['fd-read', 'fd-write', 'e2e-unix', 'e2e-unix-naive', 'zstd-compress-L1-mixed', 'zstd-decompress-L1-mixed', 'zstd-compress-L1-random', 'rss-source-1GiB', 'rss-destination-1GiB', 'prediction-error-max', 'fsm-next-hop', 'crc32-1MiB', 'transport-16KiB-records', 'receive-fd-1MiB-records', 'restore-file-1MiB-records', 'stop-copy-split-650KB']) {
      expect(names, n).toContain(n);
    }
    for (const r of doc.results) {
      expect(typeof r.name).toBe('string');
      expect(Number.isFinite(r.value), `${r.name} value ${r.value}`).toBe(true);
      expect(typeof r.unit).toBe('string');
      expect(typeof r.baseline).toBe('string');
      expect(typeof r.baselineValue).toBe('number');
      expect(typeof r.ratio).toBe('number');
    }
  }, 420_000);

  it('--only NAME runs the one file that produces NAME', async () => {
    const { code, stdout, stderr } = await runBench(['--quick', '--json', '--only', 'fsm-next-hop']);
    expect(code, stderr).toBe(0);
    const doc = JSON.parse(stdout) as { results: Row[] };
    expect(doc.results.map((r) => r.name)).toEqual(['fsm-next-hop']);
    const bad = await runBench(['--only', 'no-such-bench']);
    expect(bad.code).toBe(64);
  }, 120_000);
});
