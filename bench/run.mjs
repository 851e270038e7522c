#!/usr/bin/env node
// `npm run bench`: runs every benchmark file in this folder (one file per question) and prints each
// result with its baseline and ratio. Options:
//   --quick        a small version of every benchmark (under a minute; CI runs this as a smoke test)
//   --json         print all results as one JSON document { machine, results: [...] }
//   --only NAME    run only the benchmark file NAME (e.g. fd-read) or the file producing result NAME
// Benchmarks import the built package (dist/): `npm run bench` builds first.
// BENCH_MALLOC=tuned: the runner starts itself again with glibc's allocator settings of
// src/streams/malloc-tuning.ts (glibc reads them only when a process starts; the benchmarks'
// child processes inherit them), unless the environment sets glibc's allocator parameters itself.
// Without it the benchmarks run in the environment as it is, as the `vfio-mig` command does. The
// JSON's `machine.malloc` says which.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { machine } from './lib.mjs';
import { mallocTuning, withMallocTuning } from '../dist/index.js';

// The order answers the questions of the benchmark issue in turn.
const ORDER = ['fd-read', 'fd-write', 'e2e', 'small-records', 'receive', 'compression', 'memory', 'micro', 'prediction', 'fd-read-fuse'];

function parseArgs(argv) {
  const opts = { quick: false, json: false, only: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--json') opts.json = true;
    else if (a === '--only') opts.only = argv[++i];
    else if (a.startsWith('--only=')) opts.only = a.slice(7);
    else if (a === '--help' || a === '-h') opts.help = true;
    else throw new Error(`unknown option ${a}`);
  }
  return opts;
}

function fmt(n) {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (process.env.BENCH_MALLOC === 'tuned' && mallocTuning() === 'default') {
    const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit', env: withMallocTuning() });
    if (r.error) throw r.error;
    return r.status ?? 1;
  }
  if (opts.help) {
    process.stdout.write('usage: npm run bench -- [--quick] [--json] [--only NAME]\n');
    return 0;
  }
  const here = dirname(fileURLToPath(import.meta.url));
  const files = readdirSync(here)
    .filter((f) => f.endsWith('.mjs') && f !== 'run.mjs' && f !== 'lib.mjs' && !f.startsWith('_'))
    .map((f) => basename(f, '.mjs'))
    .sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));

  const modules = [];
  for (const name of files) {
    const mod = await import(pathToFileURL(join(here, `${name}.mjs`)).href);
    modules.push({ name, mod });
  }
  let selected = modules;
  if (opts.only) {
    // A file by its name, else the file whose result-name prefix matches longest (so that
    // `--only fd-read-fuse` runs fd-read-fuse.mjs, not also fd-read.mjs).
    selected = modules.filter(({ name }) => name === opts.only);
    if (selected.length === 0) {
      const match = (mod) => Math.max(-1, ...(mod.names ?? []).filter((n) => n === opts.only || opts.only.startsWith(n)).map((n) => n.length));
      const best = Math.max(-1, ...modules.map(({ mod }) => match(mod)));
      selected = best < 0 ? [] : modules.filter(({ mod }) => match(mod) === best);
    }
    if (selected.length === 0) {
      process.stderr.write(`bench: no benchmark named ${opts.only} (files: ${files.join(', ')})\n`);
      return 64;
    }
  }

  const results = [];
  let failed = 0;
  for (const { name, mod } of selected) {
    if (!opts.json) process.stdout.write(`\n## ${name}${opts.quick ? ' (quick)' : ''}\n`);
    try {
      let rows = await mod.default({ quick: opts.quick, log: opts.json ? () => {} : (s) => process.stdout.write(`   ${s}\n`) });
      if (opts.only && name !== opts.only) rows = rows.filter((r) => r.name === opts.only || r.name.startsWith(opts.only));
      for (const r of rows) {
        results.push(r);
        if (!opts.json) {
          process.stdout.write(
            `${r.name.padEnd(30)} ${fmt(r.value).padStart(9)} ${String(r.unit).padEnd(6)}` +
              `  vs ${String(r.baseline).padEnd(34)} ${fmt(r.baselineValue).padStart(9)}  ratio ${fmt(r.ratio)}\n`,
          );
        }
      }
    } catch (err) {
      failed++;
      process.stderr.write(`bench ${name} failed: ${err && err.stack ? err.stack : err}\n`);
    }
  }
  if (opts.json) process.stdout.write(`${JSON.stringify({ machine: machine(), results }, null, 2)}\n`);
  return failed ? 1 : 0;
}

// A rejection no bench awaited (a child's promise that failed while the bench waited on
// something else) is reported and fails the run at its end, instead of killing it half way.
let stray = 0;
process.on('unhandledRejection', (err) => {
  stray++;
  process.stderr.write(`bench: unhandled rejection: ${err && err.stack ? err.stack : err}\n`);
});

main().then((code) => { process.exitCode = code || (stray ? 1 : 0); }, (err) => { process.stderr.write(`${err.stack}\n`); process.exitCode = 1; });
