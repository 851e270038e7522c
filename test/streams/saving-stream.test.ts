import { describe, it, expect } from 'vitest';
import { Writable, PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { once } from 'node:events';
import pump from 'pump';
import { createSavingStream, SavingStream, type SavingStreamOptions } from '../../src/streams/saving-stream.js';
import { MigError, ErrorCodes } from '../../src/fsm/errors.js';
import { MAX_FREE_BYTES } from '../../src/streams/chunk-loans.js';
import { MiB, ScriptedSaving, errnoError, pattern, sha } from './fd-fixtures.js';

/** Collect a readable's chunks (and the event order). */
async function collect(s: SavingStream): Promise<{ chunks: Buffer[]; events: string[] }> {
  const chunks: Buffer[] = [];
  const events: string[] = [];
  s.on('precopy-empty', () => events.push('precopy-empty'));
  s.on('precopy-data', () => events.push('precopy-data'));
  s.on('end', () => events.push('end'));
  s.on('error', () => events.push('error'));
  s.on('close', () => events.push('close'));
  await new Promise<void>((resolve) => {
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('close', () => resolve());
  });
  return { chunks, events };
}

/**
 * A PRE_COPY stream that read `available` bytes, found the temporary end and now idles in a 10 s
 * backoff (what retryNow() and holdReads() must cut short).
 */
async function idleInBackoff(available: number) {
  const session = new ScriptedSaving({ available, phase: 'PRE_COPY' });
  let empties = 0;
  session.onEmpty = () => {
    empties++;
  };
  const s = createSavingStream(session, { backoffMin: 10_000, backoffMax: 10_000 });
  const done = collect(s);
  while (empties < 1) await new Promise((r) => setTimeout(r, 5));
  return { session, s, done, empties: () => empties };
}

describe('SavingStream over a method-backed session', () => {
  it('reads STOP_COPY to its 0-byte end in chunks of chunkSize, bytes intact', async () => {
    const size = 3 * MiB + 12345;
    const session = new ScriptedSaving({ available: size });
    const s = createSavingStream(session, { chunkSize: 256 * 1024 });
    expect(s.path).toBe('method');
    expect(s.readableHighWaterMark).toBe(512 * 1024);
    const { chunks, events } = await collect(s);
    expect(events).toEqual(['end', 'close']);
    expect(chunks.every((c) => c.length <= 256 * 1024)).toBe(true);
    expect(s.bytesRead).toBe(size);
    expect(sha(...chunks)).toBe(sha(pattern(0, size)));
    expect(session.closed).toBe(false); // not ours unless autoClose
  });

  /**
   * Read `size` bytes of a scripted session through a recycling SavingStream of `chunk`-byte chunks,
   * handing each chunk to `onChunk` (which may keep or release it), and check the bytes read.
   */
  async function readRecycled(size: number, chunk: number, onChunk: (c: Buffer, s: ReturnType<typeof createSavingStream>) => void, opts: SavingStreamOptions = {}): Promise<void> {
    const s = createSavingStream(new ScriptedSaving({ available: size }), { chunkSize: chunk, recycle: true, ...opts });
    const parts: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        parts.push(Buffer.from(c));
        onChunk(c, s);
      });
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    expect(sha(...parts)).toBe(sha(pattern(0, size)));
  }

  it('sharedMemory: chunks are views of SharedArrayBuffers (a compression worker reads them in place), recycled the same way', async () => {
    const memories = new Set<ArrayBufferLike>();
    let n = 0;
    await readRecycled(
      8 * MiB,
      256 * 1024,
      (c, s) => {
        expect(c.buffer).toBeInstanceOf(SharedArrayBuffer);
        memories.add(c.buffer);
        if (n++ % 2 === 0) expect(s.release(c)).toBe(true);
      },
      { sharedMemory: true },
    );
    expect(memories.size).toBeLessThan(n);
  });

  it('release(): chunks given back are reused for later reads; chunks kept are never overwritten', async () => {
    const kept: Buffer[] = [];
    const keptCopies: Buffer[] = [];
    const memories = new Set<ArrayBufferLike>();
    let n = 0;
    await readRecycled(8 * MiB, 256 * 1024, (c, s) => {
      memories.add(c.buffer);
      // Keep every fifth chunk (never released): its bytes must survive the reuse of the others.
      if (n++ % 5 === 0) {
        kept.push(c);
        keptCopies.push(Buffer.from(c));
      } else {
        expect(s.release(c)).toBe(true);
      }
    });
    for (let i = 0; i < kept.length; i++) expect(kept[i].equals(keptCopies[i])).toBe(true);
    // 32 chunks; the kept ones need memory of their own, the released ones mostly recycle.
    expect(n).toBe(32);
    expect(memories.size).toBeLessThan(n);
    expect(memories.size).toBeGreaterThanOrEqual(kept.length);
  });

  it('readLimit: reads ask for that much, fill one chunk buffer piece by piece, recycle it once every piece is back; 0 restores whole chunks', async () => {
    // Six pieces, then two whole chunks (a short last read would be copied out, not lent).
    const size = 6 * 300 * 1024 + 2 * MiB;
    const session = new ScriptedSaving({ available: size });
    const asked: number[] = [];
    const inner = session.read.bind(session);
    session.read = (buf: Buffer) => {
      asked.push(buf.length);
      return inner(buf);
    };
    const s = createSavingStream(session, { chunkSize: MiB, recycle: true });
    expect(s.readLimit).toBe(0);
    expect(() => (s.readLimit = -1)).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    expect(() => (s.readLimit = 1.5)).toThrow(expect.objectContaining({ code: ErrorCodes.USAGE }));
    s.readLimit = MiB; // a chunk or more: whole chunks
    expect(s.readLimit).toBe(0);
    s.readLimit = 300 * 1024;
    const parts: Buffer[] = [];
    const chunks: Buffer[] = [];
    const pieceMemories: ArrayBufferLike[] = [];
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        parts.push(Buffer.from(c));
        chunks.push(c);
        if (s.readLimit > 0) {
          pieceMemories.push(c.buffer);
          // Three pieces of 300 KiB fit a 1 MiB chunk: then the limit goes.
          if (pieceMemories.length === 6) s.readLimit = 0;
        }
        // The first piece is kept until the end: its chunk buffer may not be reused meanwhile.
        if (chunks.length > 1) expect(s.release(c)).toBe(true);
      });
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    expect(sha(...parts)).toBe(sha(pattern(0, size)));
    expect(parts[0].equals(chunks[0])).toBe(true);
    // Six limited reads, then whole chunks (the reads ask for the whole chunk buffer again).
    expect(asked.slice(0, 6)).toEqual(Array(6).fill(300 * 1024));
    expect(asked[6]).toBe(MiB);
    expect(chunks.slice(0, 6).every((c) => c.length === 300 * 1024)).toBe(true);
    // Pieces 1-3 share one chunk buffer, 4-6 another (the first one's first piece is still out).
    expect(new Set(pieceMemories.slice(0, 3)).size).toBe(1);
    expect(new Set(pieceMemories.slice(3, 6)).size).toBe(1);
    expect(pieceMemories[3]).not.toBe(pieceMemories[0]);
    // The second piece chunk, all of it released, came back for a later whole read.
    expect(chunks.slice(6).some((c) => c.buffer === pieceMemories[3])).toBe(true);
    expect(chunks.slice(6).some((c) => c.buffer === pieceMemories[0])).toBe(false);
  });

  it('readLimit across PRE_COPY temporary ends, short and failed reads keeps every byte in order; a reset mid-piece is ENODEV', async () => {
    // 700 KiB in reads of at most 100_000 bytes (short pieces), a temporary end every 250 KiB, an
    // EAGAIN on the way: the pieces keep filling their chunk buffer behind what went downstream.
    const session = new ScriptedSaving({ available: 0, phase: 'PRE_COPY', maxRead: 100_000 });
    let fed = 0;
    session.onEmpty = () => {
      if (fed < 700 * 1024) {
        const n = Math.min(250 * 1024, 700 * 1024 - fed);
        session.add(n);
        fed += n;
      } else {
        session.phase = 'STOP_COPY';
      }
    };
    session.faults.push(errnoError('EAGAIN', 11));
    const s = createSavingStream(session, { chunkSize: MiB, recycle: true, backoffMin: 1, backoffMax: 2 });
    s.readLimit = 128 * 1024;
    const { chunks, events } = await collect(s);
    expect(events.at(-2)).toBe('end');
    expect(sha(...chunks)).toBe(sha(pattern(0, 700 * 1024)));
    expect(Math.max(...chunks.map((c) => c.length))).toBeLessThanOrEqual(100_000);
    // Pieces of one chunk buffer: far fewer buffers than chunks.
    expect(new Set(chunks.map((c) => c.buffer)).size).toBeLessThan(chunks.length / 3);

    const reset = new ScriptedSaving({ available: 4 * MiB });
    const r = createSavingStream(reset, { chunkSize: MiB });
    r.readLimit = 96 * 1024;
    let got = 0;
    r.on('data', (c: Buffer) => {
      expect(c.length).toBe(96 * 1024);
      got += c.length;
      if (got >= 5 * 96 * 1024) reset.disable();
    });
    const [err] = (await once(r, 'error')) as [MigError];
    expect(err.code).toBe('ENODEV');
    expect(r.bytesRead).toBeLessThan(4 * MiB);
  });

  /** Hold the first `burst` chunks, release them together, and count how many come back as later chunks. */
  async function burstReuse(chunk: number, burst: number): Promise<number> {
    const held: Buffer[] = [];
    const firstMemories = new Set<ArrayBufferLike>();
    let reused = 0;
    await readRecycled((2 * burst + 4) * chunk, chunk, (c, s) => {
      if (held.length < burst && firstMemories.size < burst) {
        held.push(c);
        firstMemories.add(c.buffer);
        return;
      }
      if (firstMemories.has(c.buffer)) reused++;
      if (held.length > 0) for (const h of held.splice(0)) expect(s.release(h)).toBe(true);
    });
    expect(firstMemories.size).toBe(burst);
    return reused;
  }

  it('release(): a burst of chunks given back at once (a socket\'s write callbacks) is kept for reuse, up to MAX_FREE_BYTES of them', async () => {
    expect(MAX_FREE_BYTES).toBe(32 * MiB);
    // Every one of twelve 64 KiB chunks released together comes back (with 4 kept, 4 did).
    expect(await burstReuse(64 * 1024, 12)).toBe(12);
    // Large chunks: 32 MiB of them (8 of 10 chunks of 4 MiB), but never fewer than 4 (4 of 5 of 16 MiB).
    expect(await burstReuse(4 * MiB, 10)).toBe(8);
    expect(await burstReuse(16 * MiB, 5)).toBe(4);
  });

  it('works with stream.pipeline and pump', async () => {
    const size = 2 * MiB + 7;
    const a = new ScriptedSaving({ available: size });
    const outA: Buffer[] = [];
    await pipeline(createSavingStream(a), new Writable({ write: (c: Buffer, _e, cb) => (outA.push(c), cb()) }));
    expect(sha(...outA)).toBe(sha(pattern(0, size)));

    const b = new ScriptedSaving({ available: size, maxRead: 100_000 });
    const outB: Buffer[] = [];
    await new Promise<void>((resolve, reject) =>
      pump(createSavingStream(b), new PassThrough(), new Writable({ write: (c: Buffer, _e, cb) => (outB.push(c), cb()) }), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    expect(sha(...outB)).toBe(sha(pattern(0, size)));
  });

  it('copies short reads out of the chunk buffer (a small chunk never pins a whole chunk buffer)', async () => {
    const session = new ScriptedSaving({ available: 1 * MiB, maxRead: 1000 });
    const { chunks } = await collect(createSavingStream(session, { chunkSize: 64 * 1024 }));
    expect(chunks.every((c) => c.length === 1000 || c.length === MiB % 1000)).toBe(true);
    expect(chunks.every((c) => c.buffer.byteLength < 64 * 1024)).toBe(true);
  });

  it('treats ENOMSG (recognised by number) as the PRE_COPY temporary end: one event per empty streak, then data, then the end', async () => {
    const session = new ScriptedSaving({ available: 100_000, phase: 'PRE_COPY' });
    let empties = 0;
    session.onEmpty = () => {
      empties++;
      // Streak 1 lasts 3 empty polls, then new dirty data; streak 2 lasts 2, then STOP_COPY.
      if (empties === 3) session.add(50_000);
      if (empties === 5) {
        session.phase = 'STOP_COPY';
        session.add(20_000);
      }
    };
    const s = createSavingStream(session, { backoffMin: 1, backoffMax: 4 });
    const payloads: unknown[] = [];
    s.on('precopy-empty', (ev) => payloads.push(ev));
    const { chunks, events } = await collect(s);
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'precopy-empty', 'precopy-data', 'end', 'close']);
    expect(payloads[0]).toEqual({ bytesRead: 100_000, initialBytes: 0, dirtyBytes: 0 });
    expect(payloads[1]).toEqual({ bytesRead: 150_000, initialBytes: 0, dirtyBytes: 0 });
    expect(sha(...chunks)).toBe(sha(pattern(0, 170_000)));
  });

  it('treats a 0 read while precopyInfo() still answers as a temporary end (mtty-like drivers)', async () => {
    const session = new ScriptedSaving({ available: 4096, phase: 'PRE_COPY', emptyMode: 'zero' });
    let empties = 0;
    session.onEmpty = () => {
      if (++empties === 4) {
        session.phase = 'STOP_COPY';
        session.add(4096);
      }
    };
    const { chunks, events } = await collect(createSavingStream(session, { backoffMin: 1, backoffMax: 2 }));
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'end', 'close']);
    expect(sha(...chunks)).toBe(sha(pattern(0, 8192)));
  });

  it('stopCopyEntered(): a 0 read from a read started after it is the end, without a precopyInfo() round trip', async () => {
    // A driver that shows PRE_COPY's temporary end as a 0 read: only precopyInfo() tells the two apart.
    const session = new ScriptedSaving({ available: 4096, phase: 'PRE_COPY', emptyMode: 'zero' });
    let asked = 0;
    const info = session.precopyInfo.bind(session);
    session.precopyInfo = () => {
      asked++;
      return info();
    };
    let empties = 0;
    session.onEmpty = () => void empties++;
    const s = createSavingStream(session, { backoffMin: 10_000, backoffMax: 10_000 });
    const done = collect(s);
    while (empties < 1) await new Promise((r) => setTimeout(r, 2));
    expect(asked).toBe(1); // the temporary end, asked
    // The caller moves the device to STOP_COPY (its stop-copy: 100 bytes) and says so.
    session.phase = 'STOP_COPY';
    session.add(100);
    s.stopCopyEntered();
    s.retryNow();
    const { chunks, events } = await done;
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'end', 'close']);
    expect(sha(...chunks)).toBe(sha(pattern(0, 4196)));
    expect(asked).toBe(1);
  });

  it('stopCopyEntered() leaves the 0 of a read already in flight to precopyInfo(): it may have started in PRE_COPY', async () => {
    const session = new ScriptedSaving({ available: 0, phase: 'PRE_COPY', emptyMode: 'zero' });
    let asked = 0;
    const info = session.precopyInfo.bind(session);
    session.precopyInfo = async () => {
      asked++;
      const answer = await info();
      // The in-flight read's 0 was a temporary end; now the device really enters STOP_COPY.
      session.phase = 'STOP_COPY';
      return answer;
    };
    session.hold = true;
    const s = createSavingStream(session, { backoffMin: 1, backoffMax: 2 });
    const empties: unknown[] = [];
    s.on('precopy-empty', (e) => empties.push(e));
    const done = collect(s);
    while (session.reads < 1) await new Promise((r) => setTimeout(r, 2));
    // The read in flight started in PRE_COPY; the call comes before its answer.
    s.stopCopyEntered();
    session.release();
    const { events } = await done;
    expect(events).toEqual(['precopy-empty', 'end', 'close']);
    expect(empties).toHaveLength(1);
    // Asked for the in-flight read's 0 only: the next reads' 0 ended the stream without asking.
    expect(asked).toBe(1);
  });

  it('backs off exponentially while empty, bounded by backoffMax, and resets on progress', async () => {
    const session = new ScriptedSaving({ available: 10, phase: 'PRE_COPY' });
    const stamps: number[] = [];
    session.onEmpty = () => {
      stamps.push(performance.now());
      if (stamps.length === 8) session.phase = 'STOP_COPY';
    };
    const s = createSavingStream(session, { backoffMin: 2, backoffMax: 16 });
    // The waits the stream asks for, exactly (the wall-clock gaps below only bound them from below:
    // under a loaded suite a timer fires late, and a first gap of 34 ms once beat the fourth's 17).
    const backoff = (s as unknown as { backoff: { next(): number } }).backoff;
    const next = backoff.next.bind(backoff);
    const waits: number[] = [];
    backoff.next = () => {
      const ms = next();
      waits.push(ms);
      return ms;
    };
    await collect(s);
    expect(waits.slice(0, 7)).toEqual([2, 4, 8, 16, 16, 16, 16]);
    const gaps = stamps.slice(1).map((t, i) => t - stamps[i]!);
    // Each gap at least its wait. A timer can look up to 1 ms early against performance.now():
    // libuv arms it from the loop's cached time, taken when the iteration began.
    gaps.forEach((g, i) => expect(g).toBeGreaterThanOrEqual(waits[i]! - 1));
    expect(Math.max(...gaps)).toBeLessThan(200);
  });

  it('retryNow() cuts a long backoff short when STOP_COPY data is known to be coming', async () => {
    // A backoff of 10 s: without retryNow() the STOP_COPY data would wait that long.
    const { session, s, done, empties } = await idleInBackoff(10);
    await new Promise((r) => setTimeout(r, 20));
    expect(empties()).toBe(1);
    session.phase = 'STOP_COPY';
    session.add(5000);
    const t0 = performance.now();
    s.retryNow();
    const { chunks, events } = await done;
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'end', 'close']);
    expect(sha(...chunks)).toBe(sha(pattern(0, 5010)));
  });

  it('a session whose reads resolve at once still lets timers and I/O run while the stream flows (the pull loop yields)', async () => {
    // 256 MiB of reads that never wait on I/O, consumed as fast as they come: without a turn of the
    // event loop between them, a timer set at the start would fire only after the end.
    const size = 256 * MiB;
    const session = new ScriptedSaving({ available: size });
    const s = createSavingStream(session, { chunkSize: MiB });
    let bytes = 0;
    let atTimer = -1;
    s.on('data', (c: Buffer) => (bytes += c.length));
    setTimeout(() => (atTimer = bytes), 0);
    await once(s, 'end');
    expect(bytes).toBe(size);
    expect(atTimer).toBeGreaterThanOrEqual(0);
    expect(atTimer).toBeLessThan(size);
  });

  it('holdReads(): no read starts until releaseReads(); the read in progress completes and what was read is still delivered', async () => {
    const size = 4 * MiB;
    const session = new ScriptedSaving({ available: size });
    const s = createSavingStream(session, { chunkSize: 256 * 1024 });
    const chunks: Buffer[] = [];
    // The first read stays pending in the session until session.release().
    session.hold = true;
    s.on('data', (c: Buffer) => chunks.push(c));
    while (session.reads < 1) await new Promise((r) => setTimeout(r, 1));
    const pending = session.reads;
    let settled = false;
    const held = s.holdReads().then(() => (settled = true));
    expect(s.readsHeld).toBe(true);
    await new Promise((r) => setTimeout(r, 5));
    expect(settled).toBe(false); // the session's read is still pending
    session.release();
    await held;
    // The pending read's bytes are delivered; no further read is made while held.
    const readsAtHold = session.reads;
    expect(readsAtHold).toBe(pending);
    await new Promise((r) => setTimeout(r, 30));
    expect(session.reads).toBe(readsAtHold);
    expect(s.readableLength).toBe(0);
    const delivered = chunks.reduce((n, c) => n + c.length, 0);
    expect(delivered).toBe(s.bytesRead);
    expect(delivered).toBe(256 * 1024);
    s.releaseReads();
    expect(s.readsHeld).toBe(false);
    await once(s, 'end');
    expect(sha(...chunks)).toBe(sha(pattern(0, size)));
  });

  it('holdReads() cuts a PRE_COPY empty wait short and settles; releaseReads() resumes polling and the data after it flows', async () => {
    // A 10 s backoff: a hold that waited for it would time the test out.
    const { session, s, done } = await idleInBackoff(1000);
    const t0 = performance.now();
    await s.holdReads();
    expect(performance.now() - t0).toBeLessThan(5000);
    const reads = session.reads;
    session.phase = 'STOP_COPY';
    session.add(3000);
    await new Promise((r) => setTimeout(r, 20));
    expect(session.reads).toBe(reads); // held: nothing read although data is there
    s.releaseReads();
    const { chunks, events } = await done;
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'end', 'close']);
    expect(sha(...chunks)).toBe(sha(pattern(0, 4000)));
  });

  it('holdReads() settles at once when no read is in flight, and when the stream is destroyed while a read hangs', async () => {
    const idle = createSavingStream(new ScriptedSaving({ available: 10 }));
    await idle.holdReads(); // never read: settles at once
    idle.releaseReads();
    await collect(idle);
    const session = new ScriptedSaving({ available: MiB });
    session.hold = true;
    const s = createSavingStream(session);
    s.resume();
    while (session.reads < 1) await new Promise((r) => setTimeout(r, 1));
    const held = s.holdReads();
    s.destroy();
    await held;
    session.release();
  });

  it('retries EAGAIN with backoff and reports each data read through onRead', async () => {
    const session = new ScriptedSaving({ available: 300_000, maxRead: 100_000 });
    session.faults.push(errnoError('EAGAIN', 11), errnoError('EAGAIN', 11));
    const reads: Array<[number, number]> = [];
    const { chunks, events } = await collect(createSavingStream(session, { onRead: (b, ms) => reads.push([b, ms]) }));
    expect(events).toEqual(['end', 'close']);
    expect(sha(...chunks)).toBe(sha(pattern(0, 300_000)));
    expect(reads.map((r) => r[0])).toEqual([100_000, 100_000, 100_000]);
    expect(reads.every((r) => r[1] >= 0)).toBe(true);
  });

  it('a reset mid-stream destroys the stream with a typed ENODEV, error before close', async () => {
    const session = new ScriptedSaving({ available: 10 * MiB, maxRead: 64 * 1024 });
    const s = createSavingStream(session, { chunkSize: 64 * 1024 });
    let got = 0;
    s.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= MiB && !session.disabled) session.disable();
    });
    const events: string[] = [];
    s.on('error', () => events.push('error'));
    s.on('close', () => events.push('close'));
    const closed = new Promise((r) => s.on('close', r));
    const [err] = (await once(s, 'error')) as [MigError];
    await closed;
    expect(err).toBeInstanceOf(MigError);
    expect(err.code).toBe('ENODEV');
    expect(err.errno).toBe(19);
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ENODEV');
    expect(events).toEqual(['error', 'close']);
    expect(s.bytesRead).toBeLessThan(10 * MiB);
  });

  it('a 0 read on a disabled session is ENODEV, not the end', async () => {
    const session = new ScriptedSaving({ available: 0 });
    session.disable();
    // ScriptedSaving.read would throw ENODEV; make it answer 0 like an fd at EOF instead.
    session.read = () => Promise.resolve(0);
    const s = createSavingStream(session);
    s.resume();
    const [err] = (await once(s, 'error')) as [MigError];
    expect(err.code).toBe('ENODEV');
  });

  it('any other error destroys the stream with its code and cause', async () => {
    const session = new ScriptedSaving({ available: MiB });
    const cause = errnoError('EIO', 5);
    session.faults.push(cause);
    const s = createSavingStream(session);
    s.resume();
    const [err] = (await once(s, 'error')) as [MigError];
    expect(err).toBeInstanceOf(MigError);
    expect(err.code).toBe('EIO');
    expect(err.cause).toBe(cause);
  });

  it('a slow consumer slows the session reads (bounded by highWaterMark)', async () => {
    const session = new ScriptedSaving({ available: 64 * MiB, maxRead: 64 * 1024 });
    const s = createSavingStream(session, { chunkSize: 64 * 1024, highWaterMark: 256 * 1024 });
    const sink = new Writable({
      highWaterMark: 64 * 1024,
      write: (_c: Buffer, _e, cb) => setTimeout(cb, 5),
    });
    s.pipe(sink);
    await new Promise((r) => setTimeout(r, 150));
    const consumed = session.offset - s.readableLength - sink.writableLength;
    // What was read but not consumed is within the two highWaterMarks plus one chunk in flight.
    expect(session.offset - consumed).toBeLessThanOrEqual(256 * 1024 + 64 * 1024 + 2 * 64 * 1024);
    expect(session.offset).toBeLessThan(8 * MiB);
    s.destroy();
    await once(s, 'close');
  });

  it('destroy() during a pending read closes at once; autoClose closes the session after the read settles', async () => {
    const session = new ScriptedSaving({ available: MiB });
    session.hold = true;
    const s = createSavingStream(session, { autoClose: true });
    s.resume();
    await new Promise((r) => setTimeout(r, 10));
    expect(session.reads).toBe(1);
    s.destroy();
    await once(s, 'close');
    expect(session.closed).toBe(false);
    session.release();
    await new Promise((r) => setTimeout(r, 5));
    expect(session.closed).toBe(true);
  });

  it('an AbortSignal destroys the stream with VFIO_MIG_ERR_ABORTED, also while polling an empty PRE_COPY', async () => {
    const session = new ScriptedSaving({ available: 0, phase: 'PRE_COPY' });
    const ac = new AbortController();
    const s = createSavingStream(session, { signal: ac.signal, backoffMin: 50, backoffMax: 1000 });
    s.resume();
    await once(s, 'precopy-empty');
    ac.abort();
    const [err] = (await once(s, 'error')) as [MigError];
    expect(err.code).toBe(ErrorCodes.ABORTED);
  });
});
