/**
 * warmUp(): one rehearsal migration inside this process, so that the code a migration runs inside
 * its downtime is compiled before a real migration needs it.
 *
 * V8 compiles a function the first time it runs, and a process runs its switchover path (stop the
 * devices, read the stop-copy data, DEVICE_END, digest and commit; on the destination the commit,
 * RESUMING -> STOP, the digest check and the resume) exactly once per migration: in a fresh process
 * it runs cold, inside the downtime. bench/warm-up.mjs (a 64 MiB SimDevice under a 200 MB/s cap,
 * each side a fresh process): median downtime 5.4-6.7 ms cold, 2.6-2.9 ms with both sides warmed;
 * with one side warmed, 3.9-4.9 ms (docs/PERFORMANCE.md, first-downtime-*).
 *
 * The rehearsal moves two MttyDevices (the kernel's mtty sample driver: 60 bytes of state, PRE_COPY
 * and P2P) from a migrate() to a receive() in this process over an abstract unix socket, under the
 * default policy. It touches none of the caller's devices, sockets or files, emits nothing on any
 * migration object, and does not throw: the result says whether it ran (only a bad `compression`
 * throws, VFIO_MIG_ERR_USAGE). With `compression` the rehearsal compresses, and the process's
 * shared compression workers are booted before it resolves: migrate() would otherwise boot them
 * at its first PRE_COPY reads (tens of ms of CPU per worker, while its early verdicts form).
 * Once per process: later calls share the first call's promise (a plain call is answered by a
 * compressed rehearsal too). Call it when a process starts (an agent), or while it waits anyway: a
 * destination waiting for its source, a source waiting for its connection.
 */
import { randomBytes } from 'node:crypto';
import { MttyDevice } from '../devices/mtty-device.js';
import { ErrorCodes, MigError, migError } from '../fsm/errors.js';
import { MigrationCore } from '../fsm/core.js';
import { sharedCompressionPool } from '../streams/compression-pool.js';
import { listenTransport } from '../transport/registry.js';
import { receive } from './destination.js';
import { migrate } from './source.js';
import { parseCompression, type Compression } from './wire.js';

export interface WarmUpResult {
  /** The rehearsal migration completed (its devices verified). */
  ok: boolean;
  /** Its duration, ms. */
  ms: number;
  /** Why it did not complete (the process may lack abstract unix sockets, for instance). */
  error?: MigError;
}

/** A rehearsal that takes longer than this is stopped (it takes ~40-60 ms cold on two cores). */
const REHEARSAL_TIMEOUT_MS = 10_000;

export interface WarmUpOptions {
  /** Rehearse with this compression (as migrate() takes it) and boot the compression workers. Default 'none'. */
  compression?: Compression;
}

/** The rehearsals run so far: without and with compression. */
const rehearsals: { plain: Promise<WarmUpResult> | null; compressed: Promise<WarmUpResult> | null } = { plain: null, compressed: null };

/** Run the rehearsal once per process (and once more for compression); later calls share its result. */
export function warmUp(opts: WarmUpOptions = {}): Promise<WarmUpResult> {
  const level = parseCompression(opts.compression ?? 'none');
  if (level === false) {
    rehearsals.plain ??= rehearsals.compressed ?? rehearse(false);
    return rehearsals.plain;
  }
  rehearsals.compressed ??= rehearse(level);
  return rehearsals.compressed;
}

async function rehearse(level: number | false): Promise<WarmUpResult> {
  const t0 = performance.now();
  const url = `unix:@vfio-mig-warm-up-${process.pid}-${randomBytes(6).toString('hex')}`;
  const signal = AbortSignal.timeout(REHEARSAL_TIMEOUT_MS);
  const source = new MttyDevice();
  const dest = new MttyDevice();
  let listener: Awaited<ReturnType<typeof listenTransport>> | null = null;
  try {
    listener = await listenTransport(url, { signal });
    const l = listener;
    const common = { signal, stallTimeoutMs: REHEARSAL_TIMEOUT_MS };
    const received = receive({ ...common, devices: [new MigrationCore(dest)], transport: () => l.accept({ signal }) });
    const compression = level === false ? 'none' : { zstd: level };
    const sent = migrate({ ...common, devices: [new MigrationCore(source)], transport: url, downtimeLimitMs: 1000, compression });
    // Both settle before the listener closes; the first failure is the one reported.
    const [r, s] = await Promise.allSettled([received.done, sent.done]);
    if (s.status === 'rejected') throw s.reason;
    if (r.status === 'rejected') throw r.reason;
    if (!s.value.verified || !r.value.verified) throw migError(ErrorCodes.DIGEST, 'warm-up: the rehearsal device state did not verify');
    // migrate() started the workers' boot without waiting for it; the caller's migration should not.
    if (level !== false) await sharedCompressionPool().warm();
    return { ok: true, ms: performance.now() - t0 };
  } catch (err) {
    const error = err instanceof MigError ? err : migError('EIO', `warm-up: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    return { ok: false, ms: performance.now() - t0, error };
  } finally {
    await listener?.close().catch(() => {});
  }
}
