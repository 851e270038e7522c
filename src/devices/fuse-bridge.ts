/**
 * The FUSE data-fd bridge: serves saving and resuming sessions as files on a private FUSE mount,
 * with the kernel data fd's semantics (docs/fuse.md).
 *
 * The mount belongs to a small C server (native/fuse/vfio-mig-fuse.c, built by `npm run build` when
 * libfuse3 is present). The server owns the kernel side (inodes, open modes, direct_io +
 * nonseekable, poll handles, interrupts) and forwards every read, write and poll to this process
 * over its stdin/stdout as fixed 24-byte little-endian headers:
 *
 *   { u32 op, u32 id, u32 sid, i32 arg, u32 len, u32 flags } + len bytes
 *
 * Here each request is answered from the session's read()/write()/precopyInfo(), which is where
 * the data fd's rules are applied: ENOMSG at the PRE_COPY temporary end (also for drivers that say 0
 * there), 0 forever at the STOP_COPY end, ENODEV once disabled, EAGAIN only for O_NONBLOCK files
 * (a blocking read waits for data), partial device writes looped.
 */
import { spawn, execFile } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { constants as fsc, existsSync, readFileSync, promises as fsp } from 'node:fs';
import { tmpdir, constants as osConstants } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { DeviceState } from '../fsm/states.js';
import { ERRNO, ErrorCodes, errnoName, isErrno, migError } from '../fsm/errors.js';
import type { ResumingSession, SavingSession, Session } from '../fsm/types.js';

// Server -> Node.
const OP_READ = 1;
const OP_WRITE = 2;
const OP_POLL = 3;
const OP_INTERRUPT = 4;
const OP_OPENED = 5;
const OP_RELEASED = 6;
const OP_ACK = 7;
const OP_READY = 8;
// Node -> server.
const OP_REPLY = 0x80;
const OP_ADD = 0x81;
const OP_REMOVE = 0x82;
const OP_WAKE = 0x83;
const OP_EXIT = 0x84;

const KIND_SAVING = 1;
const KIND_RESUMING = 2;

const HDR = 24;
/** The server's largest request and reply (kernel max_pages 256). */
export const FUSE_MAX_IO = 1024 * 1024;

const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLERR = 0x008;
const POLLRDNORM = 0x040;
const POLLWRNORM = 0x100;


/** Blocking waits (EAGAIN) and poll watchers back off like this: bounded, reset on progress. */
const WAIT_MIN_MS = 1;
const WAIT_MAX_MS = 50;

const EXIT_TIMEOUT_MS = 3_000;

/** Where `npm run build` puts the server, relative to this module (src/devices or dist/devices). */
const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEFAULT_SERVER = join(PACKAGE_ROOT, 'native', 'fuse', 'build', 'vfio-mig-fuse');

/** Path of the built FUSE server (env VFIO_MIG_FUSE_SERVER overrides), or null when not built. */
export function fuseServerPath(): string | null {
  const p = process.env.VFIO_MIG_FUSE_SERVER || DEFAULT_SERVER;
  return existsSync(p) ? p : null;
}

/** Whether FUSE data fds can work here: the built server and /dev/fuse. `reason` says what is missing. */
export function fuseAvailability(): { ok: boolean; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: 'FUSE data fds need Linux' };
  if (!existsSync('/dev/fuse')) return { ok: false, reason: '/dev/fuse is absent' };
  if (!fuseServerPath()) {
    const p = process.env.VFIO_MIG_FUSE_SERVER || DEFAULT_SERVER;
    return { ok: false, reason: `the FUSE server is not built (${p}); install libfuse3-dev and run npm run build` };
  }
  return { ok: true, reason: '' };
}

/** Linux errno number for an error from a session (ENOMSG by number: Node has no name for it). */
function errnoOf(err: unknown): number {
  const name = errnoName(err);
  const n = name ? (ERRNO[name] ?? (osConstants.errno as Record<string, number>)[name]) : undefined;
  return n ?? ERRNO.EIO;
}

/** errno name for a number, also for names the project's ERRNO table lacks (EEXIST, ENOENT). */
function errnoNameOf(n: number): string {
  const abs = Math.abs(n);
  const known = errnoName({ errno: abs });
  if (known && known !== String(abs)) return known;
  for (const [name, v] of Object.entries(osConstants.errno as Record<string, number>)) if (v === abs) return name;
  return 'EIO';
}

export interface FuseBridgeOptions {
  /** Parent of the private mount directory (default os.tmpdir()). */
  dir?: string;
  /** The server binary (default: the one `npm run build` made, or env VFIO_MIG_FUSE_SERVER). */
  serverPath?: string;
  /** libfuse debug output on this process's stderr. */
  debug?: boolean;
}

export type FuseEndKind = 'eos' | 'disabled' | 'error';

export interface FuseExportOptions {
  /** File name in the mount (default `saving-<sid>` / `resuming-<sid>`); no '/'. */
  name?: string;
  /**
   * The device's state as its owner knows it. When given, a 0 from a read that began in
   * PRE_COPY/PRE_COPY_P2P is the temporary end (ENOMSG) and one that began in STOP_COPY the
   * permanent end. Without it the bridge asks precopyInfo() after a 0 and confirms a STOP_COPY
   * end with a second read.
   */
  deviceState?: () => DeviceState;
  /**
   * How the stream ended, once: 'eos' (the first STOP_COPY end, before it is handed to the reader:
   * a returned promise delays that first 0 until it settles, so an owner that must record the end
   * before its reader sees EOF can do so), 'disabled' (the session answered ENODEV) or 'error'
   * (the device failed a read or write with another errno, given as `error`). Only the first
   * end is reported; 'disabled' and 'error' are not awaited (their errno tells the reader).
   */
  onEnd?: (kind: FuseEndKind, error?: unknown) => void | Promise<void>;
}

type Req = {
  id: number;
  op: number;
  file: FuseSessionFile;
  arg: number;
  flags: number;
  data: Buffer | null;
  /** Set by INTERRUPT: a waiting request answers EINTR. */
  interrupted: boolean;
  /** Cuts a blocking wait short (interrupt, file closed). */
  wake: (() => void) | null;
};

const F_SERVING = 0;
const F_CLOSED = 1;

/**
 * One session served as a file. Reads and writes are answered one at a time in arrival order (the
 * driver's per-file mutex); poll queries are answered at once.
 */
export class FuseSessionFile extends EventEmitter {
  readonly sid: number;
  readonly name: string;
  readonly path: string;
  readonly session: Session;
  #bridge: FuseBridge;
  #opts: FuseExportOptions;
  #state = F_SERVING;
  #linked = true;
  #opens = 0;
  #queue: Req[] = [];
  /** The read or write being answered now. */
  #current: Req | null = null;
  #busy = false;
  /** A STOP_COPY end was handed out: later 0s need no confirmation. */
  #ended = false;
  #endReported = false;
  #watching = false;
  #watchWake: (() => void) | null = null;
  #idleWaiters: (() => void)[] = [];
  /** The device's write error: the resume stream is broken, later writes return it. */
  #writeError: unknown = null;

  constructor(bridge: FuseBridge, sid: number, name: string, session: Session, opts: FuseExportOptions) {
    super();
    this.#bridge = bridge;
    this.sid = sid;
    this.name = name;
    this.path = join(bridge.mountpoint, name);
    this.session = session;
    this.#opts = opts;
  }

  /** Open file descriptions on this file right now (all processes). */
  get opens(): number {
    return this.#opens;
  }

  /** False once close() ran: every request is answered ENODEV. */
  get serving(): boolean {
    return this.#state === F_SERVING;
  }

  /**
   * Remove the name from the mount; open fds keep working (like the kernel's anonymous data fd,
   * which never had one). Idempotent.
   */
  async unlink(): Promise<void> {
    if (!this.#linked) return;
    this.#linked = false;
    await this.#bridge._remove(this.sid).catch(() => undefined);
  }

  /**
   * Stop serving: queued and later requests fail with ENODEV (a disabled data fd), pollers wake,
   * the name goes. The session itself is not touched. Idempotent.
   */
  close(): void {
    if (this.#state === F_CLOSED) return;
    this.#state = F_CLOSED;
    for (const r of this.#queue.splice(0)) this.#bridge._reply(r, -ERRNO.ENODEV);
    // A reader waiting for data wakes to ENODEV, as a disabled kernel fd wakes its sleepers.
    this.#current?.wake?.();
    this.#watchWake?.();
    this.#bridge._wake(this.sid);
    void this.unlink();
    this.#bridge._forget(this);
  }

  /**
   * Resolves once no read or write is queued or running: every write(2) that returned before the
   * call has reached the session (a FUSE write returns only after the session took the bytes).
   */
  idle(): Promise<void> {
    if (!this.#busy) return Promise.resolve();
    return new Promise((res) => this.#idleWaiters.push(res));
  }

  /** The stream is woken from outside (state change): cut poll watcher backoffs short. */
  wake(): void {
    this.#watchWake?.();
  }

  _opened(flags: number): void {
    this.#opens++;
    this.emit('open', { flags });
  }

  _released(): void {
    if (this.#opens > 0) this.#opens--;
    if (this.#opens === 0) this.#watchWake?.();
    this.emit('release');
  }

  _request(r: Req): void {
    if (r.op === OP_POLL) {
      this.#poll(r).catch((err) => this.#bridge._reply(r, -errnoOf(err)));
      return;
    }
    if (this.#state !== F_SERVING) {
      this.#bridge._reply(r, -ERRNO.ENODEV);
      return;
    }
    this.#queue.push(r);
    if (!this.#busy) void this.#run();
  }

  _interrupt(r: Req): void {
    r.interrupted = true;
    const i = this.#queue.indexOf(r);
    if (i >= 0) {
      // Not started: nothing consumed, the reader sees EINTR (and its libc may restart the call).
      this.#queue.splice(i, 1);
      this.#bridge._reply(r, -ERRNO.EINTR);
      return;
    }
    r.wake?.();
  }

  async #run(): Promise<void> {
    this.#busy = true;
    while (this.#queue.length > 0) {
      const r = this.#queue.shift() as Req;
      this.#current = r;
      try {
        if (r.op === OP_READ) await this.#read(r);
        else await this.#write(r);
      } catch (err) {
        this.#bridge._reply(r, -errnoOf(err));
      }
      this.#current = null;
    }
    this.#busy = false;
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  #end(kind: FuseEndKind, error?: unknown): Promise<void> {
    if (this.#endReported) return Promise.resolve();
    this.#endReported = true;
    this.emit('end', kind, error);
    return Promise.resolve(this.#opts.onEnd?.(kind, error)).catch(() => undefined);
  }

  #precopyOf(state: DeviceState | undefined): boolean | undefined {
    if (state === undefined) return undefined;
    return state === DeviceState.PRE_COPY || state === DeviceState.PRE_COPY_P2P;
  }

  /** Sleep for a blocking request; false when it must stop waiting (interrupted, file closed). */
  #sleep(r: Req, ms: number): Promise<boolean> {
    return new Promise((res) => {
      const timer = setTimeout(() => done(), ms);
      const done = (): void => {
        clearTimeout(timer);
        r.wake = null;
        res(!r.interrupted && this.#state === F_SERVING);
      };
      r.wake = done;
    });
  }

  async #read(r: Req): Promise<void> {
    const session = this.session as SavingSession;
    if (r.arg <= 0) return this.#bridge._reply(r, 0); // read(2) of 0 bytes: nothing to ask the device
    const blocking = (r.flags & fsc.O_NONBLOCK) === 0;
    let backoff = WAIT_MIN_MS;
    let confirming = false;
    for (;;) {
      if (this.#state !== F_SERVING) return this.#bridge._reply(r, -ERRNO.ENODEV);
      // Which end a 0 means depends on the state the read began in (host-fifo.ts does the same).
      const precopy = this.#precopyOf(this.#opts.deviceState?.());
      const buf = Buffer.allocUnsafe(r.arg);
      let n: number;
      try {
        n = await session.read(buf);
      } catch (err) {
        if (isErrno(err, 'EAGAIN')) {
          // Data not ready yet (slow firmware): an O_NONBLOCK reader hears EAGAIN, a blocking one waits.
          if (!blocking) return this.#bridge._reply(r, -ERRNO.EAGAIN);
          if (!(await this.#sleep(r, backoff))) {
            return this.#bridge._reply(r, this.#state === F_SERVING ? -ERRNO.EINTR : -ERRNO.ENODEV);
          }
          backoff = Math.min(backoff * 2, WAIT_MAX_MS);
          continue;
        }
        if (isErrno(err, 'ENODEV')) void this.#end('disabled');
        else if (!isErrno(err, 'ENOMSG')) void this.#end('error', err);
        // ENOMSG (PRE_COPY temporary end) and every other errno reach the reader as they are.
        return this.#bridge._reply(r, -errnoOf(err));
      }
      if (n > 0) return this.#bridge._reply(r, n, buf.subarray(0, n));
      if (this.#ended) return this.#bridge._reply(r, 0);
      if (precopy === true) {
        // mtty/hisi/qat answer 0 at the PRE_COPY temporary end; the uAPI says ENOMSG.
        return this.#bridge._reply(r, -ERRNO.ENOMSG);
      }
      if (precopy === undefined && !confirming) {
        // No state from the owner: ask the session. precopyInfo() works only in PRE_COPY.
        try {
          await session.precopyInfo();
          return this.#bridge._reply(r, -ERRNO.ENOMSG);
        } catch (err) {
          if (isErrno(err, 'ENODEV')) {
            void this.#end('disabled');
            return this.#bridge._reply(r, -ERRNO.ENODEV);
          }
          if (!isErrno(err, 'EINVAL')) return this.#bridge._reply(r, -errnoOf(err));
        }
        // STOP_COPY now, but the 0 may have come from PRE_COPY just before the arc: a read that
        // is surely in STOP_COPY decides.
        confirming = true;
        continue;
      }
      // STOP_COPY permanent end of stream: 0 now and forever (until the session is disabled).
      this.#ended = true;
      await this.#end('eos');
      return this.#bridge._reply(r, 0);
    }
  }

  async #write(r: Req): Promise<void> {
    const session = this.session as ResumingSession;
    // After a device write error the resume stream is broken; every later write answers that
    // errno (ENODEV once disabled). This also survives the kernel's own retry of a write that
    // failed with EFAULT (it faults the user pages in and sends the request again), which would
    // otherwise reach a device already in error and hide its errno behind ENODEV.
    if (this.#writeError !== null) {
      return this.#bridge._reply(r, session.disabled ? -ERRNO.ENODEV : -errnoOf(this.#writeError));
    }
    let data = r.data as Buffer;
    let done = 0;
    try {
      // A device may accept fewer bytes than given: loop, so the writer sees a short count only
      // when the device stopped taking bytes.
      while (data.length > 0) {
        if (this.#state !== F_SERVING) throw migError('ENODEV', 'session file closed');
        const n = await session.write(data);
        if (n <= 0) break;
        done += n;
        data = data.subarray(n);
      }
    } catch (err) {
      if (isErrno(err, 'ENODEV')) void this.#end('disabled');
      else {
        this.#writeError = err;
        void this.#end('error', err);
      }
      // write(2) reports the progress made before an error; the writer retries the rest and then
      // gets the device's errno.
      if (done === 0) return this.#bridge._reply(r, -errnoOf(err));
    }
    if (done === 0 && (r.data as Buffer).length > 0) return this.#bridge._reply(r, -ERRNO.EIO);
    this.#bridge._reply(r, done);
  }

  /** Readiness now, as a poll mask. */
  async #mask(): Promise<number> {
    const s = this.session;
    if (this.#state !== F_SERVING || s.disabled) {
      // A disabled data fd wakes pollers (mlx5: readable + error); the read then says ENODEV.
      return (s.direction === 'saving' ? POLLIN | POLLRDNORM : POLLOUT | POLLWRNORM) | POLLERR;
    }
    if (s.direction === 'resuming') return POLLOUT | POLLWRNORM;
    if (this.#ended) return POLLIN | POLLRDNORM;
    const precopy = this.#precopyOf(this.#opts.deviceState?.());
    // STOP_COPY: data is there or the end is, and the end is readable forever.
    if (precopy === false) return POLLIN | POLLRDNORM;
    try {
      const info = await s.precopyInfo();
      return info.initialBytes + info.dirtyBytes > 0 ? POLLIN | POLLRDNORM : 0;
    } catch (err) {
      if (isErrno(err, 'EINVAL')) return POLLIN | POLLRDNORM;
      if (isErrno(err, 'ENODEV')) return POLLIN | POLLRDNORM | POLLERR;
      throw err;
    }
  }

  async #poll(r: Req): Promise<void> {
    const mask = await this.#mask();
    this.#bridge._reply(r, mask);
    // The kernel wants a wake-up when the file becomes ready (flags bit 0): watch until it is.
    if (mask === 0 && (r.flags & 1) !== 0 && !this.#watching) void this.#watch();
  }

  async #watch(): Promise<void> {
    this.#watching = true;
    let backoff = WAIT_MIN_MS;
    try {
      // Nobody left to wake (every fd closed): stop; the next poll starts a new watch.
      while (this.#state === F_SERVING && this.#opens > 0) {
        await new Promise<void>((res) => {
          const timer = setTimeout(() => done(), backoff);
          const done = (): void => {
            clearTimeout(timer);
            this.#watchWake = null;
            res();
          };
          this.#watchWake = done;
        });
        backoff = Math.min(backoff * 2, WAIT_MAX_MS);
        let mask: number;
        try {
          mask = await this.#mask();
        } catch {
          mask = POLLERR;
        }
        if (mask !== 0) break;
      }
    } finally {
      this.#watching = false;
      this.#bridge._wake(this.sid);
    }
  }
}

type ServerProcess = ChildProcessByStdio<Writable, Readable, Readable>;

/** Mount points currently in /proc/self/mountinfo (octal escapes decoded). */
export function mountedPaths(): Set<string> {
  const out = new Set<string>();
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.add(f[4].replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

function lazyUnmount(mountpoint: string): Promise<void> {
  return new Promise((res) => {
    execFile('fusermount3', ['-u', '-z', mountpoint], (err) => {
      if (!err) return res();
      // fusermount3 missing or refused: as root, umount(8) does it.
      execFile('umount', ['-l', mountpoint], () => res());
    });
  });
}

/**
 * A FUSE mount served by one C server process. `FuseBridge.start()` mounts; `exportSaving()` /
 * `exportResuming()` put sessions in it as files; `close()` unmounts and removes the directory.
 */
export class FuseBridge extends EventEmitter {
  readonly mountpoint: string;
  #child: ServerProcess;
  #files = new Map<number, FuseSessionFile>();
  #reqs = new Map<number, Req>();
  #acks = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  #nextSid = 1;
  #nextCtl = 1;
  /** Incoming bytes not yet parsed: a list plus a byte count (copy only to assemble a message). */
  #inBufs: Buffer[] = [];
  #inLen = 0;
  #stderr = '';
  #closing: Promise<void> | null = null;
  #exited: Promise<void>;
  #ready: { resolve: () => void; reject: (err: Error) => void } | null = null;

  private constructor(mountpoint: string, child: ServerProcess) {
    super();
    this.mountpoint = mountpoint;
    this.#child = child;
    // A failed spawn (EACCES) emits 'error' and never 'exit'.
    this.#exited = new Promise((res) => {
      child.once('exit', () => res());
      child.once('error', () => res());
    });
    child.stdout.on('data', (chunk: Buffer) => this.#onData(chunk));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      // Keep the tail for error messages.
      this.#stderr = (this.#stderr + s).slice(-4096);
    });
    // EPIPE when the server died: the exit handler reports it.
    child.stdin.on('error', () => undefined);
    child.on('exit', (code, signal) => this.#onExit(code, signal));
  }

  /** Mount a new private FUSE directory and start its server. */
  static async start(opts: FuseBridgeOptions = {}): Promise<FuseBridge> {
    const server = opts.serverPath ?? fuseServerPath();
    if (!server || !existsSync(server)) {
      throw migError(ErrorCodes.UNSUPPORTED, fuseAvailability().reason || `FUSE server not found: ${server}`);
    }
    if (!existsSync('/dev/fuse')) throw migError(ErrorCodes.UNSUPPORTED, '/dev/fuse is absent');
    const mountpoint = await fsp.mkdtemp(join(opts.dir ?? tmpdir(), 'vfio-mig-fuse-'));
    const args = ['--rmdir', mountpoint];
    if (opts.debug) args.unshift('-d');
    const child = spawn(server, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const bridge = new FuseBridge(mountpoint, child);
    try {
      await new Promise<void>((res, rej) => {
        bridge.#ready = { resolve: res, reject: rej };
        child.once('error', rej);
      });
    } catch (err) {
      await bridge.close().catch(() => undefined);
      throw err;
    }
    return bridge;
  }

  /** The server's process id. */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Files served now. */
  get files(): FuseSessionFile[] {
    return [...this.#files.values()];
  }

  exportSaving(session: SavingSession, opts: FuseExportOptions = {}): Promise<FuseSessionFile> {
    return this.#export(session, KIND_SAVING, opts);
  }

  exportResuming(session: ResumingSession, opts: FuseExportOptions = {}): Promise<FuseSessionFile> {
    return this.#export(session, KIND_RESUMING, opts);
  }

  async #export(session: Session, kind: number, opts: FuseExportOptions): Promise<FuseSessionFile> {
    if (this.#closing) throw migError(ErrorCodes.USAGE, 'FUSE bridge is closed');
    if ((kind === KIND_SAVING) !== (session.direction === 'saving')) {
      throw migError(ErrorCodes.USAGE, `a ${session.direction} session cannot be served as this kind of file`);
    }
    const sid = this.#nextSid++;
    const name = opts.name ?? `${session.direction}-${sid}`;
    if (name.includes('/') || name === '.' || name === '..' || Buffer.byteLength(name) > 255) {
      throw migError(ErrorCodes.USAGE, `bad FUSE file name "${name}"`);
    }
    const file = new FuseSessionFile(this, sid, name, session, opts);
    this.#files.set(sid, file);
    try {
      await this.#control(OP_ADD, sid, kind, Buffer.from(name));
    } catch (err) {
      this.#files.delete(sid);
      throw err;
    }
    return file;
  }

  /** Unmount, stop the server and remove the directory. Open files then fail (ENOTCONN). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    for (const f of [...this.#files.values()]) f.close();
    const child = this.#child;
    if (child.exitCode === null && child.signalCode === null) {
      this.#send(OP_EXIT, 0, 0, 0, 0);
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGTERM'), EXIT_TIMEOUT_MS);
      const killer = setTimeout(() => child.kill('SIGKILL'), 2 * EXIT_TIMEOUT_MS);
      await this.#exited;
      clearTimeout(timer);
      clearTimeout(killer);
    }
    // The server unmounts on exit; if it was killed, nothing did: never leave a stale mount.
    if (mountedPaths().has(this.mountpoint)) await lazyUnmount(this.mountpoint);
    await fsp.rmdir(this.mountpoint).catch(() => undefined);
  }

  // ---- internals used by FuseSessionFile ----

  _reply(r: Req, result: number, data?: Buffer): void {
    if (!this.#reqs.delete(r.id)) return; // already answered (interrupt race) or server gone
    this.#send(OP_REPLY, r.id, r.file.sid, result, 0, data);
  }

  _wake(sid: number): void {
    this.#send(OP_WAKE, 0, sid, 0, 0);
  }

  _remove(sid: number): Promise<void> {
    return this.#control(OP_REMOVE, sid, 0);
  }

  _forget(file: FuseSessionFile): void {
    this.#files.delete(file.sid);
  }

  #send(op: number, id: number, sid: number, arg: number, flags: number, data?: Buffer): void {
    const stdin = this.#child.stdin;
    if (stdin.destroyed || stdin.writableEnded) return;
    const h = Buffer.allocUnsafe(HDR);
    h.writeUInt32LE(op, 0);
    h.writeUInt32LE(id, 4);
    h.writeUInt32LE(sid, 8);
    h.writeInt32LE(arg, 12);
    h.writeUInt32LE(data ? data.length : 0, 16);
    h.writeUInt32LE(flags, 20);
    if (!data || data.length === 0) {
      stdin.write(h);
      return;
    }
    // Header and payload as two buffers, never concatenated (a 1 MiB copy saved per read).
    stdin.cork();
    stdin.write(h);
    stdin.write(data);
    stdin.uncork();
  }

  #control(op: number, sid: number, flags: number, data?: Buffer): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) {
      return Promise.reject(migError(ErrorCodes.TRANSPORT, 'FUSE server is not running'));
    }
    const id = this.#nextCtl++;
    return new Promise((res, rej) => {
      this.#acks.set(id, { resolve: res, reject: rej });
      this.#send(op, id, sid, 0, flags, data);
    });
  }

  #onData(chunk: Buffer): void {
    this.#inBufs.push(chunk);
    this.#inLen += chunk.length;
    while (this.#inLen >= HDR) {
      const head = this.#peek(HDR);
      const len = head.readUInt32LE(16);
      if (this.#inLen < HDR + len) return;
      this.#consume(HDR);
      const data = len > 0 ? this.#consume(len) : null;
      this.#onMessage(head.readUInt32LE(0), head.readUInt32LE(4), head.readUInt32LE(8), head.readInt32LE(12), head.readUInt32LE(20), data);
    }
  }

  /** The first n buffered bytes, a view when they sit in one chunk (fast path), else a copy. */
  #peek(n: number): Buffer {
    const first = this.#inBufs[0];
    if (first.length >= n) return first.subarray(0, n);
    // Slow path: the bytes span chunks.
    return Buffer.concat(this.#inBufs, n);
  }

  #consume(n: number): Buffer {
    const first = this.#inBufs[0];
    if (first.length === n) {
      this.#inBufs.shift();
      this.#inLen -= n;
      return first;
    }
    if (first.length > n) {
      this.#inBufs[0] = first.subarray(n);
      this.#inLen -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const b = this.#inBufs[0];
      const take = Math.min(b.length, n - off);
      b.copy(out, off, 0, take);
      off += take;
      if (take === b.length) this.#inBufs.shift();
      else this.#inBufs[0] = b.subarray(take);
    }
    this.#inLen -= n;
    return out;
  }

  #onMessage(op: number, id: number, sid: number, arg: number, flags: number, data: Buffer | null): void {
    switch (op) {
      case OP_READY: {
        const ready = this.#ready;
        this.#ready = null;
        if (arg === 0) ready?.resolve();
        else ready?.reject(migError(ErrorCodes.UNSUPPORTED, `FUSE mount failed: ${this.#stderr.trim() || `errno ${-arg}`}`));
        return;
      }
      case OP_ACK: {
        const a = this.#acks.get(id);
        this.#acks.delete(id);
        if (!a) return;
        if (arg === 0) a.resolve();
        else a.reject(migError(errnoNameOf(arg), `FUSE server refused the request: ${errnoNameOf(arg)}`, { errno: -arg }));
        return;
      }
      case OP_OPENED:
        this.#files.get(sid)?._opened(flags);
        return;
      case OP_RELEASED:
        this.#files.get(sid)?._released();
        return;
      case OP_INTERRUPT: {
        const r = this.#reqs.get(id);
        if (r) r.file._interrupt(r);
        return;
      }
      case OP_READ:
      case OP_WRITE:
      case OP_POLL: {
        const file = this.#files.get(sid);
        const r: Req = { id, op, file: file as FuseSessionFile, arg, flags, data, interrupted: false, wake: null };
        if (!file) {
          // The session is gone (closed by its owner): a disabled data fd.
          this.#send(OP_REPLY, id, sid, op === OP_POLL ? POLLERR | POLLIN | POLLOUT : -ERRNO.ENODEV, 0);
          return;
        }
        this.#reqs.set(id, r);
        file._request(r);
        return;
      }
      default:
        this.emit('error', migError(ErrorCodes.PROTOCOL, `FUSE server sent unknown op ${op}`));
    }
  }

  #onExit(code: number | null, signal: NodeJS.Signals | null): void {
    const err = migError(
      ErrorCodes.TRANSPORT,
      `FUSE server exited (${signal ?? `code ${code}`})${this.#stderr.trim() ? `: ${this.#stderr.trim()}` : ''}`,
    );
    this.#ready?.reject(err);
    this.#ready = null;
    for (const a of this.#acks.values()) a.reject(err);
    this.#acks.clear();
    this.#reqs.clear();
    if (!this.#closing) {
      // Unexpected: clean the mount up and tell the owner.
      void this.close();
      if (this.listenerCount('error') > 0) this.emit('error', err);
    }
    this.emit('exit', { code, signal });
  }
}
