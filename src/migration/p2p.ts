/**
 * Multi-device ordering, as QEMU does it (hw/vfio/migration.c): devices are not stopped atomically,
 * so a device that is stopped must not receive peer-to-peer DMA from one still running. Every
 * transition that quiesces or resumes devices therefore goes in two steps over the whole set:
 * first every device into its P2P state (new outbound P2P DMA stops, the device still runs), then
 * the next state. Transitions of different devices in one step run concurrently.
 */
import type { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { DeviceState, MigrationFlags, stateName } from '../fsm/states.js';

export function hasP2P(core: MigrationCore): boolean {
  return (core.flags & MigrationFlags.P2P) !== 0;
}

export function hasPrecopy(core: MigrationCore): boolean {
  return (core.flags & MigrationFlags.PRE_COPY) !== 0;
}

/**
 * A set of several devices where one lacks P2P cannot be quiesced safely: that device may still DMA
 * into a peer already stopped (QEMU registers a migration blocker). Refused unless the caller accepts
 * the risk explicitly. One device alone needs no P2P state.
 */
export function checkP2PSet(cores: readonly MigrationCore[], acceptRisk: boolean): void {
  if (cores.length < 2 || acceptRisk) return;
  const lacking = cores.map((c, i) => (hasP2P(c) ? -1 : i)).filter((i) => i >= 0);
  if (lacking.length > 0) {
    throw migError(
      ErrorCodes.INCOMPATIBLE,
      `device${lacking.length > 1 ? 's' : ''} ${lacking.join(', ')} lack${lacking.length > 1 ? '' : 's'} P2P support: a multi-device migration cannot quiesce peer-to-peer DMA safely (pass acceptP2PRisk / --accept-p2p-risk to migrate anyway)`,
      { device: lacking[0], detail: { lacking } },
    );
  }
}

/** The P2P state that corresponds to a running state (PRE_COPY -> PRE_COPY_P2P, RUNNING -> RUNNING_P2P). */
export function p2pStateOf(state: DeviceState): DeviceState {
  if (state === DeviceState.PRE_COPY) return DeviceState.PRE_COPY_P2P;
  if (state === DeviceState.RUNNING) return DeviceState.RUNNING_P2P;
  return state;
}

/** Run one step over all devices concurrently; the first failure is reported after all settle. */
export async function stepAll(
  cores: readonly MigrationCore[],
  target: (core: MigrationCore, index: number) => DeviceState | null,
): Promise<void> {
  const results = await Promise.allSettled(
    cores.map(async (core, i) => {
      const t = target(core, i);
      if (t === null || t === core.state) return;
      try {
        await core.setState(t);
      } catch (err) {
        // Which device failed travels with the error; the orchestrator adds the phase.
        if (typeof err === 'object' && err !== null && (err as { device?: number }).device === undefined) {
          (err as { device?: number }).device = i;
        }
        throw err;
      }
    }),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Switchover, step 1: every P2P-capable device into its P2P state. */
export function enterP2P(cores: readonly MigrationCore[]): Promise<void> {
  return stepAll(cores, (c) => (hasP2P(c) ? p2pStateOf(c.state) : null));
}

/** Switchover, step 2: every device into STOP_COPY (opens the saving session of devices without PRE_COPY). */
export function enterStopCopy(cores: readonly MigrationCore[]): Promise<void> {
  return stepAll(cores, () => DeviceState.STOP_COPY);
}

/**
 * Resume a set (destination after validation, or a source rolling back): every device first to
 * RUNNING_P2P (devices without P2P wait in STOP), then every device to RUNNING.
 */
export async function resumeAll(cores: readonly MigrationCore[]): Promise<void> {
  await stepAll(cores, (c) => (hasP2P(c) ? DeviceState.RUNNING_P2P : c.state === DeviceState.RUNNING ? null : DeviceState.STOP));
  await stepAll(cores, () => DeviceState.RUNNING);
}

/**
 * Source rollback: bring every device back to RUNNING, P2P-ordered, whatever state the failure left
 * it in. A device in ERROR, or one whose walk back fails, is reported (its state may be lost) and
 * the others still go back. Returns the per-device outcome.
 */
export async function rollbackAll(cores: readonly MigrationCore[]): Promise<{ device: number; state: string; error?: unknown }[]> {
  const out: { device: number; state: string; error?: unknown }[] = cores.map((_, i) => ({ device: i, state: '' }));
  const firstStep = await Promise.allSettled(
    cores.map(async (c) => {
      const s = await c.getState();
      if (s === DeviceState.RUNNING || s === DeviceState.ERROR) return;
      await c.setState(hasP2P(c) ? DeviceState.RUNNING_P2P : DeviceState.STOP);
    }),
  );
  const second = await Promise.allSettled(
    cores.map(async (c, i) => {
      if (firstStep[i].status === 'rejected') throw (firstStep[i] as PromiseRejectedResult).reason;
      const s = await c.getState();
      if (s === DeviceState.ERROR) throw migError('EIO', `device ${i} is in ERROR; its state cannot be restored`, { device: i, state: s });
      if (s !== DeviceState.RUNNING) await c.setState(DeviceState.RUNNING);
    }),
  );
  for (let i = 0; i < cores.length; i++) {
    const r = second[i];
    out[i].state = stateName(cores[i].state);
    if (r.status === 'rejected') out[i].error = r.reason;
  }
  return out;
}

/**
 * Destination cleanup: reset every device (the only way out of RESUMING that will not validate).
 * True when every reset succeeded.
 */
export async function resetAll(cores: readonly MigrationCore[]): Promise<boolean> {
  const out = await Promise.allSettled(cores.map((c) => c.reset()));
  return out.every((r) => r.status === 'fulfilled');
}
