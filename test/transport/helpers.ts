/**
 * Helpers of the transport tests: random payloads with their digests, a full-duplex exchange,
 * a child node process running TypeScript (peer-child.ts), and throwaway TLS certificates.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawn, execFileSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
import type { Duplex, Readable, Writable } from 'node:stream';

export const MIB = 1024 * 1024;
const here = dirname(fileURLToPath(import.meta.url));

/** Write `bytes` random bytes in 64 KiB chunks with backpressure, then end(); resolves the sha256 of what was sent. */
export async function sendRandom(w: Writable, bytes: number): Promise<string> {
  const h = createHash('sha256');
  let left = bytes;
  while (left > 0) {
    const chunk = randomBytes(Math.min(64 * 1024, left));
    h.update(chunk);
    left -= chunk.length;
    if (!w.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => {
          w.off('error', onError);
          w.off('close', onClose);
          resolve();
        };
        const onError = (err: Error): void => {
          w.off('drain', onDrain);
          reject(err);
        };
        const onClose = (): void => {
          w.off('drain', onDrain);
          reject(new Error('closed while writing'));
        };
        w.once('drain', onDrain);
        w.once('error', onError);
        w.once('close', onClose);
      });
    }
  }
  w.end();
  return h.digest('hex');
}

/** Read `r` to its end; resolves the sha256 and byte count. */
export function receiveAll(r: Readable): Promise<{ hash: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let bytes = 0;
    r.on('data', (c: Buffer) => {
      h.update(c);
      bytes += c.length;
    });
    r.once('end', () => resolve({ hash: h.digest('hex'), bytes }));
    r.once('error', reject);
  });
}

/** Both directions at once: a sends `bytes` to b and b sends `bytes` to a; checks both digests. */
export async function exchange(a: Duplex, b: Duplex, bytes: number): Promise<{ ab: boolean; ba: boolean }> {
  const [sentA, sentB, gotB, gotA] = await Promise.all([sendRandom(a, bytes), sendRandom(b, bytes), receiveAll(b), receiveAll(a)]);
  return { ab: sentA === gotB.hash && gotB.bytes === bytes, ba: sentB === gotA.hash && gotA.bytes === bytes };
}

/** A `--import` URL that lets node run the project's .ts files (imports ending in .js map to .ts). */
function tsLoaderImport(): string {
  const tsPath = createRequire(join(here, '..', '..', 'package.json')).resolve('typescript');
  const hooks = `
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
const ts = createRequire(${JSON.stringify(tsPath)})(${JSON.stringify(tsPath)});
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    if (context.parentURL?.startsWith('file:') && specifier.endsWith('.js') && specifier.startsWith('.')) {
      const url = new URL(specifier.slice(0, -3) + '.ts', context.parentURL);
      if (existsSync(fileURLToPath(url))) return { url: url.href, format: 'module', shortCircuit: true };
    }
    throw err;
  }
}
export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context);
  const fileName = fileURLToPath(url);
  const out = ts.transpileModule(readFileSync(fileName, 'utf8'), { fileName, compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } });
  return { format: 'module', source: out.outputText, shortCircuit: true };
}`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify('data:text/javascript,' + encodeURIComponent(hooks))});`;
  return 'data:text/javascript,' + encodeURIComponent(register);
}

export interface PeerResult {
  sent?: string;
  received?: { hash: string; bytes: number };
  error?: { code: string; message: string };
}

/**
 * Start test/transport/peer-child.ts with `args`; `stdio` extends the default (stdout piped for the
 * JSON result). `result` resolves what the child printed when it exits.
 */
export function spawnPeer(args: string[], stdio: StdioOptions = ['ignore', 'pipe', 'inherit']): { child: ChildProcess; result: Promise<PeerResult & { exitCode: number | null; signal: string | null }> } {
  const child = spawn(process.execPath, ['--import', tsLoaderImport(), join(here, 'peer-child.ts'), ...args], { stdio });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  const result = new Promise<PeerResult & { exitCode: number | null; signal: string | null }>((resolve) => {
    child.once('exit', (exitCode, signal) => {
      let parsed: PeerResult = {};
      try {
        parsed = JSON.parse(out.trim().split('\n').pop() ?? '{}') as PeerResult;
      } catch {
        parsed = { error: { code: 'BAD_OUTPUT', message: out } };
      }
      resolve({ ...parsed, exitCode, signal });
    });
  });
  return { child, result };
}

/** The listener's next connection, or a rejection carrying the child's output if it exits first. */
export function acceptFrom(l: { accept(o?: { timeoutMs?: number }): Promise<Duplex> }, peer: { result: Promise<PeerResult & { exitCode: number | null }> }): Promise<Duplex> {
  return Promise.race([
    l.accept({ timeoutMs: 30_000 }),
    peer.result.then((r) => {
      throw new Error(`peer exited before connecting: ${JSON.stringify(r)}`);
    }),
  ]);
}

export function tempDir(prefix = 'vfio-mig-transport-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Run `fn` with two fresh FIFOs, `down` and `up`, in a temporary directory removed afterwards. */
export async function withFifoPair<T>(fn: (down: string, up: string) => Promise<T>): Promise<T> {
  const t = tempDir();
  try {
    const down = join(t.dir, 'down');
    const up = join(t.dir, 'up');
    execFileSync('mkfifo', [down, up]);
    return await fn(down, up);
  } finally {
    t.cleanup();
  }
}

export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export interface TestPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A second, unrelated CA and a client certificate it signed. */
  otherCa: string;
  rogueCert: string;
  rogueKey: string;
}

/** Generate two CAs and server/client certificates with the openssl command line (P-256, one day). */
export function makePki(dir: string): TestPki {
  const run = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  };
  const ecKey = (name: string): void => run('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`);
  const ca = (name: string): void => {
    ecKey(name);
    run('req', '-x509', '-new', '-key', `${name}.key`, '-out', `${name}.crt`, '-days', '1', '-subj', `/CN=${name}`);
  };
  const leaf = (name: string, caName: string, ext: string): void => {
    ecKey(name);
    run('req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    writeFileSync(join(dir, `${name}.ext`), ext);
    run('x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.crt`, '-CAkey', `${caName}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`);
  };
  ca('ca');
  ca('other-ca');
  leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
  leaf('rogue', 'other-ca', 'extendedKeyUsage=clientAuth\n');
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8');
  return {
    ca: read('ca.crt'),
    serverCert: read('server.crt'),
    serverKey: read('server.key'),
    clientCert: read('client.crt'),
    clientKey: read('client.key'),
    otherCa: read('other-ca.crt'),
    rogueCert: read('rogue.crt'),
    rogueKey: read('rogue.key'),
  };
}

/** file:// URL of a project file, for children that import it. */
export function projectUrl(rel: string): string {
  return pathToFileURL(join(here, '..', '..', rel)).href;
}
