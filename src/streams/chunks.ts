/**
 * Iterate a byte Readable chunk by chunk, as its source pushed them.
 *
 * `for await (const c of readable)` reads in paused mode, and a paused byte stream's read() returns
 * everything buffered as one Buffer: with a SavingStream's two 1 MiB chunks buffered, the loop got
 * 2-3 MiB blocks, each a fresh copy (Buffer.concat) of every byte read, and the chunk buffers a
 * consumer meant to release were gone. Flowing mode hands over each pushed chunk as is; this
 * iterator takes one chunk per 'data' event and pauses the stream until the consumer asks for the
 * next.
 *
 * Same contract as the built-in iterator: an error or a close before 'end' (ERR_STREAM_PREMATURE_CLOSE)
 * is thrown from the loop; leaving the loop early (break, throw) destroys the stream.
 */
import { finished, type Readable } from 'node:stream';

export function chunksOf(stream: Readable): AsyncIterableIterator<Buffer> {
  const queue: Buffer[] = [];
  let ended = false;
  let error: unknown = null;
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (chunk: Buffer): void => {
    queue.push(chunk);
    stream.pause();
    notify();
  };
  stream.on('data', onData);
  const stopWatching = finished(stream, (err) => {
    if (err) error = err;
    else ended = true;
    notify();
  });
  const cleanup = (): void => {
    stream.off('data', onData);
    stopWatching();
  };

  const next = async (): Promise<IteratorResult<Buffer>> => {
    for (;;) {
      const chunk = queue.shift();
      if (chunk !== undefined) return { value: chunk, done: false };
      if (error !== null) {
        cleanup();
        throw error;
      }
      if (ended) {
        cleanup();
        return { value: undefined, done: true };
      }
      // Nothing buffered here: let the stream flow until its next chunk (or its end).
      if (stream.isPaused()) stream.resume();
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  const stop = (err?: unknown): IteratorResult<Buffer> => {
    cleanup();
    queue.length = 0;
    if (!ended && error === null && !stream.destroyed) stream.destroy(err instanceof Error ? err : undefined);
    return { value: undefined, done: true };
  };
  return {
    next,
    return: async () => stop(),
    throw: async (err?: unknown) => {
      stop(err);
      throw err;
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}
