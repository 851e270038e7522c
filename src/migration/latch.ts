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
 * What a run watches besides its own steps: no progress for `stallMs` (`lastProgressAt()` on
 * performance.now()) fails the latch with STALLED, and the caller's AbortSignal with ABORTED (at
 * once when it had fired before), `abort(reason)` being the run's own abort. Returns what stops both.
 */
export function watchRun(
  latch: FailureLatch,
  o: { stallMs: number; lastProgressAt: () => number; phase: () => MigrationPhase; signal?: AbortSignal; abort: (reason: string) => void },
): () => void {
  const stallTimer = setInterval(
    () => {
      if (performance.now() - o.lastProgressAt() <= o.stallMs) return;
      const phase = o.phase();
      latch.fail(migError(ErrorCodes.STALLED, `no progress for ${o.stallMs} ms in phase ${phase}`, { phase, detail: { stallTimeoutMs: o.stallMs } }));
    },
    Math.min(250, Math.max(10, o.stallMs / 4)),
  );
  const signal = o.signal;
  const onAbort = (): void => o.abort(`aborted: ${String(signal?.reason ?? 'AbortSignal')}`);
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  return () => {
    clearInterval(stallTimer);
    signal?.removeEventListener('abort', onAbort);
  };
}
