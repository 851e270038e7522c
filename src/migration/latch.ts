/**
 * The failure latch of one migration: the first failure wins, every wait of the run races it, so a
 * transport loss or an abort interrupts whatever the orchestrator is waiting for at that moment.
 */
import { ErrorCodes, MigError, errnoName, migError } from '../fsm/errors.js';
import type { MigrationPhase } from './control.js';

export class FailureLatch {
  #error: MigError | null;
  #reject: (err: MigError) => void;
  readonly #promise: Promise<never>;

  constructor() {
    this.#error = null;
    let reject: (err: MigError) => void = () => {};
    this.#promise = new Promise<never>((_, rej) => {
      reject = rej;
    });
    // The latch is raced by every wait; an unobserved failure is not an unhandled rejection.
    this.#promise.catch(() => {});
    this.#reject = reject;
  }

  get error(): MigError | null {
    return this.#error;
  }

  /** Record the failure (first one wins) and wake every guarded wait. */
  fail(err: MigError): void {
    if (this.#error) return;
    this.#error = err;
    this.#reject(err);
  }

  /** `p`, or the failure if it comes first. */
  guard<T>(p: Promise<T>): Promise<T> {
    if (this.#error) return Promise.reject(this.#error);
    return Promise.race([p, this.#promise]);
  }

  /** Throw the failure if there is one (between steps). */
  check(): void {
    if (this.#error) throw this.#error;
  }
}

/**
 * Any thrown value as a MigError naming the phase. A MigError keeps its code and fields (the phase
 * is added when missing); anything else becomes VFIO_MIG_ERR_TRANSPORT for socket errors, else its
 * errno name or EIO.
 */
export function asPhaseError(err: unknown, phase: MigrationPhase): MigError {
  if (err instanceof MigError) {
    if (err.phase === undefined) err.phase = phase;
    return err;
  }
  const name = errnoName(err);
  const socketish = name === 'ECONNRESET' || name === 'EPIPE' || name === 'ECONNREFUSED' || name === 'ENOTCONN' || name === 'ERR_STREAM_PREMATURE_CLOSE';
  const message = err instanceof Error ? err.message : String(err);
  return migError(socketish ? ErrorCodes.TRANSPORT : (name ?? 'EIO'), `${phase}: ${message}`, { phase, cause: err });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * While a run waits for a peer rather than works (a destination waiting for its source), the stall
 * timeout does not apply; `timeoutMs` (0: none) bounds the wait instead.
 */
export interface Waiting {
  /** Whether the run is waiting now. */
  active(): boolean;
  /** performance.now() when the wait began: `timeoutMs` counts from there. */
  since(): number;
  timeoutMs: number;
  /** What did not happen, for the error ("no source connected"). */
  what: string;
}

/**
 * What a run watches besides its own steps: no progress for `stallTimeoutMs` (default 15000;
 * `lastProgressAt()` on performance.now()) fails the latch with STALLED naming `run.phase`, except
 * while `waiting` is active, which only its own timeout bounds; and the caller's AbortSignal calls
 * `run.abort()` (at once when it had fired before). Returns what stops both.
 */
export function watchRun(
  latch: FailureLatch,
  opts: { stallTimeoutMs?: number; signal?: AbortSignal },
  run: { readonly phase: MigrationPhase; abort(reason: string): boolean },
  lastProgressAt: () => number,
  waiting?: Waiting,
): () => void {
  const stallMs = opts.stallTimeoutMs ?? 15_000;
  const stallTimer = setInterval(
    () => {
      const phase = run.phase;
      const now = performance.now();
      if (waiting?.active() === true) {
        if (waiting.timeoutMs > 0 && now - waiting.since() > waiting.timeoutMs) {
          latch.fail(migError(ErrorCodes.STALLED, `${waiting.what} within ${waiting.timeoutMs} ms`, { phase, detail: { timeoutMs: waiting.timeoutMs } }));
        }
        return;
      }
      if (now - lastProgressAt() <= stallMs) return;
      latch.fail(migError(ErrorCodes.STALLED, `no progress for ${stallMs} ms in phase ${phase}`, { phase, detail: { stallTimeoutMs: stallMs } }));
    },
    Math.min(250, Math.max(10, Math.min(stallMs, waiting?.timeoutMs || stallMs) / 4)),
  );
  const signal = opts.signal;
  const onAbort = (): void => void run.abort(`aborted: ${String(signal?.reason ?? 'AbortSignal')}`);
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  return () => {
    clearInterval(stallTimer);
    signal?.removeEventListener('abort', onAbort);
  };
}
