// One side of a two-process end-to-end run (bench/e2e.mjs, bench/memory.mjs), started by the parent
// with an IPC channel. Not run by bench/run.mjs (leading underscore).
//
//   node _e2e-peer.mjs dest   <socket> <size> <profile> <seed> [zstdLevel|off]
//   node _e2e-peer.mjs source <socket> <size> <profile> <seed> [zstdLevel|off]
//   node _e2e-peer.mjs naive-dest   <socket>
//   node _e2e-peer.mjs naive-source <socket> <file>
//   node _e2e-peer.mjs dump <file> <size> <profile> <seed>     (the device's stream bytes, for baselines)
//
// vfio-mig roles use the data-path modules directly, not the orchestrator, so the number is the data
// path's: SimDevice -> SavingStream -> RecordEncoder -> unix socket -> RecordDecoder -> ResumingStream
// -> SimDevice, and RESUMING -> STOP (the device validates what it loaded) before the end is stamped.
// Each side reports to the parent over IPC: timestamps on the shared clock (performance.timeOrigin +
// performance.now(), milliseconds since the epoch with sub-ms precision), bytes, its device digest and
// its own peak RSS (VmHWM, KiB).
import fs from 'node:fs';
import net from 'node:net';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DeviceState,
  MigrationCore,
  RecordDecoder,
  RecordEncoder,
  RecordType,
  SimDevice,
  connectTransport,
  createResumingStream,
  createSavingStream,
  listenTransport,
} from '../dist/index.js';

const now = () => performance.timeOrigin + performance.now();
// Peak RSS of this process image, KiB. Not getrusage's maxRSS: Linux carries the forking parent's
// high-water mark across execve (exec_mmap), so a peer forked by a big bench runner would report the
// runner's RSS. VmHWM belongs to the new mm.
const maxRssKB = () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN);
/** CPU milliseconds (user, system) since `from` (a process.cpuUsage() value). */
const cpuMs = (from) => {
  const u = process.cpuUsage(from);
  return { userMs: u.user / 1000, sysMs: u.system / 1000 };
};
const MiB = 1024 * 1024;
// BENCH_E2E_OPTIONS: JSON of stream options to try, { sav, enc, dec, res, recycle } (createSavingStream,
// RecordEncoder, RecordDecoder, createResumingStream), e.g. '{"enc":{"checksums":false}}'.
// recycle (default true): the source's device chunks go back to its SavingStream once the socket
// has written them, and the destination's decoder gets its payloads back once the device took them
// (the data path's opt-in reuse; '{"recycle":false}' measures without it).
// conn: transport options of both ends, e.g. '{"conn":{"sendBufferBytes":0}}' for the kernel's default
// unix send buffer.
const X = { recycle: true, ...JSON.parse(process.env.BENCH_E2E_OPTIONS ?? '{}') };

function send(msg) {
  return new Promise((resolve) => process.send(msg, () => resolve()));
}

/** The source device: `seed`-generated content with some pages rewritten, so a destination that
 * loaded nothing (or the wrong bytes) has a different digest. */
function sourceDevice(size, profile, seed) {
  const dev = new SimDevice({ size, profile, seed });
  dev.dirtyPages(Math.min(1024, dev.pageCount));
  return dev;
}

function compressionOption(arg) {
  if (arg === undefined || arg === 'off') return false;
  return { level: Number(arg) };
}

async function dest([sock, sizeArg, profile, seedArg]) {
  const size = Number(sizeArg);
  const dev = new SimDevice({ size, profile, seed: Number(seedArg) });
  const core = new MigrationCore(dev);
  const session = await core.setState(DeviceState.RESUMING);
  const listener = await listenTransport(`unix:${sock}`, X.conn ?? {});
  await send({ listening: listener.url });
  const conn = await listener.accept();
  const tAccept = now();
  const cpu0 = process.cpuUsage();
  await listener.close();
  const resuming = createResumingStream(session, X.res ?? {});
  // X.recycle: payloads the decoder assembled go back to it once the device took them.
  const decoder = new RecordDecoder({ ...(X.dec ?? {}), ...(X.recycle ? { recycle: true } : {}) });
  let records = 0;
  // DATA payloads go to the device at the resuming stream's pace: the callback waits for 'drain'.
  const load = new Writable({
    objectMode: true,
    highWaterMark: 16,
    write(rec, _enc, cb) {
      records++;
      if (rec.type !== RecordType.DATA) return cb();
      const done = X.recycle ? () => decoder.release(rec.payload) : undefined;
      if (resuming.write(rec.payload, done)) cb();
      else resuming.once('drain', () => cb());
    },
    final(cb) {
      resuming.end();
      resuming.once('finish', () => cb());
    },
  });
  resuming.on('error', (err) => load.destroy(err));
  await pipeline(conn, decoder, load);
  await core.setState(DeviceState.STOP); // the device validates the loaded state (RESUMING -> STOP)
  const tEnd = now();
  const digest = dev.digest();
  conn.destroy();
  await send({ done: true, tAccept, tEnd, digest, bytes: resuming.bytesWritten, wireBytes: decoder.bytesIn, records, cpu: cpuMs(cpu0), mem: process.memoryUsage(), maxRssKB: maxRssKB() });
}

async function source([sock, sizeArg, profile, seedArg, zstd]) {
  const size = Number(sizeArg);
  const dev = sourceDevice(size, profile, Number(seedArg));
  const core = new MigrationCore(dev);
  const conn = await connectTransport(`unix:${sock}`, X.conn ?? {});
  const t0 = now();
  const cpu0 = process.cpuUsage();
  const session = await core.setState(DeviceState.STOP_COPY);
  // X.recycle: the device chunks go back to the SavingStream once the socket has written them.
  const saving = createSavingStream(session, { ...(X.sav ?? {}), ...(X.recycle ? { recycle: true } : {}) });
  const encoder = new RecordEncoder({ devices: [{ name: 'dev0', identity: core.identity() }], compression: compressionOption(zstd), ...(X.enc ?? {}) });
  // Device chunks become DATA records; the device's end of stream closes the device and the stream.
  const toRecords = new Transform({
    writableObjectMode: false,
    readableObjectMode: true,
    writableHighWaterMark: MiB,
    readableHighWaterMark: 4,
    transform(chunk, _enc, cb) {
      cb(null, { type: RecordType.DATA, device: 0, payload: chunk });
    },
    flush(cb) {
      this.push({ type: RecordType.DEVICE_END, device: 0 });
      this.push({ type: RecordType.STREAM_END });
      cb();
    },
  });
  // With recycling, each chunk is written with a callback that gives it back (a header chunk is
  // not the stream's: release() refuses it).
  const out = !X.recycle
    ? conn
    : new Writable({
        highWaterMark: MiB,
        write(chunk, _e, cb) {
          if (conn.write(chunk, () => saving.release(chunk))) cb();
          else conn.once('drain', () => cb());
        },
        final(cb) {
          conn.end(() => cb());
        },
      });
  await pipeline(saving, toRecords, encoder, out);
  const tSent = now();
  await core.setState(DeviceState.STOP);
  await send({ done: true, t0, tSent, digest: dev.digest(), bytes: saving.bytesRead, wireBytes: encoder.bytesOut, compressedRecords: encoder.compressedRecords, cpu: cpuMs(cpu0), mem: process.memoryUsage(), maxRssKB: maxRssKB() });
}

async function naiveDest([sock]) {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(sock, resolve));
  await send({ listening: sock });
  const conn = await new Promise((resolve) => server.once('connection', resolve));
  server.close();
  let bytes = 0;
  conn.on('data', (d) => (bytes += d.length));
  await pipeline(conn, fs.createWriteStream('/dev/null'));
  const tEnd = now();
  await send({ done: true, tEnd, bytes, maxRssKB: maxRssKB() });
}

async function naiveSource([sock, file]) {
  const conn = await new Promise((resolve, reject) => {
    const c = net.connect(sock, () => resolve(c));
    c.once('error', reject);
  });
  const t0 = now();
  await pipeline(fs.createReadStream(file), conn);
  await send({ done: true, t0, maxRssKB: maxRssKB() });
}

async function dump([file, sizeArg, profile, seedArg]) {
  const dev = sourceDevice(Number(sizeArg), profile, Number(seedArg));
  const core = new MigrationCore(dev);
  const session = await core.setState(DeviceState.STOP_COPY);
  const saving = createSavingStream(session);
  await pipeline(saving, fs.createWriteStream(file, { highWaterMark: 4 * MiB }));
  await send({ done: true, bytes: saving.bytesRead });
}

const roles = { dest, source, 'naive-dest': naiveDest, 'naive-source': naiveSource, dump };
const [role, ...args] = process.argv.slice(2);
const fn = roles[role];
if (!fn) {
  process.stderr.write(`_e2e-peer: unknown role ${role}\n`);
  process.exit(64);
}
fn(args).then(
  () => process.disconnect?.(),
  (err) => {
    process.stderr.write(`_e2e-peer ${role}: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
