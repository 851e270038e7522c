/**
 * Method-backed data sessions: the in-process equivalent of a kernel data fd.
 *
 * A driver supplies the data logic (read/precopyInfo for saving, write for resuming); these classes
 * supply the fd semantics every upstream driver shares: a fresh id per session (the kernel never
 * reuses data fds), calls serialised like the driver's per-file mutex, ENODEV for pending and later
 * calls once the session is disabled (the FSM left the transfer state or the device was reset), and
 * EBADF after the user closed it.
 */
import type { PrecopyInfo, ResumingSession, SavingSession } from '../fsm/types.js';
import { migError } from '../fsm/errors.js';

let nextSessionId = 1;

/** Saving-side logic a driver plugs in. `signal` aborts when the session is disabled. */
export interface SavingBackend {
  read(buf: Buffer, signal: AbortSignal): Promise<number> | number;
  precopyInfo(signal: AbortSignal): Promise<PrecopyInfo> | PrecopyInfo;
}

/** Resuming-side logic a driver plugs in. `signal` aborts when the session is disabled. */
export interface ResumingBackend {
  write(buf: Buffer, signal: AbortSignal): Promise<number> | number;
}

export interface MethodSessionOptions {
  /** Called once when the session is disabled (after pending calls were rejected). */
  onDisable?: () => void;
  /** Called once when the user closes the session. */
  onClose?: () => void;
}

const OPEN = 0;
const DISABLED = 1;
const CLOSED = 2;

abstract class MethodSessionBase {
  readonly id: number;
  readonly fd: null = null;
  protected _state: number;
  protected readonly _abort: AbortController;
  /** Serialises data calls, as the driver's file mutex does; never rejects. */
  private _tail: Promise<unknown>;
  private readonly _pending: Set<(err: Error) => void>;
  private readonly _onDisable: (() => void) | undefined;
  private readonly _onClose: (() => void) | undefined;
  private _disabledOnce: boolean;

  constructor(opts: MethodSessionOptions = {}) {
    this.id = nextSessionId++;
    this._state = OPEN;
    this._abort = new AbortController();
    this._tail = Promise.resolve();
    this._pending = new Set();
    this._onDisable = opts.onDisable;
    this._onClose = opts.onClose;
    this._disabledOnce = false;
  }

  get disabled(): boolean {
    return this._disabledOnce;
  }

  /** Abort signal that fires when the session is disabled; backends use it to cancel waits. */
  get signal(): AbortSignal {
    return this._abort.signal;
  }

  disable(): void {
    if (this._disabledOnce) return;
    this._disabledOnce = true;
    if (this._state === OPEN) this._state = DISABLED;
    this._abort.abort();
    // Kernel drivers wake sleepers on disable: a blocked read returns ENODEV.
    const err = this._enodev();
    for (const reject of this._pending) reject(err);
    this._pending.clear();
    this._onDisable?.();
  }

  close(): void {
    if (this._state === CLOSED) return;
    this._state = CLOSED;
    // The session file is gone for the user; the device side stays as it is (closing a data fd
    // never changes the device state), but nothing can reach the backend any more.
    const err = migError('EBADF', 'session closed');
    for (const reject of this._pending) reject(err);
    this._pending.clear();
    this._onClose?.();
  }

  private _enodev(): Error {
    return migError('ENODEV', `session ${this.id} is disabled`);
  }

  /**
   * Run `fn` after earlier queued calls settled (`queued`, like read/write under the file's
   * position lock) or at once (an ioctl such as GET_PRECOPY_INFO does not wait for a blocked read);
   * reject when disabled or closed.
   */
  protected _call<T>(fn: (signal: AbortSignal) => Promise<T> | T, queued = true): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const settle = (err: Error): void => {
        this._pending.delete(settle);
        reject(err);
      };
      this._pending.add(settle);
      const run = async (): Promise<void> => {
        if (!this._pending.has(settle)) return; // rejected while queued
        if (this._state === CLOSED) return settle(migError('EBADF', 'session closed'));
        if (this._disabledOnce) return settle(this._enodev());
        try {
          const value = await fn(this._abort.signal);
          if (!this._pending.has(settle)) return;
          this._pending.delete(settle);
          // A disable that raced with the call wins: the kernel's disable resets the cursor.
          if (this._disabledOnce) reject(this._enodev());
          else resolve(value);
        } catch (err) {
          if (!this._pending.has(settle)) return;
          settle(this._disabledOnce ? this._enodev() : (err as Error));
        }
      };
      if (queued) this._tail = this._tail.then(run, run);
      else void run();
    });
  }
}

/** A saving session whose reads and precopy queries go to a driver's backend. */
export class MethodSavingSession extends MethodSessionBase implements SavingSession {
  readonly direction = 'saving' as const;
  private readonly _backend: SavingBackend;

  constructor(backend: SavingBackend, opts?: MethodSessionOptions) {
    super(opts);
    this._backend = backend;
  }

  read(buf: Buffer): Promise<number> {
    return this._call((signal) => this._backend.read(buf, signal));
  }

  precopyInfo(): Promise<PrecopyInfo> {
    return this._call((signal) => this._backend.precopyInfo(signal), false);
  }
}

/** A resuming session whose writes go to a driver's backend. */
export class MethodResumingSession extends MethodSessionBase implements ResumingSession {
  readonly direction = 'resuming' as const;
  private readonly _backend: ResumingBackend;

  constructor(backend: ResumingBackend, opts?: MethodSessionOptions) {
    super(opts);
    this._backend = backend;
  }

  write(buf: Buffer): Promise<number> {
    return this._call((signal) => this._backend.write(buf, signal));
  }
}

/**
 * Sleep `ms` milliseconds, rejecting with ENODEV when `signal` aborts (a disabled session wakes its
 * sleepers). Infinity waits until the abort.
 */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(migError('ENODEV', 'session disabled'));
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      if (timer) clearTimeout(timer);
      reject(migError('ENODEV', 'session disabled'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    if (Number.isFinite(ms)) {
      timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, Math.max(0, ms));
    }
  });
}
