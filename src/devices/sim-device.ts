/**
 * SimDevice: a RAM-backed device with dirty tracking, behaving like a kernel variant driver.
 *
 * State of any size (4 KiB to 1 TiB) that is never held in memory: each 4 KiB page is a pure
 * function of (seed, index, version) (sim-pages.ts), versions are stored only for the 256 KiB
 * regions where a page was dirtied (sim-memory.ts), and the stream (sim-format.ts) is generated
 * into the reader's buffer (sim-saver.ts) and verified as it is written (sim-loader.ts).
 *
 * One base arc per step(), validated with the kernel's table; a failed arc leaves the device in
 * `from` (or ERROR when a fault says so). Sessions are method-backed (fd null). A workload dirties
 * pages at `dirtyRate` bytes/s in the running states (P2P states count as running) and never in STOP
 * states. Faults are injected through options, through the same interfaces production uses.
 */
import { EventEmitter } from 'node:events';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { arcEffect, isBaseArc } from '../fsm/path.js';
import { DeviceState, VALID_FLAG_WORDS, isRunningState, stateName } from '../fsm/states.js';
import type { DeviceIdentity, MigrationDriver, Session } from '../fsm/types.js';
import { MethodResumingSession, MethodSavingSession } from './method-session.js';
import { END_BYTES, META_BYTES, pagesBytes } from './sim-format.js';
import { SimLoader } from './sim-loader.js';
import { SimMemory } from './sim-memory.js';
import { PAGE_SIZE, SIM_PROFILES, type SimProfile } from './sim-pages.js';
import { SimSaver } from './sim-saver.js';

/** Make one arc fail. */
export interface SimArcFault {
  from: DeviceState;
  to: DeviceState;
  /** errno name of the failure (default EIO). */
  code?: string;
  /** The device lands in ERROR instead of staying in `from`. */
  toError?: boolean;
  /** How many times the arc fails (default: every time). */
  times?: number;
}

export interface SimFaults {
  /** Arcs that fail. */
  arc?: SimArcFault | SimArcFault[];
  /** Saving: reads return data up to `afterBytes`, then every read fails with `code` (default EIO). */
  readError?: { afterBytes: number; code?: string };
  /** Resuming: writes accept up to `afterBytes`, then every write fails with `code` (default EIO). */
  writeError?: { afterBytes: number; code?: string };
  /** Saving: the stream byte at `offset` is XORed with `mask` (default 0xff). */
  flipByte?: { offset: number; mask?: number };
  /** Saving: once `resetAfterBytes` bytes were read the device resets itself asynchronously:
   *  state RUNNING, sessions disabled (ENODEV), 'reset' emitted. */
  resetAfterBytes?: number;
  /**
   * Saving: once `afterBytes` (default 0) bytes were read, the next read waits `ms` (Infinity, or null
   * as JSON carries it from a device host: until the session is disabled).
   */
  stallRead?: { afterBytes?: number; ms: number | null };
}

export interface SimDeviceOptions {
  /** State size in bytes: a positive multiple of 4096, at most 1 TiB. */
  size: number;
  /** Migration capability word: 0x1, 0x3, 0x5 or 0x7 (default 0x7). */
  flags?: number;
  /** Content seed (u32, default 1). */
  seed?: number;
  /** Content profile (default 'mixed'). */
  profile?: SimProfile;
  /** Bytes/s the running device dirties (default 0). */
  dirtyRate?: number;
  /** Bytes/s the saving side can produce (default 0 = unlimited): slow firmware. */
  generationRate?: number;
  /** PRE_COPY temporary end of stream: 'enomsg' (spec, mlx5, virtio) or 'zero' (mtty, hisi, qat). */
  precopyEmpty?: 'enomsg' | 'zero';
  faults?: SimFaults;
}

/**
 * How often the workload runs when nothing looks at the device. Whatever looks at it (a read, a
 * PRECOPY_INFO or MIG_DATA_SIZE query, a state change, the digest) first brings the workload up to
 * that moment (_catchUp): the dirtying it sees is exactly dirtyRate x elapsed time, as a device
 * dirtying continuously would show, not whatever the last timer tick left. (With the timer alone,
 * queries every 10 ms against a 10 ms tick saw 0, 1 or 2 ticks' dirtying: λ samples 0.7-1.6 x
 * the true rate in process, worse on a busy event loop.)
 */
const WORKLOAD_TICK_MS = 10;
/** Largest state: 1 TiB. */
export const SIM_MAX_SIZE = 1024 ** 4;
const MAX_SIZE = SIM_MAX_SIZE;
const FORMAT_VERSION = '1.0';

export class SimDevice extends EventEmitter implements MigrationDriver {
  readonly flags: number;
  readonly size: number;
  readonly seed: number;
  readonly profile: SimProfile;
  readonly pageCount: number;
  private readonly _mem: SimMemory;
  private readonly _opts: Required<Omit<SimDeviceOptions, 'faults'>> & { faults: SimFaults };
  private _state: DeviceState;
  private _saver: SimSaver | null;
  private _saving: MethodSavingSession | null;
  private _loader: SimLoader | null;
  private _resuming: MethodResumingSession | null;
  private readonly _arcFailures: Map<SimArcFault, number>;
  private _timer: NodeJS.Timeout | null;
  private _lastTick: number;
  private _pendingDirty: number;
  private _rng: number;
  private _closed: boolean;

  constructor(opts: SimDeviceOptions) {
    super();
    const size = opts.size;
    // 1 TiB bounds the per-page bitmaps (dirty on the source, received on the destination) at 32 MiB.
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0 || size > MAX_SIZE) {
      throw migError(ErrorCodes.USAGE, `size must be a positive multiple of ${PAGE_SIZE} up to 1 TiB (got ${size})`);
    }
    const flags = opts.flags ?? 0x7;
    if (!VALID_FLAG_WORDS.includes(flags)) throw migError(ErrorCodes.USAGE, `invalid migration flags 0x${flags.toString(16)}`);
    const profile = opts.profile ?? 'mixed';
    if (!SIM_PROFILES.includes(profile)) throw migError(ErrorCodes.USAGE, `unknown profile ${String(profile)}`);
    const seed = opts.seed ?? 1;
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw migError(ErrorCodes.USAGE, `seed must be a u32 (got ${seed})`);
    for (const k of ['dirtyRate', 'generationRate'] as const) {
      const v = opts[k] ?? 0;
      if (!(v >= 0) || !Number.isFinite(v)) throw migError(ErrorCodes.USAGE, `${k} must be a finite number >= 0`);
    }
    const precopyEmpty = opts.precopyEmpty ?? 'enomsg';
    if (precopyEmpty !== 'enomsg' && precopyEmpty !== 'zero') throw migError(ErrorCodes.USAGE, `precopyEmpty must be 'enomsg' or 'zero'`);

    this.flags = flags;
    this.size = size;
    this.seed = seed;
    this.profile = profile;
    this.pageCount = size / PAGE_SIZE;
    this._mem = new SimMemory(this.pageCount, seed, profile);
    this._opts = {
      size,
      flags,
      seed,
      profile,
      dirtyRate: opts.dirtyRate ?? 0,
      generationRate: opts.generationRate ?? 0,
      precopyEmpty,
      faults: opts.faults ?? {},
    };
    this._state = DeviceState.RUNNING; // open_device starts at RUNNING
    this._saver = null;
    this._saving = null;
    this._loader = null;
    this._resuming = null;
    this._arcFailures = new Map();
    this._timer = null;
    this._lastTick = performance.now();
    this._pendingDirty = 0;
    this._rng = (seed ^ 0x9e3779b9) >>> 0 || 1;
    this._closed = false;
    if (this._opts.dirtyRate > 0) {
      this._timer = setInterval(() => this._catchUp(), WORKLOAD_TICK_MS);
      this._timer.unref(); // the workload never keeps a process alive
    }
  }

  /** The current state, synchronously (tests, the device host). */
  get state(): DeviceState {
    return this._state;
  }

  /** The open session, if any. */
  get session(): Session | null {
    return this._saving ?? this._resuming;
  }

  identity(): DeviceIdentity {
    return {
      kind: 'sim',
      model: `size=${this.size},profile=${this.profile},seed=${this.seed}`,
      version: FORMAT_VERSION,
      flags: this.flags,
      stateSize: this.fullImageBytes(),
    };
  }

  /** Bytes of a whole stream from scratch (HEADER, STOP_COPY_SIZE, every page once, END). */
  fullImageBytes(): number {
    return META_BYTES + pagesBytes(this.pageCount, PAGE_SIZE) + END_BYTES;
  }

  async getState(): Promise<DeviceState> {
    return this._state;
  }

  /** Hex digest of the current state, O(1). */
  digest(): string {
    this._catchUp();
    return this._mem.digest();
  }

  /** Pages currently at a non-zero version (the memory cost of the state). */
  get dirtiedPages(): number {
    return this._mem.dirtiedPages;
  }

  async step(from: DeviceState, to: DeviceState): Promise<Session | null> {
    if (this._closed) throw migError('ENODEV', 'device is closed');
    if (from !== this._state) {
      throw migError('EINVAL', `device is in ${stateName(this._state)}, not ${stateName(from)}`, { arc: { from, to }, state: this._state });
    }
    if (!isBaseArc(from, to, this.flags)) {
      throw migError('EINVAL', `${stateName(from)} -> ${stateName(to)} is not a base arc of flags 0x${this.flags.toString(16)}`, {
        arc: { from, to },
        state: this._state,
      });
    }
    this._injectArcFault(from, to);
    // The workload ran until this moment: a device leaving RUNNING dirtied up to its stop.
    this._catchUp();

    switch (arcEffect(from, to)) {
      case 'open-saving': {
        const stopCopy = to === DeviceState.STOP_COPY;
        const saver = new SimSaver(this._mem, stopCopy, {
          precopyEmpty: this._opts.precopyEmpty,
          generationRate: this._opts.generationRate,
          faults: this._opts.faults,
          state: () => this._state,
          asyncReset: () => this._asyncReset(),
          observe: () => this._catchUp(),
        });
        const session = new MethodSavingSession(saver);
        this._saver = saver;
        this._saving = session;
        if (!stopCopy) this._mem.setListener((i) => saver.onDirty(i));
        this._state = to;
        return session;
      }
      case 'continue-saving':
        if (to === DeviceState.STOP_COPY) {
          this._mem.setListener(null);
          this._saver?.enterStopCopy();
        }
        this._state = to;
        return null;
      case 'close-saving':
        this._closeSaving();
        this._state = to;
        return null;
      case 'open-resuming': {
        const loader = new SimLoader(this._mem, { writeError: this._opts.faults.writeError });
        const session = new MethodResumingSession(loader);
        this._loader = loader;
        this._resuming = session;
        this._state = to;
        return session;
      }
      case 'close-resuming': {
        const loader = this._loader;
        // The kernel's final validity check: an incomplete or inconsistent image fails the arc and
        // the device stays in RESUMING (only a reset gets out).
        if (!loader || !loader.complete) {
          throw migError('EINVAL', `incomplete device image: ${loader ? loader.incompleteReason() : 'no resuming session'}`, {
            arc: { from, to },
            state: this._state,
          });
        }
        loader.commit();
        this._closeResuming();
        this._state = to;
        return null;
      }
      default:
        this._state = to;
        return null;
    }
  }

  private _injectArcFault(from: DeviceState, to: DeviceState): void {
    const spec = this._opts.faults.arc;
    if (!spec) return;
    for (const f of Array.isArray(spec) ? spec : [spec]) {
      if (f.from !== from || f.to !== to) continue;
      const used = this._arcFailures.get(f) ?? 0;
      if (f.times !== undefined && used >= f.times) continue;
      this._arcFailures.set(f, used + 1);
      if (f.toError) {
        // A driver that cannot restore any valid state: sessions end, only reset recovers.
        this._closeSaving();
        this._closeResuming();
        this._state = DeviceState.ERROR;
      }
      throw migError(f.code ?? 'EIO', `injected failure of ${stateName(from)} -> ${stateName(to)}`, {
        arc: { from, to },
        state: this._state,
      });
    }
  }

  private _closeSaving(): void {
    this._mem.setListener(null);
    this._saving?.disable();
    this._saving = null;
    this._saver = null;
  }

  private _closeResuming(): void {
    this._resuming?.disable();
    this._resuming = null;
    this._loader = null;
  }

  /** VFIO_DEVICE_RESET: RUNNING, every session disabled. */
  async reset(): Promise<void> {
    this._closeSaving();
    this._closeResuming();
    this._state = DeviceState.RUNNING;
  }

  private _asyncReset(): void {
    if (this._closed) return;
    this._closeSaving();
    this._closeResuming();
    this._state = DeviceState.RUNNING;
    this.emit('reset');
  }

  /** MIG_DATA_SIZE: exactly what STOP_COPY would still produce from here. */
  async stopCopySize(): Promise<number> {
    this._catchUp();
    if (this._saver) return this._saver.remainingBytes();
    return this.fullImageBytes();
  }

  /**
   * Dirty `n` pages chosen by the device's deterministic PRNG (tests). Only a running device
   * changes its memory: EINVAL in STOP states.
   */
  dirtyPages(n: number): void {
    if (!isRunningState(this._state)) throw migError('EINVAL', `a device in ${stateName(this._state)} does not change its memory`);
    for (let i = 0; i < n; i++) this._mem.touch(this._randomPage());
  }

  /** Dirty the given pages (tests that need exact placement). Same state rule as dirtyPages. */
  touchPages(indices: Iterable<number>): void {
    if (!isRunningState(this._state)) throw migError('EINVAL', `a device in ${stateName(this._state)} does not change its memory`);
    for (const i of indices) {
      if (!Number.isInteger(i) || i < 0 || i >= this.pageCount) throw migError('EINVAL', `page ${i} out of range`);
      this._mem.touch(i);
    }
  }

  /**
   * VFIO_PRECOPY_INFO_REINIT: the device has new initial data (e.g. reconfigured mid-migration): the
   * whole image is streamed again and initialBytes restarts. Only meaningful in PRE_COPY states.
   */
  raiseReinit(): void {
    if (!this._saver || (this._state !== DeviceState.PRE_COPY && this._state !== DeviceState.PRE_COPY_P2P)) {
      throw migError('EINVAL', 'REINIT needs an open PRE_COPY session');
    }
    this._saver.raiseReinit();
  }

  /** Stop the workload and end sessions, like the last close of the device. Idempotent. */
  close(): void {
    if (this._closed) return;
    this._closed = true;
    if (this._timer) clearInterval(this._timer);
    this._timer = null;
    this._closeSaving();
    this._closeResuming();
  }

  private _randomPage(): number {
    let s = this._rng;
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    this._rng = s;
    return Math.floor((s / 0x100000000) * this.pageCount);
  }

  /** Run the workload up to now (at most a second of it after a long stall of the event loop). */
  private _catchUp(): void {
    if (this._opts.dirtyRate === 0 || this._closed) return;
    const now = performance.now();
    const dt = Math.min(1000, now - this._lastTick);
    this._lastTick = now;
    if (!isRunningState(this._state)) return;
    this._pendingDirty += (this._opts.dirtyRate * dt) / 1000 / PAGE_SIZE;
    const n = Math.floor(this._pendingDirty);
    if (n <= 0) return;
    this._pendingDirty -= n;
    for (let i = 0; i < n; i++) this._mem.touch(this._randomPage());
  }
}
