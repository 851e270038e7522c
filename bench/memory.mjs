// Question: does a migration's memory grow with the size of the device state? It must not: every
// queue on the data path has a byte cap, so the source and destination processes should peak at the
// same RSS for 1, 4 and 16 GiB.
//
// Each size is one two-process run of the e2e data path (_e2e-peer.mjs: SimDevice -> SavingStream ->
// RecordEncoder -> unix socket -> RecordDecoder -> ResumingStream -> SimDevice, digests compared),
// profile 'zero' (the fastest to generate and verify: the bench is about memory, not content).
// Value: the process's peak RSS (VmHWM, see _e2e-peer.mjs) in MiB; baseline: the same side's peak RSS for the
// smallest size; ratio = value / baseline (1.0 is the goal; lower is better). RSS includes node itself
// (~40 MiB empty) and SimDevice's own bookkeeping (a received-page bitmap: 512 KiB at 16 GiB).
import { GiB, MiB, mbps, result } from './lib.mjs';
import { runPair } from './_pair.mjs';

export const names = ['rss-source-', 'rss-destination-'];

const label = (bytes) => (bytes >= GiB ? `${bytes / GiB}GiB` : `${bytes / MiB}MiB`);
const mib = (kb) => Math.round((kb / 1024) * 10) / 10;

export default async function run({ quick, log = () => {} }) {
  const sizes = quick ? [256 * MiB, 1 * GiB] : [1 * GiB, 4 * GiB, 16 * GiB];
  const runs = [];
  for (const size of sizes) {
    const o = await runPair({ size, profile: 'zero' });
    const seconds = o.ms / 1000;
    log(
      `${label(size)}: source ${mib(o.source.maxRssKB)} MiB, destination ${mib(o.dest.maxRssKB)} MiB, ` +
        `${seconds.toFixed(1)} s (${mbps(o.bytes, o.ms).toFixed(0)} MB/s)${seconds > 60 ? ' -- over 60 s' : ''}`,
    );
    runs.push({ size, ...o });
  }
  const base = runs[0];
  const rows = [];
  for (const side of ['source', 'destination']) {
    const key = side === 'source' ? 'source' : 'dest';
    for (const r of runs) {
      rows.push(
        result(`rss-${side}-${label(r.size)}`, mib(r[key].maxRssKB), 'MiB', `rss-${side}-${label(base.size)} (lower is better)`, mib(base[key].maxRssKB), {
          stateBytes: r.size,
          streamBytes: r.bytes,
          seconds: Math.round(r.ms) / 1000,
          profile: 'zero',
        }),
      );
    }
  }
  return rows;
}
