import { describe, it, expect } from 'vitest';
import { MigrationCore, type ArcEvent } from '../../src/fsm/core.js';
import { DeviceState } from '../../src/fsm/states.js';
import { SimDevice } from '../../src/devices/sim-device.js';
import { checkP2PSet, enterP2P, enterStopCopy, resumeAll, rollbackAll } from '../../src/migration/p2p.js';

const S = DeviceState;

function set(flags: number[]) {
  const log: { device: number; arc: ArcEvent }[] = [];
  const sims = flags.map((f, i) => new SimDevice({ size: 64 * 4096, flags: f, seed: i + 1 }));
  const cores = sims.map((s, i) => {
    const c = new MigrationCore(s);
    c.on('arc', (arc) => log.push({ device: i, arc }));
    return c;
  });
  return { sims, cores, log };
}

describe('P2P ordering over a device set', () => {
  it('moves every device to its P2P state before any device reaches STOP_COPY', async () => {
    const { cores, log } = set([7, 7, 3]);
    await cores[0].setState(S.PRE_COPY);
    await cores[1].setState(S.PRE_COPY);
    log.length = 0;
    await enterP2P(cores);
    await enterStopCopy(cores);
    const firstStop = log.findIndex((e) => e.arc.to === S.STOP || e.arc.to === S.STOP_COPY);
    const lastP2P = Math.max(...log.map((e, i) => (e.arc.to === S.PRE_COPY_P2P || e.arc.to === S.RUNNING_P2P ? i : -1)));
    expect(lastP2P).toBeGreaterThanOrEqual(0);
    expect(lastP2P).toBeLessThan(firstStop);
    for (const c of cores) expect(c.state).toBe(S.STOP_COPY);
    // Every device entered a P2P state.
    for (let d = 0; d < 3; d++) expect(log.some((e) => e.device === d && (e.arc.to === S.PRE_COPY_P2P || e.arc.to === S.RUNNING_P2P))).toBe(true);
  });

  it('resumes the set P2P-first and rolls a mixed-state set back to RUNNING', async () => {
    const { cores, log, sims } = set([7, 7]);
    const before = sims.map((s) => s.digest());
    await cores[0].setState(S.STOP_COPY);
    await cores[1].setState(S.PRE_COPY_P2P);
    log.length = 0;
    const outcome = await rollbackAll(cores);
    expect(outcome.every((o) => o.error === undefined && o.state === 'RUNNING')).toBe(true);
    const firstRunning = log.findIndex((e) => e.arc.to === S.RUNNING);
    const lastP2P = Math.max(...log.map((e, i) => (e.arc.to === S.RUNNING_P2P ? i : -1)));
    expect(lastP2P).toBeLessThan(firstRunning);
    expect(sims.map((s) => s.digest())).toEqual(before);
    await cores[0].setState(S.RESUMING);
    await cores[0].setState(S.STOP, { recovery: 'none' }).catch(() => cores[0].reset());
    await resumeAll(cores);
    for (const c of cores) expect(c.state).toBe(S.RUNNING);
  });

  it('refuses a multi-device set with a device lacking P2P unless the risk is accepted', () => {
    const { cores } = set([7, 5]);
    expect(() => checkP2PSet(cores, false)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_INCOMPATIBLE', device: 1 }));
    expect(() => checkP2PSet(cores, true)).not.toThrow();
    expect(() => checkP2PSet(cores.slice(1), false)).not.toThrow();
  });
});
