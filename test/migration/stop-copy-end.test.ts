/**
 * The switchover's own steps in the downtime: once the source moved its devices to STOP_COPY, a 0
 * read is the end of each stream without a precopy-info round trip to learn it, and the devices'
 * digests are taken while their stop-copy is read, not after; the source's own arcs out of
 * STOP_COPY wait until the destination's 'running' ended the downtime.
 */
import { describe, it, expect } from 'vitest';
import { DeviceState } from '../../src/fsm/states.js';
import type { SavingSession } from '../../src/fsm/types.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { MiB, withSimPair } from '../e2e/helpers.js';

const S = DeviceState;

/** Migrate one 4 MiB SimDevice with `flags`; what its session and driver were asked in STOP_COPY. */
async function stopCopySteps(flags: number, dirtyRate: number) {
  return withSimPair(
    1,
    { size: 4 * MiB, dirtyRate },
    async (src, dst, listener) => {
      const steps: string[] = [];
      const sim = src.sims[0];
      const digest = sim.digest.bind(sim);
      sim.digest = () => {
        if (src.cores[0].state === S.STOP_COPY) steps.push('digest');
        return digest();
      };
      let wrapped: SavingSession | null = null;
      src.cores[0].on('arc', () => {
        const session = sim.session as SavingSession | null;
        if (session === null || session === wrapped || session.direction !== 'saving') return;
        wrapped = session;
        const read = session.read.bind(session);
        const info = session.precopyInfo.bind(session);
        session.read = async (buf: Buffer) => {
          const n = await read(buf);
          if (src.cores[0].state === S.STOP_COPY) steps.push(n > 0 ? 'data' : 'zero');
          return n;
        };
        session.precopyInfo = () => {
          if (src.cores[0].state === S.STOP_COPY) steps.push('precopy-info');
          return info();
        };
      });
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000 });
      const [s, d] = await Promise.all([run.done, incoming.done]);
      expect(s.verified && d.verified).toBe(true);
      expect(dst.sims[0].digest()).toBe(digest());
      return steps;
    },
    () => ({ flags }),
  );
}

describe('the end of the stop-copy', () => {
  it('a PRE_COPY device: its 0 read ends the stream without a precopy-info query; its digest is taken before', async () => {
    // 7: STOP_COPY | P2P | PRE_COPY; dirtying, so the stop-copy has data.
    const steps = await stopCopySteps(7, 16 * MiB);
    expect(steps).toContain('zero');
    expect(steps).not.toContain('precopy-info');
    expect(steps.indexOf('digest')).toBeGreaterThanOrEqual(0);
    expect(steps.indexOf('digest')).toBeLessThan(steps.indexOf('zero'));
  });

  it('a device without PRE_COPY, read only in STOP_COPY: the same', async () => {
    // 3: STOP_COPY | P2P.
    const steps = await stopCopySteps(3, 0);
    expect(steps[0]).toBe('digest');
    expect(steps.filter((x) => x === 'data').length).toBeGreaterThan(0);
    expect(steps.at(-1)).toBe('zero');
    expect(steps).not.toContain('precopy-info');
  });
});

describe('the end of the downtime', () => {
  it("the source leaves STOP_COPY only after the destination's 'running', outside the downtime", async () => {
    await withSimPair(
      1,
      { size: 4 * MiB, dirtyRate: 4 * MiB },
      async (src, dst, listener) => {
        // The destination's resume takes 30 ms: time enough to see which side of it the source's arc falls.
        const sim = dst.sims[0];
        const step = sim.step.bind(sim);
        sim.step = async (from, to) => {
          if (from === S.STOP && to === S.RUNNING_P2P) await new Promise((r) => setTimeout(r, 30));
          return step(from, to);
        };
        let runningAt = -1;
        dst.cores[0].on('arc', (a) => {
          if (a.to === S.RUNNING) runningAt = performance.now();
        });
        let stopAt = -1;
        src.cores[0].on('arc', (a) => {
          if (a.from === S.STOP_COPY && a.to === S.STOP) stopAt = performance.now() - a.ms;
        });
        const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
        const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000 });
        const [s] = await Promise.all([run.done, incoming.done]);
        expect(s.downtimeMs).toBeGreaterThanOrEqual(30);
        expect(runningAt).toBeGreaterThan(0);
        // The source's arc began once the destination was RUNNING (its 'running' sent after), not
        // while the source waited for it, 30 ms earlier.
        expect(stopAt).toBeGreaterThanOrEqual(runningAt);
        expect(src.cores[0].state).toBe(S.STOP);
      },
      () => ({ flags: 7 }),
    );
  });
});
