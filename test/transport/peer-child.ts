/**
 * A peer process for the transport tests. Usage:
 *   peer-child.ts exchange URL BYTES [TLS-DIR]  connect to URL, send BYTES random bytes and read
 *                                                everything back at the same time; print the digests
 *   peer-child.ts hold URL                       connect, read nothing, wait to be killed
 *   peer-child.ts fifos IN OUT BYTES             open FIFO IN to read and OUT to write, then exchange
 *                                                over fd:R,W
 * Prints one JSON line: { sent, received } or { error: { code, message } }.
 */
import { readFileSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { connectTransport } from '../../src/transport/index.js';
import type { TransportOptions } from '../../src/transport/index.js';
import { sendRandom, receiveAll } from './helpers.js';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === 'fifos') {
    // Blocking opens are fine here: nothing else runs in this process yet.
    const r = openSync(args[1], 'r');
    const w = openSync(args[2], 'w');
    args.splice(0, 4, 'exchange', `fd:${r},${w}`, args[3]);
  }
  const [mode, url, bytesText, tlsDir] = args;
  const opts: TransportOptions = {};
  if (tlsDir) {
    opts.ca = readFileSync(join(tlsDir, 'ca.crt'));
    opts.cert = readFileSync(join(tlsDir, 'client.crt'));
    opts.key = readFileSync(join(tlsDir, 'client.key'));
  }
  const conn = await connectTransport(url, opts);
  if (mode === 'hold') {
    process.stdout.write(JSON.stringify({ connected: true }) + '\n');
    setInterval(() => {}, 1000);
    return;
  }
  const [sent, received] = await Promise.all([sendRandom(conn, Number(bytesText)), receiveAll(conn)]);
  process.stdout.write(JSON.stringify({ sent, received }) + '\n');
}

main().catch((err: { code?: string; message?: string }) => {
  process.stdout.write(JSON.stringify({ error: { code: err.code ?? 'UNKNOWN', message: err.message ?? String(err) } }) + '\n');
  process.exitCode = 1;
});
