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
 *   After stopCopyEntered() (the caller moved the device to STOP_COPY), a 0 read of a read started
 *   since is the end at once: the question is not asked inside the downtime.
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
import { tunePipe, type PipeCapacityOption } from './fd-tuning.js';
import { fdRead } from './fd-source.js';
import { ioError } from './retry.js';

/** First idle-probe period on the epoll path. */
const PROBE_MIN_MS = 10;

export interface SavingStreamOptions extends ChunkSourceOptions, PipeCapacityOption {
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
  /** Epoll path: idle-probe period in ms (-1: not probing), its timer, bytesRead at the last look. */
  #probeDelay: number;
  #probeTimer: NodeJS.Timeout | null;
  #probeBytes: number;
  /** Reads started (the pull path), and how many had started when stopCopyEntered() was called (-1: not yet). */
  #pulls: number;
  #stopCopyAfter: number;

  constructor(session: SavingSession, opts: SavingStreamOptions = {}) {
    super(opts);
    this.session = session;
    this.#autoClose = opts.autoClose ?? false;
    this.#emptySince = -1;
    this.#probeDelay = -1;
    this.#probeTimer = null;
    this.#probeBytes = 0;
    this.#pulls = 0;
    this.#stopCopyAfter = -1;
    const fd = session.fd;
    if (fd === null) {
      this.path = 'method';
      this.usePull(this.#counted((buf) => session.read(buf)));
      return;
    }
    const kind = fdKind(fd);
    // A device's data fd that is a pipe or FIFO (a device host's) gets the larger window too.
    tunePipe(fd, kind, opts);
    // The fd belongs to the session, so libuv must not get it (it would close it and set
    // O_NONBLOCK on the session's description): a pipe/FIFO is reopened privately for epoll.
    const own = isEpollKind(kind) && kind === 'fifo' ? reopenFifo(fd, 'r') : null;
    if (own !== null) {
      this.path = 'epoll';
      this.useSocket(own);
      this.#probeDelay = PROBE_MIN_MS;
      this.#armProbe();
    } else {
      this.path = 'fs';
      this.usePull(this.#counted((buf) => fdRead(fd, buf)));
    }
  }

  /** `read`, counting the reads started (stopCopyEntered() tells reads after it from those before). */
  #counted(read: (buf: Buffer) => Promise<number>): (buf: Buffer) => Promise<number> {
    return (buf) => {
      this.#pulls++;
      return read(buf);
    };
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

  /**
   * The caller moved this session's device to STOP_COPY: a 0 read from a read started after this
   * call is the end of stream (the uAPI's rule in STOP_COPY), without asking precopyInfo() first
   * inside the downtime (an ioctl on a kernel device, a round trip to a device host serving its
   * file over FUSE, a call into an in-process device). A read already in flight may have started in
   * PRE_COPY, where a 0 is the temporary end: its 0 is still checked. The epoll path is unchanged
   * (its EOF already means the end; the round trip there lets a reset's notice arrive first).
   */
  stopCopyEntered(): void {
    if (this.#stopCopyAfter < 0) this.#stopCopyAfter = this.#pulls;
  }

  protected override async onZeroRead(): Promise<PullVerdict> {
    if (this.session.disabled) return this.#disabledError();
    if (this.#stopCopyAfter >= 0 && this.#pulls > this.#stopCopyAfter) return 'end';
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
    // Stop probing first: the stream is ending either way.
    this.#stopProbe();
    if (this.session.disabled) return this.#disabledError();
    // The host may close the FIFO before our view of the session learned why: a control-channel
    // round trip (precopyInfo) lets every notice sent before the close arrive first.
    try {
      await this.session.precopyInfo();
    } catch (err) {
      if (isErrno(err, 'ENODEV')) return this.#disabledError(err);
    }
    // A device host's session says what its EOF means (null: the STOP_COPY end).
    const eofError = (this.session as { eofError?: () => MigError | null }).eofError;
    if (typeof eofError === 'function') {
      const e = eofError.call(this.session);
      return e === null ? null : e.code === 'ENODEV' ? this.#disabledError(e) : e;
    }
    return this.session.disabled ? this.#disabledError() : null;
  }

  /**
   * A FIFO shows PRE_COPY's temporary end as silence, not ENOMSG. While the epoll path waits for
   * data and none came for a whole probe period, ask precopyInfo(): nothing pending means an empty
   * streak ('precopy-empty'). Periods double up to backoffMax while idle; STOP_COPY (EINVAL) or a
   * disabled session stop the probing. One timer, no per-chunk cost.
   */
  #armProbe(): void {
    if (this.#probeDelay < 0 || this.destroyed) return;
    this.#probeTimer = setTimeout(this.#onProbe, this.#probeDelay);
    this.#probeTimer.unref();
  }

  #stopProbe(): void {
    this.#probeDelay = -1;
    if (this.#probeTimer !== null) clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
  }

  readonly #onProbe = (): void => {
    this.#probeTimer = null;
    if (this.#probeDelay < 0 || this.destroyed) return;
    if (this.bytesRead !== this.#probeBytes || !this.awaitingData || this.#emptySince >= 0) {
      this.#probeBytes = this.bytesRead;
      this.#probeDelay = this.backoff.min > 0 ? Math.max(PROBE_MIN_MS, this.backoff.min) : PROBE_MIN_MS;
      this.#armProbe();
      return;
    }
    const seen = this.bytesRead;
    this.session.precopyInfo().then(
      (info) => {
        if (this.#probeDelay < 0 || this.destroyed) return;
        if (this.bytesRead === seen && this.#emptySince < 0 && info.initialBytes === 0 && info.dirtyBytes === 0) {
          void this.#empty(info);
        }
        this.#probeDelay = Math.min(this.backoff.max, this.#probeDelay * 2);
        this.#armProbe();
      },
      // EINVAL: not PRE_COPY (STOP_COPY has a real end); ENODEV: the EOF that follows reports it.
      () => this.#stopProbe(),
    );
  };

  protected override mapSocketError(err: unknown): MigError {
    if (this.session.disabled) return this.#disabledError(err);
    return ioError(err, `read saving session ${this.session.id}`, { bytesRead: this.bytesRead });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#stopProbe();
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
