/**
 * FUSE data fds served in this process (FuseBridge + the C server): a SimDevice's sessions as real
 * kernel files with the VFIO data fd's semantics. Reads and writes here are async (libuv threads):
 * this process's main thread answers the server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { constants as fsc, existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceState as S } from '../../src/fsm/states.js';
import { ERRNO, migError } from '../../src/fsm/errors.js';
import { FuseBridge, fuseServerPath, mountedPaths } from '../../src/devices/fuse-bridge.js';
import { MethodSavingSession } from '../../src/devices/method-session.js';
import { SimDevice } from '../../src/devices/sim-device.js';
import { resuming, saving, goTo } from './sim-helpers.js';
import { FUSE, perl, readOutcome, reportSkip, sleep, writeAllFd } from './fuse-helpers.js';

const TESTS = 12;
reportSkip('fuse-bridge.test.ts', TESTS);

const MiB = 1 << 20;
const ENOMSG = -ERRNO.ENOMSG;
const ENODEV = -ERRNO.ENODEV;

/** Read until the first result that is not data; every chunk goes to `sink`. */
async function pass(fd: number, sink?: (b: Buffer) => Promise<void>): Promise<{ bytes: number; end: number }> {
  const buf = Buffer.allocUnsafe(MiB);
  let bytes = 0;
  for (;;) {
    const n = await readOutcome(fd, buf);
    if (n <= 0) return { bytes, end: n };
    bytes += n;
    if (sink) await sink(Buffer.from(buf.subarray(0, n)));
  }
}

/** select(2) on a file from another process: "ready" or "timeout". */
const SELECT = `
open(my $f, "<", $ARGV[0]) or die "open: $!";
my $r = ""; vec($r, fileno($f), 1) = 1;
my $n = select(my $ro = $r, undef, undef, $ARGV[1]);
print $n > 0 ? "ready" : "timeout";`;

/** lseek(fd, 0, SEEK_SET): prints "ok" or "err=<errno>". */
const LSEEK = `
open(my $f, "<", $ARGV[0]) or die "open: $!";
my $r = sysseek($f, 0, 0);
print defined $r ? "ok" : "err=" . ($! + 0);`;

/** A read interrupted by SIGALRM: prints "err=<errno>" or "n=<bytes>". */
const INTERRUPTED_READ = `
$SIG{ALRM} = sub {};
open(my $f, "<", $ARGV[0]) or die "open: $!";
alarm 1;
my $n = sysread($f, my $b, 100);
print defined $n ? "n=$n" : "err=" . ($! + 0);`;

describe.skipIf(!FUSE.ok)('FUSE data fds: a SimDevice served by an in-process bridge', () => {
  let bridge: FuseBridge;
  const mounts: string[] = [];

  beforeAll(async () => {
    bridge = await FuseBridge.start();
    mounts.push(bridge.mountpoint);
  });

  afterAll(async () => {
    await bridge?.close();
    // Never a stale mount or a leftover directory.
    const live = mountedPaths();
    for (const m of mounts) {
      expect(live.has(m)).toBe(false);
      expect(existsSync(m)).toBe(false);
    }
  });

  it('migrates through the saving and resuming files: ENOMSG at PRE_COPY ends, 0 forever at STOP_COPY, digest verifies', async () => {
    const size = 4 * MiB;
    const src = new SimDevice({ size, seed: 11 });
    const dst = new SimDevice({ size, seed: 11 });
    const rs = resuming(await goTo(dst, S.RESUMING));
    const ss = saving(await goTo(src, S.PRE_COPY));
    const fs = await bridge.exportSaving(ss, { deviceState: () => src.state });
    const fr = await bridge.exportResuming(rs);
    expect((await fsp.readdir(bridge.mountpoint)).sort()).toEqual([fr.name, fs.name].sort());
    const inFile = await fsp.open(fs.path, fsc.O_RDONLY);
    const outFile = await fsp.open(fr.path, fsc.O_WRONLY);
    const sink = (b: Buffer): Promise<void> => writeAllFd(outFile.fd, b);
    try {
      const p1 = await pass(inFile.fd, sink);
      expect(p1.bytes).toBeGreaterThan(size);
      expect(p1.end).toBe(ENOMSG); // the temporary end, by number: Node has no name for ENOMSG
      expect(await readOutcome(inFile.fd, Buffer.alloc(64))).toBe(ENOMSG); // still temporary, not EOF
      src.dirtyPages(40);
      const p2 = await pass(inFile.fd, sink);
      expect(p2.bytes).toBeGreaterThan(0);
      expect(p2.end).toBe(ENOMSG);
      src.dirtyPages(7);
      await goTo(src, S.STOP_COPY);
      const p3 = await pass(inFile.fd, sink);
      expect(p3.bytes).toBeGreaterThan(0);
      expect(p3.end).toBe(0);
      for (let i = 0; i < 3; i++) expect(await readOutcome(inFile.fd, Buffer.alloc(64))).toBe(0); // 0 forever
      await goTo(src, S.STOP);
      // Leaving STOP_COPY disables the session: the open fd now says ENODEV.
      expect(await readOutcome(inFile.fd, Buffer.alloc(64))).toBe(ENODEV);
    } finally {
      await inFile.close();
      await outFile.close();
    }
    await goTo(dst, S.STOP);
    expect(dst.digest()).toBe(src.digest());
    fs.close();
    fr.close();
    src.close();
    dst.close();
  });

  it('a driver that answers 0 at the PRE_COPY end gives ENOMSG on the file, with or without the owner state', async () => {
    for (const withState of [true, false]) {
      const src = new SimDevice({ size: MiB, seed: 5, precopyEmpty: 'zero' });
      const ss = saving(await goTo(src, S.PRE_COPY));
      const f = await bridge.exportSaving(ss, withState ? { deviceState: () => src.state } : {});
      const ends: string[] = [];
      f.on('end', (k: string) => ends.push(k));
      const fh = await fsp.open(f.path, 'r');
      try {
        expect((await pass(fh.fd)).end).toBe(ENOMSG);
        expect(await readOutcome(fh.fd, Buffer.alloc(64))).toBe(ENOMSG);
        src.dirtyPages(3);
        const p2 = await pass(fh.fd);
        expect(p2.bytes).toBeGreaterThan(0);
        expect(p2.end).toBe(ENOMSG);
        await goTo(src, S.STOP_COPY);
        expect((await pass(fh.fd)).end).toBe(0);
        expect(await readOutcome(fh.fd, Buffer.alloc(64))).toBe(0);
        expect(ends).toEqual(['eos']);
      } finally {
        await fh.close();
      }
      f.close();
      src.close();
    }
  });

  it('a reset mid-stream surfaces ENODEV on the saving and the resuming file', async () => {
    const src = new SimDevice({ size: 8 * MiB, seed: 2 });
    const dst = new SimDevice({ size: 8 * MiB, seed: 2 });
    const fs = await bridge.exportSaving(saving(await goTo(src, S.PRE_COPY)), { deviceState: () => src.state });
    const fr = await bridge.exportResuming(resuming(await goTo(dst, S.RESUMING)));
    const ends: string[] = [];
    fs.on('end', (k: string) => ends.push(k));
    const inFile = await fsp.open(fs.path, 'r');
    const outFile = await fsp.open(fr.path, fsc.O_WRONLY);
    try {
      const buf = Buffer.allocUnsafe(MiB);
      expect(await readOutcome(inFile.fd, buf)).toBe(MiB);
      await writeAllFd(outFile.fd, buf);
      await src.reset();
      await dst.reset();
      expect(await readOutcome(inFile.fd, buf)).toBe(ENODEV);
      expect(await readOutcome(inFile.fd, buf)).toBe(ENODEV);
      await expect(writeAllFd(outFile.fd, buf)).rejects.toMatchObject({ code: 'ENODEV' });
      expect(ends).toEqual(['disabled']);
    } finally {
      await inFile.close();
      await outFile.close();
    }
    fs.close();
    fr.close();
  });

  it("a device write error reaches the writer as the device's errno, after the bytes it accepted", async () => {
    const src = new SimDevice({ size: MiB, seed: 6 });
    const dst = new SimDevice({ size: MiB, seed: 6, faults: { writeError: { afterBytes: 5000, code: 'EFAULT' } } });
    const fs = await bridge.exportSaving(saving(await goTo(src, S.STOP_COPY)));
    const fr = await bridge.exportResuming(resuming(await goTo(dst, S.RESUMING)));
    const ends: unknown[] = [];
    fr.on('end', (kind: string, err: { code?: string }) => ends.push([kind, err?.code]));
    const inFile = await fsp.open(fs.path, 'r');
    const outFile = await fsp.open(fr.path, fsc.O_WRONLY);
    try {
      const buf = Buffer.allocUnsafe(64 * 1024);
      expect(await readOutcome(inFile.fd, buf)).toBe(buf.length);
      const first = await outFile.write(buf);
      expect(first.bytesWritten).toBe(5000); // write(2) reports the progress made before the error
      await expect(outFile.write(buf.subarray(5000))).rejects.toMatchObject({ code: 'EFAULT', errno: -ERRNO.EFAULT });
      // The stream is broken: later writes keep the device's errno.
      await expect(outFile.write(buf)).rejects.toMatchObject({ code: 'EFAULT' });
      expect(ends).toEqual([['error', 'EFAULT']]);
    } finally {
      await inFile.close();
      await outFile.close();
    }
    fs.close();
    fr.close();
  });

  it('refuses positioned I/O (ESPIPE), the wrong direction (EBADF) and opens in the wrong mode (EACCES)', async () => {
    const src = new SimDevice({ size: MiB, seed: 3 });
    const dst = new SimDevice({ size: MiB, seed: 3 });
    const fs = await bridge.exportSaving(saving(await goTo(src, S.STOP_COPY)));
    const fr = await bridge.exportResuming(resuming(await goTo(dst, S.RESUMING)));
    const buf = Buffer.alloc(4096);
    const inFile = await fsp.open(fs.path, 'r');
    // 'w' is O_WRONLY|O_CREAT|O_TRUNC: the name exists and truncation is a no-op, as for a data fd.
    const outFile = await fsp.open(fr.path, 'w');
    try {
      await expect(inFile.read(buf, 0, 16, 0)).rejects.toMatchObject({ code: 'ESPIPE' });
      // lseek(2) (Node has none): a stream file has no position at all.
      expect((await perl(LSEEK, [fs.path]).done).out).toBe(`err=${ERRNO.ESPIPE}`);
      await expect(outFile.write(buf, 0, 16, 0)).rejects.toMatchObject({ code: 'ESPIPE' });
      await expect(inFile.write(buf, 0, 16)).rejects.toMatchObject({ code: 'EBADF' });
      await expect(outFile.read(buf, 0, 16)).rejects.toMatchObject({ code: 'EBADF' });
      await expect(fsp.open(fs.path, 'r+')).rejects.toMatchObject({ code: 'EACCES' });
      await expect(fsp.open(fs.path, fsc.O_WRONLY)).rejects.toMatchObject({ code: 'EACCES' });
      await expect(fsp.open(fr.path, 'r')).rejects.toMatchObject({ code: 'EACCES' });
      const st = await inFile.stat();
      expect(st.mode & 0o777).toBe(0o400);
      expect((await outFile.stat()).mode & 0o777).toBe(0o200);
      // Nothing was consumed by the refused calls: the stream starts at its first byte.
      expect(await readOutcome(inFile.fd, buf)).toBe(4096);
    } finally {
      await inFile.close();
      await outFile.close();
    }
    fs.close();
    fr.close();
  });

  it('a blocking read waits for data; an O_NONBLOCK read says EAGAIN; a signal interrupts a waiting read', async () => {
    let ready = false;
    let served = 0;
    const s = new MethodSavingSession({
      read(buf) {
        // Slow firmware: no data yet, then 100 bytes per read.
        if (!ready) throw migError('EAGAIN', 'not yet');
        buf.fill(0xab, 0, 100);
        served += 100;
        return 100;
      },
      precopyInfo() {
        return { initialBytes: ready ? 1 : 0, dirtyBytes: 0, reinit: false };
      },
    });
    const f = await bridge.exportSaving(s);
    const nb = await fsp.open(f.path, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const bl = await fsp.open(f.path, fsc.O_RDONLY);
    try {
      expect(await readOutcome(nb.fd, Buffer.alloc(100))).toBe(-ERRNO.EAGAIN);
      // A signal ends the wait with EINTR and consumes nothing.
      const child = perl(INTERRUPTED_READ, [f.path]);
      expect((await child.done).out).toBe(`err=${ERRNO.EINTR}`);
      const pending = readOutcome(bl.fd, Buffer.alloc(1000));
      await sleep(60);
      expect(served).toBe(0);
      ready = true;
      expect(await pending).toBe(100);
      expect(await readOutcome(nb.fd, Buffer.alloc(100))).toBe(100);
      // A reader waiting for data when the file is closed (disabled) wakes to ENODEV.
      ready = false;
      const waiting = readOutcome(bl.fd, Buffer.alloc(100));
      await sleep(30);
      f.close();
      expect(await waiting).toBe(ENODEV);
    } finally {
      await nb.close();
      await bl.close();
    }
    f.close();
  });

  it('poll: not readable at the PRE_COPY end, woken when the device dirties pages; readable at STOP_COPY and once disabled', async () => {
    const src = new SimDevice({ size: MiB, seed: 9 });
    const ss = saving(await goTo(src, S.PRE_COPY));
    const f = await bridge.exportSaving(ss, { deviceState: () => src.state });
    const fh = await fsp.open(f.path, 'r');
    try {
      expect((await perl(SELECT, [f.path, '0']).done).out).toBe('ready'); // initial data
      expect((await pass(fh.fd)).end).toBe(ENOMSG);
      expect((await perl(SELECT, [f.path, '0.3']).done).out).toBe('timeout');
      const waiter = perl(SELECT, [f.path, '20']);
      await sleep(200);
      expect(waiter.running()).toBe(true);
      src.dirtyPages(2);
      expect((await waiter.done).out).toBe('ready');
      expect((await pass(fh.fd)).bytes).toBeGreaterThan(0);
      await goTo(src, S.STOP_COPY);
      expect((await perl(SELECT, [f.path, '5']).done).out).toBe('ready');
      expect((await pass(fh.fd)).end).toBe(0);
      expect((await perl(SELECT, [f.path, '5']).done).out).toBe('ready'); // the end is readable forever
      await src.reset();
      expect((await perl(SELECT, [f.path, '5']).done).out).toBe('ready');
      expect(await readOutcome(fh.fd, Buffer.alloc(16))).toBe(ENODEV);
    } finally {
      await fh.close();
    }
    f.close();
    src.close();
  });

  it('names: duplicates and bad names refused; an unlinked file keeps its open fds; a closed file says ENODEV', async () => {
    const src = new SimDevice({ size: MiB, seed: 12 });
    const dst = new SimDevice({ size: MiB, seed: 12 });
    const ss = saving(await goTo(src, S.STOP_COPY));
    const rs = resuming(await goTo(dst, S.RESUMING));
    const f = await bridge.exportSaving(ss, { name: 'dev0-saving' });
    await expect(bridge.exportSaving(ss, { name: 'dev0-saving' })).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(bridge.exportSaving(ss, { name: 'a/b' })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
    await expect(bridge.exportSaving(rs as never)).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
    expect(await fsp.readdir(bridge.mountpoint)).toContain('dev0-saving');
    const openEvent = once(f, 'open'); // the server's OPENED note arrives on its own channel
    const fh = await fsp.open(f.path, 'r');
    await openEvent;
    const opened = f.opens;
    await f.unlink();
    expect(await fsp.readdir(bridge.mountpoint)).not.toContain('dev0-saving');
    await expect(fsp.open(f.path, 'r')).rejects.toMatchObject({ code: 'ENOENT' });
    try {
      expect(opened).toBe(1);
      expect(await readOutcome(fh.fd, Buffer.alloc(4096))).toBe(4096); // the fd outlives the name
      f.close();
      expect(await readOutcome(fh.fd, Buffer.alloc(4096))).toBe(ENODEV);
    } finally {
      await fh.close();
    }
    src.close();
    dst.close();
  });

  it('reads larger than 1 MiB are split into sequential requests in order; a blocked reader stalls no other file', async () => {
    let ready = false;
    const stuck = await bridge.exportSaving(
      new MethodSavingSession({
        read() {
          if (!ready) throw migError('EAGAIN', 'not yet');
          return 0;
        },
        precopyInfo() {
          throw migError('EINVAL', 'STOP_COPY');
        },
      }),
    );
    const stuckFh = await fsp.open(stuck.path, 'r');
    const blocked = readOutcome(stuckFh.fd, Buffer.alloc(64)); // waits in the bridge (EAGAIN, blocking fd)
    const size = 3 * MiB;
    const a = new SimDevice({ size, seed: 40 });
    const b = new SimDevice({ size, seed: 40 });
    const fa = await bridge.exportSaving(saving(await goTo(a, S.STOP_COPY)));
    const fb = await bridge.exportResuming(resuming(await goTo(b, S.RESUMING)));
    const inFh = await fsp.open(fa.path, 'r');
    const outFh = await fsp.open(fb.path, fsc.O_WRONLY);
    try {
      const big = Buffer.allocUnsafe(3 * MiB + 12345);
      let total = 0;
      for (;;) {
        const n = await readOutcome(inFh.fd, big);
        expect(n).toBeGreaterThanOrEqual(0);
        if (n === 0) break;
        total += n;
        await writeAllFd(outFh.fd, big.subarray(0, n)); // 3 MiB writes: split the same way
      }
      expect(total).toBeGreaterThan(size);
      await goTo(b, S.STOP);
      expect(b.digest()).toBe(a.digest());
      ready = true;
      expect(await blocked).toBe(0);
    } finally {
      ready = true;
      await stuckFh.close();
      await inFh.close();
      await outFh.close();
    }
    stuck.close();
    fa.close();
    fb.close();
  });

  it('unmounts and removes its directory on close, and after its server was killed', async () => {
    const b = await FuseBridge.start();
    mounts.push(b.mountpoint);
    const src = new SimDevice({ size: MiB, seed: 4 });
    const f = await b.exportSaving(saving(await goTo(src, S.STOP_COPY)));
    expect(mountedPaths().has(b.mountpoint)).toBe(true);
    expect(await fsp.readdir(b.mountpoint)).toEqual([f.name]);
    await f.unlink();
    expect(await fsp.readdir(b.mountpoint)).toEqual([]);
    await b.close();
    expect(mountedPaths().has(b.mountpoint)).toBe(false);
    expect(existsSync(b.mountpoint)).toBe(false);

    const k = await FuseBridge.start();
    mounts.push(k.mountpoint);
    const exited = new Promise((res) => k.once('exit', res));
    k.on('error', () => undefined);
    process.kill(k.pid as number, 'SIGKILL');
    await exited;
    await k.close();
    expect(mountedPaths().has(k.mountpoint)).toBe(false);
    expect(existsSync(k.mountpoint)).toBe(false);
  });

  it('a server that cannot start or dies before mounting fails start() cleanly, leaving no directory', async () => {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'vfio-mig-fuse-test-'));
    const notExec = join(dir, 'not-executable');
    await fsp.writeFile(notExec, '#!/bin/sh\n', { mode: 0o644 });
    await expect(FuseBridge.start({ dir, serverPath: notExec })).rejects.toMatchObject({ code: 'EACCES' });
    await expect(FuseBridge.start({ dir, serverPath: '/bin/false' })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_TRANSPORT' });
    expect(await fsp.readdir(dir)).toEqual(['not-executable']); // both mount directories removed
    await fsp.rm(dir, { recursive: true });
  });

  it('the server unmounts itself when its owner process dies', async () => {
    const mp = await fsp.mkdtemp(join(tmpdir(), 'vfio-mig-fuse-owner-'));
    mounts.push(mp);
    // sh is the owner: the server is its child and gets SIGTERM when sh dies (PR_SET_PDEATHSIG);
    // our end of its stdin stays open, so only the owner's death can end it.
    const sh = spawn('sh', ['-c', 'exec 3<&0; "$0" --rmdir "$1" <&3 3<&- & wait', fuseServerPath() as string, mp], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    await new Promise<void>((res, rej) => {
      sh.stdout.once('data', () => res()); // READY
      sh.once('exit', () => rej(new Error('owner exited early')));
    });
    expect(mountedPaths().has(mp)).toBe(true);
    sh.kill('SIGKILL');
    const deadline = Date.now() + 5000;
    while ((mountedPaths().has(mp) || existsSync(mp)) && Date.now() < deadline) await sleep(20);
    sh.stdin.destroy();
    expect(mountedPaths().has(mp)).toBe(false);
    expect(existsSync(mp)).toBe(false);
  });
});

it.runIf(!FUSE.ok)(`FUSE unavailable, ${TESTS} FUSE bridge tests skipped: ${FUSE.reason}`, () => {
  expect(FUSE.ok).toBe(false);
});
