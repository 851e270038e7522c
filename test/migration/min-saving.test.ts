/**
 * migrate()'s compressionMinSaving: with zstd, a record whose frame saves less than that share of it
 * goes raw (the default 1/32 sends incompressible device pages raw), and a bad value is a USAGE
 * error before anything touches the devices.
 */
import { describe, it, expect } from 'vitest';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { DeviceState as S } from '../../src/fsm/states.js';
import { ErrorCodes } from '../../src/fsm/errors.js';
import { MiB, withSimPair } from '../e2e/helpers.js';

/** One 'random' SimDevice (pages that shrink by well under 1/32 at zstd level 1) moved with zstd. */
function moveRandom(minSaving: number | undefined) {
  return withSimPair(1, { size: 16 * MiB, profile: 'random' }, async (src, dst, listener) => {
    const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
    const out = migrate({ devices: src.cores, transport: listener.url, compression: 'zstd', ...(minSaving !== undefined ? { compressionMinSaving: minSaving } : {}) });
    const [s, d] = await Promise.all([out.done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
    expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
    return s;
  });
}

describe('migrate(): compressionMinSaving', () => {
  it('sends incompressible records raw by default, compressed when any saving is asked for', async () => {
    // All raw: the records' framing makes the wire a little larger than the raw bytes (0.9998 here).
    expect((await moveRandom(undefined)).compressionRatio).toBeLessThan(1);
    // Every record whose frame is smaller by a byte goes compressed: about 0.2% saved here.
    expect((await moveRandom(0)).compressionRatio).toBeGreaterThan(1.001);
  });

  it('refuses a value outside [0, 1) with USAGE and leaves the source device running, its state intact', async () => {
    await withSimPair(1, { size: 4 * MiB }, async (src) => {
      const before = src.sims[0].digest();
      const out = migrate({ devices: src.cores, transport: 'unix:/nonexistent/vfio-mig.sock', compression: 'zstd', compressionMinSaving: 1 });
      await expect(out.done).rejects.toMatchObject({ code: ErrorCodes.USAGE });
      expect(await src.cores[0].getState()).toBe(S.RUNNING);
      expect(src.sims[0].digest()).toBe(before);
    });
  });
});
