import { describe, expect, it } from 'vitest';
import { DeviceState as S } from '../../src/fsm/states.js';
import { SimDevice, type SimDeviceOptions } from '../../src/devices/sim-device.js';
import {
  END_BYTES,
  META_BYTES,
  REC_FLAG_OPTIONAL,
  REC_HEADER_BYTES,
  TAG_PAGES,
  writeRecordHeader,
} from '../../src/devices/sim-format.js';
import type { ResumingSession } from '../../src/fsm/types.js';
import { drain, resuming, rng, saving, writeAll, writeRandomly } from './sim-helpers.js';

const P = 4096;

async function toStop(dev: SimDevice): Promise<void> {
  await dev.step(S.RUNNING, S.RUNNING_P2P);
  await dev.step(S.RUNNING_P2P, S.STOP);
}

/** A whole stream of a device (PRE_COPY pass, some dirtying, STOP_COPY) plus its final digest. */
async function capture(opts: SimDeviceOptions, dirty = 0): Promise<{ stream: Buffer; digest: string }> {
  const src = new SimDevice(opts);
  const parts: Buffer[] = [];
  const s = saving(await src.step(S.RUNNING, S.PRE_COPY));
  await drain(s, (c) => {
    parts.push(c);
  });
  if (dirty) src.dirtyPages(dirty);
  await src.step(S.PRE_COPY, S.PRE_COPY_P2P);
  await src.step(S.PRE_COPY_P2P, S.STOP_COPY);
  await drain(s, (c) => {
    parts.push(c);
  });
  return { stream: Buffer.concat(parts), digest: src.digest() };
}

async function destination(opts: SimDeviceOptions): Promise<{ dst: SimDevice; out: ResumingSession }> {
  const dst = new SimDevice(opts);
  await toStop(dst);
  return { dst, out: resuming(await dst.step(S.STOP, S.RESUMING)) };
}

const base: SimDeviceOptions = { size: 40 * P, seed: 11 };

describe('SimDevice loader', () => {
  it('loads in 1-byte writes and in random splits', async () => {
    const { stream, digest } = await capture({ ...base, size: 3 * P }, 2);
    const a = await destination({ ...base, size: 3 * P });
    for (let i = 0; i < stream.length; i++) expect(await a.out.write(stream.subarray(i, i + 1))).toBe(1);
    await a.dst.step(S.RESUMING, S.STOP);
    expect(a.dst.digest()).toBe(digest);

    const big = await capture(base, 15);
    for (let seed = 1; seed <= 5; seed++) {
      const b = await destination(base);
      await writeRandomly(b.out, big.stream, rng(seed), 9000);
      await b.dst.step(S.RESUMING, S.STOP);
      expect(b.dst.digest()).toBe(big.digest);
      expect(b.out.disabled).toBe(true);
    }
  });

  it('a truncated image: every write succeeds, RESUMING -> STOP fails EINVAL and stays RESUMING', async () => {
    const { stream } = await capture(base);
    for (const cut of [0, 10, META_BYTES, stream.length - END_BYTES, stream.length - 1]) {
      const { dst, out } = await destination(base);
      await writeAll(out, stream.subarray(0, cut));
      await expect(dst.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL', state: S.RESUMING });
      expect(await dst.getState()).toBe(S.RESUMING);
      expect(out.disabled).toBe(false);
    }
  });

  it('an image that misses pages (END present) cannot complete: EINVAL', async () => {
    const { stream } = await capture({ ...base, size: 2 * P });
    // Rebuild the stream with the PAGES record carrying only page 0 of the 2.
    const pagesAt = META_BYTES;
    const one = Buffer.alloc(REC_HEADER_BYTES + 8 + 8 + P);
    writeRecordHeader(one, 0, 8 + 8 + P, 0, TAG_PAGES);
    one.writeUInt32LE(1, 16);
    stream.copy(one, 24, pagesAt + 24, pagesAt + 32); // descriptor of page 0
    stream.copy(one, 32, pagesAt + 24 + 16, pagesAt + 24 + 16 + P); // content of page 0
    const forged = Buffer.concat([stream.subarray(0, META_BYTES), one, stream.subarray(stream.length - END_BYTES)]);
    const { dst, out } = await destination({ ...base, size: 2 * P });
    await writeAll(out, forged);
    await expect(dst.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('match data that differs (seed, size, profile) fails with EFAULT', async () => {
    const { stream } = await capture(base);
    for (const opts of [
      { ...base, seed: 12 },
      { ...base, size: 41 * P },
      { ...base, profile: 'random' as const },
    ]) {
      const { out } = await destination(opts);
      await expect(writeAll(out, stream)).rejects.toMatchObject({ code: 'EFAULT' });
    }
  });

  it('a stream not starting with HEADER, unknown flags, bad sizes: EINVAL; later writes ENODEV', async () => {
    const { stream } = await capture(base);
    const { out } = await destination(base);
    await expect(out.write(stream.subarray(META_BYTES))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(out.write(stream)).rejects.toMatchObject({ code: 'ENODEV' });

    const badSize = Buffer.from(stream);
    badSize.writeUInt32LE(31, 0); // HEADER of 31 bytes
    await expect((await destination(base)).out.write(badSize)).rejects.toMatchObject({ code: 'EINVAL' });

    const badCount = Buffer.from(stream);
    badCount.writeUInt32LE(3, META_BYTES + 16); // PAGES count disagrees with its size
    await expect((await destination(base)).out.write(badCount)).rejects.toMatchObject({ code: 'EINVAL' });

    const badIndex = Buffer.from(stream);
    badIndex.writeUInt32LE(40, META_BYTES + 24); // page 40 of a 40-page device
    await expect((await destination(base)).out.write(badIndex)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('records too large: ENOMEM, like mlx5', async () => {
    const { stream } = await capture(base);
    const huge = Buffer.from(stream.subarray(0, META_BYTES + REC_HEADER_BYTES));
    huge.writeUInt32LE(1, META_BYTES + 4); // size >= 2^32
    await expect((await destination(base)).out.write(huge)).rejects.toMatchObject({ code: 'ENOMEM' });
    const many = Buffer.from(huge);
    writeRecordHeader(many, META_BYTES, 8 + 2000 * (8 + P), 0, TAG_PAGES);
    await expect((await destination(base)).out.write(many)).rejects.toMatchObject({ code: 'ENOMEM' });
  });

  it('unknown mandatory tag: EOPNOTSUPP; unknown optional record: skipped', async () => {
    const { stream, digest } = await capture(base);
    const rec = Buffer.alloc(REC_HEADER_BYTES + 5, 0xab);
    writeRecordHeader(rec, 0, 5, 0, 77);
    const withMandatory = Buffer.concat([stream.subarray(0, META_BYTES), rec, stream.subarray(META_BYTES)]);
    await expect(writeAll((await destination(base)).out, withMandatory)).rejects.toMatchObject({ code: 'EOPNOTSUPP' });
    writeRecordHeader(rec, 0, 5, REC_FLAG_OPTIONAL, 77);
    const withOptional = Buffer.concat([stream.subarray(0, META_BYTES), rec, stream.subarray(META_BYTES)]);
    const { dst, out } = await destination(base);
    await writeRandomly(out, withOptional, rng(3), 100);
    await dst.step(S.RESUMING, S.STOP);
    expect(dst.digest()).toBe(digest);
  });

  it('wrong page content or version: EFAULT; a wrong digest in END: EFAULT; bytes after END: EINVAL', async () => {
    const { stream } = await capture(base, 5);
    const badContent = Buffer.from(stream);
    badContent[META_BYTES + 24 + 40 * 8 + 7 * P + 4000] ^= 0x10;
    await expect(writeAll((await destination(base)).out, badContent)).rejects.toMatchObject({ code: 'EFAULT', message: /^page \d+ version \d+: content differs/ });

    const badVersion = Buffer.from(stream);
    badVersion.writeUInt32LE(9, META_BYTES + 24 + 4); // page 0 claims version 9
    await expect(writeAll((await destination(base)).out, badVersion)).rejects.toMatchObject({ code: 'EFAULT' });

    const badDigest = Buffer.from(stream);
    badDigest[badDigest.length - 1] ^= 1;
    await expect(writeAll((await destination(base)).out, badDigest)).rejects.toMatchObject({ code: 'EFAULT' });

    const trailing = Buffer.concat([stream, Buffer.alloc(1)]);
    const t = await destination(base);
    await expect(writeAll(t.out, trailing)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('a stream that drops a dirty page is caught by the END digest', async () => {
    const src = new SimDevice(base);
    const s = saving(await src.step(S.RUNNING, S.PRE_COPY));
    const parts: Buffer[] = [];
    await drain(s, (c) => {
      parts.push(c);
    });
    src.touchPages([5]);
    await drain(s, () => {}); // the dirty record is lost on the way
    await src.step(S.PRE_COPY, S.PRE_COPY_P2P);
    await src.step(S.PRE_COPY_P2P, S.STOP_COPY);
    await drain(s, (c) => {
      parts.push(c);
    });
    const { out } = await destination(base);
    await expect(writeAll(out, Buffer.concat(parts))).rejects.toMatchObject({ code: 'EFAULT', message: /digest/ });
  });
});
