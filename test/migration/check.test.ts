/**
 * checkDestination(), the pre-flight check, against receive() over real unix sockets: the
 * handshake's rules answered without moving a device, a destination that goes on waiting for the
 * migration, and the faults (a silent, a vanishing and an old destination; a timeout; an abort).
 * And the connections a waiting receive() drops before their hello (probes, junk, silence).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceState } from '../../src/fsm/states.js';
import { receive } from '../../src/migration/destination.js';
import { migrate } from '../../src/migration/source.js';
import { checkDestination } from '../../src/migration/check.js';
import { restore } from '../../src/migration/checkpoint.js';
import { encodeFrame } from '../../src/migration/control.js';
import type { CheckEvent } from '../../src/migration/summary.js';
import { RecordDecoder } from '../../src/streams/record-decoder.js';
import { RecordType, type DecodedObject } from '../../src/streams/wire-format.js';
import { listenTransport, type TransportListener } from '../../src/transport/index.js';
import { MiB, makeSims, type Sims } from '../e2e/helpers.js';

const S = DeviceState;
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-check-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function sims(n: number, size: number, flags = 7): Sims {
  const s = makeSims(n, { size }, () => ({ flags }));
  cleanups.push(() => s.close());
  return s;
}

async function listener(): Promise<TransportListener> {
  const l = await listenTransport(`unix:${join(tempDir(), 'c.sock')}`);
  cleanups.push(() => l.close());
  return l;
}

/** A server that takes connections and does `onConn` with each (a destination that misbehaves). */
async function rawServer(onConn: (sock: net.Socket) => void): Promise<string> {
  const path = join(tempDir(), 'raw.sock');
  const server = net.createServer(onConn);
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(() => new Promise((r) => server.close(r)));
  return `unix:${path}`;
}

describe('checkDestination', () => {
  it('compatible: answered without moving a device on either side; the destination then takes the migration', async () => {
    const l = await listener();
    const src = sims(2, MiB);
    const dst = sims(2, MiB);
    const incoming = receive({ devices: dst.cores, transport: () => l.accept(), accept: () => l.accept(), stallTimeoutMs: 5_000 });
    const checks: CheckEvent[] = [];
    incoming.on('check', (c) => checks.push(c));

    // Three channels: this destination takes extra connections (`accept`), so that is no refusal.
    const r = await checkDestination({ devices: src.cores, transport: l.url, channels: 3 });
    expect(r).toMatchObject({ compatible: true, version: 1, features: { switchoverAck: true, digest: true } });
    expect(r.ms).toBeGreaterThan(0);
    // A second check on the same destination: it answers every one.
    await expect(checkDestination({ devices: src.cores, transport: l.url })).resolves.toMatchObject({ compatible: true });
    for (let i = 0; i < 50 && checks.length < 2; i++) await new Promise((res) => setTimeout(res, 10));
    expect(checks).toEqual([{ compatible: true }, { compatible: true }]);
    expect(src.arcs).toEqual([]);
    expect(dst.arcs).toEqual([]);
    expect(dst.resets).toEqual([]);
    expect(incoming.phase).toBe('connect');

    const digests = src.sims.map((s) => s.digest());
    const [s, d] = await Promise.all([migrate({ devices: src.cores, transport: l.url, downtimeLimitMs: 1000 }).done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
    expect(dst.sims.map((x) => x.digest())).toEqual(digests);
  });

  it('incompatible: refused with the device and the reason; the destination goes on waiting and migrates a matching set', async () => {
    const l = await listener();
    const dst = sims(1, MiB);
    const incoming = receive({ devices: dst.cores, transport: () => l.accept() });
    const checks: CheckEvent[] = [];
    incoming.on('check', (c) => checks.push(c));

    const bigger = sims(1, 2 * MiB);
    const err = await checkDestination({ devices: bigger.cores, transport: l.url }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VFIO_MIG_ERR_INCOMPATIBLE', phase: 'handshake', recovery: 'none', device: 0, message: expect.stringMatching(/^destination refused: device 0 \(dev0\)/) });
    const two = sims(2, MiB);
    await expect(checkDestination({ devices: two.cores, transport: l.url })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_INCOMPATIBLE', message: expect.stringMatching(/2 device\(s\), this destination has 1/) });
    // More channels than a destination without `accept` takes.
    const one = sims(1, MiB);
    await expect(checkDestination({ devices: one.cores, transport: l.url, channels: 2 })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_UNSUPPORTED' });
    expect(checks.map((c) => [c.compatible, c.code, c.device])).toEqual([
      [false, 'VFIO_MIG_ERR_INCOMPATIBLE', 0],
      [false, 'VFIO_MIG_ERR_INCOMPATIBLE', undefined],
      [false, 'VFIO_MIG_ERR_UNSUPPORTED', undefined],
    ]);
    expect(dst.arcs).toEqual([]);
    expect(dst.resets).toEqual([]);
    expect([...bigger.arcs, ...two.arcs, ...one.arcs]).toEqual([]);

    const [s, d] = await Promise.all([migrate({ devices: one.cores, transport: l.url, downtimeLimitMs: 1000 }).done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
  });

  it('a receive() on one connection answers the check and ends, its devices untouched', async () => {
    const l = await listener();
    const dst = sims(1, MiB);
    const accepted = l.accept();
    const checking = checkDestination({ devices: sims(1, MiB).cores, transport: l.url });
    const incoming = receive({ devices: dst.cores, transport: await accepted });
    await expect(checking).resolves.toMatchObject({ compatible: true });
    await expect(incoming.done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_TRANSPORT', recovery: 'none', message: expect.stringMatching(/pre-flight check/) });
    expect(dst.arcs).toEqual([]);
    expect(dst.resets).toEqual([]);
    expect(await dst.cores[0].getState()).toBe(S.RUNNING);
  });

  it('refuses a multi-device set lacking P2P before it connects, unless the risk is accepted', async () => {
    let connections = 0;
    const url = await rawServer((sock) => {
      connections++;
      sock.destroy();
    });
    const set = sims(2, MiB, 0x5);
    await expect(checkDestination({ devices: set.cores, transport: url })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_INCOMPATIBLE', phase: 'connect', recovery: 'none' });
    expect(connections).toBe(0);
    await expect(checkDestination({ devices: set.cores, transport: url, acceptP2PRisk: true })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_TRANSPORT' });
    expect(connections).toBe(1);
    await expect(checkDestination({ devices: [], transport: url })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
    await expect(checkDestination({ devices: set.cores, transport: url, acceptP2PRisk: true, timeoutMs: 0 })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
  });

  it('a destination that closes, one that never answers, and the caller\'s signal: typed errors, connections closed', async () => {
    const dev = sims(1, MiB);
    // Killed peer: reads the hello, then goes away.
    const gone = await rawServer((sock) => sock.once('data', () => sock.destroy()));
    await expect(checkDestination({ devices: dev.cores, transport: gone })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_TRANSPORT', phase: 'handshake' });

    // Silent peer: the check times out, and closes its connection.
    const closed: Promise<void>[] = [];
    const silent = await rawServer((sock) => {
      sock.resume();
      closed.push(new Promise((r) => sock.once('close', () => r())));
    });
    const t0 = performance.now();
    await expect(checkDestination({ devices: dev.cores, transport: silent, timeoutMs: 200 })).rejects.toMatchObject({
      code: 'VFIO_MIG_ERR_STALLED',
      phase: 'handshake',
      message: 'no answer to the pre-flight check within 200 ms',
    });
    expect(performance.now() - t0).toBeLessThan(3_000);
    await closed[0];

    const ac = new AbortController();
    const aborted = checkDestination({ devices: dev.cores, transport: silent, signal: ac.signal });
    setTimeout(() => ac.abort('operator'), 50);
    await expect(aborted).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_ABORTED', message: 'aborted: operator' });
    await closed[1];
    await expect(checkDestination({ devices: dev.cores, transport: silent, signal: AbortSignal.abort('early') })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_ABORTED' });
    expect(dev.arcs).toEqual([]);
  });

  it('a destination that does not know checks (answers ready) is told to abort, and the check fails UNSUPPORTED', async () => {
    const seen: DecodedObject[] = [];
    let done!: () => void;
    const closed = new Promise<void>((r) => (done = r));
    const old = await rawServer((sock) => {
      const dec = new RecordDecoder();
      dec.on('data', (obj: DecodedObject) => {
        seen.push(obj);
        if (obj.type === RecordType.CONTROL && (obj.message as { type: string }).type === 'hello') {
          sock.write(encodeFrame({ type: 'ready', version: 1, features: { switchoverAck: true, digest: true } }));
        }
      });
      dec.on('error', () => {});
      sock.pipe(dec);
      sock.on('close', done);
    });
    await expect(checkDestination({ devices: sims(1, MiB).cores, transport: old })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_UNSUPPORTED', message: expect.stringMatching(/told to abort/) });
    await closed;
    const control = seen.filter((o) => o.type === RecordType.CONTROL).map((o) => (o as { message: { type: string; check?: boolean } }).message);
    expect(control.map((m) => m.type)).toEqual(['hello', 'abort']);
    expect(control[0].check).toBe(true);
    expect(seen[0].type).toBe(RecordType.STREAM_HEADER);
  });
});

describe('receive() behind a listener drops stray connections before their hello', () => {
  it('a probe that closes, junk bytes and a silent client are dropped (\'stray\'); the migration after them succeeds', async () => {
    const l = await listener();
    const path = l.url.slice('unix:'.length);
    const src = sims(1, MiB);
    const dst = sims(1, MiB);
    const incoming = receive({ devices: dst.cores, transport: () => l.accept(), stallTimeoutMs: 300 });
    const strays: { code: string; message: string }[] = [];
    incoming.on('stray', (e) => strays.push({ code: e.code, message: e.message }));
    const until = async (n: number) => {
      for (let i = 0; i < 300 && strays.length < n; i++) await new Promise((r) => setTimeout(r, 10));
      expect(strays).toHaveLength(n);
    };
    const connect = () => new Promise<net.Socket>((resolve, reject) => {
      const sock = net.connect(path, () => resolve(sock));
      sock.on('error', reject);
    });

    (await connect()).end(); // a port probe
    await until(1);
    const junk = await connect();
    junk.on('error', () => {});
    junk.write('GET /health HTTP/1.1\r\nHost: destination.example\r\nUser-Agent: probe\r\n\r\n'); // not a vfio-mig stream
    await until(2);
    const silent = await connect(); // says nothing: dropped after stallTimeoutMs, not the whole receive
    silent.on('error', () => {});
    const silentClosed = new Promise((r) => silent.once('close', r));
    await until(3);
    await silentClosed;
    expect(strays[0].code).toBe('VFIO_MIG_ERR_TRANSPORT');
    expect(strays[1].code).toMatch(/^VFIO_MIG_ERR_(CORRUPT|UNSUPPORTED)$/);
    expect(strays[2]).toEqual({ code: 'VFIO_MIG_ERR_STALLED', message: 'no hello within 300 ms of connecting' });
    expect(incoming.phase).toBe('connect');
    expect(dst.arcs).toEqual([]);
    expect(dst.resets).toEqual([]);

    const [s, d] = await Promise.all([migrate({ devices: src.cores, transport: l.url, downtimeLimitMs: 1000 }).done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
  });

  it('a listener given as the transport serves the source, its checks and strays, and its extra channels', async () => {
    const l = await listener();
    const src = sims(2, 2 * MiB);
    const dst = sims(2, 2 * MiB);
    const incoming = receive({ devices: dst.cores, transport: l });
    const seen: string[] = [];
    incoming.on('check', () => seen.push('check'));
    incoming.on('stray', () => seen.push('stray'));
    await expect(checkDestination({ devices: src.cores, transport: l.url, channels: 3 })).resolves.toMatchObject({ compatible: true });
    await new Promise<void>((resolve) => {
      const probe = net.connect(l.url.slice('unix:'.length), () => probe.end());
      probe.on('close', () => resolve());
    });
    for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    // Three channels: the extra two come through the same listener (no `accept` given).
    const [s, d] = await Promise.all([migrate({ devices: src.cores, transport: l.url, channels: 3, downtimeLimitMs: 1000 }).done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
    expect(seen).toEqual(['check', 'stray']);
  });

  it('strays that come while a migration takes its channels are dropped, not taken for channels', async () => {
    // Before, the first connection accepted after the handshake was taken for a data channel: a
    // probe there failed the migration ('a data channel of another migration connected').
    const l = await listener();
    const path = l.url.slice('unix:'.length);
    const src = sims(1, 4 * MiB);
    const dst = sims(1, 4 * MiB);
    const incoming = receive({ devices: dst.cores, transport: () => l.accept(), accept: () => l.accept() });
    const strays: string[] = [];
    incoming.on('stray', (e) => strays.push(e.code));
    const probes: net.Socket[] = [];
    // The destination's setup begins once the source's hello is read: the source opens its extra
    // channels only after 'ready' and its pings, so these connections are accepted first.
    incoming.on('phase', (p) => {
      if (p.phase !== 'setup') return;
      const probe = net.connect(path, () => probe.end());
      const junk = net.connect(path, () => junk.write(Buffer.alloc(64, 0x41)));
      for (const sock of [probe, junk]) {
        sock.on('error', () => {});
        probes.push(sock);
      }
    });
    const [s, d] = await Promise.all([migrate({ devices: src.cores, transport: l.url, channels: 3, downtimeLimitMs: 1000 }).done, incoming.done]);
    expect(s.verified && d.verified).toBe(true);
    expect(probes).toHaveLength(2);
    // The junk is not a vfio-mig stream; the probe's end comes before any header (the decoder's
    // TRUNCATED, or TRANSPORT when the close is seen first).
    expect(strays.sort()).toEqual(['VFIO_MIG_ERR_CORRUPT', expect.stringMatching(/^VFIO_MIG_ERR_(TRUNCATED|TRANSPORT)$/)]);
    for (const p of probes) p.destroy();
  });

  it('a listener that yields one connection: the stray\'s own error is the receive\'s, not the listener\'s', async () => {
    const l = await listener();
    const dst = sims(1, MiB);
    let calls = 0;
    const incoming = receive({
      devices: dst.cores,
      transport: async () => {
        if (calls++ > 0) throw new Error('listener fd:3 has a single connection and it was already accepted');
        return l.accept();
      },
    });
    const sock = net.connect(l.url.slice('unix:'.length), () => sock.write(Buffer.alloc(64, 0x41)));
    sock.on('error', () => {});
    await expect(incoming.done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_CORRUPT', recovery: 'none' });
    expect(calls).toBe(2);
    sock.destroy();
  });

  it('a transport function that hands out the same stream again: the stray\'s error, no loop', async () => {
    const l = await listener();
    const dst = sims(1, MiB);
    const accepted = l.accept();
    const sock = net.connect(l.url.slice('unix:'.length), () => sock.write(Buffer.alloc(64, 0x41)));
    sock.on('error', () => {});
    const same = await accepted;
    let calls = 0;
    const incoming = receive({ devices: dst.cores, transport: async () => (calls++, same) });
    await expect(incoming.done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_CORRUPT', recovery: 'none' });
    expect(calls).toBe(2);
    sock.destroy();
  });

  it('a file behind a transport function (restore()) is the stream to load, never a stray: a bad header fails at once', async () => {
    const dir = tempDir();
    const file = join(dir, 'junk.vfm');
    writeFileSync(file, Buffer.alloc(4096, 0x78));
    const dst = sims(1, MiB);
    const strays: unknown[] = [];
    const run = restore({ devices: dst.cores, transport: `file:${file}` });
    run.on('stray', (e) => strays.push(e));
    await expect(run.done).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_CORRUPT' });
    expect(strays).toEqual([]);
    expect(dst.resets).toEqual([]);
  });

  it('on its one connection a receive() still fails on junk (there is no next connection)', async () => {
    const l = await listener();
    const dst = sims(1, MiB);
    const accepted = l.accept();
    const sock = await new Promise<net.Socket>((resolve) => {
      const c = net.connect(l.url.slice('unix:'.length), () => resolve(c));
    });
    sock.on('error', () => {});
    const incoming = receive({ devices: dst.cores, transport: await accepted });
    sock.write(Buffer.alloc(64, 0x41));
    await expect(incoming.done).rejects.toMatchObject({ code: expect.stringMatching(/^VFIO_MIG_ERR_(CORRUPT|UNSUPPORTED)$/), recovery: 'none' });
    expect(dst.resets).toEqual([]);
    sock.destroy();
  });
});
