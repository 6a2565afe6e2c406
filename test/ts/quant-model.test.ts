// Quantizing a whole tiny FLUX model with activation outliers: the result loads in the CPU engine and
// stays close to the 16-bit model, SVDQuant beats naive and SmoothQuant W4A4, the file has the
// documented layout, and bad input fails clearly without leaving an output behind.
import test from 'ava';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Engine } from '../../sidecar/engine/engine.ts';
import type { ForwardInputs, TensorData } from '../../sidecar/engine/types.ts';
import { quantNative } from '../../sidecar/quant/native.ts';
import { quantizeCheckpoint } from '../../sidecar/quant/quantize.ts';
import { parseQuantizeArgs } from '../../sidecar/cli/quantize.ts';
import { makeInputs, makeOutlierFlux, writeSafetensors } from '../../tools/fixtures/outlier-flux.ts';
import { tinyOutlierModel } from './helpers/outlier-model.ts';

const { dir, cfg, model, calib, held } = tinyOutlierModel(3, 4, 2);
const fast = { calib, gridStep: 0.25, refine: 3, rank: 16 };

function header(path: string): Record<string, { dtype: string; shape: number[] }> & { __metadata__: Record<string, string> } {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  return JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
}

function tensor(shape: number[], data: Float32Array): TensorData {
  return { dtype: 'F32', shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

test.serial('quantized tiny model: documented layout, loads in the engine, output close to 16-bit', async (t) => {
  const out = join(dir, 'q.safetensors');
  const stages = new Set<string>();
  const r = await quantizeCheckpoint({ input: model, output: out, ...fast }, { onProgress: (_d, _t, s) => stages.add(s) });
  t.true(stages.has('calibrate') && stages.has('double_blocks.0.img_attn.qkv'));
  t.is(r.quantizedW4A4, 8 + 2); // qkv, proj, mlp.0, mlp.2 for img and txt; linear1, linear2
  t.is(r.w4a16, 3);
  t.true(r.peakRssBytes > 0);
  const h = header(out);
  const L = 'double_blocks.0.img_attn.qkv';
  t.deepEqual([h[`${L}.qweight`].dtype, h[`${L}.qweight`].shape], ['U8', [192, 32]]);
  t.deepEqual([h[`${L}.wscales`].dtype, h[`${L}.wscales`].shape], ['BF16', [1, 192]]);
  t.deepEqual(h[`${L}.smooth`].shape, [64]);
  t.deepEqual(h[`${L}.lora_down`].shape, [16, 64]);
  t.deepEqual(h[`${L}.lora_up`].shape, [192, 16]);
  t.falsy(h[`${L}.weight`]);
  t.truthy(h['double_blocks.0.img_mod.lin.wzeros']);
  t.truthy(h['final_layer.linear.weight'], 'final layer stays 16-bit');
  t.truthy(h['img_in.weight'], 'embedders stay 16-bit');
  const qc = JSON.parse(h.__metadata__.quantization_config);
  t.deepEqual(qc, {
    method: 'svdquant',
    weight: { dtype: 'int4', scale_dtype: null, group_size: 64 },
    activation: { dtype: 'int4', scale_dtype: null, group_size: 64 },
    rank: 16,
  });
  const sv = JSON.parse(h.__metadata__.svdq);
  t.regex(sv.calibration, /^file:calib\.safetensors/);
  t.true(sv.kept_16bit.includes('final_layer.linear'));
  t.is(sv.refine_tol, 0.001, 'the refinement stop rule is recorded');

  const inputs = makeInputs(cfg, 1, 77, 8, 16);
  const fi = Object.fromEntries([...inputs].map(([k, v]) => [k, tensor(v.shape, v.data)])) as unknown as ForwardInputs;
  const e16 = await Engine.load(model);
  const eq = await Engine.load(out);
  const y16 = await e16.forward(fi);
  const yq = await eq.forward(fi);
  const a = new Float32Array(y16.data.slice().buffer), b = new Float32Array(yq.data.slice().buffer);
  let e = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    t.true(Number.isFinite(b[i]));
    e += (a[i] - b[i]) ** 2;
    n += a[i] ** 2;
  }
  const rel = Math.sqrt(e / n);
  t.log(`engine output rel error ${rel.toFixed(4)}`);
  t.true(rel < 0.25, `rel ${rel}`);
  e16.dispose();
  eq.dispose();
});

test.serial('on the outlier model SVDQuant is clearly better than naive and SmoothQuant W4A4', async (t) => {
  const paths: string[] = [];
  for (const method of ['naive', 'smoothquant', 'svdquant'] as const) {
    const out = join(dir, `m-${method}.safetensors`);
    await quantizeCheckpoint({ input: model, output: out, method, ...fast });
    paths.push(out);
  }
  const [naive, smooth, svdq] = await quantNative.compareModels(model, paths, held);
  t.log({ naive, smooth, svdq });
  t.true(svdq < 0.6 * naive, 'vs naive');
  t.true(svdq < 0.8 * smooth, 'vs SmoothQuant');
});

test.serial('calibration sets run batched record what set-by-set calibration records', async (t) => {
  // The same calibration file, one forward for all sets (the default) and one per set.
  const layersOf = async (calibBatch: number | undefined) => {
    const out = join(dir, `b-${calibBatch ?? 'all'}.safetensors`);
    const r = await quantizeCheckpoint({ input: model, output: out, force: true, ...fast, calibBatch });
    return r.svdq.layers.filter((l) => l.relError !== null);
  };
  const batched = await layersOf(undefined), single = await layersOf(1);
  t.is(batched.length, single.length);
  t.true(batched.length > 10);
  for (let i = 0; i < batched.length; i++) {
    const a = batched[i]!, b = single[i]!;
    t.is(a.name, b.name);
    t.is(a.smoothing, b.smoothing, a.name);
    t.true(Math.abs(a.relError! - b.relError!) <= 1e-3 * b.relError!, `${a.name}: ${a.relError} vs ${b.relError}`);
  }
});

test.serial('bad input: clear errors, and no output (or temporary) left behind', async (t) => {
  const out = join(dir, 'bad.safetensors');
  await t.throwsAsync(quantizeCheckpoint({ input: model, output: out, ...fast, rank: 65 }), {
    message: /rank 65 exceeds min\(in, out\) = 64 of layer 'double_blocks\.0\.img_attn\.qkv'/,
  });
  const T = makeOutlierFlux(cfg);
  T.get('double_blocks.0.txt_mlp.0.weight')!.data[5] = Number.POSITIVE_INFINITY;
  const inf = join(dir, 'inf.safetensors');
  writeSafetensors(inf, T);
  await t.throwsAsync(quantizeCheckpoint({ input: inf, output: out, ...fast }), {
    message: /tensor 'double_blocks\.0\.txt_mlp\.0\.weight' holds a non-finite value/,
  });
  const wrong = join(dir, 'wrong-calib.safetensors');
  writeSafetensors(wrong, makeInputs({ ...cfg, contextDim: 48 }, 2, 1, 8, 16));
  await t.throwsAsync(quantizeCheckpoint({ input: model, output: out, ...fast, calib: wrong }), {
    message: /wrong-calib\.safetensors: calibration tensor 'context' has shape \[2, 16, 48\], the model needs \[2, \*, 64\]/,
  });
  await t.throwsAsync(quantizeCheckpoint({ input: model, output: model, ...fast }), { message: /output exists \(pass --force/ });
  await t.throwsAsync(quantizeCheckpoint({ input: model, output: out, ...fast, method: 'gptq' as 'naive' }), { message: /unknown method 'gptq'/ });
  const tol = parseQuantizeArgs([model, '-o', out, '--refine-tol', '1.5']).opts;
  t.is(tol.refineTol, 1.5);
  await t.throwsAsync(quantizeCheckpoint(tol), { message: /refine tolerance must be in \[0, 1\), got 1\.5/ });
  for (const [extra, msg] of [
    [{ rank: 0 }, /rank must be a positive integer, got 0/],
    [{ refine: 1.5 }, /refine must be a non-negative integer, got 1\.5/],
    [{ calibRows: 0 }, /calibration rows must be a positive integer, got 0/],
    [{ randomCalibSets: -1 }, /random calibration sets must be a positive integer, got -1/],
    [{ calibBatch: 0.5 }, /calibration batch must be a positive integer, got 0\.5/],
  ] as const)
    await t.throwsAsync(quantizeCheckpoint({ input: model, output: out, ...fast, ...extra }), { message: msg });
  const ac = new AbortController();
  const p = quantizeCheckpoint({ input: model, output: out, ...fast }, { signal: ac.signal, onProgress: (d) => d >= 2 && ac.abort() });
  await t.throwsAsync(p, { name: 'AbortError' });
  t.false(existsSync(out));
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('bad')), [], 'no temporaries');
});
