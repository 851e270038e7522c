import { describe, expect, it } from 'vitest';
import { ERRNO, MigError, errnoName, isErrno, migError } from '../../src/fsm/errors.js';
import { DeviceState, flagsName, parseState, stateName } from '../../src/fsm/states.js';

describe('errors', () => {
  it('carries code, errno and context', () => {
    const err = migError('EINVAL', 'bad target', { target: DeviceState.PRE_COPY, state: DeviceState.STOP_COPY });
    expect(err).toBeInstanceOf(MigError);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('EINVAL');
    expect(err.errno).toBe(22);
    expect(err.target).toBe(DeviceState.PRE_COPY);
    expect(err.state).toBe(DeviceState.STOP_COPY);
  });

  it('recognises ENOMSG by number where Node has no name for it', () => {
    const nodeStyle = Object.assign(new Error('Unknown system error -42'), { code: 'Unknown system error -42', errno: -42 });
    expect(isErrno(nodeStyle, 'ENOMSG')).toBe(true);
    expect(isErrno(nodeStyle, 'ENODEV')).toBe(false);
    expect(errnoName(nodeStyle)).toBe('ENOMSG');
    expect(errnoName({ code: 'EAGAIN', errno: -11 })).toBe('EAGAIN');
    expect(ERRNO.ENOMSG).toBe(42);
  });

  it('instanceof is false for plain errors', () => {
    expect(new Error('x')).not.toBeInstanceOf(MigError);
  });
});

describe('state names', () => {
  it('uses the kernel numbers', () => {
    expect(DeviceState).toEqual({ ERROR: 0, STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, RUNNING_P2P: 5, PRE_COPY: 6, PRE_COPY_P2P: 7 });
    expect(stateName(3)).toBe('STOP_COPY');
    expect(stateName(8)).toBe('INVALID(8)');
    expect(parseState('pre-copy_p2p')).toBe(7);
    expect(parseState('nope')).toBeUndefined();
    expect(flagsName(7)).toBe('STOP_COPY|P2P|PRE_COPY');
  });
});
