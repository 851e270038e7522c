import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import net from 'node:net';
import { once } from 'node:events';
import { existsSync, readdirSync, writeFileSync, readFileSync, openSync, closeSync, lstatSync, mkdirSync, symlinkSync, constants as fsConstants } from 'node:fs';
import { open as openCb } from 'node:fs';
import { promisify } from 'node:util';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { connectTransport, listenTransport, type TransportListener } from '../../src/transport/index.js';
import { MigError } from '../../src/fsm/errors.js';
import { pipeCapacity } from '../../src/streams/fd-tuning.js';
import { MIB, acceptFrom, exchange, sendRandom, receiveAll, spawnPeer, tempDir, withFifoPair, hasOpenssl, makePki, type TestPki } from './helpers.js';

const openFd = promisify(openCb);

/** Connect and accept at once: the two ends of one connection. */
async function pairOver(listener: TransportListener, url = listener.url, opts = {}): Promise<[Duplex, Duplex]> {
  const [client, server] = await Promise.all([connectTransport(url, opts), listener.accept()]);
  return [client, server];
}

function expectMigError(err: unknown, codes: string[]): MigError {
  expect(err).toBeInstanceOf(MigError);
  expect(codes).toContain((err as MigError).code);
  return err as MigError;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function hasIpv6Loopback(): boolean {
  try {
    const s = net.createServer();
    s.listen({ host: '::1', port: 0 });
    s.close();
    return true;
  } catch {
    return false;
  }
}

/** A child connects to `l` and reads nothing; we fill its buffers, SIGKILL it, and expect a typed error. */
async function killedPeerCase(l: TransportListener, peerArgs: string[]): Promise<void> {
  const peer = spawnPeer(peerArgs);
  const conn = await acceptFrom(l, peer);
  const failed = new Promise<unknown>((resolve) => conn.once('error', resolve));
  const writing = sendRandom(conn, 64 * MIB).catch(() => {});
  await new Promise((r) => setTimeout(r, 200));
  peer.child.kill('SIGKILL');
  const err = expectMigError(await failed, ['VFIO_MIG_ERR_TRANSPORT']);
  expect(err.errno === undefined || err.errno > 0).toBe(true);
  await writing;
  expect((await peer.result).signal).toBe('SIGKILL');
}

describe('tcp:', () => {
  it('port 0 listens on an ephemeral port that address tells; 4 MiB move both ways intact', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    try {
      expect(l.address).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(l.address).not.toBe('127.0.0.1:0');
      expect(l.url).toBe(`tcp:${l.address}`);
      const [a, b] = await pairOver(l);
      expect(await exchange(a, b, 4 * MIB)).toEqual({ ab: true, ba: true });
    } finally {
      await l.close();
    }
  });

  it('IPv6 addresses go in brackets', async () => {
    const l = await listenTransport('tcp:[::1]:0').catch((err: MigError) => err);
    if (l instanceof MigError) {
      // No IPv6 loopback in this sandbox: then listening must fail with a typed error.
      expect(hasIpv6Loopback()).toBe(false);
      return;
    }
    try {
      expect(l.address).toMatch(/^\[::1\]:\d+$/);
      const [a, b] = await pairOver(l);
      expect(await exchange(a, b, MIB)).toEqual({ ab: true, ba: true });
    } finally {
      await l.close();
    }
  });

  it('a child process connects back and exchanges 4 MiB both ways', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    try {
      const peer = spawnPeer(['exchange', l.url, String(4 * MIB)]);
      const conn = await acceptFrom(l, peer);
      const [sent, received] = await Promise.all([sendRandom(conn, 4 * MIB), receiveAll(conn)]);
      const r = await peer.result;
      expect(r.error).toBeUndefined();
      expect(r.exitCode).toBe(0);
      expect(r.received).toEqual({ hash: sent, bytes: 4 * MIB });
      expect(received).toEqual({ hash: r.sent, bytes: 4 * MIB });
    } finally {
      await l.close();
    }
  });

  it('a killed peer becomes a typed error on the survivor, without a hang', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    try {
      const peer = spawnPeer(['hold', l.url]);
      const conn = await acceptFrom(l, peer);
      const failed = new Promise<unknown>((resolve) => conn.once('error', resolve));
      // The peer reads nothing: fill its receive buffer, then kill it. Unread data makes its kernel reset.
      const writing = sendRandom(conn, 64 * MIB).catch(() => {});
      await new Promise((r) => setTimeout(r, 200));
      peer.child.kill('SIGKILL');
      const err = expectMigError(await failed, ['VFIO_MIG_ERR_TRANSPORT']);
      expect(['ECONNRESET', 'EPIPE']).toContain(err.detail?.sysCode);
      expect(err.errno).toBeGreaterThan(0);
      await writing;
      expect((await peer.result).signal).toBe('SIGKILL');
    } finally {
      await l.close();
    }
  });

  it('connecting to a closed port is ECONNREFUSED, typed', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    const url = l.url;
    await l.close();
    const err = expectMigError(await rejection(connectTransport(url)), ['ECONNREFUSED']);
    expect(err.detail).toMatchObject({ url, op: 'connect' });
  });

  it('a port already in use is EADDRINUSE; malformed addresses are usage errors', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    try {
      expectMigError(await rejection(listenTransport(l.url)), ['EADDRINUSE']);
    } finally {
      await l.close();
    }
    for (const bad of ['tcp:127.0.0.1', 'tcp::80', 'tcp:host:99999', 'tcp:::1:80', 'tcp:[::1]80', 'tcp:127.0.0.1:0']) {
      expectMigError(await rejection(connectTransport(bad)), ['VFIO_MIG_ERR_USAGE']);
    }
  });

  it('an unknown host keeps its resolver code', async () => {
    expectMigError(await rejection(connectTransport('tcp:no-such-host.invalid:7000', { timeoutMs: 5000 })), ['ENOTFOUND', 'EAI_AGAIN']);
  });

  it('an aborted connect rejects with VFIO_MIG_ERR_ABORTED', async () => {
    const ac = new AbortController();
    ac.abort();
    expectMigError(await rejection(connectTransport('tcp:127.0.0.1:1', { signal: ac.signal })), ['VFIO_MIG_ERR_ABORTED']);
  });
});

describe('unix:', () => {
  it('moves 4 MiB both ways; the socket file goes away on close', async () => {
    const t = tempDir();
    const path = join(t.dir, 'mig.sock');
    try {
      const l = await listenTransport(`unix:${path}`);
      expect(l.address).toBe(path);
      expect(existsSync(path)).toBe(true);
      const [a, b] = await pairOver(l);
      expect(await exchange(a, b, 4 * MIB)).toEqual({ ab: true, ba: true });
      await l.close();
      expect(existsSync(path)).toBe(false);
    } finally {
      t.cleanup();
    }
  });

  it('an accepted connection reads into 1 MiB chunks: reads are views, consecutive ones share a buffer, bytes intact; a paused reader stops the reads', async () => {
    const t = tempDir();
    try {
      const l = await listenTransport(`unix:${join(t.dir, 'chunks.sock')}`);
      const [client, server] = await pairOver(l);
      const data = Buffer.alloc(32 * MIB);
      for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
      const h = createHash('sha256');
      const memories = new Set<ArrayBufferLike>();
      let reads = 0;
      let got = 0;
      server.on('data', (c: Buffer) => {
        reads++;
        got += c.length;
        memories.add(c.buffer);
        h.update(c);
      });
      // Pause the reader for a while: the writer must stall (bounded buffering), then resume.
      server.pause();
      let at = 0;
      let writable = true;
      while (at < data.length && writable) {
        writable = client.write(data.subarray(at, at + MIB));
        at += MIB;
      }
      expect(writable).toBe(false);
      await new Promise((r) => setTimeout(r, 50));
      expect(got).toBe(0);
      expect(server.readableLength).toBeLessThanOrEqual(4 * MIB);
      const ended = once(server, 'end');
      server.resume();
      await once(client, 'drain');
      for (; at < data.length; at += MIB) if (!client.write(data.subarray(at, at + MIB))) await once(client, 'drain');
      client.end();
      await ended;
      expect(got).toBe(data.length);
      expect(h.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
      // Fewer buffers than reads: reads land one after another in the same 1 MiB chunk.
      expect(memories.size).toBeLessThan(reads);
      expect([...memories].every((m) => m.byteLength === MIB)).toBe(true);
      // The return path still works after the client's end (half-open).
      server.end(Buffer.from('ack'));
      const [ack] = (await once(client, 'data')) as [Buffer];
      expect(ack.toString()).toBe('ack');
      await l.close();
    } finally {
      t.cleanup();
    }
  });

  it('replaces a stale socket file but refuses a live one', async () => {
    const t = tempDir();
    const path = join(t.dir, 'stale.sock');
    try {
      // What a SIGKILLed listener leaves: a socket file nobody accepts on.
      const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
      expect(() => execFileSync(process.execPath, ['-e', script], { stdio: 'ignore' })).toThrow();
      expect(existsSync(path)).toBe(true);
      const l = await listenTransport(`unix:${path}`);
      const [a, b] = await pairOver(l);
      expect(await exchange(a, b, 64 * 1024)).toEqual({ ab: true, ba: true });
      expectMigError(await rejection(listenTransport(`unix:${path}`)), ['EADDRINUSE']);
      await l.close();
    } finally {
      t.cleanup();
    }
  });

  it('the abstract namespace (unix:@NAME) works without a file', async () => {
    const name = `vfio-mig-test-${process.pid}-${Date.now()}`;
    const l = await listenTransport(`unix:@${name}`);
    try {
      const [a, b] = await pairOver(l);
      expect(await exchange(a, b, MIB)).toEqual({ ab: true, ba: true });
    } finally {
      await l.close();
    }
  });

  it('a killed peer becomes a typed error, without a hang', async () => {
    const t = tempDir();
    const l = await listenTransport(`unix:${join(t.dir, 'k.sock')}`);
    try {
      await killedPeerCase(l, ['hold', l.url]);
    } finally {
      await l.close();
      t.cleanup();
    }
  });

  it('a missing socket is ENOENT, typed', async () => {
    expectMigError(await rejection(connectTransport('unix:/nonexistent/vfio-mig.sock')), ['ENOENT']);
  });
});

describe('listeners', () => {
  it('queue connections up to maxPending, drop the rest visibly, and reject pending accepts on close', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0', { maxPending: 2 });
    const rejected: MigError[] = [];
    (l as unknown as NodeJS.EventEmitter).on('rejected', (e: MigError) => rejected.push(e));
    const clients = await Promise.all([1, 2, 3].map(() => connectTransport(l.url)));
    // The third was dropped on arrival: its client sees the connection end.
    await new Promise((r) => setTimeout(r, 100));
    expect(rejected.map((e) => e.code)).toEqual(['VFIO_MIG_ERR_LIMIT']);
    const a = await l.accept();
    const b = await l.accept();
    const pending = rejection(l.accept());
    await l.close();
    expectMigError(await pending, ['VFIO_MIG_ERR_TRANSPORT']);
    expectMigError(await rejection(l.accept()), ['VFIO_MIG_ERR_TRANSPORT']);
    for (const c of [a, b, ...clients]) c.destroy();
  });

  it('accept() honours a timeout and an AbortSignal; the async iterator ends on close', async () => {
    const l = await listenTransport('tcp:127.0.0.1:0');
    expectMigError(await rejection(l.accept({ timeoutMs: 20 })), ['ETIMEDOUT']);
    const ac = new AbortController();
    const p = l.accept({ signal: ac.signal });
    ac.abort();
    expectMigError(await rejection(p), ['VFIO_MIG_ERR_ABORTED']);
    const got: Duplex[] = [];
    const iterating = (async () => {
      for await (const conn of l) {
        got.push(conn);
        if (got.length === 2) void l.close();
      }
    })();
    const c1 = await connectTransport(l.url);
    const c2 = await connectTransport(l.url);
    await iterating;
    expect(got.length).toBe(2);
    for (const c of [c1, c2, ...got]) c.destroy();
  });
});

describe.runIf(hasOpenssl())('tls:', () => {
  let pki: TestPki;
  let t: ReturnType<typeof tempDir>;
  beforeAll(() => {
    t = tempDir('vfio-mig-tls-');
    pki = makePki(t.dir);
  });
  afterAll(() => t.cleanup());

  const serverOpts = (): Record<string, unknown> => ({ cert: pki.serverCert, key: pki.serverKey, ca: pki.ca });

  it('mutual authentication succeeds with good certificates; 4 MiB move both ways', async () => {
    const l = await listenTransport('tls:127.0.0.1:0', serverOpts());
    try {
      expect(l.url).toMatch(/^tls:127\.0\.0\.1:\d+$/);
      const [a, b] = await pairOver(l, l.url, { cert: pki.clientCert, key: pki.clientKey, ca: pki.ca });
      const peerCert = (b as unknown as { getPeerCertificate(): { subject: { CN: string } } }).getPeerCertificate();
      expect(peerCert.subject.CN).toBe('client');
      expect(await exchange(a, b, 4 * MIB)).toEqual({ ab: true, ba: true });
    } finally {
      await l.close();
    }
  });

  it('a child process authenticates and exchanges over tls', async () => {
    const l = await listenTransport('tls:127.0.0.1:0', serverOpts());
    try {
      const peer = spawnPeer(['exchange', l.url, String(2 * MIB), t.dir]);
      const conn = await acceptFrom(l, peer);
      const [sent, received] = await Promise.all([sendRandom(conn, 2 * MIB), receiveAll(conn)]);
      const r = await peer.result;
      expect(r.error).toBeUndefined();
      expect(r.received).toEqual({ hash: sent, bytes: 2 * MIB });
      expect(received.hash).toBe(r.sent);
    } finally {
      await l.close();
    }
  });

  it('a client certificate signed by another CA fails connect() with a typed error; the server never yields it', async () => {
    const l = await listenTransport('tls:127.0.0.1:0', serverOpts());
    const rejected: MigError[] = [];
    (l as unknown as NodeJS.EventEmitter).on('rejected', (e: MigError) => rejected.push(e));
    try {
      const err = await rejection(connectTransport(l.url, { cert: pki.rogueCert, key: pki.rogueKey, ca: pki.ca }));
      expectMigError(err, ['VFIO_MIG_ERR_TRANSPORT', 'ECONNRESET']);
      // No client certificate at all: refused the same way.
      expectMigError(await rejection(connectTransport(l.url, { ca: pki.ca })), ['VFIO_MIG_ERR_TRANSPORT', 'ECONNRESET']);
      expectMigError(await rejection(l.accept({ timeoutMs: 100 })), ['ETIMEDOUT']);
      expect(rejected.length).toBe(2);
      expect(rejected[0].code).toBe('VFIO_MIG_ERR_TRANSPORT');
    } finally {
      await l.close();
    }
  });

  it('a server the client cannot verify fails connect() with a typed error', async () => {
    const l = await listenTransport('tls:127.0.0.1:0', serverOpts());
    try {
      const err = expectMigError(await rejection(connectTransport(l.url, { cert: pki.clientCert, key: pki.clientKey, ca: pki.otherCa })), ['VFIO_MIG_ERR_TRANSPORT']);
      expect(String(err.detail?.sysCode)).toMatch(/CERT|VERIFY|SIGNATURE|ISSUER/);
    } finally {
      await l.close();
    }
  });

  it('a killed peer becomes a typed error, without a hang', async () => {
    const l = await listenTransport('tls:127.0.0.1:0', serverOpts());
    try {
      await killedPeerCase(l, ['hold', l.url, '0', t.dir]);
    } finally {
      await l.close();
    }
  });

  it('a peer that never completes the handshake times out with ETIMEDOUT, typed, and nothing leaks', async () => {
    const silent = net.createServer((c) => c.on('error', () => {}));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const err = expectMigError(await rejection(connectTransport(`tls:127.0.0.1:${port}`, { ca: pki.ca, timeoutMs: 150 })), ['ETIMEDOUT']);
      expect(err.detail).toMatchObject({ op: 'connect' });
    } finally {
      silent.close();
    }
  });

  it('listen without a certificate is a usage error', async () => {
    expectMigError(await rejection(listenTransport('tls:127.0.0.1:0', { ca: pki.ca })), ['VFIO_MIG_ERR_USAGE']);
  });
});

describe('fd:', () => {
  it('fd:N: a child given a socket on fd 3 exchanges 4 MiB both ways', async () => {
    const peer = spawnPeer(['exchange', 'fd:3', String(4 * MIB)], ['ignore', 'pipe', 'inherit', 'pipe']);
    const sock = peer.child.stdio[3] as net.Socket;
    // Node makes stdio sockets without half-open: keep writing after the child finished sending.
    sock.allowHalfOpen = true;
    const [sent, received] = await Promise.all([sendRandom(sock, 4 * MIB), receiveAll(sock)]);
    const r = await peer.result;
    expect(r.error).toBeUndefined();
    expect(r.received).toEqual({ hash: sent, bytes: 4 * MIB });
    expect(received).toEqual({ hash: r.sent, bytes: 4 * MIB });
  });

  it('fd:R,W: a pair of FIFOs on both sides, 4 MiB each way', async () => {
    await withFifoPair(async (toChild, fromChild) => {
      const peer = spawnPeer(['fifos', toChild, fromChild, String(4 * MIB)]);
      // Opening a FIFO blocks until its other end opens: done in the thread pool, both at once.
      const [w, r] = await Promise.all([openFd(toChild, 'w'), openFd(fromChild, 'r')]);
      const l = await listenTransport(`fd:${r},${w}`);
      expect(l.address).toBe(`${r},${w}`);
      const conn = await l.accept();
      // A single inherited connection: the listener is done after it.
      expectMigError(await rejection(l.accept()), ['VFIO_MIG_ERR_TRANSPORT']);
      const [sent, received] = await Promise.all([sendRandom(conn, 4 * MIB), receiveAll(conn)]);
      const res = await peer.result;
      expect(res.error).toBeUndefined();
      expect(res.received).toEqual({ hash: sent, bytes: 4 * MIB });
      expect(received).toEqual({ hash: res.sent, bytes: 4 * MIB });
      conn.destroy();
    });
  });

  it('fd:R,W: a write callback means the bytes left the process, even behind a full pipe', async () => {
    // migrate() reuses a chunk's memory once its write callback ran (device buffers, compressed
    // frames): a small chunk queued behind a full pipe must not be acknowledged before it is written.
    await withFifoPair(async (down, up) => {
      // Readers first (non-blocking opens), then writers: no end blocks waiting for the other.
      const farR = openSync(down, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      const w = openSync(down, 'w');
      const r = openSync(up, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      const farW = openSync(up, 'w');
      const conn = await connectTransport(`fd:${r},${w}`);
      // The pipe's capacity (64 KiB unless a user's pipe memory is spent: then a page) fills it:
      // written at once, so acknowledged at once.
      const fill = randomBytes(pipeCapacity(w) ?? 64 * 1024);
      await new Promise<void>((resolve, reject) => conn.write(fill, (err) => (err ? reject(err) : resolve())));
      // The pipe is full now: a small chunk waits in the process, and so does its callback.
      const small = randomBytes(28);
      const want = Buffer.concat([fill, small]);
      let acked = false;
      conn.write(small, () => {
        acked = true;
        small.fill(0xee); // what a recycler does with the memory
      });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(acked).toBe(false);
      const far = new net.Socket({ fd: farR, readable: true, writable: false });
      const got: Buffer[] = [];
      far.on('data', (c: Buffer) => got.push(c));
      const ended = once(far, 'end');
      conn.end();
      await ended;
      expect(acked).toBe(true);
      expect(Buffer.concat(got).equals(want)).toBe(true);
      conn.destroy();
      closeSync(farW);
    });
  });

  // A checkpoint piped (`vfio-mig save fd:3 3>&1 | ...`): the write end alone used to be read as
  // well, and the write-only fd failed the stream at once (ENOTCONN, "transport lost").
  it('fd:N on one end of a pipe: the write end sends 4 MiB and its readable side ends once all is out; the read end takes them and discards writes', async () => {
    await withFifoPair(async (fifo) => {
      const r = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      const w = openSync(fifo, 'w');
      const out = await connectTransport(`fd:${w}`);
      const l = await listenTransport(`fd:${r}`);
      const inn = await l.accept();
      // The return path of a reader goes nowhere, and does not fail it.
      inn.write(Buffer.from('ack'));
      const outDone = receiveAll(out);
      const [sent, received] = await Promise.all([sendRandom(out, 4 * MIB), receiveAll(inn)]);
      expect(received).toEqual({ hash: sent, bytes: 4 * MIB });
      // The writer's own readable side carried nothing and ended (its end was handed to the pipe).
      expect(await outDone).toEqual({ hash: createHash('sha256').update(Buffer.alloc(0)).digest('hex'), bytes: 0 });
      inn.destroy();
    });
  });

  it('fd:N on the write end of a pipe whose reader quit: EPIPE, a typed error', async () => {
    await withFifoPair(async (fifo) => {
      const r = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      const w = openSync(fifo, 'w');
      const out = await connectTransport(`fd:${w}`);
      closeSync(r);
      const failed = new Promise<unknown>((resolve) => out.once('error', resolve));
      out.write(Buffer.alloc(MIB));
      expectMigError(await failed, ['VFIO_MIG_ERR_TRANSPORT']);
      expect(String((await failed) as Error)).toMatch(/EPIPE/);
    });
  });

  it('refuses stdio, regular files and closed fds with typed errors', async () => {
    const t = tempDir();
    try {
      expectMigError(await rejection(connectTransport('fd:1')), ['VFIO_MIG_ERR_USAGE']);
      expectMigError(await rejection(connectTransport('fd:5,5')), ['VFIO_MIG_ERR_USAGE']);
      expectMigError(await rejection(connectTransport('fd:x')), ['VFIO_MIG_ERR_USAGE']);
      const f = join(t.dir, 'plain');
      writeFileSync(f, 'x');
      const fd = openSync(f, 'r');
      try {
        const err = expectMigError(await rejection(connectTransport(`fd:${fd}`)), ['VFIO_MIG_ERR_USAGE']);
        expect(err.message).toMatch(/file:/);
      } finally {
        closeSync(fd);
      }
      expectMigError(await rejection(connectTransport('fd:987654')), ['EBADF']);
    } finally {
      t.cleanup();
    }
  });
});

describe('file:', () => {
  function sha(buf: Buffer): string {
    return createHash('sha256').update(buf).digest('hex');
  }

  it('saves through a temporary name, renamed on a successful end; restores through listen/accept', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'dev0.vmig');
      const w = await connectTransport(`file:${path}`);
      const readable = receiveAll(w);
      const sent = await sendRandom(w, 4 * MIB);
      // The readable side ends once the file is committed: a writer can wait for durability.
      expect(await readable).toEqual({ hash: sha(Buffer.alloc(0)), bytes: 0 });
      expect(sha(readFileSync(path))).toBe(sent);
      expect(readdirSync(t.dir)).toEqual(['dev0.vmig']);

      const l = await listenTransport(`file:${path}`);
      const conn = await l.accept();
      // Return-path bytes written by a destination are accepted and dropped.
      conn.write(Buffer.from('ack'));
      conn.end();
      expect(await receiveAll(conn)).toEqual({ hash: sent, bytes: 4 * MIB });
      expectMigError(await rejection(l.accept()), ['VFIO_MIG_ERR_TRANSPORT']);
    } finally {
      t.cleanup();
    }
  });

  it('a failed save leaves no file under the final name and no temporary file; an older file stays intact', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'dev0.vmig');
      writeFileSync(path, 'previous checkpoint');
      const w = await connectTransport(`file:${path}`);
      const failed = new Promise<unknown>((resolve) => w.once('error', resolve));
      w.write(Buffer.alloc(MIB, 1));
      await new Promise((r) => setImmediate(r));
      w.destroy(new Error('source failed'));
      await new Promise((r) => w.once('close', r));
      expectMigError(await failed, ['VFIO_MIG_ERR_TRANSPORT']);
      expect(readFileSync(path, 'utf8')).toBe('previous checkpoint');
      expect(readdirSync(t.dir)).toEqual(['dev0.vmig']);
      const fresh = join(t.dir, 'never.vmig');
      const w2 = await connectTransport(`file:${fresh}`);
      w2.destroy();
      await once(w2, 'close');
      expect(readdirSync(t.dir)).toEqual(['dev0.vmig']);
    } finally {
      t.cleanup();
    }
  });

  // The commit renames the temporary file over PATH, whatever PATH was: `vfio-mig save ...
  // /dev/full` reported success and left /dev/full a regular file (2026-12-08). A FIFO stands in
  // for the device here (the old code replaced it with a file, harmlessly in a temp directory).
  it('saving over a FIFO, a socket or a directory is refused before anything is written (USAGE); the name keeps what it was', async () => {
    const t = tempDir();
    const server = net.createServer();
    try {
      const fifo = join(t.dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      const sock = join(t.dir, 'sock');
      await new Promise<void>((r) => server.listen(sock, r));
      const dir = join(t.dir, 'dir');
      mkdirSync(dir);
      for (const [path, kind] of [
        [fifo, 'a FIFO'],
        [sock, 'a socket'],
        [dir, 'a directory'],
      ] as const) {
        const err = await rejection(connectTransport(`file:${path}`));
        expectMigError(err, ['VFIO_MIG_ERR_USAGE']);
        expect((err as Error).message).toContain(`is ${kind}`);
      }
      expect(lstatSync(fifo).isFIFO()).toBe(true);
      expect(lstatSync(sock).isSocket()).toBe(true);
      expect(readdirSync(t.dir).sort()).toEqual(['dir', 'fifo', 'sock']);
    } finally {
      server.close();
      t.cleanup();
    }
  });

  it('saving through a symbolic link replaces the file it names, and the link stays; a link to nothing is refused', async () => {
    const t = tempDir();
    try {
      const real = join(t.dir, 'real.vmig');
      writeFileSync(real, 'previous checkpoint');
      const link = join(t.dir, 'link.vmig');
      symlinkSync('real.vmig', link);
      const w = await connectTransport(`file:${link}`);
      const readable = receiveAll(w);
      const sent = await sendRandom(w, MIB);
      await readable;
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      expect(sha(readFileSync(real))).toBe(sent);
      expect(readdirSync(t.dir).sort()).toEqual(['link.vmig', 'real.vmig']);
      const dangling = join(t.dir, 'dangling.vmig');
      symlinkSync('nowhere.vmig', dangling);
      expectMigError(await rejection(connectTransport(`file:${dangling}`)), ['VFIO_MIG_ERR_USAGE']);
      expect(existsSync(join(t.dir, 'nowhere.vmig'))).toBe(false);
    } finally {
      t.cleanup();
    }
  });

  it('restoring a missing file is ENOENT; saving into a missing directory is ENOENT', async () => {
    expectMigError(await rejection(listenTransport('file:/nonexistent/x.vmig')), ['ENOENT']);
    expectMigError(await rejection(connectTransport('file:/nonexistent/x.vmig')), ['ENOENT']);
  });
});
