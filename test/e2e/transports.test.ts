/**
 * Live migration end to end: the source in this process, the destination a `vfio-mig receive`
 * child process, over each built-in transport.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceState } from '../../src/fsm/states.js';
import { migrate } from '../../src/migration/source.js';
import { tlsDemoCredentials, tlsOptions } from '../../src/cli/tls-demo.js';
import { checkDestination } from '../../src/migration/check.js';
import { BIN, MiB, ensureBuilt, makeSims, simArgs, startReceiver } from './helpers.js';

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

async function liveMigration(listen: string, extraArgs: string[] = [], transportOptions = {}, devices = 1) {
  const size = 16 * MiB;
  const dest = startReceiver(listen, simArgs(devices, size), extraArgs);
  const src = makeSims(devices, { size, dirtyRate: 4 * MiB });
  try {
    const url = await dest.url;
    // The pre-flight check over the same transport first (the destination then takes the migration).
    await expect(checkDestination({ devices: src.cores, transport: url, transportOptions })).resolves.toMatchObject({ compatible: true });
    const run = migrate({ devices: src.cores, transport: url, transportOptions, downtimeLimitMs: 500, compression: 'zstd' });
    const phases: string[] = [];
    run.on('phase', (p) => phases.push(p.phase));
    const s = await run.done;
    const child = await dest.exit;
    expect(child.code, child.stderr).toBe(0);
    expect(s.verified).toBe(true);
    expect(s.bytes).toBeGreaterThanOrEqual(size * devices);
    expect(s.wireBytes).toBeLessThan(s.bytes); // mixed content compresses
    expect(s.downtimeMs).toBeGreaterThan(0);
    expect(s.precopyRounds).toBeGreaterThanOrEqual(1);
    expect(phases).toEqual(['handshake', 'precopy', 'switchover', 'stop-copy', 'validate', 'resume', 'complete']);
    // The source gave its state up only after the destination validated it: STOP now, frozen.
    for (const c of src.cores) expect(c.state).toBe(DeviceState.STOP);
    expect(child.json?.ok).toBe(true);
    expect(child.json?.verified).toBe(true);
    expect(child.json?.digests).toEqual(src.sims.map((d) => d.digest()));
    return s;
  } finally {
    src.close();
    dest.child.kill('SIGKILL');
  }
}

/**
 * `vfio-mig receive --listen fd:3` in a child holding one end of a connected unix socket pair;
 * `ours` is the other end. The caller kills the child and calls `cleanup()`.
 */
async function receiverOnInheritedSocket(args: string[]) {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-e2e-'));
  const path = join(dir, 'pair.sock');
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(path, r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const ours = net.connect(path);
  ours.on('error', () => {});
  const theirs = await accepted;
  const child = spawn(process.execPath, [BIN, 'receive', '--listen', 'fd:3', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe', theirs] });
  const out = { stdout: '' };
  child.stdout?.on('data', (d: Buffer) => (out.stdout += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('close', r));
  theirs.destroy(); // the child holds its own copy of the fd
  await new Promise<void>((r) => ours.once('connect', r));
  const cleanup = (): void => {
    ours.destroy();
    child.kill('SIGKILL');
    server.close();
    rmSync(dir, { recursive: true, force: true });
  };
  return { ours, child, out, exited, cleanup };
}

describe('live migration to a destination process', () => {
  it('over unix', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-e2e-'));
    try {
      await liveMigration(`unix:${join(dir, 's.sock')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('over tcp, two devices', async () => {
    await liveMigration('tcp:127.0.0.1:0', [], {}, 2);
  });

  it('over tls with mutual authentication', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-e2e-'));
    try {
      const c = tlsDemoCredentials(dir);
      await liveMigration('tls:127.0.0.1:0', ['--tls-cert', c.serverCert, '--tls-key', c.serverKey, '--tls-ca', c.ca], {
        ...tlsOptions(c.clientCert, c.clientKey, c.ca),
        servername: 'localhost',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('over an inherited socket (fd:3)', async () => {
    const size = 16 * MiB;
    const r = await receiverOnInheritedSocket(simArgs(1, size));
    const src = makeSims(1, { size, dirtyRate: 2 * MiB });
    try {
      const s = await migrate({ devices: src.cores, transport: r.ours, downtimeLimitMs: 500 }).done;
      expect(s.verified).toBe(true);
      expect(await r.exited).toBe(0);
      expect(JSON.parse(r.out.stdout.trim()).digests).toEqual([src.sims[0].digest()]);
    } finally {
      src.close();
      r.cleanup();
    }
  });

  it('an inherited socket (fd:3) that carries junk: the receive fails CORRUPT at once (no stray to skip, exit 2)', async () => {
    const r = await receiverOnInheritedSocket(['--no-warm-up', ...simArgs(1, MiB)]);
    try {
      r.ours.write(Buffer.alloc(256, 0x41));
      expect(await r.exited).toBe(2);
      expect(JSON.parse(r.out.stdout.trim())).toMatchObject({ ok: false, error: { code: 'VFIO_MIG_ERR_CORRUPT' }, recovery: 'none' });
    } finally {
      r.cleanup();
    }
  });
});
