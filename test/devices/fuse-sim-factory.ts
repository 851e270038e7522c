/**
 * Device factory for the FUSE device-host tests: a SimDevice, loaded in the host child through
 * `{ module: <this file>, export: 'createDevice' }`.
 */
import { SimDevice } from '../../src/devices/sim-device.js';
import type { SimDeviceOptions } from '../../src/devices/sim-device.js';

export function createDevice(options: Record<string, unknown>): SimDevice {
  return new SimDevice(options as unknown as SimDeviceOptions);
}
