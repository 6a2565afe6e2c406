// --lora FILE[:STRENGTH] parsing.
import test from 'ava';
import { parseLoraArg, parseLoraArgs } from '../../sidecar/cli/lora-args.ts';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addon } from '../../sidecar/engine/addon.ts';
import { Engine } from '../../sidecar/engine/engine.ts';
import { f32Values } from '../../sidecar/engine/tensor.ts';
import type { TensorData } from '../../sidecar/engine/types.ts';
import { inputTensors, tinyInputs, writeTinyFlux } from './helpers/tiny-flux.ts';
import { asDiffusers, asKohya, randomLora, writeSafetensorsFile } from './helpers/lora-fixtures.ts';

test('file with and without a strength', (t) => {
  t.deepEqual(parseLoraArg('a.safetensors'), { path: 'a.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('a.safetensors:0.75'), { path: 'a.safetensors', strength: 0.75 });
  t.deepEqual(parseLoraArg('/x/y.safetensors:-1.5'), { path: '/x/y.safetensors', strength: -1.5 });
  t.deepEqual(parseLoraArg('y:1e-1'), { path: 'y', strength: 0.1 });
  t.deepEqual(parseLoraArg('y:.5'), { path: 'y', strength: 0.5 });
  t.deepEqual(parseLoraArg('y:0'), { path: 'y', strength: 0 });
});

test('colons inside the path are kept when no number follows the last one', (t) => {
  t.deepEqual(parseLoraArg('C:\\loras\\style.safetensors'), { path: 'C:\\loras\\style.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('C:\\loras\\style.safetensors:0.3'), { path: 'C:\\loras\\style.safetensors', strength: 0.3 });
  t.deepEqual(parseLoraArg('weird:name.safetensors'), { path: 'weird:name.safetensors', strength: 1 });
  t.deepEqual(parseLoraArg('trailing:'), { path: 'trailing:', strength: 1 });
});

test('repeatable, and errors are clear', (t) => {
  t.deepEqual(parseLoraArgs(undefined), []);
  t.deepEqual(parseLoraArgs(['a:2', 'b']), [{ path: 'a', strength: 2 }, { path: 'b', strength: 1 }]);
  t.deepEqual(parseLoraArgs('a'), [{ path: 'a', strength: 1 }]);
  t.throws(() => parseLoraArg(''), { message: /--lora needs a file/ });
  t.throws(() => parseLoraArg('a:1e999'), { message: /strength 1e999 is not a finite number/ });
});

// --- `svdq forward --lora` in a child process -----------------------------------------------

const repo = fileURLToPath(new URL('../..', import.meta.url));
const cli = join(repo, 'bin', 'svdq.mjs');
const dir = mkdtempSync(join(tmpdir(), 'svdq-lora-cli-'));
const svdq = (...args: string[]): Promise<{ code: number; stderr: string }> =>
  new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { cwd: repo, timeout: 120_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr });
    });
  });

test('svdq forward --lora (repeatable, with strengths) equals the facade with the same LoRAs; unmatched keys are listed', async (t) => {
  const model = join(dir, 'model.safetensors');
  const inputsPath = join(dir, 'in.safetensors');
  const cfg = await writeTinyFlux(model, { seed: 31, guidance: true });
  const inputs = inputTensors(tinyInputs(cfg, { seed: 32, batch: 1, height: 6, width: 6, textTokens: 4 }));
  addon().writeSafetensors(inputsPath, inputs, {}, true);
  const e = await Engine.load(model);
  const layers = new Map(e.info().layers.map((l: { name: string; in: number; out: number }) => [l.name, { in: l.in, out: l.out }]));
  const a = join(dir, 'a.safetensors'), b = join(dir, 'b.safetensors');
  writeSafetensorsFile(a, asDiffusers(randomLora(layers, 1, { rank: 2, scale: 0.3 })));
  const kb = asKohya(randomLora(layers, 2, { rank: 3, scale: 0.3, only: (n) => n.includes('single') }), layers);
  kb.tensors['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight'] = kb.tensors['lora_unet_single_blocks_0_linear2.lora_down.weight']!;
  writeSafetensorsFile(b, kb);
  const out = join(dir, 'out.safetensors');
  const r = await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', out, '--lora', `${a}:0.5`, '--lora', b);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`lora ${a}: ${layers.size} layers patched`));
  t.regex(r.stderr, /unmatched lora_te1_text_model_encoder_layers_0_mlp_fc1\.lora_down\.weight: text-encoder/);
  await e.addLora(a, 0.5);
  await e.addLora(b, 1);
  const want = await e.forward(inputs as never);
  e.dispose();
  t.deepEqual(f32Values(addon().readSafetensors(out).tensors.out!), f32Values(want));
  const bad = join(dir, 'bad.safetensors');
  const kbad = asKohya(randomLora(layers, 3, { rank: 2, only: (n) => n === 'proj_out' }), layers);
  kbad.tensors['lora_unet_final_layer_linear.alpha'] = { dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([NaN]).buffer) };
  writeSafetensorsFile(bad, kbad);
  const rb = await svdq('forward', '--model', model, '--inputs', inputsPath, '-o', join(dir, 'o2.safetensors'), '--lora', bad);
  t.is(rb.code, 1);
  t.regex(rb.stderr, /bad\.safetensors: lora_unet_final_layer_linear\.alpha: non-finite alpha/);
  t.notRegex(rb.stderr, /at .*\.ts:\d+/, 'no stack trace');
});
