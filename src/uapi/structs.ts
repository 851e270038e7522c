/**
 * The migration payload structs, byte-exact little-endian (x86 and arm64 hosts are little-endian;
 * the kernel's fields are host-endian).
 */
import { migError } from '../fsm/errors.js';
import { DeviceState, isDeviceState } from '../fsm/states.js';
import type { PrecopyInfo } from '../fsm/types.js';
import { Sizes, VFIO_PRECOPY_INFO_REINIT } from './constants.js';
import { checkS32, checkU32, needBytes, readU64, readU64Big, writeU64 } from './u64.js';

// ---- struct vfio_device_feature_migration { __aligned_u64 flags; } -------------------------------

export interface FeatureMigration {
  /** MigrationFlags bits (STOP_COPY 0x1, P2P 0x2, PRE_COPY 0x4). */
  flags: number;
}

export function encodeFeatureMigration(value: FeatureMigration | { flags: bigint }): Buffer {
  const buf = Buffer.alloc(Sizes.FEATURE_MIGRATION);
  writeU64(buf, 0, value.flags, 'vfio_device_feature_migration.flags');
  return buf;
}

/** flags as a number; EOVERFLOW when bits above 2^53 are set (use decodeFeatureMigrationBig). */
export function decodeFeatureMigration(buf: Buffer, offset = 0): FeatureMigration {
  needBytes(buf, offset, Sizes.FEATURE_MIGRATION, 'vfio_device_feature_migration');
  return { flags: readU64(buf, offset, 'vfio_device_feature_migration.flags') };
}

export function decodeFeatureMigrationBig(buf: Buffer, offset = 0): { flags: bigint } {
  needBytes(buf, offset, Sizes.FEATURE_MIGRATION, 'vfio_device_feature_migration');
  return { flags: readU64Big(buf, offset) };
}

// ---- struct vfio_device_feature_mig_state { __u32 device_state; __s32 data_fd; } ---------------

export interface FeatureMigState {
  /** enum vfio_device_mig_state, raw: the core does no range check (drivers answer EINVAL). */
  deviceState: number;
  /** Out: the new data fd, or -1 when the SET opened no session (and always on GET). */
  dataFd: number;
}

export function encodeFeatureMigState(value: { deviceState: number; dataFd?: number }): Buffer {
  const buf = Buffer.alloc(Sizes.FEATURE_MIG_STATE);
  buf.writeUInt32LE(checkU32(value.deviceState, 'vfio_device_feature_mig_state.device_state'), 0);
  buf.writeInt32LE(checkS32(value.dataFd ?? -1, 'vfio_device_feature_mig_state.data_fd'), 4);
  return buf;
}

export function decodeFeatureMigState(buf: Buffer, offset = 0): FeatureMigState {
  needBytes(buf, offset, Sizes.FEATURE_MIG_STATE, 'vfio_device_feature_mig_state');
  return { deviceState: buf.readUInt32LE(offset), dataFd: buf.readInt32LE(offset + 4) };
}

/** The device_state of a decoded mig_state as a DeviceState; EINVAL for values >= 8 (VFIO_DEVICE_STATE_NR). */
export function migStateValue(value: FeatureMigState): DeviceState {
  if (!isDeviceState(value.deviceState)) {
    throw migError('EINVAL', `device_state ${value.deviceState} is not a state (0..7)`);
  }
  return value.deviceState;
}

// ---- struct vfio_device_feature_mig_data_size { __aligned_u64 stop_copy_length; } ---------------

export interface FeatureMigDataSize {
  /** Estimated bytes still needed to complete STOP_COPY. */
  stopCopyLength: number;
}

export function encodeFeatureMigDataSize(value: FeatureMigDataSize | { stopCopyLength: bigint }): Buffer {
  const buf = Buffer.alloc(Sizes.FEATURE_MIG_DATA_SIZE);
  writeU64(buf, 0, value.stopCopyLength, 'vfio_device_feature_mig_data_size.stop_copy_length');
  return buf;
}

/** stop_copy_length as a number; EOVERFLOW above Number.MAX_SAFE_INTEGER (use the Big variant). */
export function decodeFeatureMigDataSize(buf: Buffer, offset = 0): FeatureMigDataSize {
  needBytes(buf, offset, Sizes.FEATURE_MIG_DATA_SIZE, 'vfio_device_feature_mig_data_size');
  return { stopCopyLength: readU64(buf, offset, 'vfio_device_feature_mig_data_size.stop_copy_length') };
}

export function decodeFeatureMigDataSizeBig(buf: Buffer, offset = 0): { stopCopyLength: bigint } {
  needBytes(buf, offset, Sizes.FEATURE_MIG_DATA_SIZE, 'vfio_device_feature_mig_data_size');
  return { stopCopyLength: readU64Big(buf, offset) };
}

// ---- struct vfio_precopy_info { __u32 argsz; __u32 flags; __aligned_u64 initial_bytes, dirty_bytes; }

export interface PrecopyInfoStruct {
  argsz: number;
  flags: number;
  initialBytes: number;
  dirtyBytes: number;
}

export interface PrecopyInfoStructBig {
  argsz: number;
  flags: number;
  initialBytes: bigint;
  dirtyBytes: bigint;
}

export function encodePrecopyInfo(value: {
  argsz?: number;
  flags?: number;
  initialBytes: number | bigint;
  dirtyBytes: number | bigint;
}): Buffer {
  const buf = Buffer.alloc(Sizes.PRECOPY_INFO);
  buf.writeUInt32LE(checkU32(value.argsz ?? Sizes.PRECOPY_INFO, 'vfio_precopy_info.argsz'), 0);
  buf.writeUInt32LE(checkU32(value.flags ?? 0, 'vfio_precopy_info.flags'), 4);
  writeU64(buf, 8, value.initialBytes, 'vfio_precopy_info.initial_bytes');
  writeU64(buf, 16, value.dirtyBytes, 'vfio_precopy_info.dirty_bytes');
  return buf;
}

/** Byte counts as numbers; EOVERFLOW above Number.MAX_SAFE_INTEGER (use decodePrecopyInfoBig). */
export function decodePrecopyInfo(buf: Buffer, offset = 0): PrecopyInfoStruct {
  needBytes(buf, offset, Sizes.PRECOPY_INFO, 'vfio_precopy_info');
  return {
    argsz: buf.readUInt32LE(offset),
    flags: buf.readUInt32LE(offset + 4),
    initialBytes: readU64(buf, offset + 8, 'vfio_precopy_info.initial_bytes'),
    dirtyBytes: readU64(buf, offset + 16, 'vfio_precopy_info.dirty_bytes'),
  };
}

export function decodePrecopyInfoBig(buf: Buffer, offset = 0): PrecopyInfoStructBig {
  needBytes(buf, offset, Sizes.PRECOPY_INFO, 'vfio_precopy_info');
  return {
    argsz: buf.readUInt32LE(offset),
    flags: buf.readUInt32LE(offset + 4),
    initialBytes: readU64Big(buf, offset + 8),
    dirtyBytes: readU64Big(buf, offset + 16),
  };
}

/** The session-level view (fsm/types.ts PrecopyInfo) of a decoded reply. */
export function toPrecopyInfo(value: PrecopyInfoStruct): PrecopyInfo {
  return {
    initialBytes: value.initialBytes,
    dirtyBytes: value.dirtyBytes,
    reinit: (value.flags & VFIO_PRECOPY_INFO_REINIT) !== 0,
  };
}

/**
 * The driver side of VFIO_MIG_GET_PRECOPY_INFO, in the kernel's order: the 24-byte struct is copied
 * in (EFAULT when shorter), argsz < 24 -> EINVAL, a state other than PRE_COPY / PRE_COPY_P2P ->
 * EINVAL. Returns the decoded request.
 */
export function checkPrecopyInfoRequest(request: Buffer, state: DeviceState): { argsz: number; flags: number } {
  needBytes(request, 0, Sizes.PRECOPY_INFO, 'vfio_precopy_info');
  const argsz = request.readUInt32LE(0);
  const flags = request.readUInt32LE(4);
  if (argsz < Sizes.PRECOPY_INFO) {
    throw migError('EINVAL', `vfio_precopy_info.argsz ${argsz} is below ${Sizes.PRECOPY_INFO}`);
  }
  if (state !== DeviceState.PRE_COPY && state !== DeviceState.PRE_COPY_P2P) {
    throw migError('EINVAL', 'VFIO_MIG_GET_PRECOPY_INFO is valid only in PRE_COPY and PRE_COPY_P2P', { state });
  }
  return { argsz, flags };
}

/**
 * The 24-byte reply to a checked request. Without the feature-12 opt-in the flags word is the
 * user's, echoed (what drivers did before v7.1); with it flags is a true output carrying REINIT.
 */
export function encodePrecopyInfoReply(
  request: { argsz: number; flags: number },
  info: PrecopyInfo,
  options: { reinitOptIn?: boolean } = {},
): Buffer {
  const flags = options.reinitOptIn ? (info.reinit ? VFIO_PRECOPY_INFO_REINIT : 0) : request.flags;
  return encodePrecopyInfo({ argsz: request.argsz, flags, initialBytes: info.initialBytes, dirtyBytes: info.dirtyBytes });
}
