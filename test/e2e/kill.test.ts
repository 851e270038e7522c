/**
 * A peer process killed (SIGKILL) at each phase of a migration, the handover's included: the
 * survivor, in this process, must end in a state that is true to what it reports, never run the
 * state while the other side may, and lose nothing it holds. The peer is the `vfio-mig` command in
 * a child process; the kill comes when the survivor enters the phase, after a fixed delay of 0-2
 * ms (from the phase's name), so that it lands anywhere in the short end phases too. Where it lands
 * varies with the machine's pace; the outcome must hold wherever, and is pinned down where the
 * survivor's phase at the kill decides it.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MigError } from '../../src/fsm/errors.js';
import { DeviceState, stateName } from '../../src/fsm/states.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import type { MigrationPhase } from '../../src/migration/control.js';
import { listenTransport } from '../../src/transport/index.js';
import { MiB, ensureBuilt, makeSims, runCli, simArgs, startReceiver } from './helpers.js';

const S = DeviceState;
const SIZE = 8 * MiB;

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

/** 0-2 ms, from the phase's name, so that each case is the same every run. */
function delayFor(phase: string, salt: number): number {
  let h = salt;
  for (const c of phase) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  return (h % 2000) / 1000;
}

/**
 * Kill `child` once `survivor` enters `phase`, after delayFor(phase, salt); returns the survivor's
 * phase at the kill (null until then).
 */
function killAt(survivor: { readonly phase: MigrationPhase; on(e: 'phase', f: (e: { phase: MigrationPhase }) => void): unknown }, phase: MigrationPhase, child: ChildProcess, salt: number): () => MigrationPhase | null {
  let atKill: MigrationPhase | null = null;
  survivor.on('phase', (e) => {
    if (e.phase !== phase) return;
    setTimeout(() => {
      atKill = survivor.phase;
      child.kill('SIGKILL');
    }, delayFor(phase, salt));
  });
  return () => atKill;
}

/** The outcome and the devices' states, for assertion messages. */
function describeOutcome(phase: string, atKill: string | null, r: unknown, states: DeviceState[]): string {
  return `${phase} (killed in ${atKill}): ${r instanceof MigError ? `${r.code} in ${r.phase}, recovery ${r.recovery}` : 'ok'} [${states.map(stateName)}]`;
}

async function settle<T>(p: Promise<T>): Promise<T | MigError> {
  return p.catch((e: unknown) => {
    expect(e).toBeInstanceOf(MigError);
    return e as MigError;
  });
}

const SOURCE_PHASES: MigrationPhase[] = ['precopy', 'switchover', 'stop-copy', 'validate', 'resume'];
const DESTINATION_PHASES: MigrationPhase[] = ['setup', 'precopy', 'stop-copy', 'validate', 'resume'];

describe('a peer process killed at each phase', () => {
  it.each(SOURCE_PHASES)('the destination, killed as the source enters %s: the source ends true to its report, its state intact', async (phase) => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-kill-'));
    const dest = startReceiver(`unix:${join(dir, 'k.sock')}`, simArgs(2, SIZE, ['--dirty-rate', '0']), ['--no-warm-up']);
    const src = makeSims(2, { size: SIZE });
    const before = src.sims.map((s) => s.digest());
    try {
      const run = migrate({ devices: src.cores, transport: await dest.url, downtimeLimitMs: 1000, stallTimeoutMs: 5000 });
      const killedIn = killAt(run, phase, dest.child, 1);
      const r = await settle(run.done);
      await dest.exit;
      // Arcs a failure past 'validated' starts are not awaited by it.
      for (let i = 0; i < 100 && src.cores.some((c) => c.busy); i++) await new Promise((res) => setTimeout(res, 5));
      const states = await Promise.all(src.cores.map((c) => c.getState()));
      const atKill = killedIn();
      const ctx = describeOutcome(phase, atKill, r, states);
      expect(src.sims.map((s) => s.digest()), ctx).toEqual(before);
      if (!(r instanceof MigError)) {
        // The destination ran the state before it died: the source gave it up.
        expect(states, ctx).toEqual([S.STOP, S.STOP]);
      } else if (r.recovery === 'recovered') {
        expect(states, ctx).toEqual([S.RUNNING, S.RUNNING]);
      } else {
        // Released: it may run at the destination (it died after 'running' left), so the source holds it, stopped.
        expect(r.recovery, ctx).toBe('held');
        expect(states, ctx).toEqual([S.STOP, S.STOP]);
      }
      // Killed before the source sent 'commit', the destination cannot have validated: the source rolled back.
      if (atKill === 'precopy' || atKill === 'switchover') expect(r instanceof MigError && r.recovery, ctx).toBe('recovered');
    } finally {
      dest.child.kill('SIGKILL');
      src.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it.each(DESTINATION_PHASES)('the source, killed as the destination enters %s: the destination resets, holds or runs, as it reports', async (phase) => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-ksrc-'));
    const dst = makeSims(2, { size: SIZE });
    const listener = await listenTransport(`unix:${join(dir, 'd.sock')}`);
    const src = runCli(['migrate', '--to', listener.url, ...simArgs(2, SIZE, ['--dirty-rate', '0']), '--no-warm-up', '--json']);
    try {
      const incoming = receive({ devices: dst.cores, transport: listener, stallTimeoutMs: 5000 });
      const killedIn = killAt(incoming, phase, src.child, 2);
      const r = await settle(incoming.done);
      await src.exit;
      const states = await Promise.all(dst.cores.map((c) => c.getState()));
      const atKill = killedIn();
      const ctx = describeOutcome(phase, atKill, r, states);
      if (!(r instanceof MigError)) {
        expect(r.verified, ctx).toBe(true);
        expect(states, ctx).toEqual([S.RUNNING, S.RUNNING]);
      } else if (r.recovery === 'reset') {
        expect(dst.resets.length, ctx).toBeGreaterThan(0);
        expect(states, ctx).toEqual([S.RUNNING, S.RUNNING]);
      } else {
        // Validated and never released: the source may have released it before it died, or not.
        expect(r.recovery, ctx).toBe('held');
        expect(r.phase, ctx).toBe('resume');
        expect(dst.resets, ctx).toEqual([]);
        expect(states, ctx).toEqual([S.STOP, S.STOP]);
      }
      // Killed before this side answered 'ready', the source had sent no device data, let alone 'commit'.
      if (atKill === 'setup' || atKill === 'handshake') expect(r instanceof MigError && r.recovery, ctx).toBe('reset');
    } finally {
      src.child.kill('SIGKILL');
      dst.close();
      await listener.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
