/**
 * The device host's 'fuse' fd kind: a SimDevice in a child process whose sessions reach this
 * process as FUSE files, read and written here through their fds as a VMM uses the kernel's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { constants as fsc, existsSync, fstatSync, readlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { DeviceState as S } from '../../src/fsm/states.js';
import { ERRNO } from '../../src/fsm/errors.js';
import type { Session } from '../../src/fsm/types.js';
import { spawnDeviceHost } from '../../src/devices/host.js';
import type { HostedDevice } from '../../src/devices/host.js';
import { mountedPaths } from '../../src/devices/fuse-bridge.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { createResumingStream } from '../../src/streams/resuming-stream.js';
import { pipeline } from 'node:stream/promises';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';
import { FUSE, readOutcome, reportSkip, writeAllFd } from './fuse-helpers.js';
import { goTo } from './sim-helpers.js';

const TESTS = 6;
reportSkip('fuse-host.test.ts', TESTS);

const MiB = 1 << 20;
const ENOMSG = -ERRNO.ENOMSG;
const ENODEV = -ERRNO.ENODEV;

const hosts: HostedDevice[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

async function host(options: Record<string, unknown>, device: 'sim' | 'mtty' = 'sim'): Promise<HostedDevice> {
  const h = await spawnDeviceHost({ device, options, fdKind: 'fuse' });
  hosts.push(h);
  return h;
}

function fdOf(s: Session | null): number {
  if (!s || s.fd === null) throw new Error('expected an fd-backed session');
  return s.fd;
}

/** Read until the first non-data result; chunks go to `sink`. */
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

/** The FUSE mount an fd's file lives on (the name may be unlinked already: " (deleted)"). */
function mountOf(fd: number): string {
  return dirname(readlinkSync(`/proc/self/fd/${fd}`));
}

describe.skipIf(!FUSE.ok)("device host with fdKind 'fuse': SimDevice sessions as FUSE files", () => {
  it('migrates with both sessions as FUSE files: ENOMSG at PRE_COPY ends, 0 forever at STOP_COPY, digest verifies', async () => {
    const size = 4 * MiB;
    const src = await host({ size, seed: 21 });
    const dst = await host({ size, seed: 21 });
    const out = fdOf(await goTo(dst, S.RESUMING));
    const ss = await goTo(src, S.PRE_COPY);
    const inFd = fdOf(ss);
    expect(fstatSync(inFd).isFile()).toBe(true); // a FUSE file, not a FIFO
    const sink = (b: Buffer): Promise<void> => writeAllFd(out, b);
    const p1 = await pass(inFd, sink);
    expect(p1.bytes).toBeGreaterThan(size);
    expect(p1.end).toBe(ENOMSG);
    // Precopy info goes over the control channel and is exact: nothing is held in between.
    expect(await (ss as { precopyInfo(): Promise<unknown> }).precopyInfo()).toMatchObject({ initialBytes: 0, dirtyBytes: 0 });
    await src.call('dirtyPages', 30);
    const p2 = await pass(inFd, sink);
    expect(p2.bytes).toBeGreaterThan(0);
    expect(p2.end).toBe(ENOMSG);
    await goTo(src, S.STOP_COPY);
    expect((await pass(inFd, sink)).end).toBe(0);
    expect(await readOutcome(inFd, Buffer.alloc(16))).toBe(0);
    expect(await readOutcome(inFd, Buffer.alloc(16))).toBe(0);
    await goTo(src, S.STOP);
    await goTo(dst, S.STOP);
    // The closing arcs disabled both sessions: their fds now say ENODEV, as the kernel's do.
    expect(await readOutcome(inFd, Buffer.alloc(16))).toBe(ENODEV);
    await expect(writeAllFd(out, Buffer.alloc(16))).rejects.toMatchObject({ code: 'ENODEV' });
    expect(await dst.digest()).toBe(await src.digest());
    const mounts = [mountOf(inFd), mountOf(out)];
    expect(mounts[0]).not.toBe(mounts[1]); // one private mount per host
    for (const m of mounts) expect(mountedPaths().has(m)).toBe(true);
    await src.close();
    await dst.close();
    // Closing a host unmounts its FUSE directory and removes it.
    for (const m of mounts) {
      expect(mountedPaths().has(m)).toBe(false);
      expect(existsSync(m)).toBe(false);
    }
  });

  it("SavingStream -> ResumingStream over the FUSE fds: PRE_COPY empty streaks cross, STOP_COPY ends the stream, digest verifies", async () => {
    const size = 6 * MiB;
    const src = await host({ size, seed: 31 });
    const dst = await host({ size, seed: 31 });
    const rs = (await goTo(dst, S.RESUMING)) as ResumingSession;
    const ss = (await goTo(src, S.PRE_COPY)) as SavingSession;
    const saving = createSavingStream(ss);
    const resuming = createResumingStream(rs);
    expect(saving.path).toBe('fs'); // a FUSE stream file: fs.read with position null
    expect(resuming.path).toBe('fs');
    const events: string[] = [];
    let empties = 0;
    saving.on('precopy-data', () => events.push('data'));
    saving.on('precopy-empty', () => {
      events.push('empty');
      empties++;
      // First temporary end: the guest dirties pages; second: switch over to STOP_COPY.
      if (empties === 1) void src.call('dirtyPages', 25);
      else if (empties === 2) void goTo(src, S.STOP_COPY);
    });
    await pipeline(saving, resuming);
    expect(events).toEqual(['empty', 'data', 'empty', 'data']); // STOP_COPY has its own bytes after the last empty streak
    expect(await readOutcome(fdOf(ss), Buffer.alloc(16))).toBe(0); // still 0: the permanent end
    await goTo(src, S.STOP);
    await goTo(dst, S.STOP);
    expect(await dst.digest()).toBe(await src.digest());
  });

  it('MttyDevice (answers 0 at the PRE_COPY end): ENOMSG on the FUSE file, then STOP_COPY ends it; ports arrive', async () => {
    const src = await host({ ports: 2 }, 'mtty');
    const dst = await host({ ports: 2 }, 'mtty');
    const fresh = await src.digest();
    await src.call('guestWrite', 1, [0x41, 0x42, 0x43]);
    expect(await src.digest()).not.toBe(fresh); // the guest changed port 1: the stream must carry it
    const out = fdOf(await goTo(dst, S.RESUMING));
    const inFd = fdOf(await goTo(src, S.PRE_COPY));
    const sink = (b: Buffer): Promise<void> => writeAllFd(out, b);
    const p1 = await pass(inFd, sink);
    expect(p1.bytes).toBe(24); // mtty's header is its PRE_COPY data
    expect(p1.end).toBe(ENOMSG); // the driver said 0; the data fd says ENOMSG
    await goTo(src, S.STOP_COPY);
    const p2 = await pass(inFd, sink);
    expect(p2.bytes).toBe(2 * 36);
    expect(p2.end).toBe(0);
    await goTo(src, S.STOP);
    await goTo(dst, S.STOP);
    expect(await dst.digest()).toBe(await src.digest());
  });

  it("a device write error reaches the writer's write(2) as its errno, and RESUMING -> STOP fails with it", async () => {
    const src = await host({ size: MiB, seed: 13, flags: 0x1 });
    const dst = await host({ size: MiB, seed: 13, flags: 0x1, faults: { writeError: { afterBytes: 3000, code: 'EINVAL' } } });
    const out = fdOf(await goTo(dst, S.RESUMING));
    const inFd = fdOf(await goTo(src, S.STOP_COPY));
    const buf = Buffer.allocUnsafe(64 * 1024);
    expect(await readOutcome(inFd, buf)).toBe(buf.length);
    await expect(writeAllFd(out, buf)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(goTo(dst, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('a reset mid-stream surfaces ENODEV on the fds; positioned and wrong-direction access is refused', async () => {
    const src = await host({ size: 8 * MiB, seed: 3 });
    const dst = await host({ size: 8 * MiB, seed: 3 });
    const inFd = fdOf(await goTo(src, S.PRE_COPY));
    const out = fdOf(await goTo(dst, S.RESUMING));
    const buf = Buffer.allocUnsafe(MiB);
    expect(await readOutcome(inFd, buf)).toBe(MiB);
    await writeAllFd(out, buf);
    const { read, write } = await import('node:fs');
    const io = (f: (cb: (e: NodeJS.ErrnoException | null) => void) => void): Promise<string | null> =>
      new Promise((res) => f((e) => res(e ? (e.code ?? null) : null)));
    expect(await io((cb) => read(inFd, buf, 0, 16, 0, cb))).toBe('ESPIPE');
    expect(await io((cb) => write(out, buf, 0, 16, 0, cb))).toBe('ESPIPE');
    expect(await io((cb) => write(inFd, buf, 0, 16, null, cb))).toBe('EBADF');
    expect(await io((cb) => read(out, buf, 0, 16, null, cb))).toBe('EBADF');
    await src.reset();
    await dst.reset();
    expect(await readOutcome(inFd, buf)).toBe(ENODEV);
    await expect(writeAllFd(out, buf)).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('the STOP_COPY end is known to the hosted session before its reader sees 0', async () => {
    const src = await host({ size: MiB, seed: 8, flags: 0x1 });
    const s = await goTo(src, S.STOP_COPY);
    const fd = fdOf(s);
    expect(fstatSync(fd).mode & fsc.S_IFMT).toBe(fsc.S_IFREG);
    const { end, bytes } = await pass(fd);
    expect(bytes).toBeGreaterThan(MiB);
    expect(end).toBe(0);
    // host.ts turns an EOF without a notice into a transport error; here the notice came first.
    expect((s as unknown as { eofError(): unknown }).eofError()).toBeNull();
  });
});

it.runIf(!FUSE.ok)(`FUSE unavailable, ${TESTS} FUSE device-host tests skipped: ${FUSE.reason}`, () => {
  expect(FUSE.ok).toBe(false);
});
