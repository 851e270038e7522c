// Pipe capacities (src/streams/fd-tuning.ts): FdSource and FdSink ask for 1 MiB on a pipe or FIFO.
// Real FIFOs; the expected sizes come from the kernel, read back through the same addon.
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { createFdSource } from '../../src/streams/fd-source.js';
import { createFdSink } from '../../src/streams/fd-sink.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { createResumingStream } from '../../src/streams/resuming-stream.js';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';
import { fdTuningAddon, pipeCapacity, PIPE_CAPACITY } from '../../src/streams/fd-tuning.js';
import { mkfifo, openFifoReader, tempDir } from './fd-fixtures.js';

const dir = tempDir('vfio-mig-tuning-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const hasCompiler = spawnSync(process.env.CC || 'cc', ['--version']).status === 0;
const maxSize = Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));

/** A FIFO opened at both ends (read end non-blocking first, so neither open waits). */
function fifoPair(name: string): { r: number; w: number } {
  const p = mkfifo(dir, name);
  const r = openFifoReader(p);
  const w = fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  return { r, w };
}

describe('pipe capacities', () => {
  it('the addon is built wherever a C compiler was at install time', () => {
    expect(fdTuningAddon() !== null).toBe(hasCompiler);
  });

  it('FdSource and FdSink ask for 1 MiB on the FIFO they serve; the other end sees it too', async () => {
    const a = fifoPair('src');
    const source = createFdSource(a.r);
    const want = fdTuningAddon() === null ? null : Math.min(PIPE_CAPACITY, maxSize) >= PIPE_CAPACITY ? PIPE_CAPACITY : 65536;
    expect(pipeCapacity(a.w)).toBe(want);
    source.destroy();
    fs.closeSync(a.w);
    const b = fifoPair('sink');
    const sink = createFdSink(b.w);
    expect(pipeCapacity(b.r)).toBe(want);
    sink.destroy();
    fs.closeSync(b.r);
  });

  it('a saving or resuming stream over a device data fd that is a FIFO (a device host\'s) asks for it too', () => {
    const want = fdTuningAddon() === null ? null : Math.min(PIPE_CAPACITY, maxSize) >= PIPE_CAPACITY ? PIPE_CAPACITY : 65536;
    const base = { id: 1, disabled: false, close: async () => {}, precopyInfo: async () => ({ initialBytes: 0, dirtyBytes: 0 }) };
    const a = fifoPair('saving');
    const saving = createSavingStream({ ...base, direction: 'saving', fd: a.r, read: async () => 0 } as unknown as SavingSession);
    expect(pipeCapacity(a.w)).toBe(want);
    saving.destroy();
    const b = fifoPair('resuming');
    const resuming = createResumingStream({ ...base, direction: 'resuming', fd: b.w, write: async (buf: Buffer) => buf.length } as unknown as ResumingSession);
    expect(pipeCapacity(b.r)).toBe(want);
    resuming.destroy();
    for (const fd of [a.r, a.w, b.r, b.w]) fs.closeSync(fd);
  });

  it('pipeCapacity: 0 keeps the kernel default; a bad value is a usage error; a file is left alone', () => {
    const a = fifoPair('keep');
    const source = createFdSource(a.r, { pipeCapacity: 0 });
    expect(pipeCapacity(a.w)).toBe(fdTuningAddon() === null ? null : 65536);
    source.destroy();
    expect(() => createFdSource(a.w, { pipeCapacity: -1 })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    fs.closeSync(a.w);
    const file = `${dir}/plain`;
    fs.writeFileSync(file, 'x');
    const fd = fs.openSync(file, 'r');
    // Not a pipe: the kernel refuses (EBADF), reported as null.
    expect(pipeCapacity(fd, PIPE_CAPACITY)).toBeNull();
    fs.closeSync(fd);
    expect(pipeCapacity(-1)).toBeNull();
  });
});
