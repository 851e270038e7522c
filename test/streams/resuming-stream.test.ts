import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { getEventListeners } from 'node:events';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pump from 'pump';
import { createResumingStream } from '../../src/streams/resuming-stream.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { ErrorCodes, MigError } from '../../src/fsm/errors.js';
import type { ResumingSession } from '../../src/fsm/types.js';
import { MiB, ScriptedResuming, ScriptedSaving, errnoError, mkfifo, pattern, sha, tempDir, writableOutcome } from './fd-fixtures.js';

const dir = tempDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function* chunksOf(buf: Buffer, size: number): Generator<Buffer> {
  for (let off = 0; off < buf.length; off += size) yield buf.subarray(off, Math.min(buf.length, off + size));
}

describe('ResumingStream over a method-backed session', () => {
  it('loops over partial writes: every byte arrives once, in order', async () => {
    const data = pattern(0, 3 * MiB + 5);
    const session = new ScriptedResuming({ maxWrite: 77_777 });
    const s = createResumingStream(session);
    expect(s.path).toBe('method');
    expect(s.writableHighWaterMark).toBe(MiB);
    await pipeline(Readable.from(chunksOf(data, 1_000_003)), s);
    expect(session.bytes).toBe(data.length);
    expect(s.bytesWritten).toBe(data.length);
    expect(session.digest()).toBe(sha(data));
    expect(session.writes).toBeGreaterThan(data.length / 77_777);
  });

  it('retries EAGAIN and 0-byte writes with backoff', async () => {
    const data = pattern(0, 200_000);
    const session = new ScriptedResuming({ maxWrite: 50_000 });
    session.faults.push(errnoError('EAGAIN', 11), 0, 0, errnoError('EAGAIN', 11));
    await pipeline(Readable.from(chunksOf(data, 64 * 1024)), createResumingStream(session, { backoffMin: 1, backoffMax: 4 }));
    expect(session.digest()).toBe(sha(data));
  });

  it('a device error (EINVAL) is typed with its cause; nothing after it reaches the device', async () => {
    const session = new ScriptedResuming();
    const cause = errnoError('EINVAL', 22);
    const s = createResumingStream(session);
    const done = writableOutcome(s);
    s.write(pattern(0, 1000));
    await new Promise((r) => setTimeout(r, 5));
    session.faults.push(cause);
    s.write(pattern(1000, 1000));
    s.write(pattern(2000, 1000));
    const { events, error } = await done;
    expect(events).toEqual(['error', 'close']);
    expect(error).toBeInstanceOf(MigError);
    expect(error!.code).toBe('EINVAL');
    expect(error!.errno).toBe(22);
    expect(error!.cause).toBe(cause);
    expect(session.bytes).toBe(1000);
  });

  it('a session disabled mid-stream gives ENODEV', async () => {
    const session = new ScriptedResuming({ maxWrite: 64 * 1024 });
    session.delayMs = 1;
    const s = createResumingStream(session);
    const done = writableOutcome(s);
    const src = Readable.from(chunksOf(pattern(0, 8 * MiB), 256 * 1024));
    src.pipe(s);
    setTimeout(() => session.disable(), 20);
    const { events, error } = await done;
    src.destroy();
    expect(events).toEqual(['error', 'close']);
    expect(error!.code).toBe('ENODEV');
    expect(session.bytes).toBeLessThan(8 * MiB);
  });

  it('carries a saving stream into a resuming stream with pipeline and pump', async () => {
    const size = 4 * MiB + 3;
    const a = new ScriptedResuming({ maxWrite: 300_000 });
    await pipeline(createSavingStream(new ScriptedSaving({ available: size, maxRead: 123_456 })), createResumingStream(a));
    expect(a.digest()).toBe(sha(pattern(0, size)));
    const b = new ScriptedResuming();
    await new Promise<void>((resolve, reject) =>
      pump(createSavingStream(new ScriptedSaving({ available: size })), createResumingStream(b), (err) => (err ? reject(err) : resolve())),
    );
    expect(b.digest()).toBe(sha(pattern(0, size)));
  });

  it('an AbortSignal destroys the stream with VFIO_MIG_ERR_ABORTED mid-write, or at once when it had fired before; a finished stream leaves no listener on it', async () => {
    // Mid-write: a slow device, aborted while a write is out; nothing after it is written.
    const slow = new ScriptedResuming();
    slow.delayMs = 20;
    const ac = new AbortController();
    const s = createResumingStream(slow, { signal: ac.signal });
    const done = writableOutcome(s);
    s.write(pattern(0, 1000));
    s.write(pattern(1, 1000));
    setTimeout(() => ac.abort(new Error('operator')), 5);
    const { error } = await done;
    expect(error?.code).toBe(ErrorCodes.ABORTED);
    expect((error?.cause as Error).message).toBe('operator');
    expect(slow.writes).toBe(1);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    // Already aborted: destroyed before anything is written.
    const early = new ScriptedResuming();
    const late = createResumingStream(early, { signal: AbortSignal.abort() });
    const r = await writableOutcome(late);
    expect(r.error?.code).toBe(ErrorCodes.ABORTED);
    expect(early.writes).toBe(0);
    // Finished normally: the listener is gone with the stream.
    const ac2 = new AbortController();
    await pipeline(Readable.from([pattern(2, 5000)]), createResumingStream(new ScriptedResuming(), { signal: ac2.signal }));
    expect(getEventListeners(ac2.signal, 'abort')).toHaveLength(0);
  });

  it('autoClose closes the session when the stream closes', async () => {
    const session = new ScriptedResuming();
    const s = createResumingStream(session, { autoClose: true });
    await pipeline(Readable.from([Buffer.from('abc')]), s);
    await new Promise((r) => setImmediate(r));
    expect(session.closed).toBe(true);
  });
});

/** An fd-backed resuming session over a FIFO's write end; write() must never be called. */
function fifoSession(fd: number): ResumingSession & { disabled: boolean } {
  return {
    id: 9,
    direction: 'resuming',
    fd,
    disabled: false,
    write: () => Promise.reject(new Error('method write used on an fd-backed session')),
    disable() {
      this.disabled = true;
    },
    close: () => fs.closeSync(fd),
  };
}

describe('ResumingStream over an fd-backed session (FIFO to a device host child)', () => {
  it('writes through the fd (epoll, private reopen), never through write(), and leaves the fd to the session', async () => {
    const fifo = mkfifo(dir, 'resume');
    const child = spawn('sh', ['-c', `sha256sum < "${fifo}"`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const fd = fs.openSync(fifo, 'w');
    const session = fifoSession(fd);
    const s = createResumingStream(session);
    expect(s.path).toBe('epoll');
    const data = pattern(0, 3 * MiB + 1);
    await pipeline(Readable.from(chunksOf(data, 500_000)), s);
    expect(() => fs.fstatSync(fd)).not.toThrow();
    session.close(); // the session's close releases the fd: the host sees EOF
    await new Promise((r) => child.on('close', r));
    expect(out.split(' ')[0]).toBe(sha(data));
    fs.unlinkSync(fifo);
  });

  it('the host closing its end of a disabled session gives ENODEV (not EPIPE)', async () => {
    const fifo = mkfifo(dir, 'resume-reset');
    const child = spawn('sh', ['-c', `head -c 100000 "${fifo}" > /dev/null`], { stdio: 'ignore' });
    const fd = fs.openSync(fifo, 'w');
    const session = fifoSession(fd);
    const s = createResumingStream(session);
    const done = writableOutcome(s);
    child.on('exit', () => session.disable()); // the host disabled the session and closed the FIFO
    const src = Readable.from(chunksOf(pattern(0, 64 * MiB), MiB));
    src.pipe(s);
    const { events, error } = await done;
    src.destroy();
    expect(events).toEqual(['error', 'close']);
    expect(error!.code).toBe('ENODEV');
    expect((error!.cause as NodeJS.ErrnoException).code).toBe('EPIPE');
    session.close();
    fs.unlinkSync(fifo);
  });
});
