/**
 * The kernel's next-hop rule, vfio_mig_get_next_state() in drivers/vfio/vfio_main.c, as data.
 *
 * One table of first hops (all features assumed), one table of the flags each state needs, and the
 * skip loop that collapses optional states a device lacks. Every other fact about arcs (which arc
 * opens, continues or closes a session) is derived from these two tables in path.ts.
 */
import { migError } from './errors.js';
import { DEVICE_STATE_COUNT, DeviceState, MigrationFlags, VALID_FLAG_WORDS, flagsName, stateName } from './states.js';

const E = DeviceState.ERROR;
const S = DeviceState.STOP;
const R = DeviceState.RUNNING;
const SC = DeviceState.STOP_COPY;
const RS = DeviceState.RESUMING;
const RP = DeviceState.RUNNING_P2P;
const PC = DeviceState.PRE_COPY;
const PP = DeviceState.PRE_COPY_P2P;

/** vfio_from_fsm_table[cur][new]: the first hop with every feature present. ERROR marks a blocked request. */
const FIRST_HOP: readonly (readonly DeviceState[])[] = [
  /* ERROR        */ [E, E, E, E, E, E, E, E],
  /* STOP         */ [E, S, RP, SC, RS, RP, RP, RP],
  /* RUNNING      */ [E, RP, R, RP, RP, RP, PC, RP],
  /* STOP_COPY    */ [E, S, S, SC, S, S, E, E],
  /* RESUMING     */ [E, S, S, S, RS, S, S, S],
  /* RUNNING_P2P  */ [E, S, R, S, S, RP, R, PP],
  /* PRE_COPY     */ [E, R, R, PP, R, R, PC, PP],
  /* PRE_COPY_P2P */ [E, RP, RP, SC, RP, RP, PC, PP],
];

/** state_flags_table: the capability bits a state needs. ERROR needs all bits, so no device "supports" it. */
const REQUIRED_FLAGS: readonly number[] = [
  /* ERROR        */ 0xffffffff,
  /* STOP         */ MigrationFlags.STOP_COPY,
  /* RUNNING      */ MigrationFlags.STOP_COPY,
  /* STOP_COPY    */ MigrationFlags.STOP_COPY,
  /* RESUMING     */ MigrationFlags.STOP_COPY,
  /* RUNNING_P2P  */ MigrationFlags.STOP_COPY | MigrationFlags.P2P,
  /* PRE_COPY     */ MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY,
  /* PRE_COPY_P2P */ MigrationFlags.STOP_COPY | MigrationFlags.P2P | MigrationFlags.PRE_COPY,
];

function isStateValue(state: number): boolean {
  return Number.isInteger(state) && state >= 0 && state < DEVICE_STATE_COUNT;
}

/** Whether a device with capability word `flags` has `state` (ERROR never counts as supported). */
export function stateSupported(state: number, flags: number): boolean {
  if (!isStateValue(state)) return false;
  const need = REQUIRED_FLAGS[state];
  return ((need & flags) >>> 0) === need >>> 0;
}

/** Throws EINVAL unless `flags` is one of the defined capability words 0x1, 0x3, 0x5, 0x7. */
export function assertFlags(flags: number): void {
  if (!VALID_FLAG_WORDS.includes(flags)) {
    throw migError('EINVAL', `migration flags ${typeof flags === 'number' ? `0x${flags.toString(16)}` : String(flags)} are not a defined capability word (0x1, 0x3, 0x5 or 0x7)`);
  }
}

/**
 * The state of the next single arc from `cur` toward `target`, exactly as the kernel computes it;
 * `cur` itself when `cur === target`. Throws EINVAL for an unsupported or out-of-range current state
 * (ERROR included), an unsupported target (ERROR always), an undefined flags word and the blocked
 * requests STOP_COPY -> PRE_COPY / PRE_COPY_P2P (the kernel loop stops at ERROR since the 2026 fix).
 */
export function nextState(cur: number, target: number, flags: number): DeviceState {
  assertFlags(flags);
  if (!stateSupported(cur, flags)) {
    throw migError('EINVAL', `current state ${stateName(cur)} is not a state a ${flagsName(flags)} device can be in`);
  }
  if (!stateSupported(target, flags)) {
    throw migError('EINVAL', `target state ${stateName(target)} is not supported by a ${flagsName(flags)} device`, {
      target: isStateValue(target) ? (target as DeviceState) : undefined,
    });
  }
  if (cur === target) return cur as DeviceState;
  let next = FIRST_HOP[cur][target];
  // Skip optional states the device lacks: the driver sees a direct arc to the next supported state.
  while (next !== E && !stateSupported(next, flags)) next = FIRST_HOP[next][target];
  if (next === E) {
    throw migError('EINVAL', `${stateName(cur)} -> ${stateName(target)} is a blocked transition`, {
      target: target as DeviceState,
      state: cur as DeviceState,
    });
  }
  return next;
}

/** The raw first-hop table cell (all features assumed); exported for documentation and tests. */
export function firstHop(cur: DeviceState, target: DeviceState): DeviceState {
  return FIRST_HOP[cur][target];
}
