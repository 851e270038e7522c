// The unix transport asks for a larger send buffer through the native addon (src/streams/fd-tuning.ts).
// Real sockets; the expected sizes come from this machine's sysctls, as the kernel applies them.
import { describe, it, expect } from 'vitest';
import net from 'node:net';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { connectTransport, listenTransport } from '../../src/transport/index.js';
import { sendBufferSize, fdTuningAddon as sockoptAddon } from '../../src/streams/fd-tuning.js';
import { exchange, tempDir, MIB } from './helpers.js';

const sysctl = (name: string): number => Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim());
const hasCompiler = spawnSync(process.env.CC || 'cc', ['--version']).status === 0;

async function unixPair(opts: Record<string, unknown> = {}): Promise<{ client: Duplex; server: Duplex; close: () => Promise<void> }> {
  const t = tempDir();
  const l = await listenTransport(`unix:${join(t.dir, 'b.sock')}`, opts);
  const [client, server] = await Promise.all([connectTransport(l.url, opts), l.accept()]);
  return {
    client,
    server,
    close: async () => {
      client.destroy();
      server.destroy();
      await l.close();
      t.cleanup();
    },
  };
}

describe('unix send buffers', () => {
  it('the addon is built wherever a C compiler was at install time', () => {
    expect(sockoptAddon() !== null).toBe(hasCompiler);
  });

  it('both ends of a unix connection ask for 4 MiB: the kernel grants twice what wmem_max allows', async () => {
    const { client, server, close } = await unixPair();
    try {
      const want = sockoptAddon() === null ? null : 2 * Math.min(4 * MIB, sysctl('wmem_max'));
      expect(sendBufferSize(client as net.Socket)).toBe(want);
      expect(sendBufferSize(server as net.Socket)).toBe(want);
      expect(await exchange(client, server, 4 * MIB)).toEqual({ ab: true, ba: true });
    } finally {
      await close();
    }
  });

  it('sendBufferBytes: 0 keeps the kernel default; a bad value is a usage error before any connection', async () => {
    const { client, server, close } = await unixPair({ sendBufferBytes: 0 });
    try {
      const want = sockoptAddon() === null ? null : sysctl('wmem_default');
      expect(sendBufferSize(client as net.Socket)).toBe(want);
      expect(sendBufferSize(server as net.Socket)).toBe(want);
    } finally {
      await close();
    }
    const t = tempDir();
    try {
      await expect(listenTransport(`unix:${join(t.dir, 'x.sock')}`, { sendBufferBytes: -1 })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
      await expect(connectTransport(`unix:${join(t.dir, 'x.sock')}`, { sendBufferBytes: 1.5 })).rejects.toMatchObject({ code: 'VFIO_MIG_ERR_USAGE' });
    } finally {
      t.cleanup();
    }
  });

  it('a socket without a descriptor, or a failed call, gives null and changes nothing', async () => {
    const s = new net.Socket();
    expect(sendBufferSize(s, 4 * MIB)).toBeNull();
    expect(sendBufferSize(s, -5)).toBeNull();
    if (sockoptAddon() !== null) {
      // Not a socket: the kernel refuses (ENOTSOCK, 88), reported as a negative errno by the addon.
      const fd = openSync('/dev/null', 'r');
      try {
        expect(sockoptAddon()!.sndbuf(fd, 4096)).toBe(-88);
      } finally {
        closeSync(fd);
      }
      expect(() => (sockoptAddon()!.sndbuf as (...a: unknown[]) => number)('x')).toThrow(TypeError);
    }
  });
});
