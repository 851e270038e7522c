import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createFdSource, FdSource } from '../../src/streams/fd-source.js';
import { fdKind } from '../../src/streams/fd-kind.js';
import { MigError } from '../../src/fsm/errors.js';
import { MiB, isNonBlocking, mkfifo, openFifoReader, pattern, sha, tempDir, transpileFdStreams } from './fd-fixtures.js';

let dir: string;
let dataFile: string;
let data: Buffer;
let childScript: string;

beforeAll(() => {
  dir = tempDir();
  data = pattern(0, 5 * MiB + 4321);
  dataFile = path.join(dir, 'data.bin');
  fs.writeFileSync(dataFile, data);
  const lib = transpileFdStreams(path.join(dir, 'lib'));
  childScript = path.join(dir, 'read-fd0.mjs');
  fs.writeFileSync(
    childScript,
    `import { createFdSource } from ${JSON.stringify(path.join(lib, 'streams/fd-source.js'))};
import { createHash } from 'node:crypto';
const s = createFdSource(0, { chunkSize: 256 * 1024 });
const h = createHash('sha256');
let bytes = 0;
s.on('data', (c) => { h.update(c); bytes += c.length; });
s.on('end', () => process.stdout.write(JSON.stringify({ kind: s.kind, path: s.path, bytes, sha: h.digest('hex') })));
s.on('error', (e) => process.stdout.write(JSON.stringify({ error: e.code })));
`,
  );
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function collect(s: FdSource): Promise<{ chunks: Buffer[]; events: string[]; error: MigError | null }> {
  const chunks: Buffer[] = [];
  const events: string[] = [];
  let error: MigError | null = null;
  return new Promise((resolve) => {
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => events.push('end'));
    s.on('error', (e: MigError) => {
      error = e;
      events.push('error');
    });
    s.on('close', () => {
      events.push('close');
      resolve({ chunks, events, error });
    });
  });
}

function runChild(cmd: string, args: string[], stdio: Parameters<typeof spawn>[2]['stdio']): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => resolve(out));
  });
}

describe('fdKind', () => {
  it('classifies FIFOs, sockets, character devices and files by fstat', () => {
    const fifo = mkfifo(dir, 'kind-fifo');
    const r = openFifoReader(fifo);
    const z = fs.openSync('/dev/zero', 'r');
    const f = fs.openSync(dataFile, 'r');
    try {
      expect(fdKind(r)).toBe('fifo');
      expect(fdKind(z)).toBe('char');
      expect(fdKind(f)).toBe('file');
      expect(() => fdKind(987654)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    } finally {
      for (const fd of [r, z, f]) fs.closeSync(fd);
      fs.unlinkSync(fifo);
    }
  });
});

describe('createFdSource on pipes, FIFOs and sockets (epoll path)', () => {
  it('reads a FIFO fed by a child process (head -c) to EOF, bytes intact, and closes the fd it owns', async () => {
    const fifo = mkfifo(dir, 'feed');
    const fd = openFifoReader(fifo);
    const s = createFdSource(fd);
    expect(s.path).toBe('epoll');
    expect(s.kind).toBe('fifo');
    const child = spawn('sh', ['-c', `head -c ${data.length} "${dataFile}" > "${fifo}"`], { stdio: 'ignore' });
    const { chunks, events } = await collect(s);
    await new Promise((r) => child.on('close', r));
    fs.unlinkSync(fifo);
    expect(events).toEqual(['end', 'close']);
    expect(s.bytesRead).toBe(data.length);
    expect(chunks.every((c) => c.length <= MiB)).toBe(true);
    expect(sha(...chunks)).toBe(sha(data));
    await new Promise((r) => setTimeout(r, 20));
    expect(() => fs.fstatSync(fd)).toThrow();
  });

  it('reads a real anonymous pipe in a child process (head -c | node) and a unix socket at fd 0', async () => {
    const viaPipe = JSON.parse(
      await runChild('sh', ['-c', `head -c ${data.length} "${dataFile}" | "${process.execPath}" "${childScript}"`], ['ignore', 'pipe', 'inherit']),
    ) as Record<string, unknown>;
    expect(viaPipe).toEqual({ kind: 'fifo', path: 'epoll', bytes: data.length, sha: sha(data) });

    // A unix stream socket from net.createServer on a temp path becomes the child's fd 0.
    const sockPath = path.join(dir, 'sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(sockPath, r));
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect(sockPath);
    const serverSide = await accepted;
    const out = runChild(process.execPath, [childScript], [serverSide, 'pipe', 'inherit']);
    serverSide.destroy();
    client.end(data);
    const viaSocket = JSON.parse(await out) as Record<string, unknown>;
    server.close();
    expect(viaSocket).toEqual({ kind: 'socket', path: 'epoll', bytes: data.length, sha: sha(data) });
  });

  it('sharedMemory: a FIFO is read into SharedArrayBuffer chunks through the epoll path, bytes intact', async () => {
    const fifo = mkfifo(dir, 'shared');
    const fd = openFifoReader(fifo);
    const s = createFdSource(fd, { recycle: true, sharedMemory: true });
    const child = spawn('sh', ['-c', `head -c ${data.length} "${dataFile}" > "${fifo}"`], { stdio: 'ignore' });
    const hash = createHash('sha256');
    let shared = 0;
    let chunks = 0;
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        hash.update(c);
        chunks++;
        if (c.buffer instanceof SharedArrayBuffer) shared++;
        s.release(c);
      });
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    await new Promise((r) => child.on('close', r));
    fs.unlinkSync(fifo);
    expect(hash.digest('hex')).toBe(sha(data));
    expect(shared).toBe(chunks);
  });

  it('release(): a consumer that gives chunks back gets their memory again, bytes intact; foreign and repeated releases are refused', async () => {
    const fifo = mkfifo(dir, 'recycle');
    const fd = openFifoReader(fifo);
    const s = createFdSource(fd, { recycle: true });
    const child = spawn('sh', ['-c', `head -c ${data.length} "${dataFile}" > "${fifo}"`], { stdio: 'ignore' });
    const hash = createHash('sha256');
    const memories = new Set<ArrayBufferLike>();
    let chunks = 0;
    let refused = 0;
    const kept: [Buffer, Buffer][] = [];
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        hash.update(c);
        memories.add(c.buffer);
        // Every third view is kept: the chunk buffer it lives in must not be reused under it.
        if (chunks++ % 3 === 0) {
          kept.push([c, Buffer.from(c)]);
          return;
        }
        expect(s.release(c)).toBe(true);
        if (!s.release(c)) refused++;
      });
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    await new Promise((r) => child.on('close', r));
    fs.unlinkSync(fifo);
    expect(hash.digest('hex')).toBe(sha(data));
    expect(refused).toBe(chunks - kept.length);
    for (const [view, copy] of kept) expect(view.equals(copy)).toBe(true);
    expect(s.release(Buffer.alloc(16))).toBe(false);
    // Without the option nothing is tracked: release() refuses.
    const plain = createFdSource(openFifoReader(mkfifo(dir, 'plain')));
    expect(plain.release(Buffer.alloc(16))).toBe(false);
    plain.destroy();
    // The data spans several 1 MiB chunk buffers; released ones came back instead of new memory.
    expect(chunks).toBeGreaterThan(4);
    expect(memories.size).toBeLessThan(chunks);
  });

  it('destroy() on an idle pipe closes quickly', async () => {
    const fifo = mkfifo(dir, 'idle');
    const fd = openFifoReader(fifo);
    const writer = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const s = createFdSource(fd);
    s.resume();
    await new Promise((r) => setTimeout(r, 30));
    const t0 = performance.now();
    s.destroy();
    await new Promise((r) => s.on('close', r));
    expect(performance.now() - t0).toBeLessThan(500);
    fs.closeSync(writer);
    fs.unlinkSync(fifo);
  });

  it('destroy() never waits for a blocked threadpool read (fs path); the owned fd closes when the read returns', async () => {
    const fifo = mkfifo(dir, 'blocked');
    const fd = fs.openSync(fifo, fs.constants.O_RDWR); // blocking, and it never sees EOF
    const s = createFdSource(fd, { io: 'fs' });
    expect(s.path).toBe('fs');
    s.resume();
    await new Promise((r) => setTimeout(r, 30));
    const t0 = performance.now();
    s.destroy();
    await new Promise((r) => s.on('close', r));
    expect(performance.now() - t0).toBeLessThan(500);
    expect(() => fs.fstatSync(fd)).not.toThrow(); // the read is still pending: fd kept
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(w, 'x'); // unblocks the read
    await new Promise((r) => setTimeout(r, 50));
    expect(() => fs.fstatSync(fd)).toThrow();
    fs.closeSync(w);
    fs.unlinkSync(fifo);
  });

  it('autoClose: false reads through a private reopen: the caller keeps its fd, still blocking', async () => {
    const fifo = mkfifo(dir, 'keep');
    const fd = fs.openSync(fifo, fs.constants.O_RDWR); // blocking description of the caller
    const s = createFdSource(fd, { autoClose: false, chunkSize: 64 * 1024 });
    expect(s.path).toBe('epoll');
    const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const part = pattern(0, 60_000);
    fs.writeSync(w, part);
    const first = await new Promise<Buffer>((r) => s.once('data', r));
    expect(first.equals(part)).toBe(true);
    s.destroy();
    await new Promise((r) => s.on('close', r));
    expect(() => fs.fstatSync(fd)).not.toThrow();
    expect(isNonBlocking(fd)).toBe(false);
    // The caller's fd still works (blocking read returns what is queued).
    fs.writeSync(w, 'tail');
    const b = Buffer.alloc(16);
    expect(fs.readSync(fd, b, 0, 16, null)).toBe(4);
    fs.closeSync(w);
    fs.closeSync(fd);
    fs.unlinkSync(fifo);
  });

  it('holdReads() stops the pipe reads while the consumer still reads (the producer blocks); releaseReads() resumes, bytes intact', async () => {
    const fifo = mkfifo(dir, 'held');
    const fd = openFifoReader(fifo);
    const s = createFdSource(fd, { chunkSize: 64 * 1024, highWaterMark: 128 * 1024 });
    const size = 32 * MiB;
    const child = spawn('sh', ['-c', `head -c ${size} "${dataFile}" > /dev/null; dd if=/dev/zero bs=1M count=32 2>/dev/null > "${fifo}"`], { stdio: 'ignore' });
    const h = createHash('sha256');
    let got = 0;
    s.on('data', (c: Buffer) => {
      h.update(c);
      got += c.length;
    });
    while (got < MiB) await new Promise((r) => setTimeout(r, 1));
    await s.holdReads();
    // Whatever was read before the hold arrives; then nothing more, although the consumer flows.
    await new Promise((r) => setTimeout(r, 50));
    const atHold = s.bytesRead;
    expect(got).toBe(atHold);
    await new Promise((r) => setTimeout(r, 100));
    expect(s.bytesRead).toBe(atHold);
    expect(atHold).toBeLessThan(size);
    s.releaseReads();
    await new Promise((r) => s.on('end', r));
    expect(got).toBe(size);
    expect(h.digest('hex')).toBe(createHash('sha256').update(Buffer.alloc(size)).digest('hex'));
    s.destroy();
    child.kill();
    fs.unlinkSync(fifo);
  });

  it('a slow consumer stops the pipe reads (onread returns false): the producer blocks', async () => {
    const fifo = mkfifo(dir, 'slow');
    const fd = openFifoReader(fifo);
    const s = createFdSource(fd, { chunkSize: 64 * 1024, highWaterMark: 128 * 1024 });
    const child = spawn('sh', ['-c', `head -c ${64 * MiB} /dev/zero > "${fifo}"`], { stdio: 'ignore' });
    s.resume();
    s.pause();
    await new Promise((r) => setTimeout(r, 200));
    // Read at most the highWaterMark, a chunk in progress and a read buffer; the rest waits in dd.
    expect(s.bytesRead).toBeLessThanOrEqual(128 * 1024 + 2 * 64 * 1024 + 256 * 1024);
    expect(s.readableLength).toBeLessThanOrEqual(128 * 1024 + 2 * 64 * 1024 + 256 * 1024);
    s.destroy();
    await new Promise((r) => s.on('close', r));
    child.kill();
    fs.unlinkSync(fifo);
  });
});

describe('createFdSource on character devices and files (fs path, position null)', () => {
  it('reads /dev/zero in full chunks until destroyed', async () => {
    const fd = fs.openSync('/dev/zero', 'r');
    const s = createFdSource(fd, { chunkSize: 256 * 1024 });
    expect(s.path).toBe('fs');
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => {
      chunks.push(c);
      if (chunks.length === 4) s.destroy();
    });
    await new Promise((r) => s.on('close', r));
    expect(chunks.slice(0, 4).every((c) => c.length === 256 * 1024 && c.every((b) => b === 0))).toBe(true);
  });

  it('reads a stream-like file from its current position to the end (never pread)', async () => {
    const fd = fs.openSync(dataFile, 'r');
    const skip = Buffer.alloc(1000);
    fs.readSync(fd, skip, 0, 1000, null); // the fd's position moves: we must continue from there
    const { chunks, events } = await collect(createFdSource(fd));
    expect(events).toEqual(['end', 'close']);
    expect(sha(...chunks)).toBe(sha(data.subarray(1000)));
  });

  it('a read error becomes a typed MigError with its errno name and cause', async () => {
    const fd = fs.openSync(path.join(dir, 'wo'), 'w'); // write-only: read() gives EBADF
    const { events, error } = await collect(createFdSource(fd));
    expect(events).toEqual(['error', 'close']);
    expect(error).toBeInstanceOf(MigError);
    expect(error!.code).toBe('EBADF');
    expect((error!.cause as NodeJS.ErrnoException).syscall).toBe('read');
  });

  it('rejects bad fds with typed errors', () => {
    expect(() => createFdSource(-1)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    expect(() => createFdSource(987654)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});

