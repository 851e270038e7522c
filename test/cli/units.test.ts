import { describe, it, expect } from 'vitest';
import { parseArgs, formatHelp } from '../../src/cli/args.js';
import { ExitCode, exitCodeFor } from '../../src/cli/exit-codes.js';
import { formatBytes, parseCount, parseDuration, parseFraction, parseRate, parseSize } from '../../src/cli/units.js';
import { migError } from '../../src/fsm/errors.js';

describe('quantities', () => {
  it('parses sizes with binary and decimal units', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('32MiB')).toBe(32 * 1024 * 1024);
    expect(parseSize('1GiB')).toBe(1024 ** 3);
    expect(parseSize('1.5 KiB')).toBe(1536);
    expect(parseSize('2G')).toBe(2 * 1024 ** 3);
    expect(parseSize('10MB')).toBe(10_000_000);
    expect(parseRate('64MiB/s')).toBe(64 * 1024 * 1024);
    for (const bad of ['', 'x', '-1', '1 XiB', '1e3']) {
      expect(() => parseSize(bad)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    }
  });
  it('parses durations and counts', () => {
    expect(parseDuration('300')).toBe(300);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('150ms')).toBe(150);
    expect(() => parseDuration('soon')).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    expect(parseCount('4', 'n')).toBe(4);
    expect(() => parseCount('0', 'n')).toThrow(/between/);
    expect(() => parseCount('1.5', 'n')).toThrow(/integer/);
  });
  it('parses fractions as decimals, percentages and ratios, below 1', () => {
    expect(parseFraction('0.05')).toBe(0.05);
    expect(parseFraction('5%')).toBe(0.05);
    expect(parseFraction('12.5%')).toBe(0.125);
    expect(parseFraction('1/32')).toBe(1 / 32);
    expect(parseFraction('0')).toBe(0);
    expect(parseFraction(' 0/7 ')).toBe(0);
    for (const bad of ['1', '100%', '32/32', '1/0', '-0.1', '0.5x', '', 'half', '1e-2', '3/2']) {
      expect(() => parseFraction(bad, '--x')).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE', message: expect.stringMatching(/--x/) }));
    }
  });
  it('formats bytes', () => {
    expect(formatBytes(17)).toBe('17 B');
    expect(formatBytes(1024 ** 3)).toBe('1.00 GiB');
    expect(formatBytes(512 * 1024)).toBe('512 KiB');
  });
});

describe('argument parser', () => {
  const specs = [
    { name: 'size', value: true, help: 's' },
    { name: 'json', help: 'j' },
    { name: 'quiet', short: 'q', help: 'q' },
  ];
  it('takes --name value, --name=value, flags, aliases and positionals', () => {
    const a = parseArgs(['--size', '1GiB', 'file', '--json', '-q', '--size=2'], specs);
    expect(a.options.get('size')).toBe('2');
    expect(a.options.get('json')).toBe(true);
    expect(a.options.get('quiet')).toBe(true);
    expect(a.positionals).toEqual(['file']);
    expect(parseArgs(['--', '--json'], specs).positionals).toEqual(['--json']);
  });
  it('refuses unknown options, missing values and values on flags', () => {
    expect(() => parseArgs(['--nope'], specs)).toThrow(expect.objectContaining({ code: 'VFIO_MIG_ERR_USAGE' }));
    expect(() => parseArgs(['--size'], specs)).toThrow(/needs a value/);
    expect(() => parseArgs(['--json=1'], specs)).toThrow(/takes no value/);
    expect(() => parseArgs(['-x'], specs)).toThrow(/unknown option/);
  });
  it('formats help with every option', () => {
    const h = formatHelp('x [options]', 'does x', specs);
    expect(h).toMatch(/--size VALUE/);
    expect(h).toMatch(/-q, --quiet/);
  });
});

describe('exit codes', () => {
  it('maps failures to distinct codes', () => {
    expect(exitCodeFor(migError('VFIO_MIG_ERR_USAGE', 'x'), 'source')).toBe(ExitCode.USAGE);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_POLICY_ABORT', 'x', { recovery: 'recovered' }), 'source')).toBe(ExitCode.POLICY_ABORT);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_TRANSPORT', 'x', { recovery: 'recovered' }), 'source')).toBe(ExitCode.ROLLED_BACK);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_TRANSPORT', 'x', { recovery: 'failed' }), 'source')).toBe(ExitCode.FAILED);
    // A destination device whose reset failed may still hold or run the state: not "rolled back".
    expect(exitCodeFor(migError('EIO', 'x', { recovery: 'failed', phase: 'resume' }), 'destination')).toBe(ExitCode.FAILED);
    expect(exitCodeFor(migError('EIO', 'x', { recovery: 'reset', phase: 'resume' }), 'destination')).toBe(ExitCode.ROLLED_BACK);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_TRANSPORT', 'x', { recovery: 'held', phase: 'resume' }), 'source')).toBe(ExitCode.HELD);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_STALLED', 'x', { recovery: 'held', phase: 'resume' }), 'destination')).toBe(ExitCode.HELD);
    expect(ExitCode.HELD).toBe(6);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_ABORTED', 'x', { recovery: 'recovered' }), 'source')).toBe(ExitCode.ABORTED);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_INCOMPATIBLE', 'x', { phase: 'handshake' }), 'source')).toBe(ExitCode.REFUSED);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_CORRUPT', 'x'), 'restore')).toBe(ExitCode.DATA);
    expect(exitCodeFor(migError('VFIO_MIG_ERR_TRUNCATED', 'x'), 'inspect')).toBe(ExitCode.DATA);
    expect(exitCodeFor(new Error('x'), 'source')).toBe(ExitCode.FAILED);
    expect(new Set(Object.values(ExitCode)).size).toBe(Object.values(ExitCode).length);
  });
});
