// Parent side of the two-process runs of bench/e2e.mjs and bench/memory.mjs: starts a destination
// child, then a source child, over a unix socket in a fresh temporary directory, and returns what
// both reported (see _e2e-peer.mjs). Not run by bench/run.mjs (leading underscore).
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PEER = fileURLToPath(new URL('./_e2e-peer.mjs', import.meta.url));
export const PREDICTION_PEER = fileURLToPath(new URL('./_prediction-peer.mjs', import.meta.url));
// Extra node flags for the peers, e.g. BENCH_PEER_FLAGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile
// both sides of a run (NODE_OPTIONS refuses --cpu-prof).
const PEER_FLAGS = (process.env.BENCH_PEER_FLAGS ?? '').split(' ').filter(Boolean);

/**
 * Fork one peer role of `script` (default _e2e-peer.mjs): { child, next(), exited, who } where next()
 * resolves with the child's next IPC message (rejects if it exits first).
 */
export function start(role, args, script = PEER) {
  const child = fork(script, [role, ...args.map(String)], { execArgv: PEER_FLAGS, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const who = `${basename(script, '.mjs')} ${role}`;
  const messages = [];
  let waiting = null;
  let exitError = null;
  child.on('message', (m) => {
    if (waiting) {
      const w = waiting;
      waiting = null;
      w.resolve(m);
    } else messages.push(m);
  });
  child.on('exit', (code, signal) => {
    if (code !== 0) exitError = new Error(`${who} exited ${code ?? signal}`);
    if (waiting) {
      const w = waiting;
      waiting = null;
      w.reject(exitError ?? new Error(`${who} exited before reporting`));
    }
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const next = () => {
    if (messages.length) return Promise.resolve(messages.shift());
    if (exitError || child.exitCode !== null) return Promise.reject(exitError ?? new Error(`${who} exited before reporting`));
    return new Promise((resolve, reject) => (waiting = { resolve, reject }));
  };
  return { child, next, exited, who };
}

/**
 * Wait for peers to exit; one still running `ms` after is killed and its name returned. A process
 * that lingers after its migration is a fault to report (the prediction bench once waited on a
 * source held alive by an idle compression worker), not something to wait for.
 */
export async function exitsWithin(peers, ms = 10_000) {
  let timer;
  const late = new Promise((resolve) => (timer = setTimeout(resolve, ms, 'late')));
  const lingering = [];
  await Promise.all(
    peers.map(async (p) => {
      if ((await Promise.race([p.exited, late])) === 'late') {
        lingering.push(p.who);
        p.child.kill('SIGKILL');
      }
    }),
  );
  clearTimeout(timer);
  return lingering;
}

/** exitsWithin(), throwing when a peer had to be killed. */
async function noneLingering(peers) {
  const lingering = await exitsWithin(peers);
  if (lingering.length > 0) throw new Error(`${lingering.join(' and ')} still running 10 s after reporting`);
}

export async function withDir(prefix, fn) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * One vfio-mig migration between two processes: { ms, bytes, wireBytes, source, dest } where ms runs
 * from the source's first device call to the destination's device accepting RESUMING -> STOP, and
 * source/dest are the children's reports (maxRssKB, digest...). Throws when the digests differ.
 */
export function runPair({ size, profile = 'mixed', seed = 7, zstd = 'off' }) {
  return withDir('bench-e2e-', async (dir) => {
    const sock = join(dir, 's.sock');
    const d = start('dest', [sock, size, profile, seed, zstd]);
    let s = null;
    try {
      await d.next(); // listening
      s = start('source', [sock, size, profile, seed, zstd]);
      const [src, dst] = await Promise.all([s.next(), d.next()]);
      await noneLingering([s, d]);
      if (src.digest !== dst.digest) throw new Error(`digest mismatch: source ${src.digest}, destination ${dst.digest}`);
      if (src.bytes !== dst.bytes) throw new Error(`byte count mismatch: source ${src.bytes}, destination ${dst.bytes}`);
      return { ms: dst.tEnd - src.t0, bytes: src.bytes, wireBytes: src.wireBytes, source: src, dest: dst };
    } finally {
      d.child.kill('SIGKILL');
      s?.child.kill('SIGKILL');
    }
  });
}

/** The naive Node pair on the bytes of `file`: fs.createReadStream -> unix socket -> fs.createWriteStream('/dev/null'). */
export function runNaivePair(file) {
  return withDir('bench-naive-', async (dir) => {
    const sock = join(dir, 'n.sock');
    const d = start('naive-dest', [sock]);
    let s = null;
    try {
      await d.next();
      s = start('naive-source', [sock, file]);
      const [src, dst] = await Promise.all([s.next(), d.next()]);
      await noneLingering([s, d]);
      return { ms: dst.tEnd - src.t0, bytes: dst.bytes, source: src, dest: dst };
    } finally {
      d.child.kill('SIGKILL');
      s?.child.kill('SIGKILL');
    }
  });
}

/** Write the source device's stream bytes (as runPair's source would send them) to `file`. */
export async function dumpStream(file, { size, profile = 'mixed', seed = 7 }) {
  const p = start('dump', [file, size, profile, seed]);
  try {
    const m = await p.next();
    await p.exited;
    return m.bytes;
  } finally {
    p.child.kill('SIGKILL');
  }
}

const envNumber = (name) => (process.env[name] ? Number(process.env[name]) : undefined);

/**
 * migrate() and receive() in two processes (_prediction-peer.mjs) on one cell (the fields that
 * script's header lists; the socket goes in a fresh directory): { src, dst, lingering }, the two
 * reports and the peers still running 10 s after reporting (killed).
 */
export function runPredictionPeers(cell, prefix = 'bench-pred-') {
  return withDir(prefix, async (dir) => {
    const spec = JSON.stringify({ ...cell, socket: join(dir, 'p.sock') });
    const d = start('dest', [spec], PREDICTION_PEER);
    let s = null;
    try {
      await d.next();
      s = start('source', [spec], PREDICTION_PEER);
      const [src, dst] = await Promise.all([s.next(), d.next()]);
      const lingering = await exitsWithin([s, d]);
      return { src, dst, lingering };
    } finally {
      d.child.kill('SIGKILL');
      s?.child.kill('SIGKILL');
    }
  });
}

/**
 * One migration through the orchestrator, migrate() and receive() in two processes
 * (_prediction-peer.mjs), no dirtying, no cap: { ms, bytes, source, dest } where ms is the source
 * summary's durationMs (migrate() called to the destination running). Throws when it fails.
 */
export async function runMigratePair({ size, profile = 'mixed', seed = 7, compression = 'none', digest = process.env.BENCH_MIGRATE_DIGEST, chunkSize = envNumber('BENCH_MIGRATE_CHUNK'), decompressionWorkers = envNumber('BENCH_MIGRATE_DECOMPRESSION_WORKERS') ?? 0 }) {
  const { src, dst, lingering } = await runPredictionPeers(
    {
      size,
      profile,
      seed,
      dirtyRate: 0,
      bandwidth: 0,
      compression,
      // migrate()'s DEVICE_END digest ('crc32' by default; BENCH_MIGRATE_DIGEST=sha256 or none to compare).
      ...(digest !== undefined ? { digest: digest === 'none' ? null : digest } : {}),
      // migrate()'s device read size (BENCH_MIGRATE_CHUNK=bytes to compare).
      ...(chunkSize !== undefined ? { chunkSize } : {}),
      // receive()'s decompressionPool size (BENCH_MIGRATE_DECOMPRESSION_WORKERS=N to compare; none by default).
      decompressionWorkers,
      limitMs: 1000,
      windowMs: 3000,
      timeoutMs: 120_000,
    },
    'bench-mig-',
  );
  if (lingering.length > 0) throw new Error(`${lingering.join(' and ')} still running 10 s after reporting`);
  if (!src.ok) throw new Error(`migrate() failed: ${src.code}: ${src.message}`);
  if (!dst.ok) throw new Error(`receive() failed: ${dst.code}: ${dst.message}`);
  if (!src.verified || src.digest !== dst.digest) throw new Error('migrate(): destination state not verified');
  return { ms: src.durationMs, bytes: src.bytes, source: src, dest: dst };
}
