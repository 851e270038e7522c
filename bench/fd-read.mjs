// Question: how fast do the project's fd readers read a pipe, against `dd` reading the same pipe?
//
// The producer is always `dd if=/dev/zero bs=1M` writing a FIFO (a FIFO is a pipe with a name: same
// kernel code, default 64 KiB capacity), so every reader sees the same data source:
// - fd-read         createFdSource(fd) (epoll: net.Socket + reused onread buffer), drained by
//                   stream.pipeline into a null Writable.            Baseline: dd of=/dev/null bs=1M.
// - fd-read-recycled the same with { recycle: true }, the consumer giving each chunk back once done (release()): the
//                   next reads land in memory already faulted in, as dd's one buffer does.
// - fd-read-saving  createSavingStream over an fd-backed session on the FIFO (private reopen).
// - fd-read-fs      createFdSource(fd, { io: 'fs' }): the threadpool fs.read path (char devices).
// - fd-read-naive   fs.createReadStream(null, { fd, highWaterMark: 1 MiB }): the naive approach.
// Each run is timed from spawning the producer to the reader's end; medians over the runs, runs
// interleaved so drift hits every variant alike, after one untimed warm-up run of each. RSS is this process's maxRSS.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createFdSource, createSavingStream } from '../dist/index.js';
import { MiB, fifoRows } from './lib.mjs';

export const names = ['fd-read', 'fd-read-recycled', 'fd-read-saving', 'fd-read-fs', 'fd-read-naive'];

function nullSink() {
  return new Writable({ highWaterMark: MiB, write: (_c, _e, cb) => cb() });
}

function producer(fifo, count) {
  const child = spawn('dd', ['if=/dev/zero', `of=${fifo}`, 'bs=1M', `count=${count}`, 'status=none'], { stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`dd producer exited ${code}`))));
  });
}

async function timed(fifo, count, read) {
  const t0 = performance.now();
  const produced = producer(fifo, count);
  // Awaited below: a producer that fails while read() runs must fail this bench, not crash the
  // runner through an unhandled rejection (exit 1 with no 'bench failed' line).
  produced.catch(() => {});
  const bytes = await read();
  const ms = performance.now() - t0;
  await produced;
  if (bytes !== count * MiB) throw new Error(`read ${bytes} bytes, expected ${count * MiB}`);
  return { ms, bytes };
}

const variants = {
  async 'fd-read'(fifo, count) {
    const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    return timed(fifo, count, async () => {
      const src = createFdSource(fd);
      await pipeline(src, nullSink());
      return src.bytesRead;
    });
  },
  async 'fd-read-recycled'(fifo, count) {
    const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    return timed(fifo, count, async () => {
      const src = createFdSource(fd, { recycle: true });
      await pipeline(src, new Writable({ highWaterMark: MiB, write: (c, _e, cb) => (src.release(c), cb()) }));
      return src.bytesRead;
    });
  },
  async 'fd-read-saving'(fifo, count) {
    const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const session = {
      id: 1,
      direction: 'saving',
      fd,
      disabled: false,
      read: () => Promise.reject(new Error('unused')),
      precopyInfo: () => Promise.reject(Object.assign(new Error('EINVAL'), { code: 'EINVAL' })),
      disable() {},
      close: () => fs.closeSync(fd),
    };
    try {
      return await timed(fifo, count, async () => {
        const src = createSavingStream(session);
        await pipeline(src, nullSink());
        return src.bytesRead;
      });
    } finally {
      session.close();
    }
  },
  async 'fd-read-fs'(fifo, count) {
    return timed(fifo, count, async () => {
      // Blocking open (the fs path must not see EAGAIN): waits for the producer's open.
      const fd = await openBlocking(fifo);
      const src = createFdSource(fd, { io: 'fs' });
      await pipeline(src, nullSink());
      return src.bytesRead;
    });
  },
  async 'fd-read-naive'(fifo, count) {
    return timed(fifo, count, async () => {
      const fd = await openBlocking(fifo);
      let bytes = 0;
      const rs = fs.createReadStream(null, { fd, highWaterMark: MiB });
      rs.on('data', (c) => (bytes += c.length));
      await pipeline(rs, nullSink());
      return bytes;
    });
  },
};

/** fs.open on the threadpool (a blocking FIFO open waits for the writer). */
function openBlocking(fifo) {
  return new Promise((resolve, reject) => fs.open(fifo, 'r', (err, fd) => (err ? reject(err) : resolve(fd))));
}

export default function run({ quick, log = () => {} }) {
  return fifoRows({
    quick,
    log,
    variants,
    ddScript: (fifo, count) => `dd if=/dev/zero of="${fifo}" bs=1M count=${count} status=none & dd if="${fifo}" of=/dev/null bs=1M status=none; wait`,
    ddName: 'dd of=/dev/null bs=1M on the same pipe',
    what: 'from dd bs=1M through a FIFO (64 KiB pipe)',
  });
}
