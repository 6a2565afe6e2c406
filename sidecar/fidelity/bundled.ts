// The bundled default model (models/flux-fmnist): its files, conditioning table and sampling settings.
import { fileURLToPath } from 'node:url';
import { addon } from '../engine/addon.ts';
import { f32Values } from '../engine/tensor.ts';
import type { ConditioningTable } from '../sampling/classes.ts';

export const BUNDLED_DIR = fileURLToPath(new URL('../../models/flux-fmnist/', import.meta.url));

export interface BundledModel {
  model: string;
  classifier: string;
  classes: string[];
  cond: ConditioningTable;
  mu: number;
  steps: number;
  latentShape: [number, number, number];
}

export function loadBundled(dir = BUNDLED_DIR): BundledModel {
  const a = addon();
  const model = `${dir}model.safetensors`;
  const meta = a.inspectSafetensors(model).metadata;
  const sampling = JSON.parse(meta.sampling ?? '{}') as { mu?: number; steps?: number };
  const c = a.readSafetensors(`${dir}conditioning.safetensors`);
  const t = c.tensors;
  for (const k of ['context', 'y']) if (!t[k]) throw new Error(`${dir}conditioning.safetensors: missing tensor '${k}'`);
  const [, T, D] = t.context.shape;
  return {
    model,
    classifier: `${dir}classifier.safetensors`,
    classes: JSON.parse(c.metadata.classes ?? '[]') as string[],
    cond: {
      context: Float32Array.from(f32Values(t.context)),
      y: Float32Array.from(f32Values(t.y)),
      contextUncond: t.context_uncond ? Float32Array.from(f32Values(t.context_uncond)) : undefined,
      yUncond: t.y_uncond ? Float32Array.from(f32Values(t.y_uncond)) : undefined,
      tokens: T,
      contextDim: D,
      vecDim: t.y.shape[1],
    },
    mu: sampling.mu ?? 0.5,
    steps: sampling.steps ?? 20,
    latentShape: [4, 16, 16],
  };
}
