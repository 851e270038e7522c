/**
 * Bounded memory: a multi-GiB device state streamed into a deliberately slow sink. A slow consumer
 * must slow the device reads; nothing may queue without a byte cap, so RSS growth stays under a
 * fixed bound however big the state is.
 */
import { describe, it, expect } from 'vitest';
import { PassThrough, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { SimDevice } from '../../src/devices/sim-device.js';
import { DeviceState } from '../../src/fsm/states.js';
import type { SavingSession } from '../../src/fsm/types.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { createResumingStream } from '../../src/streams/resuming-stream.js';
import { MiB, ScriptedResuming } from './fd-fixtures.js';

const GiB = 1024 * MiB;
const BOUND = 64 * MiB;

/** Peak RSS above the baseline while `run` runs (sampled every 5 ms). */
async function rssGrowth(run: () => Promise<void>): Promise<{ growth: number; peak: number; base: number }> {
  globalThis.gc?.();
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 5);
  try {
    await run();
  } finally {
    clearInterval(timer);
  }
  peak = Math.max(peak, process.memoryUsage().rss);
  return { growth: peak - base, peak, base };
}

describe('bounded memory', () => {
  it(`2 GiB of SimDevice state into a slow sink: RSS grows by less than ${BOUND / MiB} MiB`, { timeout: 60_000 }, async () => {
    const size = 2 * GiB;
    const src = new SimDevice({ size, profile: 'zero', flags: 0x5 });
    await src.step(DeviceState.RUNNING, DeviceState.STOP);
    const saving = (await src.step(DeviceState.STOP, DeviceState.STOP_COPY)) as SavingSession;
    let seen = 0;
    let writes = 0;
    let maxQueued = 0;
    const s = createSavingStream(saving);
    const hop = new PassThrough({ highWaterMark: 2 * MiB });
    // Slow: every 8th chunk waits for a timer (~1 ms), so the device could produce far faster.
    const sink = new Writable({
      highWaterMark: 2 * MiB,
      write(chunk: Buffer, _enc, cb) {
        seen += chunk.length;
        maxQueued = Math.max(maxQueued, s.readableLength + hop.readableLength + hop.writableLength + sink.writableLength);
        if (++writes % 8 === 0) setTimeout(cb, 1);
        else setImmediate(cb);
      },
    });
    const { growth } = await rssGrowth(() => pipeline(s, hop, sink));
    expect(seen).toBe(s.bytesRead);
    expect(seen).toBeGreaterThan(size); // the whole state went through (plus the format's metadata)
    // Every queue on the path is capped by its highWaterMark (plus one chunk in flight each).
    expect(maxQueued).toBeLessThanOrEqual(2 * MiB + 2 * MiB + 2 * MiB + 2 * MiB + 4 * MiB);
    expect(growth, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(BOUND);
    src.close();
  });

  it(`1 GiB through SavingStream -> ResumingStream into a slow device: RSS grows by less than ${BOUND / MiB} MiB`, { timeout: 60_000 }, async () => {
    const size = 1 * GiB;
    const src = new SimDevice({ size, profile: 'zero', flags: 0x5 });
    await src.step(DeviceState.RUNNING, DeviceState.STOP);
    const saving = (await src.step(DeviceState.STOP, DeviceState.STOP_COPY)) as SavingSession;
    const dst = new ScriptedResuming({ maxWrite: 512 * 1024 }); // partial writes, each after a macrotask
    const slowWrite = dst.write.bind(dst);
    let n = 0;
    dst.write = async (buf: Buffer) => {
      if (++n % 16 === 0) await new Promise((r) => setTimeout(r, 1));
      return slowWrite(buf);
    };
    const s = createSavingStream(saving);
    const r = createResumingStream(dst);
    const { growth } = await rssGrowth(() => pipeline(s, r));
    expect(dst.bytes).toBe(s.bytesRead);
    expect(dst.bytes).toBeGreaterThan(size);
    expect(growth, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(BOUND);
    src.close();
  });
});
