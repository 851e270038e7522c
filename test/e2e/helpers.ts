/**
 * E2E helpers: a fresh build of the command (the destination runs as `node bin/vfio-mig.js receive`
 * in a child process, as a user would run it), children that report their listening URL over IPC,
 * and SimDevice sets.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MigrationCore } from '../../src/fsm/core.js';
import { SimDevice, type SimDeviceOptions } from '../../src/devices/sim-device.js';
import { listenTransport } from '../../src/transport/index.js';
import type { TransportListener } from '../../src/transport/types.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'vfio-mig.js');
export const MiB = 1024 * 1024;

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

/**
 * Compile src to dist unless dist is newer than every source file. Test files run in parallel: a
 * directory lock keeps two builds from writing dist at once.
 */
export async function ensureBuilt(): Promise<void> {
  // Outside the working tree, so a stray lock never shows in git status; one per checkout.
  const lock = join(tmpdir(), `vfio-mig-build-lock-${createHash('sha1').update(ROOT).digest('hex').slice(0, 12)}`);
  const marker = join(ROOT, 'dist', 'cli', 'main.js');
  for (let i = 0; i < 600; i++) {
    if (existsSync(marker) && statSync(marker).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
    try {
      mkdirSync(lock);
    } catch {
      // A lock left by a killed run is stale after a minute (a build takes seconds).
      try {
        if (Date.now() - statSync(lock).mtimeMs > 60_000) rmdirSync(lock);
      } catch {
        // it went away meanwhile
      }
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    try {
      // tsc emits even when files being written by others do not type-check yet; dist is what matters.
      spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { stdio: 'ignore' });
    } finally {
      rmdirSync(lock);
    }
    if (existsSync(marker)) return;
  }
  throw new Error('could not build dist');
}

export interface Cli {
  child: ChildProcess;
  /** Resolves with the URL the child listens on (receive --ipc). */
  url: Promise<string>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; json: Record<string, unknown> | null }>;
}

/** Run the command in a child process. */
export function runCli(args: string[], opts: { ipc?: boolean } = {}): Cli {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe', ...(opts.ipc ? ['ipc' as const] : [])], cwd: ROOT });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; json: Record<string, unknown> | null }>((resolve) =>
    child.on('close', (code, signal) => {
      let json: Record<string, unknown> | null = null;
      try {
        json = JSON.parse(stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>;
      } catch {
        json = null;
      }
      resolve({ code, signal, stdout, stderr, json });
    }),
  );
  const url = new Promise<string>((resolve, reject) => {
    child.on('message', (m: { listening?: string }) => {
      if (typeof m?.listening === 'string') resolve(m.listening);
    });
    void exit.then((r) => reject(new Error(`child exited (${r.code}) before listening: ${r.stderr}`)));
  });
  url.catch(() => {});
  return { child, url, exit };
}

/** A destination child: `vfio-mig receive --listen URL --json --ipc` with SimDevice options. */
export function startReceiver(listen: string, deviceArgs: string[], extra: string[] = []): Cli {
  return runCli(['receive', '--listen', listen, '--json', '--ipc', ...deviceArgs, ...extra], { ipc: true });
}

export interface Sims {
  sims: SimDevice[];
  cores: MigrationCore[];
  /** Arc log of every device, in order: [device, from, to]. */
  arcs: [number, number, number][];
  resets: number[];
  close(): void;
}

export function makeSims(n: number, opts: Partial<SimDeviceOptions> & { size: number }, perDevice?: (i: number) => Partial<SimDeviceOptions>): Sims {
  const sims: SimDevice[] = [];
  const cores: MigrationCore[] = [];
  const arcs: [number, number, number][] = [];
  const resets: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = new SimDevice({ seed: 1 + i, ...opts, ...(perDevice?.(i) ?? {}) });
    const c = new MigrationCore(s);
    c.on('arc', (a) => arcs.push([i, a.from, a.to]));
    c.on('reset', () => resets.push(i));
    sims.push(s);
    cores.push(c);
  }
  return {
    sims,
    cores,
    arcs,
    resets,
    close() {
      for (const c of cores) c.detach();
      for (const s of sims) s.close();
    },
  };
}

/**
 * A source set of `n` SimDevices with `opts` and a destination set with the same options but no
 * workload, and a unix-socket listener in a fresh directory, for `body`; all of it is closed and
 * removed afterwards, whatever `body` did.
 */
export async function withSimPair<T>(
  n: number,
  opts: Partial<SimDeviceOptions> & { size: number },
  body: (src: Sims, dst: Sims, listener: TransportListener) => Promise<T>,
  perDevice?: (i: number) => Partial<SimDeviceOptions>,
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-pair-'));
  const src = makeSims(n, opts, perDevice);
  const dst = makeSims(n, { ...opts, dirtyRate: 0 }, perDevice);
  const listener = await listenTransport(`unix:${join(dir, 'p.sock')}`);
  try {
    return await body(src, dst, listener);
  } finally {
    src.close();
    dst.close();
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** CLI device options matching makeSims(n, { size, seed: 1 + i }). */
export function simArgs(n: number, size: number, extra: string[] = []): string[] {
  return ['--size', String(size), '--devices', String(n), '--seed', '1', ...extra];
}
