/**
 * The backend (driver) interface and the data sessions it opens.
 *
 * A driver is what the kernel's `migration_set_state` / `migration_get_state` /
 * `migration_get_data_size` ops are to a vfio-pci variant driver: it performs exactly one base arc
 * at a time and knows nothing of paths. `MigrationCore` walks paths over it.
 *
 * A session is what the kernel's data fd is: the saving side is read, the resuming side is
 * written, bytes are opaque and ordered, and once the session is disabled (its transfer state
 * was left, or the device was reset) every use fails with ENODEV.
 */
import type { DeviceState } from './states.js';

/** VFIO_MIG_GET_PRECOPY_INFO, in numbers. */
export interface PrecopyInfo {
  /** Initial PRE_COPY data not yet read (kernel: initial_bytes). */
  initialBytes: number;
  /** Data changed since it was read (kernel: dirty_bytes). */
  dirtyBytes: number;
  /** VFIO_PRECOPY_INFO_REINIT: new initial data appeared; initialBytes restarted. */
  reinit: boolean;
}

/** What a destination compares before it accepts a device's stream. */
export interface DeviceIdentity {
  /** Driver kind, e.g. "sim", "mtty". */
  kind: string;
  /** Model or configuration that must match exactly for the stream to load (e.g. "ports=2", "size=1073741824"). */
  model: string;
  /** Driver (stream format) version, "major.minor"; majors must match. */
  version: string;
  /** Migration capability word (MigrationFlags). */
  flags: number;
  /** Estimated state size in bytes (informational). */
  stateSize: number;
}

export type SessionDirection = 'saving' | 'resuming';

interface SessionCommon {
  /** Unique per device; every session is new (the kernel never reuses data fds). */
  readonly id: number;
  readonly direction: SessionDirection;
  /**
   * A real non-seekable fd (pipe, FIFO, socket, FUSE stream file) when the session is fd-backed,
   * else null. The streams layer reads or writes an fd-backed session through its fd and never
   * through `read`/`write`. The fd belongs to the session: `close()` closes it.
   */
  readonly fd: number | null;
  /** True once the driver or core disabled it: data calls fail with ENODEV. */
  readonly disabled: boolean;
  /**
   * Disable the session: what the kernel driver does when the FSM leaves the transfer state or
   * the device is reset. Idempotent. Pending and later data calls fail with ENODEV.
   */
  disable(): void;
  /** The user is done with the session (like close(fd)): releases the fd; does not change the device's state. Idempotent. */
  close(): void;
}

export interface SavingSession extends SessionCommon {
  readonly direction: 'saving';
  /**
   * Method-backed read, like read(2) on the saving fd: fills `buf` from its start and resolves the
   * byte count. 0 is the STOP_COPY permanent end of stream (or, for drivers that behave like
   * mtty/hisi/qat, a PRE_COPY temporary end). Rejects with code ENOMSG at the PRE_COPY temporary
   * end of stream, EAGAIN when data is not ready yet, ENODEV once disabled.
   */
  read(buf: Buffer): Promise<number>;
  /** VFIO_MIG_GET_PRECOPY_INFO: valid only in PRE_COPY/PRE_COPY_P2P (else EINVAL); ENODEV once disabled. */
  precopyInfo(): Promise<PrecopyInfo>;
}

export interface ResumingSession extends SessionCommon {
  readonly direction: 'resuming';
  /**
   * Method-backed write, like write(2) on the resuming fd: resolves the bytes accepted (may be fewer
   * than given; the caller loops). Rejects with the driver's errno (EINVAL, EFAULT, ENOMEM,
   * EOPNOTSUPP) on bad data, ENODEV once disabled.
   */
  write(buf: Buffer): Promise<number>;
}

export type Session = SavingSession | ResumingSession;

/**
 * The backend a MigrationCore drives: one device.
 *
 * Drivers may also be EventEmitters that emit 'reset' when the device resets on its own (an FLR or
 * a hot reset reaching the driver): the core then moves its view to RUNNING and disables sessions.
 */
export interface MigrationDriver {
  /** Migration capability word: 0x1, 0x3, 0x5 or 0x7. */
  readonly flags: number;
  identity(): DeviceIdentity;
  /** The device's current state (FEATURE GET MIG_DEVICE_STATE). */
  getState(): Promise<DeviceState>;
  /**
   * Perform exactly one base arc `from -> to` (the caller guarantees it is a base arc of this
   * device's flags and that the device is in `from`). Resolves with the new session when the arc
   * opens one (RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P, STOP->STOP_COPY, STOP->RESUMING),
   * else null. The driver disables the session that a closing arc ends. On failure it rejects
   * with an error whose `code` is an errno name; the device is then in `from` or in ERROR.
   */
  step(from: DeviceState, to: DeviceState): Promise<Session | null>;
  /** VFIO_DEVICE_RESET: state becomes RUNNING, every open session is disabled. */
  reset(): Promise<void>;
  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: estimated bytes still needed to complete STOP_COPY. */
  stopCopySize(): Promise<number>;
  on?(event: 'reset', listener: () => void): unknown;
  off?(event: 'reset', listener: () => void): unknown;
}
