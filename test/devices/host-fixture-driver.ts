/**
 * A small kernel-like driver for the device host tests, loaded in the host child through
 * `{ module: <this file>, export: 'createDevice' }`. Its state is `size` bytes, a pure function
 * of (seed, offset); the stream is a 16-byte header {magic, size} then the bytes.
 * PRE_COPY streams `precopyBytes` then reports the temporary end (ENOMSG, or 0 like mtty);
 * STOP_COPY streams the rest then 0 forever. Resuming checks the header (EFAULT) and every byte
 * (EINVAL), and RESUMING -> STOP fails with EINVAL while the image is incomplete.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { DeviceState } from '../../src/fsm/states.js';
import { migError } from '../../src/fsm/errors.js';
import type { DeviceIdentity, MigrationDriver, PrecopyInfo, ResumingSession, SavingSession, Session } from '../../src/fsm/types.js';

const MAGIC = 0x54534f48; // "HOST"
const HEADER = 16;

export interface FixtureOptions {
  size: number;
  seed?: number;
  precopyBytes?: number;
  precopyEmpty?: 'enomsg' | 'zero';
  /** Fail the device's resuming write with this errno once this many bytes were accepted. */
  failWriteAt?: number;
  /** Largest read a call returns (models a device handing out small pieces). */
  maxRead?: number;
}

function byteAt(seed: number, i: number): number {
  // Cheap position-dependent content: a bad byte anywhere is caught.
  return (Math.imul(i ^ seed, 2654435761) >>> 24) & 0xff;
}

function header(size: number): Buffer {
  const h = Buffer.alloc(HEADER);
  h.writeUInt32LE(MAGIC, 0);
  h.writeBigUInt64LE(BigInt(size), 8);
  return h;
}

let nextId = 1;

class FixtureSession {
  readonly id = nextId++;
  readonly fd = null;
  disabled = false;
  closed = false;
  protected waiters = new Set<(e: Error) => void>();

  disable(): void {
    if (this.disabled) return;
    this.disabled = true;
    for (const w of this.waiters) w(migError('ENODEV', 'session disabled'));
    this.waiters.clear();
  }

  close(): void {
    this.closed = true;
  }

  protected check(): void {
    if (this.disabled) throw migError('ENODEV', 'session disabled');
    if (this.closed) throw migError('EBADF', 'session closed');
  }
}

class FixtureSaving extends FixtureSession implements SavingSession {
  readonly direction = 'saving' as const;
  pos = 0;
  constructor(private dev: FixtureDevice) {
    super();
  }

  async read(buf: Buffer): Promise<number> {
    this.check();
    // Yield like a real driver call, so disables can land between reads.
    await new Promise((r) => setImmediate(r));
    this.check();
    const d = this.dev;
    const total = HEADER + d.size;
    const limit = d.state === DeviceState.STOP_COPY ? total : Math.min(total, HEADER + d.precopyBytes);
    if (this.pos >= limit) {
      if (d.state === DeviceState.STOP_COPY || d.precopyEmpty === 'zero') return 0;
      throw migError('ENOMSG', 'PRE_COPY: no more initial data');
    }
    const n = Math.min(buf.length, limit - this.pos, d.maxRead);
    const h = header(d.size);
    for (let k = 0; k < n; k++) {
      const p = this.pos + k;
      buf[k] = p < HEADER ? h[p] : byteAt(d.seed, p - HEADER);
    }
    this.pos += n;
    return n;
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    this.check();
    const d = this.dev;
    if (d.state !== DeviceState.PRE_COPY) throw migError('EINVAL', 'not in PRE_COPY');
    return { initialBytes: Math.max(0, HEADER + d.precopyBytes - this.pos), dirtyBytes: 0, reinit: false };
  }
}

class FixtureResuming extends FixtureSession implements ResumingSession {
  readonly direction = 'resuming' as const;
  pos = 0;
  hdr = Buffer.alloc(HEADER);
  size = -1;
  hash = createHash('sha256');
  failed: Error | null = null;
  constructor(private dev: FixtureDevice) {
    super();
  }

  async write(buf: Buffer): Promise<number> {
    this.check();
    await new Promise((r) => setImmediate(r));
    this.check();
    const d = this.dev;
    // Accept at most 4000 bytes per call: callers must loop over partial writes.
    const n = Math.min(buf.length, 4000);
    for (let k = 0; k < n; k++) {
      const p = this.pos + k;
      if (d.failWriteAt >= 0 && p >= d.failWriteAt) throw migError('EIO', `injected write failure at ${p}`);
      if (p < HEADER) {
        this.hdr[p] = buf[k];
        if (p === HEADER - 1) {
          if (this.hdr.readUInt32LE(0) !== MAGIC) throw migError('EFAULT', 'bad stream magic');
          this.size = Number(this.hdr.readBigUInt64LE(8));
          if (this.size !== d.size) throw migError('EINVAL', `size ${this.size} != ${d.size}`);
        }
      } else {
        if (p - HEADER >= this.size) throw migError('ENOMEM', 'write past the end of the image');
        if (buf[k] !== byteAt(d.seed, p - HEADER)) throw migError('EINVAL', `bad byte at ${p - HEADER}`);
      }
    }
    this.hash.update(buf.subarray(0, n));
    this.pos += n;
    return n;
  }
}

export class FixtureDevice extends EventEmitter implements MigrationDriver {
  readonly flags = 0x5;
  size: number;
  seed: number;
  precopyBytes: number;
  precopyEmpty: 'enomsg' | 'zero';
  failWriteAt: number;
  maxRead: number;
  state: DeviceState = DeviceState.RUNNING;
  saving: FixtureSaving | null = null;
  resuming: FixtureResuming | null = null;
  loaded = false;

  constructor(o: FixtureOptions) {
    super();
    this.size = o.size;
    this.seed = o.seed ?? 1;
    this.precopyBytes = Math.min(o.precopyBytes ?? 0, o.size);
    this.precopyEmpty = o.precopyEmpty ?? 'enomsg';
    this.failWriteAt = o.failWriteAt ?? -1;
    this.maxRead = o.maxRead ?? Number.MAX_SAFE_INTEGER;
  }

  identity(): DeviceIdentity {
    return { kind: 'fixture', model: `size=${this.size}`, version: '1.0', flags: this.flags, stateSize: this.size };
  }

  async getState(): Promise<DeviceState> {
    return this.state;
  }

  async step(from: DeviceState, to: DeviceState): Promise<Session | null> {
    if (from !== this.state) throw migError('EINVAL', `device is not in ${from}`);
    let opened: Session | null = null;
    if (from === DeviceState.RUNNING && to === DeviceState.PRE_COPY) opened = this.saving = new FixtureSaving(this);
    else if (from === DeviceState.STOP && to === DeviceState.STOP_COPY) opened = this.saving = new FixtureSaving(this);
    else if (from === DeviceState.STOP && to === DeviceState.RESUMING) opened = this.resuming = new FixtureResuming(this);
    else if (from === DeviceState.RESUMING && to === DeviceState.STOP) {
      const r = this.resuming;
      if (!r || r.pos !== HEADER + this.size) throw migError('EINVAL', `incomplete image (${r?.pos ?? 0} bytes)`);
      r.disable();
      this.loaded = true;
    } else if ((from === DeviceState.STOP_COPY || from === DeviceState.PRE_COPY) && (to === DeviceState.STOP || to === DeviceState.RUNNING)) {
      this.saving?.disable();
    }
    this.state = to;
    return opened;
  }

  async reset(): Promise<void> {
    this.saving?.disable();
    this.resuming?.disable();
    this.state = DeviceState.RUNNING;
  }

  async stopCopySize(): Promise<number> {
    return HEADER + this.size - (this.saving?.pos ?? 0);
  }

  /** sha256 of the state: the source's content, or what a completed load wrote. */
  digest(): string {
    if (this.loaded && this.resuming) return this.resuming.hash.copy().digest('hex');
    const h = createHash('sha256');
    h.update(header(this.size));
    const block = Buffer.alloc(65536);
    for (let off = 0; off < this.size; off += block.length) {
      const n = Math.min(block.length, this.size - off);
      for (let k = 0; k < n; k++) block[k] = byteAt(this.seed, off + k);
      h.update(block.subarray(0, n));
    }
    return h.digest('hex');
  }

  /** An asynchronous reset (FLR) after `ms`, reported with 'reset' like SimDevice's. */
  resetSoon(ms: number): null {
    setTimeout(() => {
      void this.reset().then(() => this.emit('reset'));
    }, ms);
    return null;
  }

  /** A control call that answers only after `ms` (to have a call pending when the host dies). */
  stall(ms: number): Promise<null> {
    return new Promise((r) => setTimeout(() => r(null), ms));
  }

  savedBytes(): number {
    return this.saving?.pos ?? 0;
  }
}

export function createDevice(options: Record<string, unknown>): FixtureDevice {
  return new FixtureDevice(options as unknown as FixtureOptions);
}
