import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState } from '../../src/fsm/states.js';
import { Ioctl, Sizes, VFIO_PRECOPY_INFO_REINIT, vfioIoctl } from '../../src/uapi/constants.js';
import {
  checkPrecopyInfoRequest,
  decodeFeatureMigDataSize,
  decodeFeatureMigDataSizeBig,
  decodeFeatureMigState,
  decodeFeatureMigration,
  decodeFeatureMigrationBig,
  decodePrecopyInfo,
  decodePrecopyInfoBig,
  encodeFeatureMigDataSize,
  encodeFeatureMigState,
  encodeFeatureMigration,
  encodePrecopyInfo,
  encodePrecopyInfoReply,
  migStateValue,
  toPrecopyInfo,
} from '../../src/uapi/structs.js';
import { readU64, writeU64 } from '../../src/uapi/u64.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(MigError);
    return (err as MigError).code;
  }
  return undefined;
}

describe('ioctl numbers (§1.1)', () => {
  it('are _IO(";", 100 + n)', () => {
    expect(Ioctl.DEVICE_GET_INFO).toBe(0x3b6b);
    expect(Ioctl.DEVICE_RESET).toBe(0x3b6f);
    expect(Ioctl.DEVICE_FEATURE).toBe(0x3b75);
    expect(Ioctl.MIG_GET_PRECOPY_INFO).toBe(0x3b79);
    expect(vfioIoctl(0)).toBe(0x3b64);
  });
});

describe('vfio_device_feature_migration', () => {
  it('is one little-endian u64', () => {
    const buf = encodeFeatureMigration({ flags: 0x7 });
    expect(buf).toEqual(Buffer.from([7, 0, 0, 0, 0, 0, 0, 0]));
    expect(decodeFeatureMigration(buf)).toEqual({ flags: 7 });
    expect(decodeFeatureMigration(Buffer.from([0xee, 0x05, 1, 2, 3, 4, 5, 0, 0]), 1)).toEqual({ flags: 0x050403020105 });
  });

  it('bits above 2^53 need the bigint decoder', () => {
    const buf = encodeFeatureMigration({ flags: (1n << 63n) | 1n });
    expect(buf).toEqual(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0x80]));
    expect(code(() => decodeFeatureMigration(buf))).toBe('EOVERFLOW');
    expect(decodeFeatureMigrationBig(buf)).toEqual({ flags: (1n << 63n) | 1n });
  });

  it('short buffers fault', () => {
    expect(code(() => decodeFeatureMigration(Buffer.alloc(7)))).toBe('EFAULT');
    expect(code(() => decodeFeatureMigration(Buffer.alloc(8), 1))).toBe('EFAULT');
    expect(code(() => decodeFeatureMigrationBig(Buffer.alloc(4)))).toBe('EFAULT');
  });
});

describe('vfio_device_feature_mig_state', () => {
  it('is u32 device_state then s32 data_fd', () => {
    expect(encodeFeatureMigState({ deviceState: DeviceState.STOP_COPY, dataFd: 17 })).toEqual(Buffer.from([3, 0, 0, 0, 17, 0, 0, 0]));
    const none = encodeFeatureMigState({ deviceState: DeviceState.RUNNING });
    expect(none).toEqual(Buffer.from([2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]));
    expect(decodeFeatureMigState(none)).toEqual({ deviceState: 2, dataFd: -1 });
  });

  it('round-trips any u32 state and s32 fd; the state check is separate', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: -0x80000000, max: 0x7fffffff }), (s, fd) => {
        const v = decodeFeatureMigState(encodeFeatureMigState({ deviceState: s, dataFd: fd }));
        expect(v).toEqual({ deviceState: s, dataFd: fd });
        if (s < 8) expect(migStateValue(v)).toBe(s);
        else expect(code(() => migStateValue(v))).toBe('EINVAL');
      }),
    );
  });

  it('refuses values that do not fit their fields', () => {
    expect(code(() => encodeFeatureMigState({ deviceState: -1 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigState({ deviceState: 2 ** 32 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigState({ deviceState: 1.5 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigState({ deviceState: 1, dataFd: 2 ** 31 }))).toBe('ERANGE');
    expect(code(() => decodeFeatureMigState(Buffer.alloc(7)))).toBe('EFAULT');
  });
});

describe('vfio_device_feature_mig_data_size', () => {
  it('round-trips numbers up to MAX_SAFE_INTEGER, bigints to 2^64-1', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => {
        const buf = encodeFeatureMigDataSize({ stopCopyLength: n });
        expect(buf.length).toBe(8);
        expect(buf.readBigUInt64LE(0)).toBe(BigInt(n));
        expect(decodeFeatureMigDataSize(buf)).toEqual({ stopCopyLength: n });
      }),
    );
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (n) => {
        const buf = encodeFeatureMigDataSize({ stopCopyLength: n });
        expect(decodeFeatureMigDataSizeBig(buf)).toEqual({ stopCopyLength: n });
        if (n > BigInt(Number.MAX_SAFE_INTEGER)) expect(code(() => decodeFeatureMigDataSize(buf))).toBe('EOVERFLOW');
      }),
    );
  });

  it('the overflow boundary is exact', () => {
    const max = encodeFeatureMigDataSize({ stopCopyLength: Number.MAX_SAFE_INTEGER });
    expect(decodeFeatureMigDataSize(max).stopCopyLength).toBe(Number.MAX_SAFE_INTEGER);
    const over = encodeFeatureMigDataSize({ stopCopyLength: BigInt(Number.MAX_SAFE_INTEGER) + 1n });
    const err = (() => {
      try {
        decodeFeatureMigDataSize(over);
      } catch (e) {
        return e as MigError;
      }
    })();
    expect(err?.code).toBe('EOVERFLOW');
    expect(err?.errno).toBe(75);
  });

  it('refuses negative, fractional and too large values', () => {
    expect(code(() => encodeFeatureMigDataSize({ stopCopyLength: -1 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigDataSize({ stopCopyLength: 0.5 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigDataSize({ stopCopyLength: 2 ** 53 }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigDataSize({ stopCopyLength: 1n << 64n }))).toBe('ERANGE');
    expect(code(() => encodeFeatureMigDataSize({ stopCopyLength: -1n }))).toBe('ERANGE');
    expect(code(() => decodeFeatureMigDataSize(Buffer.alloc(3)))).toBe('EFAULT');
  });
});

describe('vfio_precopy_info (§3.10)', () => {
  it('has the 24-byte layout argsz, flags, initial_bytes, dirty_bytes', () => {
    const buf = encodePrecopyInfo({ flags: VFIO_PRECOPY_INFO_REINIT, initialBytes: 0x0102030405, dirtyBytes: 7 });
    expect(buf.length).toBe(24);
    expect([...buf]).toEqual([24, 0, 0, 0, 1, 0, 0, 0, 5, 4, 3, 2, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    const v = decodePrecopyInfo(buf);
    expect(v).toEqual({ argsz: 24, flags: 1, initialBytes: 0x0102030405, dirtyBytes: 7 });
    expect(toPrecopyInfo(v)).toEqual({ initialBytes: 0x0102030405, dirtyBytes: 7, reinit: true });
    expect(toPrecopyInfo({ ...v, flags: 0 }).reinit).toBe(false);
  });

  it('round-trips; bigint variants carry full u64s', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 24, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        (argsz, flags, initialBytes, dirtyBytes) => {
          const buf = encodePrecopyInfo({ argsz, flags, initialBytes, dirtyBytes });
          expect(decodePrecopyInfoBig(buf)).toEqual({ argsz, flags, initialBytes, dirtyBytes });
          const safe = initialBytes <= BigInt(Number.MAX_SAFE_INTEGER) && dirtyBytes <= BigInt(Number.MAX_SAFE_INTEGER);
          if (safe) expect(decodePrecopyInfo(buf)).toEqual({ argsz, flags, initialBytes: Number(initialBytes), dirtyBytes: Number(dirtyBytes) });
          else expect(code(() => decodePrecopyInfo(buf))).toBe('EOVERFLOW');
        },
      ),
    );
  });

  it('request checks in the kernel order: fault, argsz, state', () => {
    const req = (argsz: number, flags = 0) => encodePrecopyInfo({ argsz, flags, initialBytes: 0, dirtyBytes: 0 });
    expect(code(() => checkPrecopyInfoRequest(Buffer.alloc(23), DeviceState.PRE_COPY))).toBe('EFAULT');
    // argsz is checked before the state
    expect(code(() => checkPrecopyInfoRequest(req(23), DeviceState.STOP_COPY))).toBe('EINVAL');
    expect(code(() => checkPrecopyInfoRequest(req(0), DeviceState.PRE_COPY))).toBe('EINVAL');
    for (const s of [DeviceState.STOP, DeviceState.RUNNING, DeviceState.STOP_COPY, DeviceState.RESUMING, DeviceState.RUNNING_P2P]) {
      expect(code(() => checkPrecopyInfoRequest(req(24), s))).toBe('EINVAL');
    }
    expect(checkPrecopyInfoRequest(req(24, 5), DeviceState.PRE_COPY)).toEqual({ argsz: 24, flags: 5 });
    expect(checkPrecopyInfoRequest(req(32), DeviceState.PRE_COPY_P2P)).toEqual({ argsz: 32, flags: 0 });
  });

  it('the reply echoes the user flags without the v2 opt-in and reports REINIT with it', () => {
    const info = { initialBytes: 100, dirtyBytes: 5, reinit: true };
    const echo = decodePrecopyInfo(encodePrecopyInfoReply({ argsz: 24, flags: 0xf0 }, info));
    expect(echo).toEqual({ argsz: 24, flags: 0xf0, initialBytes: 100, dirtyBytes: 5 });
    const v2 = decodePrecopyInfo(encodePrecopyInfoReply({ argsz: 24, flags: 0xf0 }, info, { reinitOptIn: true }));
    expect(v2.flags).toBe(VFIO_PRECOPY_INFO_REINIT);
    const v2quiet = decodePrecopyInfo(encodePrecopyInfoReply({ argsz: 24, flags: 0xf0 }, { ...info, reinit: false }, { reinitOptIn: true }));
    expect(v2quiet.flags).toBe(0);
  });
});

describe('u64 helpers', () => {
  it('write then read at an offset', () => {
    const buf = Buffer.alloc(16, 0xaa);
    writeU64(buf, 4, 2 ** 40 + 3);
    expect(readU64(buf, 4)).toBe(2 ** 40 + 3);
    expect(buf[3]).toBe(0xaa);
    expect(buf[12]).toBe(0xaa);
    expect(Sizes.PRECOPY_INFO).toBe(24);
  });
});
