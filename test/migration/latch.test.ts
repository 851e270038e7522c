// watchRun: the stall watchdog and the AbortSignal every migrate()/receive() run is watched by.
import { describe, it, expect } from 'vitest';
import { getEventListeners } from 'node:events';
import { FailureLatch, watchRun } from '../../src/migration/latch.js';
import { ErrorCodes, migError } from '../../src/fsm/errors.js';
import type { MigrationPhase } from '../../src/migration/control.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function run(signal?: AbortSignal, waitingIn?: MigrationPhase, timeoutMs = 0, start: MigrationPhase = 'handshake') {
  const latch = new FailureLatch();
  let lastProgressAt = performance.now();
  const startedAt = lastProgressAt;
  let phase: MigrationPhase = start;
  const unwatch = watchRun(
    latch,
    { stallTimeoutMs: 40, signal },
    {
      get phase() {
        return phase;
      },
      abort: (reason) => {
        latch.fail(migError(ErrorCodes.ABORTED, reason, { phase }));
        return true;
      },
    },
    () => lastProgressAt,
    waitingIn === undefined ? undefined : { active: () => phase === waitingIn, since: () => startedAt, timeoutMs, what: 'no source connected' },
  );
  return {
    latch,
    unwatch,
    progress: () => (lastProgressAt = performance.now()),
    enter: (p: MigrationPhase) => (phase = p),
  };
}

describe('watchRun', () => {
  it('fails the run with STALLED naming the phase once progress stops for stallMs, not while it goes on', async () => {
    const r = run();
    for (let i = 0; i < 8; i++) {
      await sleep(15);
      r.progress();
    }
    expect(r.latch.error).toBeNull();
    r.enter('precopy');
    await sleep(120);
    expect(r.latch.error?.code).toBe(ErrorCodes.STALLED);
    expect(r.latch.error?.phase).toBe('precopy');
    expect(r.latch.error?.message).toMatch(/no progress for 40 ms in phase precopy/);
    r.unwatch();
  });

  it('a wait is exempt from the stall timeout and bounded by its own timeout (none when 0)', async () => {
    const forever = run(undefined, 'connect', 0, 'connect');
    await sleep(150);
    expect(forever.latch.error).toBeNull();
    // Once connected the stall timeout counts from the connection (the run's progress then).
    forever.progress();
    forever.enter('handshake');
    await sleep(120);
    expect(forever.latch.error?.message).toMatch(/no progress for 40 ms in phase handshake/);
    forever.unwatch();

    // The bound counts from the wait's start, not from the last progress (a pre-flight check or a
    // stray connection in between is not the source).
    const bounded = run(undefined, 'connect', 200, 'connect');
    await sleep(120);
    expect(bounded.latch.error).toBeNull();
    bounded.progress();
    await sleep(150);
    expect(bounded.latch.error?.code).toBe(ErrorCodes.STALLED);
    expect(bounded.latch.error?.phase).toBe('connect');
    expect(bounded.latch.error?.message).toBe('no source connected within 200 ms');
    bounded.unwatch();
  });

  it('aborts on the signal, at once when it had fired before; unwatch() stops the watchdog and detaches the listener', async () => {
    const early = run(AbortSignal.abort('before'));
    expect(early.latch.error?.code).toBe(ErrorCodes.ABORTED);
    expect(early.latch.error?.message).toBe('aborted: before');
    early.unwatch();

    const ac = new AbortController();
    const r = run(ac.signal);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(1);
    ac.abort('operator');
    expect(r.latch.error?.message).toBe('aborted: operator');
    r.unwatch();

    const ac2 = new AbortController();
    const quiet = run(ac2.signal);
    quiet.unwatch();
    expect(getEventListeners(ac2.signal, 'abort')).toHaveLength(0);
    await sleep(120); // no progress, but no longer watched
    ac2.abort();
    expect(quiet.latch.error).toBeNull();
  });
});
