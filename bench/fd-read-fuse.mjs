// Question: how fast does the project's SavingStream read a saving session served as a FUSE data fd
// (kernel-faithful semantics, issue 8), against `dd bs=1M` reading the same kind of file?
//
// A SimDevice ('zero' profile: the device itself costs least, so the file path is what is measured)
// runs in a device host child with fdKind 'fuse' and is moved to STOP_COPY; this process gets the
// saving session's FUSE fd. Ours: createSavingStream(session) consumed to its end. Baseline: dd with
// that same fd as its input (`dd of=/dev/null bs=1M` reading fd 0, which is the file). Both read
// through the same C server and the same Node bridge in the child, so the ratio is the reader's
// overhead; the dd figure is the ceiling of the FUSE file itself on this machine.
import { existsSync } from 'node:fs';
import { createSavingStream, fuseAvailability, spawnDeviceHost, transitionPath } from '../dist/index.js';
import { MiB, mbps, median, result, runDd } from './lib.mjs';

export const names = ['fd-read-fuse'];

async function stopCopySession(size) {
  const host = await spawnDeviceHost({
    device: 'sim',
    options: { size, profile: 'zero', seed: 1 },
    fdKind: 'fuse',
  });
  let session = null;
  let cur = await host.getState();
  for (const hop of transitionPath(cur, 3 /* STOP_COPY */, host.flags)) {
    session = (await host.step(cur, hop)) ?? session;
    cur = hop;
  }
  return { host, session };
}

async function readOurs(size) {
  const { host, session } = await stopCopySession(size);
  try {
    const stream = createSavingStream(session, { chunkSize: MiB });
    const t0 = performance.now();
    let bytes = 0;
    for await (const chunk of stream) bytes += chunk.length;
    return { ms: performance.now() - t0, bytes, path: stream.path };
  } finally {
    await host.close();
  }
}

async function readDd(size) {
  const { host, session } = await stopCopySession(size);
  try {
    return await runDd(['of=/dev/null', 'bs=1M'], session.fd);
  } finally {
    await host.close();
  }
}

export default async function run({ quick, log = () => {} }) {
  const avail = fuseAvailability();
  if (!avail.ok) {
    log(`skipped: ${avail.reason}`);
    return [];
  }
  if (!existsSync('/bin/dd') && !existsSync('/usr/bin/dd')) {
    log('skipped: dd not found');
    return [];
  }
  const size = quick ? 64 * MiB : 384 * MiB;
  const runs = quick ? 1 : 3;
  const ours = [];
  const dd = [];
  // Interleaved, so drift (page cache, CPU frequency) hits both alike.
  for (let i = 0; i < runs; i++) {
    ours.push(await readOurs(size));
    dd.push(await readDd(size));
  }
  if (ours[0].bytes !== dd[0].bytes) throw new Error(`byte counts differ: ours ${ours[0].bytes}, dd ${dd[0].bytes}`);
  const oursMbps = median(ours.map((o) => mbps(o.bytes, o.ms)));
  const ddMbps = median(dd.map((o) => mbps(o.bytes, o.ms)));
  log(`${(ours[0].bytes / MiB).toFixed(0)} MiB STOP_COPY stream, SimDevice 'zero', device host fdKind 'fuse', ${runs} run(s) each; SavingStream path '${ours[0].path}'`);
  return [
    result('fd-read-fuse', oursMbps, 'MB/s', 'dd bs=1M on the same FUSE file', ddMbps, {
      bytes: ours[0].bytes,
      runs,
      oursMs: ours.map((o) => Math.round(o.ms)),
      ddMs: dd.map((o) => Math.round(o.ms)),
    }),
  ];
}
