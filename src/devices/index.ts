export { MethodSavingSession, MethodResumingSession, sleepUnlessAborted } from './method-session.js';
export type { SavingBackend, ResumingBackend, MethodSessionOptions } from './method-session.js';
export { SimDevice } from './sim-device.js';
export type { SimDeviceOptions, SimFaults, SimArcFault } from './sim-device.js';
export { PageGenerator, PAGE_SIZE, SIM_PROFILES, warmPagePools } from './sim-pages.js';
export type { SimProfile } from './sim-pages.js';
