/**
 * The policy on a real run: an infeasible migration (a device dirtying faster than the capped link
 * can carry) is aborted by the policy as not converging, long before any budget, and leaves the
 * source device RUNNING with its workload going, the destination's device reset and told why.
 */
import { describe, it, expect } from 'vitest';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState } from '../../src/fsm/states.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { DefaultSwitchoverPolicy, StepwiseSwitchoverPolicy, type Decision } from '../../src/migration/policy.js';
import { MiB, withSimPair } from '../e2e/helpers.js';

describe('policy end to end', () => {
  it('aborts an infeasible migration early as not converging; the source keeps running, the destination is reset', async () => {
    await withSimPair(1, { size: 16 * MiB, dirtyRate: 32 * MiB }, async (src, dst, listener) => {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      incoming.done.catch(() => {});
      const t0 = performance.now();
      const run = migrate({
        devices: src.cores,
        transport: listener.url,
        downtimeLimitMs: 50,
        bandwidth: 16_000_000,
        policy: new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1500, precopyBudgetMs: 60_000 }),
      });
      const decisions: Decision[] = [];
      run.on('decision', (d) => decisions.push(d as Decision));
      const err = await run.done.then(
        () => null,
        (e: unknown) => e,
      );
      const tookMs = performance.now() - t0;
      expect(err).toBeInstanceOf(MigError);
      const e = err as MigError;
      expect(e.code).toBe('VFIO_MIG_ERR_POLICY_ABORT');
      expect(e.phase).toBe('precopy');
      expect(e.detail?.reason).toBe('not-converging');
      expect(e.message).toMatch(/does not converge/);
      // Early: far from the budget (a blind run would never end).
      expect(tookMs).toBeLessThan(30_000);
      const last = decisions[decisions.length - 1];
      expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
      expect(last.numbers.limitMs).toBe(50);
      expect(last.numbers.highMs).toBeGreaterThan(50);
      // The source device runs again, its workload still dirtying it.
      expect(await src.cores[0].getState()).toBe(DeviceState.RUNNING);
      const d1 = src.sims[0].digest();
      await new Promise((r) => setTimeout(r, 100));
      expect(src.sims[0].digest()).not.toBe(d1);
      // The destination learnt why from the source's abort record, which queued behind capped data
      // (it was destroyed with the transport, and the destination saw a connection lost mid-stream),
      // and its device left RESUMING through a reset.
      const derr = await incoming.done.then(
        () => null,
        (x: unknown) => x,
      );
      expect((derr as MigError).code).toBe('VFIO_MIG_ERR_POLICY_ABORT');
      expect((derr as MigError).message).toMatch(/^source aborted in phase precopy: not-converging: PRE_COPY does not converge/);
      expect((derr as MigError).recovery).toBe('reset');
      expect(dst.resets).toContain(0);
      expect(await dst.cores[0].getState()).toBe(DeviceState.RUNNING);
    });
  });

  it('the stepwise policy raises the limit until the prediction fits, and the summary names the limit the switchover went under', async () => {
    // 8 MiB dirtied at 64 MiB/s behind a 16 MB/s link: every page is hot, the stop-copy is the
    // whole state, ~0.5 s, far above 100 ms; raised by 250 ms every 150 ms it fits at 600 or 850.
    await withSimPair(1, { size: 8 * MiB, dirtyRate: 64 * MiB }, async (src, dst, listener) => {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      const policy = new StepwiseSwitchoverPolicy({ maxLimitMs: 2000, stepMs: 250, stepIntervalMs: 150 });
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 100, bandwidth: 16_000_000, policy });
      const decisions: Decision[] = [];
      run.on('decision', (d) => decisions.push(d as Decision));
      const [s, d] = await Promise.all([run.done, incoming.done]);
      expect(s.verified && d.verified).toBe(true);
      expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
      const raises = decisions.filter((x) => x.reason === 'limit-raised');
      expect(raises.length).toBeGreaterThan(0);
      const last = decisions.at(-1)!;
      expect(last.action).toBe('switchover');
      // The limit in force at the confirmed switchover, not the 100 ms asked for.
      expect(s.switchoverLimitMs).toBe(last.numbers.limitMs);
      expect(s.switchoverLimitMs).toBe(policy.currentLimitMs);
      expect(s.switchoverLimitMs).toBe(100 + 250 * raises.length);
      expect(s.predictedDowntimeMs).toBeGreaterThan(100);
      expect(s.predictedDowntimeMs).toBeLessThanOrEqual(s.switchoverLimitMs!);
      expect(d.switchoverLimitMs).toBeNull();
    });
  });
});
