/**
 * The control protocol between source and destination: message shapes, their validation, and the
 * framing of the return path (destination -> source).
 *
 * Forward control (source -> destination) rides in the data stream as control records of the wire
 * format, so it stays ordered with the device data it refers to ("initial data sent" must arrive
 * after that data). The return path is a separate byte direction of the same transport carrying
 * length-prefixed JSON frames: it is small, rare and never ordered against device data.
 */
import { ErrorCodes, migError } from '../fsm/errors.js';
import type { DeviceIdentity } from '../fsm/types.js';

/** Version of this control protocol; the destination refuses a different major. */
export const CONTROL_PROTOCOL_VERSION = 1;

/** A return-path frame larger than this is a protocol error (messages are a few hundred bytes). */
export const MAX_CONTROL_FRAME = 256 * 1024;

/** Features a side offers; the handshake keeps the intersection. */
export interface ControlFeatures {
  /** The destination sends switchover-ack once it loaded a device's initial PRE_COPY data. */
  switchoverAck: boolean;
  /** Source device digests are sent at the end and compared by the destination. */
  digest: boolean;
  /** The destination answers 'ping' with 'pong' (the source times the return path before PRE_COPY). */
  ping?: boolean;
  /**
   * Source: it wants 'loaded' reports. Destination: it sends them, every LOADED_REPORT_MS of
   * PRE_COPY while bytes arrive: how much its devices took, so the source sees the backlog in the
   * network and at the destination, which a switchover also waits for.
   */
  loaded?: boolean;
  /**
   * The handover. Source: it sends 'release' when 'validated' arrives (from then on it never runs
   * the state again). Destination: it waits for 'release' before its devices leave STOP. Without
   * it, a connection cut after 'validated' left the destination running and the source, which never
   * saw 'validated', rolled back: both ran the state. A checkpoint's hello never offers it (no
   * return path, nobody to release).
   */
  release?: boolean;
}

/** What a source offers in its hello: migrate()'s, and a pre-flight check's (which asks as migrate() would). */
export const SOURCE_FEATURES: Readonly<ControlFeatures> = { switchoverAck: true, digest: true, loaded: true, release: true };

/** Period of the destination's 'loaded' reports in PRE_COPY. */
export const LOADED_REPORT_MS = 100;

export type MigrationPhase =
  | 'connect'
  | 'handshake'
  | 'setup'
  | 'precopy'
  | 'switchover'
  | 'stop-copy'
  | 'validate'
  | 'resume'
  | 'complete';

/** Source -> destination (as control records in the data stream). */
export type ForwardMessage =
  | {
      type: 'hello';
      version: number;
      features: ControlFeatures;
      devices: DeviceIdentity[];
      precopy: boolean[];
      /** Connections carrying device data (this one included); more than 1 opens channels. */
      channels?: number;
      /** Identifies this migration's extra channel connections (their stream header's sender). */
      migration?: string;
      /**
       * A pre-flight check (checkDestination()): answer 'compatible' or 'refuse' by the handshake's
       * rules, move no device, and close this connection.
       */
      check?: boolean;
    }
  /** Every device's initial PRE_COPY data of initial-data `epoch` precedes this message in the stream. */
  | { type: 'initial-sent'; epoch: number; records?: number[] }
  /** `device` reported REINIT: new initial data follows (epoch `epoch`); a new switchover-ack is needed. */
  | { type: 'reinit'; device: number; epoch: number }
  /** The source began the switchover (devices leaving RUNNING). */
  | { type: 'switchover' }
  /** The source device's state digest (taken in STOP_COPY, after its last byte was read). */
  | { type: 'digest'; device: number; digest: string }
  /** All device data was sent (`records`: DATA records per device, over all channels): drain, validate, acknowledge. */
  | { type: 'commit'; records?: number[] }
  /**
   * The source read 'validated' and gave the state up: it will not run it again (its devices go
   * STOP_COPY -> STOP). The destination resumes only after this (when both offer `release`).
   */
  | { type: 'release' }
  /** The source gives up; the destination resets its devices. */
  | { type: 'abort'; code: string; message: string; phase: MigrationPhase }
  /** Answer with 'pong' at once (only to a destination whose 'ready' lists the ping feature). */
  | { type: 'ping'; id: number };

/** Destination -> source (return path frames). */
export type ReturnMessage =
  /**
   * Compatible devices, all in RESUMING: the source may start. `setupMs`: how long entering
   * RESUMING took, the destination's arcs the source has no other measure of before the switchover.
   */
  | { type: 'ready'; version: number; features: ControlFeatures; setupMs?: number }
  /** Incompatible or unable: no source device has left RUNNING. */
  | { type: 'refuse'; code: string; message: string; device?: number }
  /** Answer to a pre-flight check (hello `check`): the destination would take these devices. */
  | { type: 'compatible'; version: number; features: ControlFeatures }
  /** The initial data of `epoch` is loaded into every device (QEMU's switchover-ack). */
  | { type: 'switchover-ack'; epoch: number; loadedBytes: number }
  /** Every device passed RESUMING -> STOP (and its digest matched): the source may let go. */
  | { type: 'validated'; validateMs: number[]; verified: boolean; bytes: number[] }
  /** Destination devices are RUNNING; ms measured on the destination since it saw 'commit'. */
  | { type: 'running'; resumeMs: number; drainMs: number }
  /**
   * The destination failed: it has reset its devices, or, after 'validated' and before 'release',
   * keeps them stopped with the state (see MigError recovery 'held'). `returned`: sent after
   * 'validated' (a device reset, its caller's abort, a resume that failed), it has reset every
   * device, so nothing of the state runs there: the source, which still holds it, runs it again. A
   * source that does not know the field holds the state, as before it.
   */
  | { type: 'error'; code: string; message: string; phase: MigrationPhase; returned?: boolean }
  /** Answer to 'ping'. */
  | { type: 'pong'; id: number }
  /** Raw device bytes the destination's devices have taken so far (all channels). */
  | { type: 'loaded'; bytes: number };

const FORWARD_TYPES = new Set(['hello', 'initial-sent', 'reinit', 'switchover', 'digest', 'commit', 'release', 'abort', 'ping']);
const RETURN_TYPES = new Set(['ready', 'compatible', 'refuse', 'switchover-ack', 'validated', 'running', 'error', 'pong', 'loaded']);

function protocolError(message: string, detail?: Record<string, unknown>) {
  return migError(ErrorCodes.PROTOCOL, message, { detail });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkDevice(m: Record<string, unknown>, deviceCount: number | undefined): void {
  const d = m.device;
  if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || (deviceCount !== undefined && d >= deviceCount)) {
    throw protocolError(`control message '${String(m.type)}' names device ${String(d)}, which the device table does not hold`);
  }
}

/** Validate a parsed forward message; throws VFIO_MIG_ERR_PROTOCOL. */
export function parseForwardMessage(value: unknown, deviceCount?: number): ForwardMessage {
  if (!isObject(value) || typeof value.type !== 'string' || !FORWARD_TYPES.has(value.type)) {
    throw protocolError(`unknown control message ${JSON.stringify(isObject(value) ? value.type : value)}`);
  }
  switch (value.type) {
    case 'hello':
      if (typeof value.version !== 'number' || !isObject(value.features) || !Array.isArray(value.devices) || !Array.isArray(value.precopy)) {
        throw protocolError('malformed hello');
      }
      if (value.check !== undefined && typeof value.check !== 'boolean') throw protocolError('malformed hello');
      break;
    case 'initial-sent':
      if (typeof value.epoch !== 'number') throw protocolError('malformed initial-sent');
      break;
    case 'reinit':
      checkDevice(value, deviceCount);
      if (typeof value.epoch !== 'number') throw protocolError('malformed reinit');
      break;
    case 'digest':
      checkDevice(value, deviceCount);
      if (typeof value.digest !== 'string') throw protocolError('malformed digest message');
      break;
    case 'abort':
      if (typeof value.code !== 'string' || typeof value.message !== 'string') throw protocolError('malformed abort');
      break;
    case 'ping':
      if (typeof value.id !== 'number') throw protocolError('malformed ping');
      break;
    default:
      break;
  }
  return value as unknown as ForwardMessage;
}

/** Validate a parsed return message; throws VFIO_MIG_ERR_PROTOCOL. */
export function parseReturnMessage(value: unknown): ReturnMessage {
  if (!isObject(value) || typeof value.type !== 'string' || !RETURN_TYPES.has(value.type)) {
    throw protocolError(`unknown return-path message ${JSON.stringify(isObject(value) ? value.type : value)}`);
  }
  switch (value.type) {
    case 'compatible':
      if (typeof value.version !== 'number' || !isObject(value.features)) throw protocolError('malformed compatible');
      break;
    case 'ready':
      if (typeof value.version !== 'number' || !isObject(value.features)) throw protocolError('malformed ready');
      if (value.setupMs !== undefined && typeof value.setupMs !== 'number') throw protocolError('malformed ready');
      break;
    case 'refuse':
    case 'error':
      if (typeof value.code !== 'string' || typeof value.message !== 'string') throw protocolError(`malformed ${value.type}`);
      if (value.returned !== undefined && typeof value.returned !== 'boolean') throw protocolError('malformed error');
      break;
    case 'switchover-ack':
      if (typeof value.epoch !== 'number') throw protocolError('malformed switchover-ack');
      break;
    case 'validated':
      if (!Array.isArray(value.validateMs) || typeof value.verified !== 'boolean') throw protocolError('malformed validated');
      break;
    case 'running':
      if (typeof value.resumeMs !== 'number') throw protocolError('malformed running');
      break;
    case 'pong':
      if (typeof value.id !== 'number') throw protocolError('malformed pong');
      break;
    case 'loaded':
      if (typeof value.bytes !== 'number' || !(value.bytes >= 0)) throw protocolError('malformed loaded');
      break;
    default:
      break;
  }
  return value as unknown as ReturnMessage;
}

/** One return-path frame: u32 little-endian length, then that many bytes of UTF-8 JSON. */
export function encodeFrame(msg: ReturnMessage | ForwardMessage): Buffer {
  const body = Buffer.from(JSON.stringify(msg), 'utf8');
  if (body.length > MAX_CONTROL_FRAME) {
    throw migError(ErrorCodes.LIMIT, `control frame of ${body.length} bytes exceeds ${MAX_CONTROL_FRAME}`);
  }
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32LE(body.length, 0);
  return Buffer.concat([head, body]);
}

/**
 * Incremental parser of return-path frames. Keeps the unparsed tail as a list of chunks plus a byte
 * count, bounded by MAX_CONTROL_FRAME + 4: a peer cannot make it buffer more.
 */
export class FrameParser {
  #chunks: Buffer[];
  #bytes: number;

  constructor() {
    this.#chunks = [];
    this.#bytes = 0;
  }

  /** Feed bytes; returns the complete messages they finish (JSON values, not yet validated). */
  push(chunk: Buffer): unknown[] {
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.#bytes < 4) break;
      const head = this.#peek(4);
      const len = head.readUInt32LE(0);
      if (len > MAX_CONTROL_FRAME) {
        throw migError(ErrorCodes.CORRUPT, `control frame length ${len} exceeds ${MAX_CONTROL_FRAME}`);
      }
      if (this.#bytes < 4 + len) break;
      const frame = this.#take(4 + len);
      let value: unknown;
      try {
        value = JSON.parse(frame.subarray(4).toString('utf8'));
      } catch (err) {
        throw migError(ErrorCodes.CORRUPT, 'control frame is not valid JSON', { cause: err });
      }
      out.push(value);
    }
    return out;
  }

  /** Bytes of an incomplete frame still held. */
  get pending(): number {
    return this.#bytes;
  }

  #peek(n: number): Buffer {
    // Fast path: the header sits in the first chunk (the usual case); no copy.
    if (this.#chunks[0].length >= n) return this.#chunks[0].subarray(0, n);
    return Buffer.concat(this.#chunks).subarray(0, n);
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0];
    if (first.length >= n) {
      this.#chunks[0] = first.subarray(n);
      if (this.#chunks[0].length === 0) this.#chunks.shift();
      this.#bytes -= n;
      return first.subarray(0, n);
    }
    // Slow path: the frame spans chunks; copy it out once.
    const all = Buffer.concat(this.#chunks);
    this.#chunks = all.length > n ? [all.subarray(n)] : [];
    this.#bytes -= n;
    return all.subarray(0, n);
  }
}

/**
 * Devices compatible for migration: same kind, model and driver major version. Capability flags may
 * differ (the stream format does not depend on whether the source used PRE_COPY or P2P).
 */
export function compatibilityProblem(src: DeviceIdentity, dst: DeviceIdentity): string | null {
  if (src.kind !== dst.kind) return `device kind '${src.kind}' cannot load into '${dst.kind}'`;
  if (src.model !== dst.model) return `device model '${src.model}' differs from the destination's '${dst.model}'`;
  const major = (v: string) => v.split('.')[0];
  if (major(src.version) !== major(dst.version)) {
    return `stream format version ${src.version} is not loadable by a ${dst.version} driver`;
  }
  return null;
}
