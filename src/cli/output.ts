/**
 * What the command prints: a live progress line (on a TTY only, on stderr), the human summary, and
 * the single JSON object of --json.
 */
import { MigError } from '../fsm/errors.js';
import type { MigrationSummary, ProgressEvent } from '../migration/summary.js';
import { formatBytes, formatMs } from './units.js';

export interface Output {
  json: boolean;
  quiet: boolean;
  /** stderr is a terminal: progress may be drawn. */
  tty: boolean;
}

export function outputFor(json: boolean, quiet: boolean): Output {
  return { json, quiet, tty: Boolean(process.stderr.isTTY) };
}

/** A progress line redrawn in place; nothing unless on a TTY and neither --json nor --quiet. */
export class ProgressLine {
  readonly #out: Output;
  #drawn: boolean;
  #lastAt: number;

  constructor(out: Output) {
    this.#out = out;
    this.#drawn = false;
    this.#lastAt = 0;
  }

  get enabled(): boolean {
    return this.#out.tty && !this.#out.json && !this.#out.quiet;
  }

  update(p: ProgressEvent, total: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.#lastAt < 100) return;
    this.#lastAt = now;
    const pct = total > 0 ? Math.min(100, (100 * p.bytes) / total) : 0;
    const rate = p.rate > 0 ? `${formatBytes(p.rate)}/s` : '-';
    const predicted = p.predictedDowntimeMs === null ? '-' : formatMs(p.predictedDowntimeMs);
    const line = `${p.phase.padEnd(10)} ${formatBytes(p.bytes).padStart(10)} (${pct.toFixed(0).padStart(3)}%)  wire ${formatBytes(p.wireBytes).padStart(10)}  ${rate.padStart(12)}  round ${p.round}  predicted downtime ${predicted}`;
    process.stderr.write(`\r\x1b[2K${line}`);
    this.#drawn = true;
  }

  clear(): void {
    if (this.#drawn) process.stderr.write('\r\x1b[2K');
    this.#drawn = false;
  }
}

/** The JSON form of a summary (stable field names; see docs/cli.md). */
export function summaryJson(s: MigrationSummary, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ok: true,
    verified: s.verified,
    bytes: s.bytes,
    wireBytes: s.wireBytes,
    compressionRatio: round(s.compressionRatio, 3),
    durationMs: round(s.durationMs, 1),
    downtimeMs: round(s.downtimeMs, 1),
    predictedDowntimeMs: s.predictedDowntimeMs === null || !Number.isFinite(s.predictedDowntimeMs) ? null : round(s.predictedDowntimeMs, 1),
    switchoverLimitMs: s.switchoverLimitMs === null ? null : round(s.switchoverLimitMs, 1),
    precopyRounds: s.precopyRounds,
    throughputMBps: round(s.throughputMBps, 1),
    phases: Object.fromEntries(Object.entries(s.phases).map(([k, v]) => [k, round(v ?? 0, 1)])),
    devices: s.devices,
    ...extra,
  };
}

export function errorJson(err: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const e = err instanceof MigError ? err : null;
  return {
    ok: false,
    verified: false,
    error: {
      code: e?.code ?? (err as { code?: string })?.code ?? 'EIO',
      message: err instanceof Error ? err.message : String(err),
      ...(e?.device !== undefined ? { device: e.device } : {}),
    },
    phase: e?.phase ?? null,
    recovery: e?.recovery ?? null,
    ...extra,
  };
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

export function printJson(obj: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

/**
 * The source's 'downtime limit' line: the limit asked for and, when the policy raised it before
 * switching over (the stepwise policy), the limit the switchover went under.
 */
export function limitRow(askedMs: number, s: MigrationSummary): [string, string] {
  const raised = s.switchoverLimitMs !== null && s.switchoverLimitMs > askedMs ? ` (raised to ${formatMs(s.switchoverLimitMs)} by the policy)` : '';
  return ['downtime limit', `${formatMs(askedMs)}${raised}`];
}

/** The human summary of a migration (stdout). */
export function printSummary(title: string, s: MigrationSummary, rows: [string, string][] = []): void {
  const lines: [string, string][] = [
    ['device bytes', formatBytes(s.bytes)],
    ['wire bytes', `${formatBytes(s.wireBytes)} (compression ratio ${s.compressionRatio.toFixed(2)})`],
    ['duration', `${formatMs(s.durationMs)} (${s.throughputMBps.toFixed(0)} MB/s)`],
    ['PRE_COPY rounds', String(s.precopyRounds)],
    [
      'downtime',
      `${formatMs(s.downtimeMs)} measured, ${s.predictedDowntimeMs === null || !Number.isFinite(s.predictedDowntimeMs) ? 'no prediction' : `${formatMs(s.predictedDowntimeMs)} predicted`}`,
    ],
    ['verified', s.verified ? 'yes: every device digest matches' : 'no'],
    ...rows,
  ];
  s.devices.forEach((d, i) => {
    if (d.sourceError) lines.push([`source device ${i}`, `WARNING: not stopped after the handover (${d.sourceError.code}: ${d.sourceError.message}); close or reset it`]);
  });
  const w = Math.max(...lines.map(([k]) => k.length)) + 2;
  process.stdout.write(`${title}\n${lines.map(([k, v]) => `  ${k.padEnd(w)}${v}`).join('\n')}\n`);
}

export function printError(err: unknown): void {
  const e = err instanceof MigError ? err : null;
  const where = e?.phase ? ` (phase ${e.phase}${e.device !== undefined ? `, device ${e.device}` : ''})` : '';
  const code = e?.code ?? (err as { code?: string })?.code;
  const message = err instanceof Error ? err.message : String(err);
  // Node's system errors already start with their code ("ENOENT: no such file or directory, ...").
  const prefix = code && !message.startsWith(`${code}:`) ? `${code}: ` : '';
  process.stderr.write(`vfio-mig: ${prefix}${message}${where}\n`);
  if (e?.recovery === 'recovered') process.stderr.write('vfio-mig: rolled back: every source device is RUNNING with its state intact\n');
  else if (e?.recovery === 'reset') process.stderr.write('vfio-mig: the destination devices were reset\n');
  else if (e?.recovery === 'failed') process.stderr.write('vfio-mig: WARNING: a device could not be restored to RUNNING\n');
  else if (e?.recovery === 'held') {
    process.stderr.write("vfio-mig: the devices are stopped and hold the state; this side cannot tell whether the other side runs it, so nothing was resumed or reset\n");
  }
}
