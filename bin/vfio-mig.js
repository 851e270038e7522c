#!/usr/bin/env node
// Entry point of the `vfio-mig` command: runs the compiled CLI from dist/ (runMain sets the exit code).
import { runMain } from '../dist/cli/main.js';

runMain();
