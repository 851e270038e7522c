/**
 * A compressed stop-copy smaller than a chunk per compression worker leaves in one record per
 * worker (reads limited to a share of it), not in one record compressed by one worker while the
 * others idle inside the downtime.
 */
import { describe, it, expect } from 'vitest';
import { DeviceState } from '../../src/fsm/states.js';
import type { SavingSession } from '../../src/fsm/types.js';
import { receive } from '../../src/migration/destination.js';
import { migrate, type MigrateOptions } from '../../src/migration/source.js';
import { sharedCompressionPool } from '../../src/streams/compression-pool.js';
import { MiB, withSimPair, type Sims } from '../e2e/helpers.js';

const S = DeviceState;

/**
 * Migrate one 8 MiB PRE_COPY device dirtying 32 MiB/s; the sizes its STOP_COPY reads asked for and
 * got. `afterRead(n)` runs after each STOP_COPY read (n: reads so far); with `fails`, the migration
 * must fail and the error and both sides are returned instead.
 */
async function stopCopyReads(opts: Partial<MigrateOptions>, afterRead?: (n: number, src: Sims) => void) {
  return withSimPair(
    1,
    { size: 8 * MiB, dirtyRate: 32 * MiB },
    async (src, dst, listener) => {
      const asked: number[] = [];
      const got: number[] = [];
      src.cores[0].on('arc', (a) => {
        if (a.to !== S.STOP_COPY) return;
        const session = src.sims[0].session as SavingSession;
        const inner = session.read.bind(session);
        session.read = async (buf: Buffer) => {
          asked.push(buf.length);
          const n = await inner(buf);
          if (n > 0) got.push(n);
          afterRead?.(asked.length, src);
          return n;
        };
      });
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000, chunkSize: MiB, ...opts });
      if (afterRead !== undefined) {
        const [s, d] = await Promise.allSettled([run.done, incoming.done]);
        expect(s.status).toBe('rejected');
        expect(d.status).toBe('rejected');
        const err = (s as PromiseRejectedResult).reason as { code: string; phase: string };
        return { asked, got, err, srcState: await src.cores[0].getState(), dstState: await dst.cores[0].getState(), dstResets: dst.resets.length };
      }
      const [s, d] = await Promise.all([run.done, incoming.done]);
      expect(s.verified && d.verified).toBe(true);
      expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
      return { asked, got, s };
    },
    () => ({ flags: 7 }),
  );
}

describe('a small compressed stop-copy is split over the compression workers', () => {
  it('reads it in pieces of about its size per worker, each a record of its own', async () => {
    const workers = sharedCompressionPool().size;
    const { asked, got } = await stopCopyReads({ compression: 'zstd' });
    const bytes = got.reduce((a, b) => a + b, 0);
    expect(bytes).toBeGreaterThan(0);
    expect(asked.length).toBeGreaterThan(0);
    if (workers < 2) {
      expect(Math.max(...asked)).toBe(MiB);
      return;
    }
    // Every read asked for less than a chunk: a share of the expected stop-copy, at least 64 KiB.
    expect(Math.max(...asked)).toBeLessThan(MiB);
    expect(Math.min(...asked)).toBeGreaterThanOrEqual(64 * 1024);
    // Above two pieces' minimum the data came in two reads at least (the estimate is not exact).
    if (bytes > 2 * 64 * 1024) expect(got.length).toBeGreaterThanOrEqual(2);
  });

  it('a source device reset between the pieces fails the migration with ENODEV in stop-copy; the destination resets its device', async () => {
    const r = await stopCopyReads({ compression: 'zstd' }, (n, src) => {
      if (n === 1) void src.cores[0].reset();
    });
    expect(r.err).toMatchObject({ code: 'ENODEV', phase: 'stop-copy' });
    expect(r.srcState).toBe(S.RUNNING);
    expect(r.dstResets).toBeGreaterThan(0);
    expect(r.dstState).toBe(S.RUNNING);
  });

  it('reads whole chunks when nothing is compressed', async () => {
    const { asked, got } = await stopCopyReads({});
    expect(got.length).toBeGreaterThan(0);
    expect(new Set(asked)).toEqual(new Set([MiB]));
  });
});
