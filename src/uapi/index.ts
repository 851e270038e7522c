export * from './constants.js';
export { readU64, readU64Big, writeU64 } from './u64.js';
export * from './structs.js';
export * from './feature.js';
