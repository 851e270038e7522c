// crc32 through the native addon (PCLMULQDQ folding) must give zlib's values for every length class,
// start value, alignment and memory kind; the streams use it for every record (src/streams/crc32.ts).
import { describe, it, expect } from 'vitest';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { crc32, crc32Accelerated, CRC32_ADDON_PATH } from '../../src/streams/crc32.js';
import { CompressionPool } from '../../src/streams/compression-pool.js';
import { mixedData } from './wire-helpers.js';

const hasCompiler = spawnSync(process.env.CC || 'cc', ['--version']).status === 0;
const hasPclmul = /\bpclmulqdq\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));

describe('crc32', () => {
  it('is accelerated wherever a C compiler was at install time and the CPU has PCLMULQDQ', () => {
    expect(crc32Accelerated).toBe(hasCompiler && hasPclmul);
    expect(CRC32_ADDON_PATH !== null).toBe(crc32Accelerated);
  });

  it("gives zlib's value for every length from 0 to 600 (each path and its tails) and for large ones, from any start value", () => {
    const data = randomBytes(600);
    for (let n = 1; n <= 600; n++) {
      for (const start of [0, 1, 0x12345678, 0xffffffff]) expect(crc32(data.subarray(0, n), start)).toBe(zlibCrc32(data.subarray(0, n), start));
    }
    for (const n of [1023, 1024, 4095, 65536 + 17, 1024 * 1024, 3 * 1024 * 1024 + 5]) {
      const big = randomBytes(n);
      expect(crc32(big)).toBe(zlibCrc32(big));
      expect(crc32(big, 0xdeadbeef)).toBe(zlibCrc32(big, 0xdeadbeef));
    }
  });

  it('continues a running crc: the crc of a whole equals the chain of its parts', () => {
    const data = mixedData(1024 * 1024, 5);
    const whole = zlibCrc32(data);
    let c = 0;
    for (let at = 0; at < data.length; ) {
      const n = Math.min(data.length - at, 1 + ((at * 7919) % 70000));
      c = crc32(data.subarray(at, at + n), c);
      at += n;
    }
    expect(c).toBe(whole);
  });

  it('an empty buffer leaves a running crc as it is (zlib returns 0)', () => {
    expect(crc32(Buffer.alloc(0), 0x1234abcd)).toBe(0x1234abcd);
    expect(crc32(Buffer.alloc(0))).toBe(0);
  });

  it('reads views at any alignment and SharedArrayBuffer memory', () => {
    const data = randomBytes(200_000);
    for (let off = 0; off < 17; off++) expect(crc32(data.subarray(off, off + 150_000))).toBe(zlibCrc32(data.subarray(off, off + 150_000)));
    const shared = Buffer.from(new SharedArrayBuffer(100_000));
    data.copy(shared, 0, 0, 100_000);
    expect(crc32(shared)).toBe(zlibCrc32(data.subarray(0, 100_000)));
    expect(crc32(new Uint8Array(shared.buffer, 3, 5000))).toBe(zlibCrc32(data.subarray(3, 5003)));
  });

  it.runIf(crc32Accelerated)('the addon refuses what is not a Uint8Array with a TypeError', () => {
    const addon = createRequire(import.meta.url)(CRC32_ADDON_PATH!) as { crc32: (d: unknown, v: number) => number };
    expect(() => addon.crc32('text', 0)).toThrow(TypeError);
    expect(() => addon.crc32(new Uint16Array(64), 0)).toThrow(TypeError);
  });

  it("compression workers compute the frames' crcs with the same function", async () => {
    const pool = new CompressionPool({ size: 1 });
    try {
      const data = mixedData(1024 * 1024, 9);
      for (const lendFrame of [false, true]) {
        const r = await pool.compress(data, { lendFrame });
        expect(r.crc).toBe(zlibCrc32(r.compressed!));
      }
      const raw = randomBytes(100_000);
      expect((await pool.compress(raw)).crc).toBe(zlibCrc32(raw));
    } finally {
      await pool.close();
    }
  });
});
