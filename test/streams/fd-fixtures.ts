/**
 * Test fixtures for the data-path streams: small method-backed sessions with scripted behaviour,
 * deterministic content, temp dirs and FIFOs, and a transpiled copy of the fd streams for child
 * processes (so a child can own a real anonymous pipe or socket at fd 0).
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { migError, type MigError } from '../../src/fsm/errors.js';
import type { PrecopyInfo, ResumingSession, SavingSession } from '../../src/fsm/types.js';

export const MiB = 1024 * 1024;

/** Deterministic bytes: a 251-byte (prime) period so any shift or reorder shows. */
const PERIOD = 251;
const PATTERN = Buffer.alloc(64 * 1024 + PERIOD);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i % PERIOD) * 7 + 3;

export function fillPattern(buf: Buffer, offset: number, n: number): void {
  let done = 0;
  while (done < n) {
    const start = (offset + done) % PERIOD;
    const k = Math.min(n - done, 64 * 1024);
    PATTERN.copy(buf, done, start, start + k);
    done += k;
  }
}

export function pattern(offset: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  fillPattern(b, offset, n);
  return b;
}

export function sha(...bufs: Buffer[]): string {
  const h = createHash('sha256');
  for (const b of bufs) h.update(b);
  return h.digest('hex');
}

/** An errno error shaped like Node's: ENOMSG has no name in Node, only the number. */
export function errnoError(name: string, errno: number): NodeJS.ErrnoException {
  const e = new Error(`${name} (simulated)`) as NodeJS.ErrnoException;
  e.errno = -errno;
  e.code = name === 'ENOMSG' ? `Unknown system error -${errno}` : name;
  return e;
}

type Phase = 'PRE_COPY' | 'STOP_COPY';

/**
 * A method-backed saving session over pattern bytes. `available` bytes can be read now; in
 * PRE_COPY an empty session answers ENOMSG (or 0 with emptyMode 'zero'); in STOP_COPY 0 is the end.
 */
export class ScriptedSaving implements SavingSession {
  readonly id: number;
  readonly direction = 'saving' as const;
  fd: number | null = null;
  disabled = false;
  closed = false;
  phase: Phase;
  emptyMode: 'enomsg' | 'zero';
  /** Bytes produced so far (the offset of the next byte). */
  offset = 0;
  available: number;
  maxRead: number;
  reads = 0;
  /** Errors thrown by the next reads, in order. */
  faults: Error[] = [];
  /** Called when a read finds nothing (to script progress). */
  onEmpty: (() => void) | null = null;
  #pending: Array<() => void> = [];
  /** Hold reads until release() (to test pending reads). */
  hold = false;

  constructor(opts: { available: number; phase?: Phase; emptyMode?: 'enomsg' | 'zero'; maxRead?: number; id?: number }) {
    this.id = opts.id ?? 1;
    this.available = opts.available;
    this.phase = opts.phase ?? 'STOP_COPY';
    this.emptyMode = opts.emptyMode ?? 'enomsg';
    this.maxRead = opts.maxRead ?? Infinity;
  }

  add(n: number): void {
    this.available += n;
  }

  release(): void {
    this.hold = false;
    for (const r of this.#pending.splice(0)) r();
  }

  async read(buf: Buffer): Promise<number> {
    this.reads++;
    if (this.hold) await new Promise<void>((r) => this.#pending.push(r));
    await Promise.resolve();
    if (this.disabled) throw errnoError('ENODEV', 19);
    const fault = this.faults.shift();
    if (fault) throw fault;
    if (this.available === 0) {
      this.onEmpty?.();
      if (this.available === 0) {
        if (this.phase === 'PRE_COPY' && this.emptyMode === 'enomsg') throw errnoError('ENOMSG', 42);
        return 0;
      }
    }
    const n = Math.min(buf.length, this.available, this.maxRead);
    fillPattern(buf, this.offset, n);
    this.offset += n;
    this.available -= n;
    return n;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    await Promise.resolve();
    if (this.disabled) throw errnoError('ENODEV', 19);
    if (this.phase !== 'PRE_COPY') throw migError('EINVAL', 'not in PRE_COPY');
    return { initialBytes: 0, dirtyBytes: this.available, reinit: false };
  }

  disable(): void {
    this.disabled = true;
  }

  close(): void {
    this.closed = true;
  }
}

/** A method-backed resuming session that accepts at most `maxWrite` bytes per call and hashes them. */
export class ScriptedResuming implements ResumingSession {
  readonly id = 2;
  readonly direction = 'resuming' as const;
  fd: number | null = null;
  disabled = false;
  closed = false;
  bytes = 0;
  writes = 0;
  faults: Array<Error | 0> = [];
  maxWrite: number;
  #hash = createHash('sha256');
  /** Delay per write in ms (a slow device). */
  delayMs = 0;

  constructor(opts: { maxWrite?: number } = {}) {
    this.maxWrite = opts.maxWrite ?? Infinity;
  }

  async write(buf: Buffer): Promise<number> {
    this.writes++;
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    else await Promise.resolve();
    if (this.disabled) throw errnoError('ENODEV', 19);
    const fault = this.faults.shift();
    if (fault === 0) return 0;
    if (fault) throw fault;
    const n = Math.min(buf.length, this.maxWrite);
    this.#hash.update(buf.subarray(0, n));
    this.bytes += n;
    return n;
  }

  digest(): string {
    return this.#hash.copy().digest('hex');
  }

  disable(): void {
    this.disabled = true;
  }

  close(): void {
    this.closed = true;
  }
}

export function tempDir(prefix = 'vfio-mig-fd-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function mkfifo(dir: string, name = 'fifo'): string {
  const p = path.join(dir, name);
  execFileSync('mkfifo', [p]);
  return p;
}

/** Open a FIFO's read end without blocking for a writer. */
export function openFifoReader(p: string): number {
  return fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
}

export function isNonBlocking(fd: number): boolean {
  const flags = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s+(\d+)/);
  return flags !== null && (parseInt(flags[1]!, 8) & fs.constants.O_NONBLOCK) !== 0;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const srcRoot = path.resolve(here, '../../src');
const CHILD_MODULES = [
  'fsm/errors.ts',
  'fsm/states.ts',
  'streams/retry.ts',
  'streams/fd-kind.ts',
  'streams/read-target.ts',
  'streams/fd-tuning.ts',
  'streams/chunk-loans.ts',
  'streams/chunk-source.ts',
  'streams/chunk-sink.ts',
  'streams/fd-source.ts',
  'streams/fd-sink.ts',
];

/**
 * Transpile the fd streams to plain ESM in `dir` (TypeScript's own transpiler, no type check), so a
 * child `node` process can import `<dir>/streams/fd-source.js` without a build step.
 */
export function transpileFdStreams(dir: string): string {
  for (const rel of CHILD_MODULES) {
    const src = fs.readFileSync(path.join(srcRoot, rel), 'utf8');
    const out = ts.transpileModule(src, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    });
    const dest = path.join(dir, rel.replace(/\.ts$/, '.js'));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.writeFileSync(dest, out.outputText);
  }
  fs.writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}');
  return dir;
}

/** How a Writable ends: the events 'finish', 'error', 'close' in the order seen, and the error. */
export function writableOutcome(s: Writable): Promise<{ events: string[]; error: MigError | null }> {
  const events: string[] = [];
  let error: MigError | null = null;
  return new Promise((resolve) => {
    s.on('finish', () => events.push('finish'));
    s.on('error', (e: MigError) => {
      error = e;
      events.push('error');
    });
    s.on('close', () => {
      events.push('close');
      resolve({ events, error });
    });
  });
}
