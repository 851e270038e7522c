/**
 * SavingStream: a saving session's bytes as a Readable of `chunkSize` chunks.
 *
 * Method-backed sessions are read through `session.read(buf)`; fd-backed ones (session.fd !== null)
 * through their fd only (epoll for pipes/FIFOs via a private reopen, fs.read otherwise), never
 * through `read`. The fd stays the session's: `session.close()` closes it, unless `autoClose` asks
 * this stream to close the session when it closes.
 *
 * End-of-stream rules (kernel uAPI, vfio.h "PRE_COPY ... temporary end of stream"):
 * - ENOMSG, or a 0 read while the session still answers precopyInfo() (mtty-like drivers return 0):
 *   PRE_COPY temporary end. Not the end: 'precopy-empty' once per empty streak, then poll with
 *   bounded exponential backoff; 'precopy-data' when bytes return.
 * - a 0 read when precopyInfo() is refused with EINVAL (STOP_COPY, or no PRE_COPY support): the end.
 * - EAGAIN: data not ready yet, retried with backoff.
 * - ENODEV (session disabled by a reset or by leaving the transfer state) and any other error:
 *   the stream is destroyed with a typed MigError (code kept, original as `cause`).
 * - fd-backed sessions served by a device host see EOF when the host disables the session: EOF
 *   then means ENODEV when the session says it is disabled.
 */
import { performance } from 'node:perf_hooks';
import { migError, isErrno, type MigError } from '../fsm/errors.js';
import type { PrecopyInfo, SavingSession } from '../fsm/types.js';
import { ChunkSource, type ChunkSourceOptions, type PullVerdict } from './chunk-source.js';
import { fdKind, isEpollKind, reopenFifo } from './fd-kind.js';
import { fdRead } from './fd-source.js';
import { ioError } from './retry.js';

export interface SavingStreamOptions extends ChunkSourceOptions {
  /** Close the session (session.close()) when this stream closes (default false: the caller owns it). */
  autoClose?: boolean;
}

/** Payload of 'precopy-empty'. */
export interface PrecopyEmptyEvent {
  bytesRead: number;
  initialBytes: number;
  dirtyBytes: number;
}

/** Payload of 'precopy-data'. */
export interface PrecopyDataEvent {
  bytesRead: number;
  /** Milliseconds the empty streak lasted. */
  emptyMs: number;
}

export class SavingStream extends ChunkSource {
  readonly session: SavingSession;
  /** 'method', 'epoll' or 'fs': how the session is read. */
  readonly path: 'method' | 'epoll' | 'fs';
  readonly #autoClose: boolean;
  /** Start time of the current PRE_COPY empty streak, or -1 outside one. */
  #emptySince: number;

  constructor(session: SavingSession, opts: SavingStreamOptions = {}) {
    super(opts);
    this.session = session;
    this.#autoClose = opts.autoClose ?? false;
    this.#emptySince = -1;
    const fd = session.fd;
    if (fd === null) {
      this.path = 'method';
      this.usePull((buf) => session.read(buf));
      return;
    }
    const kind = fdKind(fd);
    // The fd belongs to the session, so libuv must not get it (it would close it and set
    // O_NONBLOCK on the session's description): a pipe/FIFO is reopened privately for epoll.
    const own = isEpollKind(kind) && kind === 'fifo' ? reopenFifo(fd, 'r') : null;
    if (own !== null) {
      this.path = 'epoll';
      this.useSocket(own);
    } else {
      this.path = 'fs';
      this.usePull((buf) => fdRead(fd, buf));
    }
  }

  #disabledError(cause?: unknown): MigError {
    return migError('ENODEV', `saving session ${this.session.id} disabled (device reset or transfer state left)`, {
      cause,
      detail: { bytesRead: this.bytesRead },
    });
  }

  /** Enter (or stay in) a PRE_COPY empty streak; emits once per streak. */
  async #empty(info: PrecopyInfo | null): Promise<PullVerdict> {
    if (this.#emptySince >= 0) return 'retry';
    if (info === null) {
      try {
        info = await this.session.precopyInfo();
      } catch (err) {
        if (isErrno(err, 'ENODEV') || this.session.disabled) return this.#disabledError(err);
        // Counts are informational: an ENOMSG is authoritative even if the info query fails.
        info = { initialBytes: 0, dirtyBytes: 0, reinit: false };
      }
    }
    if (this.destroyed) return 'retry';
    this.#emptySince = performance.now();
    const ev: PrecopyEmptyEvent = {
      bytesRead: this.bytesRead,
      initialBytes: info.initialBytes,
      dirtyBytes: info.dirtyBytes,
    };
    this.emit('precopy-empty', ev);
    return 'retry';
  }

  protected override beforeDeliver(_bytes: number): void {
    if (this.#emptySince >= 0) {
      const ev: PrecopyDataEvent = { bytesRead: this.bytesRead, emptyMs: performance.now() - this.#emptySince };
      this.#emptySince = -1;
      this.emit('precopy-data', ev);
    }
  }

  protected override async onZeroRead(): Promise<PullVerdict> {
    if (this.session.disabled) return this.#disabledError();
    let info: PrecopyInfo;
    try {
      info = await this.session.precopyInfo();
    } catch (err) {
      if (isErrno(err, 'ENODEV') || this.session.disabled) return this.#disabledError(err);
      // precopyInfo is refused outside PRE_COPY: this 0 is STOP_COPY's end of stream.
      if (isErrno(err, 'EINVAL') || isErrno(err, 'ENOTTY') || isErrno(err, 'EOPNOTSUPP')) return 'end';
      return ioError(err, 'precopy info after a 0 read');
    }
    // Still in PRE_COPY: a driver that reports the temporary end as 0 (mtty, hisi, qat).
    return this.#empty(info);
  }

  protected override onPullError(err: unknown): Promise<PullVerdict> {
    if (isErrno(err, 'ENOMSG')) return this.#empty(null);
    if (isErrno(err, 'EAGAIN')) return Promise.resolve('retry');
    if (isErrno(err, 'ENODEV') || this.session.disabled) return Promise.resolve(this.#disabledError(err));
    return Promise.resolve(ioError(err, `read saving session ${this.session.id}`, { bytesRead: this.bytesRead }));
  }

  protected override async onSocketEnd(): Promise<MigError | null> {
    if (this.session.disabled) return this.#disabledError();
    // The host may have closed the FIFO before our view of the session learned of the reset: ask.
    try {
      await this.session.precopyInfo();
    } catch (err) {
      if (isErrno(err, 'ENODEV')) return this.#disabledError(err);
    }
    return this.session.disabled ? this.#disabledError() : null;
  }

  protected override mapSocketError(err: unknown): MigError {
    if (this.session.disabled) return this.#disabledError(err);
    return ioError(err, `read saving session ${this.session.id}`, { bytesRead: this.bytesRead });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#autoClose) {
      const pending = this.inflight;
      if (pending === null) this.session.close();
      else void pending.then(() => this.session.close());
    }
    super._destroy(err, cb);
  }
}

/** A Readable over a saving session (see SavingStream). Works with stream.pipeline and pump. */
export function createSavingStream(session: SavingSession, opts?: SavingStreamOptions): SavingStream {
  return new SavingStream(session, opts);
}
