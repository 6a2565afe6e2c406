// FLUX layer names: the BFL names the engine uses, and the diffusers names other tools use for the
// same linears. Diffusers splits some fused BFL linears (qkv, single-block linear1) into several
// modules that each produce a slice of the fused layer's output rows; a KeyTarget says which slice.

/** In/out features of one linear of the loaded model, keyed by its BFL name. */
export interface LayerShape {
  in: number;
  out: number;
}
export type ModelLayers = ReadonlyMap<string, LayerShape>;

/** Where a (possibly split) source module lands in a BFL layer: output rows [rowStart, rowEnd). */
export interface KeyTarget {
  layer: string;
  rowStart: number;
  rowEnd: number;
  /**
   * True for diffusers' norm_out.linear: AdaLayerNormContinuous emits (scale, shift) while BFL's
   * final_layer.adaLN_modulation.1 emits (shift, scale), so the two output halves swap.
   */
  swapHalves?: boolean;
}

export function toModelLayers(layers: ModelLayers | Record<string, LayerShape>): ModelLayers {
  return layers instanceof Map ? layers : new Map(Object.entries(layers));
}

function blockIndices(layers: ModelLayers, kind: 'double_blocks' | 'single_blocks'): number[] {
  const seen = new Set<number>();
  const re = new RegExp(`^${kind}\\.(\\d+)\\.`);
  for (const name of layers.keys()) {
    const m = re.exec(name);
    if (m) seen.add(Number(m[1]));
  }
  return [...seen].sort((a, b) => a - b);
}

/**
 * Diffusers module name (without any "transformer." prefix) -> BFL target, for the layers this
 * model has. Slices come from the model's own shapes, so any hidden size works.
 */
export function diffusersToBfl(layers: ModelLayers): Map<string, KeyTarget> {
  const map = new Map<string, KeyTarget>();
  const whole = (diffusers: string, bfl: string, swapHalves = false): void => {
    const s = layers.get(bfl);
    if (s) map.set(diffusers, { layer: bfl, rowStart: 0, rowEnd: s.out, ...(swapHalves ? { swapHalves } : {}) });
  };
  // Splits a fused layer's rows: parts of fixed size `hidden` in order, the last part takes the rest.
  const split = (parts: string[], bfl: string, restLast: boolean): void => {
    const s = layers.get(bfl);
    if (!s) return;
    const hidden = s.in;  // FLUX qkv and linear1 both read the hidden state
    let row = 0;
    parts.forEach((p, i) => {
      const end = restLast && i === parts.length - 1 ? s.out : row + hidden;
      map.set(p, { layer: bfl, rowStart: row, rowEnd: end });
      row = end;
    });
  };

  whole('x_embedder', 'img_in');
  whole('context_embedder', 'txt_in');
  whole('time_text_embed.timestep_embedder.linear_1', 'time_in.in_layer');
  whole('time_text_embed.timestep_embedder.linear_2', 'time_in.out_layer');
  whole('time_text_embed.guidance_embedder.linear_1', 'guidance_in.in_layer');
  whole('time_text_embed.guidance_embedder.linear_2', 'guidance_in.out_layer');
  whole('time_text_embed.text_embedder.linear_1', 'vector_in.in_layer');
  whole('time_text_embed.text_embedder.linear_2', 'vector_in.out_layer');
  whole('norm_out.linear', 'final_layer.adaLN_modulation.1', true);
  whole('proj_out', 'final_layer.linear');

  for (const i of blockIndices(layers, 'double_blocks')) {
    const d = `transformer_blocks.${i}.`;
    const b = `double_blocks.${i}.`;
    whole(`${d}norm1.linear`, `${b}img_mod.lin`);
    whole(`${d}norm1_context.linear`, `${b}txt_mod.lin`);
    split([`${d}attn.to_q`, `${d}attn.to_k`, `${d}attn.to_v`], `${b}img_attn.qkv`, false);
    split([`${d}attn.add_q_proj`, `${d}attn.add_k_proj`, `${d}attn.add_v_proj`], `${b}txt_attn.qkv`, false);
    whole(`${d}attn.to_out.0`, `${b}img_attn.proj`);
    whole(`${d}attn.to_add_out`, `${b}txt_attn.proj`);
    whole(`${d}ff.net.0.proj`, `${b}img_mlp.0`);
    whole(`${d}ff.net.2`, `${b}img_mlp.2`);
    whole(`${d}ff_context.net.0.proj`, `${b}txt_mlp.0`);
    whole(`${d}ff_context.net.2`, `${b}txt_mlp.2`);
  }
  for (const i of blockIndices(layers, 'single_blocks')) {
    const d = `single_transformer_blocks.${i}.`;
    const b = `single_blocks.${i}.`;
    whole(`${d}norm.linear`, `${b}modulation.lin`);
    split([`${d}attn.to_q`, `${d}attn.to_k`, `${d}attn.to_v`, `${d}proj_mlp`], `${b}linear1`, true);
    whole(`${d}proj_out`, `${b}linear2`);
  }
  return map;
}

/** Kohya-style flattening: dots become underscores ("double_blocks.0.img_attn.qkv" -> "double_blocks_0_img_attn_qkv"). */
export function underscored(name: string): string {
  return name.replace(/\./g, '_');
}
