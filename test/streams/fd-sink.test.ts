import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createFdSink } from '../../src/streams/fd-sink.js';
import { MigError } from '../../src/fsm/errors.js';
import { MiB, isNonBlocking, mkfifo, pattern, sha, tempDir, transpileFdStreams, writableOutcome } from './fd-fixtures.js';

let dir: string;
let data: Buffer;
let writerScript: string;

beforeAll(() => {
  dir = tempDir();
  data = pattern(0, 5 * MiB + 999);
  const lib = transpileFdStreams(path.join(dir, 'lib'));
  writerScript = path.join(dir, 'write-fd1.mjs');
  // Writes pattern bytes (period 251, as fd-fixtures) to fd 1 through createFdSink.
  fs.writeFileSync(
    writerScript,
    `import { createFdSink } from ${JSON.stringify(path.join(lib, 'streams/fd-sink.js'))};
const n = Number(process.argv[2]);
const sink = createFdSink(1);
const buf = Buffer.alloc(n);
for (let i = 0; i < n; i++) buf[i] = ((i % 251) * 7 + 3) & 255;
let off = 0;
function pump() {
  while (off < n) {
    const k = Math.min(300000, n - off);
    const ok = sink.write(buf.subarray(off, off + k));
    off += k;
    if (!ok) return sink.once('drain', pump);
  }
  sink.end(() => process.stderr.write(JSON.stringify({ path: sink.path, kind: sink.kind, bytes: sink.bytesWritten })));
}
sink.on('error', (e) => { process.stderr.write(JSON.stringify({ error: e.code })); process.exit(3); });
pump();
`,
  );
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A child that hashes what it reads from the FIFO; resolves its sha256sum output. */
function hashReader(fifo: string): { child: ChildProcess; digest: Promise<string> } {
  const child = spawn('sh', ['-c', `sha256sum < "${fifo}"`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const digest = new Promise<string>((r) => child.on('close', () => r(out.split(' ')[0]!)));
  return { child, digest };
}

/** Open a FIFO's write end once a reader has it open (O_NONBLOCK: ENXIO until then). */
async function openWriter(fifo: string): Promise<number> {
  for (let i = 0; i < 500; i++) {
    try {
      return fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO') throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  throw new Error('no reader');
}

describe('createFdSink on pipes, FIFOs and sockets (epoll path)', () => {
  it('writes a FIFO read by a child process, bytes intact; closing the owned fd gives the reader EOF', async () => {
    const fifo = mkfifo(dir, 'out');
    const { digest } = hashReader(fifo);
    const fd = await openWriter(fifo);
    const sink = createFdSink(fd);
    expect(sink.path).toBe('epoll');
    expect(sink.writableHighWaterMark).toBe(MiB);
    const done = writableOutcome(sink);
    await pipeline(Readable.from(chunksOf(data, 100_000)), sink);
    expect((await done).events).toEqual(['finish', 'close']);
    expect(sink.bytesWritten).toBe(data.length);
    expect(await digest).toBe(sha(data));
    fs.unlinkSync(fifo);
  });

  it('writes a real anonymous pipe (node | sha256sum) and a unix socket (child stdout) from a child process', async () => {
    const n = 3 * MiB + 17;
    const viaPipe = await run('sh', ['-c', `"${process.execPath}" "${writerScript}" ${n} | sha256sum`]);
    expect(viaPipe.stdout.split(' ')[0]).toBe(sha(pattern(0, n)));
    expect(JSON.parse(viaPipe.stderr)).toEqual({ path: 'epoll', kind: 'fifo', bytes: n });

    const viaSocket = await run(process.execPath, [writerScript, String(n)], true);
    expect(viaSocket.sha).toBe(sha(pattern(0, n)));
    expect(JSON.parse(viaSocket.stderr)).toEqual({ path: 'epoll', kind: 'socket', bytes: n });
  });

  it('EPIPE when the reader dies becomes a typed error, error before close', async () => {
    const fifo = mkfifo(dir, 'dies');
    const reader = spawn('sh', ['-c', `head -c 1000 "${fifo}" > /dev/null`], { stdio: 'ignore' });
    const fd = await openWriter(fifo);
    const sink = createFdSink(fd, { highWaterMark: 64 * 1024 });
    const done = writableOutcome(sink);
    const src = Readable.from(chunksOf(pattern(0, 64 * MiB), 256 * 1024));
    src.pipe(sink);
    const { events, error } = await done;
    src.destroy();
    await new Promise((r) => (reader.exitCode !== null ? r(null) : reader.on('close', r)));
    expect(events).toEqual(['error', 'close']);
    expect(error).toBeInstanceOf(MigError);
    expect(error!.code).toBe('EPIPE');
    expect(error!.errno).toBe(32);
    expect(error!.cause).toBeDefined();
    fs.unlinkSync(fifo);
  });

  it('destroy() with a full pipe and a reader that never reads closes quickly', async () => {
    const fifo = mkfifo(dir, 'full');
    const holder = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK); // never read
    const fd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const sink = createFdSink(fd);
    sink.write(pattern(0, 4 * MiB));
    await new Promise((r) => setTimeout(r, 30));
    expect(sink.writableLength).toBeGreaterThan(0);
    const t0 = performance.now();
    sink.destroy();
    await new Promise((r) => sink.on('close', r));
    expect(performance.now() - t0).toBeLessThan(500);
    fs.closeSync(holder);
    fs.unlinkSync(fifo);
  });

  it('autoClose: false writes through a private reopen: the caller keeps its fd, still blocking', async () => {
    const fifo = mkfifo(dir, 'keepw');
    const { digest } = hashReader(fifo);
    const fd = fs.openSync(fifo, 'w'); // blocking: the reader is there
    const sink = createFdSink(fd, { autoClose: false });
    expect(sink.path).toBe('epoll');
    await pipeline(Readable.from(chunksOf(data, MiB)), sink);
    expect(isNonBlocking(fd)).toBe(false);
    fs.writeSync(fd, 'more'); // the caller's fd still works
    fs.closeSync(fd);
    expect(await digest).toBe(sha(data, Buffer.from('more')));
    fs.unlinkSync(fifo);
  });
});

describe('createFdSink on the fs path (position null)', () => {
  it('writes a character device', async () => {
    const sink = createFdSink(fs.openSync('/dev/null', 'w'));
    expect(sink.path).toBe('fs');
    await pipeline(Readable.from(chunksOf(data, MiB)), sink);
    expect(sink.bytesWritten).toBe(data.length);
  });

  it('loops over partial writes and retries EAGAIN on a non-blocking pipe until every byte is taken', async () => {
    const fifo = mkfifo(dir, 'eagain');
    // A slow reader: the 64 KiB pipe fills, non-blocking writes return partial counts, then EAGAIN.
    const child = spawn('sh', ['-c', `(sleep 0.2; sha256sum) < "${fifo}"`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const fd = await openWriter(fifo);
    const sink = createFdSink(fd, { io: 'fs', backoffMin: 1, backoffMax: 8 });
    expect(sink.path).toBe('fs');
    await pipeline(Readable.from(chunksOf(data, 1_000_000)), sink);
    await new Promise((r) => child.on('close', r));
    expect(sink.bytesWritten).toBe(data.length);
    expect(out.split(' ')[0]).toBe(sha(data));
    fs.unlinkSync(fifo);
  });

  it('a write error is typed with its errno name and cause', async () => {
    const fd = fs.openSync(path.join(dir, 'ro'), 'w+');
    fs.closeSync(fd);
    const ro = fs.openSync(path.join(dir, 'ro'), 'r'); // read-only: write() gives EBADF
    const sink = createFdSink(ro);
    const done = writableOutcome(sink);
    sink.write(Buffer.from('x'));
    const { events, error } = await done;
    expect(events).toEqual(['error', 'close']);
    expect(error!.code).toBe('EBADF');
    expect((error!.cause as NodeJS.ErrnoException).syscall).toBe('write');
  });
});

function* chunksOf(buf: Buffer, size: number): Generator<Buffer> {
  for (let off = 0; off < buf.length; off += size) yield buf.subarray(off, Math.min(buf.length, off + size));
}

/** Run a command; with hashStdout, hash its stdout in this process instead of collecting it. */
function run(cmd: string, args: string[], hashStdout = false): Promise<{ stdout: string; stderr: string; sha: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const h = createHash('sha256');
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (hashStdout ? h.update(d) : (stdout += d.toString())));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', () => resolve({ stdout, stderr, sha: h.digest('hex') }));
  });
}
