/**
 * `vfio-mig demo`: a live migration of SimDevices with a dirtying workload from this process to a
 * destination process it starts (`vfio-mig receive` with the same device options), over a local
 * socket.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { migrate } from '../migration/source.js';
import { checkDestination } from '../migration/check.js';
import { warmUp } from '../migration/warm-up.js';
import type { MigrationSummary } from '../migration/summary.js';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { ExitCode, exitCodeFor } from './exit-codes.js';
import { COMPRESSION_WORKERS_OPTION, DEVICE_OPTIONS, MIGRATION_OPTIONS, OUTPUT_OPTIONS, WARM_UP_OPTION, applyCompressionWorkers, compressionWorkers, deviceArgs, deviceConfig, flag, makeSims, migrationConfig } from './options.js';
import { ProgressLine, errorJson, limitRow, outputFor, printError, printJson, printSummary, summaryJson } from './output.js';
import { tlsDemoCredentials, tlsOptions } from './tls-demo.js';
import { formatBytes, formatMs } from './units.js';

const SPECS: OptionSpec[] = [
  ...DEVICE_OPTIONS,
  ...MIGRATION_OPTIONS,
  COMPRESSION_WORKERS_OPTION,
  { name: 'transport', value: true, arg: 'T', help: 'unix | tcp | tls (local socket to the destination process)', default: 'unix' },
  WARM_UP_OPTION,
  ...OUTPUT_OPTIONS,
];

export const DEMO_HELP = formatHelp(
  'vfio-mig demo [options]',
  'Live-migrate SimDevices (a dirtying workload, PRE_COPY and P2P) from this process to a destination\nprocess started for the purpose, and print the summary. Exit codes: see `vfio-mig --help`.',
  SPECS,
);

/** The script that runs this command (bin/vfio-mig.js), for the destination child. */
export function binPath(): string {
  return fileURLToPath(new URL('../../bin/vfio-mig.js', import.meta.url));
}

interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Start `vfio-mig receive` and resolve the URL it listens on (it tells over IPC). */
function startDestination(args: string[]): { child: ChildProcess; url: Promise<string>; exit: Promise<ChildResult> } {
  const child = spawn(process.execPath, [binPath(), 'receive', ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<ChildResult>((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
  const url = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(migError(ErrorCodes.TRANSPORT, 'the destination process did not start listening within 20 s', { phase: 'connect' })), 20_000);
    child.on('message', (m: unknown) => {
      const msg = m as { listening?: string };
      if (typeof msg?.listening === 'string') {
        clearTimeout(timer);
        resolve(msg.listening);
      }
    });
    void exit.then((r) => {
      clearTimeout(timer);
      reject(migError(ErrorCodes.TRANSPORT, `the destination process exited (code ${r.code}) before listening: ${r.stderr.trim()}`, { phase: 'connect' }));
    });
  });
  url.catch(() => {});
  return { child, url, exit };
}

export async function demo(argv: string[]): Promise<number> {
  const args = parseArgs(argv, SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(DEMO_HELP);
    return ExitCode.OK;
  }
  if (args.positionals.length > 0) throw migError(ErrorCodes.USAGE, `demo takes no arguments (got '${args.positionals[0]}')`);
  const dev = deviceConfig(args);
  const mig = migrationConfig(args);
  applyCompressionWorkers(args);
  const transport = typeof args.options.get('transport') === 'string' ? (args.options.get('transport') as string) : 'unix';
  if (!['unix', 'tcp', 'tls'].includes(transport)) throw migError(ErrorCodes.USAGE, `unknown --transport '${transport}': expected unix, tcp or tls`);
  const out = outputFor(flag(args, 'json'), flag(args, 'quiet'));

  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-demo-'));
  let listen: string;
  const extra: string[] = [];
  let transportOptions = {};
  if (transport === 'unix') {
    listen = `unix:${join(dir, 'mig.sock')}`;
  } else if (transport === 'tcp') {
    listen = 'tcp:127.0.0.1:0';
  } else {
    const creds = tlsDemoCredentials(dir);
    listen = 'tls:127.0.0.1:0';
    extra.push('--tls-cert', creds.serverCert, '--tls-key', creds.serverKey, '--tls-ca', creds.ca);
    transportOptions = { ...tlsOptions(creds.clientCert, creds.clientKey, creds.ca), servername: 'localhost' };
  }
  const warm = !flag(args, 'no-warm-up');
  if (!warm) extra.push('--no-warm-up');
  const dest = startDestination(['--listen', listen, ...deviceArgs(dev), '--stall-timeout', String(mig.stallTimeoutMs), '--json', '--ipc', ...extra]);
  // Both sides rehearse (warmUp()); this one while the destination process starts.
  const warming = warm ? warmUp({ compression: mig.compression }) : null;
  const sims = makeSims(dev, true);
  const ac = new AbortController();
  const onSignal = () => ac.abort('interrupted');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const progress = new ProgressLine(out);
  const total = dev.size * dev.devices;
  let summary: MigrationSummary | null = null;
  let failure: unknown = null;
  let preflightMs: number | null = null;
  try {
    const url = await dest.url;
    await warming;
    if (!out.quiet && !out.json) {
      process.stderr.write(
        `vfio-mig demo: ${dev.devices} SimDevice${dev.devices > 1 ? 's' : ''} of ${formatBytes(dev.size)} (${dev.profile}, dirtying ${formatBytes(dev.dirtyRate)}/s) -> pid ${dest.child.pid} over ${transport}\n`,
      );
    }
    // What an agent does before it commits: would the destination take these devices?
    const checked = await checkDestination({ devices: sims.cores, transport: url, transportOptions, channels: mig.channels, acceptP2PRisk: mig.acceptP2PRisk, signal: ac.signal });
    preflightMs = checked.ms;
    const run = migrate({
      devices: sims.cores,
      transport: url,
      transportOptions,
      ...mig,
      signal: ac.signal,
    });
    run.on('progress', (p) => progress.update(p, total));
    summary = await run.done;
  } catch (err) {
    failure = err;
  } finally {
    progress.clear();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const timer = setTimeout(() => dest.child.kill('SIGKILL'), failure ? 3000 : 20_000);
  const child = await dest.exit;
  clearTimeout(timer);
  sims.close();
  rmSync(dir, { recursive: true, force: true });
  let destJson: Record<string, unknown> | null = null;
  try {
    destJson = JSON.parse(child.stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>;
  } catch {
    destJson = null;
  }
  if (failure === null && summary !== null && (child.code !== 0 || destJson?.ok !== true)) {
    failure = migError(ErrorCodes.TRANSPORT, `the destination process failed after the migration (exit ${child.code}): ${child.stderr.trim()}`, { phase: 'complete' });
  }
  if (failure !== null || summary === null) {
    if (out.json) printJson(errorJson(failure, { destination: destJson }));
    else printError(failure);
    return exitCodeFor(failure, 'source');
  }
  const verified = summary.verified && destJson?.verified === true;
  const s = { ...summary, verified };
  if (out.json) {
    printJson(
      summaryJson(s, { transport, deviceCount: dev.devices, size: dev.size, downtimeLimitMs: mig.downtimeLimitMs, compressionWorkers: compressionWorkers(mig.compression), preflightMs: preflightMs === null ? null : +preflightMs.toFixed(1), destination: destJson }),
    );
  } else if (!out.quiet) {
    printSummary(`migrated ${dev.devices} device${dev.devices > 1 ? 's' : ''} (${formatBytes(total)}) over ${transport}`, s, [
      limitRow(mig.downtimeLimitMs, s),
      ['pre-flight check', `compatible (answered in ${formatMs(preflightMs ?? NaN)})`],
      ['destination', `pid ${dest.child.pid}, devices RUNNING`],
    ]);
  }
  return verified ? ExitCode.OK : ExitCode.FAILED;
}
