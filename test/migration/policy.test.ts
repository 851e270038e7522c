import { describe, it, expect } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import {
  DefaultSwitchoverPolicy,
  StepwiseSwitchoverPolicy,
  TokenBucket,
  createBandwidthLimiter,
  policyAbortError,
  type PolicySnapshot,
  type SwitchoverPolicy,
  type Decision,
} from '../../src/migration/policy.js';
import { PrecopyEstimator, type Prediction } from '../../src/streams/estimator.js';
import { MigError } from '../../src/fsm/errors.js';

const MIB = 1024 * 1024;

function prediction(p: Partial<Prediction> = {}): Prediction {
  const base = {
    valid: true,
    confident: true,
    rateBounded: true,
    downtimeMs: 100,
    lowMs: 90,
    highMs: 110,
    lowerBoundMs: 50,
    stopCopyBytes: 10 * MIB,
    floorBytes: 5 * MIB,
    growthBytes: 0,
    inFlightBytes: 0,
    drainBytes: 0,
    drainMs: 0,
    transferBytes: 10 * MIB,
    rateBytesPerMs: 100_000,
    bestRateBytesPerMs: 120_000,
    generationRateBytesPerMs: 200_000,
    wireRateBytesPerMs: 100_000,
    compressionRatio: 1,
    pipelineRateBytesPerMs: Number.NaN,
    linkCreditBytes: 0,
    dirtyRateBytesPerMs: 10_000,
    stateDirtyRateBytesPerMs: Number.NaN,
    stateDirtyRateLowBytesPerMs: Number.NaN,
    rateHighBytesPerMs: 110_000,
    rateCapBytesPerMs: Number.POSITIVE_INFINITY,
    steadyDirtyBytes: Number.NaN,
    transferMs: 100,
    fillMs: 0,
    stopCopyReadBytes: MIB,
    compressWorkerRateBytesPerMs: Number.NaN,
    endLagMs: 0,
    fixedMs: { enterStopCopy: 0, destValidate: 0, destResume: 0, linkLatency: 0, total: 0 },
    ...p,
  };
  // As the estimator computes it, unless a test sets it.
  const transferBytes = p.transferBytes ?? base.stopCopyBytes + base.growthBytes + base.inFlightBytes * base.compressionRatio;
  return { ...base, transferBytes };
}

/** A synthetic estimator state: everything ready for a switchover unless overridden. */
function snap(over: Partial<PolicySnapshot> = {}, p: Partial<Prediction> = {}): PolicySnapshot {
  const pred = prediction(p);
  return {
    nowMs: 0,
    elapsedMs: 1000,
    initialBytes: 0,
    dirtyBytes: MIB,
    stopCopyBytes: pred.stopCopyBytes,
    initialSent: true,
    switchoverAcked: true,
    epoch: 0,
    bytesRead: 100 * MIB,
    wireBytes: 100 * MIB,
    wireRawBytes: 100 * MIB,
    queryFailed: false,
    queryFailures: 0,
    reinits: 0,
    dirtyRateBytesPerMs: pred.dirtyRateBytesPerMs,
    throughputBytesPerMs: pred.rateBytesPerMs,
    prediction: pred,
    downtimeLimitMs: 300,
    ...over,
  };
}

describe('DefaultSwitchoverPolicy', () => {
  it('switches over when initial data is sent, acked, and the upper band fits the limit', () => {
    const d = new DefaultSwitchoverPolicy().decide(snap());
    expect(d.action).toBe('switchover');
    expect(d.reason).toBe('within-limit');
    expect(d.numbers.limitMs).toBe(300);
    expect(d.numbers.highMs).toBe(110);
    expect(d.message).toMatch(/110\.0 ms/);
    expect(d.message).not.toMatch(/last record/);
    // The stop-copy's fill is named with the rest of the sum.
    const f = new DefaultSwitchoverPolicy().decide(snap({}, { fillMs: 2.5 }));
    expect(f.message).toMatch(/at 100\.0 MB\/s plus 2\.5 ms for the last record plus 0\.0 ms fixed/);
    expect(f.numbers.fillMs).toBe(2.5);
  });

  it('uses the upper edge of the band, not the mean', () => {
    const d = new DefaultSwitchoverPolicy().decide(snap({}, { downtimeMs: 250, highMs: 320 }));
    expect(d.action).toBe('continue');
    expect(d.reason).toBe('above-limit');
  });

  it('waits for the initial data, the acknowledgement, good queries and a known size', () => {
    const p = new DefaultSwitchoverPolicy();
    expect(p.decide(snap({ initialSent: false, initialBytes: 3 * MIB })).reason).toBe('initial-pending');
    expect(p.decide(snap({ switchoverAcked: false })).reason).toBe('ack-pending');
    expect(p.decide(snap({ switchoverAcked: false, switchoverAckRequired: false })).action).toBe('switchover');
    expect(p.decide(snap({ queryFailed: true, queryFailures: 2 })).reason).toBe('query-failed');
    expect(p.decide(snap({}, { valid: false, downtimeMs: Infinity, highMs: Infinity })).reason).toBe('prediction-invalid');
    for (const d of [p.decide(snap({ initialSent: false })), p.decide(snap({ queryFailed: true }))]) expect(d.action).toBe('continue');
  });

  it('aborts early when even the lower bound exceeds the limit, naming the numbers', () => {
    const d = new DefaultSwitchoverPolicy().decide(snap({ initialSent: false }, { lowerBoundMs: 450, highMs: 900, floorBytes: 40 * MIB }));
    expect(d.action).toBe('abort');
    expect(d.reason).toBe('lower-bound-above-limit');
    expect(d.message).toMatch(/450\.0 ms/);
    expect(d.message).toMatch(/40\.0 MiB/);
    expect(d.message).toMatch(/300\.0 ms/);
    expect(d.numbers.lowerBoundMs).toBe(450);
    const err = policyAbortError(d);
    expect(err).toBeInstanceOf(MigError);
    expect(err.code).toBe('VFIO_MIG_ERR_POLICY_ABORT');
    expect(err.phase).toBe('precopy');
    expect(err.detail).toMatchObject({ reason: 'lower-bound-above-limit', lowerBoundMs: 450, limitMs: 300 });
  });

  it('never aborts on the lower bound of an unconfident or invalid prediction', () => {
    const p = new DefaultSwitchoverPolicy();
    expect(p.decide(snap({}, { confident: false, lowerBoundMs: 450, highMs: 900 })).action).toBe('continue');
    expect(p.decide(snap({ queryFailed: true }, { valid: false, lowerBoundMs: 450, highMs: Infinity })).action).toBe('continue');
  });

  it('aborts as not converging when the dirty rate keeps up with the throughput over a window; one noisy sample does not reset it', () => {
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 2000 });
    const reasons: string[] = [];
    let last: Decision | null = null;
    for (let t = 1000, i = 0; t <= 3000; t += 250, i++) {
      // Draining steadily (so only the rate rule can fire), one sample in nine converging.
      const dirty = i === 4 ? 50_000 : 150_000;
      last = p.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: dirty, rateBytesPerMs: 100_000, highMs: 900, stopCopyBytes: (40 - i) * MIB }));
      reasons.push(last.reason);
    }
    expect(reasons.slice(0, -1).every((r) => r === 'above-limit')).toBe(true);
    expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(last?.numbers.divergingFraction).toBeCloseTo(8 / 9, 9);
    expect(last?.numbers.windowMs).toBe(2000);
    expect(last?.message).toMatch(/150\.0 MB\/s/);
    p.reset();
    expect(p.decide(snap({ elapsedMs: 3250 }, { dirtyRateBytesPerMs: 150_000, highMs: 900 })).action).toBe('continue');
  });

  it('aborts as not converging when the bytes a switchover would move stop shrinking', () => {
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 2000 });
    let last: Decision | null = null;
    for (let t = 0, i = 0; t <= 2000; t += 250, i++) {
      // The devices re-dirty what PRE_COPY sends: the backlog wobbles, the dirty rate looks lower.
      last = p.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: 50_000, lowMs: 400, highMs: 900, stopCopyBytes: (i % 2 === 0 ? 10 : 12) * MIB, growthBytes: 0 }));
      if (t < 2000) expect(last.reason).toBe('above-limit');
    }
    expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(last?.message).toMatch(/made no new low/);
    expect(last?.numbers.windowFirstMinBytes).toBe(10 * MIB);
    // The same wobble with an optimistic edge within the limit: a small remainder, not a failure.
    const q = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 2000 });
    for (let t = 0, i = 0; t <= 4000; t += 250, i++) {
      const d = q.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: 50_000, lowMs: 200, highMs: 900, stopCopyBytes: (i % 2 === 0 ? 10 : 12) * MIB }));
      expect(d.reason).toBe('above-limit');
    }
  });

  it('a sawtooth whose later dips stay above an earlier low is not draining, however its halves compare', () => {
    // Rounds re-read what the devices re-dirty: lows of 8, 9, 8.5, 9, 8.5 MiB... The second half of a
    // window may dip below its first half, but never below the 8 MiB seen before: no progress.
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    const lows = [8, 9, 8.5, 9, 8.5, 9, 8.5, 9, 8.5];
    let last: Decision | null = null;
    let t = 0;
    for (const low of lows) {
      for (const b of [low + 4, low + 2, low]) {
        last = p.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: 50_000, lowMs: 400, highMs: 900, stopCopyBytes: b * MIB, growthBytes: 0 }));
        t += 100;
        if (last.action === 'abort') break;
      }
      if (last?.action === 'abort') break;
    }
    expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(last?.numbers.windowFirstMinBytes).toBe(8 * MIB);
    expect(t).toBeLessThanOrEqual(1700);
  });

  it('keeps going while the bytes shrink, however slowly, and judges nothing on unconfident numbers', () => {
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    for (let t = 0; t <= 20_000; t += 100) {
      const d = p.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: 90_000, lowMs: 400, highMs: 900, stopCopyBytes: 100 * MIB - t * 10 }));
      expect(d.reason).toBe('above-limit');
    }
    const q = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    for (let t = 0; t <= 5000; t += 100) {
      expect(q.decide(snap({ elapsedMs: t }, { confident: false, dirtyRateBytesPerMs: 150_000, highMs: 900 })).reason).toBe('above-limit');
    }
  });

  it('during the initial data: the bytes do not count (they drain by definition), a dirty rate at or above the throughput does', () => {
    // Wobbling bytes, rate below the throughput: no verdict however long the initial data takes.
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    for (let t = 0, i = 0; t <= 5000; t += 100, i++) {
      const d = p.decide(snap({ elapsedMs: t, initialSent: false, initialBytes: 50 * MIB }, { dirtyRateBytesPerMs: 50_000, lowMs: 400, highMs: 900, stopCopyBytes: (i % 2 === 0 ? 10 : 12) * MIB }));
      expect(d.reason).toBe('initial-pending');
    }
    // A device that re-dirties what was sent as fast as the link sends it is judged before its
    // initial data is through: a window of such samples is enough.
    const q = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    let last: Decision | null = null;
    for (let t = 0; t <= 1000; t += 100) {
      last = q.decide(snap({ elapsedMs: t, initialSent: false, initialBytes: 50 * MIB }, { dirtyRateBytesPerMs: 150_000, rateBytesPerMs: 100_000, highMs: 900 }));
      if (t < 1000) expect(last.reason).toBe('initial-pending');
    }
    expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(last?.numbers.divergingFraction).toBe(1);
  });

  it('aborts at once, without a window, when even the slow edge of the state dirty rate is at or above the fast edge of the transfer rate', () => {
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 60_000 });
    const d = p.decide(
      snap({ elapsedMs: 1000, bytesRead: 100 * MIB, initialSent: false, initialBytes: 50 * MIB }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 900 }),
    );
    expect(d).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(d.numbers.movedBytesPerMs).toBeCloseTo((100 * MIB) / 1000, 6);
    expect(d.message).toMatch(/does not converge: the devices dirty their state at 400\.0 MB\/s \(at least 300\.0 MB\/s/);
    expect(d.numbers).toMatchObject({ stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000 });
    // The bands overlap: no verdict yet (the window decides).
    const q = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 60_000 });
    expect(q.decide(snap({ elapsedMs: 1000 }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 140_000, rateHighBytesPerMs: 150_000, highMs: 900 })).reason).toBe('above-limit');
    // Above the fast edge, but by less than the margin (λ sampled on a busy loop can read ~20% high): the window's to judge.
    expect(q.decide(snap({ elapsedMs: 1000 }, { stateDirtyRateBytesPerMs: 250_000, stateDirtyRateLowBytesPerMs: 170_000, rateHighBytesPerMs: 150_000, highMs: 900 })).reason).toBe('above-limit');
    // PRE_COPY has plainly moved more per ms than the low edge (a model error, e.g. a bad ratio): no verdict.
    expect(q.decide(snap({ elapsedMs: 100, bytesRead: 100 * MIB }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 900 })).reason).toBe('above-limit');
    // Under a cap, what moved beyond cap x ratio went on the bucket's first credit: a burst the link
    // cannot repeat. 100 MiB in 100 ms (1 GB/s moved) on a link that sustains 150 kB/s raw: abort.
    const capped = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 60_000 });
    const burst = capped.decide(
      snap({ elapsedMs: 100, bytesRead: 100 * MIB }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, rateCapBytesPerMs: 160_000, highMs: 900 }),
    );
    expect(burst).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(burst.numbers.movedBytesPerMs).toBe(160_000);
    // ...but a cap above what the low edge needs to beat keeps the cross-check: no verdict.
    expect(q.decide(snap({ elapsedMs: 100, bytesRead: 100 * MIB }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, rateCapBytesPerMs: 250_000, highMs: 900 })).reason).toBe('above-limit');
    // A path still speeding up: slow on average, but the last 100 ms moved more than the low edge.
    const r = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 60_000 });
    const ramp = { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 900 };
    r.reset();
    r.decide(snap({ elapsedMs: 850, bytesRead: 50 * MIB }, { highMs: 900 }));
    expect(r.decide(snap({ elapsedMs: 950, bytesRead: 90 * MIB }, ramp)).reason).toBe('above-limit'); // 40 MiB in 100 ms: 419 kB/ms
    r.reset();
    r.decide(snap({ elapsedMs: 850, bytesRead: 80 * MIB }, { highMs: 900 }));
    expect(r.decide(snap({ elapsedMs: 950, bytesRead: 90 * MIB }, ramp)).action).toBe('abort'); // 10 MiB in 100 ms: 105 kB/ms
    // The model not ready (NaN): nothing.
    expect(q.decide(snap({ elapsedMs: 2000 }, { highMs: 900 })).reason).toBe('above-limit');
    // Whatever the dirtying, a switchover that fits now is taken (a small state can always be stopped and copied).
    expect(q.decide(snap({ elapsedMs: 300 }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 90 })).action).toBe('switchover');
    // A fast edge that rests on no measured rate (the wire's prior) proves nothing.
    const dirty = { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 900 };
    expect(q.decide(snap({ elapsedMs: 4000 }, { ...dirty, confident: false, rateBounded: false })).reason).toBe('above-limit');
    // A measured fast edge is enough while a device's generation rate is unmeasured (not confident):
    // that rate could only make the transfer slower.
    const u = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 60_000 });
    expect(u.decide(snap({ elapsedMs: 4000 }, { ...dirty, confident: false, rateBounded: true }))).toMatchObject({ action: 'abort', reason: 'not-converging' });
    // The stepwise policy answers non-convergence by raising its limit, not by aborting.
    const w = new StepwiseSwitchoverPolicy({ maxLimitMs: 1000 });
    expect(w.decide(snap({ elapsedMs: 1000 }, { stateDirtyRateBytesPerMs: 400_000, stateDirtyRateLowBytesPerMs: 300_000, rateHighBytesPerMs: 150_000, highMs: 900 })).action).toBe('continue');
  });

  it('counts a state dirty rate at or above the throughput as diverging in the window', () => {
    const p = new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 1000 });
    let last: Decision | null = null;
    for (let t = 0; t <= 1000; t += 100) {
      // Bands overlap (no verdict at once), but the means say the devices outrun the link.
      last = p.decide(snap({ elapsedMs: t }, { dirtyRateBytesPerMs: 50_000, stateDirtyRateBytesPerMs: 120_000, stateDirtyRateLowBytesPerMs: 90_000, rateBytesPerMs: 100_000, rateHighBytesPerMs: 130_000, highMs: 900, stopCopyBytes: (100 - t / 100) * MIB }));
      if (t < 1000) expect(last.reason).toBe('above-limit');
    }
    expect(last).toMatchObject({ action: 'abort', reason: 'not-converging' });
    expect(last?.numbers.divergingFraction).toBe(1);
  });

  it('aborts when the PRE_COPY budget is spent', () => {
    const p = new DefaultSwitchoverPolicy({ precopyBudgetMs: 10_000 });
    expect(p.decide(snap({ elapsedMs: 9999 }, { highMs: 900 })).action).toBe('continue');
    const d = p.decide(snap({ elapsedMs: 10_000 }, { highMs: 900 }));
    expect(d.action).toBe('abort');
    expect(d.reason).toBe('precopy-budget');
    expect(d.numbers.budgetMs).toBe(10_000);
  });

  it('rejects bad options', () => {
    expect(() => new DefaultSwitchoverPolicy({ nonConvergenceWindowMs: 0 })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
  });
});

describe('StepwiseSwitchoverPolicy', () => {
  it('raises the limit stepwise up to the maximum, switches over when the prediction fits, else aborts', () => {
    const p = new StepwiseSwitchoverPolicy({ maxLimitMs: 900, stepIntervalMs: 1000 });
    const high = { highMs: 650, lowerBoundMs: 100 };
    const seq: Decision[] = [];
    for (const t of [0, 500, 1000, 1500, 2000]) seq.push(p.decide(snap({ elapsedMs: t }, high)));
    expect(seq.map((d) => d.reason)).toEqual(['above-limit', 'above-limit', 'limit-raised', 'above-limit', 'limit-raised']);
    expect(seq[2].numbers.limitMs).toBe(600);
    expect(seq[2].numbers.previousLimitMs).toBe(300);
    expect(p.currentLimitMs).toBe(900);
    expect(p.decide(snap({ elapsedMs: 2100 }, high))).toMatchObject({ action: 'switchover', reason: 'within-limit' });
  });

  it('aborts at the maximum after a full interval, and at once when the lower bound exceeds the maximum', () => {
    const p = new StepwiseSwitchoverPolicy({ maxLimitMs: 600, stepMs: 300, stepIntervalMs: 1000 });
    const high = { highMs: 2000, lowerBoundMs: 100 };
    expect(p.decide(snap({ elapsedMs: 0 }, high)).reason).toBe('above-limit');
    expect(p.decide(snap({ elapsedMs: 1000 }, high)).reason).toBe('limit-raised');
    expect(p.decide(snap({ elapsedMs: 1999 }, high)).reason).toBe('above-limit');
    const d = p.decide(snap({ elapsedMs: 2000 }, high));
    expect(d).toMatchObject({ action: 'abort', reason: 'max-limit-exceeded' });
    expect(d.numbers.maxLimitMs).toBe(600);
    const q = new StepwiseSwitchoverPolicy({ maxLimitMs: 600 });
    // 500 > 300 (the user limit) but <= 600: not a reason to abort yet.
    expect(q.decide(snap({}, { highMs: 2000, lowerBoundMs: 500 })).action).toBe('continue');
    expect(q.decide(snap({}, { highMs: 2000, lowerBoundMs: 700 }))).toMatchObject({ action: 'abort', reason: 'lower-bound-above-limit' });
  });

  it('does not abort on non-convergence: raising the limit is its answer', () => {
    const p = new StepwiseSwitchoverPolicy({ maxLimitMs: 3000, stepIntervalMs: 1000 });
    const diverging = { dirtyRateBytesPerMs: 200_000, rateBytesPerMs: 100_000, highMs: 800, lowerBoundMs: 100 };
    const reasons = [0, 5000, 10_000].map((t) => p.decide(snap({ elapsedMs: t }, diverging)).reason);
    expect(reasons).toEqual(['above-limit', 'limit-raised', 'limit-raised']);
  });
});

describe('a VMM policy and the estimator together', () => {
  it('a custom object implementing SwitchoverPolicy is fed the estimator snapshot', () => {
    const seen: PolicySnapshot[] = [];
    const custom: SwitchoverPolicy = {
      name: 'always-after-initial',
      decide(s) {
        seen.push(s);
        return { action: s.initialSent ? 'switchover' : 'continue', reason: s.initialSent ? 'within-limit' : 'initial-pending', message: '', numbers: { ...new DefaultSwitchoverPolicy().decide(s).numbers } };
      },
    };
    let t = 0;
    const est = new PrecopyEstimator({ now: () => t });
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(2 * MIB);
    expect(custom.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).action).toBe('continue');
    t += 10;
    est.recordRead(MIB);
    expect(custom.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).action).toBe('switchover');
    expect(seen[1].stopCopyBytes).toBe(MIB);
  });

  it('the default policy re-arms on REINIT through the estimator epoch', () => {
    let t = 0;
    const est = new PrecopyEstimator({ now: () => t });
    const policy = new DefaultSwitchoverPolicy();
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(2 * MIB);
    for (let i = 0; i < 8; i++) {
      t += 1;
      est.recordRead(MIB / 8);
      est.recordWire(MIB / 8, MIB / 8);
    }
    est.acknowledgeSwitchover();
    expect(policy.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).action).toBe('switchover');
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: true });
    expect(policy.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).reason).toBe('initial-pending');
    est.recordRead(MIB);
    expect(policy.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).reason).toBe('ack-pending');
    est.acknowledgeSwitchover(est.epoch);
    expect(policy.decide({ ...est.snapshot(), downtimeLimitMs: 300 }).action).toBe('switchover');
  });
});

describe('bandwidth cap', () => {
  it('the token bucket allows a burst, then delays to hold the long-run rate', () => {
    let t = 0;
    const b = new TokenBucket({ bytesPerSecond: 1_000_000, burstBytes: 100_000, now: () => t });
    expect(b.take(100_000)).toBe(0);
    // 1 MB/s = 1000 bytes per ms: 50 000 bytes of debt wait 50 ms.
    expect(b.take(50_000)).toBe(50);
    t += 50;
    expect(b.take(10_000)).toBe(10);
    // Idle refills up to the burst, never beyond.
    t += 10_000;
    expect(b.take(100_000)).toBe(0);
    expect(b.take(1000)).toBe(1);
    // available() reports the credit without taking it: negative in debt, capped at the burst.
    expect(b.available()).toBe(-1000);
    t += 21;
    expect(b.available()).toBe(20_000);
    expect(b.available()).toBe(20_000);
    t += 1_000_000;
    expect(b.available()).toBe(100_000);
  });

  it('one bucket shared by two channels caps their sum', () => {
    let t = 0;
    const b = new TokenBucket({ bytesPerSecond: 1_000_000, burstBytes: 1000, now: () => t });
    let sent = 0;
    // Two channels alternate 10 KB chunks, each waiting what the bucket says.
    const ready = [0, 0];
    while (t < 1000) {
      const ch = ready[0] <= ready[1] ? 0 : 1;
      t = Math.max(t, ready[ch]);
      ready[ch] = t + b.take(10_000);
      sent += 10_000;
    }
    // About 1 MB in 1 s (plus the burst and one chunk in flight per channel).
    expect(sent).toBeGreaterThanOrEqual(990_000);
    expect(sent).toBeLessThanOrEqual(1_031_000);
  });

  it('the limiter Transform passes every byte through, in order', async () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < 16; i++) chunks.push(Buffer.alloc(64 * 1024, i));
    const src = createHash('sha256');
    for (const c of chunks) src.update(c);
    const dst = createHash('sha256');
    let bytes = 0;
    // 16 MB/s with a 256 KiB burst: about 50 ms for 1 MiB.
    await pipeline(
      Readable.from(chunks),
      createBandwidthLimiter({ bytesPerSecond: 16_000_000, burstBytes: 256 * 1024 }),
      new Writable({
        write(c: Buffer, _e, cb) {
          dst.update(c);
          bytes += c.length;
          cb();
        },
      }),
    );
    expect(bytes).toBe(MIB);
    expect(dst.digest('hex')).toBe(src.digest('hex'));
  });

  it('destroying the limiter while it waits does not hang', async () => {
    const lim = createBandwidthLimiter({ bytesPerSecond: 1000, burstBytes: 1 });
    lim.write(Buffer.alloc(10_000));
    const closed = new Promise((r) => lim.on('close', r));
    lim.destroy();
    await closed;
    expect(lim.destroyed).toBe(true);
  });
});
