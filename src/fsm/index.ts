export * from './states.js';
export * from './errors.js';
export type * from './types.js';
export { nextState, stateSupported, assertFlags, firstHop } from './table.js';
export { transitionPath, arcEffect, arcOpensSession, arcClosesSession, baseArcs, isBaseArc } from './path.js';
export type { ArcEffect } from './path.js';
