#!/usr/bin/env node
// The svdq command: runs the TypeScript CLI through tsx (no separate compile step).
import { register } from 'tsx/esm/api';

register();
const { run } = await import('../sidecar/cli/main.ts');
process.exitCode = await run(process.argv.slice(2));
