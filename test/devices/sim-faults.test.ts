import { describe, expect, it } from 'vitest';
import { DeviceState as S } from '../../src/fsm/states.js';
import { SimDevice, type SimDeviceOptions } from '../../src/devices/sim-device.js';
import { END_BYTES, META_BYTES, REC_HEADER_BYTES } from '../../src/devices/sim-format.js';
import { drain, resuming, saving, writeAll } from './sim-helpers.js';

const P = 4096;

async function toStop(dev: SimDevice): Promise<void> {
  await dev.step(S.RUNNING, S.RUNNING_P2P);
  await dev.step(S.RUNNING_P2P, S.STOP);
}

/** Source in STOP_COPY (through PRE_COPY) and destination in RESUMING. */
async function pair(srcOpts: Partial<SimDeviceOptions>, dstOpts: Partial<SimDeviceOptions> = {}) {
  const size = 64 * P;
  const src = new SimDevice({ size, seed: 2, ...srcOpts });
  const dst = new SimDevice({ size, seed: 2, ...dstOpts });
  await toStop(dst);
  const out = resuming(await dst.step(S.STOP, S.RESUMING));
  const s = saving(await src.step(S.RUNNING, S.PRE_COPY));
  return { src, dst, s, out };
}

describe('SimDevice faults', () => {
  it('arc fault: the arc fails with the errno and the device stays in `from`', async () => {
    const dev = new SimDevice({ size: 8 * P, faults: { arc: { from: S.RUNNING, to: S.PRE_COPY, code: 'ENOMEM' } } });
    await expect(dev.step(S.RUNNING, S.PRE_COPY)).rejects.toMatchObject({
      code: 'ENOMEM',
      errno: 12,
      arc: { from: S.RUNNING, to: S.PRE_COPY },
      state: S.RUNNING,
    });
    expect(await dev.getState()).toBe(S.RUNNING);
    expect(dev.session).toBeNull();
    await expect(dev.step(S.RUNNING, S.PRE_COPY)).rejects.toMatchObject({ code: 'ENOMEM' }); // every time
  });

  it('arc fault into ERROR: sessions end, every arc fails, reset recovers', async () => {
    const dev = new SimDevice({
      size: 8 * P,
      faults: { arc: [{ from: S.PRE_COPY_P2P, to: S.STOP_COPY, toError: true, times: 1 }] },
    });
    await dev.step(S.RUNNING, S.RUNNING_P2P);
    const s = saving(await dev.step(S.RUNNING_P2P, S.PRE_COPY_P2P));
    await expect(dev.step(S.PRE_COPY_P2P, S.STOP_COPY)).rejects.toMatchObject({ code: 'EIO', state: S.ERROR });
    expect(await dev.getState()).toBe(S.ERROR);
    expect(s.disabled).toBe(true);
    await expect(dev.step(S.ERROR, S.RUNNING)).rejects.toMatchObject({ code: 'EINVAL' });
    await dev.reset();
    expect(await dev.getState()).toBe(S.RUNNING);
    // times: 1 -> the second attempt succeeds.
    await dev.step(S.RUNNING, S.RUNNING_P2P);
    await dev.step(S.RUNNING_P2P, S.PRE_COPY_P2P);
    expect(await dev.step(S.PRE_COPY_P2P, S.STOP_COPY)).toBeNull();
  });

  it('read error after N bytes: data up to N, then the code on every read', async () => {
    const dev = new SimDevice({ size: 64 * P, faults: { readError: { afterBytes: 10000, code: 'EIO' } } });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    expect(await s.read(Buffer.alloc(8000))).toBe(8000);
    expect(await s.read(Buffer.alloc(8000))).toBe(2000);
    await expect(s.read(Buffer.alloc(8000))).rejects.toMatchObject({ code: 'EIO', errno: 5 });
    await expect(s.read(Buffer.alloc(1))).rejects.toMatchObject({ code: 'EIO' });
    // The device itself is fine: the arc out of PRE_COPY still works and disables the session.
    await dev.step(S.PRE_COPY, S.RUNNING);
    await expect(s.read(Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('write error after N bytes: accepted up to N, then the code, then ENODEV; RESUMING -> STOP fails EINVAL', async () => {
    const { src, dst, s, out } = await pair({}, { faults: { writeError: { afterBytes: 5000, code: 'EFAULT' } } });
    const buf = Buffer.alloc(8000);
    expect(await s.read(buf)).toBe(8000);
    expect(await out.write(buf)).toBe(5000);
    await expect(out.write(buf.subarray(5000))).rejects.toMatchObject({ code: 'EFAULT' });
    await expect(out.write(buf.subarray(5000))).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(dst.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL', state: S.RESUMING });
    expect(await dst.getState()).toBe(S.RESUMING);
    src.close();
  });

  it('flipped byte in page content: the destination fails the write with EFAULT', async () => {
    const off = META_BYTES + REC_HEADER_BYTES + 8 + 64 * 8 + 3 * P + 100; // inside page 3 of the first run
    const { s, out, dst } = await pair({ faults: { flipByte: { offset: off } } });
    const err = await drain(s, (c) => writeAll(out, c), { chunk: 65536 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EFAULT' });
    await expect(dst.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('flipped byte in the match data (seed): EFAULT; in a record header flags: EINVAL', async () => {
    const seedAt = REC_HEADER_BYTES + 24;
    const a = await pair({ faults: { flipByte: { offset: seedAt, mask: 1 } } });
    await expect(drain(a.s, (c) => writeAll(a.out, c))).rejects.toMatchObject({ code: 'EFAULT' });
    const flagsAt = META_BYTES + 8;
    const b = await pair({ faults: { flipByte: { offset: flagsAt, mask: 4 } } });
    await expect(drain(b.s, (c) => writeAll(b.out, c))).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('asynchronous reset after N bytes: the read completes, then RUNNING, ENODEV and a reset event', async () => {
    const dev = new SimDevice({ size: 64 * P, faults: { resetAfterBytes: 3000 } });
    const events: string[] = [];
    dev.on('reset', () => events.push(`reset in ${dev.state}`));
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    expect(await s.read(Buffer.alloc(2000))).toBe(2000);
    expect(await s.read(Buffer.alloc(2000))).toBe(1000);
    expect(events).toEqual([]); // asynchronous: not inside the read
    await new Promise((r) => setImmediate(r));
    expect(events).toEqual([`reset in ${S.RUNNING}`]);
    expect(await dev.getState()).toBe(S.RUNNING);
    expect(s.disabled).toBe(true);
    await expect(s.read(Buffer.alloc(10))).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(dev.step(S.PRE_COPY, S.RUNNING)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('a read racing the asynchronous reset waits and fails with ENODEV', async () => {
    const dev = new SimDevice({ size: 64 * P, faults: { resetAfterBytes: 100 } });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    expect(await s.read(Buffer.alloc(200))).toBe(100);
    await expect(s.read(Buffer.alloc(200))).rejects.toMatchObject({ code: 'ENODEV' });
    expect(dev.state).toBe(S.RUNNING);
  });

  it('stalled read for N ms after N bytes, then data flows again', async () => {
    const dev = new SimDevice({ size: 64 * P, faults: { stallRead: { afterBytes: 1000, ms: 80 } } });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    expect(await s.read(Buffer.alloc(1000))).toBe(1000);
    let done = false;
    const p = s.read(Buffer.alloc(1000)).then((n) => {
      done = true;
      return n;
    });
    await new Promise((r) => setTimeout(r, 30));
    expect(done).toBe(false);
    // GET_PRECOPY_INFO is an ioctl: it does not wait behind the blocked read.
    expect((await s.precopyInfo()).initialBytes).toBe((await dev.stopCopySize()) - END_BYTES);
    expect(done).toBe(false);
    expect(await p).toBe(1000);
    expect(await s.read(Buffer.alloc(10))).toBe(10);
  });

  it('a read stalled forever is woken with ENODEV when the arc ends the session', async () => {
    const dev = new SimDevice({ size: 64 * P, faults: { stallRead: { ms: null } } });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    const p = s.read(Buffer.alloc(100));
    const q = s.read(Buffer.alloc(100)); // queued behind it
    await new Promise((r) => setTimeout(r, 20));
    await dev.step(S.PRE_COPY, S.RUNNING);
    await expect(p).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(q).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('generationRate: data is produced no faster than the rate', async () => {
    const rate = 4 << 20; // 4 MiB/s; the bucket starts with a 64 KiB burst
    const dev = new SimDevice({ size: 1024 * P, flags: 0x1, generationRate: rate });
    await dev.step(S.RUNNING, S.STOP);
    const s = saving(await dev.step(S.STOP, S.STOP_COPY));
    const t0 = performance.now();
    const n = await drain(s, () => {}, { maxBytes: 1 << 20, chunk: 1 << 20 });
    const ms = performance.now() - t0;
    expect(n).toBe(1 << 20);
    // A lower bound only (a rate limit), never a speed assertion: (1 MiB - burst) / 4 MiB/s.
    expect(ms).toBeGreaterThan((((1 << 20) - 65536) / rate) * 1000 * 0.8);
  });
});
