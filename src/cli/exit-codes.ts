/**
 * Exit codes of the `vfio-mig` command (documented in docs/cli.md). 64 and 65 follow sysexits.h.
 */
import { ErrorCodes, MigError } from '../fsm/errors.js';

export const ExitCode = {
  OK: 0,
  /** Failed, and a device could not be restored (its state may be lost), or an unexpected error. */
  FAILED: 1,
  /** The migration failed and was rolled back: every source device RUNNING with its state intact. */
  ROLLED_BACK: 2,
  /** The switchover policy aborted (the downtime limit cannot be met); rolled back. */
  POLICY_ABORT: 3,
  /** Aborted by the user (SIGINT, SIGTERM); rolled back. */
  ABORTED: 4,
  /** The destination refused the devices (incompatible); no device left RUNNING. */
  REFUSED: 5,
  /**
   * Failed past the handover's point of no return on this side (recovery 'held'): the source after
   * the destination validated, the destination after validating but before the source released
   * the state. This side's devices are stopped and hold the state; nothing was resumed or reset.
   */
  HELD: 6,
  /** Usage error: unknown command or option, bad value (EX_USAGE). */
  USAGE: 64,
  /** The input stream or file is corrupt or truncated, or its digest does not match (EX_DATAERR). */
  DATA: 65,
  /**
   * A fault of the command itself (EX_SOFTWARE): an exception it did not turn into a result, or its
   * process left with nothing to wait for and the command still unfinished. Never a success.
   */
  INTERNAL: 70,
} as const;

const DATA_CODES = new Set<string>([ErrorCodes.CORRUPT, ErrorCodes.TRUNCATED, ErrorCodes.DIGEST, ErrorCodes.UNSUPPORTED]);

/**
 * The exit code for a failure. `side` tells whether the failed run owned source devices that a
 * rollback returns to RUNNING ('source'), or loaded a stream ('destination', 'restore', 'inspect').
 */
export function exitCodeFor(err: unknown, side: 'source' | 'destination' | 'restore' | 'inspect'): number {
  if (!(err instanceof MigError)) return ExitCode.FAILED;
  if (err.code === ErrorCodes.USAGE) return ExitCode.USAGE;
  if (err.code === ErrorCodes.INCOMPATIBLE && err.phase === 'handshake') return ExitCode.REFUSED;
  if (side === 'restore' || side === 'inspect') return DATA_CODES.has(err.code) ? ExitCode.DATA : ExitCode.FAILED;
  // A device that could not be walked back (source) or reset (destination): its state may be lost.
  if (err.recovery === 'failed') return ExitCode.FAILED;
  if (err.recovery === 'held') return ExitCode.HELD;
  if (err.code === ErrorCodes.POLICY_ABORT) return ExitCode.POLICY_ABORT;
  if (err.code === ErrorCodes.ABORTED) return ExitCode.ABORTED;
  return ExitCode.ROLLED_BACK;
}
