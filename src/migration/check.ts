/**
 * checkDestination(): the pre-flight check. Would a destination take these devices? It answers
 * with the same rules as a migration's handshake (control protocol version, device count, each
 * device's kind, model and driver major version, channels), but no device on either side moves:
 * the source's stay RUNNING (they are only asked their identity), and the destination's are not
 * asked to enter RESUMING. A receive() behind a listener answers the check and goes on waiting
 * for the migration itself.
 *
 * Integrators ask for this before they commit to a migration: vGPU migrations fail late when the
 * two hosts' drivers or boards differ (consumers-qemu-libvfio-user.md, section 4, item 7).
 *
 * On the wire it is the start of a migration: the stream header (the device table) and a hello
 * control record with `check: true`; the destination answers 'compatible' or 'refuse' on the
 * return path and both sides close the connection.
 */
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, type MigError, migError } from '../fsm/errors.js';
import type { TransportOptions } from '../transport/types.js';
import { CONTROL_PROTOCOL_VERSION, FrameParser, SOURCE_FEATURES, parseReturnMessage, type ControlFeatures, type ForwardMessage, type ReturnMessage } from './control.js';
import { asPhaseError } from './latch.js';
import { checkP2PSet, hasPrecopy } from './p2p.js';
import { openForward, openTransport, type ForwardWriter } from './wire.js';

export interface CheckOptions {
  /** The devices a migration would move (only their identities are read). */
  devices: readonly MigrationCore[];
  /** A URL (any registered transport) or a connected Duplex (closed when the check ends). */
  transport: Duplex | string;
  transportOptions?: TransportOptions;
  /** Device names for the stream's device table, as migrate() takes them. */
  names?: readonly string[];
  /** The channels the migration will ask for (a destination without `accept` refuses more than one). */
  channels?: number;
  /** As migrate(): a multi-device set with a device lacking P2P is refused unless the risk is accepted. */
  acceptP2PRisk?: boolean;
  signal?: AbortSignal;
  /** Give up after this long, ms (VFIO_MIG_ERR_STALLED); connecting included. Default 15000. */
  timeoutMs?: number;
}

export interface CheckResult {
  /** Always true: an incompatible destination rejects the check's promise with its reason. */
  compatible: true;
  /** The control protocol version the destination speaks. */
  version: number;
  /** The destination's control features. */
  features: ControlFeatures;
  /** From the call until the answer, ms (connecting included). */
  ms: number;
}

const DEFAULT_TIMEOUT_MS = 15_000;
/** How long the abort to a destination that does not know checks may take to reach the kernel. */
const ABORT_FLUSH_MS = 500;
/** How long a closed check connection may take to flush before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;

/**
 * Ask the destination at `opts.transport` whether it would take `opts.devices`. Resolves when it
 * would; rejects with the destination's refusal (`VFIO_MIG_ERR_INCOMPATIBLE` with the device
 * index, `VFIO_MIG_ERR_UNSUPPORTED`), the source's own (`INCOMPATIBLE` for a P2P-less set,
 * `USAGE`), `VFIO_MIG_ERR_TRANSPORT` when the connection fails or closes unanswered,
 * `VFIO_MIG_ERR_STALLED` after `timeoutMs`, `VFIO_MIG_ERR_ABORTED` on the signal. Phase
 * 'handshake' (or 'connect' before the connection); `recovery` 'none'.
 */
export async function checkDestination(opts: CheckOptions): Promise<CheckResult> {
  try {
    return await check(opts);
  } catch (err) {
    // A check moves no device on either side: there is never anything to recover.
    const e = asPhaseError(err, 'connect');
    e.recovery = 'none';
    throw e;
  }
}

async function check(opts: CheckOptions): Promise<CheckResult> {
  const t0 = performance.now();
  if (opts.devices.length === 0) throw migError(ErrorCodes.USAGE, 'checkDestination: no devices');
  const channels = opts.channels ?? 1;
  if (!Number.isInteger(channels) || channels < 1 || channels > 64) throw migError(ErrorCodes.USAGE, `channels must be 1..64, got ${channels}`);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!(timeoutMs > 0)) throw migError(ErrorCodes.USAGE, `timeoutMs must be positive, got ${String(timeoutMs)}`);
  checkP2PSet(opts.devices, opts.acceptP2PRisk === true);
  const identities = opts.devices.map((c) => c.identity());

  let phase: 'connect' | 'handshake' = 'connect';
  let transport: Duplex | null = null;
  let settle: ((err: MigError | null, reply?: ReturnMessage) => void) | null = null;
  const stop = (err: MigError): void => settle?.(err);
  const timer = setTimeout(() => stop(migError(ErrorCodes.STALLED, `no answer to the pre-flight check within ${timeoutMs} ms`, { phase })), timeoutMs);
  const onAbort = (): void => stop(migError(ErrorCodes.ABORTED, `aborted: ${String(opts.signal?.reason ?? 'AbortSignal')}`, { phase }));
  const settled = new Promise<ReturnMessage>((resolve, reject) => {
    settle = (err, reply) => {
      settle = null;
      if (err) reject(err);
      else resolve(reply as ReturnMessage);
    };
  });
  settled.catch(() => {});
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const connecting = openTransport(opts.transport, { ...opts.transportOptions, signal: opts.signal ?? opts.transportOptions?.signal }) as Promise<Duplex>;
  let w: ForwardWriter | null = null;
  try {
    transport = await Promise.race([connecting, settled.then(() => never())]);
    phase = 'handshake';
    const t = transport;
    const parser = new FrameParser();
    const lost = (err?: unknown): void =>
      stop(migError(ErrorCodes.TRANSPORT, `the destination closed the connection before answering the pre-flight check${err instanceof Error ? `: ${err.message}` : ''}`, { phase, cause: err }));
    t.on('data', (chunk: Buffer) => {
      try {
        for (const v of parser.push(chunk)) {
          const msg = parseReturnMessage(v);
          if (msg.type === 'compatible' || msg.type === 'refuse' || msg.type === 'ready' || msg.type === 'error') settle?.(null, msg);
        }
      } catch (err) {
        stop(asPhaseError(err, phase));
      }
    });
    t.on('error', lost);
    t.on('end', () => lost());
    t.on('close', () => lost());

    // The forward path a migration uses (stream header with the device table, then records).
    w = openForward(t, { devices: identities.map((identity, i) => ({ name: opts.names?.[i] ?? `dev${i}`, identity })), compression: false, bandwidth: 0, sender: { check: true } }, (err) =>
      stop(asPhaseError(err, phase)),
    );
    const hello: ForwardMessage = {
      type: 'hello',
      version: CONTROL_PROTOCOL_VERSION,
      features: SOURCE_FEATURES,
      devices: identities,
      precopy: opts.devices.map((c) => hasPrecopy(c)),
      channels,
      check: true,
    };
    await w.control(hello);

    const reply = await settled;
    if (reply.type === 'compatible') return { compatible: true, version: reply.version, features: reply.features, ms: performance.now() - t0 };
    if (reply.type === 'refuse') throw migError(reply.code, `destination refused: ${reply.message}`, { phase, device: reply.device });
    if (reply.type === 'error') throw migError(reply.code, `destination failed in phase ${reply.phase}: ${reply.message}`, { phase });
    // 'ready': a destination that does not know checks prepared for a migration. Tell it to give
    // up, as a failing migration does, so that it resets its devices.
    await w.control({ type: 'abort', code: ErrorCodes.ABORTED, message: 'pre-flight check only', phase });
    await w.flushed(performance.now() + ABORT_FLUSH_MS);
    throw migError(ErrorCodes.UNSUPPORTED, 'the destination does not answer pre-flight checks: it prepared for a migration (its devices entered RESUMING) and was told to abort', { phase });
  } catch (err) {
    // Timed out or aborted while connecting: close the connection if it comes after all.
    if (transport === null) void connecting.then((t) => t.destroy(), () => {});
    throw asPhaseError(err, phase);
  } finally {
    settle = null;
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    w?.destroy();
    if (transport !== null) {
      // Our side ends; whatever the destination still sends is read and dropped until it closes.
      const t = transport;
      t.removeAllListeners('data');
      t.on('error', () => {});
      t.resume();
      if (!t.destroyed) {
        t.end();
        setTimeout(() => t.destroy(), CLOSE_GRACE_MS).unref();
      }
    }
  }
}

/** settled's resolution before a connection exists cannot happen (only its rejections can). */
function never(): never {
  throw migError(ErrorCodes.TRANSPORT, 'the pre-flight check was answered before it was asked');
}
