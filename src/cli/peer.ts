/**
 * `vfio-mig migrate --to URL` and `vfio-mig receive --listen URL`: the two halves of a live
 * migration of SimDevices between two processes or two hosts; and `vfio-mig check --to URL`, the
 * pre-flight check of the first against the second.
 */
import { ErrorCodes, MigError, migError } from '../fsm/errors.js';
import { receive } from '../migration/destination.js';
import { migrate, type SourceMigration } from '../migration/source.js';
import { checkDestination } from '../migration/check.js';
import { warmUp } from '../migration/warm-up.js';
import type { MigrationSummary } from '../migration/summary.js';
import { listenTransport, type TransportListener } from '../transport/index.js';
import { formatHelp, parseArgs, type OptionSpec, type ParsedArgs } from './args.js';
import { ExitCode, exitCodeFor } from './exit-codes.js';
import { COMPRESSION_WORKERS_OPTION, DECOMPRESSION_WORKERS_OPTION, DEVICE_OPTIONS, MIGRATION_OPTIONS, OUTPUT_OPTIONS, WARM_UP_OPTION, applyCompressionWorkers, compressionWorkers, decompressionPool, deviceConfig, flag, makeSims, migrationConfig } from './options.js';
import { ProgressLine, errorJson, limitRow, outputFor, printError, printJson, printSummary, summaryJson } from './output.js';
import { tlsOptions } from './tls-demo.js';
import { formatBytes, formatMs, parseCount, parseDuration } from './units.js';

const TLS_OPTIONS: OptionSpec[] = [
  { name: 'tls-cert', value: true, arg: 'PEM', help: 'tls: this side\'s certificate chain' },
  { name: 'tls-key', value: true, arg: 'PEM', help: 'tls: this side\'s private key' },
  { name: 'tls-ca', value: true, arg: 'PEM', help: 'tls: CA the peer\'s certificate must chain to' },
];

/** `--tls-servername`, for the commands that connect (migrate, check). */
const SERVERNAME_OPTION: OptionSpec = { name: 'tls-servername', value: true, arg: 'NAME', help: 'tls: name the server certificate must carry' };

const MIGRATE_SPECS: OptionSpec[] = [
  { name: 'to', value: true, arg: 'URL', help: 'destination: unix:PATH | tcp:HOST:PORT | tls:HOST:PORT | fd:N' },
  ...DEVICE_OPTIONS,
  ...MIGRATION_OPTIONS,
  COMPRESSION_WORKERS_OPTION,
  ...TLS_OPTIONS,
  SERVERNAME_OPTION,
  WARM_UP_OPTION,
  ...OUTPUT_OPTIONS,
];

const RECEIVE_SPECS: OptionSpec[] = [
  { name: 'listen', value: true, arg: 'URL', help: 'where to wait for the source: unix:PATH | tcp:HOST:PORT | tls:HOST:PORT | fd:N' },
  ...DEVICE_OPTIONS.filter((s) => s.name !== 'dirty-rate'),
  { name: 'dirty-rate', value: true, arg: 'BYTES/S', help: 'ignored on the destination (its devices do not run before they resume)' },
  { name: 'stall-timeout', value: true, arg: 'MS', help: 'fail after this long without progress (once the source connected)', default: '15000' },
  { name: 'accept-timeout', value: true, arg: 'MS', help: 'give up when no source connected after this long, 0 = wait until interrupted', default: '0' },
  { name: 'ipc', help: 'report the listening URL to the parent process over IPC (used by demo)' },
  DECOMPRESSION_WORKERS_OPTION,
  ...TLS_OPTIONS,
  WARM_UP_OPTION,
  ...OUTPUT_OPTIONS,
];

const CHECK_SPECS: OptionSpec[] = [
  { name: 'to', value: true, arg: 'URL', help: 'destination: unix:PATH | tcp:HOST:PORT | tls:HOST:PORT' },
  ...DEVICE_OPTIONS.filter((s) => s.name !== 'dirty-rate' && s.name !== 'generation-rate'),
  { name: 'channels', value: true, arg: 'N', help: 'connections the migration will carry device data on', default: '1' },
  { name: 'accept-p2p-risk', help: 'a multi-device set although a device lacks P2P' },
  { name: 'timeout', value: true, arg: 'MS', help: 'give up after this long without an answer (connecting included)', default: '15000' },
  ...TLS_OPTIONS,
  SERVERNAME_OPTION,
  ...OUTPUT_OPTIONS,
];

export const CHECK_HELP = formatHelp(
  'vfio-mig check --to URL [options]',
  'Pre-flight check: ask a waiting `vfio-mig receive` whether it would take SimDevices built from\nthe device options, by the rules of a migration\'s handshake. No device moves on either side, and\nthe destination goes on waiting. Exit 0: it would; 5: it refuses (the reason is printed).',
  CHECK_SPECS,
);

export const MIGRATE_HELP = formatHelp(
  'vfio-mig migrate --to URL [options]',
  'Live-migrate SimDevices built from the device options (with their dirtying workload) to a\n`vfio-mig receive` started with the same device options.',
  MIGRATE_SPECS,
);

export const RECEIVE_HELP = formatHelp(
  'vfio-mig receive --listen URL [options]',
  'Wait for one migration from `vfio-mig migrate`, load it into SimDevices built from the device\noptions (the same as the source\'s), validate, verify digests and resume them.',
  RECEIVE_SPECS,
);

function str(args: ParsedArgs, name: string): string | undefined {
  const v = args.options.get(name);
  return typeof v === 'string' ? v : undefined;
}

function tls(args: ParsedArgs) {
  return tlsOptions(str(args, 'tls-cert'), str(args, 'tls-key'), str(args, 'tls-ca'));
}

/** The connecting side's transport options: the tls files and `--tls-servername`. */
function clientTls(args: ParsedArgs) {
  const servername = str(args, 'tls-servername');
  return { ...tls(args), ...(servername ? { servername } : {}) };
}

export async function migrateCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, MIGRATE_SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(MIGRATE_HELP);
    return ExitCode.OK;
  }
  const to = str(args, 'to') ?? args.positionals[0];
  if (!to) throw migError(ErrorCodes.USAGE, 'migrate needs --to URL');
  const dev = deviceConfig(args);
  const mig = migrationConfig(args);
  applyCompressionWorkers(args);
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));
  const sims = makeSims(dev, true);
  const ac = new AbortController();
  let run: SourceMigration | null = null;
  // Before the migration starts, the signal stops the warm-up and the start; once it runs, its
  // abort() says whether it came in time (past the handover it does not: the migration ends).
  const onSignal = () => {
    if (run === null) return ac.abort('interrupted');
    if (!run.abort('interrupted') && run.phase === 'resume') {
      process.stderr.write('vfio-mig migrate: too late to abort: the destination validated the state and this side released it; waiting for the destination to run it (again to quit now)\n');
    }
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const progress = new ProgressLine(out);
  try {
    // Before the migration starts: its switchover then runs compiled code (a first downtime of
    // 5.4-6.7 ms cold against 2.6-2.9 with both sides warmed, medians of bench/warm-up.mjs).
    if (!flag(args, 'no-warm-up')) await warmUp({ compression: mig.compression });
    run = migrate({
      devices: sims.cores,
      transport: to,
      transportOptions: clientTls(args),
      ...mig,
      signal: ac.signal,
    });
    run.on('progress', (p) => progress.update(p, dev.size * dev.devices));
    const s = await run.done;
    progress.clear();
    report(out, `migrated ${dev.devices} device(s) (${formatBytes(dev.size * dev.devices)}) to ${to}`, s, { digests: sims.sims.map((d) => d.digest()), downtimeLimitMs: mig.downtimeLimitMs, compressionWorkers: compressionWorkers(mig.compression) }, [
      limitRow(mig.downtimeLimitMs, s),
    ]);
    return s.verified ? ExitCode.OK : ExitCode.FAILED;
  } catch (err) {
    progress.clear();
    if (out.json) printJson(errorJson(err, { digests: sims.sims.map((d) => d.digest()) }));
    else printError(err);
    return exitCodeFor(err, 'source');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    sims.close();
  }
}

export async function checkCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, CHECK_SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(CHECK_HELP);
    return ExitCode.OK;
  }
  const to = str(args, 'to') ?? args.positionals[0];
  if (!to) throw migError(ErrorCodes.USAGE, 'check needs --to URL');
  const dev = deviceConfig(args);
  const channels = parseCount(str(args, 'channels') ?? '1', '--channels', 1, 64);
  const timeoutMs = parseDuration(str(args, 'timeout') ?? '15000', '--timeout');
  if (timeoutMs <= 0) throw migError(ErrorCodes.USAGE, '--timeout must be positive');
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));
  const sims = makeSims({ ...dev, dirtyRate: 0 }, false);
  const ac = new AbortController();
  const onSignal = () => ac.abort('interrupted');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await checkDestination({
      devices: sims.cores,
      transport: to,
      transportOptions: clientTls(args),
      channels,
      acceptP2PRisk: flag(args, 'accept-p2p-risk'),
      signal: ac.signal,
      timeoutMs,
    });
    if (out.json) printJson({ ok: true, compatible: true, to, devices: dev.devices, controlVersion: r.version, features: r.features, ms: +r.ms.toFixed(1) });
    else if (!out.quiet) process.stdout.write(`compatible: ${to} would take ${dev.devices} device(s) (${formatBytes(dev.size)} each, control protocol ${r.version}; answered in ${formatMs(r.ms)})\n`);
    return ExitCode.OK;
  } catch (err) {
    const refused = err instanceof MigError && (err.code === ErrorCodes.INCOMPATIBLE || err.code === ErrorCodes.UNSUPPORTED);
    if (out.json) printJson({ ...errorJson(err), compatible: refused ? false : null });
    else printError(err);
    if (refused) return ExitCode.REFUSED;
    const code = err instanceof MigError ? err.code : null;
    if (code === ErrorCodes.ABORTED) return ExitCode.ABORTED;
    return code === ErrorCodes.USAGE ? ExitCode.USAGE : ExitCode.FAILED;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    sims.close();
  }
}

export async function receiveCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, RECEIVE_SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(RECEIVE_HELP);
    return ExitCode.OK;
  }
  const listen = str(args, 'listen') ?? args.positionals[0];
  if (!listen) throw migError(ErrorCodes.USAGE, 'receive needs --listen URL');
  const dev = deviceConfig(args);
  const stallTimeoutMs = parseDuration(str(args, 'stall-timeout') ?? '15000', '--stall-timeout');
  const acceptTimeoutMs = parseDuration(str(args, 'accept-timeout') ?? '0', '--accept-timeout');
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));
  const ipc = flag(args, 'ipc') && typeof process.send === 'function';
  const pool = decompressionPool(args);
  const sims = makeSims(dev, false);
  const ac = new AbortController();
  const onSignal = () => ac.abort('interrupted');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Inside the try: a listen that fails (EADDRINUSE, EACCES) is reported as any failure, not as an
  // internal error with a stack trace (exit 70), and the cleanup below still runs.
  let listener: TransportListener | null = null;
  try {
    listener = await listenTransport(listen, tls(args));
    const l = listener;
    if (ipc) process.send?.({ listening: listener.url });
    else if (!out.quiet && !out.json) process.stderr.write(`vfio-mig receive: listening on ${listener.url}\n`);
    // The rehearsal (~60 ms cold) runs while the source is still on its way.
    const warming = flag(args, 'no-warm-up') ? null : warmUp();
    const run = receive({
      devices: sims.cores,
      decompressionPool: pool,
      transport: async () => {
        const d = await l.accept({ signal: ac.signal });
        // A source that came sooner waits for the end of the rehearsal: run beside the handshake,
        // it would inflate the setup and round-trip times the source's prediction starts from.
        await warming;
        // fd: and file: listeners yield one connection: nothing more will come.
        if (listen.startsWith('fd:') || listen.startsWith('file:')) void l.close();
        return d;
      },
      // The source's extra data channels (--channels) connect to the same listener.
      accept: () => l.accept({ signal: ac.signal }),
      // fd: and file: yield their one stream: a bad start there is the receive's failure.
      dropStrays: !(listen.startsWith('fd:') || listen.startsWith('file:')),
      signal: ac.signal,
      stallTimeoutMs,
      acceptTimeoutMs,
    });
    // Counted for the JSON summary (operators' logs): what came before the migration.
    let strays = 0;
    let checks = 0;
    run.on('stray', (e) => {
      strays++;
      if (out.json || out.quiet) return;
      process.stderr.write(`vfio-mig receive: dropped a connection before its hello (${e.code}: ${e.message}); still waiting\n`);
    });
    run.on('check', (c) => {
      checks++;
      if (out.json || out.quiet) return;
      process.stderr.write(`vfio-mig receive: answered a pre-flight check: ${c.compatible ? 'compatible' : `refused (${c.code}: ${c.message})`}; still waiting\n`);
    });
    const s = await run.done;
    report(out, `received ${dev.devices} device(s) (${formatBytes(dev.size * dev.devices)}); devices RUNNING`, s, { digests: sims.sims.map((d) => d.digest()), checks, strays });
    return s.verified ? ExitCode.OK : ExitCode.FAILED;
  } catch (err) {
    if (out.json) printJson(errorJson(err));
    else printError(err);
    return exitCodeFor(err, 'destination');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    // At most a second for the listener (a ref'd timer: an unref'd one left this await to an event
    // loop that could empty first, and the command's code was lost).
    let grace: NodeJS.Timeout | undefined;
    if (listener !== null) await Promise.race([listener.close(), new Promise((r) => (grace = setTimeout(r, 1000)))]);
    clearTimeout(grace);
    sims.close();
    await pool?.close();
    if (ipc) process.disconnect?.();
  }
}

function report(out: ReturnType<typeof outputFor>, title: string, s: MigrationSummary, extra: Record<string, unknown>, rows: [string, string][] = []): void {
  if (out.json) printJson(summaryJson(s, { role: s.role, ...extra }));
  else if (!out.quiet) printSummary(title, s, rows);
}
