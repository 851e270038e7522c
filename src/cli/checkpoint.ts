/**
 * `vfio-mig save [device options] FILE` and `vfio-mig restore [device options] FILE`: a SimDevice
 * set's state to a checkpoint file through the `file:` transport, and back into fresh devices with
 * the digests the file carries verified.
 */
import { ErrorCodes, migError } from '../fsm/errors.js';
import { restore, save } from '../migration/checkpoint.js';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { ExitCode, exitCodeFor } from './exit-codes.js';
import { COMPRESSION_WORKERS_OPTION, DECOMPRESSION_WORKERS_OPTION, DEVICE_OPTIONS, MIN_SAVING_OPTION, OUTPUT_OPTIONS, applyCompressionWorkers, compressionMinSaving, decompressionPool, deviceConfig, flag, makeSims, streamUrl } from './options.js';
import { errorJson, outputFor, printError, printJson, printSummary, summaryJson } from './output.js';
import { formatBytes } from './units.js';

const SAVE_SPECS: OptionSpec[] = [
  ...DEVICE_OPTIONS,
  { name: 'compress', value: true, arg: 'C', help: 'none | zstd | zstd:LEVEL', default: 'none' },
  MIN_SAVING_OPTION,
  COMPRESSION_WORKERS_OPTION,
  ...OUTPUT_OPTIONS,
];
const RESTORE_SPECS: OptionSpec[] = [...DEVICE_OPTIONS, DECOMPRESSION_WORKERS_OPTION, ...OUTPUT_OPTIONS];

export const SAVE_HELP = formatHelp(
  'vfio-mig save [device options] FILE',
  'Save the state of SimDevices built from the device options to FILE (a vfio-mig stream with a\ndigest per device). The devices stop for the copy and run again afterwards.',
  SAVE_SPECS,
);
export const RESTORE_HELP = formatHelp(
  'vfio-mig restore [device options] FILE',
  'Load FILE into fresh SimDevices built from the device options (the same as at save), validate\nthem, verify the digests FILE carries, and run them. A corrupt or truncated file exits 65.',
  RESTORE_SPECS,
);

function onePositional(positionals: string[], cmd: string): string {
  if (positionals.length !== 1) throw migError(ErrorCodes.USAGE, `${cmd} needs exactly one FILE argument`);
  return positionals[0];
}

export async function saveCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, SAVE_SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(SAVE_HELP);
    return ExitCode.OK;
  }
  const file = onePositional(args.positionals, 'save');
  const dev = deviceConfig(args);
  const compressOpt = args.options.get('compress');
  const compression = typeof compressOpt === 'string' ? compressOpt : 'none';
  const minSaving = compressionMinSaving(args, compression);
  applyCompressionWorkers(args);
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));
  const sims = makeSims({ ...dev, dirtyRate: 0 }, false);
  try {
    const digests = sims.sims.map((s) => s.digest());
    const s = await save({ devices: sims.cores, transport: streamUrl(file), compression, compressionMinSaving: minSaving }).done;
    if (out.json) printJson(summaryJson(s, { file, digests }));
    else if (!out.quiet) printSummary(`saved ${dev.devices} device(s) (${formatBytes(dev.size * dev.devices)}) to ${file}`, s, [['digests', digests.map((d) => d.slice(0, 16)).join(' ')]]);
    return ExitCode.OK;
  } catch (err) {
    if (out.json) printJson(errorJson(err, { file }));
    else printError(err);
    return exitCodeFor(err, 'source');
  } finally {
    sims.close();
  }
}

export async function restoreCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, RESTORE_SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(RESTORE_HELP);
    return ExitCode.OK;
  }
  const file = onePositional(args.positionals, 'restore');
  const dev = deviceConfig(args);
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));
  const pool = decompressionPool(args);
  const sims = makeSims({ ...dev, dirtyRate: 0 }, false);
  try {
    const s = await restore({ devices: sims.cores, transport: streamUrl(file), decompressionPool: pool }).done;
    const digests = sims.sims.map((d) => d.digest());
    if (!s.verified) {
      throw migError(ErrorCodes.DIGEST, `${file} carries no device digest to verify`, { phase: 'validate' });
    }
    if (out.json) printJson(summaryJson(s, { file, digests }));
    else if (!out.quiet) printSummary(`restored ${dev.devices} device(s) from ${file}; devices RUNNING`, s, [['digests', digests.map((d) => d.slice(0, 16)).join(' ')]]);
    return ExitCode.OK;
  } catch (err) {
    if (out.json) printJson(errorJson(err, { file }));
    else printError(err);
    return exitCodeFor(err, 'restore');
  } finally {
    sims.close();
    await pool?.close();
  }
}
