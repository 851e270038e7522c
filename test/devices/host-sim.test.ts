/**
 * SimDevice and MttyDevice hosted in child processes, driven by MigrationCore, their streams
 * carried between two hosts through real FIFO fds with plain net.Socket code.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { Socket } from 'node:net';
import { once } from 'node:events';
import { DeviceState } from '../../src/fsm/states.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { MigrationCore } from '../../src/fsm/core.js';
import { spawnDeviceHost } from '../../src/devices/host.js';
import type { HostedDevice, HostedSavingSession, HostedResumingSession } from '../../src/devices/host.js';
import { pipeline } from 'node:stream/promises';
import { createSavingStream, createResumingStream } from '../../src/streams/index.js';
import { MTTY_MAGIC, MTTY_HEADER_SIZE, mttyDataSize } from '../../src/devices/mtty-device.js';

const S = DeviceState;
const hosts: HostedDevice[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

async function host(device: 'sim' | 'mtty', options: Record<string, unknown>, chunkSize?: number): Promise<HostedDevice> {
  const h = await spawnDeviceHost({ device, options, chunkSize });
  hosts.push(h);
  return h;
}

async function waitFor(cond: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error('waitFor: timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Connect a saving fd to a resuming fd with plain sockets; resolves the byte count once the destination side closed. */
function connect(saving: HostedSavingSession, resuming: HostedResumingSession): { bytes: () => number; done: Promise<void>; ended: () => boolean } {
  const src = new Socket({ fd: saving.takeFd(), readable: true, writable: false });
  const dst = new Socket({ fd: resuming.takeFd(), readable: false, writable: true });
  let bytes = 0;
  let ended = false;
  src.on('data', (c: Buffer) => (bytes += c.length));
  src.on('end', () => (ended = true));
  src.pipe(dst);
  return { bytes: () => bytes, ended: () => ended, done: once(dst, 'close').then(() => undefined) };
}

describe('device host: SimDevice', () => {
  it.each(['enomsg', 'zero'] as const)(
    'PRE_COPY with dirtying (temporary end %s) then STOP_COPY through FIFOs into a second host: digests equal',
    async (precopyEmpty) => {
      const opts = { size: 8 << 20, flags: 0x7, seed: 42, profile: 'mixed', precopyEmpty };
      const [a, b] = await Promise.all([host('sim', opts, 256 << 10), host('sim', { ...opts, precopyEmpty: 'enomsg' })]);
      expect(a.identity()).toMatchObject({ kind: 'sim', flags: 0x7 });
      const src = new MigrationCore(a);
      const dst = new MigrationCore(b);
      const ss = (await src.setState(S.PRE_COPY)) as HostedSavingSession;
      const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
      expect(typeof ss.fd).toBe('number');
      expect(typeof rs.fd).toBe('number');
      const link = connect(ss, rs);
      // Initial bytes cross; the fd then shows the temporary end as no data.
      await waitFor(async () => {
        const i = await ss.precopyInfo();
        return i.initialBytes === 0 && i.dirtyBytes === 0;
      });
      const afterInitial = link.bytes();
      // The running device dirties pages: dirty bytes appear and drain through the same fd.
      await a.call('dirtyPages', 64);
      expect((await ss.precopyInfo()).dirtyBytes).toBeGreaterThan(0);
      await waitFor(async () => (await ss.precopyInfo()).dirtyBytes === 0 && link.bytes() > afterInitial);
      expect(link.ended()).toBe(false);
      await src.setState(S.STOP_COPY);
      await link.done;
      expect(link.ended()).toBe(true);
      expect(ss.eofError()).toBeNull();
      await dst.setState(S.STOP);
      await src.setState(S.STOP);
      expect(ss.disabled).toBe(true);
      expect(rs.disabled).toBe(true);
      expect(await b.digest()).toBe(await a.digest());
    },
  );

  it('through the streams layer: SavingStream on the saving fd piped into ResumingStream on the resuming fd', async () => {
    const opts = { size: 8 << 20, flags: 0x5, seed: 5, profile: 'mixed' };
    const [a, b] = await Promise.all([host('sim', opts), host('sim', opts)]);
    const src = new MigrationCore(a);
    const dst = new MigrationCore(b);
    const ss = (await src.setState(S.PRE_COPY)) as HostedSavingSession;
    const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
    const reader = createSavingStream(ss);
    const writer = createResumingStream(rs);
    expect(reader.path).toBe('epoll');
    expect(writer.path).toBe('epoll');
    const done = pipeline(reader, writer);
    // The FIFO shows the PRE_COPY temporary end as no data: wait until the host says every
    // initial byte left the device and the child, then switch over.
    await waitFor(async () => (await ss.precopyInfo()).initialBytes === 0);
    const precopyRead = reader.bytesRead;
    expect(precopyRead).toBeGreaterThan(0);
    await src.setState(S.STOP_COPY);
    await done;
    await dst.setState(S.STOP);
    await src.setState(S.STOP);
    expect(await b.digest()).toBe(await a.digest());
    expect(reader.bytesRead).toBeGreaterThanOrEqual(precopyRead);
    ss.close();
    rs.close();
  });

  it('STOP_COPY only (flags 0x1), random content: digests equal', async () => {
    const opts = { size: 4 << 20, flags: 0x1, seed: 7, profile: 'random' };
    const [a, b] = await Promise.all([host('sim', opts), host('sim', opts)]);
    const src = new MigrationCore(a);
    const dst = new MigrationCore(b);
    await a.call('dirtyPages', 10);
    const size = await src.stopCopySize();
    const ss = (await src.setState(S.STOP_COPY)) as HostedSavingSession;
    // The child starts pumping at once: what is left shrinks by what it already took.
    expect(await a.stopCopySize()).toBeLessThanOrEqual(size);
    const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
    const link = connect(ss, rs);
    await link.done;
    expect(link.bytes()).toBe(size);
    await dst.setState(S.STOP);
    expect(await b.digest()).toBe(await a.digest());
  });

  it('an asynchronous reset after N bytes: the core hears it, the parent reads EOF as ENODEV', async () => {
    const a = await host('sim', { size: 8 << 20, flags: 0x5, faults: { resetAfterBytes: 1 << 20 } }, 128 << 10);
    const core = new MigrationCore(a);
    const resets: unknown[] = [];
    core.on('reset', (e) => resets.push(e));
    const ss = (await core.setState(S.PRE_COPY)) as HostedSavingSession;
    const sock = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    let bytes = 0;
    sock.on('data', (c: Buffer) => (bytes += c.length));
    await once(sock, 'end');
    expect(ss.eofError()).toMatchObject({ code: 'ENODEV' });
    expect(ss.disabled).toBe(true);
    // The device handed out 1 MiB before it reset; what had not reached the pipe by then is gone,
    // as a kernel data fd returns ENODEV however much the driver had buffered.
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThanOrEqual((1 << 20) + (128 << 10));
    await waitFor(() => resets.length === 1);
    expect(core.state).toBe(S.RUNNING);
    expect(core.session).toBeNull();
    expect(await a.getState()).toBe(S.RUNNING);
  });

  it('cancelling PRE_COPY (-> RUNNING) mid-stream: the reader sees EOF meaning ENODEV; a second PRE_COPY starts over', async () => {
    const a = await host('sim', { size: 32 << 20, flags: 0x5, generationRate: 64 << 20 }, 256 << 10);
    const core = new MigrationCore(a);
    const closes: string[] = [];
    core.on('session-close', (e) => closes.push(e.reason));
    const ss = (await core.setState(S.PRE_COPY)) as HostedSavingSession;
    const sock = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    let bytes = 0;
    sock.on('data', (c: Buffer) => (bytes += c.length));
    const ended = once(sock, 'end');
    await waitFor(() => bytes > 0);
    await core.setState(S.RUNNING);
    await ended;
    expect(ss.eofError()).toMatchObject({ code: 'ENODEV' });
    expect(closes).toEqual(['arc']);
    expect(bytes).toBeLessThan(32 << 20);
    const s2 = (await core.setState(S.PRE_COPY)) as HostedSavingSession;
    expect(s2.id).not.toBe(ss.id);
    expect((await s2.precopyInfo()).initialBytes).toBeGreaterThan(0);
  });

  it('a read fault: the reader sees EOF after the notice, and eofError()/error carry the device\'s code', async () => {
    const a = await host('sim', { size: 8 << 20, flags: 0x1, faults: { readError: { afterBytes: 1 << 20, code: 'EIO' } } }, 256 << 10);
    const core = new MigrationCore(a);
    const ss = (await core.setState(S.STOP_COPY)) as HostedSavingSession;
    const sock = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    let bytes = 0;
    sock.on('data', (c: Buffer) => (bytes += c.length));
    await once(sock, 'end');
    expect(bytes).toBe(1 << 20);
    expect(ss.eofError()).toMatchObject({ code: 'EIO' });
    expect(ss.error).toMatchObject({ code: 'EIO' });
    await expect(ss.precopyInfo()).rejects.toMatchObject({ code: 'EIO' });
  });

  it('a stalled device read does not keep close() from ending the child', async () => {
    const a = await host('sim', { size: 8 << 20, flags: 0x1, faults: { stallRead: { afterBytes: 1 << 20, ms: Infinity } } }, 256 << 10);
    const core = new MigrationCore(a);
    const ss = (await core.setState(S.STOP_COPY)) as HostedSavingSession;
    const sock = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    let bytes = 0;
    sock.on('data', (c: Buffer) => (bytes += c.length));
    const ended = once(sock, 'end');
    await waitFor(() => bytes === 1 << 20);
    const t0 = Date.now();
    await a.close();
    expect(Date.now() - t0).toBeLessThan(3_000);
    // The child is gone: the reader sees EOF, and the session says why.
    await ended;
    expect(ss.eofError()).toMatchObject({ code: ErrorCodes.TRANSPORT });
    sock.destroy();
  });

  it('a write fault in the destination fails RESUMING -> STOP with the device\'s code and leaves it in RESUMING', async () => {
    const opts = { size: 4 << 20, flags: 0x1, seed: 3 };
    const [a, b] = await Promise.all([host('sim', opts), host('sim', { ...opts, faults: { writeError: { afterBytes: 1 << 20, code: 'EFAULT' } } })]);
    const src = new MigrationCore(a);
    const dst = new MigrationCore(b);
    const ss = (await src.setState(S.STOP_COPY)) as HostedSavingSession;
    const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
    const srcSock = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    const dstSock = new Socket({ fd: rs.takeFd(), readable: false, writable: true });
    srcSock.pipe(dstSock);
    const [err] = (await once(dstSock, 'error')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('EPIPE');
    srcSock.destroy();
    await waitFor(() => rs.error !== null);
    expect(rs.error).toMatchObject({ code: 'EFAULT' });
    await expect(dst.setState(S.STOP)).rejects.toMatchObject({ code: 'EFAULT' });
    expect(await b.getState()).toBe(S.RESUMING);
  });
});

describe('device host: MttyDevice', () => {
  it.each([1, 2] as const)('%i port(s): header-only PRE_COPY, then the full image through FIFOs; digests equal', async (ports) => {
    const [a, b] = await Promise.all([host('mtty', { ports }), host('mtty', { ports })]);
    const src = new MigrationCore(a);
    const dst = new MigrationCore(b);
    const ss = (await src.setState(S.PRE_COPY)) as HostedSavingSession;
    const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
    const link = connect(ss, rs);
    // mtty streams only its header in PRE_COPY, then reads return 0: a temporary end, no EOF.
    await waitFor(() => link.bytes() === MTTY_HEADER_SIZE);
    await new Promise((r) => setTimeout(r, 100));
    expect(link.ended()).toBe(false);
    await src.setState(S.STOP_COPY);
    await link.done;
    expect(link.bytes()).toBe(mttyDataSize(ports));
    await dst.setState(S.STOP);
    expect(await b.digest()).toBe(await a.digest());
  });

  it('a bad header written into the resuming FIFO fails with EFAULT', async () => {
    const b = await host('mtty', { ports: 1 });
    const dst = new MigrationCore(b);
    const rs = (await dst.setState(S.RESUMING)) as HostedResumingSession;
    const bad = Buffer.alloc(MTTY_HEADER_SIZE);
    bad.writeBigUInt64LE(BigInt(MTTY_MAGIC) ^ 1n, 0);
    let err: unknown = null;
    try {
      let rest: Buffer = bad;
      while (rest.length > 0) rest = rest.subarray(await rs.write(rest));
      // The child fails the header check asynchronously; the next write reports it.
      await waitFor(() => rs.error !== null);
      await rs.write(Buffer.alloc(1));
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'EFAULT' });
    await expect(dst.setState(S.STOP)).rejects.toMatchObject({ code: 'EFAULT' });
  });
});
