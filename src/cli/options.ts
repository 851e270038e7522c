/**
 * Options shared by the commands: the SimDevice options (so `receive`/`restore` build devices that
 * match what `migrate`/`save` sent) and the migration options.
 */
import { MigrationCore } from '../fsm/core.js';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { SimDevice } from '../devices/index.js';
import { parseCompression } from '../migration/wire.js';
import { CompressionPool, configureSharedCompressionPool, DEFAULT_MAX_POOL_SIZE, sharedCompressionPool } from '../streams/compression-pool.js';
import type { OptionSpec, ParsedArgs } from './args.js';
import { parseCount, parseDuration, parseFraction, parseRate, parseSize } from './units.js';

export const DEFAULT_SIZE = '1GiB';
/** Default dirtying: enough that PRE_COPY takes a few rounds, little enough that it converges at once on a laptop. */
export const DEFAULT_DIRTY_RATE = '16MiB';
export const DEFAULT_DOWNTIME_LIMIT = '300';

export const DEVICE_OPTIONS: OptionSpec[] = [
  { name: 'size', value: true, arg: 'BYTES', help: 'state size per device (KiB/MiB/GiB suffixes)', default: DEFAULT_SIZE },
  { name: 'devices', value: true, arg: 'N', help: 'number of devices', default: '1' },
  { name: 'profile', value: true, arg: 'P', help: 'content: mixed | random | zero', default: 'mixed' },
  { name: 'seed', value: true, arg: 'N', help: 'content seed (device i uses seed+i)', default: '1' },
  { name: 'flags', value: true, arg: 'F', help: 'migration capability word: 0x1 | 0x3 | 0x5 | 0x7 (STOP_COPY, P2P, PRE_COPY)', default: '0x7' },
  { name: 'dirty-rate', value: true, arg: 'BYTES/S', help: 'bytes per second the workload dirties per device (source)', default: DEFAULT_DIRTY_RATE },
  { name: 'generation-rate', value: true, arg: 'BYTES/S', help: 'device read speed limit, 0 = unlimited', default: '0' },
];

/**
 * `--compress-min-saving F`: the share of a record its zstd frame must save, else the record goes
 * raw (the encoder's minSaving; default DEFAULT_MIN_SAVING). For migrate, demo and save.
 */
export const MIN_SAVING_OPTION: OptionSpec = {
  name: 'compress-min-saving',
  value: true,
  arg: 'F',
  help: 'with --compress: a record whose frame saves less than this share goes raw (0.05, 5%, 1/32; 0: any saving)',
  default: '1/32',
};

export const MIGRATION_OPTIONS: OptionSpec[] = [
  { name: 'compress', value: true, arg: 'C', help: 'none | zstd | zstd:LEVEL', default: 'none' },
  MIN_SAVING_OPTION,
  { name: 'downtime-limit', value: true, arg: 'MS', help: 'downtime limit for the switchover policy', default: DEFAULT_DOWNTIME_LIMIT },
  { name: 'policy', value: true, arg: 'P', help: 'switchover policy: default | stepwise', default: 'default' },
  { name: 'bandwidth', value: true, arg: 'BYTES/S', help: 'cap on wire bytes per second, 0 = none', default: '0' },
  { name: 'channels', value: true, arg: 'N', help: 'connections carrying device data', default: '1' },
  { name: 'stall-timeout', value: true, arg: 'MS', help: 'fail after this long without progress', default: '15000' },
  { name: 'precopy-budget', value: true, arg: 'MS', help: 'the policy aborts when PRE_COPY lasts longer', default: '60000' },
  { name: 'accept-p2p-risk', help: 'migrate several devices although one lacks P2P' },
];

/** `--compression-workers N` (applyCompressionWorkers), for the commands that compress. */
export const COMPRESSION_WORKERS_OPTION: OptionSpec = {
  name: 'compression-workers',
  value: true,
  arg: 'N',
  help: `compression worker threads (default: the CPUs this process may use, at most ${DEFAULT_MAX_POOL_SIZE})`,
};

/** `--no-warm-up`: the commands that migrate rehearse first (warmUp()) unless told not to. */
export const WARM_UP_OPTION: OptionSpec = {
  name: 'no-warm-up',
  help: 'skip the rehearsal migration that compiles the switchover code first (warmUp(); docs/migration.md)',
};

export const OUTPUT_OPTIONS: OptionSpec[] = [
  { name: 'json', help: 'print exactly one JSON object (the summary or the error) on stdout' },
  { name: 'quiet', short: 'q', help: 'print nothing but errors' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export interface DeviceConfig {
  size: number;
  devices: number;
  profile: 'mixed' | 'random' | 'zero';
  seed: number;
  flags: number;
  dirtyRate: number;
  generationRate: number;
}

/** The migration options of `migrate` and `demo`, named as migrate() takes them (spread into its options). */
export interface MigrationConfig {
  compression: string;
  /** undefined: the encoder's default (DEFAULT_MIN_SAVING). */
  compressionMinSaving: number | undefined;
  downtimeLimitMs: number;
  policy: 'default' | 'stepwise';
  bandwidth: number;
  channels: number;
  stallTimeoutMs: number;
  precopyBudgetMs: number;
  acceptP2PRisk: boolean;
}

function str(args: ParsedArgs, name: string, dflt: string): string {
  const v = args.options.get(name);
  return typeof v === 'string' ? v : dflt;
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args.options.get(name) === true;
}

export function deviceConfig(args: ParsedArgs): DeviceConfig {
  const profile = str(args, 'profile', 'mixed');
  if (profile !== 'mixed' && profile !== 'random' && profile !== 'zero') {
    throw migError(ErrorCodes.USAGE, `unknown profile '${profile}': expected mixed, random or zero`);
  }
  const flagsText = str(args, 'flags', '0x7');
  const flags = Number(flagsText);
  if (![1, 3, 5, 7].includes(flags)) throw migError(ErrorCodes.USAGE, `invalid --flags '${flagsText}': expected 0x1, 0x3, 0x5 or 0x7`);
  const size = parseSize(str(args, 'size', DEFAULT_SIZE), '--size');
  if (size < 4096) throw migError(ErrorCodes.USAGE, `--size must be at least 4KiB, got ${size}`);
  return {
    size,
    devices: parseCount(str(args, 'devices', '1'), '--devices', 1, 64),
    profile,
    seed: parseCount(str(args, 'seed', '1'), '--seed', 0, 2 ** 31),
    flags,
    dirtyRate: parseRate(str(args, 'dirty-rate', DEFAULT_DIRTY_RATE), '--dirty-rate'),
    generationRate: parseRate(str(args, 'generation-rate', '0'), '--generation-rate'),
  };
}

/**
 * `--compress-min-saving` as migrate() and save() take it, or undefined without the option. Asking
 * for it without compression is a usage error rather than a setting silently ignored.
 */
export function compressionMinSaving(args: ParsedArgs, compression: string): number | undefined {
  const v = args.options.get('compress-min-saving');
  if (typeof v !== 'string') return undefined;
  if (parseCompression(compression) === false) throw migError(ErrorCodes.USAGE, '--compress-min-saving needs --compress zstd (or zstd:LEVEL)');
  return parseFraction(v, '--compress-min-saving');
}

export function migrationConfig(args: ParsedArgs): MigrationConfig {
  const compression = str(args, 'compress', 'none');
  parseCompression(compression);
  const policy = str(args, 'policy', 'default');
  if (policy !== 'default' && policy !== 'stepwise') throw migError(ErrorCodes.USAGE, `unknown policy '${policy}': expected default or stepwise`);
  const downtimeLimitMs = parseDuration(str(args, 'downtime-limit', DEFAULT_DOWNTIME_LIMIT), '--downtime-limit');
  if (downtimeLimitMs <= 0) throw migError(ErrorCodes.USAGE, '--downtime-limit must be positive');
  return {
    compression,
    compressionMinSaving: compressionMinSaving(args, compression),
    downtimeLimitMs,
    policy,
    bandwidth: parseRate(str(args, 'bandwidth', '0'), '--bandwidth'),
    channels: parseCount(str(args, 'channels', '1'), '--channels', 1, 64),
    stallTimeoutMs: parseDuration(str(args, 'stall-timeout', '15000'), '--stall-timeout'),
    precopyBudgetMs: parseDuration(str(args, 'precopy-budget', '60000'), '--precopy-budget'),
    acceptP2PRisk: flag(args, 'accept-p2p-risk'),
  };
}

/**
 * `--compression-workers N`: the process-wide compression pool's size, set before anything uses
 * it (call before warmUp()). Without the option the pool keeps its default.
 */
export function applyCompressionWorkers(args: ParsedArgs): void {
  const v = args.options.get('compression-workers');
  if (typeof v !== 'string') return;
  configureSharedCompressionPool({ size: parseCount(v, '--compression-workers', 1, 256) });
}

/** A FILE argument as a transport URL: a path is `file:PATH`; `fd:3`, `unix:...` and other URLs stay as they are. */
export function streamUrl(file: string): string {
  return /^[a-z][a-z0-9+.-]*:/i.test(file) && !file.startsWith('/') ? file : `file:${file}`;
}

/** `--decompression-workers N` (decompressionPool), for the commands that decode: receive, restore. */
export const DECOMPRESSION_WORKERS_OPTION: OptionSpec = {
  name: 'decompression-workers',
  value: true,
  arg: 'N',
  help: 'decompress in N worker threads instead of the main one (0: the main thread)',
  default: '0',
};

/** The pool `--decompression-workers N` asks for (receive()'s decompressionPool), or null for 0. The caller closes it. */
export function decompressionPool(args: ParsedArgs): CompressionPool | null {
  const n = parseCount(str(args, 'decompression-workers', '0'), '--decompression-workers', 0, 256);
  return n === 0 ? null : new CompressionPool({ size: n });
}

/** The compression workers a run used (the JSON's `compressionWorkers`): null without compression. */
export function compressionWorkers(compression: string): number | null {
  return parseCompression(compression) === false ? null : sharedCompressionPool().size;
}

/** The command-line form of a device config (what the demo passes to its destination child). */
export function deviceArgs(c: DeviceConfig): string[] {
  return [
    '--size', String(c.size),
    '--devices', String(c.devices),
    '--profile', c.profile,
    '--seed', String(c.seed),
    '--flags', `0x${c.flags.toString(16)}`,
    '--dirty-rate', '0',
    '--generation-rate', String(c.generationRate),
  ];
}

export interface SimSet {
  sims: SimDevice[];
  cores: MigrationCore[];
  close(): void;
}

/**
 * SimDevices per the config. `workload` false: a destination's devices (no dirtying: their state is
 * about to be overwritten, and a destination device does not run before it resumes).
 */
export function makeSims(c: DeviceConfig, workload: boolean): SimSet {
  const sims: SimDevice[] = [];
  for (let i = 0; i < c.devices; i++) {
    sims.push(
      new SimDevice({
        size: c.size,
        flags: c.flags,
        seed: c.seed + i,
        profile: c.profile,
        dirtyRate: workload ? c.dirtyRate : 0,
        generationRate: c.generationRate,
      }),
    );
  }
  const cores = sims.map((s) => new MigrationCore(s));
  return {
    sims,
    cores,
    close() {
      for (const c of cores) c.detach();
      for (const s of sims) s.close();
    },
  };
}
