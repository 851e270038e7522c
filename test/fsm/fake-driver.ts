/**
 * A scripted MigrationDriver for the core's tests: it keeps a kernel-like state machine, fails any
 * arc on request (staying in `from` or dropping to ERROR), delays or gates arcs, resets itself with
 * the kernel drivers' deferred_reset rule, and records every call so tests can assert order.
 */
import { EventEmitter } from 'node:events';
import { migError } from '../../src/fsm/errors.js';
import { arcClosesSession, arcOpensSession, isBaseArc } from '../../src/fsm/path.js';
import { DeviceState, stateName } from '../../src/fsm/states.js';
import type { DeviceIdentity, MigrationDriver, PrecopyInfo, ResumingSession, SavingSession, Session } from '../../src/fsm/types.js';

export interface ArcFault {
  /** errno name the step rejects with. */
  code: string;
  /** Where the device rests after the failure: `from` (all upstream drivers) or ERROR (pds-like). */
  result?: 'stay' | 'error';
  /** How many times the fault fires; Infinity by default. */
  times?: number;
  /** Reject with a plain Error without code (a driver bug) instead of an errno error. */
  plain?: boolean;
}

let nextId = 1;

class FakeSession {
  readonly id = nextId++;
  readonly fd = null;
  disabled = false;
  closed = false;
  disableCalls = 0;
  constructor(readonly direction: 'saving' | 'resuming') {}
  disable(): void {
    this.disableCalls++;
    this.disabled = true;
  }
  close(): void {
    this.closed = true;
  }
  async read(_buf: Buffer): Promise<number> {
    if (this.disabled) throw migError('ENODEV', 'session disabled');
    return 0;
  }
  async write(buf: Buffer): Promise<number> {
    if (this.disabled) throw migError('ENODEV', 'session disabled');
    return buf.length;
  }
  async precopyInfo(): Promise<PrecopyInfo> {
    if (this.disabled) throw migError('ENODEV', 'session disabled');
    return { initialBytes: 0, dirtyBytes: 0, reinit: false };
  }
}

export type FakeSessionType = FakeSession & Session;

export class FakeDriver extends EventEmitter implements MigrationDriver {
  readonly flags: number;
  state: DeviceState = DeviceState.RUNNING;
  session: FakeSession | null = null;
  /** Every completed or failed step, "FROM>TO" or "FROM>TO!" for a failure. */
  readonly log: string[] = [];
  readonly faults = new Map<string, ArcFault>();
  readonly gates = new Map<string, Promise<void>>();
  /** Contract violations seen (a step from the wrong state, a non-base arc, overlapping steps). */
  readonly violations: string[] = [];
  delayMs = 0;
  /** Event-loop turns (setImmediate) each step takes, so other callers can run in between. */
  yieldTurns = 0;
  /** How many self-resets landed while a step was in flight. */
  resetsDuringStep = 0;
  /** Do not disable the session on a closing arc (the core must do it). */
  forgetDisable = false;
  /** Return a stray session from a non-opening arc. */
  strayOn: string | null = null;
  /** getState() fails on this call number (1-based, counted by getStateCalls). */
  failGetStateAt = 0;
  getStateCalls = 0;
  resetCalls = 0;
  stepCalls = 0;
  #inStep = false;
  #deferredReset = false;

  constructor(flags = 0x7) {
    super();
    this.flags = flags;
  }

  identity(): DeviceIdentity {
    return { kind: 'fake', model: 'test', version: '1.0', flags: this.flags, stateSize: 4096 };
  }

  fail(from: DeviceState, to: DeviceState, fault: ArcFault): void {
    this.faults.set(`${from}>${to}`, fault);
  }

  /** Hold arc from->to until the returned release function runs. */
  gate(from: DeviceState, to: DeviceState): () => void {
    let release!: () => void;
    this.gates.set(`${from}>${to}`, new Promise<void>((r) => (release = r)));
    return release;
  }

  /** Runs inside the next getState() call, before it answers (then is cleared). */
  onGetState: (() => void) | null = null;

  async getState(): Promise<DeviceState> {
    this.getStateCalls++;
    const hook = this.onGetState;
    this.onGetState = null;
    hook?.();
    if (this.getStateCalls === this.failGetStateAt) {
      throw migError('EIO', 'get state failed');
    }
    return this.state;
  }

  async step(from: DeviceState, to: DeviceState): Promise<Session | null> {
    this.stepCalls++;
    if (this.#inStep) this.violations.push(`overlapping step ${stateName(from)}>${stateName(to)}`);
    if (from !== this.state) this.violations.push(`step from ${stateName(from)} while in ${stateName(this.state)}`);
    if (!isBaseArc(from, to, this.flags)) this.violations.push(`not a base arc ${stateName(from)}>${stateName(to)}`);
    this.#inStep = true;
    const key = `${from}>${to}`;
    try {
      const gate = this.gates.get(key);
      if (gate) {
        this.gates.delete(key);
        await gate;
      }
      if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
      else await Promise.resolve();
      for (let i = 0; i < this.yieldTurns; i++) await new Promise((r) => setImmediate(r));
      const fault = this.faults.get(key);
      if (fault && (fault.times ?? Infinity) > 0) {
        if (fault.times !== undefined) fault.times--;
        this.log.push(`${stateName(from)}>${stateName(to)}!`);
        if (fault.result === 'error') {
          this.state = DeviceState.ERROR;
          this.#dropSession();
        }
        if (fault.plain) throw new Error('driver bug');
        throw migError(fault.code, `injected failure of ${stateName(from)}>${stateName(to)}`);
      }
      this.log.push(`${stateName(from)}>${stateName(to)}`);
      this.state = to;
      if (arcClosesSession(from, to) && !this.forgetDisable) this.#dropSession();
      if (arcOpensSession(from, to)) {
        this.#dropSession();
        this.session = new FakeSession(to === DeviceState.RESUMING ? 'resuming' : 'saving');
        return this.session as unknown as SavingSession | ResumingSession;
      }
      if (this.strayOn === key) return new FakeSession('saving') as unknown as SavingSession;
      return null;
    } finally {
      this.#inStep = false;
      // deferred_reset: a reset that came in during the arc is applied once the arc is done.
      if (this.#deferredReset) {
        this.#deferredReset = false;
        this.#doReset();
      }
    }
  }

  async reset(): Promise<void> {
    this.resetCalls++;
    this.log.push('RESET');
    await Promise.resolve();
    this.#doReset();
  }

  async stopCopySize(): Promise<number> {
    return 4096;
  }

  /** An FLR / hot reset reaching the driver on its own: notify now, apply after an arc in flight. */
  resetSelf(): void {
    this.log.push('SELF-RESET');
    if (this.#inStep) {
      this.#deferredReset = true;
      this.resetsDuringStep++;
    }
    else this.#doReset();
    this.emit('reset');
  }

  #doReset(): void {
    this.state = DeviceState.RUNNING;
    this.#dropSession();
  }

  #dropSession(): void {
    if (this.session) this.session.disable();
    this.session = null;
  }
}
