/**
 * Device states and migration capability flags, with the kernel's numbers
 * (include/uapi/linux/vfio.h, enum vfio_device_mig_state and VFIO_MIGRATION_*).
 */

export const DeviceState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
export type DeviceState = (typeof DeviceState)[keyof typeof DeviceState];

/** VFIO_DEVICE_STATE_NR: any state value at or above this is invalid. */
export const DEVICE_STATE_COUNT = 8;

export const MigrationFlags = {
  STOP_COPY: 0x1,
  P2P: 0x2,
  PRE_COPY: 0x4,
} as const;
export type MigrationFlag = (typeof MigrationFlags)[keyof typeof MigrationFlags];

/** The only capability words the uAPI defines: STOP_COPY alone or with P2P and/or PRE_COPY. */
export const VALID_FLAG_WORDS: readonly number[] = [0x1, 0x3, 0x5, 0x7];

const NAMES = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'] as const;
export type DeviceStateName = (typeof NAMES)[number];

/** Name of a state value ("STOP_COPY"), or "INVALID(n)" for values outside 0..7. */
export function stateName(state: number): string {
  return Number.isInteger(state) && state >= 0 && state < DEVICE_STATE_COUNT ? NAMES[state] : `INVALID(${state})`;
}

/** Parse a state name ("stop_copy", "STOP_COPY") or number; undefined when unknown. */
export function parseState(value: string | number): DeviceState | undefined {
  if (typeof value === 'number') return isDeviceState(value) ? value : undefined;
  const i = NAMES.indexOf(value.toUpperCase().replace(/-/g, '_') as DeviceStateName);
  return i >= 0 ? (i as DeviceState) : undefined;
}

export function isDeviceState(value: unknown): value is DeviceState {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < DEVICE_STATE_COUNT;
}

/** Readable form of a capability word: "STOP_COPY|P2P|PRE_COPY". */
export function flagsName(flags: number): string {
  const parts: string[] = [];
  if (flags & MigrationFlags.STOP_COPY) parts.push('STOP_COPY');
  if (flags & MigrationFlags.P2P) parts.push('P2P');
  if (flags & MigrationFlags.PRE_COPY) parts.push('PRE_COPY');
  const rest = flags & ~0x7;
  if (rest) parts.push(`0x${rest.toString(16)}`);
  return parts.length ? parts.join('|') : '0';
}

/** The saving group: states that share one saving session (the kernel never ends the fd moving between them). */
export function isSavingState(state: number): boolean {
  return state === DeviceState.PRE_COPY || state === DeviceState.PRE_COPY_P2P || state === DeviceState.STOP_COPY;
}

/** States in which the device runs (P2P states count as running: only new P2P DMA is quiesced). */
export function isRunningState(state: number): boolean {
  return (
    state === DeviceState.RUNNING ||
    state === DeviceState.RUNNING_P2P ||
    state === DeviceState.PRE_COPY ||
    state === DeviceState.PRE_COPY_P2P
  );
}
