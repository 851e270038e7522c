// Question: what do the state machine's next-hop and path computations cost per call?
//
// Micro-benchmarks with the `benchmark` package, each op one sweep over every (current, target) pair
// a device of each valid flag word (0x1, 0x3, 0x5, 0x7) supports:
// - fsm-next-hop: nextState(cur, target, flags), which validates its arguments (flags word, both
//   states supported) and walks the kernel's table. Million calls per second.
//   Baseline: the same answers read from a precomputed Uint8Array (the floor of any lookup).
//   Pairs the kernel blocks (nextState throws EINVAL) are left out: they are errors, not lookups.
// - fsm-path: transitionPath(cur, target, flags), the whole hop list (an array per call).
//   Baseline: the same paths read from a precomputed array of arrays.
// Ratio = ours / the precomputed lookup (1.0 would mean validation and the walk cost nothing).
import Benchmark from 'benchmark';
import { DEVICE_STATE_COUNT, VALID_FLAG_WORDS, nextState, stateSupported, transitionPath } from '../dist/index.js';
import { result } from './lib.mjs';

export const names = ['fsm-'];

function measure(name, fn, quick) {
  return new Promise((resolve, reject) => {
    const bench = new Benchmark(name, {
      fn,
      maxTime: quick ? 0.3 : 2,
      minSamples: quick ? 3 : 10,
      onError: (e) => reject(e.target?.error ?? e),
      onComplete() {
        resolve({ hz: this.hz, rme: this.stats.rme });
      },
    });
    bench.run({ async: true });
  });
}

export default async function run({ quick }) {
  // Every supported pair of every flag word, as flat arrays (no allocation in the timed loops).
  const cur = [];
  const tgt = [];
  const flg = [];
  let blocked = 0;
  for (const flags of VALID_FLAG_WORDS) {
    for (let c = 0; c < DEVICE_STATE_COUNT; c++) {
      for (let t = 0; t < DEVICE_STATE_COUNT; t++) {
        if (!stateSupported(c, flags) || !stateSupported(t, flags)) continue;
        try {
          nextState(c, t, flags);
        } catch {
          blocked++; // the kernel refuses these (e.g. STOP_COPY -> PRE_COPY): an error, not a lookup
          continue;
        }
        {
          cur.push(c);
          tgt.push(t);
          flg.push(flags);
        }
      }
    }
  }
  const n = cur.length;
  const hopTable = new Uint8Array(n);
  const pathTable = [];
  let hops = 0;
  for (let i = 0; i < n; i++) {
    hopTable[i] = nextState(cur[i], tgt[i], flg[i]);
    pathTable.push(transitionPath(cur[i], tgt[i], flg[i]));
    hops += pathTable[i].length;
  }
  // Sinks keep the JIT from dropping the calls.
  let sink = 0;
  const next = await measure('fsm-next-hop', () => {
    for (let i = 0; i < n; i++) sink ^= nextState(cur[i], tgt[i], flg[i]);
  }, quick);
  const nextBase = await measure('fsm-next-hop-table', () => {
    for (let i = 0; i < n; i++) sink ^= hopTable[i];
  }, quick);
  const path = await measure('fsm-path', () => {
    for (let i = 0; i < n; i++) sink ^= transitionPath(cur[i], tgt[i], flg[i]).length;
  }, quick);
  const pathBase = await measure('fsm-path-table', () => {
    for (let i = 0; i < n; i++) sink ^= pathTable[i].length;
  }, quick);
  if (sink === -1) throw new Error('unreachable');
  const mops = (r) => (r.hz * n) / 1e6;
  return [
    result('fsm-next-hop', mops(next), 'Mops/s', 'precomputed Uint8Array lookup', mops(nextBase), {
      pairs: n,
      blockedPairsLeftOut: blocked,
      nsPerCall: +(1e9 / (next.hz * n)).toFixed(1),
      rme: +next.rme.toFixed(1),
    }),
    result('fsm-path', mops(path), 'Mops/s', 'precomputed path array lookup', mops(pathBase), {
      pairs: n,
      meanHops: +(hops / n).toFixed(2),
      nsPerCall: +(1e9 / (path.hz * n)).toFixed(1),
      rme: +path.rme.toFixed(1),
    }),
  ];
}
