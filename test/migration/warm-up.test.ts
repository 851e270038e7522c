// warmUp(): one rehearsal migration per process (two MttyDevices over an abstract unix socket), so a
// real migration's switchover runs compiled code. It must complete, run once, leave nothing open,
// boot the compression workers when asked to compress, and not throw (but on a bad option).
import { describe, it, expect, vi, afterEach } from 'vitest';
import net from 'node:net';
import { migError } from '../../src/fsm/errors.js';

/** The resources the event loop holds that a socket leaves behind (servers and connections). */
function sockets(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'PipeWrap' || r === 'PipeServerWrap' || r === 'TCPWrap' || r === 'TCPServerWrap').length;
}

afterEach(() => {
  vi.doUnmock('../../src/transport/registry.js');
  vi.resetModules();
});

describe('warmUp', () => {
  it('rehearses a whole migration once per process; later calls share its result', async () => {
    vi.resetModules();
    const { warmUp } = await import('../../src/migration/warm-up.js');
    const before = sockets();
    const first = warmUp();
    const second = warmUp();
    expect(second).toBe(first);
    const r = await first;
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(r.ms).toBeGreaterThan(0);
    expect(await warmUp()).toBe(r);
    // Its listener and both connections close (a socket's close completes on a later turn).
    for (let i = 0; i < 100 && sockets() > before; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(sockets()).toBeLessThanOrEqual(before);
  });

  it('uses an abstract socket of its own: nothing is left to connect to afterwards', async () => {
    vi.resetModules();
    const listened: string[] = [];
    vi.doMock('../../src/transport/registry.js', async (orig) => {
      const real = (await orig()) as typeof import('../../src/transport/registry.js');
      return {
        ...real,
        listenTransport: (url: string, opts: Parameters<typeof real.listenTransport>[1]) => {
          listened.push(url);
          return real.listenTransport(url, opts);
        },
      };
    });
    const { warmUp } = await import('../../src/migration/warm-up.js');
    expect((await warmUp()).ok).toBe(true);
    expect(listened).toHaveLength(1);
    expect(listened[0]).toMatch(/^unix:@vfio-mig-warm-up-\d+-[0-9a-f]{12}$/);
    const path = `\0${listened[0].slice('unix:@'.length)}`;
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      const s = net.connect({ path });
      s.once('connect', () => {
        s.destroy();
        resolve(Object.assign(new Error('connected'), { code: 'CONNECTED' }));
      });
      s.once('error', resolve);
    });
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('with compression: compresses, boots the process\'s compression workers before it resolves, and answers a plain call too', async () => {
    vi.resetModules();
    const { warmUp } = await import('../../src/migration/warm-up.js');
    const { sharedCompressionPool } = await import('../../src/streams/compression-pool.js');
    const pool = sharedCompressionPool();
    expect(pool.readyWorkers).toBe(0);
    const r = await warmUp({ compression: 'zstd:3' });
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    // migrate() starts the boot without waiting for it; warmUp() waits.
    expect(pool.readyWorkers).toBe(pool.size);
    expect(await warmUp()).toBe(r);
    expect(() => warmUp({ compression: 'lz4' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
  });

  it('never throws: a rehearsal that cannot run resolves ok: false with a typed error', async () => {
    vi.resetModules();
    vi.doMock('../../src/transport/registry.js', async (orig) => ({
      ...((await orig()) as object),
      listenTransport: async () => {
        throw migError('EACCES', 'listen unix:@x: permission denied');
      },
    }));
    const { warmUp } = await import('../../src/migration/warm-up.js');
    const r = await warmUp();
    expect(r.ok).toBe(false);
    expect(r.error?.code).toBe('EACCES');
    expect(r.ms).toBeGreaterThanOrEqual(0);
    // The failure is the result for this process too: no second attempt.
    expect(await warmUp()).toBe(r);
  });
});
