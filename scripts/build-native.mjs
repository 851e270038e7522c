#!/usr/bin/env node
// Build the native helpers in native/ when their build dependencies are present.
//
// Today that is the FUSE data-fd server (native/fuse/vfio-mig-fuse.c, libfuse3). The build is optional:
// without a C compiler or libfuse3's development files it prints one line and exits 0, so `npm install`
// never fails on a machine without FUSE; the FUSE tests then report themselves as skipped.
// VFIO_MIG_NATIVE_STRICT=1 turns a missing dependency or a compile error into a failure (for CI).
import { spawnSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const strict = process.env.VFIO_MIG_NATIVE_STRICT === '1';
const src = path.join(root, 'native/fuse/vfio-mig-fuse.c');
const outDir = path.join(root, 'native/fuse/build');
const out = path.join(outDir, 'vfio-mig-fuse');

function skip(reason) {
  console.log(`build-native: skipping the FUSE server (${reason}); FUSE data fds will be unavailable`);
  process.exit(strict ? 1 : 0);
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: !r.error && r.status === 0, stdout: (r.stdout ?? '').trim(), stderr: (r.stderr ?? '').trim() };
}

if (process.platform !== 'linux') skip('not Linux');
const cc = process.env.CC || 'cc';
if (!run(cc, ['--version']).ok) skip(`no C compiler (${cc})`);
const pc = run('pkg-config', ['--cflags', '--libs', 'fuse3']);
if (!pc.ok) skip('libfuse3 development files not found by pkg-config: apt-get install libfuse3-dev pkg-config');

// Rebuild only when the source is newer than the binary.
try {
  if (statSync(out).mtimeMs >= statSync(src).mtimeMs && !process.argv.includes('--force')) {
    console.log('build-native: native/fuse/build/vfio-mig-fuse is up to date');
    process.exit(0);
  }
} catch {
  // no binary yet
}
mkdirSync(outDir, { recursive: true });
const flags = ['-O2', '-g', '-Wall', '-Wextra', '-std=gnu11', src, '-o', out, ...pc.stdout.split(/\s+/).filter(Boolean)];
const r = run(cc, flags);
if (!r.ok) {
  console.log(`build-native: compiling the FUSE server failed:\n${r.stderr}`);
  process.exit(strict ? 1 : 0);
}
if (r.stderr) console.log(r.stderr);
console.log('build-native: built native/fuse/build/vfio-mig-fuse');
