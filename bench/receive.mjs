// Question: how fast does a destination take a stream in through the fd: and file: transports,
// against the naive Node way of reading the same fd or file?
//
// - receive-fd-{1MiB,16KiB}-records: an encoded stream of 256 MiB written into a FIFO by a net.Socket
//   in the same process, read through an fd:R,W connection (connectTransport: 1 MiB chunks the
//   decoder gives back, read targets) into a RecordDecoder (`recycle`, payloads given back once
//   seen, as receive() does). Baseline: the same FIFO read by `new net.Socket({ fd })` (Node's own
//   reads) piped into the same decoder.
// - restore-file-{1MiB,16KiB}-records: the same stream saved as a file, restored through
//   listenTransport('file:...') (an FdSource with `recycle`). Baseline: fs.createReadStream of the
//   file (1 MiB highWaterMark) piped into the same decoder. The file is in the page cache.
// MB/s of payload; runs alternate between the two, medians over `runs`.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { RecordEncoder, RecordDecoder, RecordType, connectTransport, listenTransport } from '../dist/index.js';
import { MiB, alternatingRow } from './lib.mjs';

export const names = ['receive-fd-', 'restore-file-'];

const DEVICES = [{ name: 'd0', identity: { kind: 'sim', model: 'bench', version: '1.0', flags: 7, stateSize: 0 } }];
const SIZES = [
  ['1MiB', MiB],
  ['16KiB', 16 * 1024],
];

/** Encode `bytes` of `record`-sized payloads into `sink`; resolves once the encoder ended. */
async function encodeInto(sink, bytes, record) {
  const payload = Buffer.alloc(record);
  for (let i = 0; i < record; i += 4096) payload.fill((i / 4096) % 251, i, Math.min(record, i + 4096));
  const enc = new RecordEncoder({ devices: DEVICES });
  enc.pipe(sink);
  for (let sent = 0; sent < bytes; sent += record) {
    if (!enc.write({ type: RecordType.DATA, device: 0, payload })) await new Promise((r) => enc.once('drain', r));
  }
  enc.end({ type: RecordType.STREAM_END });
  await new Promise((r) => enc.once('end', r));
}

/** Pipe `source` into a recycling decoder, give every payload back; resolves the payload bytes. */
async function decode(source) {
  const dec = new RecordDecoder({ recycle: true });
  source.pipe(dec);
  let got = 0;
  for await (const o of dec) {
    if (o.type !== RecordType.DATA) continue;
    got += o.payload.length;
    dec.release(o.payload);
  }
  return got;
}

/** One run through a FIFO: `viaTransport` reads it through fd:R,W, else through net.Socket({ fd }). */
async function fifoRun(dir, bytes, record, viaTransport) {
  const fifo = path.join(dir, 'in');
  const back = path.join(dir, 'back');
  execFileSync('mkfifo', [fifo, back]);
  // Readers first (non-blocking opens), then writers: no end blocks waiting for the other.
  const r = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const farW = fs.openSync(fifo, 'w');
  const farR = fs.openSync(back, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const w = fs.openSync(back, 'w');
  const far = new net.Socket({ fd: farW, readable: false, writable: true });
  let conn;
  try {
    if (viaTransport) conn = await connectTransport(`fd:${r},${w}`);
    else {
      conn = new net.Socket({ fd: r, readable: true, writable: false });
      fs.closeSync(w);
    }
    const t0 = performance.now();
    const [got] = await Promise.all([decode(conn), encodeInto(far, bytes, record).then(() => far.end())]);
    const ms = performance.now() - t0;
    if (got !== bytes) throw new Error(`received ${got} bytes, sent ${bytes}`);
    return ms;
  } finally {
    far.destroy();
    conn?.destroy();
    fs.closeSync(farR);
    fs.rmSync(fifo);
    fs.rmSync(back);
  }
}

/** One restore of `file`: through the file: transport, or fs.createReadStream. */
async function fileRun(file, bytes, viaTransport) {
  const t0 = performance.now();
  let got;
  if (viaTransport) {
    const l = await listenTransport(`file:${file}`);
    try {
      got = await decode(await l.accept());
    } finally {
      await l.close();
    }
  } else {
    got = await decode(fs.createReadStream(file, { highWaterMark: MiB }));
  }
  const ms = performance.now() - t0;
  if (got !== bytes) throw new Error(`restored ${got} bytes, the file holds ${bytes}`);
  return ms;
}

export default async function run({ quick }) {
  const bytes = (quick ? 32 : 256) * MiB;
  const ab = { bytes, warmBytes: 8 * MiB, runs: quick ? 1 : 3 };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-mig-bench-receive-'));
  const rows = [];
  try {
    for (const [label, record] of SIZES) {
      rows.push(
        await alternatingRow(
          `receive-fd-${label}-records`,
          'naive: net.Socket({ fd }) on the same FIFO',
          ab,
          (n) => fifoRun(dir, n, record, true),
          (n) => fifoRun(dir, n, record, false),
        ),
      );
      const file = path.join(dir, `ckpt-${label}.vfm`);
      const out = fs.createWriteStream(file);
      await encodeInto(out, bytes, record);
      if (!out.closed) await new Promise((r) => out.once('close', r));
      // Both sides restore the whole file (the warm-up rounds too).
      rows.push(
        await alternatingRow(
          `restore-file-${label}-records`,
          'naive: fs.createReadStream of the same file',
          { ...ab, warmBytes: bytes },
          () => fileRun(file, bytes, true),
          () => fileRun(file, bytes, false),
        ),
      );
      fs.rmSync(file);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
