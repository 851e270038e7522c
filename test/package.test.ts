/**
 * What `npm pack` ships, and its install script as a user's machine runs it: C sources and the
 * script that builds them, never binaries built here; without a C compiler the install goes on.
 */
import { describe, it, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

describe('the npm package', () => {
  it('ships every native source, the build script, the CLI and dist, and no binary built on this machine', () => {
    // --ignore-scripts: no prepare (npm test has built dist already).
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const files = new Set((JSON.parse(out) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path));
    const sources = execFileSync('git', ['ls-files', 'native'], { cwd: root, encoding: 'utf8' }).trim().split('\n');
    expect(sources.length).toBeGreaterThanOrEqual(5);
    for (const f of [...sources, 'scripts/build-native.mjs', 'bin/vfio-mig.js', 'dist/index.js', 'package.json', 'README.md']) expect(files.has(f), f).toBe(true);
    expect([...files].filter((f) => /(^|\/)build\//.test(f) || f.endsWith('.node'))).toEqual([]);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.install).toBe('node scripts/build-native.mjs');
  });

  it('the install script without a C compiler builds nothing, says what it skipped, and succeeds', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-pkg-'));
    try {
      mkdirSync(join(dir, 'scripts'));
      cpSync(join(root, 'scripts/build-native.mjs'), join(dir, 'scripts/build-native.mjs'));
      for (const f of execFileSync('git', ['ls-files', 'native'], { cwd: root, encoding: 'utf8' }).trim().split('\n')) {
        mkdirSync(dirname(join(dir, f)), { recursive: true });
        cpSync(join(root, f), join(dir, f));
      }
      const r = spawnSync(process.execPath, ['scripts/build-native.mjs'], { cwd: dir, encoding: 'utf8', env: { ...process.env, PATH: '/nonexistent', VFIO_MIG_NATIVE_STRICT: '' } });
      expect(r.status, r.stderr).toBe(0);
      const said = r.stdout + r.stderr;
      for (const what of ['FUSE server', 'socket-option addon', 'crc32 addon', 'page addon']) expect(said).toMatch(new RegExp(`skipping the [^\\n]*${what}`));
      for (const d of ['fuse', 'sockopt', 'crc32', 'simpages']) expect(existsSync(join(dir, 'native', d, 'build'))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
