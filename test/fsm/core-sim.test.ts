/**
 * MigrationCore over the real SimDevice: the docs/protocol.md "Driving a device" flow, a full
 * save into a second device, and a device that resets itself in the middle of a saving session.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SimDevice } from '../../src/devices/index.js';
import { MigrationCore } from '../../src/fsm/core.js';
import { isErrno } from '../../src/fsm/errors.js';
import { DeviceState } from '../../src/fsm/states.js';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';

const devices: SimDevice[] = [];
function sim(opts: ConstructorParameters<typeof SimDevice>[0]): SimDevice {
  const d = new SimDevice(opts);
  devices.push(d);
  return d;
}
afterEach(() => {
  for (const d of devices.splice(0)) d.close();
});

/** Read a saving session until the PRE_COPY temporary end (ENOMSG or 0) and pass the bytes on. */
async function drainPrecopy(s: SavingSession, sink: (b: Buffer) => Promise<void>): Promise<number> {
  const buf = Buffer.alloc(1 << 20);
  let total = 0;
  for (;;) {
    let n: number;
    try {
      n = await s.read(buf);
    } catch (err) {
      if (isErrno(err, 'ENOMSG')) return total;
      throw err;
    }
    if (n === 0) return total;
    await sink(buf.subarray(0, n));
    total += n;
  }
}

async function writeAll(r: ResumingSession, b: Buffer): Promise<void> {
  let off = 0;
  while (off < b.length) off += await r.write(b.subarray(off));
}

describe('MigrationCore with SimDevice', () => {
  it('the docs example flow moves a device state into a second device', async () => {
    const src = sim({ size: 4 << 20, flags: 0x7, seed: 7 });
    const dst = sim({ size: 4 << 20, flags: 0x7, seed: 7 }); // the stream must come from a compatible device
    src.dirtyPages(50); // so the source differs from the destination's initial content
    expect(dst.digest()).not.toBe(src.digest());
    const source = new MigrationCore(src, { recovery: 'recover-then-reset' });
    const target = new MigrationCore(dst);
    const arcs: string[] = [];
    source.on('arc', ({ from, to }) => arcs.push(`${from}>${to}`));

    const resuming = await target.setState(DeviceState.RESUMING);
    expect(resuming?.direction).toBe('resuming');
    const saving = await source.setState(DeviceState.PRE_COPY);
    expect(saving?.direction).toBe('saving');
    const sink = (b: Buffer) => writeAll(resuming as ResumingSession, b);
    const pre = await drainPrecopy(saving as SavingSession, sink);
    expect(pre).toBeGreaterThan(0);
    src.dirtyPages(20); // changed after pre-copy: must travel in STOP_COPY
    expect(await source.stopCopySize()).toBeGreaterThan(0);

    expect(await source.setState(DeviceState.STOP_COPY)).toBeNull(); // same session continues
    expect(source.session).toBe(saving);
    const buf = Buffer.alloc(1 << 20);
    for (;;) {
      const n = await (saving as SavingSession).read(buf);
      if (n === 0) break;
      await sink(buf.subarray(0, n));
    }
    await source.setState(DeviceState.STOP);
    expect(saving!.disabled).toBe(true);
    expect(source.session).toBeNull();
    await target.setState(DeviceState.RUNNING); // RESUMING -> STOP validates the load
    expect(resuming!.disabled).toBe(true);
    expect(dst.digest()).toBe(src.digest());
    expect(arcs).toEqual(['2>6', '6>7', '7>3', '3>1']);
    await source.reset();
    expect(source.state).toBe(DeviceState.RUNNING);
  });

  it('a device reset in the middle of a saving session disables it and moves the core to RUNNING', async () => {
    const src = sim({ size: 4 << 20, flags: 0x5, faults: { resetAfterBytes: 64 << 10 } });
    const core = new MigrationCore(src);
    const resets: boolean[] = [];
    core.on('reset', (e) => resets.push(e.deferred));
    const saving = (await core.setState(DeviceState.STOP_COPY)) as SavingSession;
    const buf = Buffer.alloc(16 << 10);
    let failed: unknown;
    try {
      for (;;) if ((await saving.read(buf)) === 0) break;
    } catch (err) {
      failed = err;
    }
    expect(isErrno(failed, 'ENODEV')).toBe(true);
    expect(saving.disabled).toBe(true);
    expect(core.state).toBe(DeviceState.RUNNING);
    expect(core.session).toBeNull();
    expect(resets).toEqual([false]);
    // The device works again from RUNNING.
    expect(await core.setState(DeviceState.PRE_COPY)).not.toBeNull();
  });

  it('an injected arc failure is reported with the state read back from the device', async () => {
    const src = sim({ size: 1 << 20, flags: 0x3, faults: { arc: { from: DeviceState.RUNNING_P2P, to: DeviceState.STOP, code: 'EIO', toError: true } } });
    const core = new MigrationCore(src, { recovery: 'recover-then-reset' });
    const err = await core.setState(DeviceState.STOP_COPY).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EIO', arc: { from: DeviceState.RUNNING_P2P, to: DeviceState.STOP }, recovery: 'reset', state: DeviceState.RUNNING });
    expect(await src.getState()).toBe(DeviceState.RUNNING);
  });
});
