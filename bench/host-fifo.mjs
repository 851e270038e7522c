// Question: how fast do a hosted device's bytes move through the device host's FIFO data fds?
//
// host-fifo-read: a SimDevice ('zero' profile: the device costs least, so the host's pump and the
// FIFO are what is measured) runs in a device host child (fdKind 'fifo') in STOP_COPY; ours is
// createSavingStream(session) consumed to its end. Baseline: `dd of=/dev/null bs=1M` reading the
// same kind of FIFO (a blocking reopen of the session's fd as its stdin): the ceiling of the
// child's pump and the pipe on this machine.
// host-fifo-copy: a 'mixed' SimDevice migrated host -> host, SavingStream piped into
// ResumingStream on the two FIFOs (three processes). Baseline: the same two devices in this
// process, method sessions (no fds, no child): what the process split and the fds cost.
import { openSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import {
  MigrationCore,
  SimDevice,
  createResumingStream,
  createSavingStream,
  spawnDeviceHost,
} from '../dist/index.js';
import { MiB, mbps, median, result, runDd } from './lib.mjs';

export const names = ['host-fifo-read', 'host-fifo-copy'];

const STOP_COPY = 3;
const RESUMING = 4;
const STOP = 1;

async function stopCopyHost(size, profile) {
  const host = await spawnDeviceHost({ device: 'sim', options: { size, profile, seed: 1, flags: 0x1 } });
  const session = await new MigrationCore(host).setState(STOP_COPY);
  return { host, session };
}

async function readOurs(size) {
  const { host, session } = await stopCopyHost(size, 'zero');
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
  const { host, session } = await stopCopyHost(size, 'zero');
  // dd needs a blocking fd: the session's fd is O_NONBLOCK, so give dd its own description.
  const fd = openSync(`/proc/self/fd/${session.fd}`, 'r');
  try {
    return await runDd(['of=/dev/null', 'bs=1M'], fd);
  } finally {
    await host.close();
  }
}

/** Device `a`'s STOP_COPY stream into device `b` (RESUMING -> STOP): { ms, bytes }, timed from the first read to b's STOP. */
async function copyState(a, b) {
  const ss = await new MigrationCore(a).setState(STOP_COPY);
  const dst = new MigrationCore(b);
  const rs = await dst.setState(RESUMING);
  const reader = createSavingStream(ss, { chunkSize: MiB });
  const t0 = performance.now();
  await pipeline(reader, createResumingStream(rs));
  await dst.setState(STOP);
  return { ms: performance.now() - t0, bytes: reader.bytesRead };
}

async function copyHosts(size) {
  const opts = { size, profile: 'mixed', seed: 3, flags: 0x1 };
  const [a, b] = await Promise.all([
    spawnDeviceHost({ device: 'sim', options: opts }),
    spawnDeviceHost({ device: 'sim', options: opts }),
  ]);
  try {
    const r = await copyState(a, b);
    if ((await a.digest()) !== (await b.digest())) throw new Error('host-fifo-copy: digests differ');
    return r;
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

async function copyInProcess(size) {
  const opts = { size, profile: 'mixed', seed: 3, flags: 0x1 };
  const a = new SimDevice(opts);
  const b = new SimDevice(opts);
  const r = await copyState(a, b);
  if (a.digest() !== b.digest()) throw new Error('in-process copy: digests differ');
  a.close();
  b.close();
  return r;
}

export default async function run({ quick, log = () => {} }) {
  const size = quick ? 64 * MiB : 512 * MiB;
  const runs = quick ? 1 : 3;
  const ours = [];
  const dd = [];
  const hosts = [];
  const inproc = [];
  // Interleaved, so drift (page cache, CPU frequency) hits both alike.
  for (let i = 0; i < runs; i++) {
    ours.push(await readOurs(size));
    dd.push(await readDd(size));
    hosts.push(await copyHosts(size));
    inproc.push(await copyInProcess(size));
  }
  if (ours[0].bytes !== dd[0].bytes) throw new Error(`byte counts differ: ours ${ours[0].bytes}, dd ${dd[0].bytes}`);
  log(`${(ours[0].bytes / MiB).toFixed(0)} MiB STOP_COPY stream from a device host (fdKind 'fifo'), ${runs} run(s) each; SavingStream path '${ours[0].path}'`);
  return [
    result('host-fifo-read', median(ours.map((o) => mbps(o.bytes, o.ms))), 'MB/s', 'dd bs=1M on the same FIFO', median(dd.map((o) => mbps(o.bytes, o.ms))), {
      bytes: ours[0].bytes,
      runs,
    }),
    result('host-fifo-copy', median(hosts.map((o) => mbps(o.bytes, o.ms))), 'MB/s', 'same devices in process (method sessions)', median(inproc.map((o) => mbps(o.bytes, o.ms))), {
      bytes: hosts[0].bytes,
      runs,
    }),
  ];
}
