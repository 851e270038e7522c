import { describe, it, expect } from 'vitest';
import { PrecopyEstimator, RateWindow, stopCopyReadBytes, type QueryFailedEvent, type ReinitEvent, type InitialSentEvent, type Prediction, type PrecopyEstimatorOptions } from '../../src/streams/estimator.js';
import { MigError } from '../../src/fsm/errors.js';

const MIB = 1024 * 1024;

/** A scripted clock: tests move time by hand. */
function clock(start = 1000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

/** Feed `n` reads of `bytes` each, `ms` apart, and mirror them on the wire with `ratio` compression. */
function stream(est: PrecopyEstimator, c: ReturnType<typeof clock>, n: number, bytes: number, ms: number, ratio = 1, device = 0): void {
  for (let i = 0; i < n; i++) {
    c.advance(ms);
    est.recordRead(bytes, { device });
    est.recordWire(Math.round(bytes / ratio), bytes);
  }
}

describe('PrecopyEstimator: counters', () => {
  it('never adds stop-copy and PRE_COPY bytes: the stop-copy size already includes unread PRE_COPY data', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 8 * MIB, dirtyBytes: 2 * MIB, reinit: false });
    est.updateStopCopySize(12 * MIB);
    const s = est.snapshot();
    expect(s.stopCopyBytes).toBe(12 * MIB);
    expect(s.prediction.stopCopyBytes).toBe(12 * MIB);
    expect(s.initialBytes).toBe(8 * MIB);
    expect(s.dirtyBytes).toBe(2 * MIB);
    // Only the part PRE_COPY can never send is the floor.
    expect(s.prediction.floorBytes).toBe(2 * MIB);
  });

  it('decrements the local view between queries: initial first, then dirty, stop-copy by every byte, floored at 0', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 3 * MIB, dirtyBytes: 2 * MIB, reinit: false });
    est.updateStopCopySize(6 * MIB);
    est.recordRead(2 * MIB);
    let s = est.snapshot();
    expect([s.initialBytes, s.dirtyBytes, s.stopCopyBytes]).toEqual([1 * MIB, 2 * MIB, 4 * MIB]);
    est.recordRead(2 * MIB);
    s = est.snapshot();
    expect([s.initialBytes, s.dirtyBytes, s.stopCopyBytes]).toEqual([0, 1 * MIB, 2 * MIB]);
    // Reads may exceed what was reported ("do not trust the counter"): floors at 0, never negative.
    est.recordRead(5 * MIB);
    s = est.snapshot();
    expect([s.initialBytes, s.dirtyBytes, s.stopCopyBytes]).toEqual([0, 0, 0]);
    expect(s.bytesRead).toBe(9 * MIB);
  });

  it('marks the initial data sent when the local view reaches 0, once per epoch, with an event', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    const events: InitialSentEvent[] = [];
    est.on('initial-sent', (e) => events.push(e));
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    expect(est.initialSent).toBe(false);
    est.recordRead(MIB / 2);
    expect(est.initialSent).toBe(false);
    est.recordRead(MIB / 2);
    expect(est.initialSent).toBe(true);
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 100, reinit: false });
    expect(events).toEqual([{ device: 0, epoch: 0, all: true }]);
  });

  it('a temporary end of stream (recordEmpty) zeroes the PRE_COPY counters but not the stop-copy size', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: MIB, reinit: false });
    est.updateStopCopySize(4 * MIB);
    est.recordEmpty();
    const s = est.snapshot();
    expect([s.initialBytes, s.dirtyBytes, s.stopCopyBytes]).toEqual([0, 0, 4 * MIB]);
    expect(s.initialSent).toBe(true);
  });

  it('accepts bigint u64 values and rejects overflow, negatives and fractions as visible failed queries', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    const failed: QueryFailedEvent[] = [];
    est.on('query-failed', (e) => failed.push(e));
    expect(est.updatePrecopyInfo({ initialBytes: 5n, dirtyBytes: 0n })).toBe(true);
    expect(est.updateStopCopySize(BigInt(Number.MAX_SAFE_INTEGER))).toBe(true);
    expect(est.updateStopCopySize(2n ** 64n - 1n)).toBe(false);
    expect(est.updateStopCopySize(Number.MAX_SAFE_INTEGER + 2)).toBe(false);
    expect(est.updatePrecopyInfo({ initialBytes: -1, dirtyBytes: 0 })).toBe(false);
    expect(est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 1.5 })).toBe(false);
    expect(failed.map((f) => [f.kind, f.error.code, f.consecutive])).toEqual([
      ['stop-copy-size', 'EOVERFLOW', 1],
      ['stop-copy-size', 'EOVERFLOW', 2],
      ['precopy-info', 'EOVERFLOW', 1],
      ['precopy-info', 'EOVERFLOW', 2],
    ]);
    expect(failed[0].error).toBeInstanceOf(MigError);
    const s = est.snapshot();
    expect(s.queryFailed).toBe(true);
    expect(s.queryFailures).toBe(4);
    // Pessimistic, never 0: the prediction is unusable for a switchover.
    expect(s.prediction.valid).toBe(false);
    expect(s.prediction.downtimeMs).toBe(Infinity);
    expect(s.prediction.highMs).toBe(Infinity);
    expect(s.initialSent).toBe(false);
  });

  it('a failed stop-copy query keeps the prediction invalid until a good query arrives', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(MIB);
    expect(est.predict().valid).toBe(true);
    const err = Object.assign(new Error('ioctl failed'), { code: 'EIO' });
    expect(est.stopCopySizeFailed(err)).toBe(false);
    expect(est.predict().valid).toBe(false);
    expect(est.predict().highMs).toBe(Infinity);
    c.advance(100);
    expect(est.queryDue()).toBe(true);
    est.updateStopCopySize(MIB);
    expect(est.predict().valid).toBe(true);
    expect(est.snapshot().queryFailed).toBe(false);
  });

  it('a failed precopy query counts the initial data as not sent until a good query', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    const failed: QueryFailedEvent[] = [];
    est.on('query-failed', (e) => failed.push(e));
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    expect(est.initialSent).toBe(true);
    est.precopyInfoFailed(Object.assign(new Error('bad state'), { code: 'EINVAL' }));
    expect(est.initialSent).toBe(false);
    expect(failed[0].error.code).toBe('EINVAL');
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 10, reinit: false });
    expect(est.initialSent).toBe(true);
  });

  it('REINIT restarts the initial-data accounting and re-arms the switchover acknowledgement', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    const reinits: ReinitEvent[] = [];
    est.on('reinit', (e) => reinits.push(e));
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    est.recordRead(MIB);
    expect(est.initialSent).toBe(true);
    expect(est.acknowledgeSwitchover(0)).toBe(true);
    expect(est.switchoverAcked).toBe(true);
    c.advance(100);
    est.updatePrecopyInfo({ initialBytes: 2 * MIB, dirtyBytes: 0, reinit: true });
    expect(reinits).toEqual([{ device: 0, epoch: 1, initialBytes: 2 * MIB }]);
    const s = est.snapshot();
    expect(s.initialSent).toBe(false);
    expect(s.switchoverAcked).toBe(false);
    expect(s.epoch).toBe(1);
    expect(s.reinits).toBe(1);
    expect(s.initialBytes).toBe(2 * MIB);
    // An ack for the old epoch (in flight before the destination saw the new data) does not count.
    expect(est.acknowledgeSwitchover(0)).toBe(false);
    expect(est.switchoverAcked).toBe(false);
    est.recordRead(2 * MIB);
    expect(est.initialSent).toBe(true);
    expect(est.acknowledgeSwitchover()).toBe(true);
    expect(est.switchoverAcked).toBe(true);
  });

  it('re-queries at a bounded rate', () => {
    const c = clock();
    // The ordinary pace (the learning pace has its own test below).
    const est = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, requeryBytes: 8 * MIB, learnQueries: 0 });
    expect(est.queryDue()).toBe(true);
    est.updatePrecopyInfo({ initialBytes: 16 * MIB, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(32 * MIB);
    expect(est.queryDue()).toBe(false);
    expect(est.nextQueryInMs()).toBe(1000);
    est.recordRead(8 * MIB);
    // Enough bytes read, but never before the minimum interval.
    expect(est.queryDue()).toBe(false);
    expect(est.nextQueryInMs()).toBe(50);
    c.advance(50);
    expect(est.queryDue()).toBe(true);
    est.updatePrecopyInfo({ initialBytes: 8 * MIB, dirtyBytes: 0, reinit: false });
    c.advance(999);
    expect(est.queryDue()).toBe(false);
    c.advance(1);
    expect(est.queryDue()).toBe(true);
    // A view drained to 0 asks for a query after the minimum interval (mlx5 only makes new data on query).
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    est.recordRead(MIB);
    c.advance(49);
    expect(est.queryDue()).toBe(false);
    c.advance(1);
    expect(est.queryDue()).toBe(true);
  });
});

describe('PrecopyEstimator: rates and prediction', () => {

  it('while a device\'s dirtying is learned during its initial data, it is queried every learnQueryIntervalMs, within learnQueries queries', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, learnQueryIntervalMs: 10, learnQueries: 6 });
    est.updateStopCopySize(64 * MIB);
    // Initial data left, no λ yet: the learning pace.
    let dirty = 0;
    const query = (initial: number) => est.updatePrecopyInfo({ initialBytes: initial, dirtyBytes: dirty, reinit: false });
    query(60 * MIB);
    expect(est.queryDue()).toBe(false);
    expect(est.nextQueryInMs()).toBe(10);
    c.advance(10);
    expect(est.queryDue()).toBe(true);
    // A query after one that reported dirt gives a λ sample; three of them end the learning (the
    // first report of dirt gives none: its predecessor reported 0).
    for (let q = 1; q <= 4; q++) {
      dirty += MIB;
      est.recordRead(4 * MIB);
      expect(est.queryDue()).toBe(true);
      query(60 * MIB - 4 * q * MIB);
      c.advance(10);
    }
    expect(est.queryDue()).toBe(false);
    expect(est.nextQueryInMs()).toBe(990);
    // A device whose λ never comes (no dirt reported) leaves the pace after learnQueries queries.
    const quiet = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, learnQueryIntervalMs: 10, learnQueries: 6 });
    quiet.updatePrecopyInfo({ initialBytes: 60 * MIB, dirtyBytes: 0, reinit: false });
    quiet.updateStopCopySize(64 * MIB);
    for (let q = 2; q <= 6; q++) {
      c.advance(10);
      expect(quiet.queryDue()).toBe(true);
      quiet.updatePrecopyInfo({ initialBytes: 60 * MIB, dirtyBytes: 0, reinit: false });
    }
    c.advance(10);
    expect(quiet.queryDue()).toBe(false);
    expect(quiet.nextQueryInMs()).toBe(990);
    // A failed query is retried at the ordinary pace, not the learning one.
    const failing = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, learnQueryIntervalMs: 10 });
    failing.updatePrecopyInfo({ initialBytes: 60 * MIB, dirtyBytes: 0, reinit: false });
    failing.updateStopCopySize(64 * MIB);
    failing.precopyInfoFailed(new Error('EIO'));
    c.advance(10);
    expect(failing.queryDue()).toBe(false);
    c.advance(40);
    expect(failing.queryDue()).toBe(true);
    // Past the initial data the ordinary pace holds, λ or not.
    const done = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, learnQueryIntervalMs: 10 });
    done.updateStopCopySize(MIB);
    done.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: MIB, reinit: false });
    c.advance(10);
    expect(done.queryDue()).toBe(false);
    expect(done.nextQueryInMs()).toBe(990);
  });
  it('learns twice as fast from a device whose λ samples count learnFastDirtyBytes, at the usual pace from one that dirties little', () => {
    const c = clock();
    for (const [dirtPerSample, pace] of [
      [MIB, 5],
      [64 * 1024, 10],
    ] as const) {
      const est = new PrecopyEstimator({ now: c.now, minQueryIntervalMs: 50, maxQueryIntervalMs: 1000, learnQueryIntervalMs: 10 });
      est.updateStopCopySize(64 * MIB);
      let dirty = 0;
      let initial = 60 * MIB;
      const query = (): void => {
        c.advance(10);
        dirty += dirtPerSample;
        est.recordRead(4 * MIB);
        initial -= 4 * MIB;
        est.updatePrecopyInfo({ initialBytes: initial, dirtyBytes: dirty, reinit: false });
      };
      est.updatePrecopyInfo({ initialBytes: initial, dirtyBytes: 0, reinit: false });
      query(); // the first report of dirt: no λ sample yet (its predecessor reported none)
      expect(est.nextQueryInMs()).toBe(10);
      query(); // the first λ sample
      expect(est.nextQueryInMs(), `${dirtPerSample} bytes dirtied per sample`).toBe(pace);
      // REINIT: new initial data, nothing learned of it yet.
      est.updatePrecopyInfo({ initialBytes: 60 * MIB, dirtyBytes: 0, reinit: true });
      expect(est.nextQueryInMs()).toBe(10);
    }
  });

  it('predicts downtime from the stop-copy bytes at the wire rate when the wire is the slower', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(100 * MIB);
    // 1 MiB every 10 ms: 104857.6 bytes/ms, steady.
    stream(est, c, 20, MIB, 10);
    est.updateStopCopySize(50 * MIB);
    const p = est.predict();
    expect(p.valid).toBe(true);
    expect(p.confident).toBe(true);
    expect(p.rateBytesPerMs).toBeCloseTo(MIB / 10, 3);
    expect(p.transferMs).toBeCloseTo(500, 6);
    // The last 1 MiB read (10 ms, the reads' pace) then crosses the wire (10 ms): one read's time
    // beyond the 50 wire periods.
    expect(p.stopCopyReadBytes).toBe(MIB);
    expect(p.fillMs).toBeCloseTo(10, 6);
    expect(p.downtimeMs).toBeCloseTo(510, 6);
    // Steady samples: the band is the minimum relative band (5%).
    expect(p.lowMs).toBeCloseTo(500 / 1.05 + 10, 3);
    expect(p.highMs).toBeCloseTo(500 / 0.95 + 10, 3);
    expect(p.lowMs).toBeLessThan(p.downtimeMs);
    expect(p.highMs).toBeGreaterThan(p.downtimeMs);
  });

  it('the wire is measured after compression: raw rate = wire rate x ratio', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(40 * MIB);
    // Reads are timed separately and fast (device 4 MiB per ms); the wire carries 1/4 of the raw bytes.
    for (let i = 0; i < 10; i++) est.recordRead(MIB, { durationMs: 0.25 });
    for (let i = 0; i < 10; i++) est.recordWire(MIB / 4, MIB, { durationMs: 10 });
    const p = est.predict();
    expect(p.compressionRatio).toBeCloseTo(4, 9);
    expect(p.wireRateBytesPerMs).toBeCloseTo(MIB / 40, 6);
    expect(p.rateBytesPerMs).toBeCloseTo(MIB / 10, 6);
    expect(p.stopCopyBytes).toBe(30 * MIB);
    // 30 wire periods of 10 ms, and the last read's 0.25 ms before its record goes out.
    expect(p.fillMs).toBeCloseTo(0.25, 6);
    expect(p.downtimeMs).toBeCloseTo(300.25, 6);
  });

  it('the device generation rate limits when it is the slower, per device, with a shared wire', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, devices: 2 });
    for (const d of [0, 1]) {
      est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false }, d);
    }
    est.updateStopCopySize(10 * MIB, 0);
    est.updateStopCopySize(10 * MIB, 1);
    // Device 0 generates 1 MiB per 100 ms; device 1 1 MiB per ms; the wire 1 MiB per 5 ms.
    for (let i = 0; i < 5; i++) {
      est.recordRead(MIB, { device: 0, durationMs: 100 });
      est.recordRead(MIB, { device: 1, durationMs: 1 });
      est.recordWire(MIB, MIB, { durationMs: 5 });
      est.recordWire(MIB, MIB, { durationMs: 5 });
    }
    const p = est.predict();
    // Device 0 has 5 MiB left at 1 MiB/100 ms = 500 ms; all 10 MiB on the wire = 50 ms.
    expect(p.stopCopyBytes).toBe(10 * MIB);
    expect(p.transferMs).toBeCloseTo(500, 6);
    expect(p.generationRateBytesPerMs).toBeCloseTo(MIB / 100, 6);
  });

  it('adds the fixed costs (arcs, destination validation and resume, link latency) and widens the band by their variance', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, fixedCosts: { destValidate: 20 } });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(10 * MIB);
    stream(est, c, 10, MIB, 10);
    // 10 MiB already read: the stop-copy view is 0 now.
    est.updateStopCopySize(10 * MIB);
    expect(est.predict().fixedMs.destValidate).toBe(20);
    // 100 ms of transfer, 10 more for the last record's read before it goes out (the fill).
    expect(est.predict().fillMs).toBeCloseTo(10, 6);
    expect(est.predict().downtimeMs).toBeCloseTo(130, 6);
    est.recordFixedCost('enterStopCopy', 4);
    est.recordFixedCost('enterStopCopy', 6);
    est.recordFixedCost('destValidate', 30);
    est.recordFixedCost('destResume', 2);
    est.recordFixedCost('linkLatency', 1);
    const p = est.predict();
    expect(p.fixedMs.destValidate).toBe(30);
    expect(p.fixedMs.enterStopCopy).toBeGreaterThan(4);
    expect(p.fixedMs.enterStopCopy).toBeLessThan(6);
    expect(p.fixedMs.total).toBeCloseTo(p.fixedMs.enterStopCopy + 33, 9);
    expect(p.downtimeMs).toBeCloseTo(p.fixedMs.total + 110, 6);
    expect(p.highMs).toBeGreaterThan(p.fixedMs.total + 100 / 0.95 + 10);
  });

  it('a fixed-cost prior (a proxy measured before any switchover) shapes the prediction, never the lower bound', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(0);
    const before = est.predict();
    est.setFixedCostPrior('linkLatency', 800);
    est.setFixedCostPrior('destValidate', -1);
    est.setFixedCostPrior('destValidate', Number.NaN);
    const p = est.predict();
    expect(p.fixedMs.linkLatency).toBe(800);
    expect(p.fixedMs.destValidate).toBe(0);
    expect(p.downtimeMs).toBeCloseTo(before.downtimeMs + 800, 9);
    expect(p.lowMs).toBeCloseTo(before.lowMs + 800, 9);
    // A cold peer's 800 ms handshake must not prove a 500 ms limit impossible.
    expect(p.lowerBoundMs).toBe(before.lowerBoundMs);
    // A measurement replaces the prior and does count.
    est.recordFixedCost('linkLatency', 2);
    expect(est.predict().fixedMs.linkLatency).toBe(2);
    expect(est.predict().lowerBoundMs).toBeCloseTo(before.lowerBoundMs + 2, 9);
    expect(() => est.setFixedCostPrior('bogus' as never, 1)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
  });

  it('a noisy rate widens the band; a steady one keeps it at the minimum', () => {
    const c = clock();
    const noisy = new PrecopyEstimator({ now: c.now });
    noisy.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    noisy.updateStopCopySize(100 * MIB);
    for (let i = 0; i < 16; i++) {
      noisy.recordRead(MIB, { durationMs: 0.1 });
      noisy.recordWire(MIB, MIB, { durationMs: i % 2 === 0 ? 4 : 16 });
    }
    const p = noisy.predict();
    const rel = p.highMs / p.downtimeMs - 1;
    expect(rel).toBeGreaterThan(0.1);
    expect(p.lowMs).toBeLessThan(p.downtimeMs);
  });

  it('is not confident and uses the prior rate before anything is measured', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, priorRateBytesPerMs: 1000, smallStateBytes: 4096 });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(10_000);
    const p = est.predict();
    expect(p.confident).toBe(false);
    expect(p.downtimeMs).toBe(10);
    expect(p.highMs).toBe(40);
    expect(p.lowMs).toBe(2.5);
    // An unmeasured link proves no lower bound.
    expect(p.lowerBoundMs).toBe(0);
  });

  it('bounds the rate from above once the wire is measured, before every rate is (rateBounded)', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, priorRateBytesPerMs: 1000, smallStateBytes: 4096 });
    est.updatePrecopyInfo({ initialBytes: 64 * MIB, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(64 * MIB);
    expect(est.predict()).toMatchObject({ confident: false, rateBounded: false });
    // Reads counted without generation samples (as migrate() batches them): the device's rate stays unmeasured.
    for (let i = 0; i < 5; i++) {
      est.recordRead(MIB, { sample: false });
      est.recordWire(MIB, MIB, { durationMs: 20 });
    }
    const p = est.predict();
    expect(p).toMatchObject({ confident: false, rateBounded: true });
    // The fast edge is the wire's: an unmeasured device could only be slower.
    expect(p.rateHighBytesPerMs).toBeGreaterThanOrEqual(MIB / 20);
    expect(p.rateHighBytesPerMs).toBeLessThan((2 * MIB) / 20);
  });

  it('a small device needs no rate samples of its own for a confident prediction', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, devices: 2 });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false }, 0);
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false }, 1);
    est.updateStopCopySize(10 * MIB, 0);
    // An mtty-like device: 60 bytes of state, never a rate sample.
    est.updateStopCopySize(60, 1);
    for (let i = 0; i < 5; i++) {
      est.recordRead(MIB, { device: 0, durationMs: 1 });
      est.recordWire(MIB, MIB, { durationMs: 10 });
    }
    const p = est.predict();
    expect(p.confident).toBe(true);
    expect(p.stopCopyBytes).toBe(5 * MIB + 60);
    expect(p.transferMs).toBeCloseTo(((5 * MIB + 60) * 10) / MIB, 6);
    est.updateStopCopySize(2 * MIB, 1);
    expect(est.predict().confident).toBe(false);
  });

  it('measures the dirty rate from dirty growth plus what was read, between queries past the initial data', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: MIB, dirtyBytes: 0, reinit: false });
    c.advance(100);
    est.recordRead(MIB);
    // The first query after the initial data: a backlog, not a rate sample.
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 5 * MIB, reinit: false });
    expect(est.predict().dirtyRateBytesPerMs).toBe(0);
    c.advance(100);
    est.recordRead(2 * MIB);
    // 2 MiB read, dirty went 5 -> 4: 1 MiB new dirt in 100 ms.
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 4 * MIB, reinit: false });
    expect(est.predict().dirtyRateBytesPerMs).toBeCloseTo(MIB / 100, 6);
    expect(est.snapshot().dirtyRateBytesPerMs).toBeCloseTo(MIB / 100, 6);
  });

  it('during the initial data, samples the dirty rate only from a driver that reports dirty bytes then', () => {
    const c = clock();
    // SimDevice-like: dirty_bytes grows while initial data remains (sent data dirtied again).
    const sim = new PrecopyEstimator({ now: c.now });
    sim.updatePrecopyInfo({ initialBytes: 8 * MIB, dirtyBytes: 0, reinit: false });
    c.advance(100);
    sim.recordRead(MIB);
    // Dirty 0 -> 1 MiB: not yet a sample (the previous query reported none: nothing shows the driver reports).
    sim.updatePrecopyInfo({ initialBytes: 7 * MIB, dirtyBytes: MIB, reinit: false });
    expect(sim.predict().dirtyRateBytesPerMs).toBe(0);
    c.advance(100);
    sim.recordRead(MIB);
    sim.updatePrecopyInfo({ initialBytes: 6 * MIB, dirtyBytes: 3 * MIB, reinit: false });
    expect(sim.predict().dirtyRateBytesPerMs).toBeCloseTo((2 * MIB) / 100, 6);
    // mlx5-like: dirty_bytes stays 0 until the initial data is read: no sample, no rate.
    const mlx = new PrecopyEstimator({ now: c.now });
    for (let i = 8; i > 1; i--) {
      mlx.updatePrecopyInfo({ initialBytes: i * MIB, dirtyBytes: 0, reinit: false });
      c.advance(100);
      mlx.recordRead(MIB);
    }
    expect(mlx.predict().dirtyRateBytesPerMs).toBe(0);
  });

  /**
   * A scripted initial pass over a 64 MiB state: 512 KiB read per 10 ms tick, `dirtyStep(sent, dirty)`
   * giving the dirty bytes after each 1 ms step. Every query must be accepted; returns the estimator
   * and each tick's prediction.
   */
  function initialPass(ticks: number, dirtyStep: (sent: number, dirty: number) => number): { est: PrecopyEstimator; c: ReturnType<typeof clock>; preds: Prediction[] } {
    const S = 64 * MIB;
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    let sent = 0;
    let dirty = 0;
    est.updatePrecopyInfo({ initialBytes: S, dirtyBytes: 0, reinit: false });
    const preds: Prediction[] = [];
    for (let tick = 0; tick < ticks; tick++) {
      // Integrate in 1 ms steps: reads move bytes from unsent to clean sent, the workload clean to dirty.
      for (let ms = 0; ms < 10; ms++) {
        dirty = dirtyStep(sent, dirty);
        sent += (512 * 1024) / 10;
      }
      c.advance(10);
      est.recordRead(512 * 1024, { sample: false });
      expect(est.updatePrecopyInfo({ initialBytes: S - Math.round(sent), dirtyBytes: Math.round(dirty), reinit: false })).toBe(true);
      preds.push(est.predict());
    }
    return { est, c, preds };
  }

  it('models the dirtying of the whole state from λ, the share of the clean sent state dirtied per ms', () => {
    // A 64 MiB device dirtying its pages uniformly: λ = 1/1000 per ms, i.e. 64 MiB/s of the state,
    // sent or not. PRE_COPY reads 512 KiB per 10 ms tick from the initial data; what was sent and is
    // dirtied again shows as dirty_bytes (the device reports them during the initial data).
    const S = 64 * MIB;
    const lambda = 1 / 1000;
    const { est, c, preds } = initialPass(40, (sent, dirty) => dirty + lambda * (sent - dirty));
    const seen = preds.map((p) => p.stateDirtyRateBytesPerMs);
    const p = est.predict();
    // Not before a tenth of the state was sent (6.4 MiB: 13 ticks), and never from fewer than 3 samples.
    expect(seen.slice(0, 12).every(Number.isNaN)).toBe(true);
    expect(Math.abs(p.stateDirtyRateBytesPerMs / (lambda * S) - 1)).toBeLessThan(0.05);
    expect(p.stateDirtyRateLowBytesPerMs).toBeLessThan(p.stateDirtyRateBytesPerMs);
    expect(p.stateDirtyRateLowBytesPerMs).toBeGreaterThan(0.8 * lambda * S);
    // The dirty rate of the clean sent state is much lower (a third of the state is sent): the
    // state's rate is what PRE_COPY has to outrun. Settles at S (1 - rate / state dirty rate).
    expect(p.dirtyRateBytesPerMs).toBeLessThan(0.5 * p.stateDirtyRateBytesPerMs);
    expect(p.steadyDirtyBytes).toBeCloseTo(Math.max(0, S * (1 - p.rateBytesPerMs / p.stateDirtyRateBytesPerMs)), 0);
    // A device that does not dirty: no model, nothing to outrun.
    const quiet = new PrecopyEstimator({ now: c.now });
    quiet.updatePrecopyInfo({ initialBytes: S, dirtyBytes: 0, reinit: false });
    for (let i = 1; i <= 20; i++) {
      c.advance(10);
      quiet.recordRead(MIB, { sample: false });
      quiet.updatePrecopyInfo({ initialBytes: S - i * MIB, dirtyBytes: 0, reinit: false });
    }
    expect(quiet.predict().stateDirtyRateBytesPerMs).toBeNaN();
    expect(quiet.predict().steadyDirtyBytes).toBeNaN();
  });

  it('a hot set sent first is not extrapolated to the whole state: it saturates, λ falls, the band stays wide', () => {
    // The first 2 MiB of a 64 MiB state are dirtied fast (5% of their clean part per ms); the rest
    // never. PRE_COPY reads 512 KiB per 10 ms tick (52 kB/ms).
    const H = 2 * MIB;
    const { preds } = initialPass(40, (sent, dirtyH) => dirtyH + 0.05 * (Math.min(sent, H) - dirtyH));
    const lows = preds.map((p) => p.stateDirtyRateLowBytesPerMs);
    const means = preds.map((p) => p.stateDirtyRateBytesPerMs);
    const link = (512 * 1024) / 10;
    // Once the model speaks (a tenth sent), its slow edge never reaches the link's rate: the early
    // verdict (slow edge >= 1.25 x the fastest rate) cannot fire on a hot set.
    const ready = lows.filter((x) => !Number.isNaN(x));
    expect(ready.length).toBeGreaterThan(20);
    expect(Math.max(...ready)).toBeLessThan(link);
    // The hot set is all dirty: nothing clean left in it to dirty, and the extrapolation fades to 0.
    expect(means.at(-1)).toBeLessThan(0.01 * link);
  });

  /**
   * A device that dirties 1 MiB per 100 ms (1 MiB read per 100 ms, dirty stays at 1 MiB), a link of
   * 1 MiB per 10 ms, 20 ms to enter STOP_COPY, and 2 MiB of stop-copy data at the last query.
   */
  function dirtyingDevice() {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, fixedCosts: { enterStopCopy: 20 } });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: MIB, reinit: false });
    for (let i = 0; i < 4; i++) {
      c.advance(100);
      est.recordRead(MIB, { durationMs: 1 });
      est.recordWire(MIB, MIB, { durationMs: 10 });
      est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: MIB, reinit: false });
    }
    est.updateStopCopySize(2 * MIB);
    return { c, est, rate: MIB / 100 };
  }

  it('extrapolates the dirtying from the last size query until the devices stop', () => {
    const { c, est, rate } = dirtyingDevice();
    expect(est.predict().dirtyRateBytesPerMs).toBeCloseTo(rate, 6);
    // Right after the query: the 20 ms to enter STOP_COPY.
    expect(est.predict().growthBytes).toBeCloseTo(rate * 20, 6);
    c.advance(50);
    const p = est.predict();
    expect(p.growthBytes).toBeCloseTo(rate * 70, 6);
    expect(p.stopCopyBytes).toBe(2 * MIB);
    expect(p.transferBytes).toBeCloseTo(2 * MIB + rate * 70, 6);
    expect(p.transferMs).toBeCloseTo((2 * MIB + rate * 70) / (MIB / 10), 6);
    // The lower bound assumes zero further dirtying.
    expect(p.lowerBoundMs).toBeLessThan(p.downtimeMs);
  });

  it('bytes a switchover drains before the stop are not downtime, but the devices dirty while they leave; bytes in flight after the stop are downtime and dirty nothing', () => {
    const { est, rate } = dirtyingDevice();
    const link = MIB / 10;
    // 1 MiB encoded and 1 MiB raw queued: 2 MiB at the link's 1 MiB per 10 ms = 20 ms of drain.
    est.setDrain(MIB, MIB);
    let p = est.predict();
    expect(p.drainBytes).toBe(2 * MIB);
    expect(p.drainMs).toBeCloseTo(20, 6);
    expect(p.growthBytes).toBeCloseTo(rate * (20 + 20), 6);
    expect(p.transferBytes).toBeCloseTo(2 * MIB + rate * 40, 6);
    expect(p.transferMs).toBeCloseTo((2 * MIB + rate * 40) / link, 6);
    // The same bytes still queued after the stop: they cross in the downtime, and nothing dirties meanwhile.
    est.setDrain(0, 0);
    est.setInFlight(MIB, MIB);
    p = est.predict();
    expect(p.drainMs).toBe(0);
    expect(p.growthBytes).toBeCloseTo(rate * 20, 6);
    expect(p.transferBytes).toBeCloseTo(4 * MIB + rate * 20, 6);
    // A link credit is spent by the drain first: 3 MiB of credit covers the 2 MiB drained, 1 MiB is left for the downtime.
    est.setInFlight(0, 0);
    est.setDrain(MIB, MIB);
    est.setLinkCredit(3 * MIB);
    p = est.predict();
    expect(p.drainMs).toBe(0);
    expect(p.growthBytes).toBeCloseTo(rate * 20, 6);
    expect(p.transferMs).toBeCloseTo((2 * MIB + rate * 20 - MIB) / link, 6);
    // ...but not beyond the link: once the whole path is measured at 1 MiB per 20 ms, the 2 MiB take 40 ms, credit or not.
    for (let i = 0; i < 3; i++) est.recordPipeline(MIB, 20);
    p = est.predict();
    expect(p.drainMs).toBeCloseTo(40, 6);
    expect(p.growthBytes).toBeCloseTo(rate * (40 + 20), 6);
    // Negative or non-finite reports are ignored.
    est.setDrain(-1, Number.NaN);
    expect(est.predict().drainBytes).toBe(2 * MIB);
  });

  it('dirty data seen but no rate yet: assumes what was read since the query was dirtied again, not confident', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 4 * MIB, reinit: false });
    est.updateStopCopySize(4 * MIB);
    for (let i = 0; i < 4; i++) {
      c.advance(10);
      est.recordRead(MIB, { durationMs: 1 });
      est.recordWire(MIB, MIB, { durationMs: 10 });
    }
    const p = est.predict();
    // 4 MiB read in 40 ms since the query: the local view says 0 left, the assumption 4 MiB more.
    expect(p.stopCopyBytes).toBe(0);
    expect(p.growthBytes).toBeCloseTo(4 * MIB, 6);
    expect(p.confident).toBe(false);
    expect(p.dirtyRateBytesPerMs).toBe(0);
  });

  it('a wildly noisy rate makes a pessimistic band, never an infinite one', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(32);
    for (let i = 0; i < 4; i++) est.recordWire(MIB, MIB, { durationMs: i % 2 === 0 ? 0.01 : 1000 });
    const p = est.predict();
    expect(Number.isFinite(p.highMs)).toBe(true);
    expect(p.highMs).toBeLessThan(1);
  });

  /** 4 MiB of stop-copy data; 2:1 compression, the wire moving 1 MiB of wire bytes (2 MiB raw) per 10 ms. */
  /**
   * An estimator whose device read 1 MiB per ms (four generation samples) and, with `wireMs`, whose
   * link moved 1 MiB (as much raw) per `wireMs` ms; no stop-copy size yet.
   */
  function readsMeasured(opts: PrecopyEstimatorOptions, wireMs?: number): PrecopyEstimator {
    const est = new PrecopyEstimator(opts);
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    for (let i = 0; i < 4; i++) {
      est.recordRead(MIB, { durationMs: 1, sample: false });
      est.sampleGeneration(MIB, 1);
      if (wireMs !== undefined) est.recordWire(MIB, MIB, { durationMs: wireMs });
    }
    return est;
  }

  function compressedLink(): PrecopyEstimator {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(4 * MIB);
    for (let i = 0; i < 4; i++) est.recordWire(MIB, 2 * MIB, { durationMs: 10 });
    return est;
  }

  it('the fill: the last record goes through every stage one after the other, compressed by one worker where the rate is all of them', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.setStopCopyShape(MIB, 2);
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    // The device reads 1 MiB per ms; the path (two workers) moves 1 MiB raw per 2 ms; a record of
    // 512 KiB takes one worker 4 ms (128 KiB/ms); the link is uncapped and fast (1 MiB wire, 2 raw, per ms).
    for (let i = 0; i < 4; i++) {
      est.recordRead(MIB, { durationMs: 1, sample: false });
      est.sampleGeneration(MIB, 1);
      est.recordWire(MIB, 2 * MIB, { durationMs: 1 });
      est.recordPipeline(MIB, 2);
    }
    for (let i = 0; i < 5; i++) est.recordCompressionWork(512 * 1024, 4);
    // A stall stretches one job tenfold; jobs under 64 KiB (their time is the round trip) are ignored.
    est.recordCompressionWork(512 * 1024, 40);
    est.recordCompressionWork(32 * 1024, 10);
    est.updateStopCopySize(MIB);
    let p = est.predict();
    // 1 MiB on two workers: two reads of 512 KiB. Stages: read 0.5 ms, compress 4 ms, link 0.25 ms;
    // one period at the path's rate is 1 ms: fill 3.75 ms beside the 2 ms of transfer.
    expect(p.compressWorkerRateBytesPerMs).toBeCloseTo(128 * 1024, 6);
    expect(p.stopCopyReadBytes).toBe(512 * 1024);
    expect(p.transferMs).toBeCloseTo(2, 6);
    expect(p.fillMs).toBeCloseTo(0.5 + 4 + 0.25 - 1, 6);
    expect(p.downtimeMs).toBeCloseTo(p.fixedMs.total + 2 + 3.75, 6);
    // 16 MiB: more than a chunk per worker, whole chunks; the fill is one record's, the rest the rate's.
    est.updateStopCopySize(16 * MIB);
    p = est.predict();
    expect(p.stopCopyReadBytes).toBe(MIB);
    expect(p.transferMs).toBeCloseTo(32, 6);
    expect(p.fillMs).toBeCloseTo(1 + 8 + 0.5 - 2, 6);
    // Without compression samples (or before any), no compression stage: read + link - period, floored at 0.
    const plain = readsMeasured({ now: c.now }, 4);
    plain.updateStopCopySize(8 * MIB);
    p = plain.predict();
    expect(p.transferMs).toBeCloseTo(32, 6);
    expect(p.fillMs).toBeCloseTo(1, 6);
    // Nothing to move, nothing to fill. A few bytes are one small record, whatever a read asks for.
    plain.updateStopCopySize(0);
    expect(plain.predict().fillMs).toBe(0);
    est.updateStopCopySize(32);
    p = est.predict();
    expect(p.stopCopyReadBytes).toBe(64 * 1024);
    expect(p.fillMs).toBeLessThan(0.01);
    expect(() => est.setStopCopyShape(0)).toThrow(MigError);
    expect(() => est.setStopCopyShape(MIB, 1.5)).toThrow(MigError);
  });

  it('the fill counts a record on a capped link for its share of the paced time: a credit ahead of it is not paid twice', () => {
    // The device reads 1 MiB per ms; the link is capped at 1 MiB per 20 ms (ratio 1).
    const est = readsMeasured({ now: clock().now }, 20);
    // A stop-copy of one 700 KiB record behind 300 KiB of credit: 400 KiB paced, 7.8125 ms.
    est.updateStopCopySize(700 * 1024);
    est.setLinkCredit(300 * 1024, MIB / 20);
    let p = est.predict();
    expect(p.stopCopyReadBytes).toBeGreaterThanOrEqual(700 * 1024);
    expect(p.transferMs).toBeCloseTo(7.8125, 6);
    // The record reaches the link after its read (0.68 ms), then leaves as the paced time allows:
    // the fill is the read, not the read and the record's whole size at the cap (13.7 ms).
    expect(p.fillMs).toBeCloseTo(0.68359375, 6);
    expect(p.downtimeMs).toBeCloseTo(p.fixedMs.total + 7.8125 + 0.68359375, 6);
    // No credit: a record's share is its size at the cap, as before.
    est.setLinkCredit(0, MIB / 20);
    p = est.predict();
    expect(p.transferMs).toBeCloseTo(13.671875, 6);
    expect(p.fillMs).toBeCloseTo(0.68359375, 6);
    // Eight records of 1 MiB behind 3 MiB of credit: 5 MiB paced (100 ms); a record's link share
    // is 12.5 ms, the period the same: the fill is one read.
    est.updateStopCopySize(8 * MIB);
    est.setLinkCredit(3 * MIB, MIB / 20);
    p = est.predict();
    expect(p.transferMs).toBeCloseTo(100, 6);
    expect(p.fillMs).toBeCloseTo(1, 6);
  });

  it('a link never measured (never the bottleneck) is timed at the whole path\'s measured rate, not at the prior', () => {
    const est = readsMeasured({ now: clock().now, priorRateBytesPerMs: 100 * 1000 });
    est.updateStopCopySize(4 * MIB);
    // No wire sample and no path sample yet: the prior, unconfident.
    let p = est.predict();
    expect(p.wireRateBytesPerMs).toBeNaN();
    expect(p.transferMs).toBeCloseTo((4 * MIB) / (100 * 1000), 6);
    // The path measured at 400 KB/ms (compression workers the bottleneck): the transfer at that rate.
    for (let i = 0; i < 4; i++) est.recordPipeline(400 * 1000, 1);
    p = est.predict();
    expect(p.wireRateBytesPerMs).toBeNaN();
    expect(p.pipelineRateBytesPerMs).toBeCloseTo(400 * 1000, 6);
    expect(p.transferMs).toBeCloseTo((4 * MIB) / (400 * 1000), 6);
    expect(p.rateBytesPerMs).toBeCloseTo(400 * 1000, 6);
    // The drain's bytes too.
    est.setDrain(0, 2 * MIB);
    p = est.predict();
    expect(p.drainBytes).toBe(2 * MIB);
    expect(p.drainMs).toBeCloseTo((2 * MIB) / (400 * 1000), 6);
  });

  it("setEndLag: the destination's lag behind a stream's last record counts in proportion to the stop-copy's own last record", () => {
    const est = readsMeasured({ now: clock().now, fixedCosts: { linkLatency: 0.5 } }, 2);
    est.updateStopCopySize(32);
    const before = est.predict();
    expect(before.endLagMs).toBe(0);
    // A barrier ping behind a 1 MiB record came back 2 ms later than an idle round trip.
    est.setEndLag(2, MIB);
    let p = est.predict();
    // 32 bytes: their share of 1 MiB.
    expect(p.endLagMs).toBeCloseTo((2 * 32) / MIB, 9);
    expect(p.fixedMs.linkLatency).toBeCloseTo(0.5 + p.endLagMs, 9);
    expect(p.downtimeMs).toBeCloseTo(before.downtimeMs + p.endLagMs, 9);
    // 256 KiB: a quarter; 8 MiB (whole 1 MiB records): all of it, never more.
    est.updateStopCopySize(256 * 1024);
    p = est.predict();
    expect(p.stopCopyReadBytes).toBe(256 * 1024);
    expect(p.endLagMs).toBeCloseTo(0.5, 9);
    expect(p.highMs - p.lowMs).toBeGreaterThan(0);
    est.updateStopCopySize(8 * MIB);
    p = est.predict();
    expect(p.endLagMs).toBeCloseTo(2, 9);
    expect(p.fixedMs.total).toBeCloseTo(p.fixedMs.enterStopCopy + p.fixedMs.destValidate + p.fixedMs.destResume + p.fixedMs.linkLatency, 9);
    expect(p.lowMs).toBeLessThanOrEqual(p.downtimeMs);
    expect(p.highMs).toBeGreaterThanOrEqual(p.downtimeMs);
    // Nonsense is ignored; the last valid call counts.
    est.setEndLag(-1, MIB);
    est.setEndLag(1, 0);
    est.setEndLag(Number.NaN, MIB);
    expect(est.predict().endLagMs).toBeCloseTo(2, 9);
    est.setEndLag(1, 2 * MIB);
    expect(est.predict().endLagMs).toBeCloseTo(0.5, 9);
  });

  it('stopCopyReadBytes: whole chunks without compression; a compressed stop-copy of up to a chunk per worker in one piece per worker', () => {
    const K = 1024;
    expect(stopCopyReadBytes(0, MIB, 2)).toBe(0);
    expect(stopCopyReadBytes(300 * K, MIB, 1)).toBe(300 * K);
    expect(stopCopyReadBytes(5 * MIB, MIB, 1)).toBe(MIB);
    // An estimate is a fraction; a read size never is.
    expect(stopCopyReadBytes(4526.02, MIB, 1)).toBe(4527);
    expect(stopCopyReadBytes(0.3, MIB, 1)).toBe(1);
    expect(Number.isInteger(stopCopyReadBytes(650_000.7, MIB, 2))).toBe(true);
    // 650 KB on two workers: two pieces, rounded up to whole pages.
    expect(stopCopyReadBytes(650_000, MIB, 2)).toBe(Math.ceil(325_000 / 4096) * 4096);
    expect(stopCopyReadBytes(1.5 * MIB, MIB, 2)).toBe(768 * K);
    expect(stopCopyReadBytes(3 * MIB, MIB, 4)).toBe(768 * K);
    // Never under 64 KiB, never over a chunk; past a chunk per worker, whole chunks.
    expect(stopCopyReadBytes(40 * K, MIB, 2)).toBe(64 * K);
    expect(stopCopyReadBytes(2 * MIB, MIB, 2)).toBe(MIB);
    expect(stopCopyReadBytes(2 * MIB + 1, MIB, 2)).toBe(MIB);
    expect(stopCopyReadBytes(2.5 * MIB, MIB, 2)).toBe(MIB);
  });

  it('wire bytes in flight go first: they add to the transfer, in raw terms', () => {
    const est = compressedLink();
    expect(est.predict().transferMs).toBeCloseTo(20, 6);
    est.setInFlight(MIB);
    let p = est.predict();
    expect(p.inFlightBytes).toBe(MIB);
    expect(p.transferBytes).toBe(6 * MIB);
    expect(p.transferMs).toBeCloseTo(30, 6);
    est.setInFlight(-5);
    expect(est.predict().inFlightBytes).toBe(MIB);
    est.setInFlight(0);
    p = est.predict();
    expect(p.transferMs).toBeCloseTo(20, 6);
  });

  it('raw bytes in flight (read, not yet encoded) count as they are; the compression ratio turns them into wire time', () => {
    const est = compressedLink();
    // 1 MiB encoded plus 2 MiB raw: 2 + 2 raw MiB ahead of the 4 MiB of STOP_COPY data, 10 ms per 2 MiB.
    est.setInFlight(MIB, 2 * MIB);
    const p = est.predict();
    expect(p.transferBytes).toBe(8 * MIB);
    expect(p.inFlightBytes).toBe(2 * MIB);
    expect(p.transferMs).toBeCloseTo(40, 6);
    est.setInFlight(0, Number.NaN);
    expect(est.predict().transferBytes).toBe(6 * MIB);
  });

  it('a token bucket credit leaves unpaced: only the bytes beyond it take the measured (capped) rate', () => {
    const est = compressedLink();
    expect(est.predict().transferMs).toBeCloseTo(20, 6);
    // 1 MiB of wire credit carries 2 MiB raw at once: 2 MiB left at 2 MiB per 10 ms.
    est.setLinkCredit(MIB);
    expect(est.predict().transferMs).toBeCloseTo(10, 6);
    est.setLinkCredit(8 * MIB);
    expect(est.predict().transferMs).toBe(0);
    est.setLinkCredit(-1);
    expect(est.predict().transferMs).toBe(0);
    est.setLinkCredit(0);
    expect(est.predict().transferMs).toBeCloseTo(20, 6);
    // With the bucket's rate given: the credit counts while the measured wire rate is the cap's
    // (1 MiB per 10 ms here)...
    const capped = compressedLink();
    capped.setLinkCredit(MIB, MIB / 10);
    expect(capped.predict().transferMs).toBeCloseTo(10, 6);
    expect(capped.predict().linkCreditBytes).toBe(MIB);
    // ...and not when the link moves at a quarter of its cap: a slower stage feeds it, the bucket
    // stays full, and the bytes wait for that stage, not for the bucket.
    const starved = compressedLink();
    starved.setLinkCredit(MIB, (4 * MIB) / 10);
    expect(starved.predict().transferMs).toBeCloseTo(20, 6);
    // Once the whole path's rate is measured it bounds the transfer itself, so the credit counts:
    // a slower stage shows in the path's rate (the same 20 ms)...
    const slowStage = compressedLink();
    slowStage.setLinkCredit(MIB, (4 * MIB) / 10);
    for (let i = 0; i < 4; i++) slowStage.recordPipeline(2 * MIB, 10);
    expect(slowStage.predict().transferMs).toBeCloseTo(20, 6);
    // ...and a link fed only what a workload dirties (wire samples at a quarter of the cap, the path
    // measured at 4 MiB raw per ms) sends its credit's 2 MiB raw at once and paces the other 2 MiB
    // at the samples' rate: 10 ms, not 20. The lower bound keeps the stricter rule.
    const fed = compressedLink();
    fed.setLinkCredit(MIB, (4 * MIB) / 10);
    const lowerBefore = fed.predict().lowerBoundMs;
    for (let i = 0; i < 4; i++) fed.recordPipeline(4 * MIB, 1);
    const q = fed.predict();
    expect(q.pipelineRateBytesPerMs).toBeCloseTo(4 * MIB, 6);
    expect(q.transferMs).toBeCloseTo(10, 6);
    expect(q.lowerBoundMs).toBeCloseTo(lowerBefore, 6);
    expect(lowerBefore).toBeGreaterThan(0);
  });

  it('a capped link moves no more than its cap past its credit, whatever its samples read', () => {
    // Samples of 1 MiB wire per 10 ms, taken while a refilled bucket let bursts through; the cap is
    // 1 MiB per 20 ms: the 4 MiB raw (2 MiB wire) take 40 ms, not 20.
    const est = compressedLink();
    est.setLinkCredit(0, MIB / 20);
    let p = est.predict();
    expect(p.wireRateBytesPerMs).toBeCloseTo(MIB / 10, 6);
    expect(p.transferMs).toBeCloseTo(40, 6);
    // The credit still leaves at once: 0.5 MiB wire (1 MiB raw) of it, 3 MiB raw left at the cap.
    est.setLinkCredit(MIB / 2, MIB / 20);
    p = est.predict();
    expect(p.transferMs).toBeCloseTo(30, 6);
    // A cap above the measured rate changes nothing.
    const fast = compressedLink();
    fast.setLinkCredit(0, MIB / 9.5);
    expect(fast.predict().transferMs).toBeCloseTo(20, 6);
  });

  it('under a cap the rate band\'s fast edge stays at cap x ratio, however widely the wire samples spread', () => {
    // Wire samples of 1 MiB in 5, 10, 20, 40 ms (a burst on the first credit among them), ratio 1;
    // the cap is 1 MiB per 20 ms. The band's fast edge may not pass the cap by more than the
    // ratio's spread (none here: the minimum relative band).
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, smallStateBytes: 4096 });
    est.updatePrecopyInfo({ initialBytes: 64 * MIB, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(64 * MIB);
    for (const ms of [5, 10, 20, 40, 5, 10, 20, 40]) {
      c.advance(ms);
      est.recordRead(MIB, { sample: false });
      est.recordWire(MIB, MIB, { durationMs: ms });
    }
    const free = est.predict();
    expect(free.rateCapBytesPerMs).toBe(Number.POSITIVE_INFINITY);
    expect(free.rateHighBytesPerMs).toBeGreaterThan(1.5 * (MIB / 20));
    est.setLinkCredit(0, MIB / 20);
    const p = est.predict();
    expect(p.rateCapBytesPerMs).toBeCloseTo((MIB / 20) * 1.05, 6);
    expect(p.rateHighBytesPerMs).toBeLessThanOrEqual(p.rateCapBytesPerMs * (1 + 1e-9));
    expect(p.rateHighBytesPerMs).toBeGreaterThanOrEqual(MIB / 20);
  });

  it('the whole path rate bounds the transfer when something between device and link is slower, and a credit never beats it', () => {
    // The link: 1 MiB wire (2 MiB raw) per 10 ms = 209.7 raw bytes/µs; 4 MiB of stop-copy data.
    const slow = compressedLink();
    expect(slow.predict().transferMs).toBeCloseTo(20, 6);
    // The compression workers move only 1 MiB raw per 10 ms: 40 ms, and a credit does not help.
    for (let i = 0; i < 4; i++) slow.recordPipeline(MIB, 10);
    slow.setLinkCredit(MIB);
    expect(slow.predict().transferMs).toBeCloseTo(40, 6);
    expect(slow.predict().highMs).toBeGreaterThan(40);
    // The path measured at the link's own rate: the credit would let 2 MiB raw leave at once, but
    // what is beyond the link was only ever seen at that rate, so the path's rate bounds it: 4 MiB at
    // 2 MiB per 10 ms, 20 ms (the wire term alone says 10).
    const linkBound = compressedLink();
    for (let i = 0; i < 4; i++) linkBound.recordPipeline(2 * MIB, 10);
    linkBound.setLinkCredit(MIB);
    expect(linkBound.predict().transferMs).toBeCloseTo(20, 6);
    // A path measured faster than the link leaves the decision to the wire term, credit included.
    const fastPath = compressedLink();
    for (let i = 0; i < 4; i++) fastPath.recordPipeline(8 * MIB, 10);
    fastPath.setLinkCredit(MIB);
    expect(fastPath.predict().transferMs).toBeCloseTo(10, 6);
    // Fewer than minSamples samples, or nonsense ones, change nothing.
    const few = compressedLink();
    few.recordPipeline(MIB, 10);
    few.recordPipeline(MIB, 0);
    few.recordPipeline(-1, 10);
    expect(few.predict().transferMs).toBeCloseTo(20, 6);
  });

  it('compression-ratio samples are sums of chunks: a header chunk carrying no raw bytes does not bias them', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    // Each 64 KiB record goes out as a 24-byte header (raw 0) and a 32 KiB payload (raw 64 KiB).
    for (let i = 0; i < 64; i++) {
      est.recordWire(24, 0);
      est.recordWire(32 * 1024, 64 * 1024);
    }
    expect(est.predict().compressionRatio).toBeCloseTo((64 * 1024) / (32 * 1024 + 24), 2);
    // Raw bytes attributed to chunks in lumps (two records' worth on one chunk, none on the next).
    const lumpy = new PrecopyEstimator({ now: c.now });
    for (let i = 0; i < 64; i++) {
      lumpy.recordWire(32 * 1024, i % 2 === 0 ? 128 * 1024 : 0);
    }
    expect(lumpy.predict().compressionRatio).toBeCloseTo(2, 6);
  });

  it('reads reported unsampled keep the view current; generation samples come from sampleGeneration()', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 8 * MIB, reinit: false });
    est.updateStopCopySize(8 * MIB);
    for (let i = 0; i < 8; i++) {
      c.advance(50);
      est.recordRead(MIB / 2, { sample: false });
    }
    expect(est.snapshot().stopCopyBytes).toBe(4 * MIB);
    expect(est.predict().generationRateBytesPerMs).toBeNaN();
    for (let i = 0; i < 4; i++) est.sampleGeneration(MIB, 2);
    est.sampleGeneration(MIB, 0);
    expect(est.predict().generationRateBytesPerMs).toBeCloseTo(MIB / 2, 6);
  });

  it('the lower bound counts only bytes PRE_COPY can never send, at the best measured rate', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 40 * MIB, reinit: false });
    est.updateStopCopySize(60 * MIB);
    for (let i = 0; i < 10; i++) est.recordWire(MIB, MIB, { durationMs: 10 });
    const p = est.predict();
    expect(p.floorBytes).toBe(20 * MIB);
    // 20 MiB at the best rate (mean x 1.05 with steady samples, or the best sample): about 190 ms.
    expect(p.lowerBoundMs).toBeCloseTo(200 / 1.05, 3);
    expect(p.lowerBoundMs).toBeLessThan(p.downtimeMs);
  });

  it('a pause longer than the idle gap, or an empty read, starts a new streak instead of a slow sample', () => {
    const c = clock();
    const est = new PrecopyEstimator({ now: c.now, idleGapMs: 1000 });
    est.updatePrecopyInfo({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    est.updateStopCopySize(10 * MIB);
    stream(est, c, 5, MIB, 10);
    const before = est.predict().rateBytesPerMs;
    est.recordEmpty();
    c.advance(500);
    est.recordRead(MIB);
    est.recordWire(MIB, MIB);
    c.advance(2000);
    est.recordRead(MIB);
    est.recordWire(MIB, MIB);
    expect(est.predict().rateBytesPerMs).toBeCloseTo(before, 6);
  });

  it('rejects bad options and device indices with a usage error', () => {
    expect(() => new PrecopyEstimator({ devices: 0 })).toThrow(/devices/);
    expect(() => new PrecopyEstimator({ alpha: 0 })).toThrow(/alpha/);
    expect(() => new PrecopyEstimator({ window: -1 })).toThrow(/window/);
    const est = new PrecopyEstimator();
    expect(() => est.recordRead(1, { device: 1 })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
  });
});

describe('RateWindow', () => {
  it('weights recent samples more and forgets samples beyond the window', () => {
    const w = new RateWindow(4, 0.5);
    for (let i = 0; i < 4; i++) w.add(100, 1);
    expect(w.mean()).toBeCloseTo(100, 9);
    w.add(200, 1);
    // weights 1, .5, .25, .125 over 200, 100, 100, 100.
    expect(w.mean()).toBeCloseTo((200 + 50 + 25 + 12.5) / 1.875, 9);
    for (let i = 0; i < 4; i++) w.add(300, 1);
    expect(w.count).toBe(4);
    expect(w.mean()).toBeCloseTo(300, 9);
    expect(w.stats().relErr).toBe(0);
  });

  it('median(): the middle sample rate, unmoved by a few stalled samples the mean follows', () => {
    const w = new RateWindow(8, 0.2);
    expect(w.median()).toBeNaN();
    for (let i = 0; i < 5; i++) w.add(100, 1);
    w.add(100, 10);
    w.add(100, 20);
    expect(w.median()).toBe(100);
    expect(w.mean()).toBeLessThan(40);
    w.add(300, 1);
    // Eight rates: 5, 10, 100 x5, 300: the middle two are 100 and 100.
    expect(w.median()).toBe(100);
    const even = new RateWindow(4, 0.5);
    even.add(10, 1);
    even.add(30, 1);
    expect(even.median()).toBe(20);
  });

  it('ignores samples without a positive duration', () => {
    const w = new RateWindow(4, 0.5);
    w.add(100, 0);
    w.add(100, NaN);
    expect(w.count).toBe(0);
    expect(w.mean()).toBeNaN();
  });
});
