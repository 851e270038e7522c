/**
 * MttyDevice: the kernel's mtty sample driver (samples/vfio-mdev/mtty.c), its migration format and
 * behaviour byte for byte.
 *
 * Stream = one host-endian (little-endian here) struct:
 *   offset 0   u64 magic 0x7e9d09898c3e2c4e
 *   offset 8   u32 major version 1
 *   offset 12  u32 minor version 0
 *   offset 16  u32 nr_ports (1 or 2)
 *   offset 20  u32 flags 0
 *   offset 24  nr_ports x 36-byte struct serial_port:
 *     0  u8 uart_reg[8]      (TX/RX, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR)
 *     8  u8 fifo[16]         loop-back FIFO
 *     24 u8 head, 25 u8 tail, 26 u8 count
 *     27 u8 dlab, 28 u8 overrun, 29 pad
 *     30 u16 divisor
 *     32 u8 fcr, 33 u8 max_fifo_size, 34 u8 intr_trigger_level, 35 pad
 *
 * Behaviour (mtty): PRE_COPY streams only the 24-byte header, read returns 0 (never ENOMSG) at the
 * temporary end, precopy info reports the unread part of the header and dirty 0; STOP_COPY appends
 * the ports; MIG_DATA_SIZE is always 24 + 36 x ports. Resume: a write that would go past the full
 * size fails ENOMEM; when the bytes written first cross 24 the header is checked and a mismatch
 * fails that write with EFAULT, the bytes still counted (so, as in the kernel, a later RESUMING ->
 * STOP of a full-length stream loads the ports anyway); RESUMING -> STOP with fewer bytes than the
 * full size fails EINVAL and the device stays in RESUMING.
 *
 * The guest side is a 16550-like UART per port (barWrite/barRead, modelled on mtty's register
 * handling), so a migration is observable through digest().
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { arcEffect, isBaseArc } from '../fsm/path.js';
import { DeviceState, isRunningState, stateName } from '../fsm/states.js';
import type { DeviceIdentity, MigrationDriver, PrecopyInfo, Session } from '../fsm/types.js';
import { MethodResumingSession, MethodSavingSession } from './method-session.js';

export const MTTY_MAGIC = 0x7e9d09898c3e2c4en;
export const MTTY_MAJOR_VER = 1;
export const MTTY_MINOR_VER = 0;
export const MTTY_HEADER_SIZE = 24;
export const MTTY_PORT_SIZE = 36;
const MTTY_FLAGS = 0x7; // STOP_COPY | P2P | PRE_COPY
const MAX_FIFO_SIZE = 16;

/** Offsets inside struct serial_port. */
export const MttyPort = {
  UART_REG: 0,
  FIFO: 8,
  HEAD: 24,
  TAIL: 25,
  COUNT: 26,
  DLAB: 27,
  OVERRUN: 28,
  DIVISOR: 30,
  FCR: 32,
  MAX_FIFO_SIZE: 33,
  TRIGGER_LEVEL: 34,
} as const;

// UART register offsets and bits used by the loop-back model (include/uapi/linux/serial_reg.h).
const UART_TX = 0;
const UART_IER = 1;
const UART_FCR = 2;
const UART_IIR = 2;
const UART_LCR = 3;
const UART_MCR = 4;
const UART_LSR = 5;
const UART_MSR = 6;
const UART_SCR = 7;
const UART_LCR_DLAB = 0x80;
const UART_FCR_ENABLE_FIFO = 0x01;
const UART_FCR_CLEAR_RCVR = 0x02;
const UART_FCR_CLEAR_XMIT = 0x04;
const UART_IER_RDI = 0x01;
const UART_IER_THRI = 0x02;
const UART_IER_RLSI = 0x04;
const UART_MCR_AFE = 0x20;

/** Size of the whole mtty stream for `ports` ports (mtty_data_size). */
export function mttyDataSize(ports: number): number {
  return MTTY_HEADER_SIZE + MTTY_PORT_SIZE * ports;
}

/** Write mtty's 24-byte header for `ports` ports into buf[0..24). */
export function writeMttyHeader(buf: Buffer, ports: number): void {
  buf.writeBigUInt64LE(MTTY_MAGIC, 0);
  buf.writeUInt32LE(MTTY_MAJOR_VER, 8);
  buf.writeUInt32LE(MTTY_MINOR_VER, 12);
  buf.writeUInt32LE(ports, 16);
  buf.writeUInt32LE(0, 20);
}

export interface MttyDeviceOptions {
  /** Number of serial ports, as the mdev type "1" or "2". */
  ports?: 1 | 2;
}

/** One migration file (mtty_migration_file): a buffer, a fill level and the user's cursor. */
class MttyFile {
  readonly data: Buffer;
  filled: number;
  pos: number;
  disabled: boolean;
  constructor(size: number) {
    this.data = Buffer.alloc(size);
    this.filled = 0;
    this.pos = 0;
    this.disabled = false;
  }
  /** mtty_disable_file: disabled, emptied, cursor back to 0. */
  disable(): void {
    this.disabled = true;
    this.filled = 0;
    this.pos = 0;
  }
}

export class MttyDevice extends EventEmitter implements MigrationDriver {
  readonly flags = MTTY_FLAGS;
  readonly ports: number;
  private readonly _s: Buffer; // struct serial_port s[ports]
  private _state: DeviceState;
  private _saveFile: MttyFile | null;
  private _saving: MethodSavingSession | null;
  private _resumeFile: MttyFile | null;
  private _resuming: MethodResumingSession | null;

  constructor(opts: MttyDeviceOptions = {}) {
    super();
    const ports = opts.ports ?? 1;
    if (ports !== 1 && ports !== 2) throw migError(ErrorCodes.USAGE, `mtty has 1 or 2 ports (got ${String(ports)})`);
    this.ports = ports;
    this._s = Buffer.alloc(MTTY_PORT_SIZE * ports);
    for (let p = 0; p < ports; p++) this._s[p * MTTY_PORT_SIZE + MttyPort.MAX_FIFO_SIZE] = MAX_FIFO_SIZE; // mtty_init_dev
    this._state = DeviceState.RUNNING;
    this._saveFile = null;
    this._saving = null;
    this._resumeFile = null;
    this._resuming = null;
  }

  get state(): DeviceState {
    return this._state;
  }

  get session(): Session | null {
    return this._saving ?? this._resuming;
  }

  identity(): DeviceIdentity {
    return { kind: 'mtty', model: `ports=${this.ports}`, version: '1.0', flags: MTTY_FLAGS, stateSize: mttyDataSize(this.ports) };
  }

  async getState(): Promise<DeviceState> {
    return this._state;
  }

  /** mtty_get_data_size: constant. */
  async stopCopySize(): Promise<number> {
    return mttyDataSize(this.ports);
  }

  /** Hex SHA-256 of the ports' state (what a migration must carry). */
  digest(): string {
    return createHash('sha256').update(this._s).digest('hex');
  }

  /** A copy of port `p`'s 36-byte struct serial_port. */
  portState(p: number): Buffer {
    this._checkPort(p);
    return Buffer.from(this._s.subarray(p * MTTY_PORT_SIZE, (p + 1) * MTTY_PORT_SIZE));
  }

  async step(from: DeviceState, to: DeviceState): Promise<Session | null> {
    if (from !== this._state) {
      throw migError('EINVAL', `device is in ${stateName(this._state)}, not ${stateName(from)}`, { arc: { from, to }, state: this._state });
    }
    if (!isBaseArc(from, to, MTTY_FLAGS)) {
      throw migError('EINVAL', `${stateName(from)} -> ${stateName(to)} is not a base arc`, { arc: { from, to }, state: this._state });
    }
    const size = mttyDataSize(this.ports);
    switch (arcEffect(from, to)) {
      case 'open-saving': {
        // mtty_save_device_data: header at once; the ports only when the device stops.
        const file = new MttyFile(size);
        writeMttyHeader(file.data, this.ports);
        file.filled = MTTY_HEADER_SIZE;
        if (to === DeviceState.STOP_COPY) this._fillPorts(file);
        const session = new MethodSavingSession({
          read: (buf) => this._saveRead(file, buf),
          precopyInfo: () => this._precopyInfo(file),
        });
        this._saveFile = file;
        this._saving = session;
        this._state = to;
        return session;
      }
      case 'continue-saving':
        // PRE_COPY_P2P -> STOP_COPY appends the ports to the same file (no new fd).
        if (to === DeviceState.STOP_COPY && this._saveFile) this._fillPorts(this._saveFile);
        this._state = to;
        return null;
      case 'open-resuming': {
        const file = new MttyFile(size);
        const session = new MethodResumingSession({ write: (buf) => this._resumeWrite(file, buf) });
        this._resumeFile = file;
        this._resuming = session;
        this._state = to;
        return session;
      }
      case 'close-resuming': {
        // mtty_load_state: the header was checked by write; only the length is checked here.
        const file = this._resumeFile;
        if (!file || file.filled < size) {
          throw migError('EINVAL', `mtty expected ${size} bytes, got ${file ? file.filled : 0}`, { arc: { from, to }, state: this._state });
        }
        file.data.copy(this._s, 0, MTTY_HEADER_SIZE, size);
        this._disableFiles();
        this._state = to;
        return null;
      }
      case 'close-saving':
        this._disableFiles();
        this._state = to;
        return null;
      default:
        this._state = to; // no DMA, nothing to start or stop
        return null;
    }
  }

  /** VFIO_DEVICE_RESET: RUNNING and files disabled (the ports keep their registers). */
  async reset(): Promise<void> {
    this._state = DeviceState.RUNNING;
    this._disableFiles();
  }

  private _disableFiles(): void {
    this._saveFile?.disable();
    this._saving?.disable();
    this._saveFile = null;
    this._saving = null;
    this._resumeFile?.disable();
    this._resuming?.disable();
    this._resumeFile = null;
    this._resuming = null;
  }

  private _fillPorts(file: MttyFile): void {
    this._s.copy(file.data, MTTY_HEADER_SIZE);
    file.filled += this._s.length;
  }

  private _saveRead(file: MttyFile, buf: Buffer): number {
    if (file.disabled) throw migError('ENODEV', 'mtty saving file disabled');
    if (file.pos > file.filled) throw migError('EINVAL', 'cursor beyond data');
    const n = Math.min(file.filled - file.pos, buf.length);
    file.data.copy(buf, 0, file.pos, file.pos + n);
    file.pos += n;
    return n; // 0 at both the PRE_COPY temporary end and the STOP_COPY end: mtty never says ENOMSG
  }

  private _precopyInfo(file: MttyFile): PrecopyInfo {
    if (this._state !== DeviceState.PRE_COPY && this._state !== DeviceState.PRE_COPY_P2P) {
      throw migError('EINVAL', 'precopy info is only valid in PRE_COPY or PRE_COPY_P2P');
    }
    if (file.disabled) throw migError('ENODEV', 'mtty saving file disabled');
    if (file.pos > file.filled) throw migError('EINVAL', 'cursor beyond data');
    return { initialBytes: file.filled - file.pos, dirtyBytes: 0, reinit: false };
  }

  private _resumeWrite(file: MttyFile, buf: Buffer): number {
    const len = buf.length;
    if (file.pos + len > file.data.length) {
      throw migError('ENOMEM', `write of ${len} at ${file.pos} exceeds the ${file.data.length}-byte mtty state`);
    }
    if (file.disabled) throw migError('ENODEV', 'mtty resuming file disabled');
    buf.copy(file.data, file.pos);
    file.pos += len;
    const before = file.filled;
    file.filled += len;
    if (before < MTTY_HEADER_SIZE && before + len >= MTTY_HEADER_SIZE) {
      const d = file.data;
      const ok =
        d.readBigUInt64LE(0) === MTTY_MAGIC &&
        d.readUInt32LE(20) === 0 &&
        d.readUInt32LE(8) === MTTY_MAJOR_VER &&
        d.readUInt32LE(12) === MTTY_MINOR_VER &&
        d.readUInt32LE(16) === this.ports;
      // The bytes stay counted: mtty fails the write but has already advanced its cursor.
      if (!ok) throw migError('EFAULT', 'mtty header validation failed', { detail: { accepted: len } });
    }
    return len;
  }

  // ---- guest side: a loop-back 16550 per port, as mtty's BAR handlers implement it ----

  private _checkPort(p: number): void {
    if (!Number.isInteger(p) || p < 0 || p >= this.ports) throw migError('EINVAL', `no port ${p}`);
  }

  private _checkRunning(): void {
    if (!isRunningState(this._state)) throw migError('EINVAL', `a device in ${stateName(this._state)} is stopped`);
  }

  /** Guest write of `value` to UART register `offset` (0..7) of port `p`. */
  barWrite(p: number, offset: number, value: number): void {
    this._checkPort(p);
    this._checkRunning();
    const s = this._s;
    const b = p * MTTY_PORT_SIZE;
    const data = value & 0xff;
    const dlab = s[b + MttyPort.DLAB] !== 0;
    switch (offset) {
      case UART_TX:
        if (dlab) {
          s.writeUInt16LE(s.readUInt16LE(b + MttyPort.DIVISOR) | data, b + MttyPort.DIVISOR);
        } else if (s[b + MttyPort.COUNT] < s[b + MttyPort.MAX_FIFO_SIZE]) {
          const head = s[b + MttyPort.HEAD];
          s[b + MttyPort.FIFO + head] = data;
          s[b + MttyPort.COUNT]++;
          s[b + MttyPort.HEAD] = (head + 1) & (MAX_FIFO_SIZE - 1);
          s[b + MttyPort.OVERRUN] = 0;
        } else {
          s[b + MttyPort.OVERRUN] = 1;
        }
        break;
      case UART_IER:
        if (dlab) s.writeUInt16LE(s.readUInt16LE(b + MttyPort.DIVISOR) | (data << 8), b + MttyPort.DIVISOR);
        else s[b + UART_IER] = data;
        break;
      case UART_FCR:
        s[b + MttyPort.FCR] = data;
        if (data & (UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT)) {
          s[b + MttyPort.COUNT] = 0;
          s[b + MttyPort.HEAD] = 0;
          s[b + MttyPort.TAIL] = 0;
        }
        // mtty settles on trigger level 1 whatever the FCR trigger bits say.
        s[b + MttyPort.TRIGGER_LEVEL] = 1;
        s[b + MttyPort.MAX_FIFO_SIZE] = data & UART_FCR_ENABLE_FIFO ? MAX_FIFO_SIZE : 1;
        break;
      case UART_LCR:
        if (data & UART_LCR_DLAB) {
          s[b + MttyPort.DLAB] = 1;
          s.writeUInt16LE(0, b + MttyPort.DIVISOR);
        } else {
          s[b + MttyPort.DLAB] = 0;
        }
        s[b + UART_LCR] = data;
        break;
      case UART_MCR:
      case UART_SCR:
        s[b + offset] = data;
        break;
      default:
        break; // LSR, MSR: read-only
    }
  }

  /** Guest read of UART register `offset` (0..7) of port `p`. */
  barRead(p: number, offset: number): number {
    this._checkPort(p);
    this._checkRunning();
    const s = this._s;
    const b = p * MTTY_PORT_SIZE;
    const dlab = s[b + MttyPort.DLAB] !== 0;
    const empty = s[b + MttyPort.HEAD] === s[b + MttyPort.TAIL];
    switch (offset) {
      case UART_TX: {
        if (dlab) return s.readUInt16LE(b + MttyPort.DIVISOR) & 0xff;
        if (empty) return 0;
        const tail = s[b + MttyPort.TAIL];
        const v = s[b + MttyPort.FIFO + tail];
        s[b + MttyPort.COUNT]--;
        s[b + MttyPort.TAIL] = (tail + 1) & (MAX_FIFO_SIZE - 1);
        return v;
      }
      case UART_IER:
        return dlab ? s.readUInt16LE(b + MttyPort.DIVISOR) >> 8 : s[b + UART_IER] & 0x0f;
      case UART_IIR: {
        const ier = s[b + UART_IER];
        let v = 0;
        if (ier & UART_IER_RLSI && s[b + MttyPort.OVERRUN]) v |= 0x06;
        if (ier & UART_IER_RDI && s[b + MttyPort.COUNT] >= s[b + MttyPort.TRIGGER_LEVEL]) v |= 0x04;
        if (ier & UART_IER_THRI && empty) v |= 0x02;
        // Modem-status interrupts (IER_MSI with RTS/DTR) have IIR code 0: nothing to add.
        return (v === 0 ? 0x01 : v) | 0xc0;
      }
      case UART_LCR:
      case UART_MCR:
      case UART_SCR:
        return s[b + offset];
      case UART_LSR:
        return (empty ? 0x60 : 0x01) | (s[b + MttyPort.OVERRUN] ? 0x02 : 0);
      case UART_MSR: {
        let v = 0x20 | 0x02 | 0x80; // DSR, DDSR, DCD
        if (!(s[b + UART_MCR] & UART_MCR_AFE) || s[b + MttyPort.COUNT] < s[b + MttyPort.MAX_FIFO_SIZE]) v |= 0x10 | 0x01;
        return v;
      }
      default:
        return 0;
    }
  }

  /** Guest sends `bytes` on port `p` (TX writes; mtty loops them back into its FIFO). */
  guestWrite(p: number, bytes: Uint8Array): void {
    for (const c of bytes) this.barWrite(p, UART_TX, c);
  }

  /** Stop using the device: sessions end (close_device disables the files). */
  close(): void {
    this._disableFiles();
  }
}
