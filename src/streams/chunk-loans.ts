/**
 * ChunkLoans: the chunk buffers a byte source reads into, lent downstream in views and taken back
 * once the consumer has released every view of one, so that later reads land in memory already
 * mapped (fresh memory costs a page fault per 4 KiB on first touch; on some VMs reading into fresh
 * chunks runs at half the speed of reading into reused ones, docs/PERFORMANCE.md).
 *
 * Shared by ChunkSource (with its `recycle` option) and the transports' accepted sockets
 * (src/transport/net.ts), whose consumer, a RecordDecoder, gives chunks back through INPUT_RELEASE
 * (read-target.ts). Until track() nothing is recorded: weak tables keyed by every chunk's memory
 * delay its reclaim to a full GC, so only a source whose consumer gives chunks back pays for them.
 */

/** A chunk buffer lent out in views. */
interface Loan {
  buf: Buffer;
  /** Views handed out. */
  out: number;
  /** Views given back. */
  back: number;
  /** More views of it may still be handed out. */
  filling: boolean;
}

/**
 * Released memory kept for reuse, bytes (and at least MIN_FREE_CHUNKS buffers); beyond that,
 * released memory goes back to the allocator. Releases come in bursts (a socket completes several
 * writes at once), so the list must hold a burst: with 4 chunks of 1 MiB, a 1 GiB e2e source dropped
 * 730 of 1026 releases and read into fresh memory for 728 chunks (a page fault per 4 KiB); with 16
 * the source's system time fell from 0.52-0.74 s to 0.18-0.32 s per GiB. With 16 MiB a 1 GiB e2e
 * source still read into 48-75 fresh chunks, the pipeline behind it (encoder 16 MiB, socket buffer
 * 8 MiB) returning more at once than the list kept; with 32 MiB, 23 (its depth, once), and a lower
 * peak RSS (137 against 170 MiB for 4 GiB). A byte bound, so that a large chunkSize does not keep
 * 32 large chunks. RecordDecoder's released payloads follow the same bound.
 */
export const MAX_FREE_BYTES = 32 * 1024 * 1024;
export const MIN_FREE_CHUNKS = 4;

export class ChunkLoans {
  readonly chunkSize: number;
  readonly #shared: boolean;
  /** Chunk buffers lent out in views, by backing memory (null until track()). */
  #lent: WeakMap<ArrayBufferLike, Loan> | null;
  /** Views handed out and not yet released (a view is released once). */
  #views: WeakSet<Buffer> | null;
  /** Released whole chunk buffers, reused before any new allocation (at most #maxFree). */
  #free: Buffer[];
  readonly #maxFree: number;
  #closed: boolean;

  /** `shared`: new chunks are SharedArrayBuffer views. `track`: record loans from the start. */
  constructor(chunkSize: number, opts: { shared?: boolean; track?: boolean } = {}) {
    this.chunkSize = chunkSize;
    this.#shared = opts.shared === true;
    this.#lent = null;
    this.#views = null;
    this.#free = [];
    this.#maxFree = Math.max(MIN_FREE_CHUNKS, Math.floor(MAX_FREE_BYTES / chunkSize));
    this.#closed = false;
    if (opts.track === true) this.track();
  }

  /** Record loans from now on (views lent before stay untracked: release() refuses them). */
  track(): void {
    this.#lent ??= new WeakMap();
    this.#views ??= new WeakSet();
  }

  get tracking(): boolean {
    return this.#lent !== null;
  }

  /** A chunk to read into: a released one when there is one, else new memory. */
  newChunk(): Buffer {
    const free = this.#free.pop();
    if (free !== undefined) return free;
    return this.#shared ? Buffer.from(new SharedArrayBuffer(this.chunkSize)) : Buffer.allocUnsafeSlow(this.chunkSize);
  }

  /** `view` of chunk buffer `buf` goes downstream; `filling`: more views of it may follow. */
  lend(buf: Buffer, view: Buffer, filling: boolean): void {
    if (this.#lent === null || this.#views === null) return;
    let loan = this.#lent.get(buf.buffer);
    if (loan === undefined) {
      loan = { buf, out: 0, back: 0, filling };
      this.#lent.set(buf.buffer, loan);
    }
    loan.out++;
    loan.filling = filling;
    this.#views.add(view);
  }

  /** No more views of `buf` will be lent. */
  retire(buf: Buffer): void {
    const loan = this.#lent?.get(buf.buffer);
    if (loan === undefined) return;
    loan.filling = false;
    this.#recycle(loan);
  }

  /**
   * Take back a view lent out: its chunk buffer is reused once every view of it came back and
   * none can follow. False (and nothing done) for a buffer not lent here or already released.
   */
  release(view: Buffer): boolean {
    if (this.#views === null || this.#lent === null || !this.#views.has(view)) return false;
    this.#views.delete(view);
    const loan = this.#lent.get(view.buffer);
    if (loan === undefined) return false;
    loan.back++;
    this.#recycle(loan);
    return true;
  }

  /** Drop the free list; chunks released from now on go back to the allocator. */
  close(): void {
    this.#closed = true;
    this.#free.length = 0;
  }

  #recycle(loan: Loan): void {
    if (loan.filling || loan.back < loan.out) return;
    this.#lent?.delete(loan.buf.buffer);
    if (!this.#closed && this.#free.length < this.#maxFree && loan.buf.length === this.chunkSize) this.#free.push(loan.buf);
  }
}
