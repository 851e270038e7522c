/**
 * Fd providers of the device host, and the 'fifo' provider.
 *
 * A provider lives in the host child process. It turns one device session (method-backed: read()/
 * write()) into a path that the parent opens as a real non-seekable fd, and moves the bytes between
 * the two. The host child (host-child.ts) owns the device and the control channel; a provider only
 * serves bytes and reports how a stream ended through the hooks it is given.
 *
 * Contract for a provider (the 'fuse' provider of host-fuse.ts implements the same):
 * - `exportSaving(session, hooks)` / `exportResuming(session, hooks)` resolve an `ExportedSession`
 *   whose `path` the parent opens: O_RDONLY|O_NONBLOCK for saving, O_WRONLY|O_NONBLOCK for resuming
 *   (the provider must already hold whatever makes that open succeed at once, e.g. a FIFO's read end).
 * - `start()` is called once the parent holds its fd; bytes may move only from then on.
 * - The provider calls `hooks.settle(outcome)` when the stream ended ('eos': the STOP_COPY end of a
 *   saving session), the device session failed ('error', with the device's MigError), or the
 *   device said ENODEV ('disabled'). settle() resolves once the parent recorded the outcome, so an
 *   EOF the parent reads afterwards is unambiguous (a FIFO cannot say ENODEV). Saving providers
 *   close their end only after settle() resolved; resuming providers close at once, so a parent
 *   blocked in write(2) gets EPIPE instead of waiting on an ack it cannot send.
 * - `pending()` counts bytes taken from the device session that the parent cannot read yet (held
 *   by the provider), split like VFIO_MIG_GET_PRECOPY_INFO; the host adds them to the device's numbers.
 * - `drain()` (resuming) resolves once every byte the parent wrote before the call reached the device
 *   session, or rejects with the device's write error: the host runs it before RESUMING -> STOP,
 *   since a FIFO write returning in the parent only means the bytes sit in the pipe buffer.
 * - `wake()` cuts short a poll backoff (the device state changed, e.g. PRE_COPY -> STOP_COPY).
 * - `close()` stops moving bytes and releases the provider's end at once; idempotent.
 * - `FdProvider.close()` releases everything the provider made (temp files, mounts).
 * A provider is registered by kind in host-child.ts (`PROVIDERS`).
 */
import { execFile } from 'node:child_process';
import { constants as fsc, promises as fsp, readSync, openSync, closeSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { DeviceState } from '../fsm/states.js';
import { ErrorCodes, MigError, errnoName, isErrno, migError } from '../fsm/errors.js';
import type { PrecopyInfo, ResumingSession, SavingSession } from '../fsm/types.js';

export type FdKind = 'fifo' | 'fuse';

export type SessionOutcome =
  | { kind: 'eos' }
  | { kind: 'disabled' }
  | { kind: 'error'; error: MigError };

/** What the host gives a provider for one session. */
export interface SessionHooks {
  /** The device's state as the host knows it now (tracked across arcs and resets). */
  deviceState(): DeviceState;
  /** Report how the stream ended; resolves once the parent recorded it (or a bounded wait passed). */
  settle(outcome: SessionOutcome): Promise<void>;
}

export interface ExportedSession {
  /** Path the parent opens (O_RDONLY|O_NONBLOCK for saving, O_WRONLY|O_NONBLOCK for resuming). */
  readonly path: string;
  start(): void;
  pending(): Pick<PrecopyInfo, 'initialBytes' | 'dirtyBytes'>;
  drain(): Promise<void>;
  wake(): void;
  close(): void;
}

export interface FdProvider {
  readonly kind: FdKind;
  exportSaving(session: SavingSession, hooks: SessionHooks): Promise<ExportedSession>;
  exportResuming(session: ResumingSession, hooks: SessionHooks): Promise<ExportedSession>;
  close(): Promise<void>;
}

/** Options every provider receives. */
export interface FdProviderOptions {
  /** A private directory of this host (created and removed by the parent). */
  dir: string;
  /** Bytes per device read (saving) and per FIFO read (resuming). */
  chunkSize: number;
}

/** Poll backoff at a PRE_COPY temporary end or EAGAIN: bounded, reset on progress. */
const POLL_MIN_MS = 1;
const POLL_MAX_MS = 50;
/** Resuming: bytes per FIFO read buffer (a default pipe returns at most 64 KiB per read). */
const READ_SIZE = 256 << 10;

function mkfifo(path: string): Promise<void> {
  // Node has no mkfifo(3): coreutils does it; mode 0600 keeps other users out of the stream.
  return new Promise((resolve, reject) => {
    execFile('mkfifo', ['-m', '0600', path], (err) => {
      if (err) reject(migError(ErrorCodes.TRANSPORT, `mkfifo ${path} failed: ${err.message}`, { cause: err }));
      else resolve();
    });
  });
}

function asMigError(err: unknown, what: string): MigError {
  if (err instanceof MigError) return err;
  const code = errnoName(err) ?? 'EIO';
  return migError(code, `${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

function unlinkQuietly(path: string): void {
  fsp.unlink(path).catch(() => undefined);
}

/** A sleep that wake() can cut short. */
class Waiter {
  #timer: NodeJS.Timeout | null = null;
  #resolve: (() => void) | null = null;

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#resolve = resolve;
      this.#timer = setTimeout(() => this.wake(), ms);
    });
  }

  wake(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const r = this.#resolve;
    this.#resolve = null;
    r?.();
  }
}

const S_IDLE = 0;
const S_RUNNING = 1;
const S_CLOSED = 2;

/**
 * Saving: device session -> FIFO. The pump reads one chunk from the session, writes it to a
 * net.Socket on the FIFO's write end (epoll, non-blocking) and reads the next chunk only after the
 * write callback ran: at most one chunk plus the pipe buffer is ever in flight.
 */
class FifoSaving implements ExportedSession {
  readonly path: string;
  #session: SavingSession;
  #hooks: SessionHooks;
  #chunkSize: number;
  #state = S_IDLE;
  #sock: Socket | null = null;
  #waiter = new Waiter();
  /** The chunk taken from the device and not yet fully in the pipe, split by precopy class. */
  #current: { n: number; initial: number; dirty: number; handed: boolean } | null = null;
  #buf: Buffer | null = null;

  #onClose: () => void;

  constructor(path: string, session: SavingSession, hooks: SessionHooks, chunkSize: number, onClose: () => void) {
    this.path = path;
    this.#onClose = onClose;
    this.#session = session;
    this.#hooks = hooks;
    this.#chunkSize = chunkSize;
  }

  start(): void {
    if (this.#state !== S_IDLE) return;
    this.#state = S_RUNNING;
    let fd: number;
    try {
      // The parent already holds the read end, so a non-blocking open of the write end succeeds at once.
      fd = openSync(this.path, fsc.O_WRONLY | fsc.O_NONBLOCK);
    } catch (err) {
      void this.#settleThenClose({ kind: 'error', error: asMigError(err, 'open of the saving FIFO failed') });
      return;
    }
    // Both ends are open: the name is no longer needed, and no temp file outlives a crash.
    unlinkQuietly(this.path);
    const sock = new Socket({ fd, readable: false, writable: true });
    this.#sock = sock;
    // EPIPE: the parent closed its fd (it is done with the session); nothing more to do.
    sock.on('error', () => this.close());
    this.#pump().catch((err) => this.#settleThenClose({ kind: 'error', error: asMigError(err, 'saving pump failed') }));
  }

  pending(): { initialBytes: number; dirtyBytes: number } {
    const c = this.#current;
    if (!c) return { initialBytes: 0, dirtyBytes: 0 };
    // libuv's write queue holds the unwritten tail of the chunk (a live count); the chunk's
    // initial bytes come before its dirty bytes, so the tail is dirty first.
    const handle = (this.#sock as unknown as { _handle?: { writeQueueSize?: number } } | null)?._handle;
    const rest = c.handed ? Math.min(c.n, handle?.writeQueueSize ?? c.n) : c.n;
    const dirtyBytes = Math.min(rest, c.dirty);
    return { initialBytes: rest - dirtyBytes, dirtyBytes };
  }

  drain(): Promise<void> {
    return Promise.resolve();
  }

  wake(): void {
    this.#waiter.wake();
  }

  close(): void {
    if (this.#state === S_CLOSED) return;
    this.#state = S_CLOSED;
    this.#waiter.wake();
    this.#sock?.destroy();
    this.#sock = null;
    this.#current = null;
    unlinkQuietly(this.path);
    this.#onClose();
  }

  async #pump(): Promise<void> {
    let backoff = POLL_MIN_MS;
    while (this.#state === S_RUNNING) {
      // Which end a 0 means depends on the state the read started in: a read begun in PRE_COPY
      // that returns 0 is a temporary end even if STOP_COPY was entered meanwhile.
      const state = this.#hooks.deviceState();
      const precopy = state === DeviceState.PRE_COPY || state === DeviceState.PRE_COPY_P2P;
      let initialBefore = 0;
      if (precopy) {
        try {
          initialBefore = (await this.#session.precopyInfo()).initialBytes;
        } catch {
          // The state moved on between the two calls: count the bytes as dirty.
          initialBefore = 0;
        }
      }
      // One buffer for the whole session: the next read starts only after the previous chunk's
      // write callback, when libuv no longer needs it.
      const buf = (this.#buf ??= Buffer.allocUnsafe(this.#chunkSize));
      let n: number;
      try {
        n = await this.#session.read(buf);
      } catch (err) {
        if (this.#state !== S_RUNNING) return;
        // ENOMSG: PRE_COPY temporary end; EAGAIN: data not ready (slow firmware). Poll, bounded.
        if (isErrno(err, 'ENOMSG') || isErrno(err, 'EAGAIN')) {
          await this.#waiter.sleep(backoff);
          backoff = Math.min(backoff * 2, POLL_MAX_MS);
          continue;
        }
        if (isErrno(err, 'ENODEV')) return this.#settleThenClose({ kind: 'disabled' });
        return this.#settleThenClose({ kind: 'error', error: asMigError(err, 'device read failed') });
      }
      if (this.#state !== S_RUNNING) return;
      if (n === 0) {
        if (state === DeviceState.STOP_COPY) return this.#finish();
        // mtty/hisi/qat report the PRE_COPY temporary end as 0: keep the FIFO open and poll.
        await this.#waiter.sleep(backoff);
        backoff = Math.min(backoff * 2, POLL_MAX_MS);
        continue;
      }
      backoff = POLL_MIN_MS;
      const initial = precopy ? Math.min(n, initialBefore) : 0;
      const current = { n, initial, dirty: precopy ? n - initial : 0, handed: false };
      this.#current = current;
      const sock = this.#sock;
      if (!sock) return;
      await new Promise<void>((resolve) => {
        // The callback runs once every byte reached the pipe, or with EPIPE ('error' closes us).
        sock.write(buf.subarray(0, n), () => resolve());
        current.handed = true;
      });
      if (this.#current === current) this.#current = null;
    }
  }

  /** STOP_COPY end of stream: tell the parent it is a true end, then close so it reads EOF. */
  async #finish(): Promise<void> {
    await this.#hooks.settle({ kind: 'eos' });
    if (this.#state !== S_RUNNING) return;
    // Every chunk's write callback ran: nothing is queued, closing the fd is the EOF.
    this.close();
  }

  async #settleThenClose(outcome: SessionOutcome): Promise<void> {
    await this.#hooks.settle(outcome);
    this.close();
  }
}

/**
 * Resuming: FIFO -> device session. A net.Socket with `onread` reads the FIFO into fresh buffers
 * of at most READ_SIZE; reading stops while `chunkSize` bytes wait for the device (the byte cap of
 * this queue), so the pipe keeps flowing while the device writes, and partial device writes are
 * looped. A device write error stops the reading, is reported to the parent, and
 * the FIFO is closed so the parent's writes fail with EPIPE.
 */
class FifoResuming implements ExportedSession {
  readonly path: string;
  #session: ResumingSession;
  #hooks: SessionHooks;
  #chunkSize: number;
  #fd: number;
  #state = S_IDLE;
  #sock: Socket | null = null;
  #queue: Buffer[] = [];
  /** Bytes in #queue (its cap is chunkSize). */
  #queued = 0;
  /** Reading is stopped (cap reached, drain, or error); #maybeResume restarts it. */
  #stopped = false;
  #writing = false;
  #eof = false;
  #error: MigError | null = null;
  #idleWaiters: (() => void)[] = [];

  #onClose: () => void;

  constructor(path: string, fd: number, session: ResumingSession, hooks: SessionHooks, chunkSize: number, onClose: () => void) {
    this.path = path;
    this.#onClose = onClose;
    this.#fd = fd;
    this.#session = session;
    this.#hooks = hooks;
    this.#chunkSize = chunkSize;
  }

  start(): void {
    if (this.#state !== S_IDLE) return;
    this.#state = S_RUNNING;
    unlinkQuietly(this.path);
    // Reading starts only now: before the parent opened its write end, the FIFO would read EOF.
    const sock = new Socket({
      fd: this.#fd,
      readable: true,
      writable: false,
      onread: {
        // A fresh buffer per read, sized like a pipe read (64 KiB by default, more only if the
        // pipe was enlarged): queued chunks are still owned by the device's pending writes.
        buffer: () => Buffer.allocUnsafe(Math.min(this.#chunkSize, READ_SIZE)),
        callback: (n: number, buf: Uint8Array) => this.#onData(Buffer.from(buf.buffer, buf.byteOffset, n)),
      },
    } as ConstructorParameters<typeof Socket>[0]);
    this.#sock = sock;
    sock.on('end', () => {
      this.#eof = true;
      this.#checkIdle();
    });
    sock.on('error', (err) => this.#fail(asMigError(err, 'resuming FIFO read failed')));
  }

  pending(): { initialBytes: number; dirtyBytes: number } {
    return { initialBytes: 0, dirtyBytes: 0 };
  }

  /**
   * Everything the parent wrote before now is either in the pipe buffer or already delivered to
   * onread: stop the socket and read the pipe with non-blocking read(2) until it says EAGAIN (or
   * EOF), a queue's worth at a time, waiting for the device between rounds.
   */
  async drain(): Promise<void> {
    if (this.#error) throw this.#error;
    this.#sock?.pause();
    this.#stopped = true;
    for (;;) {
      let empty = this.#eof || this.#state !== S_RUNNING;
      try {
        while (!empty && this.#queued < this.#chunkSize) {
          const buf = Buffer.allocUnsafe(Math.min(this.#chunkSize, READ_SIZE));
          const n = readSync(this.#fd, buf, 0, buf.length, null);
          if (n === 0) {
            this.#eof = true;
            empty = true;
          } else {
            this.#queue.push(buf.subarray(0, n));
            this.#queued += n;
          }
        }
      } catch (err) {
        if (isErrno(err, 'EAGAIN')) empty = true;
        else this.#fail(asMigError(err, 'resuming FIFO read failed'));
      }
      if (this.#queue.length > 0) this.#kick();
      await new Promise<void>((resolve) => {
        this.#idleWaiters.push(resolve);
        this.#checkIdle();
      });
      if (this.#error) throw this.#error;
      if (empty || this.#state !== S_RUNNING) break;
    }
    this.#maybeResume();
  }

  wake(): void {}

  close(): void {
    if (this.#state === S_CLOSED) return;
    const started = this.#state === S_RUNNING;
    this.#state = S_CLOSED;
    this.#queue.length = 0;
    this.#queued = 0;
    if (this.#sock) this.#sock.destroy();
    else if (!started) closeSync(this.#fd);
    this.#sock = null;
    unlinkQuietly(this.path);
    this.#checkIdle();
    this.#onClose();
  }

  #onData(chunk: Buffer): boolean {
    if (this.#state !== S_RUNNING) return false;
    this.#queue.push(chunk);
    this.#queued += chunk.length;
    this.#kick();
    if (this.#queued < this.#chunkSize) return true;
    // false: stop reading until the device took enough (the queue's byte cap).
    this.#stopped = true;
    return false;
  }

  /** Read again once the queue is below its cap, unless a drain() is reading the pipe itself. */
  #maybeResume(): void {
    if (!this.#stopped || this.#state !== S_RUNNING || this.#eof || this.#error) return;
    if (this.#queued >= this.#chunkSize || this.#idleWaiters.length > 0) return;
    this.#stopped = false;
    this.#sock?.resume();
  }

  #kick(): void {
    if (this.#writing) return;
    this.#writing = true;
    this.#writeQueue().then(
      () => {
        this.#writing = false;
        this.#checkIdle();
        this.#maybeResume();
      },
      (err) => {
        this.#writing = false;
        this.#fail(asMigError(err, 'device write failed'));
      },
    );
  }

  async #writeQueue(): Promise<void> {
    while (this.#queue.length > 0 && this.#state === S_RUNNING) {
      let chunk = this.#queue[0];
      // A device may accept fewer bytes than given (like write(2)): loop over the rest.
      while (chunk.length > 0) {
        const n = await this.#session.write(chunk);
        if (this.#state !== S_RUNNING) return;
        chunk = chunk.subarray(n);
      }
      this.#queued -= (this.#queue.shift() as Buffer).length;
      this.#maybeResume();
    }
  }

  #checkIdle(): void {
    if (this.#writing && this.#state === S_RUNNING && !this.#error) return;
    if (this.#queue.length > 0 && this.#state === S_RUNNING && !this.#error) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  #fail(error: MigError): void {
    if (this.#error || this.#state === S_CLOSED) return;
    this.#error = error;
    this.#sock?.pause();
    const outcome: SessionOutcome = isErrno(error, 'ENODEV') ? { kind: 'disabled' } : { kind: 'error', error };
    // Tell the parent first (the notice is queued on the control channel before the FIFO closes),
    // but do not wait for its ack: a parent blocked in write(2) could not send one.
    void this.#hooks.settle(outcome);
    this.close();
  }
}

/** The 'fifo' provider: one named pipe per session in the host's private directory. */
export class FifoProvider implements FdProvider {
  readonly kind = 'fifo' as const;
  #opts: FdProviderOptions;
  #seq = 0;
  #exported = new Set<ExportedSession>();

  constructor(opts: FdProviderOptions) {
    this.#opts = opts;
  }

  async exportSaving(session: SavingSession, hooks: SessionHooks): Promise<ExportedSession> {
    const path = join(this.#opts.dir, `s${session.id}-${++this.#seq}.fifo`);
    await mkfifo(path);
    const e: ExportedSession = new FifoSaving(path, session, hooks, this.#opts.chunkSize, () => this.#exported.delete(e));
    this.#exported.add(e);
    return e;
  }

  async exportResuming(session: ResumingSession, hooks: SessionHooks): Promise<ExportedSession> {
    const path = join(this.#opts.dir, `r${session.id}-${++this.#seq}.fifo`);
    await mkfifo(path);
    // Open our read end now (a non-blocking open of a read end never waits for a writer), so the
    // parent's non-blocking open of the write end succeeds at once instead of failing ENXIO.
    const fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const e: ExportedSession = new FifoResuming(path, fd, session, hooks, this.#opts.chunkSize, () => this.#exported.delete(e));
    this.#exported.add(e);
    return e;
  }

  async close(): Promise<void> {
    for (const e of [...this.#exported]) e.close();
  }
}
