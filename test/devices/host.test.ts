/**
 * Device host with a small kernel-like driver (host-fixture-driver.ts) in a real child process:
 * sessions are real FIFOs read and written here with plain net/fs code.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { once } from 'node:events';
import { Socket } from 'node:net';
import { readSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { DeviceState } from '../../src/fsm/states.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import type { MigError } from '../../src/fsm/errors.js';
import { spawnDeviceHost, nodeArgsForTs } from '../../src/devices/host.js';
import { MALLOC_TUNING_ENV, withMallocTuning } from '../../src/streams/malloc-tuning.js';
import type { HostedDevice, HostedSavingSession, HostedResumingSession } from '../../src/devices/host.js';

const FIXTURE = fileURLToPath(new URL('./host-fixture-driver.ts', import.meta.url));
const ORPHAN_PARENT = fileURLToPath(new URL('./host-orphan-parent.ts', import.meta.url));
const S = DeviceState;

const hosts: HostedDevice[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

async function fixture(options: Record<string, unknown>, chunkSize?: number): Promise<HostedDevice> {
  const h = await spawnDeviceHost({ device: { module: FIXTURE, export: 'createDevice' }, options, chunkSize });
  hosts.push(h);
  return h;
}

/** Running (a zombie whose reaper is slow counts as gone: it holds no fds and runs no code). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Read a saving fd with a plain net.Socket until EOF; the socket owns the fd from then on. */
function readAll(session: HostedSavingSession, onChunk?: (b: Buffer) => void): Promise<{ bytes: number; hash: string; eof: MigError | null }> {
  return new Promise((resolve, reject) => {
    const sock = new Socket({ fd: session.takeFd(), readable: true, writable: false });
    const h = createHash('sha256');
    let bytes = 0;
    sock.on('data', (b: Buffer) => {
      bytes += b.length;
      h.update(b);
      onChunk?.(b);
    });
    sock.on('end', () => {
      sock.destroy();
      const eof = session.eofError();
      // Already settled (the child waits for our ack before it closes): the round trip agrees.
      session.settledEofError().then((settled) => {
        expect(settled?.code).toBe(eof?.code);
        resolve({ bytes, hash: h.digest('hex'), eof });
      }, reject);
    });
    sock.on('error', reject);
  });
}

describe('device host: fixture driver over FIFOs', () => {
  it('saves through the saving FIFO; the fd is not seekable (ESPIPE)', async () => {
    const dev = await fixture({ size: 1 << 20, seed: 7 });
    expect(dev.identity()).toMatchObject({ kind: 'fixture', flags: 0x5 });
    expect(dev.flags).toBe(0x5);
    expect(await dev.getState()).toBe(S.RUNNING);
    expect(await dev.step(S.RUNNING, S.STOP)).toBeNull();
    const s = (await dev.step(S.STOP, S.STOP_COPY)) as HostedSavingSession;
    expect(s.direction).toBe('saving');
    expect(typeof s.fd).toBe('number');
    expect(() => readSync(s.fd as number, Buffer.alloc(16), 0, 16, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' }));
    const got = await readAll(s);
    expect(got.bytes).toBe(16 + (1 << 20));
    expect(got.eof).toBeNull();
    expect('sha256:' + got.hash).toBe('sha256:' + (await dev.digest()));
    await dev.step(S.STOP_COPY, S.STOP);
    expect(s.disabled).toBe(true);
    s.close();
  });

  it.each(['enomsg', 'zero'] as const)('PRE_COPY (temporary end %s) then STOP_COPY into a second host through FIFOs: digests equal', async (precopyEmpty) => {
    const size = 3 << 20;
    const precopyBytes = 1 << 20;
    const a = await fixture({ size, seed: 3, precopyBytes, precopyEmpty, maxRead: 100_000 }, 256 << 10);
    const b = await fixture({ size, seed: 3 });
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    expect(await b.step(S.RUNNING, S.STOP)).toBeNull();
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    expect(rs.direction).toBe('resuming');
    expect(() => readSync(rs.fd as number, Buffer.alloc(1), 0, 1, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' }));
    const src = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    const dst = new Socket({ fd: rs.takeFd(), readable: false, writable: true });
    let got = 0;
    let ended = false;
    src.on('data', (c: Buffer) => (got += c.length));
    src.on('end', () => (ended = true));
    src.pipe(dst);
    // Initial data arrives; then the device is at its temporary end and the fd just has no data.
    await waitFor(async () => got === 16 + precopyBytes && (await ss.precopyInfo()).initialBytes === 0);
    await new Promise((r) => setTimeout(r, 120));
    expect(ended).toBe(false);
    expect(got).toBe(16 + precopyBytes);
    expect(ss.disabled).toBe(false);
    await a.step(S.PRE_COPY, S.STOP_COPY);
    await once(dst, 'close');
    expect(ended).toBe(true);
    expect(got).toBe(16 + size);
    expect(ss.eofError()).toBeNull();
    await a.step(S.STOP_COPY, S.STOP);
    expect(ss.disabled).toBe(true);
    await b.step(S.RESUMING, S.STOP);
    expect(rs.disabled).toBe(true);
    expect(await b.digest()).toBe(await a.digest());
  });

  it('precopyInfo counts bytes the child took from the device but the parent could not read yet', async () => {
    const precopyBytes = 2 << 20;
    const a = await fixture({ size: 4 << 20, precopyBytes }, 256 << 10);
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    // Nobody reads: the child fills the pipe, holds one more chunk and stops (backpressure).
    await waitFor(async () => ((await a.call('savedBytes')) as number) > 0);
    await new Promise((r) => setTimeout(r, 100));
    const taken = (await a.call('savedBytes')) as number;
    const info = await ss.precopyInfo();
    const inPipe = 16 + precopyBytes - info.initialBytes;
    // The estimate misses only what sits in the pipe buffer (64 KiB by default).
    expect(inPipe).toBeGreaterThan(0);
    expect(inPipe).toBeLessThanOrEqual(1 << 20);
    // Bounded: the child does not read the device ahead of the pipe by more than one chunk plus the pipe.
    expect(taken).toBeLessThanOrEqual(inPipe + 2 * (256 << 10));
    expect(info.dirtyBytes).toBe(0);
    // Drain it with the method-backed read: EAGAIN while nothing is ready, never ENOMSG or EOF.
    let got = 0;
    const buf = Buffer.alloc(1 << 16);
    while (got < 16 + precopyBytes) {
      try {
        got += await ss.read(buf);
      } catch (err) {
        expect((err as MigError).code).toBe('EAGAIN');
        await new Promise((r) => setTimeout(r, 2));
      }
    }
    expect(got).toBe(16 + precopyBytes);
    await waitFor(async () => (await ss.precopyInfo()).initialBytes === 0);
    await expect(ss.read(buf)).rejects.toMatchObject({ code: 'EAGAIN' });
    // STOP_COPY: the rest, then 0 (the true end) from read().
    await a.step(S.PRE_COPY, S.STOP_COPY);
    for (;;) {
      try {
        const n = await ss.read(buf);
        if (n === 0) break;
        got += n;
      } catch (err) {
        expect((err as MigError).code).toBe('EAGAIN');
        await new Promise((r) => setTimeout(r, 2));
      }
    }
    expect(got).toBe(16 + (4 << 20));
    await a.step(S.STOP_COPY, S.STOP);
    await expect(ss.read(buf)).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(ss.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('method-backed write(): RESUMING -> STOP loads bytes still sitting in the pipe buffer', async () => {
    const size = 1 << 20;
    const a = await fixture({ size, seed: 11 });
    const b = await fixture({ size, seed: 11 });
    await a.step(S.RUNNING, S.STOP);
    const ss = (await a.step(S.STOP, S.STOP_COPY)) as HostedSavingSession;
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    const src = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    for await (const chunk of src as AsyncIterable<Buffer>) {
      let rest = chunk;
      while (rest.length > 0) rest = rest.subarray(await rs.write(rest));
    }
    // The resuming fd is still open (no EOF for the child): the arc must first drain the pipe.
    await b.step(S.RESUMING, S.STOP);
    expect(await b.digest()).toBe(await a.digest());
    await expect(rs.write(Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENODEV' });
    rs.close();
    rs.close();
  });

  it.each([
    { seed: 1, chunkSize: 4093, maxRead: 777 },
    { seed: 2, chunkSize: 65536, maxRead: 100_003 },
    { seed: 3, chunkSize: 1 << 20, maxRead: 1 },
  ])('odd segmentation on both sides (device chunk $chunkSize, device reads <= $maxRead, random parent writes): digests equal', async ({ seed, chunkSize, maxRead }) => {
    const size = maxRead === 1 ? 64 << 10 : 1 << 20;
    const a = await fixture({ size, seed, maxRead, precopyBytes: size >> 1 }, chunkSize);
    const b = await fixture({ size, seed }, chunkSize);
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    let rng = seed * 2654435761;
    const next = (n: number): number => {
      rng = (Math.imul(rng, 1103515245) + 12345) >>> 0;
      return 1 + (rng % n);
    };
    const buf = Buffer.alloc(256 << 10);
    let total = 0;
    let switched = false;
    for (;;) {
      let n: number;
      try {
        n = await ss.read(buf.subarray(0, next(buf.length)));
      } catch (err) {
        expect((err as MigError).code).toBe('EAGAIN');
        if (!switched && (await ss.precopyInfo()).initialBytes === 0 && total === 16 + (size >> 1)) {
          await a.step(S.PRE_COPY, S.STOP_COPY);
          switched = true;
        }
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      if (n === 0) break;
      total += n;
      // Re-segment: random pieces through the method-backed write (looping over partial writes).
      let rest = Buffer.from(buf.subarray(0, n));
      while (rest.length > 0) {
        const piece = rest.subarray(0, next(rest.length));
        const w = await rs.write(piece);
        rest = rest.subarray(w);
      }
    }
    expect(switched).toBe(true);
    expect(total).toBe(16 + size);
    await b.step(S.RESUMING, S.STOP);
    expect(await b.digest()).toBe(await a.digest());
  });

  it('RESUMING -> STOP on an incomplete image fails EINVAL and stays in RESUMING', async () => {
    const b = await fixture({ size: 1 << 20 });
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    const hdr = Buffer.alloc(16);
    hdr.writeUInt32LE(0x54534f48, 0);
    hdr.writeBigUInt64LE(BigInt(1 << 20), 8);
    expect(await rs.write(hdr)).toBe(16);
    await expect(b.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await b.getState()).toBe(S.RESUMING);
    expect(rs.disabled).toBe(false);
  });

  it.each(['async', 'explicit'] as const)('a reset (%s) mid-stream disables the session before the parent reads EOF: ENODEV, not the end', async (kind) => {
    const size = 8 << 20;
    const a = await fixture({ size, precopyBytes: size, maxRead: 32 << 10 }, 64 << 10);
    const resets: number[] = [];
    a.on('reset', () => resets.push(Date.now()));
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    let fired = false;
    const got = await readAll(ss, () => {
      if (fired) return;
      fired = true;
      if (kind === 'async') void a.call('resetSoon', 0);
      else void a.reset();
    });
    expect(got.bytes).toBeGreaterThan(0);
    expect(got.bytes).toBeLessThan(16 + size);
    expect(got.eof).toMatchObject({ code: 'ENODEV' });
    expect(ss.disabled).toBe(true);
    expect(await a.getState()).toBe(S.RUNNING);
    await expect(ss.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
    // Only the device's own reset is news to the parent; an explicit reset() is not echoed.
    expect(resets).toHaveLength(kind === 'async' ? 1 : 0);
    // The device works on: a new saving session streams from the start.
    const s2 = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    expect(s2.id).not.toBe(ss.id);
    await a.step(S.PRE_COPY, S.STOP_COPY);
    const all = await readAll(s2);
    expect(all.bytes).toBe(16 + size);
    expect(all.eof).toBeNull();
  });

  it('disable() in the parent mid-stream: the child stops, the reader sees EOF meaning ENODEV, data calls fail ENODEV', async () => {
    const size = 8 << 20;
    const a = await fixture({ size, precopyBytes: size, maxRead: 32 << 10 }, 64 << 10);
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    let disabledAt = -1;
    const got = await readAll(ss, () => {
      if (disabledAt >= 0) return;
      disabledAt = Date.now();
      ss.disable();
      ss.disable();
    });
    expect(got.eof).toMatchObject({ code: 'ENODEV' });
    expect(got.bytes).toBeLessThan(16 + size);
    await expect(ss.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(ss.read(Buffer.alloc(8))).rejects.toMatchObject({ code: 'ENODEV' });
    // The device stopped handing out data: the child disabled its session too.
    const taken = (await a.call('savedBytes')) as number;
    await new Promise((r) => setTimeout(r, 50));
    expect((await a.call('savedBytes')) as number).toBe(taken);
    ss.close();
    expect(a.sessions).toHaveLength(0);
  });

  it('a reset while the parent writes a resuming session: its writes fail ENODEV', async () => {
    const a = await fixture({ size: 4 << 20, seed: 4 });
    const b = await fixture({ size: 4 << 20, seed: 4 });
    await a.step(S.RUNNING, S.STOP);
    const ss = (await a.step(S.STOP, S.STOP_COPY)) as HostedSavingSession;
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    const src = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    let written = 0;
    let err: MigError | null = null;
    for await (const chunk of src as AsyncIterable<Buffer>) {
      try {
        let rest = chunk;
        while (rest.length > 0) {
          const n = await rs.write(rest);
          written += n;
          rest = rest.subarray(n);
          if (written >= 1 << 20 && written - n < 1 << 20) void b.reset();
        }
      } catch (e) {
        err = e as MigError;
        break;
      }
    }
    src.destroy();
    expect(err).toMatchObject({ code: 'ENODEV' });
    expect(rs.disabled).toBe(true);
    expect(written).toBeLessThan(16 + (4 << 20));
    expect(await b.getState()).toBe(S.RUNNING);
  });

  it('a bad stream written into the resuming FIFO: the next write and RESUMING -> STOP fail with the device\'s EFAULT', async () => {
    const b = await fixture({ size: 1 << 20 });
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    const garbage = Buffer.alloc(64 << 10, 0xab);
    let err: MigError | null = null;
    for (let i = 0; i < 200 && !err; i++) {
      try {
        await rs.write(garbage);
      } catch (e) {
        err = e as MigError;
      }
    }
    expect(err).toMatchObject({ code: 'EFAULT' });
    expect(rs.error).toMatchObject({ code: 'EFAULT' });
    await expect(rs.write(garbage)).rejects.toMatchObject({ code: 'EFAULT' });
    await expect(b.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EFAULT' });
    expect(await b.getState()).toBe(S.RESUMING);
    // A reset abandons the rejected image, as with the kernel's drivers.
    await b.reset();
    expect(await b.getState()).toBe(S.RUNNING);
    expect(rs.disabled).toBe(true);
  });

  it('a device write error mid-stream reaches a net.Socket writer as EPIPE and the arc as the device\'s EIO', async () => {
    // The writer can only see EPIPE if it still has bytes to write when the child closes its end.
    // Past the failing byte the host legitimately absorbs up to its read queue (chunkSize, 1 MiB by
    // default, plus one FIFO read) and the pipe buffer; a writer that finished within that window
    // sees no error at all (it happened with a 2 MiB stream when the device was the slowest part).
    // So the stream goes on for several times that window after the failing byte.
    const failWriteAt = 1 << 20;
    const size = 4 << 20;
    const a = await fixture({ size, seed: 5 });
    const b = await fixture({ size, seed: 5, failWriteAt });
    await a.step(S.RUNNING, S.STOP);
    const ss = (await a.step(S.STOP, S.STOP_COPY)) as HostedSavingSession;
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    const src = new Socket({ fd: ss.takeFd(), readable: true, writable: false });
    const dst = new Socket({ fd: rs.takeFd(), readable: false, writable: true });
    const failed = writerError(dst, 20_000, () => `rs.error=${rs.error?.code ?? null}`);
    src.pipe(dst);
    const werr = await failed;
    expect(werr.code).toBe('EPIPE');
    expect(dst.bytesWritten).toBeLessThan(16 + size);
    src.destroy();
    await waitFor(() => rs.error !== null);
    expect(rs.error).toMatchObject({ code: 'EIO' });
    await expect(b.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EIO' });
    expect(await b.getState()).toBe(S.RESUMING);
  });

  it('killing the child fails pending and later calls with VFIO_MIG_ERR_TRANSPORT, and an open session\'s EOF says so', async () => {
    const a = await fixture({ size: 4 << 20, precopyBytes: 1 << 10 });
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    const reading = readAll(ss);
    const pending = a.call('stall', 30_000);
    const exited = once(a, 'exit');
    process.kill(a.pid, 'SIGKILL');
    await expect(pending).rejects.toMatchObject({ code: ErrorCodes.TRANSPORT });
    await expect(a.getState()).rejects.toMatchObject({ code: ErrorCodes.TRANSPORT });
    await expect(a.step(S.PRE_COPY, S.STOP_COPY)).rejects.toMatchObject({ code: ErrorCodes.TRANSPORT });
    await expect(ss.precopyInfo()).rejects.toMatchObject({ code: ErrorCodes.TRANSPORT });
    const got = await reading;
    expect(got.eof).toMatchObject({ code: ErrorCodes.TRANSPORT });
    // The device is gone, as after a hot unplug: a consumer that only asks `disabled` never takes
    // this EOF for the end of the stream.
    expect(ss.disabled).toBe(true);
    expect(ss.error).toMatchObject({ code: ErrorCodes.TRANSPORT });
    const [info] = (await exited) as [{ signal: string }];
    expect(info.signal).toBe('SIGKILL');
    expect(existsSync(a.dir)).toBe(false);
    await a.close();
  });

  it('close() leaves no child process, no temp files and no open session fds', async () => {
    const a = await fixture({ size: 1 << 20, precopyBytes: 1 << 19 });
    const b = await fixture({ size: 1 << 20 });
    const ss = (await a.step(S.RUNNING, S.PRE_COPY)) as HostedSavingSession;
    await b.step(S.RUNNING, S.STOP);
    const rs = (await b.step(S.STOP, S.RESUMING)) as HostedResumingSession;
    // Both ends open: the FIFO names are gone already.
    await waitFor(() => readdirSync(a.dir).length === 0 && readdirSync(b.dir).length === 0);
    expect(a.sessions).toHaveLength(1);
    const pids = [a.pid, b.pid];
    const dirs = [a.dir, b.dir];
    await Promise.all([a.close(), b.close(), a.close()]);
    for (const pid of pids) expect(alive(pid)).toBe(false);
    for (const dir of dirs) expect(existsSync(dir)).toBe(false);
    expect(ss.fd).toBeNull();
    expect(rs.fd).toBeNull();
    await expect(a.getState()).rejects.toMatchObject({ code: ErrorCodes.TRANSPORT });
  });

  it('a parent that dies without close(): its host child exits and removes the host directory', async () => {
    const parent = spawn(process.execPath, nodeArgsForTs(ORPHAN_PARENT).concat(FIXTURE, 'die'), { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    parent.stdout.setEncoding('utf8');
    parent.stdout.on('data', (s: string) => (out += s));
    const [code] = (await once(parent, 'exit')) as [number];
    expect(code).toBe(0);
    const { pid, dir } = JSON.parse(out) as { pid: number; dir: string };
    expect(pid).toBeGreaterThan(0);
    await waitFor(() => !alive(pid) && !existsSync(dir), 20_000).catch((e: Error) => {
      // Say what was left behind, for a failure on a loaded machine.
      let status = 'no /proc entry';
      try {
        status = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').slice(0, 3).join('; ');
      } catch {}
      throw new Error(`${e.message}: child alive=${alive(pid)} (${status}), dir exists=${existsSync(dir)}`);
    });
  });

  it('after close() nothing of the host keeps the parent process alive', async () => {
    const parent = spawn(process.execPath, nodeArgsForTs(ORPHAN_PARENT).concat(FIXTURE, 'close'), { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let printedAt = 0;
    parent.stdout.setEncoding('utf8');
    parent.stdout.on('data', (s: string) => {
      out += s;
      printedAt ||= Date.now();
    });
    const [code] = (await once(parent, 'exit')) as [number];
    expect(code).toBe(0);
    // Not a performance figure: the shutdown timeout is 3 s, and a leaked timer or handle would
    // hold the process at least that long after close() resolved.
    expect(Date.now() - printedAt).toBeLessThan(2_500);
    const { pid, dir } = JSON.parse(out) as { pid: number; dir: string };
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('reports device errors with their codes and rejects unknown methods and devices', async () => {
    const a = await fixture({ size: 1 << 16 });
    await expect(a.step(S.STOP, S.RESUMING)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(a.call('noSuchMethod')).rejects.toMatchObject({ code: ErrorCodes.USAGE });
    await expect(spawnDeviceHost({ device: { module: FIXTURE, export: 'nope' } })).rejects.toMatchObject({ code: ErrorCodes.USAGE });
    expect(await a.stopCopySize()).toBe(16 + (1 << 16));
  });

  it('starts the child with the env given (glibc allocator settings travel this way), else with ours', async () => {
    const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
    // Without allocator settings of the runner's own (withMallocTuning leaves a caller's in place).
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MALLOC_') && k !== 'GLIBC_TUNABLES'));
    const tuned = await spawnDeviceHost({ device: { module: FIXTURE, export: 'createDevice' }, options: { size: 4096 }, env: withMallocTuning({ ...base, VFIO_MIG_HOST_ENV_TEST: 'x' }) });
    hosts.push(tuned);
    expect(environ(tuned.pid)).toEqual(expect.arrayContaining(['VFIO_MIG_HOST_ENV_TEST=x', ...Object.entries(MALLOC_TUNING_ENV).map(([k, v]) => `${k}=${v}`)]));
    expect(await tuned.stopCopySize()).toBe(16 + 4096);
    const plain = await fixture({ size: 4096 });
    expect(environ(plain.pid)).not.toContain('VFIO_MIG_HOST_ENV_TEST=x');
    expect(environ(plain.pid)).toContain(`PATH=${process.env.PATH}`);
  });
});

/**
 * The first 'error' of a writer socket, bounded: rejects with what happened instead (it finished
 * and closed without an error, or nothing at all within `ms`), never left to the test timeout.
 */
function writerError(sock: Socket, ms: number, why: () => string): Promise<NodeJS.ErrnoException> {
  return new Promise((resolve, reject) => {
    let finished = false;
    const timer = setTimeout(
      () => reject(new Error(`writer saw no error within ${ms} ms (${sock.bytesWritten} bytes written, finished=${finished}, ${why()})`)),
      ms,
    );
    sock.once('finish', () => (finished = true));
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err);
    });
    sock.once('close', (hadError: boolean) => {
      if (hadError) return;
      clearTimeout(timer);
      reject(new Error(`writer closed without an error after writing all ${sock.bytesWritten} bytes (finished=${finished}, ${why()})`));
    });
  });
}

async function waitFor(cond: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error('waitFor: timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}
