/**
 * Read targets: how a consumer that assembles records tells the byte source feeding it where the
 * next bytes belong, so that the source reads them there and nothing copies them afterwards.
 *
 * A source that can read into caller-given memory (an accepted socket of the unix and tcp
 * transports, src/transport/net.ts `withChunkReads`) carries a function under `READ_TARGET`. A
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
