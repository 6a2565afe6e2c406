// The native LoRA binding on a shape-only model: attach is all-or-nothing, errors name the file and
// key, strength/removal touch exactly the LoRA's layers. (Values and forwards: lora-engine.test.ts.)
import test from 'ava';
import { createRequire } from 'node:module';
import { materializeLayer, planLora } from '../../sidecar/formats/lora.ts';
import type { LoraLayerPlan } from '../../sidecar/formats/lora.ts';
import { asBfl, asDiffusers, asKohya, randomLora, tinyFluxLayers } from './helpers/lora-fixtures.ts';
import type { TensorData } from '../../sidecar/engine/types.ts';

interface Addon {
  loraShapeModel(shapes: Record<string, [number, number]>): unknown;
  attachLora(model: unknown, id: number, layers: LoraLayerPlan[], strength: number, file: string): Promise<number>;
  setLoraStrength(model: unknown, id: number, s: number): Promise<number>;
  removeLora(model: unknown, id: number): Promise<number>;
  loraFactors(model: unknown, layer: string): Array<{ id: number; strength: number; down: Float32Array; up: Float32Array }>;
  loraState(model: unknown): Array<{ layer: string; loras: Array<{ id: number; rank: number; strength: number }> }>;
}
const addon = createRequire(import.meta.url)('../../native/build/Release/svdq.node') as Addon;
const layers = tinyFluxLayers();
const newModel = (): unknown => addon.loraShapeModel(Object.fromEntries([...layers].map(([n, s]) => [n, [s.in, s.out]])));

test('attach, rescale, stack and remove', async (t) => {
  const m = newModel();
  const a = planLora(asDiffusers(randomLora(layers, 1, { rank: 2 })), layers);
  const b = planLora(asKohya(randomLora(layers, 2, { rank: 3, only: (n) => n.startsWith('single_') }), layers), layers);
  t.is(await addon.attachLora(m, 1, a.layers, 0.5, 'a'), layers.size);
  t.is(await addon.attachLora(m, 2, b.layers, 1, 'b'), 6);
  const linear1 = addon.loraState(m).find((l) => l.layer === 'single_blocks.0.linear1')!;
  t.deepEqual(linear1.loras, [{ id: 1, rank: 8, strength: 0.5 }, { id: 2, rank: 12, strength: 1 }]);
  t.is(await addon.setLoraStrength(m, 1, -0.25), layers.size);
  t.is(addon.loraState(m).find((l) => l.layer === 'img_in')!.loras[0]!.strength, -0.25);
  t.is(await addon.removeLora(m, 1), layers.size);
  t.deepEqual(addon.loraState(m).map((l) => l.layer).sort(), b.layers.map((l) => l.layer).sort());
  t.deepEqual(addon.loraState(m).find((l) => l.layer === 'single_blocks.0.linear1')!.loras, [{ id: 2, rank: 12, strength: 1 }]);
  await t.throwsAsync(addon.removeLora(m, 1), { message: /no LoRA with id 1/ });
  await t.throwsAsync(addon.setLoraStrength(m, 7, 1), { message: /no LoRA with id 7/ });
  await t.throwsAsync(addon.attachLora(m, 2, b.layers, 1, 'b'), { message: /LoRA id 2 is already attached/ });
  await t.throwsAsync(addon.setLoraStrength(m, 2, NaN), { message: /strength must be finite/ });
});

test('a NaN deep inside one layer rejects the whole LoRA, naming file and key; the model is unchanged', async (t) => {
  const m = newModel();
  const file = asKohya(randomLora(layers, 3, { rank: 2 }), layers);
  const key = 'lora_unet_double_blocks_1_txt_mlp_0.lora_up.weight';
  const up = file.tensors[key]!;
  const bytes = new Uint8Array(up.data); // BF16 [32, 2]
  bytes[2 * 45 + 1] = 0x7f; // element 45 -> 0x7fc0.. = NaN
  bytes[2 * 45] = 0xc0;
  file.tensors[key] = { ...up, data: bytes };
  const plan = planLora(file, layers, { file: 'nan.safetensors' });
  await t.throwsAsync(addon.attachLora(m, 1, plan.layers, 1, 'nan.safetensors'), {
    message: `nan.safetensors: ${key}: non-finite value NaN at element 45`,
  });
  t.deepEqual(addon.loraState(m), []);
  // still usable: a good LoRA attaches afterwards
  const good = planLora(asKohya(randomLora(layers, 4, { rank: 2 }), layers), layers);
  t.is(await addon.attachLora(m, 1, good.layers, 1, 'good'), layers.size);
});

test('a plan that lies about sizes or layers is refused before anything is read', async (t) => {
  const m = newModel();
  const plan = planLora(asDiffusers(randomLora(layers, 5, { rank: 2, only: (n) => n === 'proj_out' || n === 'x_embedder' })), layers);
  const lie = (f: (l: LoraLayerPlan[]) => void): LoraLayerPlan[] => {
    const copy = plan.layers.map((l) => ({ ...l, parts: l.parts.map((p) => ({ ...p })) }));
    f(copy);
    return copy;
  };
  await t.throwsAsync(addon.attachLora(m, 1, lie((l) => { l[0]!.parts[0]!.rank = 5; l[0]!.rank = 5; }), 1, 'f'), { message: /f: transformer\.proj_out\.lora_A\.weight: 64 bytes do not hold \[5, 8\]/ });
  await t.throwsAsync(addon.attachLora(m, 1, lie((l) => { l[1]!.parts[0]!.rows = 99; }), 1, 'f'), { message: /x_embedder\.lora_B\.weight: rows 0\.\.99 do not fit layer 'img_in' with 8 outputs/ });
  await t.throwsAsync(addon.attachLora(m, 1, lie((l) => { l[0]!.layer = 'nope'; }), 1, 'f'), { message: /f: layer 'nope': the model has no such linear layer/ });
  await t.throwsAsync(addon.attachLora(m, 1, lie((l) => { l[0]!.rank = 0; }), 1, 'f'), { message: /rank 0/ });
  await t.throwsAsync(addon.attachLora(m, 1, lie((l) => { l[0]!.parts[0]!.down = { dtype: 'I32', shape: [2, 8], data: new Uint8Array(64) }; }), 1, 'f'), { message: /not a floating type/ });
  t.deepEqual(addon.loraState(m), []);
  await t.throwsAsync(addon.attachLora({}, 1, plan.layers, 1, 'f'), { message: /expected a loaded Engine \(not disposed\)/ });
});

/** Re-encodes every factor of a file as F16 (values stay exact: fixtures are BF16-exact and in F16 range... mostly). */
function toF16(t: TensorData): TensorData {
  if (t.dtype !== 'F32' || t.shape.length !== 2) return t;
  const f = new Float32Array(new Uint8Array(t.data).buffer);
  const h = new Uint16Array(f.length);
  const view = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < f.length; i++) {
    // exact for normal F16 values; fixture magnitudes (>= 2^-14 for almost all) round otherwise
    view.setFloat32(0, f[i]!);
    const x = view.getUint32(0);
    const sign = (x >>> 16) & 0x8000;
    const e = ((x >>> 23) & 0xff) - 127 + 15;
    h[i] = e <= 0 ? sign : sign | (e << 10) | ((x >>> 13) & 0x3ff);
  }
  return { dtype: 'F16', shape: t.shape, data: new Uint8Array(h.buffer) };
}

test('native decode+fuse equals the TS reference bit for bit (F32, BF16, F16; split, swapped, scaled)', async (t) => {
  const lora = randomLora(layers, 31, { rank: 3, alpha: 7 });
  const f16 = asBfl(lora, layers, 'kohya');
  for (const k of Object.keys(f16.tensors)) f16.tensors[k] = toF16(f16.tensors[k]!);
  const files = { diffusers: asDiffusers(lora), kohya: asKohya(lora, layers), bflF16: f16 };
  for (const [name, content] of Object.entries(files)) {
    const m = newModel();
    const plan = planLora(content, layers, { file: name });
    t.is(await addon.attachLora(m, 3, plan.layers, 0.8, name), layers.size);
    for (const lp of plan.layers) {
      const ref = materializeLayer(lp, name);
      const [got] = addon.loraFactors(m, lp.layer);
      t.is(got!.id, 3);
      t.true(Math.abs(got!.strength - 0.8) < 1e-7);
      t.deepEqual(got!.down, ref.down, `${name} ${lp.layer} down`);
      t.deepEqual(got!.up, ref.up, `${name} ${lp.layer} up`);
    }
  }
});
