/**
 * Model-based checks of MigrationCore: random sequences (and random concurrent bursts) of setState,
 * injected arc failures, resets and driver-initiated resets over the scripted fake driver; after each
 * step the core's view must agree with the device's.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MigrationCore } from '../../src/fsm/core.js';
import type { RecoveryPolicy } from '../../src/fsm/core.js';
import { MigError } from '../../src/fsm/errors.js';
import { baseArcs } from '../../src/fsm/path.js';
import { DeviceState, VALID_FLAG_WORDS, isSavingState } from '../../src/fsm/states.js';
import { FakeDriver } from './fake-driver.js';

type Command =
  | { kind: 'set'; target: number; policy: RecoveryPolicy }
  | { kind: 'fault'; arc: number; result: 'stay' | 'error' }
  | { kind: 'reset' }
  | { kind: 'self-reset' };

const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('set' as const), target: fc.integer({ min: 0, max: 8 }), policy: fc.constantFrom<RecoveryPolicy>('none', 'recover', 'recover-then-reset') }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fault' as const), arc: fc.nat(), result: fc.constantFrom('stay' as const, 'error' as const) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reset' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'self-reset' as const }) },
);

function checkAgreement(driver: FakeDriver, core: MigrationCore): void {
  expect(driver.violations).toEqual([]);
  expect(core.busy).toBe(false);
  expect(core.state).toBe(driver.state);
  // One live session at most, the same on both sides, and only in its transfer state.
  expect(core.session).toBe(driver.session);
  if (core.session) {
    expect(core.session.disabled).toBe(false);
    expect(core.session.direction === 'saving' ? isSavingState(core.state) : core.state === DeviceState.RESUMING).toBe(true);
  }
}

function apply(driver: FakeDriver, core: MigrationCore, c: Command): Promise<unknown> {
  switch (c.kind) {
    case 'set':
      return core.setState(c.target as DeviceState, { recovery: c.policy });
    case 'fault': {
      const arcs = baseArcs(driver.flags);
      const [from, to] = arcs[c.arc % arcs.length];
      driver.fail(from, to, { code: 'EIO', result: c.result, times: 1 });
      return Promise.resolve();
    }
    case 'reset':
      return core.reset();
    case 'self-reset':
      driver.resetSelf();
      return Promise.resolve();
  }
}

describe('MigrationCore model', () => {
  it('sequential random operations keep the core and the device in agreement', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...VALID_FLAG_WORDS), fc.array(command, { maxLength: 30 }), async (flags, commands) => {
        const driver = new FakeDriver(flags);
        const core = new MigrationCore(driver);
        const disabledSeen = new Set<unknown>();
        core.on('session-close', (e) => disabledSeen.add(e.session));
        for (const c of commands) {
          try {
            await apply(driver, core, c);
          } catch (err) {
            expect(err).toBeInstanceOf(MigError);
            const e = err as MigError;
            expect(['EINVAL', 'EIO', 'ECANCELED']).toContain(e.code);
            // A failed arc always reports where the device is.
            if (e.arc) expect(e.state).toBe(driver.state);
          }
          checkAgreement(driver, core);
        }
        // Every session the core ended is disabled.
        for (const s of disabledSeen) expect((s as { disabled: boolean }).disabled).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('concurrent bursts settle with the core and the device in agreement and no interleaved arcs', async () => {
    let resetsInsideArcs = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...VALID_FLAG_WORDS),
        fc.array(fc.tuple(command, fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.integer({ min: 1, max: 6 }) })), { minLength: 1, maxLength: 12 }),
        async (flags, commands) => {
        const driver = new FakeDriver(flags);
        driver.yieldTurns = 1;
        const core = new MigrationCore(driver);
        // Fire each command after a random number of event-loop turns, without waiting for the
        // earlier ones: resets land before, between and inside arcs. Overlapping steps are violations.
        const all = commands.map(async ([c, turns]) => {
          for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
          return apply(driver, core, c).catch((err: unknown) => err);
        });
        const results = await Promise.all(all);
        for (const r of results) if (r instanceof Error) expect(r).toBeInstanceOf(MigError);
        checkAgreement(driver, core);
        resetsInsideArcs += driver.resetsDuringStep;
        },
      ),
      { numRuns: 300 },
    );
    // The schedule really did put driver resets inside arcs.
    expect(resetsInsideArcs).toBeGreaterThan(0);
  });
});
