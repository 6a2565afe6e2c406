// LoraStack (engine facade for LoRAs) over the native binding on a shape-only model, with real files.
import test from 'ava';
import { mkdtempSync, utimesSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LoraFormatError, LoraStack, UnknownLoraError } from '../../sidecar/engine/lora.ts';
import type { LoraNative } from '../../sidecar/engine/lora.ts';
import { asDiffusers, asKohya, randomLora, readSafetensorsFile, tinyFluxLayers, writeSafetensorsFile } from './helpers/lora-fixtures.ts';

type Fn = (...a: unknown[]) => unknown;
const addon = createRequire(import.meta.url)('../../native/build/Release/svdq.node') as Record<string, Fn>;
const layers = tinyFluxLayers();
const dir = mkdtempSync(join(tmpdir(), 'svdq-lora-'));

function newStack(): { stack: LoraStack; state: () => Array<{ layer: string; loras: Array<{ id: number; rank: number; strength: number }> }> } {
  const m = addon.loraShapeModel!(Object.fromEntries([...layers].map(([n, s]) => [n, [s.in, s.out]])));
  const native: LoraNative = {
    loraLayers: () => addon.loraLayers!(m) as ReturnType<LoraNative['loraLayers']>,
    attachLora: (id, l, s, f) => addon.attachLora!(m, id, l, s, f) as Promise<number>,
    setLoraStrength: (id, s) => addon.setLoraStrength!(m, id, s) as Promise<number>,
    removeLora: (id) => addon.removeLora!(m, id) as Promise<number>,
  };
  return { stack: new LoraStack(native, readSafetensorsFile), state: () => addon.loraState!(m) as never };
}

const style = join(dir, 'style.safetensors');
const single = join(dir, 'single.safetensors');
writeSafetensorsFile(style, asDiffusers(randomLora(layers, 1, { rank: 2 })));
const singleContent = asKohya(randomLora(layers, 2, { rank: 4, only: (n) => n.startsWith('single_') }), layers);
singleContent.tensors['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight'] = singleContent.tensors['lora_unet_single_blocks_0_linear2.lora_down.weight']!;
writeSafetensorsFile(single, singleContent);

test('add reports patched layers and unmatched keys; strength and removal', async (t) => {
  const { stack, state } = newStack();
  const a = await stack.add(style, 0.7);
  t.is(a.patched, layers.size);
  t.deepEqual(a.unmatched, []);
  t.deepEqual(a.formats, ['diffusers']);
  const b = await stack.add(single);
  t.is(b.patched, 6);
  t.deepEqual(b.unmatched.map((u) => u.key), ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight']);
  t.regex(b.unmatched[0]!.reason, /text-encoder/);
  await stack.setStrength(a.id, 0);
  t.deepEqual(stack.list().map((l) => [l.name, l.strength, l.patched]), [['style.safetensors', 0, layers.size], ['single.safetensors', 1, 6]]);
  t.is(state().find((l) => l.layer === 'img_in')!.loras[0]!.strength, 0);
  await stack.remove(a.id);
  t.false(state().some((l) => l.layer === 'img_in'));
  await t.throwsAsync(stack.remove(a.id), { instanceOf: UnknownLoraError });
  await t.throwsAsync(stack.setStrength(99, 1), { instanceOf: UnknownLoraError });
  await t.throwsAsync(stack.setStrength(b.id, Infinity), { instanceOf: RangeError });
});

test('a bad file is refused with the key named and nothing changes', async (t) => {
  const { stack, state } = newStack();
  await stack.add(single);
  const before = JSON.stringify(state());
  const bad = join(dir, 'bad.safetensors');
  const c = asKohya(randomLora(layers, 3, { rank: 2, only: (n) => n === 'proj_out' }), layers);
  c.tensors['lora_unet_final_layer_linear.lora_up.weight'] = { dtype: 'F32', shape: [15, 2], data: new Uint8Array(120) };
  writeSafetensorsFile(bad, c);
  await t.throwsAsync(stack.add(bad), { instanceOf: LoraFormatError, message: /bad\.safetensors: lora_unet_final_layer_linear\.lora_up\.weight: shape \[15, 2\] does not fit layer 'final_layer\.linear': expected \[16, 2\]/ });
  t.is(JSON.stringify(state()), before);
  t.is(stack.list().length, 1);
});

test('sync makes the attached set what a graph asks for', async (t) => {
  const { stack, state } = newStack();
  const added = await stack.sync([{ path: style, strength: 0.5 }, { path: single, strength: 1 }, { path: style, strength: 0.25 }]);
  t.is(added.length, 2);
  t.deepEqual(stack.list().map((l) => [l.name, l.strength]), [['style.safetensors', 0.75], ['single.safetensors', 1]]);
  const ids = stack.list().map((l) => l.id);
  t.deepEqual(await stack.sync([{ path: style, strength: 0.75 }, { path: single, strength: 2 }]), []);
  t.deepEqual(stack.list().map((l) => l.id), ids, 'no reload for a strength change');
  t.is(state().find((l) => l.layer === 'single_blocks.1.linear1')!.loras[1]!.strength, 2);
  await stack.sync([{ path: single, strength: 2 }]);
  t.deepEqual(stack.list().map((l) => l.name), ['single.safetensors']);
  // a file rewritten on disk is read again
  utimesSync(single, new Date(), new Date(Date.now() + 5000));
  const again = await stack.sync([{ path: single, strength: 2 }]);
  t.is(again.length, 1);
  t.not(stack.list()[0]!.id, ids[1]);
  await stack.sync([]);
  t.deepEqual(state(), []);
});
