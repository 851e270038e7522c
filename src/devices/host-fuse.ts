/**
 * The device host's 'fuse' fd provider: each session becomes a file on a private FUSE mount served
 * by fuse-bridge.ts, so the parent holds an fd with the kernel data fd's semantics (ENOMSG at the
 * PRE_COPY temporary end, 0 forever at the STOP_COPY end, ENODEV once disabled, ESPIPE, EBADF),
 * where a FIFO can only say EOF. Precopy info, stop-copy size, arcs and reset stay on the host's
 * control channel; only bytes go through the file.
 *
 * Differences from the FIFO provider that the contract in host-fifo.ts allows for:
 * - no bytes are held here (a read is served from the device when the parent reads), so pending()
 *   is always zero and precopy info is exact;
 * - a write(2) on the resuming file returns only after the device took the bytes, and a device
 *   write error reaches the writer as its errno, so drain() only waits for a write in progress;
 * - the end of a stream is told by the file itself; settle() is still called so the parent's
 *   records match, but no read waits for its ack.
 */
import { ErrorCodes, MigError, errnoName, migError } from '../fsm/errors.js';
import type { PrecopyInfo, ResumingSession, SavingSession, Session } from '../fsm/types.js';
import { FuseBridge } from './fuse-bridge.js';
import type { FuseBridgeOptions, FuseEndKind, FuseSessionFile } from './fuse-bridge.js';
import type { ExportedSession, FdProvider, FdProviderOptions, SessionHooks } from './host-fifo.js';

function asMigError(err: unknown): MigError {
  if (err instanceof MigError) return err;
  return migError(errnoName(err) ?? 'EIO', `device session failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

class FuseExported implements ExportedSession {
  readonly path: string;
  #file: FuseSessionFile;

  constructor(file: FuseSessionFile) {
    this.#file = file;
    this.path = file.path;
  }

  start(): void {
    // The parent holds its fd: the name is no longer needed (the kernel's data fd never had one).
    void this.#file.unlink();
  }

  pending(): Pick<PrecopyInfo, 'initialBytes' | 'dirtyBytes'> {
    return { initialBytes: 0, dirtyBytes: 0 };
  }

  drain(): Promise<void> {
    return this.#file.idle();
  }

  wake(): void {
    this.#file.wake();
  }

  close(): void {
    this.#file.close();
  }
}

/** The 'fuse' provider: one FUSE mount per host, one file per session. */
export class FuseProvider implements FdProvider {
  readonly kind = 'fuse' as const;
  #bridgeOpts: FuseBridgeOptions;
  #bridge: Promise<FuseBridge> | null = null;
  #closed = false;

  constructor(_opts: FdProviderOptions, bridgeOpts: FuseBridgeOptions = {}) {
    // The mount gets its own temp directory (not the host's dir, which the parent removes
    // recursively): the server removes it when it exits, even after its owner died.
    this.#bridgeOpts = bridgeOpts;
  }

  #mount(): Promise<FuseBridge> {
    if (this.#closed) return Promise.reject(migError(ErrorCodes.USAGE, 'fuse provider is closed'));
    // Mounted on first use, so a host that never opens a session never mounts.
    this.#bridge ??= FuseBridge.start(this.#bridgeOpts);
    return this.#bridge;
  }

  async #export(session: Session, hooks: SessionHooks): Promise<ExportedSession> {
    const bridge = await this.#mount();
    const opts = {
      name: `${session.direction === 'saving' ? 's' : 'r'}${session.id}`,
      deviceState: hooks.deviceState,
      onEnd: (kind: FuseEndKind, error?: unknown): Promise<void> | void => {
        // The parent learns of the STOP_COPY end before its reader gets the 0 (host.ts reads an
        // EOF without a notice as a lost host).
        if (kind === 'eos') return hooks.settle({ kind });
        // The fd already says ENODEV or the device's errno; the notice keeps the parent's records
        // (and a failing RESUMING -> STOP) in step with the FIFO provider.
        if (kind === 'disabled') void hooks.settle({ kind });
        else void hooks.settle({ kind, error: asMigError(error) });
      },
    };
    const file =
      session.direction === 'saving'
        ? await bridge.exportSaving(session as SavingSession, opts)
        : await bridge.exportResuming(session as ResumingSession, opts);
    return new FuseExported(file);
  }

  exportSaving(session: SavingSession, hooks: SessionHooks): Promise<ExportedSession> {
    return this.#export(session, hooks);
  }

  exportResuming(session: ResumingSession, hooks: SessionHooks): Promise<ExportedSession> {
    return this.#export(session, hooks);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const b = this.#bridge;
    this.#bridge = null;
    if (b) await (await b.catch(() => null))?.close();
  }
}
