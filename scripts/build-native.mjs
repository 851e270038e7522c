#!/usr/bin/env node
// Build the native helpers in native/ when their build dependencies are present:
//
// - the FUSE data-fd server (native/fuse/vfio-mig-fuse.c, an executable; needs libfuse3);
// - the socket-option addon (native/sockopt/vfio-mig-sockopt.c), the crc32 addon
//   (native/crc32/vfio-mig-crc32.c) and SimDevice's page addon (native/simpages/vfio-mig-simpages.c):
//   Node-API modules that need only a C compiler (declarations in native/napi-min.h).
//
// Each build is optional: without a C compiler or libfuse3's development files it prints one line
// and goes on, so `npm install` never fails; FUSE data fds are then unavailable (their tests report
// themselves as skipped), unix sockets keep the kernel's default send buffer, crc32 is zlib's and
// SimDevice's pages are generated and checked in JavaScript.
// VFIO_MIG_NATIVE_STRICT=1 turns a missing dependency or a compile error into a failure (for CI).
import { spawnSync } from 'node:child_process';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const strict = process.env.VFIO_MIG_NATIVE_STRICT === '1';
const force = process.argv.includes('--force');
let failed = false;

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: !r.error && r.status === 0, stdout: (r.stdout ?? '').trim(), stderr: (r.stderr ?? '').trim() };
}

/** Compile `source` into `output` (paths relative to the root) unless it is up to date. */
function build({ what, source, output, flags, missing, deps = [] }) {
  const skip = (reason) => {
    console.log(`build-native: skipping ${what} (${reason}); ${missing}`);
    if (strict) failed = true;
  };
  if (process.platform !== 'linux') return skip('not Linux');
  const cc = process.env.CC || 'cc';
  if (!run(cc, ['--version']).ok) return skip(`no C compiler (${cc})`);
  const extra = typeof flags === 'function' ? flags() : flags;
  if (typeof extra === 'string') return skip(extra);
  const src = path.join(root, source);
  const out = path.join(root, output);
  try {
    const newest = Math.max(...[source, ...deps].map((f) => statSync(path.join(root, f)).mtimeMs));
    if (statSync(out).mtimeMs >= newest && !force) {
      console.log(`build-native: ${output} is up to date`);
      return;
    }
  } catch {
    // no binary yet
  }
  mkdirSync(path.dirname(out), { recursive: true });
  const r = run(cc, ['-O2', '-g', '-Wall', '-Wextra', '-std=gnu11', src, '-o', out, ...extra]);
  if (!r.ok) {
    console.log(`build-native: compiling ${what} failed:\n${r.stderr}`);
    if (strict) failed = true;
    return;
  }
  if (r.stderr) console.log(r.stderr);
  console.log(`build-native: built ${output}`);
}

build({
  what: 'the FUSE server',
  source: 'native/fuse/vfio-mig-fuse.c',
  output: 'native/fuse/build/vfio-mig-fuse',
  missing: 'FUSE data fds will be unavailable',
  flags: () => {
    const pc = run('pkg-config', ['--cflags', '--libs', 'fuse3']);
    return pc.ok ? pc.stdout.split(/\s+/).filter(Boolean) : 'libfuse3 development files not found by pkg-config: apt-get install libfuse3-dev pkg-config';
  },
});
build({
  what: 'the socket-option addon',
  source: 'native/sockopt/vfio-mig-sockopt.c',
  output: 'native/sockopt/build/vfio-mig-sockopt.node',
  missing: 'unix sockets keep the default send buffer',
  flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  deps: ['native/napi-min.h'],
});
build({
  what: 'the crc32 addon',
  source: 'native/crc32/vfio-mig-crc32.c',
  output: 'native/crc32/build/vfio-mig-crc32.node',
  missing: 'crc32 stays node:zlib\'s',
  flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  deps: ['native/napi-min.h'],
});
build({
  what: 'the SimDevice page addon',
  source: 'native/simpages/vfio-mig-simpages.c',
  output: 'native/simpages/build/vfio-mig-simpages.node',
  missing: 'SimDevice generates and checks its pages in JavaScript',
  flags: ['-shared', '-fPIC', '-fvisibility=hidden'],
  deps: ['native/napi-min.h'],
});
process.exit(failed ? 1 : 0);
