// Question: what does warmUp() buy the first migration of a process? A 64 MiB SimDevice ('mixed', no
// dirtying) moves with migrate()/receive() under a 200 MB/s cap, each side a fresh process
// (_prediction-peer.mjs), once with both sides calling warmUp() first and once without; the pairs
// alternate. Cold, the switchover's code (stop, stop-copy read, DEVICE_END, digest and commit;
// commit, RESUMING -> STOP, the digest check and the resume on the destination) is compiled inside
// the downtime.
// Rows (medians of the pairs, ms, lower is better):
// - first-downtime-warm          downtime with warmUp().      Baseline: the same move without it.
// - first-downtime-warm-error    |predicted - measured| / measured with warmUp(), the median.
//                                Baseline: the same without warmUp().
import { MiB, median, result } from './lib.mjs';
import { runPredictionPeers } from './_pair.mjs';

export const names = ['first-downtime-'];

async function pair(warm) {
  const { src, lingering } = await runPredictionPeers(
    {
      size: 64 * MiB,
      profile: 'mixed',
      seed: 11,
      dirtyRate: 0,
      bandwidth: 200e6,
      compression: 'none',
      limitMs: 100,
      windowMs: 500,
      timeoutMs: 20_000,
      blind: false,
      warmUp: warm,
    },
    'bench-warm-',
  );
  if (!src.ok) throw new Error(`warm-up bench: the ${warm ? 'warm' : 'cold'} migration failed (${src.code}: ${src.message})`);
  if (lingering.length > 0) throw new Error(`warm-up bench: ${lingering.join(' and ')} still running 10 s after reporting`);
  return { downtimeMs: src.downtimeMs, predictedMs: src.predictedDowntimeMs };
}

export default async function run({ quick, log = () => {} }) {
  const pairs = quick ? 2 : 8;
  const warm = [];
  const cold = [];
  for (let i = 0; i < pairs; i++) {
    cold.push(await pair(false));
    warm.push(await pair(true));
    log(
      `pair ${i + 1}: cold ${cold.at(-1).downtimeMs.toFixed(1)} ms (predicted ${cold.at(-1).predictedMs.toFixed(1)}), ` +
        `warm ${warm.at(-1).downtimeMs.toFixed(1)} ms (predicted ${warm.at(-1).predictedMs.toFixed(1)})`,
    );
  }
  const err = (r) => Math.abs(r.predictedMs - r.downtimeMs) / r.downtimeMs;
  const detail = {
    pairs,
    warmMs: warm.map((r) => r.downtimeMs),
    coldMs: cold.map((r) => r.downtimeMs),
    warmPredictedMs: warm.map((r) => r.predictedMs),
    coldPredictedMs: cold.map((r) => r.predictedMs),
  };
  return [
    result('first-downtime-warm', median(warm.map((r) => r.downtimeMs)), 'ms', 'the same move without warmUp() (lower is better)', median(cold.map((r) => r.downtimeMs)), detail),
    result('first-downtime-warm-error', median(warm.map(err)), 'frac', 'the same without warmUp() (lower is better)', median(cold.map(err)), {
      warm: warm.map(err),
      cold: cold.map(err),
    }),
  ];
}
