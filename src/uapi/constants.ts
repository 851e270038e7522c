/**
 * Numbers of the VFIO migration uAPI (include/uapi/linux/vfio.h): ioctl requests, feature indices,
 * feature flag bits and struct sizes. Values are the kernel's; names follow it without the VFIO_ prefix
 * where the prefix adds nothing.
 */

/** `VFIO_TYPE` (';') and `VFIO_BASE`: every VFIO ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`. */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;

/** `_IO(VFIO_TYPE, VFIO_BASE + n)`: direction and size are 0 (argsz in the struct carries the size). */
export function vfioIoctl(n: number): number {
  return (VFIO_TYPE << 8) | (VFIO_BASE + n);
}

/** ioctl request numbers. Numbers are unique per fd type only (0x3B79 is also VFIO_EEH_PE_OP). */
export const Ioctl = {
  /** device fd */
  DEVICE_GET_INFO: vfioIoctl(7),
  /** device fd: back to RUNNING, data fds disabled */
  DEVICE_RESET: vfioIoctl(11),
  /** device fd */
  DEVICE_FEATURE: vfioIoctl(17),
  /** the saving data fd, only in PRE_COPY / PRE_COPY_P2P */
  MIG_GET_PRECOPY_INFO: vfioIoctl(21),
} as const;

/** `VFIO_DEVICE_FEATURE_*` indices (low 16 bits of vfio_device_feature.flags). */
export const FeatureIndex = {
  PCI_VF_TOKEN: 0,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  LOW_POWER_ENTRY: 3,
  LOW_POWER_ENTRY_WITH_WAKEUP: 4,
  LOW_POWER_EXIT: 5,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  MIG_DATA_SIZE: 9,
  BUS_MASTER: 10,
  DMA_BUF: 11,
  /** v7.1 opt-in: PRECOPY_INFO flags become a true output (REINIT). */
  MIG_PRECOPY_INFOv2: 12,
} as const;

/** vfio_device_feature.flags bits. */
export const FeatureFlags = {
  /** VFIO_DEVICE_FEATURE_MASK: the feature index. */
  MASK: 0x0000ffff,
  GET: 0x00010000,
  SET: 0x00020000,
  /** Ask whether the feature and the requested ops exist; the payload is not touched. */
  PROBE: 0x00040000,
} as const;

/** Every bit a vfio_device_feature.flags word may carry. */
export const FEATURE_FLAGS_ALL = FeatureFlags.MASK | FeatureFlags.GET | FeatureFlags.SET | FeatureFlags.PROBE;

/** vfio_precopy_info.flags: new initial data is in the stream (v7.1, only after the feature-12 opt-in). */
export const VFIO_PRECOPY_INFO_REINIT = 0x1;

/** Struct sizes in bytes. */
export const Sizes = {
  /** struct vfio_device_feature without its payload: argsz + flags. */
  FEATURE_HEADER: 8,
  /** struct vfio_device_feature_migration: u64 flags. */
  FEATURE_MIGRATION: 8,
  /** struct vfio_device_feature_mig_state: u32 device_state + s32 data_fd. */
  FEATURE_MIG_STATE: 8,
  /** struct vfio_device_feature_mig_data_size: u64 stop_copy_length. */
  FEATURE_MIG_DATA_SIZE: 8,
  /** struct vfio_precopy_info: argsz, flags, u64 initial_bytes, u64 dirty_bytes. */
  PRECOPY_INFO: 24,
} as const;
