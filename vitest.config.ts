import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Two cores: run two test files at a time; each e2e test starts its own processes.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
