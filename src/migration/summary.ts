/**
 * The summary both sides return, and the progress and decision events they emit.
 */
import type { MigrationPhase } from './control.js';
import type { MigError } from '../fsm/errors.js';

export interface DeviceSummary {
  /** Device bytes (raw, before compression) moved for this device. */
  bytes: number;
  /** Bytes sent during PRE_COPY (the rest moved in STOP_COPY). */
  precopyBytes: number;
  /** Destination's RESUMING -> STOP validation time, ms. */
  validateMs: number | null;
  /** Source digest equalled the destination's after loading (null: the driver has no digest). */
  verified: boolean | null;
  /**
   * Source only: the device's own arc out of STOP_COPY failed after the destination reported its
   * devices RUNNING (its host died, its driver failed the arc). The migration succeeded; the device
   * is left where the failure left it, for the caller to close or reset.
   */
  sourceError?: { code: string; message: string };
}

export interface MigrationSummary {
  ok: true;
  role: 'source' | 'destination';
  /** Every device's digest was compared and equal (false when a device offers no digest). */
  verified: boolean;
  /** Raw device bytes moved. */
  bytes: number;
  /** Bytes on the wire (after framing and compression). */
  wireBytes: number;
  /** bytes / wireBytes. */
  compressionRatio: number;
  /**
   * Source: from the migrate() call. Destination: from the migration's connection (the wait for a
   * source and any pre-flight checks before it are in `phases.connect` and `phases.handshake`).
   */
  durationMs: number;
  /**
   * Source: from the first device leaving RUNNING at switchover (the P2P step) until the
   * destination's "running" message arrived (includes one return-path latency). Destination: from
   * the "switchover" control record to its devices RUNNING (excludes the forward latency).
   */
  downtimeMs: number;
  /** The estimator's prediction when the switchover was decided (null: no prediction was made). */
  predictedDowntimeMs: number | null;
  /**
   * Source: the downtime limit in force when the policy confirmed the switchover (its decision's
   * `limitMs`): the `downtimeLimitMs` asked for, or more where a stepwise policy raised it. null on
   * the destination, for a checkpoint, and when the decision named no limit.
   */
  switchoverLimitMs: number | null;
  precopyRounds: number;
  /** bytes / durationMs, in MB/s (decimal). */
  throughputMBps: number;
  /** Milliseconds per phase, as this side saw them. */
  phases: Partial<Record<MigrationPhase, number>>;
  devices: DeviceSummary[];
}

/** One device's share of a progress event. */
export interface DeviceProgress {
  /** Source: raw bytes read from the device. Destination: raw bytes its device has taken. */
  bytes: number;
  /**
   * Source: the device's PRE_COPY round (1-based; 0 before PRE_COPY or without it). Destination:
   * the rounds whose end marker (a ROUND record) it has read.
   */
  round: number;
}

export interface ProgressEvent {
  phase: MigrationPhase;
  /** Raw device bytes moved so far. */
  bytes: number;
  /** Per device, in the device table's order: which one a multi-device migration waits on. */
  devices: DeviceProgress[];
  wireBytes: number;
  /** Wire rate over the last interval, bytes/s. */
  rate: number;
  /** PRE_COPY round (1-based; 0 before PRE_COPY). */
  round: number;
  /** Latest predicted downtime, ms (null while unknown). */
  predictedDowntimeMs: number | null;
  /** Remaining bytes the estimator knows of (initial + dirty, or stop-copy size), or null. */
  remainingBytes: number | null;
  /**
   * Source only: raw bytes read from the devices that the destination's devices had not taken at
   * its last 'loaded' report (source queues, network, destination queues); null before any report.
   */
  backlogBytes?: number | null;
  elapsedMs: number;
}

export interface DecisionEvent {
  /** 'continue' | 'switchover' | 'abort'. */
  action: string;
  /** The policy's reason word ('within-limit', 'ack-pending', 'not-converging', ...). */
  reason: string;
  /** One sentence naming the numbers. */
  message: string;
  /** The estimator's numbers behind the decision. */
  numbers: Record<string, unknown>;
}

export interface PhaseEvent {
  phase: MigrationPhase;
  elapsedMs: number;
}

/**
 * Destination: a pre-flight check (checkDestination()) was answered, by the handshake's rules; no
 * device moved. `code`, `message` and `device` say why it was refused.
 */
export interface CheckEvent {
  compatible: boolean;
  code?: string;
  message?: string;
  device?: number;
}

export interface MigrationEvents {
  progress: [ProgressEvent];
  decision: [DecisionEvent];
  phase: [PhaseEvent];
  check: [CheckEvent];
  /**
   * Destination behind a listener: a connection failed before its hello (closed, not a vfio-mig
   * stream, or silent for stallTimeoutMs) and was dropped; receive() waits for the next one.
   */
  stray: [MigError];
}

export function throughputMBps(bytes: number, ms: number): number {
  return ms > 0 ? bytes / 1e6 / (ms / 1000) : 0;
}
