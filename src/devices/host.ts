/**
 * Device host, parent side: a device running in a child process whose data sessions reach this
 * process as real non-seekable fds (FIFOs by default), exactly as the kernel hands out a data fd.
 *
 * `spawnDeviceHost()` starts the child (host-child.ts), which owns the device; `HostedDevice`
 * implements MigrationDriver over the control channel (child_process IPC, JSON), so a MigrationCore
 * drives it like any driver. A session it opens is fd-backed: `session.fd` was opened here
 * (O_RDONLY|O_NONBLOCK on a saving FIFO, O_WRONLY|O_NONBLOCK on a resuming one: a FIFO open is
 * non-blocking so a vanished child can never hang this process in open(2)).
 *
 * A FIFO cannot say ENODEV, so the child announces how every stream ends before it closes its end:
 * `session.eofError()` tells what an EOF read on a saving fd means (null: the STOP_COPY end of
 * stream; ENODEV: disabled by a closing arc or a reset; the device's error; or
 * VFIO_MIG_ERR_TRANSPORT when the host went away).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { closeSync, constants as fsc, existsSync, openSync, mkdtempSync, open as fsOpen, read as fsRead, rmSync, write as fsWrite } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ErrorCodes, MigError, errnoName, isErrno, migError } from '../fsm/errors.js';
import type { DeviceState } from '../fsm/states.js';
import type {
  DeviceIdentity,
  MigrationDriver,
  PrecopyInfo,
  ResumingSession,
  SavingSession,
  Session,
} from '../fsm/types.js';
import type { FdKind } from './host-fifo.js';
import { fromWireError } from './host-protocol.js';
import type { ChildMessage, DownKind, HostDeviceSpec, InitResult, Op, OpMap, ParentMessage, SessionRef } from './host-protocol.js';

export interface DeviceHostOptions {
  /** 'sim', 'mtty', or a module (absolute path or URL) exporting a factory `(options) => MigrationDriver`. */
  device: HostDeviceSpec;
  /** Passed to the device's constructor / factory (JSON). */
  options?: Record<string, unknown>;
  /** How sessions become fds (default 'fifo'). */
  fdKind?: FdKind;
  /** Bytes per device read in the child; at most one such chunk is in flight besides the pipe (default 1 MiB). */
  chunkSize?: number;
  /**
   * The child's environment (default: this process's `process.env`). glibc reads its allocator
   * settings from the environment a process starts with, so this is where a child gets them:
   * `env: withMallocTuning()` (src/streams/malloc-tuning.ts). Also NODE_OPTIONS and whatever the
   * device module reads.
   */
  env?: NodeJS.ProcessEnv;
}

const DEFAULT_CHUNK = 1 << 20;
/** How long close() lets the child shut down before SIGKILL. */
const SHUTDOWN_TIMEOUT_MS = 3_000;
/** How long a write that got EPIPE waits for the child's notice of why. */
const EPIPE_NOTICE_MS = 1_000;
const WRITE_POLL_MIN_MS = 1;
const WRITE_POLL_MAX_MS = 20;

/**
 * How the child is started. Built package: `host-child.js` sits next to this file, and plain node
 * runs it. From TypeScript sources (vitest, `npx vitest run` without a build), this file is
 * host.ts and there is no .js sibling: node 20 cannot run .ts itself (no --experimental-strip-types
 * before 22.6), so the child gets an `--import` of a tiny module-hooks loader (a data: URL, nothing
 * on disk) that transpiles .ts with the project's `typescript` devDependency and maps the `.js`
 * import specifiers of the sources to their `.ts` files. No build step, so never a stale dist.
 */
function childCommand(): string[] {
  const here = fileURLToPath(import.meta.url);
  const dir = dirname(here);
  const js = join(dir, 'host-child.js');
  if (here.endsWith('.js') && existsSync(js)) return [js];
  return nodeArgsForTs(join(dir, 'host-child.ts'));
}

/**
 * Node arguments that run a TypeScript file of this project from source (the loader above), for
 * tests that need another Node process of their own. Not part of the package's API.
 */
export function nodeArgsForTs(file: string): string[] {
  return ['--import', tsLoaderUrl(fileURLToPath(import.meta.url)), file];
}

function tsLoaderUrl(anchor: string): string {
  // Transpiled files are cached by content hash in node_modules/.cache (the usual place for tool
  // caches), so only the first child after an edit pays for loading the compiler (~0.2-1 s).
  const cacheDir = join(dirname(anchor), '..', '..', 'node_modules', '.cache', 'vfio-mig-host');
  const hooks = `
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
const require = createRequire(${JSON.stringify(pathToFileURL(anchor).href)});
const cacheDir = ${JSON.stringify(cacheDir)};
let ts = null;
function transpile(fileName, source) {
  ts ??= require('typescript');
  return ts.transpileModule(source, {
    fileName,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, inlineSourceMap: true },
  }).outputText;
}
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (err) {
    const parent = context.parentURL;
    if (parent && parent.startsWith('file:') && specifier.endsWith('.js') && (specifier.startsWith('.') || specifier.startsWith('file:'))) {
      const url = new URL(specifier.slice(0, -3) + '.ts', parent);
      if (existsSync(fileURLToPath(url))) return { url: url.href, format: 'module', shortCircuit: true };
    }
    throw err;
  }
}
export async function load(url, context, next) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const fileName = fileURLToPath(url);
    const source = readFileSync(fileName, 'utf8');
    const key = createHash('sha256').update(fileName).update('\\0').update(source).digest('hex').slice(0, 32);
    const cached = join(cacheDir, key + '.js');
    let out;
    try {
      out = readFileSync(cached, 'utf8');
    } catch {
      out = transpile(fileName, source);
      try {
        mkdirSync(cacheDir, { recursive: true });
        const tmp = cached + '.' + process.pid;
        writeFileSync(tmp, out);
        renameSync(tmp, cached);
      } catch {
        // A read-only tree: run without the cache.
      }
    }
    return { format: 'module', source: out, shortCircuit: true };
  }
  return next(url, context);
}`;
  const hooksUrl = 'data:text/javascript,' + encodeURIComponent(hooks);
  const register = `import { register } from 'node:module'; register(${JSON.stringify(hooksUrl)});`;
  return 'data:text/javascript,' + encodeURIComponent(register);
}

function transportError(message: string, cause?: unknown): MigError {
  return migError(ErrorCodes.TRANSPORT, message, cause === undefined ? undefined : { cause });
}

function sysError(err: unknown, what: string): MigError {
  if (err instanceof MigError) return err;
  return migError(errnoName(err) ?? 'EIO', `${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** What a HostedSession needs from its device. */
interface HostLink {
  request<K extends Op>(op: K, args: OpMap[K]['args']): Promise<OpMap[K]['result']>;
  note(m: ParentMessage): void;
  /** The user closed the session: forget it. */
  closed(id: number): void;
}

const ST_OPEN = 0;
const ST_EOS = 1;
const ST_DISABLED = 2;
const ST_ERROR = 3;

abstract class HostedSessionBase {
  readonly id: number;
  protected _fd: number | null;
  protected _ownsFd: boolean;
  protected _status: number;
  protected _error: MigError | null;
  protected _closed: boolean;
  protected _hostGone: boolean;
  protected readonly _link: HostLink;
  /** Resolved when the session's outcome is known (a down notice or the host's end). */
  private _settledWaiters: (() => void)[];

  constructor(id: number, fd: number | null, link: HostLink) {
    this.id = id;
    this._fd = fd;
    this._ownsFd = fd !== null;
    this._status = ST_OPEN;
    this._error = null;
    this._closed = false;
    this._hostGone = false;
    this._link = link;
    this._settledWaiters = [];
  }

  get fd(): number | null {
    return this._fd;
  }

  /**
   * True once disabled by an arc, a reset or disable(), and also once the host died: the device
   * is gone, as after a hot unplug (the kernel's fds then fail ENODEV), so a consumer never takes
   * the EOF of a dead host for the end of the stream. `eofError()`/`error` still say TRANSPORT.
   */
  get disabled(): boolean {
    return this._status === ST_DISABLED || this._hostGone;
  }

  /** The device's error (or the host's end) that ended this session, if any. */
  get error(): MigError | null {
    return this._error;
  }

  /**
   * What an EOF on this session's fd means: null for the STOP_COPY end of stream, else the error
   * a kernel data fd would have returned (ENODEV once disabled, the device's errno, or
   * VFIO_MIG_ERR_TRANSPORT when the host is gone without saying why).
   */
  eofError(): MigError | null {
    switch (this._status) {
      case ST_EOS:
        return null;
      case ST_DISABLED:
        return this.#enodev();
      case ST_ERROR:
        return this._error;
      default:
        return transportError(`device host closed session ${this.id} without an end-of-stream notice`);
    }
  }

  /**
   * eofError() after one control round trip: every notice the child sent before it closed its
   * end has then arrived, even if this process was too busy to ack in time (the child closes
   * after ACK_TIMEOUT_MS without one) or saw the EOF before the notice.
   */
  async settledEofError(): Promise<MigError | null> {
    if (this._status === ST_OPEN && !this._hostGone) await this._link.request('getState', null).catch(() => undefined);
    return this.eofError();
  }

  /**
   * Hand the fd over to a consumer that closes it itself (a net.Socket closes its fd on destroy):
   * close() then leaves it alone, so the number is never closed twice.
   */
  takeFd(): number {
    if (this._fd === null || !this._ownsFd) throw migError('EBADF', `session ${this.id} has no fd to take`);
    this._ownsFd = false;
    return this._fd;
  }

  disable(): void {
    if (this._status === ST_DISABLED) return;
    this._status = ST_DISABLED;
    this.#wakeSettled();
    if (!this._closed) this._link.note({ t: 'disable', sid: this.id });
  }

  close(): void {
    if (this._closed) return;
    this._closed = true;
    if (this._fd !== null && this._ownsFd) {
      try {
        closeSync(this._fd);
      } catch {
        // EBADF: already closed by its consumer.
      }
    }
    this._fd = null;
    this.#wakeSettled();
    this._link.note({ t: 'close', sid: this.id });
    this._link.closed(this.id);
  }

  /** The host died: the error of every later call, and disabled from now on. */
  _gone(err: MigError): void {
    this._down('error', err);
    this._hostGone = true;
    this.#wakeSettled();
  }

  /** The child's notice (or the host's end): how this session's stream ended. */
  _down(kind: DownKind, error?: MigError): void {
    // A stream that ended (eos or error) is still disabled later by its closing arc or a reset
    // (ENODEV from then on, as the kernel's fd); a disabled session stays so.
    if (this._status === ST_DISABLED || (this._status !== ST_OPEN && kind !== 'disabled')) return;
    if (kind === 'eos') this._status = ST_EOS;
    else if (kind === 'disabled') this._status = ST_DISABLED;
    else {
      this._status = ST_ERROR;
      this._error = error ?? transportError(`device host session ${this.id} failed`);
    }
    this.#wakeSettled();
  }

  protected _check(): void {
    if (this._closed) throw migError('EBADF', `session ${this.id} is closed`);
    if (this._status === ST_DISABLED) throw this.#enodev();
    if (this._status === ST_ERROR && this._error) throw this._error;
  }

  /** Wait (bounded) until the session's outcome is known. */
  protected _waitSettled(ms: number): Promise<void> {
    if (this._status !== ST_OPEN || this._closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this._settledWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  #wakeSettled(): void {
    const w = this._settledWaiters;
    this._settledWaiters = [];
    for (const f of w) f();
  }

  #enodev(): MigError {
    return migError('ENODEV', `session ${this.id} is disabled`);
  }
}

export class HostedSavingSession extends HostedSessionBase implements SavingSession {
  readonly direction = 'saving' as const;

  /**
   * Method-backed read over the fd, like read(2) on a non-blocking data fd: EAGAIN when nothing is
   * readable now (the FIFO shows a PRE_COPY temporary end as "no data"), 0 at the STOP_COPY end.
   */
  async read(buf: Buffer): Promise<number> {
    this._check();
    const fd = this._fd;
    if (fd === null) throw migError('EBADF', `session ${this.id} has no fd`);
    let n: number;
    try {
      n = await new Promise<number>((resolve, reject) =>
        fsRead(fd, buf, 0, buf.length, null, (err, bytes) => (err ? reject(err) : resolve(bytes))),
      );
    } catch (err) {
      if (isErrno(err, 'EAGAIN')) throw migError('EAGAIN', `session ${this.id}: no data ready`);
      throw sysError(err, `session ${this.id} read failed`);
    }
    if (n > 0) return n;
    const e = await this.settledEofError();
    if (e) throw e;
    return 0;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    this._check();
    return this._link.request('precopyInfo', { sid: this.id });
  }
}

export class HostedResumingSession extends HostedSessionBase implements ResumingSession {
  readonly direction = 'resuming' as const;

  /**
   * Method-backed write over the fd, like write(2): resolves the bytes the pipe took. A full pipe
   * (EAGAIN on the non-blocking fd) is retried with bounded backoff; EPIPE means the child closed
   * its end, and the child's notice says why (the device's write error, or ENODEV).
   */
  async write(buf: Buffer): Promise<number> {
    let backoff = WRITE_POLL_MIN_MS;
    for (;;) {
      this._check();
      const fd = this._fd;
      if (fd === null) throw migError('EBADF', `session ${this.id} has no fd`);
      try {
        return await new Promise<number>((resolve, reject) =>
          fsWrite(fd, buf, 0, buf.length, null, (err, bytes) => (err ? reject(err) : resolve(bytes))),
        );
      } catch (err) {
        if (isErrno(err, 'EAGAIN')) {
          await sleep(backoff);
          backoff = Math.min(backoff * 2, WRITE_POLL_MAX_MS);
          continue;
        }
        if (isErrno(err, 'EPIPE')) {
          // The notice was sent before the FIFO closed; it may still be on its way.
          await this._waitSettled(EPIPE_NOTICE_MS);
          this._check();
        }
        throw sysError(err, `session ${this.id} write failed`);
      }
    }
  }
}

export type HostedSession = HostedSavingSession | HostedResumingSession;

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  op: string;
}

/**
 * A device in a child process. Implements MigrationDriver; emits 'reset' when the device resets on
 * its own (its sessions are already disabled then), and 'exit' {code, signal} when the child ends.
 */
export class HostedDevice extends EventEmitter implements MigrationDriver {
  readonly flags: number;
  /** The child's pid. */
  readonly pid: number;
  /** The host's private directory (FIFOs live there until both ends are open). */
  readonly dir: string;
  #identity: DeviceIdentity;
  #child: ChildProcess;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #sessions = new Map<number, HostedSession>();
  /** Outcomes announced before the session object existed (a reset right after the arc). */
  #early = new Map<number, { kind: DownKind; error?: MigError }>();
  #gone: MigError | null = null;
  /** Session paths, to wake a saving reader if the child dies before opening its end. */
  #paths = new Map<number, string>();
  #maxAdopted = 0;
  #exited: Promise<void>;
  #closing: Promise<void> | null = null;

  /** Use spawnDeviceHost(). */
  constructor(child: ChildProcess, dir: string, init: InitResult, pending: Map<number, Pending>, nextId: number, exited: Promise<void>) {
    super();
    this.#child = child;
    this.dir = dir;
    this.flags = init.flags;
    this.pid = init.pid;
    this.#identity = init.identity;
    this.#pending = pending;
    this.#nextId = nextId;
    this.#exited = exited;
  }

  identity(): DeviceIdentity {
    return { ...this.#identity };
  }

  getState(): Promise<DeviceState> {
    return this.#request('getState', null);
  }

  async step(from: DeviceState, to: DeviceState): Promise<Session | null> {
    const ref = await this.#request('step', { from, to });
    if (!ref) return null;
    return this.#adopt(ref);
  }

  reset(): Promise<void> {
    return this.#request('reset', null).then(() => undefined);
  }

  stopCopySize(): Promise<number> {
    return this.#request('stopCopySize', null);
  }

  /** The hosted device's digest() (SimDevice, MttyDevice). */
  async digest(): Promise<string> {
    return (await this.call('digest')) as string;
  }

  /** Call another method of the hosted device (e.g. SimDevice's dirtyPages(n), raiseReinit()); JSON in and out. */
  call(method: string, ...params: unknown[]): Promise<unknown> {
    return this.#request('call', { method, params });
  }

  /** Sessions opened and not yet closed. */
  get sessions(): readonly HostedSession[] {
    return [...this.#sessions.values()];
  }

  /** Ends the child (after it closed its sessions and its device), closes open session fds and removes the host's directory. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (!this.#gone) {
      // Bounded: a child stuck in its device still ends, by SIGKILL below. The timer is cleared so
      // it never holds the caller's process open after a prompt shutdown.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#request('shutdown', null).catch(() => undefined),
        new Promise<void>((r) => (timer = setTimeout(r, SHUTDOWN_TIMEOUT_MS))),
      ]);
      clearTimeout(timer);
    }
    const killer = setTimeout(() => this.#child.kill('SIGKILL'), SHUTDOWN_TIMEOUT_MS);
    if (this.#child.connected) this.#child.disconnect();
    await this.#exited;
    clearTimeout(killer);
    for (const s of [...this.#sessions.values()]) s.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Child -> parent messages after init. */
  _onMessage(m: ChildMessage): void {
    switch (m.t) {
      case 'res':
        break; // handled by the shared pending table
      case 'down': {
        const error = m.error ? fromWireError(m.error) : undefined;
        const s = this.#sessions.get(m.sid);
        if (s) s._down(m.kind, error);
        // A notice can overtake the adoption of a session just opened (ids only grow); one for a
        // session already closed here is dropped.
        else if (m.sid > this.#maxAdopted) this.#early.set(m.sid, { kind: m.kind, error });
        // The child closes a saving FIFO only after this ack, so our reader's EOF is never ambiguous.
        this.#note({ t: 'ack', sid: m.sid });
        break;
      }
      case 'event':
        if (m.name === 'reset') this.emit('reset');
        break;
    }
  }

  /** The child ended: every pending and later call fails with VFIO_MIG_ERR_TRANSPORT. */
  _onGone(err: MigError): void {
    if (this.#gone) return;
    this.#gone = err;
    for (const s of this.#sessions.values()) {
      s._gone(err);
      // A FIFO whose writer never opened does not wake an epoll reader at all (Linux reports
      // HUP only after a writer came and went): open and close its write end once, so a reader
      // of a child that died before it opened its end still sees EOF. ENOENT: the child had
      // opened it (and unlinked the name), so its death already closed the writer.
      if (s.direction === 'saving' && s.fd !== null && this.#paths.has(s.id)) {
        try {
          closeSync(openSync(this.#paths.get(s.id) as string, fsc.O_WRONLY | fsc.O_NONBLOCK));
        } catch {
          // ENOENT or ENXIO: nothing to wake.
        }
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async #adopt(ref: SessionRef): Promise<Session> {
    const flags =
      ref.direction === 'saving' ? fsc.O_RDONLY | fsc.O_NONBLOCK : fsc.O_WRONLY | fsc.O_NONBLOCK;
    let fd: number | null = null;
    let openError: MigError | null = null;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fsOpen(ref.path, flags, (err, n) => (err ? reject(err) : resolve(n))),
      );
    } catch (err) {
      openError = sysError(err, `open of session ${ref.id} (${ref.path}) failed`);
    }
    const link: HostLink = {
      request: (op, args) => this.#request(op, args),
      note: (m) => this.#note(m),
      closed: (id) => {
        this.#sessions.delete(id);
        this.#paths.delete(id);
      },
    };
    this.#maxAdopted = Math.max(this.#maxAdopted, ref.id);
    const s: HostedSession =
      ref.direction === 'saving' ? new HostedSavingSession(ref.id, fd, link) : new HostedResumingSession(ref.id, fd, link);
    this.#sessions.set(ref.id, s);
    this.#paths.set(ref.id, ref.path);
    if (openError) {
      // The arc itself succeeded (the device moved): return the session, failed with the reason.
      s._down('error', openError);
      this.#note({ t: 'close', sid: ref.id });
      return s;
    }
    const early = this.#early.get(ref.id);
    this.#early.delete(ref.id);
    if (early) s._down(early.kind, early.error);
    if (this.#gone) s._gone(this.#gone);
    this.#note({ t: 'opened', sid: ref.id });
    return s;
  }

  #note(m: ParentMessage): void {
    if (!this.#child.connected) return;
    try {
      this.#child.send(m);
    } catch {
      // The channel closed under us: 'exit' will fail everything pending.
    }
  }

  #request<K extends Op>(op: K, args: OpMap[K]['args']): Promise<OpMap[K]['result']> {
    return sendRequest(this.#child, this.#pending, this.#nextId++, op, args, this.#gone) as Promise<OpMap[K]['result']>;
  }
}

function sendRequest(
  child: ChildProcess,
  pending: Map<number, Pending>,
  id: number,
  op: string,
  args: unknown,
  gone: MigError | null,
): Promise<unknown> {
  if (gone) return Promise.reject(gone);
  if (!child.connected) return Promise.reject(transportError(`device host is disconnected (${op})`));
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, op });
    const m: ParentMessage = { t: 'req', id, op: op as Op, args };
    try {
      child.send(m, (err) => {
        if (err && pending.delete(id)) reject(transportError(`device host request ${op} could not be sent`, err));
      });
    } catch (err) {
      pending.delete(id);
      reject(transportError(`device host request ${op} could not be sent`, err));
    }
  });
}

/** Start a device in a child process; resolves once the device is constructed and its identity known. */
export async function spawnDeviceHost(opts: DeviceHostOptions): Promise<HostedDevice> {
  const fdKind = opts.fdKind ?? 'fifo';
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK;
  if (!Number.isInteger(chunkSize) || chunkSize <= 0) throw migError(ErrorCodes.USAGE, `chunkSize must be a positive integer`);
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-host-'));
  const child = spawn(process.execPath, childCommand(), {
    // The child's stdout goes to our stderr: a parent may be streaming migration data on its
    // stdout (vfio-mig save > file), and a stray line from a device must not land in it.
    stdio: ['ignore', 2, 2, 'ipc'],
    serialization: 'json',
    env: opts.env ?? process.env,
  });
  const pending = new Map<number, Pending>();
  let device: HostedDevice | null = null;
  let gone: MigError | null = null;
  const fail = (err: MigError): void => {
    if (gone) return;
    gone = err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    if (device) device._onGone(err);
    else rmSync(dir, { recursive: true, force: true });
  };
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      fail(transportError(`device host (pid ${child.pid}) exited (${signal ?? `code ${code}`})`));
      device?.emit('exit', { code, signal });
      resolve();
    });
  });
  child.once('error', (err) => fail(transportError(`device host failed to start: ${err.message}`, err)));
  child.once('disconnect', () => fail(transportError(`device host (pid ${child.pid}) disconnected`)));
  child.on('message', (raw) => {
    const m = raw as ChildMessage;
    if (m.t === 'res') {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(fromWireError(m.error));
      return;
    }
    device?._onMessage(m);
  });
  let init: InitResult;
  try {
    init = (await sendRequest(child, pending, 1, 'init', { device: opts.device, options: opts.options ?? {}, fdKind, dir, chunkSize }, null)) as InitResult;
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  device = new HostedDevice(child, dir, init, pending, 2, exited);
  if (gone) device._onGone(gone);
  return device;
}
