import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState } from '../../src/fsm/states.js';
import { FeatureFlags, FeatureIndex } from '../../src/uapi/constants.js';
import { checkFeatureRequest, decodeFeatureHeader, encodeFeature, migrationFeatureTable } from '../../src/uapi/feature.js';
import type { FeatureTable } from '../../src/uapi/feature.js';
import { decodeFeatureMigState, encodeFeatureMigState } from '../../src/uapi/structs.js';

const MIG = migrationFeatureTable(0x7);

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MigError);
    return (err as MigError).code;
  }
  return undefined;
}

describe('vfio_device_feature header', () => {
  it('is argsz then flags (index | GET/SET/PROBE), little-endian, then the payload', () => {
    const payload = encodeFeatureMigState({ deviceState: DeviceState.STOP_COPY });
    const buf = encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, set: true, payload });
    expect([...buf]).toEqual([16, 0, 0, 0, 2, 0, 2, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    expect(decodeFeatureHeader(buf)).toEqual({ argsz: 16, flags: 0x20002, index: 2, get: false, set: true, probe: false });
    const probe = encodeFeature({ index: FeatureIndex.MIGRATION, get: true, probe: true });
    expect([...probe]).toEqual([8, 0, 0, 0, 1, 0, 5, 0]);
  });

  it('round-trips any index and op combination', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.boolean(), fc.boolean(), fc.boolean(), fc.uint8Array({ maxLength: 40 }), (index, get, set, probe, bytes) => {
        const buf = encodeFeature({ index, get, set, probe, payload: Buffer.from(bytes) });
        const h = decodeFeatureHeader(buf);
        expect(h).toEqual({
          argsz: 8 + bytes.length,
          flags: index | (get ? 0x10000 : 0) | (set ? 0x20000 : 0) | (probe ? 0x40000 : 0),
          index,
          get,
          set,
          probe,
        });
        expect([...buf.subarray(8)]).toEqual([...bytes]);
      }),
    );
  });

  it('refuses an index outside 16 bits and decodes only whole headers', () => {
    expect(code(() => encodeFeature({ index: 0x10000 }))).toBe('ERANGE');
    expect(code(() => encodeFeature({ index: -1 }))).toBe('ERANGE');
    expect(code(() => decodeFeatureHeader(Buffer.alloc(7)))).toBe('EFAULT');
  });
});

describe('checkFeatureRequest: the kernel order of checks (§2.1)', () => {
  const stateSet = () => encodeFeatureMigState({ deviceState: DeviceState.STOP });

  it('accepts GET and SET with their payload', () => {
    const get = checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, get: true, payload: Buffer.alloc(8) }), MIG);
    expect(get.op).toBe('get');
    expect(get.payload.length).toBe(8);
    const set = checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, set: true, payload: stateSet() }), MIG);
    expect(set.op).toBe('set');
    expect(decodeFeatureMigState(set.payload).deviceState).toBe(DeviceState.STOP);
    // A larger argsz than the struct is fine (structs grow through argsz); the payload view covers it.
    const big = checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DATA_SIZE, get: true, payload: Buffer.alloc(16) }), MIG);
    expect(big.payload.length).toBe(16);
  });

  it('1. a header that cannot be copied faults', () => {
    expect(code(() => checkFeatureRequest(Buffer.alloc(4), MIG))).toBe('EFAULT');
  });

  it('2. argsz below the header is EINVAL, before any flag check', () => {
    const buf = encodeFeature({ index: 0x1234, get: true, set: true, extraFlags: 0x80000000, argsz: 7 });
    expect(code(() => checkFeatureRequest(buf, MIG))).toBe('EINVAL');
    expect((() => { try { checkFeatureRequest(buf, MIG); } catch (e) { return (e as Error).message; } })()).toMatch(/argsz/);
  });

  it('3. unknown flag bits are EINVAL, even on an index the device lacks', () => {
    for (const bit of [0x80000, 0x100000, 0x80000000]) {
      const buf = encodeFeature({ index: 0x1234, get: true, extraFlags: bit, payload: Buffer.alloc(8) });
      expect(code(() => checkFeatureRequest(buf, MIG))).toBe('EINVAL');
    }
  });

  it('4. GET with SET without PROBE is EINVAL, before the index lookup', () => {
    const buf = encodeFeature({ index: 0x1234, get: true, set: true, payload: Buffer.alloc(8) });
    expect(code(() => checkFeatureRequest(buf, MIG))).toBe('EINVAL');
    // With PROBE it is a legal question: "do GET and SET both exist?"
    const probe = encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, get: true, set: true, probe: true });
    expect(checkFeatureRequest(probe, MIG).op).toBe('probe');
  });

  it('5. an index the device does not handle is ENOTTY; migration features without migration too', () => {
    expect(code(() => checkFeatureRequest(encodeFeature({ index: 13, get: true, payload: Buffer.alloc(8) }), MIG))).toBe('ENOTTY');
    const none = migrationFeatureTable(0);
    for (const index of [FeatureIndex.MIGRATION, FeatureIndex.MIG_DEVICE_STATE, FeatureIndex.MIG_DATA_SIZE]) {
      expect(code(() => checkFeatureRequest(encodeFeature({ index, get: true, payload: Buffer.alloc(8) }), none))).toBe('ENOTTY');
      expect(code(() => checkFeatureRequest(encodeFeature({ index, get: true, probe: true }), none))).toBe('ENOTTY');
    }
    // MIG_PRECOPY_INFOv2 answers EINVAL on a device without PRE_COPY.
    const p2pOnly = migrationFeatureTable(0x3);
    expect(code(() => checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_PRECOPY_INFOv2, set: true }), p2pOnly))).toBe('EINVAL');
    expect(checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_PRECOPY_INFOv2, set: true }), MIG).op).toBe('set');
  });

  it('6. an op the feature lacks is EINVAL, also under PROBE', () => {
    for (const [index, op] of [
      [FeatureIndex.MIGRATION, 'set'],
      [FeatureIndex.MIG_DATA_SIZE, 'set'],
      [FeatureIndex.MIG_PRECOPY_INFOv2, 'get'],
    ] as const) {
      const payload = Buffer.alloc(8);
      expect(code(() => checkFeatureRequest(encodeFeature({ index, [op]: true, payload }), MIG))).toBe('EINVAL');
      expect(code(() => checkFeatureRequest(encodeFeature({ index, [op]: true, probe: true }), MIG))).toBe('EINVAL');
    }
  });

  it('7. PROBE answers without touching the payload', () => {
    // argsz says 16 but only the header exists: a GET would fault, PROBE never reads it.
    const buf = encodeFeature({ index: FeatureIndex.MIGRATION, get: true, probe: true, argsz: 16 });
    expect(buf.length).toBe(8);
    const r = checkFeatureRequest(buf, MIG);
    expect(r.op).toBe('probe');
    expect(r.payload.length).toBe(0);
    // PROBE alone (no op) asks only whether the feature exists.
    expect(checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DATA_SIZE, probe: true }), MIG).op).toBe('probe');
    // ... and PROBE with a payload too short for a real request is still fine.
    expect(checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, set: true, probe: true, argsz: 8 }), MIG).op).toBe('probe');
  });

  it('8. neither GET nor SET (nor PROBE) is EINVAL', () => {
    expect(code(() => checkFeatureRequest(encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, payload: Buffer.alloc(8) }), MIG))).toBe('EINVAL');
  });

  it('9. a payload below the feature minimum is EINVAL (argsz counts, not the buffer)', () => {
    for (const index of [FeatureIndex.MIGRATION, FeatureIndex.MIG_DEVICE_STATE, FeatureIndex.MIG_DATA_SIZE]) {
      expect(code(() => checkFeatureRequest(encodeFeature({ index, get: true, payload: Buffer.alloc(7) }), MIG))).toBe('EINVAL');
      expect(code(() => checkFeatureRequest(encodeFeature({ index, get: true, payload: Buffer.alloc(8), argsz: 15 }), MIG))).toBe('EINVAL');
    }
  });

  it('10. an argsz that promises bytes the buffer lacks faults when the payload is read', () => {
    const buf = encodeFeature({ index: FeatureIndex.MIG_DEVICE_STATE, get: true, argsz: 16, payload: Buffer.alloc(4) });
    expect(code(() => checkFeatureRequest(buf, MIG))).toBe('EFAULT');
  });

  it('a custom feature table', () => {
    const table: FeatureTable = new Map([[FeatureIndex.DMA_LOGGING_START, { get: false, set: true, minPayload: 24 }]]);
    expect(checkFeatureRequest(encodeFeature({ index: 6, set: true, payload: Buffer.alloc(24) }), table).op).toBe('set');
    expect(code(() => checkFeatureRequest(encodeFeature({ index: 6, set: true, payload: Buffer.alloc(23) }), table))).toBe('EINVAL');
    expect(code(() => checkFeatureRequest(encodeFeature({ index: 1, get: true, payload: Buffer.alloc(8) }), table))).toBe('ENOTTY');
  });

  it('structured fuzz: each check wins over every later one', () => {
    const request = fc.record({
      argsz: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 8, max: 24 }), fc.constant(0xffffffff)),
      index: fc.constantFrom(0, 1, 2, 9, 12, 13, 0xffff),
      get: fc.boolean(),
      set: fc.boolean(),
      probe: fc.boolean(),
      junk: fc.constantFrom(0, 0x80000, 0x80000000),
      len: fc.integer({ min: 0, max: 24 }),
      flags: fc.constantFrom(0, 0x1, 0x3, 0x7),
    });
    fc.assert(
      fc.property(request, (q) => {
        const buf = encodeFeature({ index: q.index, get: q.get, set: q.set, probe: q.probe, extraFlags: q.junk, argsz: q.argsz, payload: Buffer.alloc(q.len) });
        const c = code(() => checkFeatureRequest(buf, migrationFeatureTable(q.flags)));
        if (q.argsz < 8 || q.junk !== 0 || (q.get && q.set && !q.probe)) {
          expect(c).toBe('EINVAL');
          return;
        }
        const known = q.flags !== 0 && [1, 2, 9].includes(q.index);
        const precopyV2 = q.index === 12;
        if (!known && !precopyV2) {
          expect(c).toBe('ENOTTY');
          return;
        }
        if (precopyV2 && !(q.flags & 0x4)) {
          expect(c).toBe('EINVAL');
          return;
        }
        const canGet = q.index !== 12;
        const canSet = q.index === 2 || q.index === 12;
        if ((q.get && !canGet) || (q.set && !canSet)) {
          expect(c).toBe('EINVAL');
          return;
        }
        // PROBE never reads the payload: no EFAULT, whatever argsz claims.
        if (q.probe) {
          expect(c).toBeUndefined();
          return;
        }
        if (!q.get && !q.set) {
          expect(c).toBe('EINVAL');
          return;
        }
        const min = q.index === 12 ? 0 : 8;
        if (q.argsz - 8 < min) expect(c).toBe('EINVAL');
        else if (q.len < min) expect(c).toBe('EFAULT');
        else expect(c).toBeUndefined();
      }),
      { numRuns: 3000 },
    );
  });

  it('fuzz: every random request either passes or fails with EINVAL, ENOTTY or EFAULT in a consistent way', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 32 }), (bytes) => {
        const buf = Buffer.from(bytes);
        let r: ReturnType<typeof checkFeatureRequest> | undefined;
        let c: string | undefined;
        try {
          r = checkFeatureRequest(buf, MIG);
        } catch (e) {
          c = (e as MigError).code;
        }
        if (buf.length < 8) {
          expect(c).toBe('EFAULT');
          return;
        }
        const argsz = buf.readUInt32LE(0);
        const flags = buf.readUInt32LE(4);
        if (argsz < 8 || flags & ~0x7ffff) {
          expect(c).toBe('EINVAL');
          return;
        }
        if (r) {
          expect(r.index).toBe(flags & FeatureFlags.MASK);
          const min = r.index === FeatureIndex.MIG_PRECOPY_INFOv2 ? 0 : 8;
          if (r.op !== 'probe') expect(r.payload.length).toBeGreaterThanOrEqual(min);
        } else {
          expect(['EINVAL', 'ENOTTY', 'EFAULT']).toContain(c);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
