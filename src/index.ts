/**
 * vfio-mig: the Linux VFIO device migration protocol v2 (state machine and streaming data path).
 */
export * from './fsm/index.js';
export * from './uapi/index.js';
export * from './streams/index.js';
export * from './devices/index.js';
export * from './transport/index.js';
export * from './migration/index.js';
