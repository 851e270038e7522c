/**
 * The forward writer's accounting, which the estimator's in-flight term and compression ratio rest
 * on: what it holds before the kernel, and the raw bytes each chunk leaving a bandwidth cap carried.
 */
import { describe, it, expect } from 'vitest';
import { PassThrough, Writable } from 'node:stream';
import { openForward } from '../../src/migration/wire.js';

const KiB = 1024;
const device = { name: 'dev0', identity: { vendor: 'test', device: 'sim' } };

describe('openForward', () => {
  it('under a cap, queues stay small and queued() counts what has not reached the transport; it drains to 0', async () => {
    const transport = new PassThrough({ highWaterMark: 16 * KiB });
    const samples: Array<[number, number]> = [];
    const w = openForward(
      transport,
      { devices: [device] as never, compression: false, bandwidth: 4_000_000, digest: null, onWire: (wire, raw) => samples.push([wire, raw]) },
      (err) => {
        throw err;
      },
    );
    let received = 0;
    transport.on('data', (c: Buffer) => (received += c.length));
    const payload = Buffer.alloc(64 * KiB, 7);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 32; i++) writes.push(w.data(0, payload));
    const q = w.queued();
    // 2 MiB handed over at once: most of it waits before the 4 MB/s cap, in raw or wire form.
    expect(q.rawBytes + q.wireBytes).toBeGreaterThan(1024 * KiB);
    await Promise.all(writes);
    await w.finish();
    expect(w.queued()).toEqual({ rawBytes: 0, wireBytes: 0 });
    expect(received).toBe(w.wireBytes);
    // Every raw byte was attributed to exactly one chunk that left the limiter.
    const raw = samples.reduce((a, [, r]) => a + r, 0);
    expect(raw).toBe(32 * 64 * KiB);
    w.destroy();
  });

  it('flushed(): true once a control record queued behind capped data reached the transport, false at a deadline it cannot meet', async () => {
    const transport = new PassThrough({ highWaterMark: 16 * KiB });
    let received = 0;
    transport.on('data', (c: Buffer) => (received += c.length));
    const w = openForward(
      transport,
      { devices: [device] as never, compression: false, bandwidth: 8_000_000, digest: null },
      (err) => {
        throw err;
      },
    );
    // 512 KiB ahead of the control record: ~65 ms at 8 MB/s, past the bucket's credit.
    for (let i = 0; i < 8; i++) void w.data(0, Buffer.alloc(64 * KiB, i));
    void w.control({ type: 'abort', code: 'EIO', message: 'test', phase: 'precopy' });
    // Queued records take longer than 5 ms: not flushed by then.
    expect(await w.flushed(performance.now() + 5)).toBe(false);
    expect(await w.flushed(performance.now() + 2000)).toBe(true);
    expect(received).toBe(w.wireBytes);
    expect(w.queued()).toEqual({ rawBytes: 0, wireBytes: 0 });
    // A destroyed transport flushes nothing: false at once.
    void w.data(0, Buffer.alloc(64 * KiB, 9));
    transport.destroy();
    const t0 = performance.now();
    expect(await w.flushed(performance.now() + 2000)).toBe(false);
    expect(performance.now() - t0).toBeLessThan(1000);
    w.destroy();
  });

  it('without a cap, the raw bytes of the chunks add up to the data written', async () => {
    const transport = new PassThrough();
    transport.resume();
    let raw = 0;
    const w = openForward(
      transport,
      { devices: [device] as never, compression: false, bandwidth: 0, digest: null, onWire: (_wire, r) => (raw += r) },
      (err) => {
        throw err;
      },
    );
    for (let i = 0; i < 8; i++) await w.data(0, Buffer.alloc(100 * KiB, i));
    await w.finish();
    expect(raw).toBe(800 * KiB);
    w.destroy();
  });

  it('onWritten: each chunk once its write completed, never before; a slow transport holds the encoder back', async () => {
    // A transport that completes each write 2 ms later and takes 64 KiB before it says "wait".
    const completed = new Set<Buffer>();
    const received: Buffer[] = [];
    let maxBuffered = 0;
    const transport = new Writable({
      highWaterMark: 64 * KiB,
      write(chunk: Buffer, _e, cb) {
        maxBuffered = Math.max(maxBuffered, this.writableLength);
        received.push(Buffer.from(chunk));
        setTimeout(() => {
          completed.add(chunk);
          cb();
        }, 2);
      },
    });
    const written: Buffer[] = [];
    const early: Buffer[] = [];
    const w = openForward(
      transport,
      {
        devices: [device] as never,
        compression: false,
        bandwidth: 0,
        digest: null,
        onWritten: (chunk) => {
          if (!completed.has(chunk)) early.push(chunk);
          written.push(chunk);
        },
      },
      (err) => {
        throw err;
      },
    );
    const payloads = Array.from({ length: 24 }, (_, i) => Buffer.alloc(32 * KiB, i));
    await Promise.all(payloads.map((p) => w.data(0, p)));
    await w.finish();
    expect(early).toEqual([]);
    // Every payload came back once, as the very buffer written (the caller's memory).
    for (const p of payloads) expect(written.filter((c) => c === p)).toHaveLength(1);
    // Every chunk the encoder sent came back (finish() adds an empty write of its own, to wait on).
    expect(written.length).toBe(received.filter((c) => c.length > 0).length);
    // In order and whole: the wire carries each payload after its header.
    const wire = Buffer.concat(received);
    let at = 0;
    for (const p of payloads) {
      at = wire.indexOf(p, at);
      expect(at).toBeGreaterThanOrEqual(0);
      at += p.length;
    }
    // Backpressure: the transport never held much more than its highWaterMark plus one chunk.
    expect(maxBuffered).toBeLessThanOrEqual(64 * KiB + 32 * KiB + 28);
    w.destroy();
  });
});
