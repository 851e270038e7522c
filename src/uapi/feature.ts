/**
 * struct vfio_device_feature { __u32 argsz; __u32 flags; __u8 data[]; } and the order in which the
 * kernel validates a VFIO_DEVICE_FEATURE request (vfio_ioctl_device_feature + vfio_check_feature).
 */
import { migError } from '../fsm/errors.js';
import { MigrationFlags } from '../fsm/states.js';
import { FEATURE_FLAGS_ALL, FeatureFlags, FeatureIndex, Sizes } from './constants.js';
import { checkU32, needBytes } from './u64.js';

export interface FeatureHeader {
  /** Total size the caller supplies: header + payload. */
  argsz: number;
  /** The raw flags word. */
  flags: number;
  /** flags & VFIO_DEVICE_FEATURE_MASK */
  index: number;
  get: boolean;
  set: boolean;
  probe: boolean;
}

export interface FeatureRequestInit {
  index: number;
  get?: boolean;
  set?: boolean;
  probe?: boolean;
  /** The payload placed after the header (none for PROBE or payload-less features). */
  payload?: Buffer;
  /** Override argsz (default: 8 + payload length); tests use it to build bad requests. */
  argsz?: number;
  /** Extra raw flag bits (tests use it to build bad requests). */
  extraFlags?: number;
}

/** Build a request buffer: 8-byte header, then the payload. */
export function encodeFeature(init: FeatureRequestInit): Buffer {
  const payload = init.payload ?? Buffer.alloc(0);
  if (!Number.isInteger(init.index) || init.index < 0 || init.index > FeatureFlags.MASK) {
    throw migError('ERANGE', `feature index ${init.index} is outside 0..0xffff`);
  }
  let flags = init.index;
  if (init.get) flags |= FeatureFlags.GET;
  if (init.set) flags |= FeatureFlags.SET;
  if (init.probe) flags |= FeatureFlags.PROBE;
  flags = (flags | checkU32(init.extraFlags ?? 0, 'vfio_device_feature.flags')) >>> 0;
  const buf = Buffer.alloc(Sizes.FEATURE_HEADER + payload.length);
  buf.writeUInt32LE(checkU32(init.argsz ?? buf.length, 'vfio_device_feature.argsz'), 0);
  buf.writeUInt32LE(flags, 4);
  payload.copy(buf, Sizes.FEATURE_HEADER);
  return buf;
}

/** Decode the 8-byte header (EFAULT when the buffer is shorter). The payload is `buf.subarray(8, argsz)`. */
export function decodeFeatureHeader(buf: Buffer, offset = 0): FeatureHeader {
  needBytes(buf, offset, Sizes.FEATURE_HEADER, 'vfio_device_feature');
  const argsz = buf.readUInt32LE(offset);
  const flags = buf.readUInt32LE(offset + 4);
  return {
    argsz,
    flags,
    index: flags & FeatureFlags.MASK,
    get: (flags & FeatureFlags.GET) !== 0,
    set: (flags & FeatureFlags.SET) !== 0,
    probe: (flags & FeatureFlags.PROBE) !== 0,
  };
}

/** What a device offers for one feature index. */
export interface FeatureSpec {
  get: boolean;
  set: boolean;
  /** Minimum payload bytes (argsz - 8) for GET/SET. */
  minPayload: number;
}

/** How a device answers each index: a spec, or the errno for "not here" (ENOTTY, or EINVAL for feature 12). */
export type FeatureTable = ReadonlyMap<number, FeatureSpec | 'ENOTTY' | 'EINVAL'>;

/**
 * The migration features a device with capability word `migrationFlags` answers (0 = no migration
 * support: MIGRATION, MIG_DEVICE_STATE and MIG_DATA_SIZE answer ENOTTY). MIG_PRECOPY_INFOv2 (12)
 * exists only with PRE_COPY and answers EINVAL otherwise. Indices not listed answer ENOTTY.
 */
export function migrationFeatureTable(migrationFlags: number): FeatureTable {
  const table = new Map<number, FeatureSpec | 'ENOTTY' | 'EINVAL'>();
  if (migrationFlags & MigrationFlags.STOP_COPY) {
    table.set(FeatureIndex.MIGRATION, { get: true, set: false, minPayload: Sizes.FEATURE_MIGRATION });
    table.set(FeatureIndex.MIG_DEVICE_STATE, { get: true, set: true, minPayload: Sizes.FEATURE_MIG_STATE });
    table.set(FeatureIndex.MIG_DATA_SIZE, { get: true, set: false, minPayload: Sizes.FEATURE_MIG_DATA_SIZE });
  }
  table.set(
    FeatureIndex.MIG_PRECOPY_INFOv2,
    migrationFlags & MigrationFlags.PRE_COPY ? { get: false, set: true, minPayload: 0 } : 'EINVAL',
  );
  return table;
}

/** A request that passed validation. */
export interface FeatureRequest {
  index: number;
  /** 'probe': the feature and the requested ops exist; answer 0 without reading or writing the payload. */
  op: 'get' | 'set' | 'probe';
  argsz: number;
  /** A view of the payload bytes present up to argsz (at least the minimum). Empty for 'probe'. */
  payload: Buffer;
}

/**
 * Validate a VFIO_DEVICE_FEATURE request buffer in the kernel's order, throwing the errno it returns:
 *  1. fewer than 8 bytes to copy the header from -> EFAULT
 *  2. argsz < 8 -> EINVAL
 *  3. a flag bit outside MASK|GET|SET|PROBE -> EINVAL
 *  4. GET and SET both set without PROBE -> EINVAL
 *  5. an index the device does not handle -> ENOTTY (or the table's errno)
 *  6. a requested GET or SET the feature does not offer -> EINVAL
 *  7. PROBE -> success, nothing read
 *  8. neither GET nor SET -> EINVAL
 *  9. argsz - 8 below the feature's minimum payload -> EINVAL
 * 10. the feature's minimum payload not in the buffer -> EFAULT (the handler's copy would fault)
 */
export function checkFeatureRequest(buf: Buffer, table: FeatureTable): FeatureRequest {
  const h = decodeFeatureHeader(buf);
  if (h.argsz < Sizes.FEATURE_HEADER) {
    throw migError('EINVAL', `vfio_device_feature.argsz ${h.argsz} is below the 8-byte header`);
  }
  if ((h.flags & ~FEATURE_FLAGS_ALL) !== 0) {
    throw migError('EINVAL', `vfio_device_feature.flags 0x${h.flags.toString(16)} has unknown bits 0x${((h.flags & ~FEATURE_FLAGS_ALL) >>> 0).toString(16)}`);
  }
  if (h.get && h.set && !h.probe) {
    throw migError('EINVAL', 'vfio_device_feature.flags has both GET and SET without PROBE');
  }
  const spec = table.get(h.index) ?? 'ENOTTY';
  if (spec === 'ENOTTY' || spec === 'EINVAL') {
    throw migError(spec, `feature ${h.index} is not supported by this device`);
  }
  if ((h.get && !spec.get) || (h.set && !spec.set)) {
    throw migError('EINVAL', `feature ${h.index} does not support ${h.get && !spec.get ? 'GET' : 'SET'}`);
  }
  if (h.probe) {
    return { index: h.index, op: 'probe', argsz: h.argsz, payload: buf.subarray(Sizes.FEATURE_HEADER, Sizes.FEATURE_HEADER) };
  }
  if (!h.get && !h.set) {
    throw migError('EINVAL', `feature ${h.index} request has neither GET nor SET`);
  }
  const payloadSize = h.argsz - Sizes.FEATURE_HEADER;
  if (payloadSize < spec.minPayload) {
    throw migError('EINVAL', `feature ${h.index} needs a payload of ${spec.minPayload} bytes; argsz ${h.argsz} gives ${payloadSize}`);
  }
  // The handler copies its minimum payload from user memory; a buffer that ends before it faults.
  needBytes(buf, Sizes.FEATURE_HEADER, spec.minPayload, `feature ${h.index} payload`);
  const end = Math.min(buf.length, h.argsz);
  return { index: h.index, op: h.get ? 'get' : 'set', argsz: h.argsz, payload: buf.subarray(Sizes.FEATURE_HEADER, end) };
}
