/**
 * The next-hop rule against tables transcribed by hand from the spec digest
 * (/work/shared/research/vfio-migration-v2-spec.md §4.1, §4.4, §4.5, §4.6, §3.3), not from table.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { arcClosesSession, arcEffect, arcOpensSession, baseArcs, isBaseArc, transitionPath } from '../../src/fsm/path.js';
import { DeviceState, VALID_FLAG_WORDS, isSavingState } from '../../src/fsm/states.js';
import { assertFlags, firstHop, nextState, stateSupported } from '../../src/fsm/table.js';

const CODE: Record<string, DeviceState> = { E: 0, S: 1, R: 2, SC: 3, RS: 4, RP: 5, PC: 6, PP: 7 };
const ABBR = ['E', 'S', 'R', 'SC', 'RS', 'RP', 'PC', 'PP'];
const ALL = [0, 1, 2, 3, 4, 5, 6, 7] as DeviceState[];

// §4.1: vfio_from_fsm_table, all features assumed. Row = current, column = requested (E S R SC RS RP PC PP).
const RAW = [
  'E  E  E  E  E  E  E  E',
  'E  S  RP SC RS RP RP RP',
  'E  RP R  RP RP RP PC RP',
  'E  S  S  SC S  S  E  E',
  'E  S  S  S  RS S  S  S',
  'E  S  R  S  S  RP R  PP',
  'E  R  R  PP R  R  PC PP',
  'E  RP RP SC RP RP PC PP',
];

// §4.4: next hop per flags word. "-" cur == new; "X" EINVAL (unsupported target); "B" EINVAL (blocked
// arc, the loop the 2026 fix ended); "na" the current state is impossible for the device.
const NA = 'na na na na na na na na';
const NEXT: Record<number, string[]> = {
  0x1: [NA, 'X - R SC RS X X X', 'X S - S S X X X', 'X S S - S X X X', 'X S S S - X X X', NA, NA, NA],
  0x3: [NA, 'X - RP SC RS RP X X', 'X RP - RP RP RP X X', 'X S S - S S X X', 'X S S S - S X X', 'X S R S S - X X', NA, NA],
  0x5: [NA, 'X - R SC RS X R X', 'X S - S S X PC X', 'X S S - S X B X', 'X S S S - X S X', NA, 'X R R SC R X - X', NA],
  0x7: [
    NA,
    'X - RP SC RS RP RP RP',
    'X RP - RP RP RP PC RP',
    'X S S - S S B B',
    'X S S S - S S S',
    'X S R S S - R PP',
    'X R R PP R R - PP',
    'X RP RP SC RP RP PC -',
  ],
};

// §4.5: full path of every legal pair; "fd" = the last arc returns a new data fd; "close A>B" = the
// arc that ends the old session; "blocked" = EINVAL, no state change.
const PATHS: Record<number, string[]> = {
  0x1: [
    'S>R', 'S>SC fd', 'S>RS fd',
    'R>S', 'R>S>SC fd', 'R>S>RS fd',
    'SC>S close SC>S', 'SC>S>R close SC>S', 'SC>S>RS fd close SC>S',
    'RS>S close RS>S', 'RS>S>R close RS>S', 'RS>S>SC fd close RS>S',
  ],
  0x3: [
    'S>RP>R', 'S>SC fd', 'S>RS fd', 'S>RP',
    'R>RP>S', 'R>RP>S>SC fd', 'R>RP>S>RS fd', 'R>RP',
    'SC>S close SC>S', 'SC>S>RP>R close SC>S', 'SC>S>RS fd close SC>S', 'SC>S>RP close SC>S',
    'RS>S close RS>S', 'RS>S>RP>R close RS>S', 'RS>S>SC fd close RS>S', 'RS>S>RP close RS>S',
    'RP>S', 'RP>R', 'RP>S>SC fd', 'RP>S>RS fd',
  ],
  0x5: [
    'S>R', 'S>SC fd', 'S>RS fd', 'S>R>PC fd',
    'R>S', 'R>S>SC fd', 'R>S>RS fd', 'R>PC fd',
    'SC>S close SC>S', 'SC>S>R close SC>S', 'SC>S>RS fd close SC>S', 'SC>PC blocked',
    'RS>S close RS>S', 'RS>S>R close RS>S', 'RS>S>SC fd close RS>S', 'RS>S>R>PC fd close RS>S',
    'PC>R>S close PC>R', 'PC>R close PC>R', 'PC>SC', 'PC>R>S>RS fd close PC>R',
  ],
  0x7: [
    'S>RP>R', 'S>SC fd', 'S>RS fd', 'S>RP', 'S>RP>R>PC fd', 'S>RP>PP fd',
    'R>RP>S', 'R>RP>S>SC fd', 'R>RP>S>RS fd', 'R>RP', 'R>PC fd', 'R>RP>PP fd',
    'SC>S close SC>S', 'SC>S>RP>R close SC>S', 'SC>S>RS fd close SC>S', 'SC>S>RP close SC>S', 'SC>PC blocked', 'SC>PP blocked',
    'RS>S close RS>S', 'RS>S>RP>R close RS>S', 'RS>S>SC fd close RS>S', 'RS>S>RP close RS>S',
    'RS>S>RP>R>PC fd close RS>S', 'RS>S>RP>PP fd close RS>S',
    'RP>S', 'RP>R', 'RP>S>SC fd', 'RP>S>RS fd', 'RP>R>PC fd', 'RP>PP fd',
    'PC>R>RP>S close PC>R', 'PC>R close PC>R', 'PC>PP>SC', 'PC>R>RP>S>RS fd close PC>R', 'PC>R>RP close PC>R', 'PC>PP',
    'PP>RP>S close PP>RP', 'PP>RP>R close PP>RP', 'PP>SC', 'PP>RP>S>RS fd close PP>RP', 'PP>RP close PP>RP', 'PP>PC',
  ],
};

// §4.6: the base arcs a driver sees per flags word.
const BASE: Record<number, string> = {
  0x1: 'S>R S>SC S>RS R>S SC>S RS>S',
  0x3: 'S>SC S>RS S>RP R>RP SC>S RS>S RP>S RP>R',
  0x5: 'S>R S>SC S>RS R>S R>PC SC>S RS>S PC>R PC>SC',
  0x7: 'S>SC S>RS S>RP R>RP R>PC SC>S RS>S RP>S RP>R RP>PP PC>R PC>PP PP>SC PP>RP PP>PC',
};

// §3.3: the session effect of each base arc.
const EFFECTS: [string, string][] = [
  ['R>RP', 'none'], ['RP>R', 'none'], ['RP>S', 'none'], ['S>RP', 'none'], ['R>S', 'none'], ['S>R', 'none'],
  ['S>SC', 'open-saving'], ['SC>S', 'close-saving'], ['S>RS', 'open-resuming'], ['RS>S', 'close-resuming'],
  ['R>PC', 'open-saving'], ['RP>PP', 'open-saving'], ['PC>R', 'close-saving'], ['PP>RP', 'close-saving'],
  ['PC>PP', 'continue-saving'], ['PP>PC', 'continue-saving'], ['PP>SC', 'continue-saving'], ['PC>SC', 'continue-saving'],
];

const cells = (row: string) => row.trim().split(/\s+/);
const states = (arc: string) => arc.split('>').map((a) => CODE[a]);

function einval(fn: () => unknown): void {
  expect(fn).toThrow(expect.objectContaining({ code: 'EINVAL', errno: 22 }));
}

describe('first-hop table (§4.1)', () => {
  it('matches cell by cell', () => {
    for (const cur of ALL) {
      const row = cells(RAW[cur]);
      for (const target of ALL) expect(ABBR[firstHop(cur, target)], `${ABBR[cur]}->${ABBR[target]}`).toBe(row[target]);
    }
  });
});

describe('nextState per flags word (§4.4)', () => {
  for (const flags of VALID_FLAG_WORDS) {
    it(`flags 0x${flags.toString(16)}: every (current, target) pair`, () => {
      let checked = 0;
      for (const cur of ALL) {
        const row = cells(NEXT[flags][cur]);
        expect(row).toHaveLength(8);
        for (const target of ALL) {
          const cell = row[target];
          const what = `0x${flags.toString(16)} ${ABBR[cur]}->${ABBR[target]}`;
          if (cell === 'na' || cell === 'X' || cell === 'B') {
            einval(() => nextState(cur, target, flags));
            einval(() => transitionPath(cur, target, flags));
          } else if (cell === '-') {
            expect(nextState(cur, target, flags), what).toBe(cur);
            expect(transitionPath(cur, target, flags), what).toEqual([]);
          } else {
            expect(ABBR[nextState(cur, target, flags)], what).toBe(cell);
            expect(isBaseArc(cur, CODE[cell], flags), what).toBe(true);
          }
          checked++;
        }
      }
      expect(checked).toBe(64);
    });
  }

  it('the supported states follow the flags (§1.2)', () => {
    expect(ALL.filter((s) => stateSupported(s, 0x1)).map((s) => ABBR[s])).toEqual(['S', 'R', 'SC', 'RS']);
    expect(ALL.filter((s) => stateSupported(s, 0x3)).map((s) => ABBR[s])).toEqual(['S', 'R', 'SC', 'RS', 'RP']);
    expect(ALL.filter((s) => stateSupported(s, 0x5)).map((s) => ABBR[s])).toEqual(['S', 'R', 'SC', 'RS', 'PC']);
    expect(ALL.filter((s) => stateSupported(s, 0x7)).map((s) => ABBR[s])).toEqual(['S', 'R', 'SC', 'RS', 'RP', 'PC', 'PP']);
  });
});

describe('full paths (§4.5)', () => {
  for (const flags of VALID_FLAG_WORDS) {
    it(`flags 0x${flags.toString(16)}: every legal pair, its fd and its closing arc`, () => {
      const seen = new Set<string>();
      for (const entry of PATHS[flags]) {
        const [arcs, ...notes] = entry.split(' ');
        const walk = states(arcs);
        const cur = walk[0];
        const target = walk[walk.length - 1];
        seen.add(`${cur}>${target}`);
        if (notes[0] === 'blocked') {
          einval(() => transitionPath(cur, target, flags));
          continue;
        }
        const path = transitionPath(cur, target, flags);
        expect(path, entry).toEqual(walk.slice(1));
        const opens = walk.slice(1).map((to, i) => arcOpensSession(walk[i], to));
        expect(opens.slice(0, -1).some(Boolean), entry).toBe(false);
        expect(opens[opens.length - 1], entry).toBe(notes.includes('fd'));
        const closeAt = notes.indexOf('close');
        const closing = walk
          .slice(1)
          .map((to, i) => (arcClosesSession(walk[i], to) ? `${ABBR[walk[i]]}>${ABBR[to]}` : null))
          .filter((x) => x !== null);
        expect(closing, entry).toEqual(closeAt >= 0 ? [notes[closeAt + 1]] : []);
      }
      // The transcription covers every pair of distinct supported states.
      const supported = ALL.filter((s) => stateSupported(s, flags));
      expect(seen.size).toBe(supported.length * (supported.length - 1));
    });
  }
});

describe('arc metadata (§3.3, §4.6)', () => {
  it('session effect of every base arc', () => {
    for (const [arc, effect] of EFFECTS) {
      const [from, to] = states(arc);
      expect(arcEffect(from, to), arc).toBe(effect);
    }
  });

  for (const flags of VALID_FLAG_WORDS) {
    it(`base arcs of flags 0x${flags.toString(16)}`, () => {
      const expected = BASE[flags].split(' ').map(states).map(([a, b]) => `${a}>${b}`).sort();
      expect(baseArcs(flags).map(([a, b]) => `${a}>${b}`).sort()).toEqual(expected);
      for (const cur of ALL) for (const to of ALL) expect(isBaseArc(cur, to, flags)).toBe(expected.includes(`${cur}>${to}`));
    });
  }
});

describe('invalid inputs', () => {
  it('state values outside 0..7 or not integers, as current or target', () => {
    for (const flags of VALID_FLAG_WORDS) {
      for (const bad of [8, -1, 1.5, Number.NaN, 255]) {
        einval(() => nextState(bad, DeviceState.RUNNING, flags));
        einval(() => nextState(DeviceState.RUNNING, bad, flags));
        einval(() => transitionPath(bad, DeviceState.STOP, flags));
        einval(() => transitionPath(DeviceState.STOP, bad, flags));
      }
    }
  });

  it('undefined flag words', () => {
    for (const flags of [0, 2, 4, 6, 8, 0xf, -1, 1.5, 0x9]) {
      einval(() => assertFlags(flags));
      einval(() => nextState(DeviceState.RUNNING, DeviceState.STOP, flags));
      einval(() => nextState(DeviceState.RUNNING, DeviceState.RUNNING, flags));
      einval(() => transitionPath(DeviceState.RUNNING, DeviceState.STOP, flags));
    }
  });

  it('ERROR as current or target, always', () => {
    for (const flags of VALID_FLAG_WORDS) {
      for (const s of ALL) {
        einval(() => nextState(DeviceState.ERROR, s, flags));
        einval(() => nextState(s, DeviceState.ERROR, flags));
      }
    }
  });

  it('the blocked STOP_COPY -> PRE_COPY / PRE_COPY_P2P requests end (no endless loop) with EINVAL', () => {
    einval(() => nextState(DeviceState.STOP_COPY, DeviceState.PRE_COPY, 0x5));
    einval(() => nextState(DeviceState.STOP_COPY, DeviceState.PRE_COPY, 0x7));
    einval(() => nextState(DeviceState.STOP_COPY, DeviceState.PRE_COPY_P2P, 0x7));
    einval(() => transitionPath(DeviceState.STOP_COPY, DeviceState.PRE_COPY_P2P, 0x7));
    // Without PRE_COPY the same requests fail earlier, as unsupported targets.
    einval(() => nextState(DeviceState.STOP_COPY, DeviceState.PRE_COPY, 0x3));
  });

  it('nextState(s, s, f) is s for every supported state', () => {
    for (const flags of VALID_FLAG_WORDS) {
      for (const s of ALL.filter((x) => stateSupported(x, flags))) expect(nextState(s, s, flags)).toBe(s);
    }
  });
});

/** Shortest distance over the base-arc graph, by breadth-first search. */
function bfs(flags: number, from: DeviceState, to: DeviceState): number {
  const dist = new Map<number, number>([[from, 0]]);
  const queue: number[] = [from];
  while (queue.length) {
    const s = queue.shift()!;
    if (s === to) return dist.get(s)!;
    for (const [a, b] of baseArcs(flags)) {
      if (a === s && !dist.has(b)) {
        dist.set(b, dist.get(s)! + 1);
        queue.push(b);
      }
    }
  }
  return Infinity;
}

const legalRequest = fc
  .constantFrom(...VALID_FLAG_WORDS)
  .chain((flags) => {
    const sup = ALL.filter((s) => stateSupported(s, flags));
    return fc.record({ flags: fc.constant(flags), cur: fc.constantFrom(...sup), target: fc.constantFrom(...sup) });
  })
  .filter(({ cur, target }) => !(cur === DeviceState.STOP_COPY && (target === DeviceState.PRE_COPY || target === DeviceState.PRE_COPY_P2P)));

describe('path properties (fast-check)', () => {
  it('every path is a shortest walk over the base arcs and ends at the target', () => {
    fc.assert(
      fc.property(legalRequest, ({ flags, cur, target }) => {
        const path = transitionPath(cur, target, flags);
        expect(path.length).toBe(bfs(flags, cur, target));
        if (path.length) expect(path[path.length - 1]).toBe(target);
        let from = cur;
        for (const to of path) {
          expect(isBaseArc(from, to, flags)).toBe(true);
          from = to;
        }
        expect(new Set([cur, ...path]).size).toBe(path.length + 1);
      }),
      { numRuns: 500 },
    );
  });

  it('a path opens a session only on its last arc and never passes through RESUMING', () => {
    fc.assert(
      fc.property(legalRequest, ({ flags, cur, target }) => {
        const path = transitionPath(cur, target, flags);
        const walk = [cur, ...path];
        for (let i = 0; i < path.length - 1; i++) expect(arcOpensSession(walk[i], walk[i + 1])).toBe(false);
        expect(path.slice(0, -1)).not.toContain(DeviceState.RESUMING);
        // At most one session-ending arc, and a saving state inside a path only when the walk stays in the group.
        expect(path.filter((to, i) => arcClosesSession(walk[i], to)).length).toBeLessThanOrEqual(1);
        if (path.slice(0, -1).some(isSavingState)) expect(isSavingState(cur) && isSavingState(target)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('nextState agrees with the first step of transitionPath for any input, valid or not', () => {
    fc.assert(
      fc.property(fc.integer({ min: -2, max: 9 }), fc.integer({ min: -2, max: 9 }), fc.integer({ min: 0, max: 8 }), (cur, target, flags) => {
        let hop: number | Error;
        try {
          hop = nextState(cur, target, flags);
        } catch (err) {
          hop = err as Error;
        }
        if (hop instanceof Error) {
          expect(hop).toMatchObject({ code: 'EINVAL' });
          expect(() => transitionPath(cur, target, flags)).toThrow();
        } else {
          const path = transitionPath(cur, target, flags);
          expect(path[0] ?? cur).toBe(hop);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
