/**
 * When migrate() boots its compression workers: after the fixed costs the prediction starts from
 * are timed (the destination's setup arcs, the calibration pings, the arcs into PRE_COPY), not
 * during them. Booting two workers takes 60-70 ms of CPU each; on two cores it slowed the
 * destination's setup arcs to 7-16 ms against a 1 ms validation, and dirty-none switchovers with
 * zstd were predicted 2-3 x too long. Its own file: the pool is per process, and no other
 * migration may have booted it first.
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { sharedCompressionPool } from '../../src/streams/compression-pool.js';
import { listenTransport } from '../../src/transport/index.js';
import { MiB, makeSims } from '../e2e/helpers.js';

describe('migrate() with compression', () => {
  it('boots the workers once the fixed costs are timed, and compresses with them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-warm-'));
    const src = makeSims(1, { size: 8 * MiB, dirtyRate: 2 * MiB });
    const dst = makeSims(1, { size: 8 * MiB });
    const listener = await listenTransport(`unix:${join(dir, 'w.sock')}`);
    const pool = sharedCompressionPool();
    const seen: Record<string, number> = {};
    try {
      expect(pool.workers).toBe(0);
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000, compression: 'zstd' });
      incoming.on('phase', (p: { phase: string }) => (seen[`dst:${p.phase}`] ??= pool.workers));
      run.on('phase', (p: { phase: string }) => (seen[`src:${p.phase}`] ??= pool.workers));
      const [s] = await Promise.all([run.done, incoming.done]);
      expect(s.verified).toBe(true);
      expect(s.compressionRatio).toBeGreaterThan(1);
      // Nothing booted through the handshake and the destination's setup; all of them by the switchover.
      expect(seen).toMatchObject({ 'src:handshake': 0, 'dst:setup': 0, 'src:precopy': 0 });
      expect(seen['src:switchover']).toBe(pool.size);
    } finally {
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
      src.close();
      dst.close();
    }
  });
});
