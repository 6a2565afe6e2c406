// Writes a random tiny FLUX checkpoint (BFL names, optionally ComfyUI-prefixed, F32 or BF16) and
// random inputs for it, so TypeScript tests need no Python. Weights ~ N(0, 1/fan_in) keep activations O(1).
import { addon } from '../../../sidecar/engine/addon.ts';
import { bytesOf, f32Tensor } from '../../../sidecar/engine/tensor.ts';
import type { ForwardInputs, TensorData } from '../../../sidecar/engine/types.ts';
import { SeededRandom } from '../../../sidecar/sampling/rng.ts';

export interface TinyFluxOptions {
  seed?: number;
  hidden?: number;
  heads?: number;
  depth?: number;
  single?: number;
  inChannels?: number;
  context?: number;
  vec?: number;
  mlpRatio?: number;
  guidance?: boolean;
  comfyPrefix?: boolean;
  dtype?: 'F32' | 'BF16';
}

export interface TinyFluxConfig {
  hidden: number;
  heads: number;
  headDim: number;
  depth: number;
  single: number;
  inChannels: number;
  context: number;
  vec: number;
  mlpHidden: number;
  guidance: boolean;
}

function toBf16(v: Float32Array): Uint8Array {
  const out = new Uint16Array(v.length);
  const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
  for (let i = 0; i < v.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16;
  return bytesOf(out);
}

export function tinyFluxTensors(opts: TinyFluxOptions = {}): { tensors: Record<string, TensorData>; config: TinyFluxConfig } {
  const rng = new SeededRandom(opts.seed ?? 1);
  const h = opts.hidden ?? 64, heads = opts.heads ?? 2, depth = opts.depth ?? 1, single = opts.single ?? 1;
  const C = opts.inChannels ?? 4, ctx = opts.context ?? 32, vec = opts.vec ?? 16;
  const m = Math.round(h * (opts.mlpRatio ?? 4));
  const guidance = opts.guidance ?? false;
  const tensors: Record<string, TensorData> = {};
  const put = (name: string, values: Float32Array, shape: number[]) => {
    const key = (opts.comfyPrefix ? 'model.diffusion_model.' : '') + name;
    tensors[key] = opts.dtype === 'BF16' ? { dtype: 'BF16', shape, data: toBf16(values) } : f32Tensor(values, shape);
  };
  const lin = (name: string, inF: number, outF: number) => {
    const w = rng.normal(inF * outF).map((v) => v / Math.sqrt(inF));
    put(`${name}.weight`, w, [outF, inF]);
    put(`${name}.bias`, rng.normal(outF).map((v) => 0.1 * v), [outF]);
  };
  const norm = (name: string) => put(name, rng.normal(h / heads).map((v) => 1 + 0.1 * v), [h / heads]);
  lin('img_in', 4 * C, h);
  lin('txt_in', ctx, h);
  lin('time_in.in_layer', 256, h);
  lin('time_in.out_layer', h, h);
  lin('vector_in.in_layer', vec, h);
  lin('vector_in.out_layer', h, h);
  if (guidance) {
    lin('guidance_in.in_layer', 256, h);
    lin('guidance_in.out_layer', h, h);
  }
  for (let i = 0; i < depth; i++) {
    const p = `double_blocks.${i}.`;
    for (const s of ['img', 'txt']) {
      lin(`${p}${s}_mod.lin`, h, 6 * h);
      lin(`${p}${s}_attn.qkv`, h, 3 * h);
      lin(`${p}${s}_attn.proj`, h, h);
      lin(`${p}${s}_mlp.0`, h, m);
      lin(`${p}${s}_mlp.2`, m, h);
      norm(`${p}${s}_attn.norm.query_norm.scale`);
      norm(`${p}${s}_attn.norm.key_norm.scale`);
    }
  }
  for (let i = 0; i < single; i++) {
    const p = `single_blocks.${i}.`;
    lin(`${p}modulation.lin`, h, 3 * h);
    lin(`${p}linear1`, h, 3 * h + m);
    lin(`${p}linear2`, h + m, h);
    norm(`${p}norm.query_norm.scale`);
    norm(`${p}norm.key_norm.scale`);
  }
  lin('final_layer.adaLN_modulation.1', h, 2 * h);
  lin('final_layer.linear', h, 4 * C);
  return {
    tensors,
    config: { hidden: h, heads, headDim: h / heads, depth, single, inChannels: C, context: ctx, vec, mlpHidden: m, guidance },
  };
}

/** Writes the checkpoint to `path` (overwriting) and returns its configuration. */
export async function writeTinyFlux(path: string, opts: TinyFluxOptions = {}): Promise<TinyFluxConfig> {
  const { tensors, config } = tinyFluxTensors(opts);
  addon().writeSafetensors(path, tensors, { format: 'pt' }, true);
  return config;
}

/** Random inputs for a tiny model: latent [B, C, H, W], T text tokens. */
export function tinyInputs(
  cfg: TinyFluxConfig,
  o: { seed?: number; batch?: number; height?: number; width?: number; textTokens?: number } = {},
): ForwardInputs {
  const rng = new SeededRandom(o.seed ?? 2);
  const B = o.batch ?? 1, H = o.height ?? 8, W = o.width ?? 8, T = o.textTokens ?? 4;
  const inputs: ForwardInputs = {
    x: f32Tensor(rng.normal(B * cfg.inChannels * H * W), [B, cfg.inChannels, H, W]),
    timestep: f32Tensor(Float32Array.from({ length: B }, () => rng.uniform()), [B]),
    context: f32Tensor(rng.normal(B * T * cfg.context), [B, T, cfg.context]),
    y: f32Tensor(rng.normal(B * cfg.vec), [B, cfg.vec]),
  };
  if (cfg.guidance) inputs.guidance = f32Tensor(Float32Array.from({ length: B }, () => 1 + 3 * rng.uniform()), [B]);
  return inputs;
}

/** Forward inputs as the tensors of an inputs file (`svdq forward --inputs`): ref_latents.<i> each. */
export function inputTensors(inp: ForwardInputs): Record<string, TensorData> {
  const { ref_latents: refs, ref_latents_method: _method, ...rest } = inp;
  const out: Record<string, TensorData> = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
  refs?.forEach((r, i) => (out[`ref_latents.${i}`] = r));
  return out;
}
