import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, dirname } from 'node:path';
import { Duplex } from 'node:stream';
import {
  registerTransport,
  unregisterTransport,
  getTransport,
  listTransports,
  connectTransport,
  listenTransport,
  parseTransportUrl,
  parseHostPort,
  formatHostPort,
  type TransportPlugin,
} from '../../src/transport/index.js';
import { MigError } from '../../src/fsm/errors.js';
import { memTransport } from './mem-plugin.js';
import { MIB, exchange, receiveAll } from './helpers.js';
import { makeSims } from '../e2e/helpers.js';
import { migrate } from '../../src/migration/source.js';
import { receive } from '../../src/migration/destination.js';

const here = dirname(fileURLToPath(import.meta.url));

async function rejection(p: Promise<unknown>): Promise<MigError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(MigError);
    return err as MigError;
  }
  throw new Error('expected a rejection');
}

describe('transport URLs', () => {
  it('split scheme and address; tolerate //; refuse what has no scheme or address', () => {
    expect(parseTransportUrl('tcp:127.0.0.1:7000')).toEqual({ scheme: 'tcp', address: '127.0.0.1:7000' });
    expect(parseTransportUrl('TCP://[::1]:7000')).toEqual({ scheme: 'tcp', address: '[::1]:7000' });
    expect(parseTransportUrl('unix:/run/a:b.sock')).toEqual({ scheme: 'unix', address: '/run/a:b.sock' });
    expect(parseTransportUrl('fd:3,4')).toEqual({ scheme: 'fd', address: '3,4' });
    for (const bad of ['', 'noscheme', ':x', 'tcp:', '1tcp:x', 'tc p:x']) {
      expect(() => parseTransportUrl(bad)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    }
  });

  it('host and port, IPv6 in brackets, both ways', () => {
    expect(parseHostPort('u', 'example.org:0')).toEqual({ host: 'example.org', port: 0 });
    expect(parseHostPort('u', '[fe80::1]:65535')).toEqual({ host: 'fe80::1', port: 65535 });
    expect(formatHostPort('::1', 80)).toBe('[::1]:80');
    expect(formatHostPort('10.0.0.1', 80)).toBe('10.0.0.1:80');
    for (const bad of ['x', ':1', 'h:', 'h:65536', 'h:-1', '::1:80', '[::1]', '[::1]x80']) {
      expect(() => parseHostPort('u', bad)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    }
  });
});

describe('registry', () => {
  it('has the built-ins', () => {
    expect(listTransports()).toEqual(expect.arrayContaining(['unix', 'tcp', 'tls', 'fd', 'file']));
    expect(getTransport('TCP')?.scheme).toBe('tcp');
    expect(getTransport('nope')).toBeUndefined();
  });

  it('refuses a taken scheme unless replacing, and malformed plugins', () => {
    const fake: TransportPlugin = {
      scheme: 'tcp',
      connect: () => Promise.reject(new Error('x')),
      listen: () => Promise.reject(new Error('x')),
    };
    expect(() => registerTransport(fake)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    expect(() => registerTransport({ ...fake, scheme: 'Bad Scheme' })).toThrow(/scheme/);
    expect(() => registerTransport({ scheme: 'half' } as unknown as TransportPlugin)).toThrow(/connect/);
    const original = getTransport('tcp') as TransportPlugin;
    registerTransport(fake, { replace: true });
    expect(getTransport('tcp')).toBe(fake);
    registerTransport(original, { replace: true });
    expect(getTransport('tcp')).toBe(original);
  });

  it('an unknown scheme is a usage error naming the registered ones', async () => {
    const err = await rejection(connectTransport('carrier-pigeon:coop'));
    expect(err.code).toBe('VFIO_MIG_ERR_USAGE');
    expect(err.message).toMatch(/tcp/);
  });

  it("types a plugin's plain errors: errno names kept, the rest VFIO_MIG_ERR_TRANSPORT", async () => {
    const plugin: TransportPlugin = {
      scheme: 'flaky',
      connect: (url) => Promise.reject(url.endsWith('refused') ? Object.assign(new Error('no'), { code: 'ECONNREFUSED' }) : new Error('odd')),
      listen: () => Promise.reject(Object.assign(new Error('x'), { code: 'ERR_SOMETHING' })),
    };
    registerTransport(plugin);
    try {
      expect((await rejection(connectTransport('flaky:refused'))).code).toBe('ECONNREFUSED');
      expect((await rejection(connectTransport('flaky:other'))).code).toBe('VFIO_MIG_ERR_TRANSPORT');
      const l = await rejection(listenTransport('flaky:x'));
      expect(l.code).toBe('VFIO_MIG_ERR_TRANSPORT');
      expect(l.detail).toMatchObject({ sysCode: 'ERR_SOMETHING', op: 'listen' });
      const ac = new AbortController();
      ac.abort();
      expect((await rejection(connectTransport('flaky:refused', { signal: ac.signal }))).code).toBe('VFIO_MIG_ERR_ABORTED');
    } finally {
      expect(unregisterTransport('flaky')).toBe(true);
    }
    expect(unregisterTransport('flaky')).toBe(false);
  });
});

/** A Duplex over `conn` whose reader takes a chunk, then waits a millisecond before the next. */
function slowReader(conn: Duplex): Duplex {
  const d = new Duplex({
    allowHalfOpen: true,
    read() {
      conn.resume();
    },
    write(chunk: Buffer, _e, cb) {
      conn.write(chunk, cb);
    },
    final(cb) {
      conn.end(cb);
    },
    destroy(err, cb) {
      conn.destroy();
      cb(err);
    },
  });
  let waiting = 0;
  let ended = false;
  conn.on('data', (chunk: Buffer) => {
    conn.pause();
    waiting++;
    setTimeout(() => {
      waiting--;
      if (d.push(chunk)) conn.resume();
      if (ended && waiting === 0) d.push(null);
    }, 1);
  });
  conn.on('end', () => {
    ended = true;
    if (waiting === 0) d.push(null);
  });
  conn.on('error', (err) => d.destroy(err));
  return d;
}

describe('the documented plugin example (mem:)', () => {
  it('is the code docs/transports.md shows', () => {
    const doc = readFileSync(join(here, '..', '..', 'docs', 'transports.md'), 'utf8');
    const m = /<!-- example: test\/transport\/mem-plugin\.ts -->\s*```ts\n([\s\S]*?)```/.exec(doc);
    expect(m).not.toBeNull();
    const fixture = readFileSync(join(here, 'mem-plugin.ts'), 'utf8').replaceAll("'../../src/transport/index.js'", "'vfio-mig'");
    expect((m as RegExpExecArray)[1]).toBe(fixture);
  });

  it('registers, listens, connects and moves 4 MiB both ways', async () => {
    expect(getTransport('mem')).toBe(memTransport);
    const l = await listenTransport('mem:demo');
    try {
      expect(l.url).toBe('mem:demo');
      const [a, b] = await Promise.all([connectTransport('mem:demo'), l.accept()]);
      expect(await exchange(a, b, 4 * MIB)).toEqual({ ab: true, ba: true });
      expect((await rejection(listenTransport('mem:demo'))).code).toBe('EADDRINUSE');
    } finally {
      await l.close();
    }
    expect((await rejection(connectTransport('mem:demo'))).code).toBe('ECONNREFUSED');
  });

  for (const compression of ['none', 'zstd'] as const) {
    it(`carries a whole migration intact (${compression}): migrate() reuses memory in write callbacks`, async () => {
      const src = makeSims(1, { size: 24 * MIB, dirtyRate: 0 });
      const dst = makeSims(1, { size: 24 * MIB });
      const l = await listenTransport(`mem:migrate-${compression}`);
      try {
        // A destination that reads slowly: chunks wait in the connection before they are taken.
        const incoming = receive({ devices: dst.cores, transport: async () => slowReader(await l.accept()) });
        const run = migrate({ devices: src.cores, transport: l.url, downtimeLimitMs: 1000, compression });
        const [s, d] = await Promise.all([run.done, incoming.done]);
        expect(s.verified).toBe(true);
        expect(d.verified).toBe(true);
        expect(d.bytes).toBe(s.bytes);
        expect(dst.sims[0]!.digest()).toEqual(src.sims[0]!.digest());
      } finally {
        await l.close();
        src.close();
        dst.close();
      }
    });
  }

  it('a peer torn down mid-stream is a typed error on the other end', async () => {
    const l = await listenTransport('mem:reset');
    try {
      const [a, b]: Duplex[] = await Promise.all([connectTransport('mem:reset'), l.accept()]);
      const got = receiveAll(b).then(
        () => null,
        (err: unknown) => err,
      );
      a.write(Buffer.alloc(1024));
      a.destroy();
      const err = (await got) as MigError;
      expect(err).toBeInstanceOf(MigError);
      expect(err.code).toBe('VFIO_MIG_ERR_TRANSPORT');
      expect(err.detail?.sysCode).toBe('ECONNRESET');
    } finally {
      await l.close();
    }
  });
});
