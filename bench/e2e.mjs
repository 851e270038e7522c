// Question: how fast is a whole device-to-device move between two processes over a unix socket,
// against moving the same bytes with `cat | cat` and with the naive Node approach?
//
// - e2e-unix        SimDevice -> SavingStream -> RecordEncoder (crc32 per record, no compression) ->
//                   unix socket -> RecordDecoder -> ResumingStream -> SimDevice, source and destination
//                   in two processes (_e2e-peer.mjs), timed from the source's first device call to the
//                   destination device accepting RESUMING -> STOP; digests of both devices compared.
//                   MB/s of device bytes.          Baseline: `cat FILE | cat > /dev/null`, FILE holding
//                   the same device stream bytes, in page cache (two processes, one pipe).
// - e2e-unix-naive  same number.                   Baseline: fs.createReadStream(FILE) piped into a unix
//                   socket, the other process piping it into fs.createWriteStream('/dev/null').
// The data path's modules are used directly (not the orchestrator: no PRE_COPY, no control traffic),
// so the number is the data path's, with its opt-in memory reuse on (SavingStream and RecordDecoder
// `recycle`: chunks and payloads given back once written; BENCH_E2E_OPTIONS='{"recycle":false}'
// turns it off).
// - e2e-unix-migrate the whole product on the same device: migrate()/receive() in two processes
//                   (_prediction-peer.mjs; PRE_COPY, handshake, crc32 digests, switchover-ack,
//                   validation, resume), MB/s of device bytes over the source's durationMs.
//                   Baseline: the naive Node pair, as above. Profile 'mixed'. Runs interleaved after one untimed warm-up of
// each; medians. Each side's peak RSS (VmHWM) goes in the detail.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpStream, runMigratePair, runNaivePair, runPair } from './_pair.mjs';
import { GiB, MiB, mbps, median, result, runShell } from './lib.mjs';

export const names = ['e2e-unix', 'e2e-unix-naive', 'e2e-unix-migrate'];

const mib = (kb) => Math.round(kb / 1024);

export default async function run({ quick, log = () => {} }) {
  const size = quick ? 128 * MiB : 1 * GiB;
  const runs = quick ? 3 : 5;
  const profile = 'mixed';
  const dir = mkdtempSync(join(tmpdir(), 'bench-e2e-file-'));
  try {
    const file = join(dir, 'stream.bin');
    const bytes = await dumpStream(file, { size, profile });
    await runShell(`cat ${file} > /dev/null`); // into the page cache
    const ours = [];
    const cat = [];
    const naive = [];
    const mig = [];
    for (let i = 0; i <= runs; i++) {
      const o = await runPair({ size, profile });
      if (o.bytes !== bytes) throw new Error(`migrated ${o.bytes} bytes, the dump has ${bytes}`);
      const c = await runShell(`cat ${file} | cat > /dev/null`);
      if (c.code !== 0) throw new Error(`cat | cat exited ${c.code}: ${c.stderr}`);
      const n = await runNaivePair(file);
      if (n.bytes !== bytes) throw new Error(`naive pair moved ${n.bytes} bytes, expected ${bytes}`);
      const g = await runMigratePair({ size, profile });
      if (i === 0) continue; // warm-up
      ours.push(o);
      cat.push(c);
      naive.push(n);
      mig.push(g);
      log(
        `run ${i}: vfio-mig ${mbps(bytes, o.ms).toFixed(0)} MB/s (rss src ${mib(o.source.maxRssKB)} MiB, dst ${mib(o.dest.maxRssKB)} MiB), ` +
          `cat|cat ${mbps(bytes, c.ms).toFixed(0)} MB/s, naive ${mbps(bytes, n.ms).toFixed(0)} MB/s (rss src ${mib(n.source.maxRssKB)}, dst ${mib(n.dest.maxRssKB)}), ` +
          `migrate() ${mbps(g.bytes, g.ms).toFixed(0)} MB/s (rss src ${mib(g.source.maxRssKB)}, dst ${mib(g.dest.maxRssKB)})`,
      );
    }
    const oursMbps = median(ours.map((o) => mbps(bytes, o.ms)));
    const naiveMbps = median(naive.map((n) => mbps(bytes, n.ms)));
    const detail = {
      stateBytes: size,
      streamBytes: bytes,
      wireBytes: ours[0].wireBytes,
      profile,
      runs,
      sourceMaxRssMiB: mib(median(ours.map((o) => o.source.maxRssKB))),
      destinationMaxRssMiB: mib(median(ours.map((o) => o.dest.maxRssKB))),
    };
    return [
      result('e2e-unix', oursMbps, 'MB/s', 'cat FILE | cat > /dev/null', median(cat.map((c) => mbps(bytes, c.ms))), {
        ...detail,
        baselineMaxRssMiB: mib(median(cat.map((c) => c.maxRssKB))),
      }),
      result('e2e-unix-naive', oursMbps, 'MB/s', 'naive node: createReadStream->unix->file', naiveMbps, {
        ...detail,
        naiveSourceMaxRssMiB: mib(median(naive.map((n) => n.source.maxRssKB))),
        naiveDestinationMaxRssMiB: mib(median(naive.map((n) => n.dest.maxRssKB))),
      }),
      result('e2e-unix-migrate', median(mig.map((g) => mbps(g.bytes, g.ms))), 'MB/s', 'naive node: createReadStream->unix->file', naiveMbps, {
        stateBytes: size,
        deviceBytes: mig[0].bytes,
        profile,
        runs,
        downtimeMs: median(mig.map((g) => g.source.downtimeMs)),
        sourceMaxRssMiB: mib(median(mig.map((g) => g.source.maxRssKB))),
        destinationMaxRssMiB: mib(median(mig.map((g) => g.dest.maxRssKB))),
      }),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
