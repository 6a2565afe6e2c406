// Time to apply a rank-32 LoRA to FLUX.1-dev's layers after the file is read (goal: < 1 s).
//   node --import tsx bench/lora.ts [--rank 32] [--repeat 3]
// Phases: map the file's tensors onto the layers (BF16 -> F32, alpha folded in), then attach
// through the native binding (copy into the engine, worker thread, exclusive lock), then rescale
// and remove. The model here is FLUX.1-dev's full set of linear shapes with no weights behind them
// (attaching never reads or writes base weights, quantized or not), because building and
// quantizing the 12B-parameter model on this CPU machine is out of reach for a benchmark.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { planLora } from '../sidecar/formats/lora.ts';
import type { LoraLayerPlan } from '../sidecar/formats/lora.ts';
import { fluxDevLayers, kohyaLoraForBlocks } from './lora-shapes.ts';

const { values } = parseArgs({ options: { rank: { type: 'string', default: '32' }, repeat: { type: 'string', default: '3' } } });
const rank = Number(values.rank);
const repeat = Number(values.repeat);

interface Addon {
  loraShapeModel(shapes: Record<string, [number, number]>): unknown;
  attachLora(model: unknown, id: number, layers: LoraLayerPlan[], strength: number, file: string): Promise<number>;
  setLoraStrength(model: unknown, id: number, s: number): Promise<number>;
  removeLora(model: unknown, id: number): Promise<number>;
}
const addon = createRequire(import.meta.url)('../native/build/Release/svdq.node') as Addon;

const layers = fluxDevLayers();
const tensors = kohyaLoraForBlocks(layers, rank);
const fileBytes = Object.values(tensors).reduce((s, t) => s + t.data.byteLength, 0);
const model = addon.loraShapeModel(Object.fromEntries([...layers].map(([n, s]) => [n, [s.in, s.out]])));
console.log(`FLUX.1-dev shapes: ${layers.size} linears; rank-${rank} kohya LoRA on the blocks: ${Object.keys(tensors).length} tensors, ${(fileBytes / 2 ** 20).toFixed(0)} MiB (BF16)`);

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
for (let i = 1; i <= repeat; i++) {
  let t0 = process.hrtime.bigint();
  const parsed = planLora({ metadata: {}, tensors }, layers, { file: 'bench' });
  const tParse = ms(t0);
  t0 = process.hrtime.bigint();
  const patched = await addon.attachLora(model, i, parsed.layers, 1, 'bench');
  const tAttach = ms(t0);
  t0 = process.hrtime.bigint();
  await addon.setLoraStrength(model, i, 0.6);
  const tScale = ms(t0);
  t0 = process.hrtime.bigint();
  await addon.removeLora(model, i);
  const tRemove = ms(t0);
  console.log(
    `run ${i}: map ${tParse.toFixed(0)} ms + decode/fuse/attach ${tAttach.toFixed(0)} ms = apply ${(tParse + tAttach).toFixed(0)} ms ` +
      `(${patched} layers); set strength ${tScale.toFixed(2)} ms; remove ${tRemove.toFixed(1)} ms`,
  );
}
