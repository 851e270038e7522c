/**
 * Helpers for the SimDevice tests: drive sessions the way the streams layer does (read until the
 * temporary or permanent end of stream, write with arbitrary segmentation).
 */
import { isErrno } from '../../src/fsm/errors.js';
import type { MigrationDriver, ResumingSession, SavingSession, Session } from '../../src/fsm/types.js';
import type { DeviceState } from '../../src/fsm/states.js';
import { transitionPath } from '../../src/fsm/path.js';
import { xorshift } from '../../src/devices/sim-pages.js';

export function saving(s: Session | null): SavingSession {
  if (!s || s.direction !== 'saving') throw new Error('expected a saving session');
  return s;
}

export function resuming(s: Session | null): ResumingSession {
  if (!s || s.direction !== 'resuming') throw new Error('expected a resuming session');
  return s;
}

/** Walk the kernel path to `target` one base arc at a time; returns the session the last arc opened. */
export async function goTo(dev: MigrationDriver, target: DeviceState): Promise<Session | null> {
  let session: Session | null = null;
  let cur = await dev.getState();
  for (const hop of transitionPath(cur, target, dev.flags)) {
    session = await dev.step(cur, hop);
    cur = hop;
  }
  return session;
}

/** xorshift PRNG for reproducible random splits: floats in [0, 1). */
export function rng(seed: number): () => number {
  const next = xorshift(seed);
  return () => next() / 0x100000000;
}

/**
 * Read the session until the PRE_COPY temporary end (ENOMSG or 0 when `zeroIsTemporary`) or the
 * STOP_COPY end (0); hands each chunk (a copy) to `sink`. Returns the bytes read.
 */
export async function drain(
  s: SavingSession,
  sink: (chunk: Buffer) => void | Promise<void>,
  opts: { chunk?: number; maxBytes?: number } = {},
): Promise<number> {
  const buf = Buffer.allocUnsafe(opts.chunk ?? 1 << 20);
  let total = 0;
  for (;;) {
    if (opts.maxBytes !== undefined && total >= opts.maxBytes) return total;
    let n: number;
    try {
      const want = opts.maxBytes === undefined ? buf.length : Math.min(buf.length, opts.maxBytes - total);
      n = await s.read(want === buf.length ? buf : buf.subarray(0, want));
    } catch (err) {
      if (isErrno(err, 'ENOMSG')) return total;
      throw err;
    }
    if (n === 0) return total;
    total += n;
    await sink(Buffer.from(buf.subarray(0, n)));
  }
}

/** Write `data` to the session in random pieces (1 byte up to `maxPiece`), looping on short writes. */
export async function writeRandomly(s: ResumingSession, data: Buffer, rand: () => number, maxPiece = 70000): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const piece = Math.max(1, Math.min(data.length - off, Math.floor(rand() * rand() * maxPiece)));
    let done = 0;
    while (done < piece) done += await s.write(data.subarray(off + done, off + piece));
    off += piece;
  }
}

/** Write all of `data`, looping on short writes. */
export async function writeAll(s: ResumingSession, data: Buffer): Promise<void> {
  let off = 0;
  while (off < data.length) off += await s.write(data.subarray(off));
}
