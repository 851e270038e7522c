/**
 * Read targets: how a consumer that assembles records tells the byte source feeding it where the
 * next bytes belong, so that the source reads them there and nothing copies them afterwards.
 *
 * A source that can read into caller-given memory (an accepted socket of the unix and tcp
 * transports, src/transport/net.ts `withChunkReads`; FdSource on a pipe, FIFO or socket fd, through
 * ChunkSource's epoll path) carries a function under `READ_TARGET`, usually through `ReadTargets`. A
 * consumer piped from it (RecordDecoder, on its 'pipe' event) registers a provider there; before each
 * read the source asks it, with the number of bytes it has pushed so far:
 *
 * - a non-empty Buffer: read into it (at most its length) and push a view of what was read. The
 *   consumer recognises the memory and takes the bytes in place;
 * - a positive number: read at most that many bytes, into the source's own memory;
 * - null: read as usual.
 *
 * The provider answers from its own state, which is only current when every pushed byte has
 * reached it; it compares the count it was given with what it received and returns null otherwise
 * (bytes in flight in the source's readable buffer or its own writable buffer). The answer binds for
 * exactly one read. Unregistering passes null.
 *
 * Input release, the other direction: a source that reuses its memory once the consumer is done
 * with it (ChunkSource with `recycle`) carries a function under `INPUT_RELEASE`. A consumer piped
 * from it that knows when it no longer needs a chunk it was written (RecordDecoder: every byte
 * parsed, no payload handed out as a view of it still held, no frame of it still in a worker)
 * gives that exact chunk back through it, and the source reads later bytes into the same memory
 * instead of fresh pages.
 */

/** The key under which a source offers read targets: `source[READ_TARGET](provider | null)`. */
export const READ_TARGET: unique symbol = Symbol.for('vfio-mig.readTarget');

/** A consumer's answer before a read (see the module comment). */
export type ReadTargetProvider = (pushedBytes: number) => Buffer | number | null;

/** The function a source carries under READ_TARGET. */
export type ReadTargetHook = (provider: ReadTargetProvider | null) => void;

/** The source's hook when `source` offers read targets, else null. */
export function readTargetHook(source: unknown): ReadTargetHook | null {
  const hook = (source as { [READ_TARGET]?: unknown } | null)?.[READ_TARGET];
  return typeof hook === 'function' ? (hook as ReadTargetHook).bind(source) : null;
}

/** The key under which a source takes back chunks it pushed: `source[INPUT_RELEASE](chunk)`. */
export const INPUT_RELEASE: unique symbol = Symbol.for('vfio-mig.inputRelease');

/** The function a source carries under INPUT_RELEASE: true when it took the chunk back. */
export type InputReleaseHook = (chunk: Buffer) => boolean;

/** The source's input release function when `source` offers one, else null. */
export function inputReleaseHook(source: unknown): InputReleaseHook | null {
  const hook = (source as { [INPUT_RELEASE]?: unknown } | null)?.[INPUT_RELEASE];
  return typeof hook === 'function' ? (hook as InputReleaseHook).bind(source) : null;
}

/** A source's first read, asked for before any consumer could be piped, is kept to this much. */
export const FIRST_READ_BYTES = 64 * 1024;

/**
 * The source side, for a source that reads through an `onread` buffer function (an accepted socket,
 * ChunkSource's epoll path): it carries `hook` under READ_TARGET, calls `ask()` for each read's
 * buffer and `took()` in the read's callback. Node asks for the first buffer when the socket is
 * made, before a consumer can be piped, so that read is kept to FIRST_READ_BYTES: a whole chunk of
 * payload would otherwise land in the source's memory.
 */
export class ReadTargets {
  #provider: ReadTargetProvider | null = null;
  #target: Buffer | null = null;
  #first = true;

  /** What the source carries under READ_TARGET. */
  readonly hook: ReadTargetHook = (provider) => {
    this.#provider = provider;
  };

  /** A consumer is registered (the source should push each read at once, so the next can ask). */
  get active(): boolean {
    return this.#provider !== null;
  }

  /**
   * Before a read: the consumer's buffer to read into, or the most bytes to read into the source's
   * own memory (0: no limit). `settled`: everything read so far has been pushed (`pushed` counts it);
   * otherwise the consumer is not asked, as its answer would not see those bytes.
   */
  ask(pushed: number, settled: boolean): Buffer | number {
    this.#target = null;
    let limit = 0;
    if (this.#provider !== null && settled) {
      const want = this.#provider(pushed);
      if (want !== null && typeof want !== 'number' && want.length > 0) {
        this.#target = want;
        return want;
      }
      if (typeof want === 'number' && want > 0) limit = want;
    }
    if (this.#first) {
      this.#first = false;
      if (limit === 0) limit = FIRST_READ_BYTES;
    }
    return limit;
  }

  /** In the read's callback: the view of the consumer's buffer it read `n` bytes into, or null (the source's own memory). */
  took(n: number): Buffer | null {
    const t = this.#target;
    if (t === null) return null;
    this.#target = null;
    return t.subarray(0, n);
  }
}
