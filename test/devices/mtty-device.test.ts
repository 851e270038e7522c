import { describe, expect, it } from 'vitest';
import { DeviceState as S } from '../../src/fsm/states.js';
import { MttyDevice, MttyPort, MTTY_HEADER_SIZE, MTTY_PORT_SIZE, mttyDataSize } from '../../src/devices/mtty-device.js';
import { resuming, saving, writeAll } from './sim-helpers.js';

/** The published layout, built by hand: header then one struct serial_port per port. */
function buildStream(ports: number, edit: (b: Buffer) => void = () => {}): Buffer {
  const b = Buffer.alloc(24 + 36 * ports);
  b.writeUInt32LE(0x8c3e2c4e, 0); // magic 0x7e9d09898c3e2c4e, little-endian
  b.writeUInt32LE(0x7e9d0989, 4);
  b.writeUInt32LE(1, 8); // major
  b.writeUInt32LE(0, 12); // minor
  b.writeUInt32LE(ports, 16);
  b.writeUInt32LE(0, 20); // flags
  for (let p = 0; p < ports; p++) {
    const o = 24 + 36 * p;
    b[o + 1] = 0x05; // IER: RDI | RLSI
    b[o + 3] = 0x03; // LCR: 8 data bits
    b[o + 4] = 0x0b; // MCR
    b[o + 7] = 0x40 + p; // SCR
    b.write('hi', o + 8, 'latin1'); // fifo
    b[o + 24] = 2; // head
    b[o + 25] = 0; // tail
    b[o + 26] = 2; // count
    b.writeUInt16LE(12, o + 30); // divisor (9600 baud)
    b[o + 32] = 0x01; // fcr
    b[o + 33] = 16; // max_fifo_size
    b[o + 34] = 1; // trigger level
  }
  edit(b);
  return b;
}

async function toResuming(dev: MttyDevice): Promise<ReturnType<typeof resuming>> {
  await dev.step(S.RUNNING, S.RUNNING_P2P);
  await dev.step(S.RUNNING_P2P, S.STOP);
  return resuming(await dev.step(S.STOP, S.RESUMING));
}

async function readAll(s: ReturnType<typeof saving>, chunk = 7): Promise<Buffer> {
  const parts: Buffer[] = [];
  const buf = Buffer.alloc(chunk);
  for (let n = await s.read(buf); n > 0; n = await s.read(buf)) parts.push(Buffer.from(buf.subarray(0, n)));
  return Buffer.concat(parts);
}

describe('MttyDevice resume', () => {
  for (const ports of [1, 2] as const) {
    it(`accepts a byte-exact ${ports}-port stream built from the layout, 1 byte at a time`, async () => {
      const dev = new MttyDevice({ ports });
      const s = await toResuming(dev);
      const stream = buildStream(ports);
      for (let i = 0; i < stream.length; i++) expect(await s.write(stream.subarray(i, i + 1))).toBe(1);
      expect(await dev.step(S.RESUMING, S.STOP)).toBeNull();
      expect(s.disabled).toBe(true);
      for (let p = 0; p < ports; p++) expect(dev.portState(p)).toEqual(stream.subarray(24 + 36 * p, 60 + 36 * p));
      // The loaded UART works: the guest reads back the FIFO and the divisor.
      await dev.step(S.STOP, S.RUNNING_P2P);
      await dev.step(S.RUNNING_P2P, S.RUNNING);
      expect(String.fromCharCode(dev.barRead(0, 0), dev.barRead(0, 0))).toBe('hi');
      expect(dev.barRead(0, 7)).toBe(0x40);
      dev.barWrite(0, 3, 0x83); // DLAB on: divisor reads through registers 0/1
      expect(dev.barRead(0, 0)).toBe(0);
    });
  }

  const bad: [string, (b: Buffer) => void][] = [
    ['magic', (b) => (b[0] ^= 1)],
    ['major version', (b) => b.writeUInt32LE(2, 8)],
    ['minor version', (b) => b.writeUInt32LE(1, 12)],
    ['port count', (b) => b.writeUInt32LE(2, 16)],
    ['flags', (b) => b.writeUInt32LE(1, 20)],
  ];
  for (const [what, edit] of bad) {
    it(`rejects a bad ${what} with EFAULT on the write that crosses 24 bytes`, async () => {
      const dev = new MttyDevice({ ports: 1 });
      const s = await toResuming(dev);
      const stream = buildStream(1, edit);
      expect(await s.write(stream.subarray(0, 23))).toBe(23); // not checked before the header is complete
      await expect(s.write(stream.subarray(23, 30))).rejects.toMatchObject({ code: 'EFAULT', errno: 14 });
      // As in mtty the bytes of the failed write were counted: the rest is accepted at offset 30.
      expect(await s.write(stream.subarray(30))).toBe(stream.length - 30);
      await expect(s.write(Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENOMEM' });
    });
  }

  it('checks the header once, when a single write crosses 24', async () => {
    const dev = new MttyDevice({ ports: 2 });
    const s = await toResuming(dev);
    await expect(s.write(buildStream(1))).rejects.toMatchObject({ code: 'EFAULT' }); // nr_ports 1 != 2
  });

  it('refuses writes past the full size with ENOMEM (and accepts nothing of them)', async () => {
    const dev = new MttyDevice({ ports: 1 });
    const s = await toResuming(dev);
    await expect(s.write(Buffer.alloc(61))).rejects.toMatchObject({ code: 'ENOMEM', errno: 12 });
    const stream = buildStream(1);
    await writeAll(s, stream.subarray(0, 50));
    await expect(s.write(Buffer.alloc(11))).rejects.toMatchObject({ code: 'ENOMEM' });
    await writeAll(s, stream.subarray(50));
    await dev.step(S.RESUMING, S.STOP);
    expect(dev.portState(0)).toEqual(stream.subarray(24));
  });

  it('RESUMING -> STOP with a short image fails EINVAL and stays in RESUMING until reset', async () => {
    const dev = new MttyDevice({ ports: 2 });
    const s = await toResuming(dev);
    await writeAll(s, buildStream(2).subarray(0, 95));
    await expect(dev.step(S.RESUMING, S.STOP)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await dev.getState()).toBe(S.RESUMING);
    expect(s.disabled).toBe(false);
    await dev.reset();
    expect(await dev.getState()).toBe(S.RUNNING);
    await expect(s.write(Buffer.alloc(1))).rejects.toMatchObject({ code: 'ENODEV' });
  });
});

describe('MttyDevice save', () => {
  it('PRE_COPY streams only the header, read returns 0 at the temporary end, STOP_COPY appends the ports', async () => {
    const dev = new MttyDevice({ ports: 2 });
    dev.guestWrite(1, Buffer.from('abc'));
    dev.barWrite(0, 7, 0x5a);
    expect(await dev.stopCopySize()).toBe(96);
    const s = saving(await dev.step(S.RUNNING, S.PRE_COPY));
    expect(await s.precopyInfo()).toEqual({ initialBytes: 24, dirtyBytes: 0, reinit: false });
    const head = Buffer.alloc(10);
    expect(await s.read(head)).toBe(10);
    expect(await s.precopyInfo()).toEqual({ initialBytes: 14, dirtyBytes: 0, reinit: false });
    const header = Buffer.concat([head, await readAll(s)]);
    expect(header).toEqual(buildStream(2).subarray(0, 24));
    expect(await s.read(Buffer.alloc(8))).toBe(0); // mtty: 0, not ENOMSG
    expect(await s.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 0, reinit: false });
    expect(await dev.step(S.PRE_COPY, S.PRE_COPY_P2P)).toBeNull();
    expect(await dev.step(S.PRE_COPY_P2P, S.STOP_COPY)).toBeNull(); // same file, no new fd
    await expect(s.precopyInfo()).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await dev.stopCopySize()).toBe(96); // mtty: constant
    const ports = await readAll(s, 1000);
    expect(ports.length).toBe(72);
    expect(ports.subarray(0, 36)).toEqual(dev.portState(0));
    expect(ports.subarray(36)).toEqual(dev.portState(1));
    expect(ports[36 + MttyPort.COUNT]).toBe(3);
    expect(ports.subarray(36 + MttyPort.FIFO, 36 + MttyPort.FIFO + 3).toString()).toBe('abc');
    expect(ports[7]).toBe(0x5a);
    expect(await s.read(Buffer.alloc(8))).toBe(0);
    await dev.step(S.STOP_COPY, S.STOP);
    await expect(s.read(Buffer.alloc(8))).rejects.toMatchObject({ code: 'ENODEV' });
  });

  it('STOP -> STOP_COPY streams header and ports in one new session', async () => {
    const dev = new MttyDevice({ ports: 1 });
    dev.guestWrite(0, Buffer.from('z'));
    await dev.step(S.RUNNING, S.RUNNING_P2P);
    await dev.step(S.RUNNING_P2P, S.STOP);
    expect(() => dev.guestWrite(0, Buffer.from('y'))).toThrow(/stopped/);
    const s = saving(await dev.step(S.STOP, S.STOP_COPY));
    const all = await readAll(s);
    expect(all.length).toBe(mttyDataSize(1));
    expect(all.subarray(0, MTTY_HEADER_SIZE)).toEqual(buildStream(1).subarray(0, 24));
    expect(all.subarray(MTTY_HEADER_SIZE)).toEqual(dev.portState(0));
    expect(MTTY_PORT_SIZE).toBe(36);
  });

  it('refuses arcs that are not base arcs or do not start at the current state', async () => {
    const dev = new MttyDevice();
    await expect(dev.step(S.RUNNING, S.STOP_COPY)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(dev.step(S.STOP, S.RESUMING)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await dev.getState()).toBe(S.RUNNING);
  });

  for (const ports of [1, 2] as const) {
    it(`a ${ports}-port migration carries the UART state (digests match)`, async () => {
      const src = new MttyDevice({ ports });
      const dst = new MttyDevice({ ports });
      src.guestWrite(ports - 1, Buffer.from('hello'));
      src.barWrite(0, 1, 0x07);
      src.barWrite(0, 2, 0xc7);
      expect(src.digest()).not.toBe(dst.digest());
      const s = saving(await src.step(S.RUNNING, S.PRE_COPY));
      const r = await toResuming(dst);
      await writeAll(r, await readAll(s));
      src.guestWrite(0, Buffer.from('!')); // still running in PRE_COPY: the state moves on
      await src.step(S.PRE_COPY, S.PRE_COPY_P2P);
      await src.step(S.PRE_COPY_P2P, S.STOP_COPY);
      await writeAll(r, await readAll(s, 5));
      await dst.step(S.RESUMING, S.STOP);
      expect(dst.digest()).toBe(src.digest());
    });
  }
});
