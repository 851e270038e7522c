/**
 * Checkpoints: a device set's state saved to a stream (a file through the `file:` transport) and
 * restored later or elsewhere. The same record stream and control messages as a live migration, one
 * way: `save` stops the devices (P2P-ordered), streams their STOP_COPY data with their digests and
 * resumes them; `restore` loads it into fresh devices, validates each (RESUMING -> STOP), checks
 * each digest the file carries and runs them. A corrupt or truncated file fails with the decoder's
 * typed error (VFIO_MIG_ERR_CORRUPT, VFIO_MIG_ERR_TRUNCATED, VFIO_MIG_ERR_DIGEST) and the devices
 * are reset.
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import type { MigrationCore } from '../fsm/core.js';
import { listenTransport } from '../transport/index.js';
import type { TransportOptions } from '../transport/types.js';
import type { CompressionPool } from '../streams/compression-pool.js';
import { receive, type DestinationMigration } from './destination.js';
import { migrate, type SourceMigration } from './source.js';
import type { Compression } from './wire.js';

export interface SaveOptions {
  devices: readonly MigrationCore[];
  /** A Writable, or a URL (`file:PATH`, or any transport). */
  transport: Writable | Duplex | string;
  transportOptions?: TransportOptions;
  names?: readonly string[];
  compression?: Compression;
  /** migrate()'s `compressionMinSaving`: with compression, the share a frame must save, else the record goes raw. */
  compressionMinSaving?: number;
  acceptP2PRisk?: boolean;
  signal?: AbortSignal;
  stallTimeoutMs?: number;
}

export interface RestoreOptions {
  devices: readonly MigrationCore[];
  /** A Readable, or a URL (`file:PATH`: the first connection of listenTransport). */
  transport: Readable | Duplex | string;
  transportOptions?: TransportOptions;
  signal?: AbortSignal;
  stallTimeoutMs?: number;
  maxPayload?: number;
  /** receive()'s `decompressionPool`: compressed records decompress in its workers. */
  decompressionPool?: CompressionPool | null;
}

/** Save the devices' state; they are RUNNING again when `done` resolves (or fails). */
export function save(opts: SaveOptions): SourceMigration {
  return migrate({ ...opts, checkpoint: true, precopy: false });
}

/** Restore a saved state into `opts.devices`; they are RUNNING with it when `done` resolves, reset on failure. */
export function restore(opts: RestoreOptions): DestinationMigration {
  const t = opts.transport;
  const url = typeof t === 'string' ? t : null;
  return receive({
    devices: opts.devices,
    transport:
      url === null
        ? (t as Readable)
        : async () => {
            const l = await listenTransport(url, opts.transportOptions ?? {});
            try {
              return await l.accept();
            } finally {
              // Not awaited: a listener's close may wait for its accepted connection to end.
              void l.close();
            }
          },
    // The file is the stream to load: a bad header is the restore's error, not a stray connection.
    dropStrays: false,
    signal: opts.signal,
    stallTimeoutMs: opts.stallTimeoutMs,
    maxPayload: opts.maxPayload,
    decompressionPool: opts.decompressionPool,
  });
}
