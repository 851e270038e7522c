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

describe('MigrationCore: a failure at every arc of every path', () => {
  const policies: RecoveryPolicy[] = ['none', 'recover', 'recover-then-reset'];
  for (const flags of VALID_FLAG_WORDS) {
    for (const policy of policies) {
      for (const result of ['stay', 'error'] as const) {
        it(`flags 0x${flags.toString(16)}, recovery '${policy}', device ${result === 'stay' ? 'stays in from' : 'drops to ERROR'}`, async () => {
          let cases = 0;
          for (const [cur, target] of legalPairs(flags)) {
            const path = transitionPath(cur, target, flags);
            for (let k = 0; k < path.length; k++) {
              cases++;
              const from = k === 0 ? cur : path[k - 1];
              const to = path[k];
              const { driver, core } = await coreAt(flags, cur, policy);
              const before = core.session;
              // One failure only: the way back must work for 'recover' to have something to prove.
              driver.fail(from, to, { code: 'EIO', result, times: 1 });
              const events = record(core);
              const err = await rejection(core.setState(target));
              const where = `${stateName(cur)}->${stateName(target)} failing ${stateName(from)}>${stateName(to)}`;
              expect(err.code, where).toBe('EIO');
              expect(err.errno, where).toBe(5);
              expect(err.arc, where).toEqual({ from, to });
              expect(err.target, where).toBe(target);
              expect(driver.violations, where).toEqual([]);
              // The walk stops at the failed arc: nothing after it ran.
              expect(driver.log.slice(0, k + 1), where).toEqual([...arcsOf(cur, path).slice(0, k), `${stateName(from)}>${stateName(to)}!`]);
              const closedBefore = path.slice(0, k).some((p, i) => arcClosesSession(i === 0 ? cur : path[i - 1], p));
              let expected: { state: DeviceState; recovery: string };
              if (policy === 'none') expected = { state: result === 'stay' ? from : ERROR, recovery: 'none' };
              else if (result === 'stay') expected = { state: cur, recovery: 'recovered' };
              else if (policy === 'recover') expected = { state: ERROR, recovery: 'failed' };
              else expected = { state: RUNNING, recovery: 'reset' };
              expect({ state: err.state, recovery: err.recovery }, where).toEqual(expected);
              // The reported state is the driver's, and the core's view agrees with it.
              expect(driver.state, where).toBe(expected.state);
              expect(core.state, where).toBe(expected.state);
              if (expected.recovery === 'recovered') {
                expect(driver.log.slice(k + 1), where).toEqual(arcsOf(from, transitionPath(from, cur, flags)));
              }
              if (expected.recovery === 'reset') expect(driver.log[driver.log.length - 1], where).toBe('RESET');
              // Sessions: the core's session is live exactly when the device is in a transfer state.
              if (core.session) {
                expect(isTransferState(core.state), where).toBe(true);
                expect(core.session.disabled, where).toBe(false);
                expect(core.session, where).toBe(driver.session);
              } else {
                expect(isTransferState(core.state) && driver.session !== null, where).toBe(false);
              }
              if (before) {
                // The start session survives only if nothing closed it (no closing arc, no ERROR, no reset).
                const survives = !closedBefore && expected.state !== ERROR && expected.recovery !== 'reset';
                expect(before.disabled, where).toBe(!survives);
                if (survives) expect(core.session, where).toBe(before);
              }
              expect(events[events.length - 1], where).toBe('failed EIO');
              expect(events.filter((e) => e.startsWith('failed')).length, where).toBe(1);
            }
          }
          expect(cases).toBeGreaterThan(0);
        });
      }
    }
  }

  it('reports recovery "failed" when the way back fails too, and resets under recover-then-reset', async () => {
    for (const policy of ['recover', 'recover-then-reset'] as const) {
      const { driver, core } = await coreAt(0x7, RUNNING, policy);
      // RUNNING -> STOP_COPY = R>RP>S>SC; fail S>SC, then fail the way back at S>RP.
      driver.fail(STOP, STOP_COPY, { code: 'ENOMEM' });
      driver.fail(STOP, RUNNING_P2P, { code: 'EAGAIN' });
      const err = await rejection(core.setState(STOP_COPY));
      expect(err.code).toBe('ENOMEM');
      expect(err.arc).toEqual({ from: STOP, to: STOP_COPY });
      expect((err.detail?.recoveryError as MigError).code).toBe('EAGAIN');
      expect(err.detail?.recoveryArc).toEqual({ from: STOP, to: RUNNING_P2P });
      if (policy === 'recover') {
        expect(err.recovery).toBe('failed');
        expect(err.state).toBe(STOP);
        expect(core.state).toBe(STOP);
      } else {
        expect(err.recovery).toBe('reset');
        expect(err.state).toBe(RUNNING);
        expect(driver.resetCalls).toBe(1);
      }
    }
  });

  it('recovers to an explicit recoverTo state', async () => {
    const { driver, core } = await coreAt(0x7, PRE_COPY);
    const first = core.session!;
    driver.fail(PRE_COPY_P2P, STOP_COPY, { code: 'EIO', times: 1 });
    const err = await rejection(core.setState(STOP_COPY, { recovery: 'recover', recoverTo: RUNNING }));
    expect(err.recovery).toBe('recovered');
    expect(err.state).toBe(RUNNING);
    expect(first.disabled).toBe(true);
    expect(core.session).toBeNull();
  });

  it('recovery that reopens a transfer state hands the new session to core.session', async () => {
    const { driver, core } = await coreAt(0x5, PRE_COPY, 'recover');
    const first = core.session!;
    // PRE_COPY -> RESUMING = PC>R>S>RS; failing S>RS, recovery walks S>R>PC and opens a new saving session.
    driver.fail(STOP, RESUMING, { code: 'EINVAL', times: 1 });
    const opened: Session[] = [];
    core.on('session-open', (e) => opened.push(e.session));
    const err = await rejection(core.setState(RESUMING));
    expect(err.recovery).toBe('recovered');
    expect(first.disabled).toBe(true);
    expect(opened).toHaveLength(1);
    expect(core.session).toBe(opened[0]);
    expect(core.session?.direction).toBe('saving');
  });

  it('maps a driver error without errno to EIO and survives a failing read-back', async () => {
    const { driver, core } = await coreAt(0x1, RUNNING);
    driver.fail(RUNNING, STOP, { code: 'EINVAL', plain: true });
    driver.getStateCalls = 0;
    driver.failGetStateAt = 2; // the read-back after the failed arc, not the read before the walk
    const err = await rejection(core.setState(STOP));
    expect(err.code).toBe('EIO');
    expect(err.arc).toEqual({ from: RUNNING, to: STOP });
    expect(err.state).toBeUndefined();
    expect((err.detail?.getStateError as MigError).code).toBe('EIO');
    expect(driver.getStateCalls).toBe(2);
  });

  it('a state that cannot be read before the walk fails the call without an arc', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    driver.failGetStateAt = driver.getStateCalls + 1;
    const err = await rejection(core.setState(STOP));
    expect(err.code).toBe('EIO');
    expect(err.target).toBe(STOP);
    expect(driver.log).toEqual([]);
    expect(core.busy).toBe(false);
    await core.setState(STOP);
    expect(core.state).toBe(STOP);
  });

  it('a throwing event listener fails that call but never wedges the lock', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    let armed = true;
    core.on('arc', () => {
      if (armed) {
        armed = false;
        throw new Error('listener bug');
      }
    });
    const err = await rejection(core.setState(STOP));
    expect(err.code).toBe('EIO');
    expect(core.busy).toBe(false);
    // The session of an arc whose 'arc' listener threw is still tracked.
    await core.setState(RUNNING);
    armed = true;
    const err2 = await rejection(core.setState(PRE_COPY));
    expect(err2.code).toBe('EIO');
    expect(core.session).toBe(driver.session);
    expect(core.session?.disabled).toBe(false);
    await core.setState(RUNNING_P2P);
    expect(driver.session).toBeNull();
    // A throwing 'reset' listener during a deferred reset: the queued call behind it still runs.
    const release = driver.gate(RUNNING_P2P, STOP);
    await core.setState(RUNNING_P2P).catch(() => undefined);
    const a = core.setState(STOP);
    await settle();
    const r = core.reset();
    const b = core.setState(RUNNING_P2P);
    core.once('reset', () => {
      throw new Error('reset listener bug');
    });
    release();
    await a.catch(() => undefined);
    await r.catch(() => undefined);
    await b;
    expect(core.state).toBe(RUNNING_P2P);
    expect(core.busy).toBe(false);
  });

  it('keeps the cause and errno of the driver error', async () => {
    const { driver, core } = await coreAt(0x3, RUNNING);
    driver.fail(RUNNING_P2P, STOP, { code: 'ENOTCONN' });
    const err = await rejection(core.setState(STOP_COPY));
    expect(err.code).toBe('ENOTCONN');
    expect(err.errno).toBe(107);
    expect((err.cause as MigError).code).toBe('ENOTCONN');
    expect(err.message).toContain('RUNNING_P2P -> STOP');
    expect(err.state).toBe(RUNNING_P2P);
  });
});

describe('MigrationCore: ERROR is left only by reset', () => {
  it('refuses every setState in ERROR without touching the driver, until reset', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    driver.fail(RUNNING, PRE_COPY, { code: 'EIO', result: 'error', times: 1 });
    const err = await rejection(core.setState(PRE_COPY));
    expect(err.state).toBe(ERROR);
    expect(core.state).toBe(ERROR);
    const calls = driver.stepCalls + driver.getStateCalls + driver.resetCalls;
    for (const target of supported(0x7)) {
      const e = await rejection(core.setState(target));
      expect(e.code).toBe('EINVAL');
      expect(e.state).toBe(ERROR);
      expect(e.target).toBe(target);
    }
    expect(driver.stepCalls + driver.getStateCalls + driver.resetCalls).toBe(calls);
    await core.reset();
    expect(core.state).toBe(RUNNING);
    expect(driver.state).toBe(RUNNING);
    expect(await core.setState(PRE_COPY)).not.toBeNull();
  });

  it('refuses setState when the driver reports ERROR the core did not know of', async () => {
    const driver = new FakeDriver(0x3);
    const core = new MigrationCore(driver);
    driver.state = ERROR; // a pds-like asynchronous ERROR entry
    const err = await rejection(core.setState(STOP));
    expect(err.code).toBe('EINVAL');
    expect(err.state).toBe(ERROR);
    expect(driver.stepCalls).toBe(0);
    expect(core.state).toBe(ERROR);
  });

  it('disables the session when the device drops to ERROR', async () => {
    const { driver, core } = await coreAt(0x7, PRE_COPY);
    const s = core.session!;
    const events = record(core);
    driver.fail(PRE_COPY, PRE_COPY_P2P, { code: 'EIO', result: 'error' });
    await rejection(core.setState(PRE_COPY_P2P));
    expect(s.disabled).toBe(true);
    expect(core.session).toBeNull();
    expect(events).toEqual([`close #${s.id} state`, 'failed EIO']);
  });
});

/** Let pending promise callbacks run (the fake driver's steps yield once per arc). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

describe('MigrationCore: resets', () => {
  it('reset while a session is open disables it and returns to RUNNING', async () => {
    for (const cur of [PRE_COPY, PRE_COPY_P2P, STOP_COPY, RESUMING]) {
      const { driver, core } = await coreAt(0x7, cur);
      const s = core.session!;
      const events = record(core);
      await core.reset();
      expect(driver.resetCalls).toBe(1);
      expect(core.state).toBe(RUNNING);
      expect(core.session).toBeNull();
      expect(s.disabled).toBe(true);
      if (s.direction === 'saving') {
        await expect(s.read(Buffer.alloc(8))).rejects.toMatchObject({ code: 'ENODEV' });
        await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'ENODEV' });
      } else {
        await expect(s.write(Buffer.alloc(8))).rejects.toMatchObject({ code: 'ENODEV' });
      }
      expect(events).toEqual([`close #${s.id} reset`, 'reset now']);
      // The device is usable again and the next session is a new one.
      const next = await core.setState(STOP_COPY);
      expect(next).not.toBe(s);
      expect(next?.disabled).toBe(false);
    }
  });

  it('a reset racing a setState is applied after that call completes (set first, reset second)', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    const release = driver.gate(RUNNING_P2P, STOP);
    const events = record(core);
    const set = core.setState(STOP_COPY);
    await settle();
    expect(core.busy).toBe(true);
    let resetDone = false;
    const reset = core.reset().then(() => (resetDone = true));
    await settle();
    expect(driver.resetCalls).toBe(0);
    expect(resetDone).toBe(false);
    release();
    const session = await set;
    await reset;
    // The SET succeeded with a fresh session, which the reset right after disabled.
    expect(session).not.toBeNull();
    expect(session!.disabled).toBe(true);
    expect(core.session).toBeNull();
    expect(core.state).toBe(RUNNING);
    expect(driver.log).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY', 'RESET']);
    expect(events).toEqual([
      'arc RUNNING>RUNNING_P2P',
      'arc RUNNING_P2P>STOP',
      'arc STOP>STOP_COPY',
      `open saving #${session!.id}`,
      `close #${session!.id} reset`,
      'reset deferred',
    ]);
    expect(driver.violations).toEqual([]);
  });

  it('a deferred reset runs before setState calls queued behind the in-flight one', async () => {
    const { driver, core } = await coreAt(0x3, RUNNING);
    const release = driver.gate(RUNNING, RUNNING_P2P);
    const first = core.setState(STOP);
    await settle();
    const second = core.setState(STOP_COPY); // queued before the reset was asked for
    const reset = core.reset();
    release();
    await first;
    await reset;
    const s = await second;
    expect(driver.log).toEqual([
      'RUNNING>RUNNING_P2P',
      'RUNNING_P2P>STOP',
      'RESET',
      'RUNNING>RUNNING_P2P',
      'RUNNING_P2P>STOP',
      'STOP>STOP_COPY',
    ]);
    expect(s?.disabled).toBe(false);
    expect(core.state).toBe(STOP_COPY);
  });

  it('several resets during one transition are applied once, after it', async () => {
    const { driver, core } = await coreAt(0x1, RUNNING);
    const release = driver.gate(RUNNING, STOP);
    const set = core.setState(STOP);
    await settle();
    const resets = [core.reset(), core.reset(), core.reset()];
    release();
    await set;
    await Promise.all(resets);
    expect(driver.resetCalls).toBe(1);
    expect(core.state).toBe(RUNNING);
  });

  it('a reset racing a failing setState still runs after it', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    const release = driver.gate(RUNNING, PRE_COPY);
    driver.fail(RUNNING, PRE_COPY, { code: 'EIO', result: 'error' });
    const set = core.setState(PRE_COPY);
    await settle();
    const reset = core.reset();
    release();
    const err = await rejection(set);
    expect(err.state).toBe(ERROR);
    await reset;
    expect(core.state).toBe(RUNNING);
    expect(driver.state).toBe(RUNNING);
  });

  it('a failing device reset rejects with the driver errno', async () => {
    const driver = new FakeDriver(0x1);
    driver.reset = async () => {
      throw Object.assign(new Error('reset failed'), { code: 'EIO' });
    };
    const core = new MigrationCore(driver);
    const err = await rejection(core.reset());
    expect(err.code).toBe('EIO');
    expect(err.recovery).toBe('failed');
    expect(core.busy).toBe(false);
  });

  it('a driver-initiated reset while idle disables the session at once', async () => {
    const { driver, core } = await coreAt(0x7, PRE_COPY_P2P);
    const s = core.session!;
    const events = record(core);
    driver.resetSelf();
    expect(core.state).toBe(RUNNING);
    expect(s.disabled).toBe(true);
    expect(core.session).toBeNull();
    expect(events).toEqual([`close #${s.id} reset`, 'reset now']);
    expect(driver.resetCalls).toBe(0);
  });

  it('a driver-initiated reset during the last arc: the set succeeds, then the reset applies', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING_P2P);
    const release = driver.gate(RUNNING_P2P, PRE_COPY_P2P);
    const events = record(core);
    const set = core.setState(PRE_COPY_P2P);
    await settle();
    driver.resetSelf();
    expect(core.state).toBe(RUNNING_P2P); // not applied while the arc is in flight
    release();
    const s = await set;
    expect(s).not.toBeNull();
    expect(s!.disabled).toBe(true);
    expect(core.state).toBe(RUNNING);
    expect(core.session).toBeNull();
    expect(events).toEqual(['arc RUNNING_P2P>PRE_COPY_P2P', `open saving #${s!.id}`, `close #${s!.id} reset`, 'reset deferred']);
  });

  it('a driver-initiated reset in the middle of a path stops the walk with ECANCELED', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING, 'recover-then-reset');
    const release = driver.gate(RUNNING_P2P, STOP);
    const set = core.setState(STOP_COPY);
    await settle();
    driver.resetSelf();
    release();
    const err = await rejection(set);
    expect(err.code).toBe('ECANCELED');
    expect(err.state).toBe(RUNNING);
    expect(err.recovery).toBe('reset');
    expect(err.target).toBe(STOP_COPY);
    // STOP>STOP_COPY never ran: the device was no longer at STOP.
    expect(driver.log).toEqual(['RUNNING>RUNNING_P2P', 'SELF-RESET', 'RUNNING_P2P>STOP']);
    expect(driver.violations).toEqual([]);
    expect(driver.resetCalls).toBe(0);
    expect(core.state).toBe(RUNNING);
    expect(await core.setState(STOP_COPY)).not.toBeNull();
  });

  it('a driver-initiated reset before the first arc: no arc runs, the session ends for the reset', async () => {
    const { driver, core } = await coreAt(0x7, PRE_COPY);
    const s = core.session!;
    const events = record(core);
    driver.onGetState = () => driver.resetSelf();
    const err = await rejection(core.setState(STOP_COPY));
    expect(err.code).toBe('ECANCELED');
    expect(err.arc).toBeUndefined();
    expect(err.state).toBe(RUNNING);
    expect(driver.log).toEqual(['SELF-RESET']);
    expect(s.disabled).toBe(true);
    expect(events).toEqual(['failed ECANCELED', `close #${s.id} reset`, 'reset deferred']);
  });

  it('a driver-initiated reset right after setState is called (lock taken, walk not started) stops the walk', async () => {
    const { driver, core } = await coreAt(0x1, RUNNING);
    const set = core.setState(STOP);
    driver.resetSelf();
    const err = await rejection(set);
    expect(err.code).toBe('ECANCELED');
    expect(driver.log).toEqual(['SELF-RESET']);
    expect(core.state).toBe(RUNNING);
    expect(driver.state).toBe(RUNNING);
  });

  it('a driver-initiated reset during a recovery walk ends the recovery', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING, 'recover');
    driver.fail(STOP, STOP_COPY, { code: 'EIO', times: 1 });
    const release = driver.gate(STOP, RUNNING_P2P); // only the way back uses this arc
    const events = record(core);
    const set = core.setState(STOP_COPY);
    await settle();
    driver.resetSelf();
    release();
    const err = await rejection(set);
    expect(err.code).toBe('EIO');
    expect(err.recovery).toBe('failed');
    expect((err.detail?.recoveryError as MigError).code).toBe('ECANCELED');
    expect(err.state).toBe(RUNNING);
    expect(driver.log).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY!', 'SELF-RESET', 'STOP>RUNNING_P2P']);
    expect(events.slice(-2)).toEqual(['failed EIO', 'reset deferred']);
    expect(core.state).toBe(RUNNING);
  });

  it('ignores the driver echoing its own reset event during core.reset()', async () => {
    const { driver, core } = await coreAt(0x7, STOP_COPY);
    const original = driver.reset.bind(driver);
    driver.reset = async () => {
      await original();
      driver.emit('reset');
    };
    const events = record(core);
    await core.reset();
    expect(events.filter((e) => e.startsWith('reset'))).toEqual(['reset now']);
  });

  it('detach() stops following driver resets and disables the session', async () => {
    const { driver, core } = await coreAt(0x7, STOP_COPY);
    const s = core.session!;
    core.detach();
    expect(s.disabled).toBe(true);
    expect(driver.listenerCount('reset')).toBe(0);
  });
});

describe('MigrationCore: sessions end with their transfer state', () => {
  it('disables the session on a closing arc even when the driver forgot to', async () => {
    for (const [cur, target] of [
      [STOP_COPY, STOP],
      [RESUMING, STOP],
      [PRE_COPY, RUNNING],
      [PRE_COPY_P2P, RUNNING_P2P],
    ] as const) {
      const { driver, core } = await coreAt(0x7, cur);
      driver.forgetDisable = true;
      const s = core.session!;
      const events = record(core);
      await core.setState(target);
      expect(s.disabled).toBe(true);
      expect(core.session).toBeNull();
      expect(events).toEqual([`arc ${stateName(cur)}>${stateName(target)}`, `close #${s.id} arc`]);
    }
  });

  it('drops a session a driver returns from an arc that opens none', async () => {
    const { driver, core } = await coreAt(0x7, PRE_COPY);
    const kept = core.session;
    driver.strayOn = `${PRE_COPY}>${PRE_COPY_P2P}`;
    expect(await core.setState(PRE_COPY_P2P)).toBeNull();
    expect(core.session).toBe(kept);
    expect(kept?.disabled).toBe(false);
  });

  it('getState() while idle ends a session whose state the device left', async () => {
    const { driver, core } = await coreAt(0x7, STOP_COPY);
    const s = core.session!;
    driver.state = STOP; // e.g. a driver that moved without telling
    expect(await core.getState()).toBe(STOP);
    expect(s.disabled).toBe(true);
    expect(core.session).toBeNull();
  });
});

describe('MigrationCore: concurrent setState calls', () => {
  it('run one at a time, in call order, never interleaving arcs', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    driver.delayMs = 2;
    const targets = [STOP, PRE_COPY, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY_P2P, RUNNING];
    const results = await Promise.all(targets.map((t) => core.setState(t)));
    let cur: DeviceState = RUNNING;
    const expected: string[] = [];
    for (const t of targets) {
      expected.push(...arcsOf(cur, transitionPath(cur, t, 0x7)));
      cur = t;
    }
    expect(driver.log).toEqual(expected);
    expect(driver.violations).toEqual([]);
    expect(results.map((r) => r?.direction ?? null)).toEqual([null, 'saving', null, 'resuming', null, 'saving', null]);
    expect(results.filter((r) => r !== null).every((r) => r!.disabled)).toBe(true);
    expect(core.state).toBe(RUNNING);
  });

  it('a failing call in the queue does not disturb the ones after it', async () => {
    const { driver, core } = await coreAt(0x7, RUNNING);
    driver.fail(STOP, STOP_COPY, { code: 'ENOMEM' });
    const a = core.setState(STOP_COPY);
    const b = core.setState(RESUMING);
    const c = core.setState(STOP);
    const errA = await rejection(a);
    expect(errA.state).toBe(STOP);
    expect((await b)?.direction).toBe('resuming');
    expect(await c).toBeNull();
    expect(driver.log).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY!', 'STOP>RESUMING', 'RESUMING>STOP']);
    expect(driver.violations).toEqual([]);
    expect(core.busy).toBe(false);
  });
});
