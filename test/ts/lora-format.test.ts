// LoRA file formats -> per-BFL-layer (A, B): every naming family gives the dense update the
// independent oracle in helpers/lora-fixtures.ts computes, and bad files fail naming the key.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LoraFormatError, parseLora, tensorToF32 } from '../../sidecar/formats/lora.ts';
import type { ParsedLora } from '../../sidecar/formats/lora.ts';
import type { TensorData } from '../../sidecar/engine/types.ts';
import { asBfl, asDiffusers, asKohya, denseDelta, randomLora, readSafetensorsFile, tinyFluxLayers, writeSafetensorsFile } from './helpers/lora-fixtures.ts';
import type { LoraFileContent } from './helpers/lora-fixtures.ts';

const layers = tinyFluxLayers();

/** Max |(B·A) - expected| / max|expected| over every layer; also checks the set of layers. */
function compare(t: { true(v: boolean, m?: string): void; deepEqual(a: unknown, b: unknown, m?: string): void }, parsed: ParsedLora, expected: Map<string, Float64Array>): number {
  t.deepEqual(parsed.patches.map((p) => p.layer).sort(), [...expected.keys()].sort(), 'patched layers');
  let worst = 0;
  for (const p of parsed.patches) {
    const e = expected.get(p.layer)!;
    let maxE = 0, maxD = 0;
    for (let o = 0; o < p.out; o++) {
      for (let c = 0; c < p.in; c++) {
        let v = 0;
        for (let k = 0; k < p.rank; k++) v += p.up[o * p.rank + k]! * p.down[k * p.in + c]!;
        const ev = e[o * p.in + c]!;
        t.true(Number.isFinite(v), `${p.layer}: finite`);
        maxE = Math.max(maxE, Math.abs(ev));
        maxD = Math.max(maxD, Math.abs(v - ev));
      }
    }
    worst = Math.max(worst, maxD / maxE);
  }
  return worst;
}

const formats: Array<[string, (l: ReturnType<typeof randomLora>) => LoraFileContent, string]> = [
  ['diffusers (transformer. prefix, PEFT alpha in metadata)', (l) => asDiffusers(l), 'diffusers'],
  ['diffusers (no prefix)', (l) => asDiffusers(l, ''), 'diffusers'],
  ['diffusers (base_model.model. prefix)', (l) => asDiffusers(l, 'base_model.model.'), 'diffusers'],
  ['kohya (fused qkv/linear1, BF16, alpha)', (l) => asKohya(l, layers), 'kohya'],
  ['BFL/ComfyUI lora_A/lora_B', (l) => asBfl(l, layers, 'peft'), 'bfl'],
  ['BFL/ComfyUI lora_down/lora_up + alpha', (l) => asBfl(l, layers, 'kohya'), 'bfl'],
];

for (const [name, encode, naming] of formats) {
  test(`${name}: every layer gets the LoRA's dense update`, (t) => {
    const lora = randomLora(layers, 1000 + name.length, { rank: 3, alpha: 5 });
    const parsed = parseLora(encode(lora), layers, { file: 'x.safetensors' });
    t.deepEqual(parsed.formats, [naming]);
    t.deepEqual(parsed.unmatched, []);
    const err = compare(t, parsed, denseDelta(lora, layers));
    // F32 products of BF16-exact factors; only summation order and the folded alpha/r differ.
    t.true(err < 1e-5, `relative error ${err}`);
  });
}

test('diffusers split q/k/v and proj_mlp fuse into qkv / linear1 with rank = sum of parts', (t) => {
  const lora = randomLora(layers, 7, { rank: 2 });
  const p = parseLora(asDiffusers(lora), layers);
  const linear1 = p.patches.find((x) => x.layer === 'single_blocks.1.linear1')!;
  t.is(linear1.rank, 8);
  t.deepEqual(linear1.sources, [
    'transformer.single_transformer_blocks.1.attn.to_q',
    'transformer.single_transformer_blocks.1.attn.to_k',
    'transformer.single_transformer_blocks.1.attn.to_v',
    'transformer.single_transformer_blocks.1.proj_mlp',
  ]);
  t.is(p.patches.find((x) => x.layer === 'double_blocks.0.txt_attn.qkv')!.rank, 6);
  t.is(p.patches.length, layers.size);
});

test('a LoRA on only some of q/k/v leaves the other rows untouched', (t) => {
  const lora = randomLora(layers, 8, { rank: 2, only: (n) => /transformer_blocks\.0\.attn\.(to_q|to_v)$/.test(n) });
  const p = parseLora(asDiffusers(lora), layers);
  t.deepEqual(p.patches.map((x) => x.layer), ['double_blocks.0.img_attn.qkv', 'single_blocks.0.linear1']);
  const err = compare(t, p, denseDelta(lora, layers));
  t.true(err < 1e-6, `${err}`);
  const qkv = p.patches[0]!;
  const D = 8;
  for (let o = D; o < 2 * D; o++) for (let k = 0; k < qkv.rank; k++) t.is(qkv.up[o * qkv.rank + k], 0, 'k rows are zero');
});

test('diffusers and kohya files of the same LoRA give the same factors product', (t) => {
  const lora = randomLora(layers, 9, { rank: 4, alpha: 16 });
  const a = parseLora(asDiffusers(lora), layers);
  const b = parseLora(asKohya(lora, layers), layers);
  t.is(a.patches.length, b.patches.length);
  for (let i = 0; i < a.patches.length; i++) {
    const x = a.patches[i]!, y = b.patches[i]!;
    t.is(x.layer, y.layer);
    t.deepEqual(x.down, y.down, `${x.layer} down`);
    for (let j = 0; j < x.up.length; j++) {
      if (Math.abs(x.up[j]! - y.up[j]!) > 1e-6 * Math.abs(x.up[j]!)) t.fail(`${x.layer} up[${j}] ${x.up[j]} vs ${y.up[j]}`);
    }
  }
});

test('kohya without alpha means scale 1; alpha 0 also means alpha = rank', (t) => {
  const lora = randomLora(layers, 10, { rank: 2, alpha: 2, only: (n) => n === 'proj_out' });
  const file = asKohya(lora, layers);
  delete file.tensors['lora_unet_final_layer_linear.alpha'];
  const p1 = parseLora(file, layers);
  t.true(compare(t, p1, denseDelta(lora, layers)) < 1e-6);
  file.tensors['lora_unet_final_layer_linear.alpha'] = { dtype: 'F32', shape: [], data: new Uint8Array(4) };
  const p2 = parseLora(file, layers);
  t.deepEqual(p2.patches[0]!.up, p1.patches[0]!.up);
});

test('PEFT alpha_pattern and a per-module .alpha override the global lora_alpha', (t) => {
  const lora = randomLora(layers, 11, { rank: 2, alpha: 2, only: (n) => n === 'proj_out' || n === 'x_embedder' });
  const file = asDiffusers(lora);
  file.metadata['lora_adapter_metadata'] = JSON.stringify({ r: 2, lora_alpha: 2, alpha_pattern: { x_embedder: 8 } });
  file.tensors['transformer.proj_out.alpha'] = { dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([1]).buffer) };
  const p = parseLora(file, layers);
  const base = parseLora(asDiffusers(lora), layers);
  const ratio = (layer: string): number => {
    const a = p.patches.find((x) => x.layer === layer)!.up, b = base.patches.find((x) => x.layer === layer)!.up;
    return a[0]! / b[0]!;
  };
  t.true(Math.abs(ratio('img_in') - 4) < 1e-6, `img_in ×${ratio('img_in')}`);
  t.true(Math.abs(ratio('final_layer.linear') - 0.5) < 1e-6, `final ×${ratio('final_layer.linear')}`);
});

test('diffusers without adapter metadata: scale 1', (t) => {
  const lora = randomLora(layers, 12, { rank: 3, alpha: 3 });
  const file = asDiffusers(lora);
  file.metadata = {};
  t.true(compare(t, parseLora(file, layers), denseDelta(lora, layers)) < 1e-5);
});

test('OneTrainer-style lora_transformer_ names (diffusers modules, kohya suffixes) map too', (t) => {
  const lora = randomLora(layers, 13, { rank: 2, only: (n) => n.startsWith('single_transformer_blocks.0.') });
  const src = asDiffusers(lora, '');
  const tensors: Record<string, TensorData> = {};
  for (const [k, v] of Object.entries(src.tensors)) {
    const m = /^(.*)\.lora_(A|B)\.weight$/.exec(k)!;
    tensors[`lora_transformer_${m[1]!.replace(/\./g, '_')}.lora_${m[2] === 'A' ? 'down' : 'up'}.weight`] = v;
  }
  const p = parseLora({ metadata: {}, tensors }, layers);
  t.deepEqual(p.formats, ['kohya']);
  t.true(compare(t, p, denseDelta(lora, layers)) < 1e-5);
});

test('text-encoder, unknown and unsupported keys are reported, not dropped', (t) => {
  const lora = randomLora(layers, 14, { rank: 2, only: (n) => n === 'proj_out' || n === 'x_embedder' });
  const file = asKohya(lora, layers);
  const z = { dtype: 'F32' as const, shape: [2, 4], data: new Uint8Array(32) };
  file.tensors['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight'] = z;
  file.tensors['lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight'] = z;
  file.tensors['text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight'] = z;
  file.tensors['something_else'] = z;
  file.tensors['lora_unet_final_layer_linear.dora_scale'] = z;
  file.tensors['lora_unet_img_in.hada_w1_a'] = z;
  const p = parseLora(file, layers);
  const why = Object.fromEntries(p.unmatched.map((u) => [u.key, u.reason]));
  t.regex(why['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight']!, /text-encoder/);
  t.regex(why['lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight']!, /no layer of this model/);
  t.regex(why['something_else']!, /not a LoRA tensor/);
  t.regex(why['text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight']!, /text-encoder/);
  t.regex(why['lora_unet_img_in.hada_w1_a']!, /LoHa/);
  // DoRA: the module is not applied at all (its plain LoRA part alone would be wrong).
  t.regex(why['lora_unet_final_layer_linear.dora_scale']!, /DoRA/);
  t.regex(why['lora_unet_final_layer_linear.lora_down.weight']!, /DoRA/);
  t.deepEqual(p.patches.map((x) => x.layer), ['img_in']);
});

test('diffusers -> BFL mapping agrees with tools/flux_torch\'s independent weight converter', (t) => {
  const lora = randomLora(layers, 40, { rank: 3, alpha: 6 });
  const dir = mkdtempSync(join(tmpdir(), 'svdq-lora-map-'));
  const src = join(dir, 'lora.safetensors');
  const dst = join(dir, 'delta.safetensors');
  writeSafetensorsFile(src, asDiffusers(lora));
  execFileSync('python3', [join(import.meta.dirname, 'helpers', 'lora_delta_via_flux_torch.py'), src, dst], { stdio: 'pipe' });
  const ref = readSafetensorsFile(dst).tensors;
  const expected = new Map<string, Float64Array>();
  for (const [k, v] of Object.entries(ref)) expected.set(k, Float64Array.from(new Float32Array(new Uint8Array(v.data).buffer)));
  t.is(expected.size, layers.size, 'the converter mapped every module');
  const err = compare(t, parseLora(asDiffusers(lora), layers), expected);
  t.true(err < 1e-5, `relative error ${err}`);
});

// --- bad input -------------------------------------------------------------------------------

function throwsNaming(t: { throws(fn: () => unknown, e?: unknown): unknown }, fn: () => unknown, re: RegExp): void {
  t.throws(fn, { instanceOf: LoraFormatError, message: re });
}

test('a factor that does not fit its layer names the key and both shapes', (t) => {
  const lora = randomLora(layers, 20, { rank: 2, only: (n) => n === 'transformer_blocks.1.ff.net.2' });
  const file = asKohya(lora, layers);
  const key = 'lora_unet_double_blocks_1_img_mlp_2.lora_down.weight';
  file.tensors[key] = { dtype: 'F32', shape: [2, 31], data: new Uint8Array(2 * 31 * 4) };
  throwsNaming(t, () => parseLora(file, layers, { file: 'bad.safetensors' }), /bad\.safetensors: lora_unet_double_blocks_1_img_mlp_2\.lora_down\.weight: shape \[2, 31\] does not fit layer 'double_blocks\.1\.img_mlp\.2': expected \[2, 32\]/);
  const d = asDiffusers(randomLora(layers, 21, { rank: 2, only: (n) => n === 'transformer_blocks.0.attn.to_k' }));
  d.tensors['transformer.transformer_blocks.0.attn.to_k.lora_B.weight'] = { dtype: 'F32', shape: [24, 2], data: new Uint8Array(24 * 2 * 4) };
  throwsNaming(t, () => parseLora(d, layers), /to_k\.lora_B\.weight: shape \[24, 2\] does not fit rows 8\.\.16 of layer 'double_blocks\.0\.img_attn\.qkv': expected \[8, 2\]/);
});

test('rank 0, mismatched ranks, NaN/Inf, a missing up: errors naming the key', (t) => {
  const base = (): LoraFileContent => asKohya(randomLora(layers, 22, { rank: 2, only: (n) => n === 'x_embedder' }), layers);
  let f = base();
  f.tensors['lora_unet_img_in.lora_down.weight'] = { dtype: 'F32', shape: [0, 16], data: new Uint8Array(0) };
  f.tensors['lora_unet_img_in.lora_up.weight'] = { dtype: 'F32', shape: [8, 0], data: new Uint8Array(0) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.lora_down\.weight: rank 0/);
  f = base();
  f.tensors['lora_unet_img_in.lora_up.weight'] = { dtype: 'F32', shape: [8, 3], data: new Uint8Array(8 * 3 * 4) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.lora_up\.weight: shape \[8, 3\] has rank 3 but .*has rank 2/);
  f = base();
  const bad = new Float32Array(2 * 16);
  bad[5] = NaN;
  f.tensors['lora_unet_img_in.lora_down.weight'] = { dtype: 'F32', shape: [2, 16], data: new Uint8Array(bad.buffer) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.lora_down\.weight: non-finite value NaN at element 5/);
  f = base();
  const inf = new Uint16Array(16);
  inf[3] = 0x7f80; // BF16 +Inf
  f.tensors['lora_unet_img_in.lora_up.weight'] = { dtype: 'BF16', shape: [8, 2], data: new Uint8Array(inf.buffer) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.lora_up\.weight: non-finite value Infinity at element 3/);
  f = base();
  f.tensors['lora_unet_img_in.alpha'] = { dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([NaN]).buffer) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.alpha: non-finite alpha/);
  f = base();
  delete f.tensors['lora_unet_img_in.lora_up.weight'];
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.(alpha|lora_down\.weight): module 'lora_unet_img_in' has no up/);
  f = base();
  f.tensors['lora_unet_img_in.lora_down.weight'] = { dtype: 'I32', shape: [2, 16], data: new Uint8Array(2 * 16 * 4) };
  throwsNaming(t, () => parseLora(f, layers), /lora_unet_img_in\.lora_down\.weight: dtype I32 is not a floating type/);
});

test('unknown format and a LoRA for another model are errors, with example keys', (t) => {
  const z = { dtype: 'F32' as const, shape: [2], data: new Uint8Array(8) };
  throwsNaming(t, () => parseLora({ metadata: {}, tensors: { 'model.layers.0.weight': z } }, layers, { file: 'm.safetensors' }), /m\.safetensors: unknown LoRA format.*'model\.layers\.0\.weight'/);
  throwsNaming(t, () => parseLora({ metadata: {}, tensors: {} }, layers), /unknown LoRA format.*no tensors/);
  const sdxl = { 'lora_unet_input_blocks_4_1_proj_in.lora_down.weight': z, 'lora_unet_input_blocks_4_1_proj_in.lora_up.weight': z };
  throwsNaming(t, () => parseLora({ metadata: {}, tensors: sdxl }, layers), /matches no layer of this model; e\.g\. 'lora_unet_input_blocks_4_1_proj_in/);
  throwsNaming(t, () => parseLora({ metadata: { lora_adapter_metadata: '{oops' }, tensors: sdxl }, layers), /lora_adapter_metadata' is not valid JSON/);
});

test('tensorToF32 decodes F16 and BF16 exactly, and rejects a short buffer', (t) => {
  const h = new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7bff, 0xfc00, 0x3555]);
  const v = tensorToF32({ dtype: 'F16', shape: [6], data: new Uint8Array(h.buffer) }, 'k');
  t.deepEqual([...v], [1, -2, 2 ** -24, 65504, -Infinity, Math.fround(0.333251953125)]);
  const b = new Uint16Array([0x3f80, 0xbfc0]);
  t.deepEqual([...tensorToF32({ dtype: 'BF16', shape: [2], data: new Uint8Array(b.buffer) }, 'k')], [1, -1.5]);
  // unaligned view into a larger buffer (as a file reader may hand out)
  const buf = new Uint8Array(9);
  buf.set(new Uint8Array(new Float32Array([3.5, -1]).buffer), 1);
  t.deepEqual([...tensorToF32({ dtype: 'F32', shape: [2], data: buf.subarray(1) }, 'k')], [3.5, -1]);
  t.throws(() => tensorToF32({ dtype: 'F32', shape: [3], data: new Uint8Array(8) }, 'key9'), { message: /key9: 8 bytes do not hold F32 \[3\]/ });
});
