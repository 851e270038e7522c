import { describe, it, expect } from 'vitest';
import { Readable } from 'node:stream';
import { chunksOf } from '../../src/streams/chunks.js';

const MiB = 1024 * 1024;

/** A byte stream of `n` chunks of `size` bytes, each its own Buffer (kept in `pushed`), 2 chunks buffered at most. */
function source(n: number, size = MiB) {
  const pushed: Buffer[] = [];
  let maxBuffered = 0;
  const r = new Readable({
    highWaterMark: 2 * size,
    read() {
      maxBuffered = Math.max(maxBuffered, this.readableLength);
      if (pushed.length === n) {
        this.push(null);
        return;
      }
      const b = Buffer.alloc(size, pushed.length & 0xff);
      pushed.push(b);
      this.push(b);
    },
  });
  return { r, pushed, maxBuffered: () => maxBuffered };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Every chunk chunksOf() hands over, and the error that ended the loop (null: a plain end). */
async function drainAll(r: Readable): Promise<{ got: Buffer[]; err: unknown }> {
  const got: Buffer[] = [];
  try {
    for await (const c of chunksOf(r)) got.push(c);
    return { got, err: null };
  } catch (err) {
    return { got, err };
  }
}

describe('chunksOf', () => {
  it('yields each pushed chunk itself, never several joined, while a slow consumer leaves them buffered', async () => {
    const { r, pushed, maxBuffered } = source(16);
    const got: Buffer[] = [];
    for await (const c of chunksOf(r)) {
      got.push(c);
      // A slow consumer: the stream fills its buffer meanwhile (the built-in iterator then joins them).
      for (let i = 0; i < 3; i++) await tick();
    }
    expect(got).toHaveLength(16);
    for (let i = 0; i < 16; i++) expect(got[i]).toBe(pushed[i]);
    // Backpressure holds: never more than the stream's highWaterMark buffered.
    expect(maxBuffered()).toBeLessThanOrEqual(2 * MiB);
    expect(r.readableEnded).toBe(true);
  });

  it('the built-in iterator would have joined them (what this replaces)', async () => {
    const { r } = source(16);
    const sizes: number[] = [];
    for await (const c of r as AsyncIterable<Buffer>) {
      sizes.push(c.length);
      for (let i = 0; i < 3; i++) await tick();
    }
    expect(Math.max(...sizes)).toBeGreaterThan(MiB);
  });

  it('an error reaches the loop; what the stream still held is dropped with it, as destroy() does', async () => {
    let n = 0;
    const r = new Readable({
      read() {
        if (n++ < 2) this.push(Buffer.alloc(1024, n));
        else this.destroy(Object.assign(new Error('device gone'), { code: 'ENODEV' }));
      },
    });
    const { got, err } = await drainAll(r);
    expect(err).toMatchObject({ code: 'ENODEV' });
    // The first chunk was handed over; the second sat in the paused stream's buffer when it was destroyed.
    expect(got).toHaveLength(1);
    expect(got[0][0]).toBe(1);
  });

  it('a close before the end is an error (ERR_STREAM_PREMATURE_CLOSE), not a quiet end', async () => {
    const r = new Readable({ read() {} });
    r.push(Buffer.alloc(10));
    setTimeout(() => r.destroy(), 5);
    const { got, err } = await drainAll(r);
    expect(err).toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    expect(got).toHaveLength(1);
  });

  it('leaving the loop early destroys the stream; an empty stream ends the loop at once', async () => {
    const { r } = source(100);
    let seen = 0;
    for await (const c of chunksOf(r)) {
      seen += c.length;
      if (seen >= 3 * MiB) break;
    }
    expect(seen).toBe(3 * MiB);
    expect(r.destroyed).toBe(true);
    const empty = Readable.from([], { objectMode: false });
    let any = false;
    for await (const _ of chunksOf(empty)) any = true;
    expect(any).toBe(false);
  });
});
