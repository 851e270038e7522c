/**
 * `vfio-mig inspect FILE`: the stream header and the records of a vfio-mig stream, every record
 * checked by the decoder (crc, sequence, digests). Consecutive DATA records of one device are shown
 * as one line (a 1 GiB state is a thousand of them).
 */
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Writable, type Readable } from 'node:stream';
import { ErrorCodes, migError } from '../fsm/errors.js';
import { RecordDecoder } from '../streams/record-decoder.js';
import { listenTransport, type TransportListener } from '../transport/index.js';
import { RecordType, recordTypeName, type DecodedObject } from '../streams/wire-format.js';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { ExitCode, exitCodeFor } from './exit-codes.js';
import { flag, streamUrl } from './options.js';
import { errorJson, printError, printJson } from './output.js';
import { formatBytes } from './units.js';

const SPECS: OptionSpec[] = [
  { name: 'all', help: 'one line per DATA record instead of runs' },
  { name: 'json', help: 'print one JSON object: { ok, header, records }' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export const INSPECT_HELP = formatHelp('vfio-mig inspect [--all] [--json] FILE', 'Print the stream header and the records of a vfio-mig stream: a saved checkpoint (FILE), or a stream on a transport URL (fd:3 on a pipe: ... | vfio-mig inspect fd:3 3<&0).', SPECS);

type Row = Record<string, unknown>;

export async function inspectCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, SPECS);
  if (flag(args, 'help')) {
    process.stdout.write(INSPECT_HELP);
    return ExitCode.OK;
  }
  if (args.positionals.length !== 1) throw migError(ErrorCodes.USAGE, 'inspect needs exactly one FILE argument');
  const url = streamUrl(args.positionals[0]);
  // A path is read as it is (a regular file, /dev/stdin, a FIFO); another URL (fd:3 on a pipe,
  // unix:..., tcp:...) through its transport's listener, as restore reads it.
  const file = url.startsWith('file:') ? url.slice('file:'.length) : url;
  const json = flag(args, 'json');
  const all = flag(args, 'all');
  const rows: Row[] = [];
  let header: Row | null = null;
  let run: Row | null = null;
  const emit = (row: Row) => {
    if (json) rows.push(row);
    else process.stdout.write(`${formatRow(row)}\n`);
  };
  const flushRun = () => {
    if (run) emit(run);
    run = null;
  };
  const sink = new Writable({
    objectMode: true,
    write(obj: DecodedObject, _enc, cb) {
      if (obj.type === RecordType.STREAM_HEADER) {
        const h = obj.header;
        header = { version: `${h.versionMajor}.${h.versionMinor}`, features: h.features, sender: h.sender, digest: h.digest, devices: h.devices };
        if (!json) {
          process.stdout.write(`stream ${file}: format ${h.versionMajor}.${h.versionMinor}, features 0x${h.features.toString(16)}, digest ${h.digest ?? 'none'}, sender ${JSON.stringify(h.sender)}\n`);
          h.devices.forEach((d, i) => process.stdout.write(`  device ${i} ${d.name}: ${d.identity.kind} ${d.identity.model} v${d.identity.version} flags 0x${d.identity.flags.toString(16)} ~${formatBytes(d.identity.stateSize)}\n`));
        }
        cb();
        return;
      }
      if (obj.type === RecordType.DATA && !all) {
        const r = run as Row | null;
        if (r && r.device === obj.device) {
          r.records = (r.records as number) + 1;
          r.bytes = (r.bytes as number) + obj.payload.length;
          r.lastSeq = obj.seq;
        } else {
          flushRun();
          run = { type: 'DATA', device: obj.device, records: 1, bytes: obj.payload.length, firstSeq: obj.seq, lastSeq: obj.seq };
        }
        cb();
        return;
      }
      flushRun();
      const row: Row = { type: recordTypeName(obj.type), seq: obj.seq };
      if (obj.device !== 0xffff) row.device = obj.device;
      if (obj.type === RecordType.DATA) row.bytes = obj.payload.length;
      if (obj.type === RecordType.ROUND) Object.assign(row, { round: obj.round, roundFlags: obj.roundFlags, bytes: obj.bytes, initialBytes: obj.initialBytes, dirtyBytes: obj.dirtyBytes });
      if (obj.type === RecordType.DEVICE_END) Object.assign(row, { bytes: obj.bytes, algorithm: obj.algorithm, digest: obj.digest });
      if (obj.type === RecordType.CONTROL) row.message = obj.message;
      if (obj.type === RecordType.STREAM_END) row.bytes = obj.bytes;
      emit(row);
      cb();
    },
    final(cb) {
      flushRun();
      cb();
    },
  });
  let listener: TransportListener | null = null;
  try {
    let input: Readable;
    if (url.startsWith('file:')) {
      input = createReadStream(file);
    } else {
      listener = await listenTransport(url);
      const conn = await listener.accept();
      conn.end(); // nothing is sent back
      input = conn;
    }
    await pipeline(input, new RecordDecoder(), sink);
    if (json) printJson({ ok: true, file, header, records: rows });
    return ExitCode.OK;
  } catch (err) {
    flushRun();
    if (json) printJson(errorJson(err, { file, header, records: rows }));
    else printError(err);
    return exitCodeFor(err, 'inspect');
  } finally {
    await listener?.close();
  }
}

function formatRow(r: Row): string {
  if (r.type === 'DATA' && r.records !== undefined) {
    return `  DATA       dev ${r.device}  ${String(r.records).padStart(6)} records  ${formatBytes(r.bytes as number).padStart(10)}  seq ${r.firstSeq}..${r.lastSeq}`;
  }
  const { type, seq, ...rest } = r;
  return `  ${String(type).padEnd(10)} seq ${seq}  ${JSON.stringify(rest)}`;
}
