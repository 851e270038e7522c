// Question: how fast do the project's fd writers write a pipe, against `dd` writing the same pipe?
//
// The consumer is always `dd if=FIFO of=/dev/null bs=1M` (a FIFO is a pipe with a name: same kernel
// code, default 64 KiB capacity); every writer sends the same bytes (zeros, 1 MiB chunks of one
// reused buffer: the sinks never hold a chunk past its callback):
// - fd-write           createFdSink(fd) (epoll: net.Socket), fed by stream.pipeline.
//                      Baseline: dd if=/dev/zero bs=1M writing the same FIFO.
// - fd-write-resuming  createResumingStream over an fd-backed session on the FIFO (private reopen).
// - fd-write-fs        createFdSink(fd, { io: 'fs' }): the threadpool fs.write path (char devices).
// - fd-write-naive     fs.createWriteStream(null, { fd, highWaterMark: 1 MiB }).
// Each run is timed from spawning the consumer until it exits; medians over the runs, interleaved,
// after one untimed warm-up run of each. RSS is this process's maxRSS.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createFdSink, createResumingStream } from '../dist/index.js';
import { MiB, fifoRows, runDd } from './lib.mjs';

export const names = ['fd-write', 'fd-write-resuming', 'fd-write-fs', 'fd-write-naive'];

const ZEROS = Buffer.alloc(MiB);

function zeros(count) {
  let left = count;
  return new Readable({
    highWaterMark: 2 * MiB,
    read() {
      while (left > 0) {
        left--;
        if (!this.push(ZEROS)) return;
      }
      this.push(null);
    },
  });
}

/** Blocking open of the write end on the threadpool: waits for the consumer's open. */
function openWriter(fifo) {
  return new Promise((resolve, reject) => fs.open(fifo, 'w', (err, fd) => (err ? reject(err) : resolve(fd))));
}

async function timed(fifo, count, write) {
  const t0 = performance.now();
  const consumed = runDd([`if=${fifo}`, 'of=/dev/null', 'bs=1M']).then((r) => r.bytes);
  // Awaited below: a consumer that fails while write() runs must fail this bench, not crash the
  // runner through an unhandled rejection (exit 1 with no 'bench failed' line).
  consumed.catch(() => {});
  const fd = await openWriter(fifo);
  await write(fd);
  const bytes = await consumed;
  const ms = performance.now() - t0;
  if (bytes !== count * MiB) throw new Error(`consumer read ${bytes} bytes, expected ${count * MiB}`);
  return { ms, bytes };
}

const variants = {
  'fd-write': (fifo, count) => timed(fifo, count, (fd) => pipeline(zeros(count), createFdSink(fd))),
  'fd-write-resuming': (fifo, count) =>
    timed(fifo, count, async (fd) => {
      const session = {
        id: 2,
        direction: 'resuming',
        fd,
        disabled: false,
        write: () => Promise.reject(new Error('unused')),
        disable() {},
        close: () => fs.closeSync(fd),
      };
      await pipeline(zeros(count), createResumingStream(session));
      session.close(); // the session's fd: closing it gives the consumer EOF
    }),
  'fd-write-fs': (fifo, count) => timed(fifo, count, (fd) => pipeline(zeros(count), createFdSink(fd, { io: 'fs' }))),
  'fd-write-naive': (fifo, count) =>
    timed(fifo, count, (fd) => pipeline(zeros(count), fs.createWriteStream(null, { fd, highWaterMark: MiB }))),
};

export default function run({ quick, log = () => {} }) {
  return fifoRows({
    quick,
    log,
    variants,
    ddScript: (fifo, count) => `dd if="${fifo}" of=/dev/null bs=1M status=none & dd if=/dev/zero of="${fifo}" bs=1M count=${count} status=none; wait`,
    ddName: 'dd if=/dev/zero bs=1M into the same pipe',
    what: 'into a FIFO read by dd of=/dev/null bs=1M',
  });
}
