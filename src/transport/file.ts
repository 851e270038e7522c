/**
 * file:PATH, a checkpoint: save a migration stream to a file, restore it later or elsewhere.
 *
 * connect() writes: the Duplex's writable side goes to a temporary file next to PATH (same
 * directory, so same filesystem), which is fsynced and renamed to PATH only when the stream ends
 * successfully. A failed or destroyed save leaves nothing under PATH (an older PATH stays intact).
 * PATH names a regular file or nothing (else USAGE: a device, FIFO, socket or directory is refused
 * before anything is written); a symbolic link is followed, and its target replaced.
 * Its readable side carries nothing and ends once the file is committed: a writer that waits for
 * its peer to close learns that the save is durable.
 *
 * listen() reads: accept() yields, once, a Duplex whose readable side is the file and whose
 * writable side (the destination's return path) is discarded.
 */
import { lstat, open, realpath, rename, unlink, type FileHandle } from 'node:fs/promises';
import { closeSync, fstatSync, open as openCb, type Stats } from 'node:fs';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { Duplex } from 'node:stream';
import type { TransportListener, TransportOptions, TransportPlugin } from './types.js';
import { connectError, streamError, usageError, withTypedErrors } from './errors.js';
import { QueueListener } from './listener.js';
import { PairDuplex, discardWrites } from './pair.js';
import { parseTransportUrl } from './url.js';
import { createFdSource } from '../streams/fd-source.js';

const openFd = (path: string): Promise<number> => promisify(openCb)(path, 'r');

const READ_CHUNK = 1024 * 1024;

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, null);
    off += bytesWritten;
  }
}

/** The writing side of a checkpoint: bytes to a temporary file, renamed into place at the end. */
export class CheckpointWriter extends Duplex {
  /** The final path and the temporary one written until commit. */
  readonly path: string;
  readonly tempPath: string;
  #fh: FileHandle | null;
  #committed: boolean;
  /** Bytes written to the file. */
  bytesWritten: number;

  constructor(fh: FileHandle, path: string, tempPath: string) {
    super({ allowHalfOpen: true });
    this.path = path;
    this.tempPath = tempPath;
    this.#fh = fh;
    this.#committed = false;
    this.bytesWritten = 0;
  }

  /** True once the file is complete under its final name. */
  get committed(): boolean {
    return this.#committed;
  }

  override _read(): void {
    // Nothing to read: the readable side ends when the file is committed (in _final).
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const fh = this.#fh;
    if (!fh) {
      cb(streamError(new Error('checkpoint file closed'), `file:${this.path}`));
      return;
    }
    writeAll(fh, chunk).then(() => {
      this.bytesWritten += chunk.length;
      cb();
    }, cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    const fh = this.#fh;
    if (!fh) {
      cb(streamError(new Error('checkpoint file closed'), `file:${this.path}`));
      return;
    }
    // One writev(2) for the batch (records are a header and a payload); slow path on a short write.
    const bufs = chunks.map((c) => c.chunk);
    const total = bufs.reduce((n, b) => n + b.length, 0);
    fh.writev(bufs)
      .then(async ({ bytesWritten }) => {
        let skip = bytesWritten;
        for (const b of bufs) {
          if (skip >= b.length) {
            skip -= b.length;
            continue;
          }
          await writeAll(fh, b.subarray(skip));
          skip = 0;
        }
        this.bytesWritten += total;
        cb();
      })
      .catch(cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    const fh = this.#fh;
    if (!fh) {
      cb(streamError(new Error('checkpoint file closed'), `file:${this.path}`));
      return;
    }
    (async () => {
      // Durable before visible: data on disk, then the name, then the directory entry.
      await fh.sync();
      this.#fh = null;
      await fh.close();
      await rename(this.tempPath, this.path);
      this.#committed = true;
      await syncDir(dirname(this.path));
    })().then(
      () => {
        this.push(null);
        cb();
      },
      (err: unknown) => cb(streamError(err, `file:${this.path}`)),
    );
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const fh = this.#fh;
    this.#fh = null;
    if (this.#committed) {
      cb(err);
      return;
    }
    // A save that did not finish leaves no file behind, under either name.
    (async () => {
      if (fh) await fh.close().catch(() => {});
      await unlink(this.tempPath).catch(() => {});
    })().then(() => cb(err));
  }
}

async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself is still atomic.
  }
}

function pathOf(url: string): string {
  const { address } = parseTransportUrl(url);
  return resolve(address);
}

/** What a non-regular file is, for an error message. */
function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Where a checkpoint of `url` goes: PATH, or the file a symbolic link at PATH names (the link stays
 * a link). The rename at commit replaces whatever has the name, so an existing PATH must be a
 * regular file: a device, a FIFO or a socket there was replaced by a regular file (`save` to
 * /dev/full "succeeded" and left /dev/full a file), a directory failed only at the end.
 */
async function checkpointPath(url: string): Promise<string> {
  let path = pathOf(url);
  let st: Stats;
  try {
    st = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return path;
    throw connectError(err, url, 'connect');
  }
  if (st.isSymbolicLink()) {
    try {
      path = await realpath(path);
    } catch (err) {
      throw usageError(`connect ${url}: a symbolic link to nothing (${(err as Error).message}); name the checkpoint's file itself`, { url });
    }
    st = await lstat(path);
  }
  if (!st.isFile()) {
    throw usageError(`connect ${url}: ${path} is ${kindOf(st)}; a checkpoint is written next to its name and renamed over it, so it must name a regular file or nothing (for a pipe, a socket or a device: fd:N)`, { url });
  }
  return path;
}

export const fileTransport: TransportPlugin = {
  scheme: 'file',
  async connect(url: string, opts: TransportOptions) {
    const path = await checkpointPath(url);
    const tempPath = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.part`);
    let fh: FileHandle;
    try {
      // 'wx': never clobber someone else's file that happens to have our temporary name.
      fh = await open(tempPath, 'wx', opts.mode ?? 0o600);
    } catch (err) {
      throw connectError(err, url, 'connect');
    }
    return withTypedErrors(new CheckpointWriter(fh, path, tempPath), url);
  },
  async listen(url: string, opts: TransportOptions): Promise<TransportListener> {
    const path = pathOf(url);
    let fd: number;
    try {
      fd = await openFd(path);
    } catch (err) {
      throw connectError(err, url, 'listen');
    }
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      throw usageError(`listen ${url}: not a regular file`, { url });
    }
    // FdSource reads the file in order (fs.read at the current position) into 1 MiB chunks, which a
    // RecordDecoder piped from the connection gives back (INPUT_RELEASE through PairDuplex): later
    // reads land in memory already mapped. createReadStream gave every read fresh memory.
    const reader = createFdSource(fd, { chunkSize: READ_CHUNK, recycle: true, autoClose: true });
    const conn = withTypedErrors(new PairDuplex(reader, discardWrites(), { highWaterMark: READ_CHUNK }), url);
    const listener = new QueueListener(url, path, async () => {}, { limit: 1, maxPending: opts.maxPending });
    listener.push(conn);
    return listener;
  },
};
