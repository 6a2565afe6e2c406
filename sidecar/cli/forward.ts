// `svdq forward --model CKPT --inputs IN.safetensors -o OUT.safetensors`: one transformer call.
import { parseArgs } from 'node:util';
import { addon, type SafetensorsContents } from '../engine/addon.ts';
import { Engine } from '../engine/engine.ts';
import { REF_LATENTS_METHODS, type ForwardInputs, type RefLatentsMethod, type TensorData } from '../engine/types.ts';
import { parseLoraArgs } from './lora-args.ts';

export const USAGE = `svdq forward --model CKPT --inputs IN.safetensors -o OUT.safetensors [--axes 16,56,56]
             [--lora FILE[:STRENGTH] ...] [--force]

Reads x [B,C,H,W], timestep [B], context [B,T,D], y [B,V] and optionally guidance [B],
attention_mask and Kontext reference latents ref_latents.0, ref_latents.1, ... from IN (metadata
ref_latents_method: offset, index or uxo) and writes the model's output under 'out' in OUT.`;

const NAMES = ['x', 'timestep', 'context', 'y', 'guidance', 'attention_mask'];

/** The forward inputs a safetensors file holds, with reference latents under ref_latents.<i>. */
export function readForwardInputs(path: string, file: SafetensorsContents): ForwardInputs {
  const refs: TensorData[] = [];
  for (const k of Object.keys(file.tensors)) {
    const m = /^ref_latents\.(\d+)$/.exec(k);
    if (m) refs[Number(m[1])] = file.tensors[k];
    else if (!NAMES.includes(k)) throw new Error(`${path}: unexpected tensor '${k}' (expected ${NAMES.join(', ')}, ref_latents.<i>)`);
  }
  const gap = Array.from(refs, (r, i) => (r ? -1 : i)).find((i) => i >= 0);
  if (gap !== undefined) throw new Error(`${path}: missing tensor 'ref_latents.${gap}' (reference latents are numbered from 0)`);
  for (const k of ['x', 'timestep', 'context', 'y'])
    if (!file.tensors[k]) throw new Error(`${path}: missing tensor '${k}'`);
  const inputs = Object.fromEntries(Object.entries(file.tensors).filter(([k]) => NAMES.includes(k))) as unknown as ForwardInputs;
  if (refs.length) inputs.ref_latents = refs;
  const method = file.metadata.ref_latents_method;
  if (method !== undefined) {
    if (!(REF_LATENTS_METHODS as readonly string[]).includes(method))
      throw new Error(`${path}: metadata ref_latents_method '${method}' is not one of ${REF_LATENTS_METHODS.join(', ')}`);
    inputs.ref_latents_method = method as RefLatentsMethod;
  }
  return inputs;
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      inputs: { type: 'string' },
      output: { type: 'string', short: 'o' },
      axes: { type: 'string' },
      lora: { type: 'string', multiple: true },
      force: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.model || !values.inputs || !values.output) throw new Error(`--model, --inputs and -o are required\n${USAGE}`);
  const axesDim = values.axes?.split(',').map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`--axes: '${values.axes}' is not a list of positive integers`);
    return n;
  });
  const a = addon();
  const inputs = readForwardInputs(values.inputs, a.readSafetensors(values.inputs));
  const engine = await Engine.load(values.model, { axesDim });
  for (const l of parseLoraArgs(values.lora)) {
    const r = await engine.addLora(l.path, l.strength);
    console.error(`lora ${l.path}: ${r.patched} layers patched${r.unmatched.length ? `, ${r.unmatched.length} keys unmatched` : ''}`);
    for (const u of r.unmatched) console.error(`  unmatched ${u.key}: ${u.reason}`);
  }
  const t0 = performance.now();
  const out = await engine.forward(inputs);
  console.error(`forward: ${(performance.now() - t0).toFixed(1)} ms`);
  a.writeSafetensors(values.output, { out }, {}, values.force ?? false);
  engine.dispose();
  return 0;
}
