// Markdown table of a `npm run bench -- --json` document, for docs/PERFORMANCE.md:
//   npm run bench -- --json > /tmp/bench.json && node bench/_table.mjs /tmp/bench.json
// Not run by bench/run.mjs (leading underscore).
import { readFileSync } from 'node:fs';

function fmt(n) {
  if (n === null || n === undefined) return '';
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

const text = readFileSync(process.argv[2] ?? 0, 'utf8');
// npm prints its own banner before the document: start at the first '{' of a line.
const doc = JSON.parse(text.slice(text.search(/^\{/m)));
const m = doc.machine;
process.stdout.write(`Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.platform}, Node ${m.node}\n\n`);
process.stdout.write('| result | value | unit | baseline | baseline value | ratio |\n|---|---:|---|---|---:|---:|\n');
// A '|' inside a cell (the `cat | cat` baseline) would end the cell: escape it.
const cell = (text) => String(text).replaceAll('|', '\\|');
for (const r of doc.results) {
  process.stdout.write(`| \`${r.name}\` | ${fmt(r.value)} | ${r.unit} | ${cell(r.baseline)} | ${fmt(r.baselineValue)} | ${fmt(r.ratio)} |\n`);
}
