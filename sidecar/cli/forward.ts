// `svdq forward --model CKPT --inputs IN.safetensors -o OUT.safetensors`: one transformer call.
import { parseArgs } from 'node:util';
import { addon } from '../engine/addon.ts';
import { Engine } from '../engine/engine.ts';
import type { ForwardInputs } from '../engine/types.ts';
import { parseLoraArgs } from './lora-args.ts';

export const USAGE = `svdq forward --model CKPT --inputs IN.safetensors -o OUT.safetensors [--axes 16,56,56]
             [--lora FILE[:STRENGTH] ...] [--force]

Reads x [B,C,H,W], timestep [B], context [B,T,D], y [B,V] and optionally guidance [B] from IN and
writes the model's output under 'out' in OUT.`;

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
  const file = a.readSafetensors(values.inputs);
  const known = new Set(['x', 'timestep', 'context', 'y', 'guidance']);
  for (const k of Object.keys(file.tensors))
    if (!known.has(k)) throw new Error(`${values.inputs}: unexpected tensor '${k}' (expected x, timestep, context, y, guidance)`);
  for (const k of ['x', 'timestep', 'context', 'y'])
    if (!file.tensors[k]) throw new Error(`${values.inputs}: missing tensor '${k}'`);
  const engine = await Engine.load(values.model, { axesDim });
  for (const l of parseLoraArgs(values.lora)) {
    const r = await engine.addLora(l.path, l.strength);
    console.error(`lora ${l.path}: ${r.patched} layers patched${r.unmatched.length ? `, ${r.unmatched.length} keys unmatched` : ''}`);
    for (const u of r.unmatched) console.error(`  unmatched ${u.key}: ${u.reason}`);
  }
  const t0 = performance.now();
  const out = await engine.forward(file.tensors as unknown as ForwardInputs);
  console.error(`forward: ${(performance.now() - t0).toFixed(1)} ms`);
  a.writeSafetensors(values.output, { out }, {}, values.force ?? false);
  engine.dispose();
  return 0;
}
