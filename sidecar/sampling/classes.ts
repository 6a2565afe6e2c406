// Class-conditioned sampling with the bundled model: per-sample seeds (so two models can be compared
// on identical noise), the conditioning table as context/pooled vector, optional classifier-free guidance.
import type { Engine } from '../engine/engine.ts';
import { f32Tensor, f32Values } from '../engine/tensor.ts';
import { fluxSigmas, sampleEuler } from './flow.ts';
import { SeededRandom } from './rng.ts';

export interface ConditioningTable {
  context: Float32Array; // [classes, T, D]
  y: Float32Array; // [classes, V]
  contextUncond?: Float32Array; // [1, T, D]
  yUncond?: Float32Array; // [1, V]
  tokens: number;
  contextDim: number;
  vecDim: number;
}

export interface ClassSampleOptions {
  labels: number[];
  seeds: number[];
  steps: number;
  mu: number;
  cfg?: number;
  latentShape: [number, number, number]; // C, H, W
  onStep?: (step: number, total: number) => void;
}

/** Samples one latent per (label, seed) in one batch; returns [N, C, H, W] and the seconds per step. */
export async function sampleClasses(engine: Engine, cond: ConditioningTable, o: ClassSampleOptions): Promise<{ latents: Float32Array; secondsPerStep: number }> {
  const n = o.labels.length;
  if (o.seeds.length !== n) throw new Error('sampleClasses: one seed per label');
  const [C, H, W] = o.latentShape;
  const per = C * H * W;
  const noise = new Float32Array(n * per);
  o.seeds.forEach((s, i) => noise.set(new SeededRandom(s).normal(per), i * per));
  const { tokens: T, contextDim: D, vecDim: V } = cond;
  const cfg = o.cfg ?? 1;
  const useCfg = cfg !== 1;
  if (useCfg && (!cond.contextUncond || !cond.yUncond)) throw new Error('classifier-free guidance needs the unconditional entry');
  const rows = useCfg ? 2 * n : n;
  const context = new Float32Array(rows * T * D);
  const y = new Float32Array(rows * V);
  o.labels.forEach((c, i) => {
    context.set(cond.context.subarray(c * T * D, (c + 1) * T * D), i * T * D);
    y.set(cond.y.subarray(c * V, (c + 1) * V), i * V);
    if (useCfg) {
      context.set(cond.contextUncond!, (n + i) * T * D);
      y.set(cond.yUncond!, (n + i) * V);
    }
  });
  const ctxT = f32Tensor(context, [rows, T, D]);
  const yT = f32Tensor(y, [rows, V]);
  let seconds = 0;
  const model = async (x: Float32Array, sigma: number) => {
    const xs = useCfg ? concat(x, x) : x;
    const t0 = performance.now();
    const out = f32Values(
      await engine.forward({ x: f32Tensor(xs, [rows, C, H, W]), timestep: f32Tensor(new Float32Array(rows).fill(sigma), [rows]), context: ctxT, y: yT }),
    );
    seconds += (performance.now() - t0) / 1000;
    if (!useCfg) return out;
    const v = new Float32Array(n * per);
    for (let i = 0; i < v.length; i++) v[i] = out[n * per + i] + cfg * (out[i] - out[n * per + i]);
    return v;
  };
  const latents = await sampleEuler(model, noise, fluxSigmas(o.steps, o.mu), o.onStep);
  return { latents, secondsPerStep: seconds / o.steps };
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
