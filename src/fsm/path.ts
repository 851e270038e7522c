/**
 * Paths and arc metadata, derived from the next-hop rule in table.ts.
 */
import { nextState, stateSupported } from './table.js';
import { DEVICE_STATE_COUNT, DeviceState, isSavingState } from './states.js';

/** What an arc does to the data session, as the uAPI defines it. */
export type ArcEffect = 'open-saving' | 'open-resuming' | 'continue-saving' | 'close-saving' | 'close-resuming' | 'none';

/**
 * The states visited after `cur` on the way to `target`, ending with `target`; `[]` when they are
 * equal. Throws EINVAL for the same requests nextState() refuses.
 */
export function transitionPath(cur: number, target: number, flags: number): DeviceState[] {
  const path: DeviceState[] = [];
  let at = nextState(cur, target, flags); // validates every argument, even when cur === target
  let from = cur;
  while (from !== target) {
    path.push(at);
    from = at;
    if (from !== target) at = nextState(from, target, flags);
    // The kernel table's longest path is 4 arcs; anything longer means the table is wrong.
    if (path.length > DEVICE_STATE_COUNT) throw new Error('transition table does not converge');
  }
  return path;
}

/**
 * The session effect of the base arc `from -> to`. Saving group = {PRE_COPY, PRE_COPY_P2P, STOP_COPY}:
 * entering it opens a saving session, moving inside it continues the session, leaving it closes it;
 * entering RESUMING opens a resuming session and leaving RESUMING closes it.
 */
export function arcEffect(from: DeviceState, to: DeviceState): ArcEffect {
  const wasSaving = isSavingState(from);
  const isSaving = isSavingState(to);
  if (to === DeviceState.RESUMING && from !== DeviceState.RESUMING) return 'open-resuming';
  if (from === DeviceState.RESUMING && to !== DeviceState.RESUMING) return 'close-resuming';
  if (!wasSaving && isSaving) return 'open-saving';
  if (wasSaving && isSaving) return from === to ? 'none' : 'continue-saving';
  if (wasSaving && !isSaving) return 'close-saving';
  return 'none';
}

/** True when the arc opens a new session (saving or resuming). */
export function arcOpensSession(from: DeviceState, to: DeviceState): boolean {
  const e = arcEffect(from, to);
  return e === 'open-saving' || e === 'open-resuming';
}

/** True when the arc ends the current session. */
export function arcClosesSession(from: DeviceState, to: DeviceState): boolean {
  const e = arcEffect(from, to);
  return e === 'close-saving' || e === 'close-resuming';
}

const baseArcCache = new Map<number, readonly (readonly [DeviceState, DeviceState])[]>();

/**
 * The base arcs a driver with `flags` must implement: every single hop the next-hop rule can produce
 * (the union over all paths). 6 arcs for 0x1, 8 for 0x3, 9 for 0x5, 15 for 0x7.
 */
export function baseArcs(flags: number): readonly (readonly [DeviceState, DeviceState])[] {
  const cached = baseArcCache.get(flags);
  if (cached) return cached;
  const seen = new Set<number>();
  const arcs: [DeviceState, DeviceState][] = [];
  for (let cur = 0; cur < DEVICE_STATE_COUNT; cur++) {
    if (!stateSupported(cur, flags)) continue;
    for (let target = 0; target < DEVICE_STATE_COUNT; target++) {
      if (target === cur || !stateSupported(target, flags)) continue;
      let hop: DeviceState;
      try {
        hop = nextState(cur, target, flags);
      } catch {
        continue; // blocked request
      }
      const key = cur * DEVICE_STATE_COUNT + hop;
      if (!seen.has(key)) {
        seen.add(key);
        arcs.push([cur as DeviceState, hop]);
      }
    }
  }
  arcs.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  baseArcCache.set(flags, arcs);
  return arcs;
}

/** Whether `from -> to` is a base arc of a device with `flags`. */
export function isBaseArc(from: number, to: number, flags: number): boolean {
  return baseArcs(flags).some(([a, b]) => a === from && b === to);
}
