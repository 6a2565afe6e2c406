// LoRA files as people have them, mapped onto the engine's BFL-named linears.
//
// Three naming families are read (all safetensors):
//  - kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up.weight`,
//    `.alpha` (scale = alpha / rank, alpha absent -> 1). sd-scripts' split_qkv training saves the fused
//    form (stacked downs, block-diagonal up, alpha unchanged), so it reads like any other module here.
//    OneTrainer / SimpleTuner use the same suffixes with diffusers names (`lora_transformer_...`, `lycoris_...`).
//  - diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, `lora_B` (also the
//    older `.lora.down.weight`). Scale = lora_alpha / rank from the safetensors metadata
//    `lora_adapter_metadata` (PEFT LoraConfig, possibly with `transformer.` prefixed keys) or a
//    per-module `.alpha` tensor; without either, 1. Split to_q/to_k/to_v (and proj_mlp) land in row
//    slices of the fused BFL layer: their A's stack, their B's go block-diagonal.
//  - BFL / ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` / `.lora_down.weight`.
//
// The result has one patch per BFL layer: down A [R, in] and up B [out, R] in F32 with each part's
// alpha/rank already folded into B, so the engine only multiplies by the user's strength.
import type { DTypeName, TensorData } from '../engine/types.ts';
import { diffusersToBfl, toModelLayers, underscored } from './flux-keys.ts';
import type { KeyTarget, LayerShape, ModelLayers } from './flux-keys.ts';

export type { LayerShape, ModelLayers } from './flux-keys.ts';

/** What a safetensors reader gives: string metadata and named tensors. */
export interface LoraSource {
  metadata: Record<string, string>;
  tensors: Record<string, TensorData> | ReadonlyMap<string, TensorData>;
}

export type LoraNaming = 'kohya' | 'diffusers' | 'bfl';

/** One BFL layer's LoRA: y += strength * (x A^T) B^T. */
export interface LoraLayerPatch {
  layer: string;
  rank: number;
  in: number;
  out: number;
  /** A: [rank, in] row-major. */
  down: Float32Array;
  /** B: [out, rank] row-major, alpha/rank of each source module folded in. */
  up: Float32Array;
  /** The file's module names that were merged into this patch. */
  sources: string[];
}

export interface UnmatchedKey {
  key: string;
  reason: string;
}

export interface ParsedLora {
  /** Naming families seen among the matched keys (usually one). */
  formats: LoraNaming[];
  patches: LoraLayerPatch[];
  /** Keys that were not applied, each with why: a warning for the caller to show, never dropped. */
  unmatched: UnmatchedKey[];
}

/** A LoRA file that cannot be applied; the message names the file and the key at fault. */
export class LoraFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LoraFormatError';
  }
}

type Role = 'down' | 'up' | 'alpha';
const ROLE_SUFFIXES: Array<[string, Role]> = [
  ['.lora_down.weight', 'down'],
  ['.lora_up.weight', 'up'],
  ['.lora_A.weight', 'down'],
  ['.lora_B.weight', 'up'],
  ['.lora_A.default.weight', 'down'],
  ['.lora_B.default.weight', 'up'],
  ['.lora.down.weight', 'down'],
  ['.lora.up.weight', 'up'],
  ['.alpha', 'alpha'],
];
// Adapter kinds that are not a plain low-rank product; named so the warning says what was skipped.
// `blocksModule`: the rest of that module would apply wrongly without it, so none of it is applied.
const UNSUPPORTED_SUFFIXES: Array<[RegExp, string, boolean?]> = [
  [/\.(lora_B|lora_up)\.bias$/, 'LoRA bias delta (not supported; the weight part is applied)'],
  [/\.diff_b$/, 'bias difference (not supported)'],
  [/\.diff$/, 'full weight difference (not supported)'],
  [/\.(dora_scale|lora_magnitude_vector)(\.weight)?$/, 'DoRA module (not supported; none of it is applied)', true],
  [/\.hada_(w|t)\d_(a|b)$/, 'LoHa (LyCORIS) factor (not supported)'],
  [/\.lokr_(w|t)\d(_a|_b)?$/, 'LoKr (LyCORIS) factor (not supported)'],
  [/\.lora_mid\.weight$/, 'LoCon mid weight (not supported)'],
];
const DOTTED_PREFIXES = ['model.diffusion_model.', 'diffusion_model.', 'base_model.model.', 'transformer.', 'unet.'];

function splitKey(key: string): { module: string; role: Role } | null {
  for (const [suffix, role] of ROLE_SUFFIXES) {
    if (key.endsWith(suffix)) return { module: key.slice(0, -suffix.length), role };
  }
  return null;
}

interface Resolver {
  resolve(module: string): { target: KeyTarget; naming: LoraNaming } | { reason: string };
}

function makeResolver(layers: ModelLayers): Resolver {
  const diffusers = diffusersToBfl(layers);
  const bflFlat = new Map<string, string>();
  for (const name of layers.keys()) bflFlat.set(underscored(name), name);
  const diffusersFlat = new Map<string, KeyTarget>();
  for (const [name, t] of diffusers) diffusersFlat.set(underscored(name), t);
  const wholeLayer = (name: string): KeyTarget => ({ layer: name, rowStart: 0, rowEnd: layers.get(name)!.out });
  const notInModel = { reason: 'no layer of this model has this name' };

  return {
    resolve(module) {
      if (/^(lora_te\d*_|text_encoder(_\d+)?\.|te\d?\.)/.test(module)) {
        return { reason: 'text-encoder LoRA (the engine holds only the diffusion model)' };
      }
      if (module.startsWith('lora_unet_')) {
        const name = bflFlat.get(module.slice('lora_unet_'.length));
        if (name) return { target: wholeLayer(name), naming: 'kohya' };
        const t = diffusersFlat.get(module.slice('lora_unet_'.length));
        return t ? { target: t, naming: 'kohya' } : notInModel;
      }
      for (const p of ['lora_transformer_', 'lycoris_']) {
        if (module.startsWith(p)) {
          const rest = module.slice(p.length);
          const t = diffusersFlat.get(rest);
          if (t) return { target: t, naming: 'kohya' };
          const name = bflFlat.get(rest);
          return name ? { target: wholeLayer(name), naming: 'kohya' } : notInModel;
        }
      }
      let rest = module;
      for (const p of DOTTED_PREFIXES) {
        if (rest.startsWith(p)) {
          rest = rest.slice(p.length);
          break;
        }
      }
      if (layers.has(rest)) return { target: wholeLayer(rest), naming: 'bfl' };
      const t = diffusers.get(rest);
      if (t) return { target: t, naming: 'diffusers' };
      return notInModel;
    },
  };
}

const FLOAT_DTYPES = new Set<DTypeName>(['F32', 'F16', 'BF16']);

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** A floating tensor as F32 (copies; the source bytes may be unaligned views into a file buffer). */
export function tensorToF32(t: TensorData, key: string): Float32Array {
  if (!FLOAT_DTYPES.has(t.dtype)) throw new LoraFormatError(`${key}: dtype ${t.dtype} is not a floating type (F32, F16, BF16)`);
  const n = t.shape.reduce((a, b) => a * b, 1);
  const width = t.dtype === 'F32' ? 4 : 2;
  if (t.data.byteLength !== n * width) {
    throw new LoraFormatError(`${key}: ${t.data.byteLength} bytes do not hold ${t.dtype} [${t.shape.join(', ')}]`);
  }
  const bytes = new Uint8Array(n * width);
  bytes.set(t.data);
  if (t.dtype === 'F32') return new Float32Array(bytes.buffer);
  const half = new Uint16Array(bytes.buffer);
  const out = new Float32Array(n);
  if (t.dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = half[i]! << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16ToF32(half[i]!);
  }
  return out;
}

function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return i;
  return -1;
}

/** PEFT adapter config from the file's metadata (diffusers writes it under `lora_adapter_metadata`). */
interface PeftConfig {
  alpha?: number;
  useRslora: boolean;
  alphaPattern: Array<[string, number]>;
}

function readPeftConfig(metadata: Record<string, string>, file: string): PeftConfig | null {
  const raw = metadata['lora_adapter_metadata'];
  if (raw === undefined) return null;
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    throw new LoraFormatError(`${file}: metadata 'lora_adapter_metadata' is not valid JSON`);
  }
  // save_lora_weights packs the transformer's config with a "transformer." prefix on every key.
  const get = (k: string): unknown => cfg[k] ?? cfg[`transformer.${k}`];
  const alpha = get('lora_alpha');
  const pattern = get('alpha_pattern');
  return {
    ...(typeof alpha === 'number' ? { alpha } : {}),
    useRslora: get('use_rslora') === true,
    alphaPattern:
      pattern && typeof pattern === 'object'
        ? Object.entries(pattern as Record<string, unknown>).filter((e): e is [string, number] => typeof e[1] === 'number')
        : [],
  };
}

/** One source module inside a layer plan: raw factors (validated shapes, values not yet read). */
export interface LoraPartPlan {
  module: string;
  downKey: string;
  upKey: string;
  /** A_i: [rank, in], any float dtype, as stored. */
  down: TensorData;
  /** B_i: [rows, rank], as stored. */
  up: TensorData;
  rank: number;
  /** Output rows of the layer this part writes: [rowStart, rowStart + rows). */
  rowStart: number;
  rows: number;
  /** Swap the two halves of B_i's rows (diffusers norm_out -> BFL final layer). */
  swapHalves: boolean;
  /** alpha / rank as the format defines it; multiplies B_i. */
  scale: number;
  /** First column of the fused B (first row of the fused A) this part occupies. */
  col: number;
}

/** How one BFL layer's fused LoRA is assembled: A = stack of parts' A, B = block-diagonal of scale·B_i. */
export interface LoraLayerPlan {
  layer: string;
  rank: number;
  in: number;
  out: number;
  parts: LoraPartPlan[];
}

export interface LoraPlan {
  file: string;
  formats: LoraNaming[];
  layers: LoraLayerPlan[];
  unmatched: UnmatchedKey[];
}

export interface ParseOptions {
  /** Used in error messages. */
  file?: string;
}

/**
 * Maps a LoRA's tensors onto the model's layers without reading their values (the engine decodes
 * them straight into its own buffers: one pass over the data). Throws LoraFormatError for anything
 * that would apply wrongly (shapes that do not fit, rank 0, a non-finite alpha, a down without an
 * up, an unknown format, a file that matches no layer); keys that simply have no place in this
 * model come back in `unmatched`. NaN/Inf inside the factors are found when they are decoded.
 */
export function planLora(src: LoraSource, modelLayers: ModelLayers | Record<string, LayerShape>, opts: ParseOptions = {}): LoraPlan {
  const file = opts.file ?? 'LoRA';
  const layers = toModelLayers(modelLayers);
  const tensors: ReadonlyMap<string, TensorData> =
    src.tensors instanceof Map ? src.tensors : new Map(Object.entries(src.tensors as Record<string, TensorData>));
  const resolver = makeResolver(layers);
  const peft = readPeftConfig(src.metadata, file);

  const unmatched: UnmatchedKey[] = [];
  const modules = new Map<string, Partial<Record<Role, string>>>();
  const blocked = new Map<string, string>();  // module -> why none of it applies
  let recognized = 0;
  for (const key of [...tensors.keys()].sort()) {
    const parsed = splitKey(key);
    if (!parsed) {
      const hit = UNSUPPORTED_SUFFIXES.find(([re]) => re.test(key));
      unmatched.push({ key, reason: hit ? hit[1] : 'not a LoRA tensor name this reader knows' });
      if (hit) recognized++;
      if (hit?.[2]) blocked.set(key.replace(hit[0], ''), hit[1]);
      continue;
    }
    recognized++;
    const m = modules.get(parsed.module) ?? {};
    m[parsed.role] = key;
    modules.set(parsed.module, m);
  }
  if (recognized === 0) {
    const sample = [...tensors.keys()].slice(0, 3).map((k) => `'${k}'`).join(', ');
    throw new LoraFormatError(
      `${file}: unknown LoRA format: no key ends in .lora_down.weight/.lora_up.weight, .lora_A.weight/.lora_B.weight or .alpha` +
        (sample ? ` (first keys: ${sample})` : ' (the file has no tensors)'),
    );
  }

  const parts: Array<LoraPartPlan & { layer: string }> = [];
  const formats = new Set<LoraNaming>();
  for (const [module, roles] of modules) {
    const why = blocked.get(module);
    const res = why ? { reason: why } : resolver.resolve(module);
    if ('reason' in res) {
      for (const k of Object.values(roles)) unmatched.push({ key: k!, reason: res.reason });
      continue;
    }
    if (!roles.down || !roles.up) {
      const have = roles.down ?? roles.up ?? roles.alpha!;
      const missing = roles.down ? 'up (lora_up / lora_B)' : 'down (lora_down / lora_A)';
      throw new LoraFormatError(`${file}: ${have}: module '${module}' has no ${missing} weight`);
    }
    const { target } = res;
    const shape = layers.get(target.layer)!;
    const dT = tensors.get(roles.down)!;
    const uT = tensors.get(roles.up)!;
    const rows = target.rowEnd - target.rowStart;
    if (dT.shape.length !== 2) {
      throw new LoraFormatError(`${file}: ${roles.down}: expected a 2-D [rank, ${shape.in}] matrix, got [${dT.shape.join(', ')}]`);
    }
    if (uT.shape.length !== 2) {
      throw new LoraFormatError(`${file}: ${roles.up}: expected a 2-D [${rows}, rank] matrix, got [${uT.shape.join(', ')}]`);
    }
    const rank = dT.shape[0]!;
    if (rank === 0 || uT.shape[1] === 0) {
      throw new LoraFormatError(`${file}: ${rank === 0 ? roles.down : roles.up}: rank 0 (shape [${(rank === 0 ? dT : uT).shape.join(', ')}])`);
    }
    if (dT.shape[1] !== shape.in) {
      throw new LoraFormatError(
        `${file}: ${roles.down}: shape [${dT.shape.join(', ')}] does not fit layer '${target.layer}': expected [${rank}, ${shape.in}]`,
      );
    }
    if (uT.shape[1] !== rank) {
      throw new LoraFormatError(
        `${file}: ${roles.up}: shape [${uT.shape.join(', ')}] has rank ${uT.shape[1]} but ${roles.down} has rank ${rank}`,
      );
    }
    if (uT.shape[0] !== rows) {
      const where = rows === shape.out ? `layer '${target.layer}'` : `rows ${target.rowStart}..${target.rowEnd} of layer '${target.layer}'`;
      throw new LoraFormatError(`${file}: ${roles.up}: shape [${uT.shape.join(', ')}] does not fit ${where}: expected [${rows}, ${rank}]`);
    }
    for (const [k, t] of [[roles.down, dT], [roles.up, uT]] as const) {
      if (!FLOAT_DTYPES.has(t.dtype)) throw new LoraFormatError(`${file}: ${k}: dtype ${t.dtype} is not a floating type (F32, F16, BF16)`);
      const width = t.dtype === 'F32' ? 4 : 2;
      if (t.data.byteLength !== t.shape[0]! * t.shape[1]! * width) {
        throw new LoraFormatError(`${file}: ${k}: ${t.data.byteLength} bytes do not hold ${t.dtype} [${t.shape.join(', ')}]`);
      }
    }
    let alpha: number | undefined;
    if (roles.alpha) {
      const a = tensorToF32(tensors.get(roles.alpha)!, `${file}: ${roles.alpha}`);
      if (a.length !== 1) throw new LoraFormatError(`${file}: ${roles.alpha}: expected a scalar, got ${a.length} values`);
      if (!Number.isFinite(a[0]!)) throw new LoraFormatError(`${file}: ${roles.alpha}: non-finite alpha ${a[0]}`);
      // kohya: alpha 0 means "no scaling" (alpha = rank).
      alpha = a[0] === 0 ? undefined : a[0]!;
    } else if (peft) {
      const pat = peft.alphaPattern.find(([p]) => module === p || module.endsWith(`.${p}`));
      alpha = pat ? pat[1] : peft.alpha;
    }
    const scale = alpha === undefined ? 1 : peft?.useRslora && !roles.alpha ? alpha / Math.sqrt(rank) : alpha / rank;
    if (!Number.isFinite(scale)) throw new LoraFormatError(`${file}: ${roles.down}: scale alpha/rank = ${scale} is not finite`);
    formats.add(res.naming);
    parts.push({
      module, downKey: roles.down, upKey: roles.up, down: dT, up: uT, rank,
      rowStart: target.rowStart, rows, swapHalves: target.swapHalves === true, scale, col: 0,
      layer: target.layer,
    });
  }

  if (parts.length === 0) {
    const sample = unmatched.slice(0, 3).map((u) => `'${u.key}' (${u.reason})`).join(', ');
    throw new LoraFormatError(`${file}: the LoRA matches no layer of this model; e.g. ${sample}`);
  }

  // Group the parts per BFL layer: A's stacked, B's placed block-diagonally in their rows.
  const byLayer = new Map<string, LoraPartPlan[]>();
  for (const { layer, ...p } of parts) byLayer.set(layer, [...(byLayer.get(layer) ?? []), p]);
  const plans: LoraLayerPlan[] = [];
  for (const layer of [...byLayer.keys()].sort()) {
    const list = byLayer.get(layer)!.sort((a, b) => a.rowStart - b.rowStart || (a.module < b.module ? -1 : 1));
    let col = 0;
    for (const p of list) {
      p.col = col;
      col += p.rank;
    }
    const { in: inF, out } = layers.get(layer)!;
    plans.push({ layer, rank: col, in: inF, out, parts: list });
  }
  return { file, formats: [...formats].sort(), layers: plans, unmatched };
}

/** Decodes and fuses one layer plan in F32 (the engine does the same natively, into its own memory). */
export function materializeLayer(plan: LoraLayerPlan, file = 'LoRA'): LoraLayerPatch {
  const { rank: R, in: inF, out } = plan;
  const down = new Float32Array(R * inF);
  const up = new Float32Array(out * R);
  for (const p of plan.parts) {
    const a = tensorToF32(p.down, `${file}: ${p.downKey}`);
    const b = tensorToF32(p.up, `${file}: ${p.upKey}`);
    for (const [k, v] of [[p.downKey, a], [p.upKey, b]] as const) {
      const bad = firstNonFinite(v);
      if (bad >= 0) throw new LoraFormatError(`${file}: ${k}: non-finite value ${v[bad]} at element ${bad}`);
    }
    down.set(a, p.col * inF);
    const half = p.rows / 2;
    const scale = Math.fround(p.scale); // F32 scale, as the engine uses: float products round identically
    for (let i = 0; i < p.rows; i++) {
      const src = p.swapHalves ? (i + half) % p.rows : i;
      const dst = (p.rowStart + i) * R + p.col;
      for (let j = 0; j < p.rank; j++) up[dst + j] = b[src * p.rank + j]! * scale;
    }
  }
  return { layer: plan.layer, rank: R, in: inF, out, down, up, sources: plan.parts.map((p) => p.module) };
}

/** planLora + materializeLayer for every layer: the whole LoRA in F32, per BFL layer. */
export function parseLora(src: LoraSource, modelLayers: ModelLayers | Record<string, LayerShape>, opts: ParseOptions = {}): ParsedLora {
  const plan = planLora(src, modelLayers, opts);
  return { formats: plan.formats, patches: plan.layers.map((l) => materializeLayer(l, plan.file)), unmatched: plan.unmatched };
}
