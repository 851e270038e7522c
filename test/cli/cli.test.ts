/**
 * The `vfio-mig` command, run as a user runs it: `node bin/vfio-mig.js ...` in a child process.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { BIN, ROOT, ensureBuilt, runCli, startReceiver } from '../e2e/helpers.js';
import { WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR } from '../../src/streams/wire-format.js';
import { limitRow } from '../../src/cli/output.js';
import type { MigrationSummary } from '../../src/migration/summary.js';
import { CONTROL_PROTOCOL_VERSION } from '../../src/migration/control.js';
import { mallocTuning } from '../../src/streams/malloc-tuning.js';

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

async function cli(args: string[]) {
  return runCli(args).exit;
}

/** The command line that runs vfio-mig, for shell pipelines. */
const vm = `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)}`;

/** Run a bash pipeline; its stderr ends with `codes ...`, each command's exit code in order. */
function sh(script: string) {
  return spawnSync('bash', ['-c', `${script}; echo "codes \${PIPESTATUS[*]}" >&2`], { encoding: 'utf8', timeout: 60_000 });
}

describe('vfio-mig demo', () => {
  it('--json --size 32MiB prints one verified summary', async () => {
    const r = await cli(['demo', '--json', '--size', '32MiB', '--dirty-rate', '4MiB']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const s = JSON.parse(lines[0]);
    expect(s.ok).toBe(true);
    expect(s.verified).toBe(true);
    for (const k of ['bytes', 'wireBytes', 'durationMs', 'downtimeMs', 'precopyRounds', 'throughputMBps']) expect(typeof s[k]).toBe('number');
    expect('predictedDowntimeMs' in s).toBe(true);
    // The demo asks the destination first (checkDestination()), as an agent would.
    expect(s.preflightMs).toBeGreaterThan(0);
    expect(s.bytes).toBeGreaterThanOrEqual(32 * 1024 * 1024);
    expect(s.precopyRounds).toBeGreaterThanOrEqual(1);
  });

  it('--channels 2 over tcp: data on two connections, verified', async () => {
    const r = await cli(['demo', '--json', '--size', '16MiB', '--dirty-rate', '4MiB', '--channels', '2', '--transport', 'tcp']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim()).verified).toBe(true);
  });

  it('confined to one CPU (one compression worker), a compressed migration of a lightly dirtying device verifies', () => {
    // os.availableParallelism() follows the affinity mask: the pool has one worker, and the stop-copy
    // is not split. (Its expected size, a dirty rate times a time, once reached readLimit unrounded
    // and failed every such migration at the switchover with a usage error.)
    const r = spawnSync('taskset', ['-c', '0', process.execPath, BIN, 'demo', '--json', '--size', '32MiB', '--dirty-rate', '4MiB', '--compress', 'zstd'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.error).toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout.trim());
    expect(s.verified).toBe(true);
    expect(s.compressionRatio).toBeGreaterThan(1);
  }, 60_000);

  it('--policy stepwise: the summary names the limit the switchover went under when the policy raised it', async () => {
    // 8 MiB, every page hot, behind a 16 MB/s cap: ~0.5 s of stop-copy against a 200 ms limit, raised
    // by 200 ms every 2 s (the CLI's stepwise policy, up to 4 x the limit).
    const r = await cli(['demo', '--json', '--size', '8MiB', '--dirty-rate', '64MiB', '--bandwidth', '16MB', '--policy', 'stepwise', '--downtime-limit', '200']);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout.trim());
    expect(s.verified).toBe(true);
    expect(s.downtimeLimitMs).toBe(200);
    expect(s.switchoverLimitMs).toBeGreaterThan(200);
    expect(s.switchoverLimitMs).toBeLessThanOrEqual(800);
    expect(s.switchoverLimitMs % 200).toBe(0);
    expect(s.predictedDowntimeMs).toBeLessThanOrEqual(s.switchoverLimitMs);
  }, 30_000);

  it("the 'downtime limit' line says when and to what the policy raised the limit", () => {
    const base = { switchoverLimitMs: 300 } as MigrationSummary;
    expect(limitRow(300, base)).toEqual(['downtime limit', '300 ms']);
    expect(limitRow(300, { ...base, switchoverLimitMs: 600 })).toEqual(['downtime limit', '300 ms (raised to 600 ms by the policy)']);
    expect(limitRow(300, { ...base, switchoverLimitMs: null })).toEqual(['downtime limit', '300 ms']);
  });

  it('--compression-workers sets the compression pool: one worker here, named in the JSON; 0 is a usage error', async () => {
    const r = await cli(['demo', '--json', '--size', '16MiB', '--dirty-rate', '2MiB', '--compress', 'zstd', '--compression-workers', '1']);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout.trim());
    expect(s.verified).toBe(true);
    expect(s.compressionWorkers).toBe(1);
    const plain = await cli(['demo', '--json', '--size', '4MiB', '--dirty-rate', '0']);
    expect(JSON.parse(plain.stdout.trim()).compressionWorkers).toBeNull();
    const bad = await cli(['demo', '--json', '--size', '4MiB', '--compress', 'zstd', '--compression-workers', '0']);
    expect(bad.code).toBe(64);
    expect(JSON.parse(bad.stdout.trim()).error.message).toMatch(/--compression-workers/);
  }, 60_000);

  it('--compress-min-saving: 0 sends incompressible records compressed, the default sends them raw; bad values exit 64', async () => {
    // SimDevice 'random' records shrink by 0-2.3% at level 1: under the default 1/32 all go raw
    // (more bytes on the wire than in the state, by the record headers), with 0 every one that
    // shrinks goes compressed (fewer).
    const base = ['demo', '--json', '--size', '16MiB', '--dirty-rate', '0', '--profile', 'random', '--compress', 'zstd', '--no-warm-up'];
    const dflt = await cli(base);
    expect(dflt.code, dflt.stderr).toBe(0);
    const raw = JSON.parse(dflt.stdout.trim());
    expect(raw.verified).toBe(true);
    expect(raw.wireBytes).toBeGreaterThan(raw.bytes);
    const any = await cli([...base, '--compress-min-saving', '0']);
    expect(any.code, any.stderr).toBe(0);
    const zs = JSON.parse(any.stdout.trim());
    expect(zs.verified).toBe(true);
    expect(zs.wireBytes).toBeLessThan(zs.bytes);
    for (const bad of [['--compress-min-saving', '1'], ['--compress-min-saving', 'lots']]) {
      const r = await cli([...base, ...bad]);
      expect(r.code).toBe(64);
      expect(JSON.parse(r.stdout.trim()).error.message).toMatch(/--compress-min-saving/);
    }
    // Without compression the option would do nothing: refused, not ignored.
    const plain = await cli(['demo', '--json', '--size', '4MiB', '--compress-min-saving', '5%']);
    expect(plain.code).toBe(64);
    expect(JSON.parse(plain.stdout.trim()).error.message).toMatch(/needs --compress/);
  }, 60_000);

  it('check: 0 when a waiting receive would take the devices, 5 with the reason when not; the receive then migrates', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-check-'));
    try {
      const dest = startReceiver(`unix:${join(dir, 'r.sock')}`, ['--size', '4MiB'], ['--no-warm-up']);
      const url = await dest.url;
      const ok = await cli(['check', '--json', '--to', url, '--size', '4MiB']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(JSON.parse(ok.stdout.trim())).toMatchObject({ ok: true, compatible: true, controlVersion: CONTROL_PROTOCOL_VERSION, devices: 1 });
      const human = await cli(['check', '--to', url, '--size', '4MiB']);
      expect(human.stdout).toMatch(/^compatible: unix:.* would take 1 device\(s\)/);
      const bad = await cli(['check', '--json', '--to', url, '--size', '8MiB']);
      expect(bad.code).toBe(5);
      expect(JSON.parse(bad.stdout.trim())).toMatchObject({ ok: false, compatible: false, error: { code: 'VFIO_MIG_ERR_INCOMPATIBLE', device: 0 } });
      const src = await cli(['migrate', '--json', '--to', url, '--size', '4MiB', '--dirty-rate', '0', '--no-warm-up']);
      expect(src.code, src.stderr).toBe(0);
      const r = await dest.exit;
      expect(r.code, r.stderr).toBe(0);
      expect(r.json?.verified).toBe(true);
      // The receive's summary counts what came before the migration: three checks, no stray.
      expect(r.json).toMatchObject({ checks: 3, strays: 0 });
      // Nobody listening any more: a transport failure, exit 1, not a refusal.
      const none = await cli(['check', '--json', '--to', url, '--size', '4MiB', '--timeout', '2000']);
      expect(none.code).toBe(1);
      expect(JSON.parse(none.stdout.trim())).toMatchObject({ ok: false, compatible: null });
      expect((await cli(['check', '--size', '4MiB'])).code).toBe(64);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('receive waits for its source past --stall-timeout; --accept-timeout gives up, devices untouched (exit 2)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-wait-'));
    try {
      const dest = startReceiver(`unix:${join(dir, 'r.sock')}`, ['--size', '4MiB'], ['--stall-timeout', '200']);
      const url = await dest.url;
      await new Promise((r) => setTimeout(r, 700));
      const src = await cli(['migrate', '--json', '--to', url, '--size', '4MiB', '--dirty-rate', '0', '--no-warm-up']);
      expect(src.code, src.stderr).toBe(0);
      const r = await dest.exit;
      expect(r.code, r.stderr).toBe(0);
      expect(r.json?.verified).toBe(true);

      const lonely = await cli(['receive', '--json', '--listen', `unix:${join(dir, 'l.sock')}`, '--size', '4MiB', '--no-warm-up', '--accept-timeout', '300']);
      expect(lonely.code).toBe(2);
      const e = JSON.parse(lonely.stdout.trim());
      expect(e.error.code).toBe('VFIO_MIG_ERR_STALLED');
      expect(e.error.message).toBe('no source connected within 300 ms');
      expect(e.phase).toBe('connect');
      expect(e.recovery).toBe('none');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--no-warm-up reaches both sides (the destination child refuses unknown options) and still verifies', async () => {
    const r = await cli(['demo', '--json', '--size', '8MiB', '--dirty-rate', '1MiB', '--no-warm-up']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim()).verified).toBe(true);
  });

  it('a policy abort exits 3 with the error and the phase in the JSON', async () => {
    const r = await cli(['demo', '--json', '--size', '32MiB', '--bandwidth', '4MiB', '--precopy-budget', '500']);
    expect(r.code, r.stderr).toBe(3);
    const s = JSON.parse(r.stdout.trim());
    expect(s.ok).toBe(false);
    expect(s.error.code).toBe('VFIO_MIG_ERR_POLICY_ABORT');
    expect(s.phase).toBe('precopy');
  });
});

describe('conventions', () => {
  it('--help on every command, usage errors exit 64', async () => {
    for (const cmd of ['demo', 'migrate', 'receive', 'check', 'save', 'restore', 'inspect']) {
      const r = await cli([cmd, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`usage: vfio-mig ${cmd}`));
    }
    expect((await cli(['--help'])).stdout).toMatch(/exit codes/);
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const v = await cli([flag]);
      expect(v.code).toBe(0);
      // `node bin/vfio-mig.js` starts with this process's environment (malloc-tuning.test.ts
      // starts it with others).
      const malloc = mallocTuning() === 'not-glibc' ? 'not-glibc' : mallocTuning(process.env);
      expect(v.stdout.trim()).toBe(
        `vfio-mig ${pkg.version} (wire format ${WIRE_VERSION_MAJOR}.${WIRE_VERSION_MINOR}, control protocol ${CONTROL_PROTOCOL_VERSION}, node ${process.versions.node}, malloc ${malloc})`,
      );
    }
    expect((await cli(['demo', '--nope'])).code).toBe(64);
    expect((await cli(['demo', '--size', 'lots'])).code).toBe(64);
    expect((await cli(['frobnicate'])).code).toBe(64);
    expect((await cli([])).code).toBe(64);
  });

  // Exit 4 was documented and never exercised.
  it('SIGINT to migrate mid-PRE_COPY: exit 4, ABORTED, rolled back; the receive is told and exits 4 too, its devices reset', async () => {
    await ensureBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-sigint-'));
    try {
      const dev = ['--size', '128MiB'];
      const dest = startReceiver(`unix:${join(dir, 'r.sock')}`, dev, ['--no-warm-up']);
      const url = await dest.url;
      // 128 MiB at 16 MB/s: over 8 s of PRE_COPY, interrupted after two (its start takes ~0.2).
      const src = runCli(['migrate', '--json', '--to', url, ...dev, '--bandwidth', '16MB', '--no-warm-up']);
      await new Promise((r) => setTimeout(r, 2000));
      src.child.kill('SIGINT');
      const [s, d] = await Promise.all([src.exit, dest.exit]);
      expect(s.code, s.stderr).toBe(4);
      expect(s.json).toMatchObject({ ok: false, error: { code: 'VFIO_MIG_ERR_ABORTED' }, recovery: 'recovered' });
      expect(d.code, d.stderr).toBe(4);
      expect(d.json).toMatchObject({ ok: false, error: { code: 'VFIO_MIG_ERR_ABORTED' }, recovery: 'reset' });
      expect(String((d.json as { error: { message: string } }).error.message)).toMatch(/source aborted in phase precopy/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  // A listen that failed escaped receive's try: exit 70 with a stack trace, signal handlers left.
  it('receive on an address in use: a typed error (EADDRINUSE), no stack trace, exit 2; --json says so', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const { port } = server.address() as net.AddressInfo;
      const human = await cli(['receive', '--listen', `tcp:127.0.0.1:${port}`, '--size', '4MiB', '--no-warm-up']);
      expect(human.code).toBe(2);
      expect(human.stderr).toMatch(/^vfio-mig: EADDRINUSE: listen tcp:127\.0\.0\.1:\d+: listen EADDRINUSE/);
      expect(human.stderr).not.toMatch(/\n\s+at /);
      const json = await cli(['receive', '--json', '--listen', `tcp:127.0.0.1:${port}`, '--size', '4MiB', '--no-warm-up']);
      expect(json.code).toBe(2);
      expect(JSON.parse(json.stdout.trim())).toMatchObject({ ok: false, error: { code: 'EADDRINUSE' } });
    } finally {
      server.close();
    }
  });

  // The bin's runMain: a command whose last await nothing can settle (the pool close that lost its
  // worker's ref did this) ended as exit 0, unfinished work reported as success; now 70.
  it('runMain: the command\'s code, 70 for a throw, and 70 (not 0) when the event loop empties before the command settles', async () => {
    await ensureBuilt();
    const mainUrl = JSON.stringify(new URL('../../dist/cli/main.js', import.meta.url).href);
    const run = (body: string) =>
      spawnSync(process.execPath, ['--input-type=module', '-e', `import { runMain } from ${mainUrl};\nrunMain(${body}, []);`], { encoding: 'utf8', timeout: 20_000 });
    const ok = run('async () => 3');
    expect(ok.status, ok.stderr).toBe(3);
    const threw = run("async () => { throw new Error('boom'); }");
    expect(threw.status).toBe(70);
    expect(threw.stderr).toMatch(/vfio-mig: Error: boom/);
    const stuck = run('() => new Promise(() => {})');
    expect(stuck.status).toBe(70);
    expect(stuck.stderr).toMatch(/internal error: the command stopped with its work unfinished/);
  });
});

describe('save / restore / inspect', () => {
  it('save --compress-min-saving 0 keeps incompressible records compressed; restore loads them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-ckpt-'));
    try {
      const file = join(dir, 'random.vfm');
      const dev = ['--size', '8MiB', '--profile', 'random'];
      const raw = JSON.parse((await cli(['save', '--json', ...dev, '--compress', 'zstd', join(dir, 'raw.vfm')])).stdout.trim());
      expect(raw.wireBytes).toBeGreaterThan(raw.bytes);
      const save = await cli(['save', '--json', ...dev, '--compress', 'zstd:1', '--compress-min-saving', '0', file]);
      expect(save.code, save.stderr).toBe(0);
      const saved = JSON.parse(save.stdout.trim());
      expect(saved.wireBytes).toBeLessThan(saved.bytes);
      expect(statSync(file).size).toBeLessThan(statSync(join(dir, 'raw.vfm')).size);
      const restore = await cli(['restore', '--json', ...dev, file]);
      expect(restore.code, restore.stderr).toBe(0);
      expect(JSON.parse(restore.stdout.trim()).digests).toEqual(saved.digests);
      expect((await cli(['save', '--json', ...dev, '--compress-min-saving', '0', file])).code).toBe(64);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // A checkpoint through a shell pipe, two vfio-mig processes: `save fd:3 3>&1 | restore fd:3 3<&0`.
  it('save into a pipe, restore from it (zstd); a reader that quits fails the save (EPIPE, rolled back, exit 2) and the cut stream the restore (exit 65)', async () => {
    await ensureBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-pipe-'));
    try {
      const dev = '--size 16MiB';
      const saved = join(dir, 'save.json');
      const ok = sh(`${vm} save --json ${dev} --compress zstd fd:3 3>&1 >${saved} | ${vm} restore --json ${dev} fd:3 3<&0`);
      expect(ok.stderr).toMatch(/codes 0 0/);
      const restored = JSON.parse(ok.stdout.trim());
      expect(restored.verified).toBe(true);
      // What the save read is what the restore loaded.
      expect(restored.digests).toEqual(JSON.parse(readFileSync(saved, 'utf8').trim()).digests);

      const quit = sh(`${vm} save --json ${dev} fd:3 3>&1 >${saved} | head -c 100000 >/dev/null`);
      expect(quit.stderr).toMatch(/codes 2 0/);
      const saveErr = JSON.parse(readFileSync(saved, 'utf8').trim());
      expect(saveErr.error.message).toMatch(/EPIPE/);
      expect(saveErr.recovery).toBe('recovered');

      const cut = sh(`${vm} save --quiet ${dev} --compress zstd fd:3 3>&1 >/dev/null 2>/dev/null | head -c 1000000 | ${vm} restore --json ${dev} fd:3 3<&0`);
      expect(cut.stderr).toMatch(/codes \d+ 0 65/);
      expect(JSON.parse(cut.stdout.trim()).error.code).toBe('VFIO_MIG_ERR_TRUNCATED');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('inspect reads a pipe (fd:3), says a cut one is truncated (65), and its reader quitting ends the output, not the command', async () => {
    await ensureBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-inspect-'));
    try {
      const file = join(dir, 'state.vfm');
      expect((await cli(['save', '--quiet', '--size', '8MiB', file])).code).toBe(0);
      // `inspect fd:3` took 'fd:3' for a path (ENOENT).
      const piped = sh(`cat ${file} | ${vm} inspect fd:3 3<&0`);
      expect(piped.stderr).toMatch(/codes 0 0/);
      expect(piped.stdout).toMatch(/^stream fd:3: format 1\.0/);
      expect(piped.stdout).toMatch(/STREAM_END/);
      const cut = sh(`head -c 300000 ${file} | ${vm} inspect fd:3 3<&0`);
      expect(cut.stderr).toMatch(/VFIO_MIG_ERR_TRUNCATED/);
      expect(cut.stderr).toMatch(/codes 0 65/);
      // Its output's reader gone before the first line (`true` reads nothing and exits at once):
      // every write is EPIPE; no stack trace, exit 0 (it crashed with an unhandled 'error').
      const gone = sh(`${vm} inspect --all ${file} | true`);
      expect(gone.stderr).toMatch(/^codes 0 0\n$/);
      // A system error's code is said once ("ENOENT: ENOENT: ..." before).
      const missing = await cli(['inspect', join(dir, 'nothere.vfm')]);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/^vfio-mig: ENOENT: no such file or directory, open /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('round trip, then a corrupt and a truncated file fail with typed errors (exit 65)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-ckpt-'));
    try {
      const file = join(dir, 'state.vfm');
      const save = await cli(['save', '--json', '--size', '8MiB', '--compress', 'zstd', file]);
      expect(save.code, save.stderr).toBe(0);
      const saved = JSON.parse(save.stdout.trim());
      expect(saved.ok).toBe(true);

      const restore = await cli(['restore', '--json', '--size', '8MiB', file]);
      expect(restore.code, restore.stderr).toBe(0);
      const restored = JSON.parse(restore.stdout.trim());
      expect(restored.verified).toBe(true);
      expect(restored.digests).toEqual(saved.digests);

      // Decompressing in a worker gives the same devices.
      const pooled = await cli(['restore', '--json', '--size', '8MiB', '--decompression-workers', '1', file]);
      expect(pooled.code, pooled.stderr).toBe(0);
      expect(JSON.parse(pooled.stdout.trim()).digests).toEqual(saved.digests);

      const inspect = await cli(['inspect', file]);
      expect(inspect.code, inspect.stderr).toBe(0);
      expect(inspect.stdout).toMatch(/device 0 dev0: sim/);
      expect(inspect.stdout).toMatch(/DEVICE_END/);
      expect(inspect.stdout).toMatch(/STREAM_END/);

      // A different device configuration is refused, not loaded.
      expect((await cli(['restore', '--json', '--size', '16MiB', file])).code).toBe(5);

      const bytes = readFileSync(file);
      const corrupt = join(dir, 'corrupt.vfm');
      const flipped = Buffer.from(bytes);
      flipped[Math.floor(bytes.length / 2)] ^= 0xff;
      writeFileSync(corrupt, flipped);
      const bad = await cli(['restore', '--json', '--size', '8MiB', corrupt]);
      expect(bad.code).toBe(65);
      expect(JSON.parse(bad.stdout.trim()).error.code).toMatch(/VFIO_MIG_ERR_(CORRUPT|DIGEST)/);

      const truncated = join(dir, 'truncated.vfm');
      writeFileSync(truncated, bytes);
      truncateSync(truncated, Math.floor(statSync(truncated).size * 0.7));
      const short = await cli(['restore', '--json', '--size', '8MiB', truncated]);
      expect(short.code).toBe(65);
      expect(JSON.parse(short.stdout.trim()).error.code).toBe('VFIO_MIG_ERR_TRUNCATED');
      // Not a vfio-mig stream at all (its first bytes): CORRUPT at once, not a connection to skip.
      const junk = join(dir, 'junk.vfm');
      writeFileSync(junk, Buffer.alloc(4096, 0x78));
      const notOurs = await cli(['restore', '--json', '--size', '8MiB', junk]);
      expect(notOurs.code).toBe(65);
      expect(JSON.parse(notOurs.stdout.trim()).error.code).toBe('VFIO_MIG_ERR_CORRUPT');
      // The corrupt file through the worker: the same typed error.
      const badPooled = await cli(['restore', '--json', '--size', '8MiB', '--decompression-workers', '1', corrupt]);
      expect(badPooled.code).toBe(65);
      expect(JSON.parse(badPooled.stdout.trim()).error.code).toMatch(/VFIO_MIG_ERR_(CORRUPT|DIGEST)/);
      expect((await cli(['inspect', truncated])).code).toBe(65);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
