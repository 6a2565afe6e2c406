// `svdq forward` as scripts (and test/python) call it: a real child process, files in and out.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addon } from '../../sidecar/engine/addon.ts';
import { Engine } from '../../sidecar/engine/engine.ts';
import { f32Values } from '../../sidecar/engine/tensor.ts';
import type { TensorData } from '../../sidecar/engine/types.ts';
import { inputTensors, tinyInputs, writeTinyFlux } from './helpers/tiny-flux.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const cli = join(repo, 'bin', 'svdq.mjs');
const dir = mkdtempSync(join(tmpdir(), 'svdq-cli-'));

function svdq(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { cwd: repo, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const model = join(dir, 'model.safetensors');
const inputsPath = join(dir, 'in.safetensors');
let inputs: Record<string, TensorData>;

test.before(async () => {
  const cfg = await writeTinyFlux(model, { seed: 21, guidance: true });
  inputs = inputTensors(tinyInputs(cfg, { seed: 22, batch: 2, height: 9, width: 6, textTokens: 5 }));
  addon().writeSafetensors(inputsPath, inputs, {}, true);
});

test('writes `out` equal to the engine facade on the same inputs, bit for bit', async (t) => {
  const out = join(dir, 'out.safetensors');
  const r = await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', out);
  t.is(r.code, 0, r.stderr);
  const file = addon().readSafetensors(out);
  t.deepEqual(Object.keys(file.tensors), ['out']);
  const got = file.tensors.out!;
  t.is(got.dtype, 'F32');
  t.deepEqual(got.shape, [2, 4, 9, 6]);
  const e = await Engine.load(model);
  const want = await e.forward({ x: inputs.x!, timestep: inputs.timestep!, context: inputs.context!, y: inputs.y!, guidance: inputs.guidance! });
  e.dispose();
  t.deepEqual(f32Values(got), f32Values(want));
  // Explicit axes equal to the default for head dim 32 give the same result; other axes do not.
  const same = join(dir, 'same.safetensors'), other = join(dir, 'other.safetensors');
  t.is((await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', same, '--axes', '4,14,14')).code, 0);
  t.deepEqual(readFileSync(same), readFileSync(out));
  t.is((await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', other, '--axes', '8,12,12')).code, 0);
  t.notDeepEqual(f32Values(addon().readSafetensors(other).tensors.out!), f32Values(got));
});

test('errors are a clear message on stderr with exit code 1, no stack', async (t) => {
  const out = join(dir, 'err-out.safetensors');
  const noY = join(dir, 'no-y.safetensors');
  addon().writeSafetensors(noY, { x: inputs.x!, timestep: inputs.timestep!, context: inputs.context! }, {}, true);
  const corrupt = join(dir, 'corrupt.safetensors');
  writeFileSync(corrupt, readFileSync(model).subarray(0, 5000));
  const exists = join(dir, 'exists.safetensors');
  writeFileSync(exists, 'keep me');
  const cases: Array<[string[], RegExp]> = [
    [['forward', '--inputs', inputsPath, '-o', out], /--model, --inputs and -o are required/],
    [['forward', '--model', model, '--inputs', noY, '-o', out], /no-y\.safetensors: missing tensor 'y'/],
    [['forward', '--model', corrupt, '--inputs', inputsPath, '-o', out], /corrupt\.safetensors: .*(past|exceeds|end)/],
    [['forward', '--model', model, '--inputs', inputsPath, '-o', out, '--axes', '4,14,16'], /RoPE axes sum to 34 but the head dim is 32/],
    [['forward', '--model', model, '--inputs', inputsPath, '-o', out, '--axes', 'a,b'], /--axes/],
    [['forward', '--model', model, '--inputs', inputsPath, '-o', exists], /exists\.safetensors: output exists/],
    [['forward', '--model', model, '--inputs', inputsPath, '-o', out, '--bogus'], /bogus/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ];
  for (const [args, msg] of cases) {
    const r = await svdq(...args);
    t.is(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, msg, args.join(' '));
    t.notRegex(r.stderr, /\n\s+at /, `stack printed for ${args.join(' ')}`);
  }
  t.is(readFileSync(exists, 'utf8'), 'keep me');
  // --force replaces it.
  t.is((await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', exists, '--force')).code, 0);
  t.deepEqual(addon().readSafetensors(exists).tensors.out!.shape, [2, 4, 9, 6]);
});

test('usage lists the commands', async (t) => {
  const r = await svdq('--help');
  t.is(r.code, 0);
  t.regex(r.stdout, /usage: svdq <command>/);
  t.regex(r.stdout, /forward/);
  const bare = await svdq();
  t.is(bare.code, 1);
  const help = await svdq('forward', '--help');
  t.is(help.code, 0);
  t.regex(help.stdout, /--model CKPT --inputs IN\.safetensors -o OUT\.safetensors/);
});
