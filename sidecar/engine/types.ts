// Types shared by every layer of the sidecar: tensors as they cross Node-API, the channel and REST.

/** Safetensors spelling of element types; the same strings are used on the wire. */
export type DTypeName = 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'I8' | 'U8' | 'I32' | 'I64' | 'BOOL';

/** A tensor as raw little-endian bytes. `data` is a Uint8Array view (msgpackr packs it as bin). */
export interface TensorData {
  dtype: DTypeName;
  shape: number[];
  data: Uint8Array;
}

/** How reference latents get their position ids (ComfyUI's `ref_latents_method`). */
export const REF_LATENTS_METHODS = ['offset', 'index', 'uxo', 'index_timestep_zero'] as const;
export type RefLatentsMethod = (typeof REF_LATENTS_METHODS)[number];

/**
 * What ComfyUI's Flux forward takes: x [B,C,H,W], timestep [B] in 0..1, context [B,T,Dctx], y [B,Dvec];
 * names are ComfyUI's. Kontext reference latents [B or 1,C,h,w] are appended as image tokens; the
 * attention mask is an additive bias (BOOL: true = attend) over the joint (text, image, reference)
 * sequence of length L: [L,L], [B or 1,L,L] or [B or 1,1 or heads,L,L].
 */
export interface ForwardInputs {
  x: TensorData;
  timestep: TensorData;
  context: TensorData;
  y: TensorData;
  guidance?: TensorData;
  attention_mask?: TensorData;
  ref_latents?: TensorData[];
  ref_latents_method?: RefLatentsMethod;
}

export interface ForwardOptions {
  /** Aborting cancels a running forward at the next block boundary (rejects with an AbortError). */
  signal?: AbortSignal;
}

export interface LoadOptions {
  /** Simulated device memory cap: a forward whose activations would not fit fails with "out of memory". */
  memoryLimitBytes?: number;
  threads?: number;
}

/** Progress of long work (loading, quantizing, sampling): `done` of `total` units of `stage`. */
export type ProgressCallback = (done: number, total: number, stage: string) => void;

export interface QuantizeOptions {
  input: string;
  output: string;
  precision?: 'int4' | 'nvfp4';
  rank?: number;
  method?: 'svdquant' | 'smoothquant' | 'lowrank' | 'naive' | 'w4a16';
  lowrank?: 'svd' | 'corda' | 'whiten';
  /** GPTQ instead of round-to-nearest for the W4A4 residual (not with method w4a16). */
  gptq?: boolean;
  calib?: string;
  force?: boolean;
}
