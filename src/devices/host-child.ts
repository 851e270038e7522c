/**
 * Device host, child side: runs one device (a MigrationDriver) in this process, serves its sessions
 * as FIFOs (or another provider's paths) and answers the parent's control requests over the IPC
 * channel. Started by spawnDeviceHost() in host.ts; never imported by the parent.
 */
import { pathToFileURL } from 'node:url';
import { isAbsolute } from 'node:path';
import { rmSync } from 'node:fs';
import { DeviceState } from '../fsm/states.js';
import { ErrorCodes, migError } from '../fsm/errors.js';
import type { MigError } from '../fsm/errors.js';
import type { MigrationDriver, Session } from '../fsm/types.js';
import { FifoProvider } from './host-fifo.js';
import { FuseProvider } from './host-fuse.js';
import type { ExportedSession, FdProvider, FdProviderOptions, SessionOutcome } from './host-fifo.js';
import { toWireError } from './host-protocol.js';
import type { ChildMessage, HostDeviceSpec, InitArgs, InitResult, OpMap, ParentMessage, SessionRef } from './host-protocol.js';

type DeviceFactory = (options: Record<string, unknown>) => MigrationDriver | Promise<MigrationDriver>;

/** Fd providers by kind; a new kind registers here with one line. */
const PROVIDERS: Record<string, (opts: FdProviderOptions) => FdProvider> = {
  fifo: (opts) => new FifoProvider(opts),
  fuse: (opts) => new FuseProvider(opts),
};

/** Built-in devices, loaded on demand so a host pays only for the one it runs. */
const DEVICES: Record<string, () => Promise<DeviceFactory>> = {
  sim: async () => {
    const { SimDevice } = await import('./sim-device.js');
    return (o) => new SimDevice(o as unknown as ConstructorParameters<typeof SimDevice>[0]);
  },
  mtty: async () => {
    const { MttyDevice } = await import('./mtty-device.js');
    return (o) => new MttyDevice(o as ConstructorParameters<typeof MttyDevice>[0]);
  },
};

/** A parent that never acks (crashed, or stuck in a busy loop) must not hold a FIFO open forever. */
const ACK_TIMEOUT_MS = 5_000;

interface Hosted {
  session: Session;
  exported: ExportedSession;
  /** How the stream ended, as told to the parent. */
  outcome: 'open' | 'eos' | 'disabled' | 'error';
  /** Resolves once the parent acked the last down notice (or at once when none is pending). */
  acked: Promise<void>;
  /** A device write error on a resuming session: RESUMING -> STOP fails with it. */
  error: MigError | null;
}

async function loadFactory(spec: HostDeviceSpec): Promise<DeviceFactory> {
  if (typeof spec === 'string') {
    const load = DEVICES[spec];
    if (!load) throw migError(ErrorCodes.USAGE, `unknown device kind "${spec}"`);
    return load();
  }
  const url = isAbsolute(spec.module) ? pathToFileURL(spec.module).href : spec.module;
  const mod = (await import(url)) as Record<string, unknown>;
  const f = mod[spec.export ?? 'createDevice'];
  if (typeof f !== 'function') {
    throw migError(ErrorCodes.USAGE, `${spec.module} has no factory export "${spec.export ?? 'createDevice'}"`);
  }
  return f as DeviceFactory;
}

class HostChild {
  #device: MigrationDriver | null = null;
  #provider: FdProvider | null = null;
  #state: DeviceState = DeviceState.RUNNING;
  #sessions = new Map<number, Hosted>();
  #acks = new Map<number, (() => void)[]>();
  /** True while an explicit reset() runs: the device's own 'reset' event is then not news to the parent. */
  #resetting = false;
  #shuttingDown = false;
  #dir: string | null = null;

  constructor() {
    process.on('message', (m) => this.#onMessage(m as ParentMessage));
    // The parent went away: release everything and leave. A parent that died without close()
    // cannot remove the host's directory, so the child does.
    process.on('disconnect', () =>
      void this.#shutdown().finally(() => {
        if (this.#dir) rmSync(this.#dir, { recursive: true, force: true });
        process.exit(0);
      }),
    );
  }

  #send(m: ChildMessage): void {
    if (process.connected) process.send?.(m);
  }

  #onMessage(m: ParentMessage): void {
    switch (m.t) {
      case 'req':
        this.#handle(m.op, m.args).then(
          (value) => this.#send({ t: 'res', id: m.id, ok: true, value: value ?? null }),
          (err) => this.#send({ t: 'res', id: m.id, ok: false, error: toWireError(err) }),
        );
        break;
      case 'opened':
        this.#sessions.get(m.sid)?.exported.start();
        break;
      case 'disable': {
        const h = this.#sessions.get(m.sid);
        if (h) {
          h.session.disable();
          h.outcome = 'disabled';
          h.exported.close();
        }
        break;
      }
      case 'close': {
        const h = this.#sessions.get(m.sid);
        if (h) {
          h.exported.close();
          h.session.close();
          this.#sessions.delete(m.sid);
        }
        break;
      }
      case 'ack': {
        const queue = this.#acks.get(m.sid);
        queue?.shift()?.();
        if (queue?.length === 0) this.#acks.delete(m.sid);
        break;
      }
    }
  }

  async #handle(op: string, args: unknown): Promise<unknown> {
    if (op === 'init') return this.#init(args as InitArgs);
    const dev = this.#device;
    if (!dev) throw migError(ErrorCodes.PROTOCOL, `device host: "${op}" before init`);
    switch (op) {
      case 'getState':
        return dev.getState();
      case 'step': {
        const { from, to } = args as OpMap['step']['args'];
        return this.#step(dev, from, to);
      }
      case 'reset':
        this.#resetting = true;
        try {
          await dev.reset();
        } finally {
          this.#resetting = false;
        }
        this.#state = DeviceState.RUNNING;
        await this.#reconcile();
        return null;
      case 'stopCopySize':
        return dev.stopCopySize();
      case 'precopyInfo': {
        const { sid } = args as OpMap['precopyInfo']['args'];
        const h = this.#sessions.get(sid);
        if (!h || h.session.direction !== 'saving') throw migError('EBADF', `no saving session ${sid}`);
        const info = await h.session.precopyInfo();
        // Bytes the provider took from the device but the parent cannot read yet are still "to
        // be read" for the parent. Bytes already in the pipe buffer are not counted: that is the
        // remaining error of this estimate, at most the pipe size (64 KiB by default).
        const p = h.exported.pending();
        return { initialBytes: info.initialBytes + p.initialBytes, dirtyBytes: info.dirtyBytes + p.dirtyBytes, reinit: info.reinit };
      }
      case 'call': {
        const { method, params } = args as OpMap['call']['args'];
        const fn = (dev as unknown as Record<string, unknown>)[method];
        if (typeof fn !== 'function' || method.startsWith('_') || method === 'constructor') {
          throw migError(ErrorCodes.USAGE, `device has no method "${method}"`);
        }
        return await (fn as (...a: unknown[]) => unknown).apply(dev, params);
      }
      case 'shutdown':
        await this.#shutdown();
        setImmediate(() => process.disconnect());
        return null;
      default:
        throw migError(ErrorCodes.PROTOCOL, `device host: unknown request "${op}"`);
    }
  }

  async #init(a: InitArgs): Promise<InitResult> {
    if (this.#device) throw migError(ErrorCodes.PROTOCOL, 'device host: init twice');
    const makeProvider = PROVIDERS[a.fdKind];
    if (!makeProvider) throw migError(ErrorCodes.USAGE, `unknown fd kind "${a.fdKind}"`);
    const factory = await loadFactory(a.device);
    const dev = await factory(a.options);
    this.#device = dev;
    this.#dir = a.dir;
    this.#provider = makeProvider({ dir: a.dir, chunkSize: a.chunkSize });
    this.#state = await dev.getState();
    dev.on?.('reset', () => void this.#onDeviceReset());
    return { identity: dev.identity(), flags: dev.flags, state: this.#state, pid: process.pid };
  }

  async #step(dev: MigrationDriver, from: DeviceState, to: DeviceState): Promise<SessionRef | null> {
    if (from === DeviceState.RESUMING) {
      // RESUMING -> STOP loads what was written: first move every byte the parent already wrote
      // (possibly still in the pipe buffer) into the device, and fail with the device's own write
      // error if one happened, leaving the device in RESUMING as a rejected image does.
      for (const h of this.#sessions.values()) {
        if (h.session.direction !== 'resuming' || h.outcome === 'disabled') continue;
        if (h.error) throw h.error;
        await h.exported.drain();
      }
    }
    let session: Session | null;
    try {
      session = await dev.step(from, to);
      this.#state = to;
    } catch (err) {
      // The device is in `from` or ERROR: read it back.
      this.#state = await dev.getState().catch(() => DeviceState.ERROR);
      await this.#reconcile();
      throw err;
    }
    for (const h of this.#sessions.values()) h.exported.wake();
    await this.#reconcile();
    if (!session) return null;
    try {
      return await this.#export(session);
    } catch (err) {
      // The arc happened but its data fd cannot be served: end the session as a failed open
      // would, and say so (the parent's core reads the state back after a failed arc).
      session.disable();
      session.close();
      throw migError(ErrorCodes.TRANSPORT, `device host: cannot serve session ${session.id}: ${(err as Error)?.message ?? String(err)}`, {
        cause: err,
        state: this.#state,
      });
    }
  }

  async #export(session: Session): Promise<SessionRef> {
    const provider = this.#provider;
    if (!provider) throw migError(ErrorCodes.PROTOCOL, 'device host: no provider');
    const hosted: Hosted = { session, exported: null as unknown as ExportedSession, outcome: 'open', acked: Promise.resolve(), error: null };
    const hooks = {
      deviceState: () => this.#state,
      settle: (outcome: SessionOutcome) => this.#settle(hosted, outcome),
    };
    hosted.exported =
      session.direction === 'saving'
        ? await provider.exportSaving(session, hooks)
        : await provider.exportResuming(session, hooks);
    this.#sessions.set(session.id, hosted);
    return { id: session.id, direction: session.direction, path: hosted.exported.path };
  }

  /** Tell the parent how a session's stream ended; resolves on its ack (bounded). */
  #settle(h: Hosted, outcome: SessionOutcome): Promise<void> {
    // One end per stream, except that a session whose stream already ended (eos or error) is
    // still disabled later by its closing arc or a reset: the parent must see that too (ENODEV).
    // A caller that brings no news waits for the ack of the notice already sent: whoever closes
    // the fd must do so only once the parent knows (the pump and a reset race to report ENODEV).
    if (h.outcome === 'disabled' || (h.outcome !== 'open' && outcome.kind !== 'disabled')) return h.acked;
    h.outcome = outcome.kind;
    const sid = h.session.id;
    if (outcome.kind === 'error') {
      h.error = outcome.error;
      this.#send({ t: 'down', sid, kind: 'error', error: toWireError(outcome.error) });
    } else {
      this.#send({ t: 'down', sid, kind: outcome.kind });
    }
    if (!process.connected) return (h.acked = Promise.resolve());
    h.acked = new Promise((resolve) => {
      // Acks come in the order of the notices: each one answers the oldest waiter of its session.
      // A timed-out waiter stays queued (resolved) so a late ack cannot answer a newer notice.
      const timer = setTimeout(resolve, ACK_TIMEOUT_MS);
      const queue = this.#acks.get(sid) ?? [];
      queue.push(() => {
        clearTimeout(timer);
        resolve();
      });
      this.#acks.set(sid, queue);
    });
    return h.acked;
  }

  /** Sessions the device disabled (closing arc, reset): tell the parent, then close their fds. */
  async #reconcile(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const h of this.#sessions.values()) {
      if (!h.session.disabled || h.outcome === 'disabled') continue;
      waits.push(this.#settle(h, { kind: 'disabled' }).then(() => h.exported.close()));
    }
    await Promise.all(waits);
  }

  async #onDeviceReset(): Promise<void> {
    if (this.#resetting) return;
    this.#state = DeviceState.RUNNING;
    const done = this.#reconcile();
    // The disabled notices are queued first, so the parent's sessions are already disabled when
    // it hears of the reset.
    this.#send({ t: 'event', name: 'reset' });
    await done;
  }

  async #shutdown(): Promise<void> {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    for (const h of this.#sessions.values()) {
      h.exported.close();
      h.session.close();
    }
    this.#sessions.clear();
    await this.#provider?.close();
    const dev = this.#device as (MigrationDriver & { close?: () => unknown }) | null;
    await dev?.close?.();
  }
}

new HostChild();
