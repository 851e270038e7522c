export * from './states.js';
export * from './errors.js';
export type * from './types.js';
export { nextState, stateSupported, assertFlags, firstHop } from './table.js';
export { transitionPath, arcEffect, arcOpensSession, arcClosesSession, baseArcs, isBaseArc } from './path.js';
export type { ArcEffect } from './path.js';
export { MigrationCore } from './core.js';
export type { RecoveryPolicy, RecoveryOutcome, MigrationCoreOptions, SetStateOptions, SessionCloseReason, ArcEvent, MigrationCoreEvents } from './core.js';
