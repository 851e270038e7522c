/**
 * SavingStream / ResumingStream over fd-backed sessions of a device host child (FIFOs): the FIFO
 * shows PRE_COPY's temporary end as silence and a disabled session as EOF.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import { DeviceState } from '../../src/fsm/states.js';
import { MigrationCore } from '../../src/fsm/core.js';
import { MigError } from '../../src/fsm/errors.js';
import { spawnDeviceHost, type HostedDevice } from '../../src/devices/host.js';
import type { ResumingSession, SavingSession } from '../../src/fsm/types.js';
import { createSavingStream } from '../../src/streams/saving-stream.js';
import { createResumingStream } from '../../src/streams/resuming-stream.js';

const S = DeviceState;
const hosts: HostedDevice[] = [];
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});

async function host(options: Record<string, unknown>): Promise<HostedDevice> {
  const h = await spawnDeviceHost({ device: 'sim', options });
  hosts.push(h);
  return h;
}

describe('SavingStream over a device host FIFO', () => {
  it('PRE_COPY silence becomes precopy-empty; STOP_COPY data brings precopy-data and the end; digests equal', async () => {
    const opts = { size: 4 << 20, flags: 0x5, seed: 11, profile: 'mixed' };
    const [a, b] = await Promise.all([host(opts), host(opts)]);
    await a.call('dirtyPages', 32);
    const src = new MigrationCore(a);
    const dst = new MigrationCore(b);
    const ss = (await src.setState(S.PRE_COPY)) as SavingSession;
    const rs = (await dst.setState(S.RESUMING)) as ResumingSession;
    const reader = createSavingStream(ss, { backoffMax: 40 });
    const writer = createResumingStream(rs);
    expect(reader.path).toBe('epoll');
    const events: string[] = [];
    reader.on('precopy-empty', (ev: { bytesRead: number; initialBytes: number; dirtyBytes: number }) => {
      events.push('precopy-empty');
      expect(ev.initialBytes).toBe(0);
      expect(ev.dirtyBytes).toBe(0);
      expect(ev.bytesRead).toBe(reader.bytesRead);
      void src.setState(S.STOP_COPY);
    });
    reader.on('precopy-data', () => events.push('precopy-data'));
    reader.on('end', () => events.push('end'));
    await pipeline(reader, writer);
    expect(events).toEqual(['precopy-empty', 'precopy-data', 'end']);
    await dst.setState(S.STOP);
    await src.setState(S.STOP);
    expect(await b.digest()).toBe(await a.digest());
    ss.close();
    rs.close();
  });

  it('a device reset mid-stream: the FIFO shows EOF and the stream fails with ENODEV', async () => {
    const a = await host({ size: 8 << 20, flags: 0x5, faults: { resetAfterBytes: 1 << 20 } });
    const core = new MigrationCore(a);
    const ss = (await core.setState(S.PRE_COPY)) as SavingSession;
    const reader = createSavingStream(ss);
    const events: string[] = [];
    reader.on('end', () => events.push('end'));
    reader.on('close', () => events.push('close'));
    reader.resume();
    const [err] = (await once(reader, 'error')) as [MigError];
    expect(err).toBeInstanceOf(MigError);
    expect(err.code).toBe('ENODEV');
    expect(reader.bytesRead).toBeLessThan(8 << 20);
    await new Promise((r) => setImmediate(r));
    expect(events).toEqual(['close']);
    ss.close();
  });
});
