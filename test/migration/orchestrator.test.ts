/**
 * migrate() and receive() in one process over a real unix socket: phases, P2P ordering from the
 * drivers' arc logs, devices without PRE_COPY, switchover-ack, summaries and events.
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceState } from '../../src/fsm/states.js';
import { receive } from '../../src/migration/destination.js';
import { autoChunkSize, migrate, type MigrateOptions } from '../../src/migration/source.js';
import type { DecisionEvent, ProgressEvent } from '../../src/migration/summary.js';
import { decisionNumbers, type Decision, type PolicySnapshot } from '../../src/migration/policy.js';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';
import { listenTransport } from '../../src/transport/index.js';
import { MiB, makeSims } from '../e2e/helpers.js';

const S = DeviceState;

async function pairRun(
  n: number,
  size: number,
  flags: (i: number) => number,
  opts: Partial<MigrateOptions> = {},
  dirtyRate = 0,
  during?: (run: ReturnType<typeof migrate>, src: ReturnType<typeof makeSims>, dst: ReturnType<typeof makeSims>) => void,
) {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-orch-'));
  const src = makeSims(n, { size, dirtyRate }, (i) => ({ flags: flags(i) }));
  const dst = makeSims(n, { size }, (i) => ({ flags: flags(i) }));
  const listener = await listenTransport(`unix:${join(dir, 'o.sock')}`);
  try {
    const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
    const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000, ...opts });
    const decisions: DecisionEvent[] = [];
    run.on('decision', (d) => decisions.push(d));
    during?.(run, src, dst);
    const [s, d] = await Promise.all([run.done, incoming.done]);
    return { s, d, src, dst, decisions };
  } finally {
    await listener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Wrap a session's read or write so that every byte it moves is also counted by `add`. */
function countBytes<T extends SavingSession | ResumingSession>(session: T, method: 'read' | 'write', add: (n: number) => void): void {
  const target = session as unknown as Record<string, (buf: Buffer) => Promise<number>>;
  const inner = target[method].bind(session);
  target[method] = async (buf: Buffer) => {
    const n = await inner(buf);
    add(n);
    return n;
  };
}

describe('migrate/receive in one process', () => {
  it('leaves no connection open: the destination reads on to the source\'s end of stream', async () => {
    // receive() stopped reading at STREAM_END, so the source's FIN stayed unread and the half-open
    // socket never closed: one fd per migration in a long-lived destination.
    const pipes = () => process.getActiveResourcesInfo().filter((r) => r === 'PipeWrap').length;
    const before = pipes();
    const { s, d, src, dst } = await pairRun(1, MiB, () => 7);
    expect(s.verified && d.verified).toBe(true);
    for (let i = 0; i < 100 && pipes() > before; i++) await new Promise((r) => setTimeout(r, 10));
    expect(pipes()).toBe(before);
    src.close();
    dst.close();
  });

  it('moves one PRE_COPY device with a workload, switchover after the ack, verified', async () => {
    const { s, d, src, dst, decisions } = await pairRun(1, 16 * MiB, () => 7, { compression: 'zstd' }, 4 * MiB);
    expect(s.verified).toBe(true);
    expect(d.verified).toBe(true);
    expect(s.precopyRounds).toBeGreaterThanOrEqual(1);
    expect(s.devices[0].precopyBytes).toBeGreaterThanOrEqual(16 * MiB);
    expect(s.compressionRatio).toBeGreaterThan(1);
    expect(decisions.at(-1)?.action).toBe('switchover');
    expect(decisions.some((x) => x.reason === 'within-limit')).toBe(true);
    // Before any switchover the destination's two steps have one prior: its arcs into RESUMING;
    // its resume waits for the handover's 'release' too, one idle round trip (the link's prior).
    const n0 = decisions[0].numbers as Record<'destValidateMs' | 'destResumeMs' | 'linkLatencyMs', number>;
    expect(n0.destValidateMs).toBeGreaterThan(0);
    expect(n0.linkLatencyMs).toBeGreaterThan(0);
    expect(n0.destResumeMs).toBeCloseTo(n0.destValidateMs + n0.linkLatencyMs, 9);
    expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
    expect(await dst.cores[0].getState()).toBe(S.RUNNING);
    expect(await src.cores[0].getState()).toBe(S.STOP);
    // Source arcs: RUNNING->PRE_COPY, ->PRE_COPY_P2P, ->STOP_COPY, ->STOP.
    expect(src.arcs.map(([, , to]) => to)).toEqual([S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY, S.STOP]);
    expect(dst.arcs.map(([, , to]) => to)).toEqual([S.RUNNING_P2P, S.STOP, S.RESUMING, S.STOP, S.RUNNING_P2P, S.RUNNING]);
    src.close();
    dst.close();
  });

  it('progress events carry each device\'s bytes and round on both sides, summing to the totals', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-orch-'));
    const src = makeSims(2, { size: 2 * MiB }, (i) => ({ size: (i === 0 ? 2 : 6) * MiB }));
    const dst = makeSims(2, { size: 2 * MiB }, (i) => ({ size: (i === 0 ? 2 : 6) * MiB }));
    const listener = await listenTransport(`unix:${join(dir, 'p.sock')}`);
    try {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept(), progressMs: 20 });
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000, bandwidth: 32_000_000, progressMs: 20 });
      const seen: { side: string; ev: ProgressEvent }[] = [];
      run.on('progress', (ev) => seen.push({ side: 'source', ev }));
      incoming.on('progress', (ev) => seen.push({ side: 'destination', ev }));
      const [sum, dsum] = await Promise.all([run.done, incoming.done]);
      expect(sum.verified && dsum.verified).toBe(true);
      for (const side of ['source', 'destination']) {
        const evs = seen.filter((x) => x.side === side).map((x) => x.ev);
        expect(evs.length, side).toBeGreaterThan(2);
        for (const ev of evs) {
          expect(ev.devices, side).toHaveLength(2);
          expect(ev.devices[0].bytes + ev.devices[1].bytes, side).toBe(ev.bytes);
        }
        // The larger device's share shows: in PRE_COPY it has moved more than the smaller one.
        const late = evs.filter((ev) => ev.phase === 'precopy').at(-1)!;
        expect(late.devices[1].bytes, side).toBeGreaterThan(late.devices[0].bytes);
        // The source counts the round it is in; the destination the rounds whose end marker came.
        if (side === 'source') expect(late.devices.every((d) => d.round >= 1)).toBe(true);
      }
    } finally {
      await listener.close();
      src.close();
      dst.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the destination reports what its devices took during PRE_COPY; the source shows the backlog, bounded by what it read', async () => {
    const backlogs: number[] = [];
    const { s, src, dst } = await pairRun(1, 32 * MiB, () => 7, { bandwidth: 64_000_000 }, 4 * MiB, (run) => {
      run.on('progress', (p) => {
        if (p.phase === 'precopy' && typeof p.backlogBytes === 'number') backlogs.push(p.backlogBytes - p.bytes);
      });
    });
    expect(s.verified).toBe(true);
    // At least one report arrived (100 ms period; 32 MiB at 64 MB/s take ~0.5 s), and a backlog
    // never exceeds the bytes read (backlogBytes - bytes <= 0).
    expect(backlogs.length).toBeGreaterThan(0);
    expect(Math.max(...backlogs)).toBeLessThanOrEqual(0);
    src.close();
    dst.close();
  });

  /**
   * A 32 MiB device dirtying `dirtyRate`: the bytes PRE_COPY read and the bytes the destination's
   * device took, compared at the source's first stop (its arc into PRE_COPY_P2P). `slowWriteMs`
   * delays every destination write (a destination slower than the link).
   */
  async function gapAtStop(opts: Partial<MigrateOptions>, dirtyRate: number, slowWriteMs = 0) {
    let read = 0;
    let written = 0;
    let gap = Number.NaN;
    let drainedInPhase = false;
    const { s, src, dst } = await pairRun(1, 32 * MiB, () => 7, opts, dirtyRate, (run, src, dst) => {
      let phase = '';
      run.on('phase', (p) => (phase = p.phase));
      src.cores[0].on('arc', (a) => {
        if (a.to === S.PRE_COPY) countBytes(src.sims[0].session as SavingSession, 'read', (n) => (read += n));
        if (a.to === S.PRE_COPY_P2P) {
          gap = read - written;
          drainedInPhase = phase === 'switchover';
        }
      });
      dst.cores[0].on('arc', (a) => {
        if (a.to !== S.RESUMING) return;
        const session = dst.sims[0].session as ResumingSession;
        if (slowWriteMs > 0) {
          const inner = session.write.bind(session);
          session.write = async (buf) => {
            await new Promise((r) => setTimeout(r, slowWriteMs));
            return inner(buf);
          };
        }
        countBytes(session, 'write', (n) => (written += n));
      });
    });
    expect(s.verified).toBe(true);
    expect(drainedInPhase).toBe(true);
    expect(read).toBeGreaterThan(32 * MiB);
    src.close();
    dst.close();
    return gap;
  }

  it('a switchover first empties the source queues while the devices run: at the first stop the destination holds what PRE_COPY read', async () => {
    // At 64 MB/s the queues hold ~1.3 MiB of encoded data plus ~0.75 MiB in the saving stream:
    // without the drain they would cross inside the downtime. Dirtying at half the cap keeps data
    // pending: the switchover (limit 1 s) comes with the queues full.
    const gap = await gapAtStop({ bandwidth: 64_000_000 }, 32 * MiB);
    // Only what the last bursts of the cap left in the kernel's socket buffer and the destination's
    // own queues may still be on its way, crossing at the destination's pace (without the drain: 2.9 MiB).
    expect(gap).toBeGreaterThanOrEqual(0);
    expect(gap).toBeLessThanOrEqual(MiB);
  });

  it('without a cap, a destination slower than the link: the drain\'s in-band ping waits until it has taken what was sent', async () => {
    // Each destination write waits 2 ms: the destination loads ~100 MB/s while the link would carry
    // several times that, and a workload dirtying 64 MiB/s keeps data flowing, so its decoder and the
    // socket hold megabytes when the source's own queues are empty (4.2-5.2 MB at the stop without the
    // ping). The ping is answered once every record before it reached the resuming stream.
    const gap = await gapAtStop({}, 64 * MiB, 2);
    // At most the resuming stream's 1 MiB and the write in progress remain.
    expect(gap).toBeGreaterThanOrEqual(0);
    expect(gap).toBeLessThanOrEqual(2 * MiB);
  });

  it('after the drain, the destination\'s last report no longer counts as bytes to drain, and an unmeasured link does not stand at the prior rate', async () => {
    // Uncapped, with zstd: the compression workers are the bottleneck, so the link never has data
    // waiting for it (no wire samples) and the destination keeps up; its 'loaded' reports show the
    // source's queues and what is on the way (megabytes). The barrier ping proves all of it arrived.
    const { s, decisions } = await pairRun(1, 32 * MiB, () => 7, { compression: 'zstd', downtimeLimitMs: 1000 }, 16 * MiB);
    expect(s.verified).toBe(true);
    const drained = decisions.filter((d) => d.numbers.drained === true);
    expect(drained.length).toBeGreaterThan(0);
    for (const d of drained) {
      // At most what the destination's resuming stream holds (1 MiB) and a write in progress.
      expect(d.numbers.drainBytes as number).toBeLessThanOrEqual(2 * MiB);
      // Where the link was not measured, the path's measured rate stands for it, not the prior.
      if (!Number.isFinite(d.numbers.wireRateBytesPerMs as number) && Number.isFinite(d.numbers.pipelineRateBytesPerMs as number)) {
        expect(d.numbers.rateBytesPerMs).toBeCloseTo(d.numbers.pipelineRateBytesPerMs as number, 6);
      }
    }
  });

  it('the policy decides again after the drain: a "continue" then sends the migration back to PRE_COPY, and only a confirmed switchover stops the devices', async () => {
    // Switch over whenever the gates pass, except that the first confirmation says no.
    let asked = 0;
    const seen: Array<{ drainBytes: number; stopCopyBytes: number }> = [];
    const policy = {
      name: 'second-thoughts',
      decide(snap: PolicySnapshot): Decision {
        const ready = snap.initialSent && snap.switchoverAcked && snap.prediction.valid;
        const numbers = decisionNumbers(snap, snap.downtimeLimitMs);
        if (!ready) return { action: 'continue', reason: 'initial-pending', message: 'waiting', numbers };
        asked++;
        seen.push({ drainBytes: snap.prediction.drainBytes, stopCopyBytes: snap.prediction.stopCopyBytes });
        const no = asked === 2;
        return { action: no ? 'continue' : 'switchover', reason: no ? 'above-limit' : 'within-limit', message: no ? 'not yet' : 'go', numbers };
      },
    };
    const phases: string[] = [];
    const { s, src, dst, decisions } = await pairRun(1, 16 * MiB, () => 7, { policy, bandwidth: 64_000_000 }, 8 * MiB, (run) => {
      run.on('phase', (p) => phases.push(p.phase));
    });
    expect(s.verified).toBe(true);
    expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
    // Asked: switchover, (drain) continue, ..., switchover, (drain) switchover.
    expect(asked).toBeGreaterThanOrEqual(4);
    expect(phases.slice(0, 4)).toEqual(['handshake', 'precopy', 'switchover', 'precopy']);
    expect(phases.filter((p) => p === 'switchover')).toHaveLength(2);
    expect(phases.slice(-4)).toEqual(['stop-copy', 'validate', 'resume', 'complete']);
    // After each drain the policy saw nothing queued.
    expect(seen[1].drainBytes).toBe(0);
    expect(seen.at(-1)?.drainBytes).toBe(0);
    const drained = decisions.filter((d) => d.numbers.drained === true);
    expect(drained.map((d) => d.action)).toEqual(['continue', 'switchover']);
    expect(decisions.at(-1)).toBe(drained[1]);
    // Back in PRE_COPY the reads were released: the workload's new dirt was read before the second switchover.
    expect(s.devices[0].precopyBytes).toBeGreaterThan(16 * MiB);
    src.close();
    dst.close();
  });

  it('while an early verdict\'s numbers form, the policy is asked every few ms even with a long tick', async () => {
    // A 1 s tick: before the change the policy was asked at the learning pace until λ had its
    // samples, then not again for a whole tick, although a tenth of the state (what the dirtying
    // model waits for) arrived in between. Stop as soon as the model speaks.
    const asked: Array<{ at: number; ready: boolean }> = [];
    const policy = {
      name: 'watch-forming',
      decide(snap: PolicySnapshot): Decision {
        const ready = !Number.isNaN(snap.prediction.stateDirtyRateBytesPerMs);
        asked.push({ at: snap.elapsedMs, ready });
        const numbers = decisionNumbers(snap, snap.downtimeLimitMs);
        if (ready || snap.elapsedMs > 5000) return { action: 'abort', reason: 'not-converging', message: 'seen enough', numbers };
        return { action: 'continue', reason: 'initial-pending', message: 'forming', numbers };
      },
    };
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-orch-'));
    const src = makeSims(1, { size: 64 * MiB, dirtyRate: 64 * MiB }, () => ({ flags: 7 }));
    const dst = makeSims(1, { size: 64 * MiB }, () => ({ flags: 7 }));
    const listener = await listenTransport(`unix:${join(dir, 'f.sock')}`);
    try {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept() });
      const run = migrate({ devices: src.cores, transport: listener.url, policy, tickMs: 1000, bandwidth: 32_000_000 });
      await expect(run.done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_POLICY_ABORT' });
      await incoming.done.catch(() => {});
    } finally {
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
    const first = asked.findIndex((a) => a.ready);
    expect(first).toBeGreaterThan(0);
    // Every look until the model spoke came well within one tick of the one before.
    const gaps = asked.slice(1, first + 1).map((a, i) => a.at - asked[i]!.at);
    expect(Math.max(...gaps)).toBeLessThan(500);
    expect(await src.cores[0].getState()).toBe(S.RUNNING);
    src.close();
    dst.close();
  });

  it.each(['none', 'zstd'] as const)('the source reads into memory the transport (or the compressor) gave back: few chunk buffers for many chunks, and the state arrives intact (compression %s)', async (compression) => {
    // Every device read, by the memory it lands in. A chunk is given back only once the socket has
    // written it, or once its frame is ready when it went out compressed; given back too early, a
    // later read would overwrite bytes still queued and the destination's digest would differ.
    const memories = new Set<ArrayBufferLike>();
    let reads = 0;
    const watch = (session: SavingSession): void => {
      const inner = session.read.bind(session);
      session.read = async (buf: Buffer) => {
        reads++;
        memories.add(buf.buffer);
        return inner(buf);
      };
    };
    // 64 MiB: many more reads than chunks can be in flight at once. With 32 MiB a loaded machine
    // (a whole bench beside the test) filled the pipeline with ~80 of ~160 chunks at once: each in
    // flight is memory of its own however well the finished ones are reused.
    const { s, src, dst } = await pairRun(1, 64 * MiB, () => 7, { compression }, 8 * MiB, (_run, src) => {
      src.cores[0].on('arc', (a) => {
        if (a.to === S.PRE_COPY || a.to === S.STOP_COPY) watch(src.sims[0].session as SavingSession);
      });
    });
    expect(s.verified).toBe(true);
    expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
    // 64 MiB and more in 256 KiB chunks: at least 256 reads, into a few dozen buffers at most.
    expect(reads).toBeGreaterThanOrEqual(256);
    expect(memories.size).toBeLessThan(reads / 2);
    src.close();
    dst.close();
  });

  it('the device read size follows the estimated state size: 256 KiB for a small state, up to 1 MiB for a large one', async () => {
    expect([0, NaN, 64 * MiB, 128 * MiB - 1, 128 * MiB, 256 * MiB, 1024 * 1024 * MiB].map(autoChunkSize)).toEqual([
      256 * 1024, 256 * 1024, 256 * 1024, 256 * 1024, 512 * 1024, MiB, MiB,
    ]);
    const sizes = new Set<number>();
    const { s, src, dst } = await pairRun(1, 8 * MiB, () => 7, {}, 0, (_run, src, dst) => {
      // The identity says 1 GiB (both ends, which compare identities); the device holds 8 MiB.
      for (const core of [src.cores[0], dst.cores[0]]) {
        const real = core.identity.bind(core);
        core.identity = () => ({ ...real(), stateSize: 1024 * MiB });
      }
      src.cores[0].on('arc', (a) => {
        if (a.to !== S.PRE_COPY && a.to !== S.STOP_COPY) return;
        const session = src.sims[0].session as SavingSession;
        const inner = session.read.bind(session);
        session.read = async (buf: Buffer) => {
          sizes.add(buf.length);
          return inner(buf);
        };
      });
    });
    expect(s.verified).toBe(true);
    expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
    expect([...sizes]).toEqual([MiB]);
    src.close();
    dst.close();
  });

  it('the DEVICE_END digest is selectable: sha256 and none move the state as the default crc32 does, verified', async () => {
    for (const digest of ['sha256', null] as const) {
      const { s, d, src, dst } = await pairRun(1, 8 * MiB, () => 7, { digest }, 2 * MiB);
      expect(s.verified).toBe(true);
      expect(d.verified).toBe(true);
      expect(dst.sims[0].digest()).toBe(src.sims[0].digest());
      src.close();
      dst.close();
    }
    await expect(pairRun(1, 1 * MiB, () => 7, { digest: 'no-such-hash' })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_UNSUPPORTED' });
  });

  it('a switchover with nothing left to move still predicts the fixed costs measured before it (handshake round trip, arcs into PRE_COPY)', async () => {
    const { s, decisions, src, dst } = await pairRun(1, 4 * MiB, () => 7);
    expect(s.verified).toBe(true);
    const last = decisions.at(-1);
    expect(last?.action).toBe('switchover');
    expect(last?.numbers.stopCopyBytes).toBeLessThan(64 * 1024);
    // Not 0 ms: the return path and the destination's work are part of every downtime.
    expect(last?.numbers.downtimeMs).toBeGreaterThan(0);
    expect(s.predictedDowntimeMs).toBe(last?.numbers.downtimeMs);
    src.close();
    dst.close();
  });

  it('many devices: every device reaches its P2P state before any stops, on both sides', async () => {
    // Device 2 has no PRE_COPY: it goes RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY at switchover.
    const { s, src, dst } = await pairRun(3, 4 * MiB, (i) => (i === 2 ? 0x3 : 0x7));
    expect(s.verified).toBe(true);
    const firstStop = src.arcs.findIndex(([, , to]) => to === S.STOP_COPY || to === S.STOP);
    const p2p = src.arcs.map(([dev, , to], i) => ({ dev, to, i })).filter((a) => a.to === S.PRE_COPY_P2P || a.to === S.RUNNING_P2P);
    expect(new Set(p2p.map((a) => a.dev))).toEqual(new Set([0, 1, 2]));
    expect(Math.max(...p2p.map((a) => a.i))).toBeLessThan(firstStop);
    expect(src.arcs.filter(([dev]) => dev === 2).map(([, , to]) => to)).toEqual([S.RUNNING_P2P, S.STOP, S.STOP_COPY, S.STOP]);
    // Destination resume: RUNNING_P2P for all before RUNNING for any.
    const firstRunning = dst.arcs.findIndex(([, , to]) => to === S.RUNNING);
    const lastP2P = Math.max(...dst.arcs.map(([, , to], i) => (to === S.RUNNING_P2P ? i : -1)));
    expect(lastP2P).toBeLessThan(firstRunning);
    for (let i = 0; i < 3; i++) expect(dst.sims[i].digest()).toBe(src.sims[i].digest());
    src.close();
    dst.close();
  });

  it('a set with a device lacking P2P is refused unless the risk is accepted', async () => {
    await expect(pairRun(2, 4 * MiB, (i) => (i === 1 ? 0x5 : 0x7))).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_INCOMPATIBLE', device: 1 });
    const { s, src, dst } = await pairRun(2, 4 * MiB, (i) => (i === 1 ? 0x5 : 0x7), { acceptP2PRisk: true });
    expect(s.verified).toBe(true);
    src.close();
    dst.close();
  });

  it('channels: data over 4 connections, reordered at the destination under a byte cap', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-chan-'));
    const src = makeSims(2, { size: 16 * MiB, dirtyRate: 4 * MiB });
    const dst = makeSims(2, { size: 16 * MiB });
    const listener = await listenTransport(`unix:${join(dir, 'c.sock')}`);
    try {
      const cap = 2 * MiB;
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept(), accept: () => listener.accept(), maxReorderBytes: cap });
      const run = migrate({ devices: src.cores, transport: listener.url, channels: 4, downtimeLimitMs: 1000, compression: 'zstd' });
      const [s, d] = await Promise.all([run.done, incoming.done]);
      expect(s.verified).toBe(true);
      expect(d.verified).toBe(true);
      for (let i = 0; i < 2; i++) expect(dst.sims[i].digest()).toBe(src.sims[i].digest());
      const stats = incoming.reorderStats;
      // Four sockets deliver out of send order (dozens of records in practice); never beyond the cap.
      expect(stats.reordered).toBeGreaterThan(0);
      expect(stats.maxBufferedBytes).toBeLessThanOrEqual(cap);
    } finally {
      src.close();
      dst.close();
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('channels need a destination that accepts them', async () => {
    await expect(pairRun(1, 4 * MiB, () => 7, { channels: 2 })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_UNSUPPORTED', phase: 'handshake' });
  });

  it('STOP_COPY-only devices migrate without PRE_COPY', async () => {
    const { s, src, dst } = await pairRun(1, 4 * MiB, () => 0x1);
    expect(s.verified).toBe(true);
    expect(s.precopyRounds).toBe(0);
    expect(s.predictedDowntimeMs).toBeNull();
    expect(src.arcs.map(([, , to]) => to)).toEqual([S.STOP, S.STOP_COPY, S.STOP]);
    src.close();
    dst.close();
  });

  it('a destination waits for its source past the stall timeout; acceptTimeoutMs bounds that wait', async () => {
    // receive() behind a listener used to fail STALLED in phase connect once stallTimeoutMs passed
    // without a connection: `vfio-mig receive` gave up 15 s after it started listening.
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-orch-'));
    const src = makeSims(1, { size: MiB, dirtyRate: 0 });
    const dst = makeSims(1, { size: MiB });
    const listener = await listenTransport(`unix:${join(dir, 'w.sock')}`);
    try {
      const incoming = receive({ devices: dst.cores, transport: () => listener.accept(), stallTimeoutMs: 100 });
      await new Promise((r) => setTimeout(r, 400));
      expect(incoming.phase).toBe('connect');
      const tm = performance.now();
      const run = migrate({ devices: src.cores, transport: listener.url, downtimeLimitMs: 1000 });
      const [s, d] = await Promise.all([run.done, incoming.done]);
      const te = performance.now();
      expect(s.verified && d.verified).toBe(true);
      // The destination's duration starts at the source's connection: the wait is phases.connect's.
      expect(d.durationMs).toBeLessThanOrEqual(te - tm);
      expect(d.phases.connect).toBeGreaterThanOrEqual(390);

      const lonely = makeSims(1, { size: MiB });
      const t0 = performance.now();
      const waiting = receive({ devices: lonely.cores, transport: () => listener.accept(), stallTimeoutMs: 60_000, acceptTimeoutMs: 150 });
      const err = await waiting.done.then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'VFIO_MIG_ERR_STALLED', phase: 'connect', recovery: 'none', message: 'no source connected within 150 ms' });
      expect(performance.now() - t0).toBeLessThan(5_000);
      // Nothing was touched: the device never left its state, and was not reset either.
      expect(await lonely.cores[0].getState()).toBe(S.RUNNING);
      expect(lonely.arcs).toEqual([]);
      expect(lonely.resets).toEqual([]);
      await expect(receive({ devices: lonely.cores, transport: () => listener.accept(), acceptTimeoutMs: -1 }).done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
      lonely.close();
    } finally {
      await listener.close();
      src.close();
      dst.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
