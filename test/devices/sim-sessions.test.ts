import { describe, expect, it } from 'vitest';
import { compress } from 'zstd-napi';
import { MethodResumingSession, MethodSavingSession, sleepUnlessAborted } from '../../src/devices/method-session.js';
import { DeviceState as S } from '../../src/fsm/states.js';
import { SimDevice } from '../../src/devices/sim-device.js';
import { PageGenerator, type SimProfile } from '../../src/devices/sim-pages.js';
import { saving } from './sim-helpers.js';

describe('method-backed sessions', () => {
  it('ids are unique per process, fd is null, direction is set', () => {
    const a = new MethodSavingSession({ read: () => 0, precopyInfo: () => ({ initialBytes: 0, dirtyBytes: 0, reinit: false }) });
    const b = new MethodResumingSession({ write: (buf) => buf.length });
    const c = new SimDevice({ size: 4096 });
    expect(new Set([a.id, b.id]).size).toBe(2);
    expect(b.id).toBeGreaterThan(a.id);
    expect(a.fd).toBeNull();
    expect(a.direction).toBe('saving');
    expect(b.direction).toBe('resuming');
    c.close();
  });

  it('calls are serialised like the driver mutex: the second read starts after the first resolved', async () => {
    const order: string[] = [];
    let n = 0;
    const s = new MethodSavingSession({
      read: async () => {
        const me = ++n;
        order.push(`start ${me}`);
        await new Promise((r) => setTimeout(r, 10));
        order.push(`end ${me}`);
        return me;
      },
      precopyInfo: () => ({ initialBytes: 0, dirtyBytes: 0, reinit: false }),
    });
    const [x, y] = await Promise.all([s.read(Buffer.alloc(1)), s.read(Buffer.alloc(1))]);
    expect([x, y]).toEqual([1, 2]);
    expect(order).toEqual(['start 1', 'end 1', 'start 2', 'end 2']);
  });

  it('disable rejects the pending call, the queued one and later ones with ENODEV; it is idempotent', async () => {
    let aborted = false;
    const s = new MethodSavingSession(
      {
        read: async (_buf, signal) => {
          signal.addEventListener('abort', () => (aborted = true));
          await sleepUnlessAborted(Infinity, signal);
          return 1;
        },
        precopyInfo: () => ({ initialBytes: 0, dirtyBytes: 0, reinit: false }),
      },
      { onDisable: () => undefined },
    );
    const p = s.read(Buffer.alloc(1));
    const q = s.read(Buffer.alloc(1));
    await new Promise((r) => setImmediate(r));
    s.disable();
    s.disable();
    expect(s.disabled).toBe(true);
    expect(aborted).toBe(true);
    await expect(p).rejects.toMatchObject({ code: 'ENODEV', errno: 19 });
    await expect(q).rejects.toMatchObject({ code: 'ENODEV' });
    await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('backend errors pass through; close() is idempotent and later calls fail EBADF', async () => {
    let closes = 0;
    const w = new MethodResumingSession(
      {
        write: (buf) => {
          if (buf[0] === 1) throw Object.assign(new Error('bad'), { code: 'EFAULT' });
          return buf.length;
        },
      },
      { onClose: () => closes++ },
    );
    expect(await w.write(Buffer.from([0, 0]))).toBe(2);
    await expect(w.write(Buffer.from([1]))).rejects.toMatchObject({ code: 'EFAULT' });
    w.close();
    w.close();
    expect(closes).toBe(1);
    await expect(w.write(Buffer.from([0]))).rejects.toMatchObject({ code: 'EBADF' });
  });

  it('closing a SimDevice session leaves the device state alone', async () => {
    const dev = new SimDevice({ size: 8 * 4096 });
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    s.close();
    expect(await dev.getState()).toBe(S.PRE_COPY);
    await expect(s.read(Buffer.alloc(10))).rejects.toMatchObject({ code: 'EBADF' });
    expect(await dev.step(S.PRE_COPY, S.RUNNING)).toBeNull();
  });
});

describe('SimDevice content profiles', () => {
  /** zstd ratio of `frames` 1 MiB frames of a device's stream (level 3, the library default). */
  async function ratio(profile: SimProfile): Promise<number> {
    const dev = new SimDevice({ size: 8 << 20, profile, seed: 21, flags: 0x1 });
    await dev.step(S.RUNNING, S.STOP);
    const s = saving(await dev.step(S.STOP, S.STOP_COPY));
    const buf = Buffer.alloc(1 << 20);
    let raw = 0;
    let packed = 0;
    for (let i = 0; i < 4; i++) {
      const n = await s.read(buf);
      raw += n;
      packed += compress(buf.subarray(0, n)).length;
    }
    return raw / packed;
  }

  it('random is incompressible, mixed about half, zero almost nothing', async () => {
    const r = await ratio('random');
    const m = await ratio('mixed');
    const z = await ratio('zero');
    expect(r).toBeGreaterThan(0.97);
    expect(r).toBeLessThan(1.05);
    expect(m).toBeGreaterThan(1.8);
    expect(m).toBeLessThan(3.2);
    expect(z).toBeGreaterThan(50);
  });

  it('mixed has the four kinds in about equal shares, decided per (seed, index, version)', () => {
    const g = new PageGenerator(4, 'mixed');
    const page = Buffer.alloc(4096);
    let zero = 0;
    for (let i = 0; i < 4000; i++) {
      g.writePage(page, 0, i, 0);
      expect(g.verifyPage(page, 0, i, 0)).toBe(true);
      if (page.every((b) => b === 0)) zero++;
      else expect(g.verifyPage(page, 0, i, 1)).toBe(false); // the stamp names the version
    }
    expect(zero).toBeGreaterThan(800);
    expect(zero).toBeLessThan(1200);
    // Pure function: same inputs, same bytes; another seed, other bytes.
    const a = Buffer.alloc(4096);
    const b = Buffer.alloc(4096);
    new PageGenerator(4, 'random').writePage(a, 0, 77, 3);
    new PageGenerator(4, 'random').writePage(b, 0, 77, 3);
    expect(a.equals(b)).toBe(true);
    new PageGenerator(5, 'random').writePage(b, 0, 77, 3);
    expect(a.equals(b)).toBe(false);
  });
});
