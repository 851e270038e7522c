/**
 * MigrationCore: the handle a VMM holds for one device.
 *
 * A driver performs single base arcs; the core does what the kernel's vfio core plus a careful
 * VMM (QEMU's hw/vfio/migration.c) do around them: it validates requests with the next-hop rule,
 * walks the path one arc at a time under a lock (the drivers' state_mutex), tracks the one open data
 * session and ends it when its transfer state is left, reads the real state back after a failure,
 * optionally recovers (recover state, then reset), and applies resets that race a transition after
 * that transition ("SET first, reset second", the drivers' deferred_reset unlock routine).
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { MigError, errnoName, migError } from './errors.js';
import { arcClosesSession, arcOpensSession, transitionPath } from './path.js';
import { DeviceState, flagsName, isSavingState, stateName } from './states.js';
import { assertFlags, stateSupported } from './table.js';
import type { DeviceIdentity, MigrationDriver, Session } from './types.js';

/**
 * What setState does after a failed arc (QEMU's vfio_migration_set_state / cloud-hypervisor):
 * - 'none': nothing; the error reports where the device rests.
 * - 'recover': walk back to the state the call started from (or `recoverTo`).
 * - 'recover-then-reset': as 'recover'; if that is impossible or fails, reset the device (RUNNING).
 */
export type RecoveryPolicy = 'none' | 'recover' | 'recover-then-reset';

/** What was done after a failure; the value of `MigError.recovery`. */
export type RecoveryOutcome = 'none' | 'recovered' | 'reset' | 'failed';

export interface MigrationCoreOptions {
  /** Default recovery policy of setState; 'none' unless given. */
  recovery?: RecoveryPolicy;
}

export interface SetStateOptions {
  /** Overrides the core's policy for this call. */
  recovery?: RecoveryPolicy;
  /** The state to recover to; default: the state the call started from. */
  recoverTo?: DeviceState;
}

/** Why the core ended a session. */
export type SessionCloseReason = 'arc' | 'reset' | 'state' | 'replaced' | 'detach';

export interface ArcEvent {
  from: DeviceState;
  to: DeviceState;
  /** Wall time of driver.step(), milliseconds. */
  ms: number;
}

export interface MigrationCoreEvents {
  arc: [ArcEvent];
  'arc-failed': [{ error: MigError }];
  'session-open': [{ session: Session }];
  'session-close': [{ session: Session; reason: SessionCloseReason }];
  reset: [{ deferred: boolean }];
}

/** A failure inside a walk, before the core turns it into the caller's MigError. */
class ArcFailure {
  constructor(
    readonly cause: unknown,
    readonly from: DeviceState,
    readonly to: DeviceState,
  ) {}
}

/** The walk stopped because the device was reset under it (a driver-initiated reset). */
class WalkInterrupted {
  constructor(readonly at: DeviceState) {}
}

interface ResetWaiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

const POLICIES: readonly RecoveryPolicy[] = ['none', 'recover', 'recover-then-reset'];

export class MigrationCore extends EventEmitter<MigrationCoreEvents> {
  readonly driver: MigrationDriver;
  readonly flags: number;
  #recovery: RecoveryPolicy;
  #state: DeviceState;
  #session: Session | null;
  /** The state lock (the drivers' state_mutex): held by one setState or reset at a time. */
  #locked: boolean;
  #waiters: (() => void)[];
  /** core.reset() calls that arrived while the lock was held (deferred_reset). */
  #resetRequests: ResetWaiter[];
  /** The driver reset itself while the lock was held: bookkeeping is due at unlock. */
  #driverResetPending: boolean;
  /** The driver reset itself during the current walk: the remaining arcs no longer apply. */
  #walkInterrupted: boolean;
  /** >0 while the core itself is inside driver.reset() (its 'reset' event is ours, not news). */
  #ownReset: number;
  #onDriverReset: () => void;

  constructor(driver: MigrationDriver, options: MigrationCoreOptions = {}) {
    super();
    assertFlags(driver.flags);
    const recovery = options.recovery ?? 'none';
    if (!POLICIES.includes(recovery)) {
      throw migError('EINVAL', `unknown recovery policy ${String(recovery)}`);
    }
    this.driver = driver;
    this.flags = driver.flags;
    this.#recovery = recovery;
    // The kernel starts every device at RUNNING on first open; setState reads the real state anyway.
    this.#state = DeviceState.RUNNING;
    this.#session = null;
    this.#locked = false;
    this.#waiters = [];
    this.#resetRequests = [];
    this.#driverResetPending = false;
    this.#walkInterrupted = false;
    this.#ownReset = 0;
    this.#onDriverReset = () => this.#driverReset();
    driver.on?.('reset', this.#onDriverReset);
  }

  /** The last state the core knows (updated by every arc, reset and read). */
  get state(): DeviceState {
    return this.#state;
  }

  /** The open data session, or null. */
  get session(): Session | null {
    return this.#session;
  }

  /** True while a setState or reset holds the state lock. */
  get busy(): boolean {
    return this.#locked;
  }

  identity(): DeviceIdentity {
    return this.driver.identity();
  }

  /** Read the device's state from the driver (FEATURE GET MIG_DEVICE_STATE). */
  async getState(): Promise<DeviceState> {
    const state = await this.driver.getState();
    // While a walk runs the walk owns the view; a read that started before an arc may be stale.
    if (!this.#locked) {
      this.#state = state;
      this.#syncSession(state);
    }
    return state;
  }

  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: bytes still needed to complete STOP_COPY (any state). */
  stopCopySize(): Promise<number> {
    return this.driver.stopCopySize();
  }

  /**
   * Move the device to `target`, one base arc at a time. Resolves with the session the final arc
   * opens (RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P, STOP->STOP_COPY, STOP->RESUMING), else
   * null; requesting the current state resolves null and opens nothing. Calls are serialised.
   * Rejects with a MigError: EINVAL for invalid requests (nothing touched); for a failed arc the
   * driver's errno with `arc`, `target`, `state` (read back) and `recovery`.
   */
  async setState(target: DeviceState, options: SetStateOptions = {}): Promise<Session | null> {
    const policy = options.recovery ?? this.#recovery;
    if (!POLICIES.includes(policy)) throw migError('EINVAL', `unknown recovery policy ${String(policy)}`);
    await this.#lock();
    try {
      return await this.#setStateLocked(target, policy, options.recoverTo);
    } finally {
      await this.#unlock();
    }
  }

  /**
   * VFIO_DEVICE_RESET: the device goes to RUNNING and every open session is disabled. Allowed in
   * every state (it is the only way out of ERROR and out of a RESUMING that will not validate). If
   * a setState is in flight, the reset is applied when that call completes, before any queued call.
   */
  reset(): Promise<void> {
    if (this.#locked) {
      return new Promise<void>((resolve, reject) => this.#resetRequests.push({ resolve, reject }));
    }
    return (async () => {
      await this.#lock();
      try {
        await this.#resetDriver();
        this.#applyReset(false);
      } finally {
        await this.#unlock();
      }
    })();
  }

  /** Stop listening to the driver's reset events and disable the open session. */
  detach(): void {
    this.driver.off?.('reset', this.#onDriverReset);
    this.#closeSession('detach');
  }

  // ---- the walk ------------------------------------------------------------------------------

  async #setStateLocked(target: DeviceState, policy: RecoveryPolicy, recoverTo: DeviceState | undefined): Promise<Session | null> {
    // ERROR is left only by reset: refuse before touching the driver (pds answers EIO; the
    // kernel helper refuses a current state of ERROR with EINVAL).
    if (this.#state === DeviceState.ERROR) {
      throw migError('EINVAL', `device is in ERROR; only reset() leaves it (requested ${stateName(target)})`, {
        target,
        state: DeviceState.ERROR,
        recovery: 'none',
      });
    }
    // Unsupported targets (ERROR always, values outside 0..7) never reach the driver.
    if (!stateSupported(target, this.flags)) {
      throw migError('EINVAL', `target state ${stateName(target)} is not supported by a ${flagsName(this.flags)} device`, {
        target: Number.isInteger(target) && target >= 0 && target < 8 ? target : undefined,
        state: this.#state,
        recovery: 'none',
      });
    }
    if (recoverTo !== undefined && !stateSupported(recoverTo, this.flags)) {
      throw migError('EINVAL', `recover state ${stateName(recoverTo)} is not supported by a ${flagsName(this.flags)} device`, {
        target,
        state: this.#state,
        recovery: 'none',
      });
    }
    // The real state, never the cached one: a reset may have moved the device since.
    let start: DeviceState;
    try {
      start = await this.driver.getState();
    } catch (err) {
      throw migError(errnoName(err) ?? 'EIO', `cannot read the device state: ${err instanceof Error ? err.message : String(err)}`, {
        target,
        recovery: 'none',
        cause: err,
      });
    }
    this.#state = start;
    if (!this.#walkInterrupted) this.#syncSession(start);
    if (start === DeviceState.ERROR) {
      throw migError('EINVAL', `device is in ERROR; only reset() leaves it (requested ${stateName(target)})`, {
        target,
        state: start,
        recovery: 'none',
      });
    }
    let path: DeviceState[];
    try {
      path = transitionPath(start, target, this.flags);
    } catch (err) {
      // Blocked request (STOP_COPY -> PRE_COPY*): EINVAL, nothing changes.
      throw migError('EINVAL', (err as Error).message, { target, state: start, recovery: 'none', cause: err });
    }
    try {
      return await this.#walk(start, path);
    } catch (failure) {
      throw await this.#fail(failure, start, target, policy, recoverTo);
    }
  }

  /** Perform the arcs of `path` from `start`; throws ArcFailure or WalkInterrupted. */
  async #walk(start: DeviceState, path: readonly DeviceState[]): Promise<Session | null> {
    let from = start;
    let opened: Session | null = null;
    for (let i = 0; i < path.length; i++) {
      const to = path[i];
      // A driver-initiated reset landed since the walk began: the device is at RUNNING now, so the
      // rest of the path no longer starts where the table assumes. Stop; the reset is applied at unlock.
      if (this.#walkInterrupted) throw new WalkInterrupted(from);
      const t0 = performance.now();
      let result: Session | null;
      try {
        result = await this.driver.step(from, to);
      } catch (err) {
        throw new ArcFailure(err, from, to);
      }
      const ms = performance.now() - t0;
      this.#state = to;
      try {
        this.emit('arc', { from, to, ms });
      } finally {
        // The arc happened: its session bookkeeping must not depend on a listener behaving.
        opened = this.#arcSessionEffect(from, to, result ?? null);
      }
      from = to;
    }
    return opened;
  }

  /** Session bookkeeping of one completed arc; returns the session it opened, if any. */
  #arcSessionEffect(from: DeviceState, to: DeviceState, result: Session | null): Session | null {
    if (arcClosesSession(from, to)) {
      // The driver should have disabled it; disable anyway: a session never outlives its state.
      this.#closeSession('arc');
    }
    if (arcOpensSession(from, to)) {
      if (result === null) return null;
      if (this.#session !== null && this.#session !== result) this.#closeSession('replaced');
      this.#session = result;
      this.emit('session-open', { session: result });
      return result;
    }
    if (result !== null && result !== this.#session) {
      // The kernel drops a file returned on an arc that opens nothing (WARN + fd not installed).
      result.disable();
      result.close();
    }
    return null;
  }

  /** Turn a walk failure into the caller's error, after reading the state back and recovering. */
  async #fail(
    failure: unknown,
    start: DeviceState,
    target: DeviceState,
    policy: RecoveryPolicy,
    recoverTo: DeviceState | undefined,
  ): Promise<MigError> {
    if (!(failure instanceof ArcFailure) && !(failure instanceof WalkInterrupted)) {
      // A bug in our own bookkeeping or an event listener that threw: surface it as is.
      return migError('EIO', `setState(${stateName(target)}) failed: ${String((failure as Error)?.message ?? failure)}`, {
        target,
        state: this.#state,
        recovery: 'none',
        cause: failure,
      });
    }
    const detail: Record<string, unknown> = {};
    // After a driver reset the session ends for reason 'reset', at unlock; do not pre-empt it here.
    let state = await this.#readBack(detail, !this.#walkInterrupted);
    const interrupted = failure instanceof WalkInterrupted || this.#walkInterrupted;
    let recovery: RecoveryOutcome = 'none';
    if (interrupted) {
      // The driver reset the device under the walk: it rests at RUNNING with sessions ended, which
      // is what every recovery would end in anyway.
      recovery = 'reset';
    } else if (policy !== 'none') {
      const back = recoverTo ?? start;
      if (state !== undefined && state !== DeviceState.ERROR) {
        try {
          await this.#walk(state, transitionPath(state, back, this.flags));
          recovery = 'recovered';
        } catch (err) {
          detail.recoveryError =
            err instanceof ArcFailure
              ? err.cause
              : err instanceof WalkInterrupted
                ? migError('ECANCELED', `the device was reset during the recovery walk, at ${stateName(err.at)}`)
                : err;
          if (err instanceof ArcFailure) detail.recoveryArc = { from: err.from, to: err.to };
        }
      }
      if (recovery !== 'recovered') {
        if (policy === 'recover-then-reset') {
          try {
            await this.#resetDriver();
            this.#applyReset(false);
            recovery = 'reset';
          } catch (err) {
            detail.resetError = err;
            recovery = 'failed';
          }
        } else {
          recovery = 'failed';
        }
      }
      state = await this.#readBack(detail);
    }
    let err: MigError;
    if (failure instanceof WalkInterrupted) {
      err = migError('ECANCELED', `setState(${stateName(target)}) stopped at ${stateName(failure.at)}: the device was reset during the transition`, {
        target,
        state,
        recovery,
        detail,
      });
    } else {
      const code = errnoName(failure.cause) ?? 'EIO';
      const why = failure.cause instanceof Error ? failure.cause.message : String(failure.cause);
      err = migError(code, `arc ${stateName(failure.from)} -> ${stateName(failure.to)} failed on the way to ${stateName(target)}: ${why}`, {
        arc: { from: failure.from, to: failure.to },
        target,
        state,
        recovery,
        cause: failure.cause,
        detail,
      });
    }
    this.emit('arc-failed', { error: err });
    return err;
  }

  /** The device's state after a failure, from the driver; undefined when even that read fails. */
  async #readBack(detail: Record<string, unknown>, sync = true): Promise<DeviceState | undefined> {
    try {
      const state = await this.driver.getState();
      this.#state = state;
      if (sync) this.#syncSession(state);
      return state;
    } catch (err) {
      detail.getStateError = err;
      return undefined;
    }
  }

  /** End the session if the device is no longer in its transfer state (saving group / RESUMING). */
  #syncSession(state: DeviceState): void {
    const s = this.#session;
    if (s === null) return;
    const inState = s.direction === 'saving' ? isSavingState(state) : state === DeviceState.RESUMING;
    if (!inState) this.#closeSession('state');
  }

  #closeSession(reason: SessionCloseReason): void {
    const s = this.#session;
    if (s === null) return;
    this.#session = null;
    s.disable();
    this.emit('session-close', { session: s, reason });
  }

  // ---- resets and the lock -------------------------------------------------------------------

  async #resetDriver(): Promise<void> {
    this.#ownReset++;
    try {
      await this.driver.reset();
    } catch (err) {
      throw migError(errnoName(err) ?? 'EIO', `device reset failed: ${err instanceof Error ? err.message : String(err)}`, {
        recovery: 'failed',
        cause: err,
      });
    } finally {
      this.#ownReset--;
    }
  }

  /** Reset bookkeeping: RUNNING, sessions disabled. */
  #applyReset(deferred: boolean): void {
    this.#state = DeviceState.RUNNING;
    this.#closeSession('reset');
    this.emit('reset', { deferred });
  }

  /** The driver reset the device on its own (FLR, hot reset). */
  #driverReset(): void {
    if (this.#ownReset > 0) return;
    if (this.#locked) {
      // Same rule as the kernel drivers' reset_done: the lock holder applies it when it unlocks.
      this.#driverResetPending = true;
      this.#walkInterrupted = true;
      return;
    }
    this.#applyReset(false);
  }

  async #lock(): Promise<void> {
    if (!this.#locked) {
      this.#locked = true;
      // Driver resets from here on belong to this holder: they stop its walk and are applied at unlock.
      this.#walkInterrupted = false;
      return;
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  /** The deferred_reset unlock routine: apply resets that arrived meanwhile, then hand the lock on. */
  async #unlock(): Promise<void> {
    try {
      while (this.#resetRequests.length > 0 || this.#driverResetPending) {
        const requests = this.#resetRequests.splice(0);
        this.#driverResetPending = false;
        if (requests.length === 0) {
          this.#applyReset(true);
          continue;
        }
        try {
          await this.#resetDriver();
          this.#applyReset(true);
          for (const r of requests) r.resolve();
        } catch (err) {
          for (const r of requests) r.reject(err);
        }
      }
    } finally {
      // Even when an event listener threw above: a stuck lock would hang every later call.
      const next = this.#waiters.shift();
      this.#walkInterrupted = false; // every reset so far was applied above
      if (next) next(); // the lock passes straight to the next caller, in arrival order
      else this.#locked = false;
    }
  }
}
