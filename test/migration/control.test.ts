import { describe, it, expect } from 'vitest';
import { type ReturnMessage, FrameParser, MAX_CONTROL_FRAME, compatibilityProblem, encodeFrame, parseForwardMessage, parseReturnMessage } from '../../src/migration/control.js';

describe('return-path frames', () => {
  const msgs: ReturnMessage[] = [
    { type: 'ready', version: 1, features: { switchoverAck: true, digest: true } },
    { type: 'switchover-ack', epoch: 2, loadedBytes: 123 },
    { type: 'validated', validateMs: [1.5, 2], verified: true, bytes: [10, 20] },
    { type: 'running', resumeMs: 3, drainMs: 4 },
  ];

  it('parses frames fed byte by byte, whole, and in random splits', () => {
    const bytes = Buffer.concat(msgs.map((m) => encodeFrame(m)));
    const byByte = new FrameParser();
    const out: unknown[] = [];
    for (let i = 0; i < bytes.length; i++) out.push(...byByte.push(bytes.subarray(i, i + 1)));
    expect(out).toEqual(msgs);
    expect(byByte.pending).toBe(0);
    expect(new FrameParser().push(bytes)).toEqual(msgs);
    for (let trial = 0; trial < 20; trial++) {
      const p = new FrameParser();
      const got: unknown[] = [];
      let at = 0;
      while (at < bytes.length) {
        const n = 1 + Math.floor(Math.random() * 40);
        got.push(...p.push(bytes.subarray(at, at + n)));
        at += n;
      }
      expect(got).toEqual(msgs);
    }
  });

  it('refuses an oversized length before buffering it, and bad JSON', () => {
    const head = Buffer.alloc(4);
    head.writeUInt32LE(MAX_CONTROL_FRAME + 1);
    expect(() => new FrameParser().push(head)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_CORRUPT' }));
    const bad = Buffer.concat([Buffer.from([3, 0, 0, 0]), Buffer.from('{x}')]);
    expect(() => new FrameParser().push(bad)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_CORRUPT' }));
  });

  it('validates message shapes in both directions', () => {
    expect(parseReturnMessage(msgs[1])).toEqual(msgs[1]);
    expect(() => parseReturnMessage({ type: 'nope' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(() => parseReturnMessage({ type: 'refuse', code: 1 })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(parseForwardMessage({ type: 'digest', device: 1, digest: 'ab' }, 2)).toMatchObject({ device: 1 });
    expect(() => parseForwardMessage({ type: 'digest', device: 2, digest: 'ab' }, 2)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(() => parseForwardMessage({ type: 'initial-sent' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(() => parseForwardMessage(null)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(parseForwardMessage({ type: 'ping', id: 2 })).toEqual({ type: 'ping', id: 2 });
    expect(() => parseForwardMessage({ type: 'ping' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(parseReturnMessage({ type: 'pong', id: 2 })).toEqual({ type: 'pong', id: 2 });
    expect(parseReturnMessage({ type: 'loaded', bytes: 4096 })).toEqual({ type: 'loaded', bytes: 4096 });
    expect(() => parseReturnMessage({ type: 'loaded', bytes: -1 })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(() => parseReturnMessage({ type: 'pong', id: '2' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
    expect(parseReturnMessage({ type: 'ready', version: 1, features: {}, setupMs: 3.5 })).toMatchObject({ setupMs: 3.5 });
    expect(() => parseReturnMessage({ type: 'ready', version: 1, features: {}, setupMs: 'slow' })).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_PROTOCOL' }));
  });
});

describe('compatibility', () => {
  const id = { kind: 'sim', model: 'size=4096', version: '1.0', flags: 7, stateSize: 10 };
  it('accepts equal identities and minor version differences, refuses kind, model and major', () => {
    expect(compatibilityProblem(id, { ...id, version: '1.3', flags: 3 })).toBeNull();
    expect(compatibilityProblem(id, { ...id, kind: 'mtty' })).toMatch(/kind/);
    expect(compatibilityProblem(id, { ...id, model: 'size=8192' })).toMatch(/model/);
    expect(compatibilityProblem(id, { ...id, version: '2.0' })).toMatch(/version/);
  });
});
