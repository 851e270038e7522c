import { describe, expect, it } from 'vitest';
import { DeviceState as S } from '../../src/fsm/states.js';
import { baseArcs } from '../../src/fsm/path.js';
import { SimDevice } from '../../src/devices/sim-device.js';
import { END_BYTES, META_BYTES, pagesBytes } from '../../src/devices/sim-format.js';
import { warmPagePools } from '../../src/devices/sim-pages.js';
import { drain, resuming, saving, writeAll } from './sim-helpers.js';

const P = 4096;

async function toStop(dev: SimDevice): Promise<void> {
  if (dev.flags & 0x2) {
    await dev.step(S.RUNNING, S.RUNNING_P2P);
    await dev.step(S.RUNNING_P2P, S.STOP);
  } else {
    await dev.step(S.RUNNING, S.STOP);
  }
}

describe('SimDevice arcs', () => {
  it('validates options', () => {
    expect(() => new SimDevice({ size: 1000 })).toThrow(/multiple of 4096/);
    expect(() => new SimDevice({ size: 0 })).toThrow();
    expect(() => new SimDevice({ size: P, flags: 0x2 })).toThrow(/flags/);
    expect(() => new SimDevice({ size: P, profile: 'nope' as never })).toThrow(/profile/);
    expect(() => new SimDevice({ size: P, seed: -1 })).toThrow(/seed/);
    expect(() => new SimDevice({ size: P, dirtyRate: -5 })).toThrow(/dirtyRate/);
    expect(() => new SimDevice({ size: 1024 ** 4 + P })).toThrow(/1 TiB/);
    expect(new SimDevice({ size: 1024 ** 4 }).pageCount).toBe(2 ** 28);
  });

  it('refuses a non-base arc and a wrong `from` with EINVAL, state unchanged', async () => {
    const dev = new SimDevice({ size: 16 * P, flags: 0x7 });
    await expect(dev.step(S.RUNNING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' }); // not a base arc with P2P
    await expect(dev.step(S.STOP, S.RUNNING_P2P)).rejects.toMatchObject({ code: 'EINVAL' }); // not in STOP
    await expect(dev.step(S.RUNNING, S.ERROR)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await dev.getState()).toBe(S.RUNNING);
    const d1 = new SimDevice({ size: 16 * P, flags: 0x1 });
    await expect(d1.step(S.RUNNING, S.PRE_COPY)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(d1.step(S.RUNNING, S.RUNNING_P2P)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  for (const flags of [0x1, 0x3, 0x5, 0x7]) {
    it(`every base arc of 0x${flags.toString(16)} works and opens a session exactly where the uAPI says`, async () => {
      for (const [from, to] of baseArcs(flags)) {
        const dev = new SimDevice({ size: 8 * P, flags });
        // Reach `from` through arcs of the table.
        const walk: Record<number, [S, S][]> = {
          [S.RUNNING]: [],
          [S.RUNNING_P2P]: [[S.RUNNING, S.RUNNING_P2P]],
          [S.STOP]: flags & 2 ? [[S.RUNNING, S.RUNNING_P2P], [S.RUNNING_P2P, S.STOP]] : [[S.RUNNING, S.STOP]],
          [S.PRE_COPY]: [[S.RUNNING, S.PRE_COPY]],
          [S.PRE_COPY_P2P]: [[S.RUNNING, S.RUNNING_P2P], [S.RUNNING_P2P, S.PRE_COPY_P2P]],
        };
        const stop = walk[S.STOP];
        walk[S.STOP_COPY] = [...stop, [S.STOP, S.STOP_COPY]];
        walk[S.RESUMING] = [...stop, [S.STOP, S.RESUMING]];
        for (const [a, b] of walk[from]) await dev.step(a, b);
        const before = dev.session;
        if (from === S.RESUMING) {
          // RESUMING -> STOP needs a complete image.
          await expect(dev.step(from, to)).rejects.toMatchObject({ code: 'EINVAL' });
          continue;
        }
        const s = await dev.step(from, to);
        expect(await dev.getState()).toBe(to);
        const opens =
          (from === S.RUNNING && to === S.PRE_COPY) ||
          (from === S.RUNNING_P2P && to === S.PRE_COPY_P2P) ||
          (from === S.STOP && (to === S.STOP_COPY || to === S.RESUMING));
        expect(s !== null).toBe(opens);
        if (opens) {
          expect(s!.fd).toBeNull();
          expect(s!.direction).toBe(to === S.RESUMING ? 'resuming' : 'saving');
        }
        const closes = before !== null && !(to === S.PRE_COPY || to === S.PRE_COPY_P2P || to === S.STOP_COPY);
        if (closes) expect(before!.disabled).toBe(true);
        dev.close();
      }
    });
  }

  it('reset returns to RUNNING from any state and disables the session', async () => {
    const dev = new SimDevice({ size: 8 * P });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    await dev.reset();
    expect(await dev.getState()).toBe(S.RUNNING);
    expect(s.disabled).toBe(true);
    await expect(s.read(Buffer.alloc(64))).rejects.toMatchObject({ code: 'ENODEV', errno: 19 });
    await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('identity names the model that must match', () => {
    const dev = new SimDevice({ size: 64 * P, flags: 0x5, seed: 9, profile: 'random' });
    expect(dev.identity()).toEqual({
      kind: 'sim',
      model: 'size=262144,profile=random,seed=9',
      version: '1.0',
      flags: 0x5,
      stateSize: META_BYTES + pagesBytes(64, P) + END_BYTES,
    });
  });
});

describe('SimDevice saving accounting', () => {
  it('stopCopySize is exact: it falls by every byte read and is 0 at the end', async () => {
    const dev = new SimDevice({ size: 300 * P, flags: 0x1 });
    const full = await dev.stopCopySize();
    expect(full).toBe(META_BYTES + pagesBytes(300, P) + END_BYTES);
    await toStop(dev);
    const s = saving(await dev.step(S.STOP, S.STOP_COPY));
    let read = 0;
    for (const n of [1, 15, 100, 4096, 5000, 333333, 1 << 20]) {
      read += await s.read(Buffer.alloc(n));
      expect(await dev.stopCopySize()).toBe(full - read);
    }
    read += await drain(s, () => {});
    expect(read).toBe(full);
    expect(await dev.stopCopySize()).toBe(0);
    expect(await s.read(Buffer.alloc(10))).toBe(0);
    expect(await s.read(Buffer.alloc(10))).toBe(0);
  });

  it('precopy counters follow the kernel semantics through reads and dirtying', async () => {
    const pages = 1024;
    const dev = new SimDevice({ size: pages * P, flags: 0x7 });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    const initial = META_BYTES + pagesBytes(pages, P);
    expect(await s.precopyInfo()).toEqual({ initialBytes: initial, dirtyBytes: 0, reinit: false });
    expect(await dev.stopCopySize()).toBe(initial + END_BYTES);

    // Read the meta records and the first run of 256 pages (record boundaries are exact).
    const firstRun = pagesBytes(256, P);
    await drain(s, () => {}, { maxBytes: META_BYTES + firstRun });
    expect(await s.precopyInfo()).toEqual({ initialBytes: initial - META_BYTES - firstRun, dirtyBytes: 0, reinit: false });

    // Dirtying a page not read yet costs nothing extra: the initial pass reads its new version.
    dev.touchPages([600, 1000]);
    expect((await s.precopyInfo()).dirtyBytes).toBe(0);
    // Dirtying pages already read makes dirty bytes; twice the same page counts once.
    dev.touchPages([3, 7, 7, 255]);
    expect(await s.precopyInfo()).toMatchObject({ initialBytes: initial - META_BYTES - firstRun, dirtyBytes: pagesBytes(3, P) });

    // A partial read inside the next initial record lowers initial bytes by exactly that much.
    expect(await s.read(Buffer.alloc(5000))).toBe(5000);
    expect((await s.precopyInfo()).initialBytes).toBe(initial - META_BYTES - firstRun - 5000);
    // A page of the record in flight was snapshot: dirtying it now makes it dirty.
    dev.touchPages([256]);
    expect((await s.precopyInfo()).dirtyBytes).toBe(pagesBytes(4, P));

    // Drain: initial first, then dirty, then the temporary end (ENOMSG).
    await drain(s, () => {});
    expect(await s.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    await expect(s.read(Buffer.alloc(100))).rejects.toMatchObject({ code: 'ENOMSG', errno: 42 });

    // New dirtying after everything was read; a partial read of it lowers dirty bytes.
    dev.touchPages([1, 2, 900]);
    expect(await s.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: pagesBytes(3, P), reinit: false });
    expect(await s.read(Buffer.alloc(100))).toBe(100);
    expect((await s.precopyInfo()).dirtyBytes).toBe(pagesBytes(3, P) - 100);
    expect(await dev.stopCopySize()).toBe(pagesBytes(3, P) - 100 + END_BYTES);

    // P2P still runs and tracks; STOP_COPY makes precopy info EINVAL.
    await dev.step(S.PRE_COPY, S.PRE_COPY_P2P);
    dev.touchPages([5]);
    expect((await s.precopyInfo()).dirtyBytes).toBe(pagesBytes(3, P) - 100 + pagesBytes(1, P));
    await dev.step(S.PRE_COPY_P2P, S.STOP_COPY);
    await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'EINVAL' });
    expect(() => dev.touchPages([6])).toThrow(/does not change/);
    const rest = await drain(s, () => {});
    expect(rest).toBe(pagesBytes(3, P) - 100 + pagesBytes(1, P) + END_BYTES);
  });

  it("precopyEmpty 'zero' ends the temporary end of stream with 0 like mtty/hisi/qat", async () => {
    const dev = new SimDevice({ size: 4 * P, precopyEmpty: 'zero' });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    const buf = Buffer.alloc(1 << 20);
    expect(await s.read(buf)).toBe(META_BYTES + pagesBytes(4, P));
    expect(await s.read(buf)).toBe(0);
    dev.dirtyPages(1);
    expect(await s.read(buf)).toBe(pagesBytes(1, P));
    expect(await s.read(buf)).toBe(0);
  });

  it('REINIT restarts initial bytes, is reported once, and the stream still loads', async () => {
    const pages = 300;
    const src = new SimDevice({ size: pages * P, seed: 5 });
    const dst = new SimDevice({ size: pages * P, seed: 5 });
    await toStop(dst);
    const out = resuming(await dst.step(S.STOP, S.RESUMING));
    const s = saving(await src.step(S.RUNNING, S.PRE_COPY));
    expect(() => dst.raiseReinit()).toThrow(/PRE_COPY/);
    await drain(s, (c) => writeAll(out, c), { chunk: 77777 });
    src.touchPages([1, 2]);
    src.raiseReinit();
    expect(await s.precopyInfo()).toEqual({ initialBytes: pagesBytes(pages, P), dirtyBytes: 0, reinit: true });
    expect((await s.precopyInfo()).reinit).toBe(false);
    src.touchPages([3]); // not read since the reinit: carried by the new initial pass
    expect((await s.precopyInfo()).dirtyBytes).toBe(0);
    expect(await drain(s, (c) => writeAll(out, c))).toBe(pagesBytes(pages, P));
    await src.step(S.PRE_COPY, S.PRE_COPY_P2P);
    await src.step(S.PRE_COPY_P2P, S.STOP_COPY);
    await drain(s, (c) => writeAll(out, c));
    await dst.step(S.RESUMING, S.STOP);
    expect(dst.digest()).toBe(src.digest());
  });

  it('the workload dirties pages in running states only, and close() stops it', async () => {
    const dev = new SimDevice({ size: 4096 * P, dirtyRate: 400 * P }); // 400 pages/s
    const d0 = dev.digest();
    await new Promise((r) => setTimeout(r, 120));
    expect(dev.digest()).not.toBe(d0);
    expect(dev.dirtiedPages).toBeGreaterThan(0);
    await toStop(dev);
    const stopped = dev.digest();
    await new Promise((r) => setTimeout(r, 60));
    expect(dev.digest()).toBe(stopped);
    await dev.step(S.STOP, S.RUNNING_P2P); // P2P counts as running
    await new Promise((r) => setTimeout(r, 80));
    expect(dev.digest()).not.toBe(stopped);
    dev.close();
    const closed = dev.digest();
    await new Promise((r) => setTimeout(r, 40));
    expect(dev.digest()).toBe(closed);
  });

  it('what a query sees dirtied is the rate times the time elapsed, even when no timer could run', async () => {
    // A continuously dirtying device shows its dirtying whenever it is asked. The workload's timer
    // alone left a query with 0, 1 or 2 ticks' worth (λ samples 0.7-1.6 x the rate), and nothing at
    // all while the event loop was blocked.
    const pages = 4096;
    const dev = new SimDevice({ size: pages * P, dirtyRate: 40e6, seed: 5 }); // ~9766 touches/s
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    await drain(s, () => {}, { maxBytes: (await s.precopyInfo()).initialBytes, chunk: 1 << 20 }); // every page read once
    // dirty_bytes -> dirty pages (pagesBytes is monotonic in pages).
    const dirtyPages = (bytes: number): number => {
      let n = 0;
      while (pagesBytes(n + 1, P) <= bytes) n++;
      return n;
    };
    const first = await s.precopyInfo();
    expect(first.initialBytes).toBe(0);
    const t0 = performance.now();
    while (performance.now() - t0 < 50); // the event loop is blocked: no timer runs
    const second = await s.precopyInfo();
    const ms = performance.now() - t0;
    // n touches on random pages dirty clean x (1 - e^(-n / pages)) of the clean ones.
    const clean = pages - dirtyPages(first.dirtyBytes);
    const expected = clean * (1 - Math.exp(-((40e6 * ms) / 1000 / P) / pages));
    const dirtied = dirtyPages(second.dirtyBytes) - dirtyPages(first.dirtyBytes);
    expect(expected).toBeGreaterThan(300);
    expect(dirtied).toBeGreaterThan(0.75 * expected);
    expect(dirtied).toBeLessThan(1.25 * expected);
    await dev.step(S.PRE_COPY, S.RUNNING);
    dev.close();
  });

  it('a 64 GiB device: sizes, precopy info and MiBs of reads without memory growth', async () => {
    warmPagePools();
    const size = 64 * 1024 ** 3;
    const pages = size / P;
    const before = process.memoryUsage();
    const dev = new SimDevice({ size, flags: 0x7 });
    expect(await dev.stopCopySize()).toBe(META_BYTES + pagesBytes(pages, P) + END_BYTES);
    expect(dev.identity().stateSize).toBeGreaterThan(size);
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    const info = await s.precopyInfo();
    expect(info.initialBytes).toBe(META_BYTES + pagesBytes(pages, P));
    const read = await drain(s, () => {}, { maxBytes: 16 << 20, chunk: 1 << 20 });
    expect(read).toBe(16 << 20);
    expect((await s.precopyInfo()).initialBytes).toBe(info.initialBytes - read);
    dev.dirtyPages(20000); // ~1/1000 of them behind the cursor
    const dirty = (await s.precopyInfo()).dirtyBytes;
    expect(dirty).toBeGreaterThan(0);
    expect(dirty).toBeLessThan(pagesBytes(100, P));
    const after = process.memoryUsage();
    // The state is 64 GiB; what the device holds is a 2 MiB dirty bitmap plus 20000 versions.
    expect(after.heapUsed + after.arrayBuffers - (before.heapUsed + before.arrayBuffers)).toBeLessThan(48 << 20);
    dev.close();
  });
});
