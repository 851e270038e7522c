/**
 * The `vfio-mig` command: `main(argv)` resolves the exit code (bin/vfio-mig.js sets it).
 */
import { readFileSync } from 'node:fs';
import { ErrorCodes, MigError } from '../fsm/errors.js';
import { CONTROL_PROTOCOL_VERSION } from '../migration/control.js';
import { mallocTuning } from '../streams/malloc-tuning.js';
import { WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR } from '../streams/wire-format.js';
import { restoreCommand, saveCommand } from './checkpoint.js';
import { demo } from './demo.js';
import { ExitCode } from './exit-codes.js';
import { inspectCommand } from './inspect.js';
import { checkCommand, migrateCommand, receiveCommand } from './peer.js';

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  demo,
  migrate: migrateCommand,
  receive: receiveCommand,
  check: checkCommand,
  save: saveCommand,
  restore: restoreCommand,
  inspect: inspectCommand,
};

export const MAIN_HELP = `usage: vfio-mig <command> [options]

Live migration of VFIO device state (the Linux migration protocol v2) with simulated devices.

commands:
  demo       live-migrate SimDevices to a destination process this command starts
  migrate    live-migrate SimDevices to a \`vfio-mig receive\` (--to URL)
  receive    wait for one migration and run the migrated devices (--listen URL)
  check      ask a waiting \`vfio-mig receive\` whether it would take the devices (--to URL)
  save       save SimDevices' state to a checkpoint file
  restore    load a checkpoint file into fresh SimDevices, verifying its digests
  inspect    print a stream's header and records

\`vfio-mig <command> --help\` shows a command's options; \`vfio-mig --version\` the versions.

exit codes:
  0   success (digests verified)
  1   failed, and a device could not be restored (or an unexpected error)
  2   failed and rolled back: every source device RUNNING with its state intact
  3   aborted by the switchover policy (downtime limit cannot be met); rolled back
  4   aborted by the user (SIGINT/SIGTERM); rolled back
  5   the destination refused the devices (incompatible); nothing was touched
      (check: the destination would refuse them)
  6   failed past this side's point of no return (the handover): its devices are
      stopped and hold the state; nothing was resumed or reset
  64  usage error
  65  corrupt or truncated stream or file, or a digest mismatch
  70  internal error of the command
`;

/**
 * The package's version and the formats this build speaks (what two hosts must agree on), and how
 * this process's allocator was set when it started (malloc-tuning.ts), for whoever compares runs.
 */
export function versionLine(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return `vfio-mig ${pkg.version} (wire format ${WIRE_VERSION_MAJOR}.${WIRE_VERSION_MINOR}, control protocol ${CONTROL_PROTOCOL_VERSION}, node ${process.versions.node}, malloc ${mallocTuning()})`;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(MAIN_HELP);
    return ExitCode.OK;
  }
  if (cmd === '--version' || cmd === '-V' || cmd === 'version') {
    process.stdout.write(`${versionLine()}\n`);
    return ExitCode.OK;
  }
  if (cmd === undefined) {
    process.stderr.write(MAIN_HELP);
    return ExitCode.USAGE;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    process.stderr.write(`vfio-mig: unknown command '${cmd}' (see vfio-mig --help)\n`);
    return ExitCode.USAGE;
  }
  try {
    return await run(rest);
  } catch (err) {
    if (err instanceof MigError && err.code === ErrorCodes.USAGE) {
      const json = rest.includes('--json');
      if (json) process.stdout.write(`${JSON.stringify({ ok: false, verified: false, error: { code: err.code, message: err.message }, phase: null })}\n`);
      else process.stderr.write(`vfio-mig ${cmd}: ${err.message} (see vfio-mig ${cmd} --help)\n`);
      return ExitCode.USAGE;
    }
    throw err;
  }
}

/**
 * Run a command as the process (bin/vfio-mig.js): its exit code becomes the process's. An exception
 * exits 70 with its stack on stderr; so does an event loop that empties before the command settles
 * (an unsettled promise and nothing left to wake it, which Node would otherwise end with exit 0: a
 * command that never finished reported as a success).
 */
export function runMain(run: (argv: string[]) => Promise<number> = main, argv: string[] = process.argv.slice(2)): void {
  // A reader of our output that goes away (`vfio-mig inspect f | head`) ends the output, not the
  // command: a migration in progress must not die half way because its summary has no reader.
  // Unhandled, the EPIPE crashed the process with a stack trace.
  for (const out of [process.stdout, process.stderr]) {
    out.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
    });
  }
  let settled = false;
  process.once('beforeExit', () => {
    if (settled) return;
    process.stderr.write('vfio-mig: internal error: the command stopped with its work unfinished (an await nothing could settle)\n');
    process.exitCode = ExitCode.INTERNAL;
  });
  run(argv).then(
    (code) => {
      settled = true;
      process.exitCode = code;
    },
    (err: unknown) => {
      settled = true;
      process.stderr.write(`vfio-mig: ${err instanceof Error && err.stack ? err.stack : String(err)}\n`);
      process.exitCode = ExitCode.INTERNAL;
    },
  );
}
