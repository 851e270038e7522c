/**
 * Helpers for the FUSE data-fd tests: whether FUSE works here, async fd reads and writes with
 * position null (a sync read of a file this process serves would block the thread that answers it),
 * and a perl child for what Node cannot do on a file fd (poll/select, a read interrupted by a signal).
 */
import { spawn } from 'node:child_process';
import { read as fsRead, write as fsWrite } from 'node:fs';
import { fuseAvailability } from '../../src/devices/fuse-bridge.js';

export const FUSE = fuseAvailability();

/** Print once per file how many tests a missing FUSE skips (vitest shows skipped tests only as a count). */
export function reportSkip(file: string, count: number): void {
  if (!FUSE.ok) console.log(`[${file}] skipping ${count} FUSE test(s): ${FUSE.reason}`);
}

export function readFd(fd: number, buf: Buffer): Promise<number> {
  return new Promise((res, rej) => fsRead(fd, buf, 0, buf.length, null, (e, n) => (e ? rej(e) : res(n))));
}

export function writeFd(fd: number, buf: Buffer): Promise<number> {
  return new Promise((res, rej) => fsWrite(fd, buf, 0, buf.length, null, (e, n) => (e ? rej(e) : res(n))));
}

/** Write all of `buf`, looping on short writes as a VMM does. */
export async function writeAllFd(fd: number, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) off += await writeFd(fd, buf.subarray(off));
}

/** The outcome of one read: a byte count or the error's errno (negative), recognised by number. */
export async function readOutcome(fd: number, buf: Buffer): Promise<number> {
  try {
    return await readFd(fd, buf);
  } catch (err) {
    const e = err as { errno?: number };
    if (typeof e.errno === 'number') return -Math.abs(e.errno);
    throw err;
  }
}

/** Run a perl one-liner (perl-base is on every Debian) and resolve its stdout and exit status. */
export function perl(script: string, args: string[]): { done: Promise<{ out: string; code: number | null }>; running: () => boolean } {
  const child = spawn('perl', ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let exited = false;
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (s: string) => (out += s));
  const done = new Promise<{ out: string; code: number | null }>((res, rej) => {
    child.once('error', rej);
    child.once('close', (code) => {
      exited = true;
      res({ out: out.trim(), code });
    });
  });
  return { done, running: () => !exited };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}
