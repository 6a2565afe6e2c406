// Random FLUX LoRAs written in each naming family from ONE set of factors, plus the dense update
// ΔW every family must produce, computed here independently of sidecar/formats (own name table).
import { readFileSync, writeFileSync } from 'node:fs';
import type { TensorData } from '../../../sidecar/engine/types.ts';
import { SeededRandom } from '../../../sidecar/sampling/rng.ts';

export interface Shape {
  in: number;
  out: number;
}

/** A diffusers-named module: its BFL layer and output rows there. */
interface ModuleSpec {
  diffusers: string;
  layer: string;
  rowStart: number;
  rowEnd: number;
  swap: boolean;
}

/** Hard-coded diffusers <-> BFL table (the oracle; the product derives its own from shapes). */
export function moduleTable(layers: Map<string, Shape>): ModuleSpec[] {
  const out: ModuleSpec[] = [];
  const add = (diffusers: string, layer: string, rowStart?: number, rowEnd?: number, swap = false): void => {
    const s = layers.get(layer);
    if (!s) return;
    out.push({ diffusers, layer, rowStart: rowStart ?? 0, rowEnd: rowEnd ?? s.out, swap });
  };
  add('x_embedder', 'img_in');
  add('context_embedder', 'txt_in');
  add('time_text_embed.timestep_embedder.linear_1', 'time_in.in_layer');
  add('time_text_embed.timestep_embedder.linear_2', 'time_in.out_layer');
  add('time_text_embed.guidance_embedder.linear_1', 'guidance_in.in_layer');
  add('time_text_embed.guidance_embedder.linear_2', 'guidance_in.out_layer');
  add('time_text_embed.text_embedder.linear_1', 'vector_in.in_layer');
  add('time_text_embed.text_embedder.linear_2', 'vector_in.out_layer');
  add('norm_out.linear', 'final_layer.adaLN_modulation.1', undefined, undefined, true);
  add('proj_out', 'final_layer.linear');
  for (let i = 0; layers.has(`double_blocks.${i}.img_attn.qkv`); i++) {
    const D = layers.get(`double_blocks.${i}.img_attn.qkv`)!.in;
    const d = `transformer_blocks.${i}`;
    const b = `double_blocks.${i}`;
    add(`${d}.norm1.linear`, `${b}.img_mod.lin`);
    add(`${d}.norm1_context.linear`, `${b}.txt_mod.lin`);
    add(`${d}.attn.to_q`, `${b}.img_attn.qkv`, 0, D);
    add(`${d}.attn.to_k`, `${b}.img_attn.qkv`, D, 2 * D);
    add(`${d}.attn.to_v`, `${b}.img_attn.qkv`, 2 * D, 3 * D);
    add(`${d}.attn.add_q_proj`, `${b}.txt_attn.qkv`, 0, D);
    add(`${d}.attn.add_k_proj`, `${b}.txt_attn.qkv`, D, 2 * D);
    add(`${d}.attn.add_v_proj`, `${b}.txt_attn.qkv`, 2 * D, 3 * D);
    add(`${d}.attn.to_out.0`, `${b}.img_attn.proj`);
    add(`${d}.attn.to_add_out`, `${b}.txt_attn.proj`);
    add(`${d}.ff.net.0.proj`, `${b}.img_mlp.0`);
    add(`${d}.ff.net.2`, `${b}.img_mlp.2`);
    add(`${d}.ff_context.net.0.proj`, `${b}.txt_mlp.0`);
    add(`${d}.ff_context.net.2`, `${b}.txt_mlp.2`);
  }
  for (let i = 0; layers.has(`single_blocks.${i}.linear1`); i++) {
    const s = layers.get(`single_blocks.${i}.linear1`)!;
    const D = s.in;
    const d = `single_transformer_blocks.${i}`;
    const b = `single_blocks.${i}`;
    add(`${d}.norm.linear`, `${b}.modulation.lin`);
    add(`${d}.attn.to_q`, `${b}.linear1`, 0, D);
    add(`${d}.attn.to_k`, `${b}.linear1`, D, 2 * D);
    add(`${d}.attn.to_v`, `${b}.linear1`, 2 * D, 3 * D);
    add(`${d}.proj_mlp`, `${b}.linear1`, 3 * D, s.out);
    add(`${d}.proj_out`, `${b}.linear2`);
  }
  return out;
}

/** A small FLUX-shaped layer set (hidden D, mlp 4D), for parser tests that need no engine. */
export function tinyFluxLayers(D = 8, nDouble = 2, nSingle = 2, inCh = 16, ctx = 12, vec = 10): Map<string, Shape> {
  const m = new Map<string, Shape>();
  const set = (n: string, i: number, o: number): void => void m.set(n, { in: i, out: o });
  set('img_in', inCh, D);
  set('txt_in', ctx, D);
  set('time_in.in_layer', 256, D);
  set('time_in.out_layer', D, D);
  set('guidance_in.in_layer', 256, D);
  set('guidance_in.out_layer', D, D);
  set('vector_in.in_layer', vec, D);
  set('vector_in.out_layer', D, D);
  for (let i = 0; i < nDouble; i++) {
    for (const s of ['img', 'txt']) {
      set(`double_blocks.${i}.${s}_mod.lin`, D, 6 * D);
      set(`double_blocks.${i}.${s}_attn.qkv`, D, 3 * D);
      set(`double_blocks.${i}.${s}_attn.proj`, D, D);
      set(`double_blocks.${i}.${s}_mlp.0`, D, 4 * D);
      set(`double_blocks.${i}.${s}_mlp.2`, 4 * D, D);
    }
  }
  for (let i = 0; i < nSingle; i++) {
    set(`single_blocks.${i}.modulation.lin`, D, 3 * D);
    set(`single_blocks.${i}.linear1`, D, 7 * D);
    set(`single_blocks.${i}.linear2`, 5 * D, D);
  }
  set('final_layer.adaLN_modulation.1', D, 2 * D);
  set('final_layer.linear', D, inCh);
  return m;
}

export interface LoraPart {
  spec: ModuleSpec;
  A: Float32Array; // [r, in]
  B: Float32Array; // [rows, r]
}

export interface RandomLora {
  rank: number;
  /** PEFT lora_alpha; every part's scale is alpha / rank. */
  alpha: number;
  parts: LoraPart[];
}

function roundBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = ((u[0]! + 0x7fff + ((u[0]! >> 16) & 1)) >>> 16) << 16;
  return f[0]!;
}

/** Random factors for the selected modules, rounded to BF16 so every file format stores them exactly. */
export function randomLora(
  layers: Map<string, Shape>,
  seed: number,
  opts: { rank?: number; alpha?: number; scale?: number; only?: (diffusersName: string) => boolean } = {},
): RandomLora {
  const rank = opts.rank ?? 4;
  const alpha = opts.alpha ?? rank;
  const amp = opts.scale ?? 0.2;
  const rng = new SeededRandom(seed);
  const parts: LoraPart[] = [];
  for (const spec of moduleTable(layers)) {
    if (opts.only && !opts.only(spec.diffusers)) continue;
    const inF = layers.get(spec.layer)!.in;
    const rows = spec.rowEnd - spec.rowStart;
    const A = rng.normal(rank * inF).map((v) => roundBf16(v * amp));
    const B = rng.normal(rows * rank).map((v) => roundBf16(v * amp));
    parts.push({ spec, A: Float32Array.from(A), B: Float32Array.from(B) });
  }
  return { rank, alpha, parts };
}

/** ΔW per BFL layer, [out, in] row-major, in F64: Σ over parts of (alpha/r)·B·A placed in its rows. */
export function denseDelta(lora: RandomLora, layers: Map<string, Shape>): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  const s = lora.alpha / lora.rank;
  for (const { spec, A, B } of lora.parts) {
    const { in: inF, out: outF } = layers.get(spec.layer)!;
    const d = out.get(spec.layer) ?? new Float64Array(outF * inF);
    const rows = spec.rowEnd - spec.rowStart;
    for (let i = 0; i < rows; i++) {
      // diffusers norm_out emits (scale, shift); BFL's final layer (shift, scale).
      const row = spec.rowStart + (spec.swap ? (i + rows / 2) % rows : i);
      for (let k = 0; k < lora.rank; k++) {
        const b = B[i * lora.rank + k]! * s;
        for (let c = 0; c < inF; c++) d[row * inF + c]! += b * A[k * inF + c]!;
      }
    }
    out.set(spec.layer, d);
  }
  return out;
}

// --- encoders -------------------------------------------------------------------------------

function f32(shape: number[], values: ArrayLike<number>): TensorData {
  const a = Float32Array.from(values);
  return { dtype: 'F32', shape, data: new Uint8Array(a.buffer) };
}
function bf16(shape: number[], values: ArrayLike<number>): TensorData {
  const f = Float32Array.from(values);
  const u = new Uint32Array(f.buffer);
  const h = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) h[i] = u[i]! >>> 16; // values are already BF16-exact
  return { dtype: 'BF16', shape, data: new Uint8Array(h.buffer) };
}

export interface LoraFileContent {
  metadata: Record<string, string>;
  tensors: Record<string, TensorData>;
}

/** diffusers / PEFT: split modules, lora_A/lora_B, alpha in `lora_adapter_metadata`. */
export function asDiffusers(lora: RandomLora, prefix = 'transformer.'): LoraFileContent {
  const tensors: Record<string, TensorData> = {};
  for (const { spec, A, B } of lora.parts) {
    const inF = A.length / lora.rank;
    tensors[`${prefix}${spec.diffusers}.lora_A.weight`] = f32([lora.rank, inF], A);
    tensors[`${prefix}${spec.diffusers}.lora_B.weight`] = f32([B.length / lora.rank, lora.rank], B);
  }
  const cfg = { 'transformer.r': lora.rank, 'transformer.lora_alpha': lora.alpha, 'transformer.target_modules': ['to_q'] };
  return { metadata: { format: 'pt', lora_adapter_metadata: JSON.stringify(cfg) }, tensors };
}

interface Fused {
  layer: string;
  down: Float32Array;
  up: Float32Array;
  R: number;
  inF: number;
  outF: number;
}

/** Fuses split parts onto BFL layers the way sd-scripts' split_qkv saves them: stacked A, block-diagonal B. */
function fuse(lora: RandomLora, layers: Map<string, Shape>): Fused[] {
  const byLayer = new Map<string, LoraPart[]>();
  for (const p of lora.parts) byLayer.set(p.spec.layer, [...(byLayer.get(p.spec.layer) ?? []), p]);
  const res: Fused[] = [];
  for (const [layer, parts] of byLayer) {
    parts.sort((a, b) => a.spec.rowStart - b.spec.rowStart);
    const { in: inF, out: outF } = layers.get(layer)!;
    const r = lora.rank;
    const R = r * parts.length;
    const down = new Float32Array(R * inF);
    const up = new Float32Array(outF * R);
    parts.forEach((p, j) => {
      down.set(p.A, j * r * inF);
      const rows = p.spec.rowEnd - p.spec.rowStart;
      for (let i = 0; i < rows; i++) {
        const row = p.spec.rowStart + (p.spec.swap ? (i + rows / 2) % rows : i);
        for (let k = 0; k < r; k++) up[row * R + j * r + k] = p.B[i * r + k]!;
      }
    });
    res.push({ layer, down, up, R, inF, outF });
  }
  return res;
}

/** kohya / sd-scripts: lora_unet_<flattened BFL name>, BF16 factors, alpha scaled so alpha/R = the PEFT scale. */
export function asKohya(lora: RandomLora, layers: Map<string, Shape>): LoraFileContent {
  const tensors: Record<string, TensorData> = {};
  for (const f of fuse(lora, layers)) {
    const name = `lora_unet_${f.layer.replace(/\./g, '_')}`;
    tensors[`${name}.lora_down.weight`] = bf16([f.R, f.inF], f.down);
    tensors[`${name}.lora_up.weight`] = bf16([f.outF, f.R], f.up);
    tensors[`${name}.alpha`] = f32([], [(lora.alpha / lora.rank) * f.R]);
  }
  return { metadata: { ss_network_module: 'networks.lora_flux' }, tensors };
}

/** BFL / ComfyUI: diffusion_model.<BFL name>; `peft` suffixes (scale folded into B, no alpha) or lora_down/lora_up + alpha. */
export function asBfl(lora: RandomLora, layers: Map<string, Shape>, suffix: 'peft' | 'kohya'): LoraFileContent {
  const tensors: Record<string, TensorData> = {};
  const s = lora.alpha / lora.rank;
  for (const f of fuse(lora, layers)) {
    const name = `diffusion_model.${f.layer}`;
    if (suffix === 'peft') {
      tensors[`${name}.lora_A.weight`] = f32([f.R, f.inF], f.down);
      tensors[`${name}.lora_B.weight`] = f32([f.outF, f.R], f.up.map((v) => v * s));
    } else {
      tensors[`${name}.lora_down.weight`] = f32([f.R, f.inF], f.down);
      tensors[`${name}.lora_up.weight`] = f32([f.outF, f.R], f.up);
      tensors[`${name}.alpha`] = f32([1], [s * f.R]);
    }
  }
  return { metadata: {}, tensors };
}

/** A minimal safetensors writer (independent of the product's), for fixture files. */
export function writeSafetensorsFile(path: string, content: LoraFileContent): void {
  const header: Record<string, unknown> = {};
  if (Object.keys(content.metadata).length) header['__metadata__'] = content.metadata;
  let offset = 0;
  const chunks: Uint8Array[] = [];
  for (const [name, t] of Object.entries(content.tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    chunks.push(t.data);
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const hb = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  writeFileSync(path, Buffer.concat([len, hb, ...chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength))]));
}

/** A minimal safetensors reader for fixture files (the product reads through the native binding). */
export function readSafetensorsFile(path: string): LoraFileContent {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const base = 8 + n;
  const tensors: Record<string, TensorData> = {};
  let metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') {
      metadata = v as Record<string, string>;
      continue;
    }
    const info = v as { dtype: TensorData['dtype']; shape: number[]; data_offsets: [number, number] };
    tensors[k] = { dtype: info.dtype, shape: info.shape, data: new Uint8Array(buf.buffer, buf.byteOffset + base + info.data_offsets[0], info.data_offsets[1] - info.data_offsets[0]) };
  }
  return { metadata, tensors };
}
