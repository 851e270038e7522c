import { describe, it, expect } from 'vitest';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import { SimDevice } from '../../src/devices/sim-device.js';
import { DeviceState } from '../../src/fsm/states.js';
import { MigError } from '../../src/fsm/errors.js';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { createResumingStream } from '../../src/streams/resuming-stream.js';
import { MiB } from './fd-fixtures.js';

const { RUNNING, STOP, STOP_COPY, RESUMING, PRE_COPY } = DeviceState;

async function destination(size: number, profile: 'mixed' | 'zero' | 'random', seed: number): Promise<{ dev: SimDevice; session: ResumingSession }> {
  const dev = new SimDevice({ size, profile, seed, flags: 0x5 });
  await dev.step(RUNNING, STOP);
  const session = (await dev.step(STOP, RESUMING)) as ResumingSession;
  return { dev, session };
}

describe('SavingStream and ResumingStream with SimDevice', () => {
  for (const profile of ['mixed', 'random'] as const) {
    it(`moves a ${profile} SimDevice's STOP_COPY state into another SimDevice, digest equal`, async () => {
      const size = 4 * MiB;
      const src = new SimDevice({ size, profile, seed: 7, flags: 0x5 });
      const dst = await destination(size, profile, 7);
      src.dirtyPages(200); // so the destination's initial state differs from the source's
      expect(dst.dev.digest()).not.toBe(src.digest());
      await src.step(RUNNING, STOP);
      const saving = (await src.step(STOP, STOP_COPY)) as SavingSession;
      const s = createSavingStream(saving, { chunkSize: 256 * 1024 });
      const r = createResumingStream(dst.session);
      await pipeline(s, r);
      expect(s.bytesRead).toBe(r.bytesWritten);
      await dst.dev.step(RESUMING, STOP); // the destination validates the stream here
      expect(dst.dev.digest()).toBe(src.digest());
    });
  }

  for (const precopyEmpty of ['enomsg', 'zero'] as const) {
    it(`crosses PRE_COPY's temporary end (${precopyEmpty}) into STOP_COPY on one stream`, async () => {
      const size = 2 * MiB;
      const src = new SimDevice({ size, profile: 'mixed', seed: 3, precopyEmpty, flags: 0x5 });
      const dst = await destination(size, 'mixed', 3);
      src.dirtyPages(100);
      expect(dst.dev.digest()).not.toBe(src.digest());
      const saving = (await src.step(RUNNING, PRE_COPY)) as SavingSession;
      const s = createSavingStream(saving, { backoffMin: 1, backoffMax: 10 });
      const r = createResumingStream(dst.session);
      const events: string[] = [];
      let emptyInfo: unknown = null;
      s.on('precopy-empty', (ev) => {
        events.push('precopy-empty');
        emptyInfo = ev;
        // The VMM stops the device once the initial data is out: PRE_COPY -> STOP_COPY continues the session.
        void src.step(PRE_COPY, STOP_COPY);
      });
      s.on('precopy-data', () => events.push('precopy-data'));
      await pipeline(s, r);
      expect(events[0]).toBe('precopy-empty');
      expect(emptyInfo).toMatchObject({ bytesRead: expect.any(Number), initialBytes: 0 });
      await dst.dev.step(RESUMING, STOP);
      expect(dst.dev.digest()).toBe(src.digest());
    });
  }

  it('a device reset mid-stream (resetAfterBytes) gives ENODEV on the saving stream', async () => {
    const src = new SimDevice({ size: 8 * MiB, profile: 'zero', flags: 0x5, faults: { resetAfterBytes: 2 * MiB } });
    await src.step(RUNNING, STOP);
    const saving = (await src.step(STOP, STOP_COPY)) as SavingSession;
    const s = createSavingStream(saving);
    s.resume();
    const [err] = (await once(s, 'error')) as [MigError];
    expect(err).toBeInstanceOf(MigError);
    expect(err.code).toBe('ENODEV');
    expect(s.bytesRead).toBeLessThan(8 * MiB);
  });

  it('a read fault (EIO) from the device is typed', async () => {
    const src = new SimDevice({ size: 4 * MiB, flags: 0x5, faults: { readError: { afterBytes: MiB, code: 'EIO' } } });
    await src.step(RUNNING, STOP);
    const s = createSavingStream((await src.step(STOP, STOP_COPY)) as SavingSession);
    s.resume();
    const [err] = (await once(s, 'error')) as [MigError];
    expect(err.code).toBe('EIO');
  });
});
