export { MethodSavingSession, MethodResumingSession, sleepUnlessAborted } from './method-session.js';
export type { SavingBackend, ResumingBackend, MethodSessionOptions } from './method-session.js';
export { SimDevice } from './sim-device.js';
export type { SimDeviceOptions, SimFaults, SimArcFault } from './sim-device.js';
export { PageGenerator, PAGE_SIZE, SIM_PROFILES, warmPagePools } from './sim-pages.js';
export type { SimProfile } from './sim-pages.js';
export { MttyDevice, MttyPort, MTTY_MAGIC, MTTY_HEADER_SIZE, MTTY_PORT_SIZE, mttyDataSize, writeMttyHeader } from './mtty-device.js';
export type { MttyDeviceOptions } from './mtty-device.js';
