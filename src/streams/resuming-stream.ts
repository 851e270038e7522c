/**
 * ResumingStream: a Writable into a resuming session. Segmentation is free (the device sees one
 * ordered byte stream, however it is cut); order is kept because one write is in flight at a time.
 *
 * Method-backed sessions are written through `session.write(buf)`, looping over partial writes;
 * fd-backed ones only through their fd (epoll for pipes/FIFOs via a private reopen, fs.write
 * otherwise). The fd stays the session's unless `autoClose` asks this stream to close the session.
 *
 * Errors: ENODEV (session disabled by a reset or by leaving RESUMING), the driver's errno for bad
 * data (EINVAL, EFAULT, ENOMEM, EOPNOTSUPP) and every I/O failure destroy the stream with a typed
 * MigError (code kept, original as `cause`). On an fd, a disabled session shows as EPIPE: it
 * becomes ENODEV when the session says it is disabled.
 */
import { migError, isErrno, type MigError } from '../fsm/errors.js';
import type { ResumingSession } from '../fsm/types.js';
import { ChunkSink, type ChunkSinkOptions } from './chunk-sink.js';
import { fdKind, isEpollKind, reopenFifo } from './fd-kind.js';
import { tunePipe, type PipeCapacityOption } from './fd-tuning.js';
import { fdWrite } from './fd-sink.js';
import { ioError } from './retry.js';

export interface ResumingStreamOptions extends ChunkSinkOptions, PipeCapacityOption {
  /** Close the session (session.close()) when this stream closes (default false: the caller owns it). */
  autoClose?: boolean;
  /**
   * fd-backed sessions: how long an EPIPE waits for the session to report itself disabled before it
   * is reported as EPIPE (default 200 ms). A device host closes the fd and tells of the reset over
   * its control channel; the two race.
   */
  disableGraceMs?: number;
}

export class ResumingStream extends ChunkSink {
  readonly session: ResumingSession;
  readonly path: 'method' | 'epoll' | 'fs';
  readonly #autoClose: boolean;
  readonly #graceMs: number;

  constructor(session: ResumingSession, opts: ResumingStreamOptions = {}) {
    super(opts);
    this.session = session;
    this.#autoClose = opts.autoClose ?? false;
    this.#graceMs = opts.disableGraceMs ?? 200;
    const fd = session.fd;
    if (fd === null) {
      this.path = 'method';
      this.usePush((buf) => session.write(buf));
      return;
    }
    const kind = fdKind(fd);
    // A device's data fd that is a pipe or FIFO (a device host's) gets the larger window too.
    tunePipe(fd, kind, opts);
    // The fd is the session's: libuv gets a private reopen of a pipe/FIFO, never the fd itself.
    const own = isEpollKind(kind) && kind === 'fifo' ? reopenFifo(fd, 'w') : null;
    if (own !== null) {
      this.path = 'epoll';
      this.useSocket(own);
    } else {
      this.path = 'fs';
      this.usePush((buf) => fdWrite(fd, buf));
    }
  }

  protected override mapWriteError(err: unknown): MigError {
    if (isErrno(err, 'ENODEV') || this.session.disabled) {
      return migError('ENODEV', `resuming session ${this.session.id} disabled (device reset or RESUMING left)`, {
        cause: err,
        detail: { bytesWritten: this.bytesWritten },
      });
    }
    return ioError(err, `write resuming session ${this.session.id}`, { bytesWritten: this.bytesWritten });
  }

  protected override async settleWriteError(err: unknown): Promise<MigError> {
    if (isErrno(err, 'EPIPE') || isErrno(err, 'ECONNRESET')) {
      const until = Date.now() + this.#graceMs;
      while (!this.session.disabled && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    }
    return this.mapWriteError(err);
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

/** A Writable into a resuming session (see ResumingStream). Works with stream.pipeline and pump. */
export function createResumingStream(session: ResumingSession, opts?: ResumingStreamOptions): ResumingStream {
  return new ResumingStream(session, opts);
}
