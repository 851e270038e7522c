import { describe, expect, it } from 'vitest';
import { MigrationCore } from '../../src/fsm/core.js';
import type { RecoveryPolicy } from '../../src/fsm/core.js';
import { MigError } from '../../src/fsm/errors.js';
import { arcClosesSession, arcOpensSession, transitionPath } from '../../src/fsm/path.js';
import { DeviceState, VALID_FLAG_WORDS, isSavingState, stateName } from '../../src/fsm/states.js';
import { stateSupported } from '../../src/fsm/table.js';
import type { Session } from '../../src/fsm/types.js';
import { FakeDriver } from './fake-driver.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;

function supported(flags: number): DeviceState[] {
  return ([1, 2, 3, 4, 5, 6, 7] as DeviceState[]).filter((s) => stateSupported(s, flags));
}

/** Every (cur, target) pair with cur != target that the kernel accepts. */
function legalPairs(flags: number): [DeviceState, DeviceState][] {
  const out: [DeviceState, DeviceState][] = [];
  for (const cur of supported(flags)) {
    for (const target of supported(flags)) {
      if (cur === target) continue;
      if (cur === STOP_COPY && (target === PRE_COPY || target === PRE_COPY_P2P)) continue;
      out.push([cur, target]);
    }
  }
  return out;
}

function isTransferState(s: DeviceState): boolean {
  return isSavingState(s) || s === RESUMING;
}

/** A core whose device has been walked to `cur` from RUNNING through the core (so sessions exist). */
async function coreAt(flags: number, cur: DeviceState, recovery: RecoveryPolicy = 'none') {
  const driver = new FakeDriver(flags);
  const core = new MigrationCore(driver, { recovery });
  await core.setState(cur);
  driver.log.length = 0;
  return { driver, core };
}

function arcsOf(cur: DeviceState, path: DeviceState[]): string[] {
  const out: string[] = [];
  let from = cur;
  for (const to of path) {
    out.push(`${stateName(from)}>${stateName(to)}`);
    from = to;
  }
  return out;
}

function record(core: MigrationCore): string[] {
  const events: string[] = [];
  core.on('arc', (e) => events.push(`arc ${stateName(e.from)}>${stateName(e.to)}`));
  core.on('session-open', (e) => events.push(`open ${e.session.direction} #${e.session.id}`));
  core.on('session-close', (e) => events.push(`close #${e.session.id} ${e.reason}`));
  core.on('reset', (e) => events.push(`reset ${e.deferred ? 'deferred' : 'now'}`));
  core.on('arc-failed', (e) => events.push(`failed ${e.error.code}`));
  return events;
}

async function rejection(p: Promise<unknown>): Promise<MigError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(MigError);
    return err as MigError;
  }
  throw new Error('expected a rejection');
}

describe('MigrationCore: successful walks', () => {
  for (const flags of VALID_FLAG_WORDS) {
    it(`walks every legal pair of flags 0x${flags.toString(16)} arc by arc`, async () => {
      for (const [cur, target] of legalPairs(flags)) {
        const { driver, core } = await coreAt(flags, cur);
        const before = core.session;
        expect(before !== null).toBe(isTransferState(cur));
        const path = transitionPath(cur, target, flags);
        const events = record(core);
        const s = await core.setState(target);
        expect(driver.log).toEqual(arcsOf(cur, path));
        expect(driver.violations).toEqual([]);
        expect(core.state).toBe(target);
        const last = path.length === 1 ? cur : path[path.length - 2];
        const opens = arcOpensSession(last, target);
        expect(s !== null).toBe(opens);
        if (opens) {
          expect(s).toBe(driver.session);
          expect(core.session).toBe(s);
          expect(s!.disabled).toBe(false);
        }
        // A session never outlives its transfer state; saving-group moves keep the same session.
        if (isTransferState(target)) expect(core.session).not.toBeNull();
        else expect(core.session).toBeNull();
        if (before) {
          const kept = isSavingState(cur) && isSavingState(target) && path.every((p) => isSavingState(p));
          expect(before.disabled).toBe(!kept);
          if (kept) expect(core.session).toBe(before);
        }
        expect(events.filter((e) => e.startsWith('arc ')).map((e) => e.slice(4))).toEqual(arcsOf(cur, path));
        // Session events come right after the arc that caused them.
        path.forEach((to, i) => {
          const from = i === 0 ? cur : path[i - 1];
          const at = events.indexOf(`arc ${stateName(from)}>${stateName(to)}`);
          if (arcClosesSession(from, to) && before) expect(events[at + 1]).toBe(`close #${before.id} arc`);
          if (arcOpensSession(from, to)) expect(events[at + 1]).toMatch(/^open /);
        });
      }
    });
  }

  it('requesting the current state is a no-op that opens nothing', async () => {
    for (const flags of VALID_FLAG_WORDS) {
      for (const cur of supported(flags)) {
        const { driver, core } = await coreAt(flags, cur);
        const session = core.session;
        const events = record(core);
        expect(await core.setState(cur)).toBeNull();
        expect(driver.stepCalls).toBe(cur === RUNNING ? 0 : transitionPath(RUNNING, cur, flags).length);
        expect(driver.log).toEqual([]);
        expect(events).toEqual([]);
        expect(core.session).toBe(session);
        expect(session?.disabled ?? false).toBe(false);
      }
    }
  });

  it('reads the real state before walking instead of trusting its cache', async () => {
    const driver = new FakeDriver(0x7);
    const core = new MigrationCore(driver);
    driver.state = STOP; // moved behind the core's back
    await core.setState(STOP_COPY);
    expect(driver.log).toEqual(['STOP>STOP_COPY']);
    expect(driver.violations).toEqual([]);
  });

  it('passes identity, flags and stopCopySize through', async () => {
    const driver = new FakeDriver(0x5);
    const core = new MigrationCore(driver);
    expect(core.flags).toBe(0x5);
    expect(core.identity()).toEqual(driver.identity());
    expect(await core.stopCopySize()).toBe(4096);
    driver.state = PRE_COPY;
    expect(await core.getState()).toBe(PRE_COPY);
    expect(core.state).toBe(PRE_COPY);
  });
});

describe('MigrationCore: invalid requests touch nothing', () => {
  it('rejects unsupported targets, ERROR and out-of-range values with EINVAL', async () => {
    const driver = new FakeDriver(0x1);
    const core = new MigrationCore(driver);
    for (const bad of [ERROR, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, 8, -1, 1.5] as DeviceState[]) {
      const err = await rejection(core.setState(bad));
      expect(err.code).toBe('EINVAL');
      expect(err.recovery).toBe('none');
    }
    expect(driver.stepCalls + driver.getStateCalls + driver.resetCalls).toBe(0);
  });

  it('rejects the blocked STOP_COPY -> PRE_COPY(_P2P) requests without a state change', async () => {
    for (const target of [PRE_COPY, PRE_COPY_P2P]) {
      const { driver, core } = await coreAt(0x7, STOP_COPY);
      const session = core.session!;
      const err = await rejection(core.setState(target));
      expect(err.code).toBe('EINVAL');
      expect(err.state).toBe(STOP_COPY);
      expect(err.target).toBe(target);
      expect(driver.log).toEqual([]);
      expect(core.state).toBe(STOP_COPY);
      expect(session.disabled).toBe(false);
      expect(core.session).toBe(session);
    }
  });

  it('refuses drivers with an undefined flags word', () => {
    for (const flags of [0, 2, 4, 6, 8, 0xf]) {
      expect(() => new MigrationCore(new FakeDriver(flags))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    }
  });

  it('refuses an unknown recovery policy', async () => {
    expect(() => new MigrationCore(new FakeDriver(), { recovery: 'pray' as RecoveryPolicy })).toThrow(
      expect.objectContaining({ code: 'EINVAL' }),
    );
    const core = new MigrationCore(new FakeDriver());
    expect((await rejection(core.setState(STOP, { recovery: 'pray' as RecoveryPolicy }))).code).toBe('EINVAL');
    expect((await rejection(core.setState(STOP, { recoverTo: ERROR }))).code).toBe('EINVAL');
  });
});
