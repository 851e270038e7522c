export * from './states.js';
export * from './errors.js';
export type * from './types.js';
