// FLUX.1-dev's linear layer shapes (BFL names) and a random rank-r kohya LoRA over its blocks,
// built in memory as a file reader would hand it over (BF16 factors, F32 alpha).
import type { TensorData } from '../sidecar/engine/types.ts';
import type { LayerShape } from '../sidecar/formats/flux-keys.ts';

export function fluxDevLayers(D = 3072, nDouble = 19, nSingle = 38, mlp = 4): Map<string, LayerShape> {
  const m = new Map<string, LayerShape>();
  const set = (n: string, i: number, o: number): void => void m.set(n, { in: i, out: o });
  set('img_in', 64, D);
  set('txt_in', 4096, D);
  set('time_in.in_layer', 256, D);
  set('time_in.out_layer', D, D);
  set('guidance_in.in_layer', 256, D);
  set('guidance_in.out_layer', D, D);
  set('vector_in.in_layer', 768, D);
  set('vector_in.out_layer', D, D);
  for (let i = 0; i < nDouble; i++) {
    for (const s of ['img', 'txt']) {
      set(`double_blocks.${i}.${s}_mod.lin`, D, 6 * D);
      set(`double_blocks.${i}.${s}_attn.qkv`, D, 3 * D);
      set(`double_blocks.${i}.${s}_attn.proj`, D, D);
      set(`double_blocks.${i}.${s}_mlp.0`, D, mlp * D);
      set(`double_blocks.${i}.${s}_mlp.2`, mlp * D, D);
    }
  }
  for (let i = 0; i < nSingle; i++) {
    set(`single_blocks.${i}.modulation.lin`, D, 3 * D);
    set(`single_blocks.${i}.linear1`, D, (3 + mlp) * D);
    set(`single_blocks.${i}.linear2`, (1 + mlp) * D, D);
  }
  set('final_layer.adaLN_modulation.1', D, 2 * D);
  set('final_layer.linear', D, 64);
  return m;
}

/** Random BF16 values of magnitude ~2^-7..2^-3 (no NaN/Inf), fast enough for 10^8 elements. */
function randomBf16(n: number, seed: number): Uint8Array {
  const h = new Uint16Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    // sign | exponent 120..123 | 7 random mantissa bits
    h[i] = ((x >>> 31) << 15) | ((120 + ((x >>> 7) & 3)) << 7) | (x & 0x7f);
  }
  return new Uint8Array(h.buffer);
}

/** A kohya LoRA (lora_unet_*) of rank r on every linear inside the double and single blocks. */
export function kohyaLoraForBlocks(layers: Map<string, LayerShape>, rank: number, seed = 1): Record<string, TensorData> {
  const tensors: Record<string, TensorData> = {};
  let s = seed;
  for (const [name, { in: inF, out }] of layers) {
    if (!name.startsWith('double_blocks.') && !name.startsWith('single_blocks.')) continue;
    const k = `lora_unet_${name.replace(/\./g, '_')}`;
    tensors[`${k}.lora_down.weight`] = { dtype: 'BF16', shape: [rank, inF], data: randomBf16(rank * inF, s++) };
    tensors[`${k}.lora_up.weight`] = { dtype: 'BF16', shape: [out, rank], data: randomBf16(out * rank, s++) };
    tensors[`${k}.alpha`] = { dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([rank / 2]).buffer) };
  }
  return tensors;
}
