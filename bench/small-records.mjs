// Question: does the receiving side keep its speed when records are small (a device whose reads
// return 16 KiB), where read targets cannot keep the bytes out of the socket's own memory?
//
// - transport-16KiB-records: RecordEncoder -> a unix: connection (connectTransport) -> the accepted
//   connection (listenTransport: reads into 1 MiB chunks, read targets, chunks given back by the
//   decoder through INPUT_RELEASE) -> RecordDecoder (`recycle`), every payload given back once seen,
//   as receive() does once a device took it. In one process; MB/s of payload.
//   Baseline: the same encoder and decoder over a plain `net` server's connection (Node's own reads:
//   a new 64 KiB buffer per read, records spanning reads copied), the naive way to receive a stream.
// Runs alternate between the two, medians over `runs`.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { RecordEncoder, RecordDecoder, RecordType, listenTransport, connectTransport } from '../dist/index.js';
import { MiB, alternatingRow } from './lib.mjs';

export const names = ['transport-16KiB-records'];

const RECORD = 16 * 1024;
const DEVICES = [{ name: 'd0', identity: { kind: 'sim', model: 'bench', version: '1.0', flags: 7, stateSize: 0 } }];

/** Encode `bytes` of RECORD-sized payloads into `client`, decode them from `server`; resolve ms. */
async function moveOnce(client, server, bytes) {
  const payload = Buffer.alloc(RECORD);
  for (let i = 0; i < RECORD; i += 4096) payload.fill(i / 4096 + 1, i, i + 4096);
  const dec = new RecordDecoder({ recycle: true });
  server.pipe(dec);
  const enc = new RecordEncoder({ devices: DEVICES });
  enc.pipe(client);
  const t0 = performance.now();
  const send = (async () => {
    for (let sent = 0; sent < bytes; sent += RECORD) {
      if (!enc.write({ type: RecordType.DATA, device: 0, payload })) await new Promise((r) => enc.once('drain', r));
    }
    enc.end({ type: RecordType.STREAM_END });
  })();
  let got = 0;
  for await (const o of dec) {
    if (o.type !== RecordType.DATA) continue;
    got += o.payload.length;
    dec.release(o.payload);
  }
  const ms = performance.now() - t0;
  await send;
  if (got !== bytes) throw new Error(`received ${got} bytes, sent ${bytes}`);
  return ms;
}

/** The package's unix transport on both ends. */
async function viaTransport(dir, bytes) {
  const l = await listenTransport(`unix:${path.join(dir, 't.sock')}`);
  try {
    const [client, server] = await Promise.all([connectTransport(l.url, {}), l.accept()]);
    try {
      return await moveOnce(client, server, bytes);
    } finally {
      client.destroy();
      server.destroy();
    }
  } finally {
    await l.close();
  }
}

/** A plain net server and client on a unix socket: Node's own reads. */
async function viaPlainNet(dir, bytes) {
  const file = path.join(dir, 'n.sock');
  const server = net.createServer();
  await new Promise((resolve, reject) => server.once('error', reject).listen(file, resolve));
  try {
    const accepted = new Promise((resolve) => server.once('connection', resolve));
    const client = net.connect(file);
    await new Promise((resolve, reject) => client.once('connect', resolve).once('error', reject));
    const conn = await accepted;
    try {
      return await moveOnce(client, conn, bytes);
    } finally {
      client.destroy();
      conn.destroy();
    }
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

export default async function run({ quick }) {
  const bytes = (quick ? 32 : 256) * MiB;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-mig-bench-small-'));
  try {
    return [
      await alternatingRow(
        'transport-16KiB-records',
        "naive: plain net socket (Node's 64 KiB reads)",
        { bytes, warmBytes: 8 * MiB, runs: quick ? 1 : 5, detail: { recordBytes: RECORD } },
        (n) => viaTransport(dir, n),
        (n) => viaPlainNet(dir, n),
      ),
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
