// OpenBLAS's fork handler and Node's child_process: see native/include/svdq/blas.h.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../..', import.meta.url));

test('forwards keep running, with unchanged results, while the process spawns children', async (t) => {
  const model = join(mkdtempSync(join(tmpdir(), 'svdq-fork-')), 'model.safetensors');
  const helper = join(repo, 'test', 'ts', 'helpers', 'forward-while-forking.ts');
  // Without the guard the first forward that a fork lands in never returns; the timeout turns that
  // hang into a failure here (a healthy run takes a few seconds).
  const r = await new Promise<{ err: Error | null; stdout: string; stderr: string }>((resolve) =>
    execFile(process.execPath, ['--import', 'tsx', helper, model, '40'], { cwd: repo, timeout: 60_000, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => resolve({ err, stdout, stderr })),
  );
  if (r.err) return t.fail(`the forward loop hung or failed while forking: ${r.err.message}`);
  const res = JSON.parse(r.stdout) as { forwards: number; spawns: number; maxRelDiff: number };
  t.log(res);
  t.is(res.forwards, 40);
  t.true(res.spawns >= 10, 'too few spawns overlapped the forwards to test anything');
  t.true(res.maxRelDiff < 1e-6, `forward output changed under forking: ${res.maxRelDiff}`);
});

test('every BLAS/LAPACK call in the native code goes through svdq/blas.h', (t) => {
  const files = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? files(join(dir, e.name)) : /\.(cpp|h|cu)$/.test(e.name) ? [join(dir, e.name)] : []);
  const direct = [...files(join(repo, 'native', 'src')), ...files(join(repo, 'native', 'binding'))].flatMap((f) =>
    readFileSync(f, 'utf8').split('\n').flatMap((line, i) =>
      /^\s*\/\//.test(line) || !/\b(cblas_\w+|LAPACKE_\w+)\s*\(/.test(line) ? [] : [`${f.slice(repo.length)}:${i + 1}`]));
  t.deepEqual(direct, [], 'call blas::/lapack:: from svdq/blas.h instead');
});
