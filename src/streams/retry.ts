/**
 * Shared helpers of the data-path streams: bounded exponential backoff and its wakeable wait, the
 * mapping of any I/O failure to a typed MigError, and destroying a stream when its AbortSignal fires.
 */
import { migError, errnoName, ErrorCodes, MigError } from '../fsm/errors.js';

export interface BackoffOptions {
  /** First delay in ms (default 1). */
  backoffMin?: number;
  /** Ceiling in ms (default 100). */
  backoffMax?: number;
}

/** Bounded exponential backoff: doubles per consecutive retry, resets on progress (sonic-boom's rule). */
export class Backoff {
  readonly min: number;
  readonly max: number;
  current: number;
  /** Consecutive retries since the last progress. */
  retries: number;

  constructor(opts: BackoffOptions = {}) {
    this.min = Math.max(0, opts.backoffMin ?? 1);
    this.max = Math.max(this.min, opts.backoffMax ?? 100);
    this.current = this.min;
    this.retries = 0;
  }

  /** The delay to wait now; the next one is doubled up to max. */
  next(): number {
    const d = this.current;
    this.current = Math.min(this.max, Math.max(1, this.current * 2));
    this.retries++;
    return d;
  }

  reset(): void {
    this.current = this.min;
    this.retries = 0;
  }
}

/**
 * A typed error for an I/O failure: keeps the errno name as `code` (ENOMSG recognised by number),
 * attaches the original as `cause`. MigErrors pass through unchanged.
 */
export function ioError(err: unknown, what: string, detail?: Record<string, unknown>): MigError {
  if (err instanceof MigError) return err;
  const code = errnoName(err) ?? 'EIO';
  const msg = err instanceof Error ? err.message : String(err);
  return migError(code, `${what}: ${msg}`, { cause: err, ...(detail ? { detail } : {}) });
}

/** A retry wait that can be ended early: sleep(ms) resolves after `ms`, or at once on wake(). */
export class RetryTimer {
  #timer: NodeJS.Timeout | null = null;
  #wake: (() => void) | null = null;

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#wake = null;
        resolve();
      }, ms);
    });
  }

  /** End the wait now (its timer cleared); nothing when none is pending. */
  wake(): void {
    if (this.#wake === null) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const wake = this.#wake;
    this.#wake = null;
    wake();
  }
}

/**
 * Destroy `stream` with a typed ABORTED error (the signal's reason as its cause) when `signal`
 * aborts; on the next tick if it already has. Returns what detaches the listener (call it when the
 * stream is destroyed for another reason).
 */
export function destroyOnAbort(stream: { destroy(err: Error): unknown }, signal: AbortSignal | null | undefined): () => void {
  if (!signal) return () => {};
  const onAbort = (): void => void stream.destroy(migError(ErrorCodes.ABORTED, 'aborted', { cause: signal.reason }));
  if (signal.aborted) {
    process.nextTick(onAbort);
    return () => {};
  }
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}
