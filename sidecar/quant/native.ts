// Typed access to the native quantizer binding (native/binding/quant.cpp): primitives for tests and
// the async checkpoint quantizer. Nothing here computes; it only names the addon's functions.
import { createRequire } from 'node:module';
import type { QuantizeOptions } from '../engine/types.ts';

export interface QuantizedLayerParts {
  kind: string;
  relError: number;
  naiveRelError: number;
  sampleRelError: number;
  smoothing: string;
  refineSteps: number;
  /** The residual is GPTQ-quantized (gptq was asked for and lowered relError). */
  gptq: boolean;
  /** With gptq asked for: relError of the round-to-nearest residual. */
  rtnRelError: number;
  inPadded: number;
  qweight: Uint8Array;
  wscales: Float32Array;
  wscales8: Uint8Array;
  wtscale: number;
  wzeros?: Float32Array;
  smooth: Float32Array;
  loraDown: Float32Array;
  loraUp: Float32Array;
  bias: Float32Array;
  actShift: number;
  rank: number;
  y?: Float32Array;
}

export interface QuantizeLayerArgs {
  W: Float32Array;
  N: number;
  K: number;
  bias?: Float32Array;
  sample: Float32Array;
  S: number;
  x?: Float32Array;
  M?: number;
  precision?: 'int4' | 'nvfp4';
  method?: 'svdquant' | 'smoothquant' | 'lowrank' | 'naive' | 'w4a16';
  lowrank?: 'svd' | 'corda' | 'whiten';
  rank?: number;
  refine?: number;
  refineTol?: number;
  gridStep?: number;
  exhaustiveGrid?: boolean;
  unsignedShift?: boolean;
  gptq?: boolean;
}

/** Options of the native checkpoint quantizer (superset of QuantizeOptions in engine/types.ts). */
export interface NativeQuantizeOptions extends QuantizeOptions {
  refine?: number;
  refineTol?: number;
  gridStep?: number;
  exhaustiveGrid?: boolean;
  adaln?: 'w4a16' | '16bit';
  calibRows?: number;
  randomCalibSets?: number;
  calibBatch?: number;
  unsignedGelu?: boolean;
  toolVersion?: string;
}

export interface QuantBinding {
  quantizeInt4(x: Float32Array, rows: number, cols: number, unsigned?: boolean): { q: Int8Array; scales: Float32Array };
  dequantizeInt4(q: Int8Array, scales: Float32Array, rows: number, cols: number): Float32Array;
  quantizeNvfp4(x: Float32Array, rows: number, cols: number): { codes: Uint8Array; gscales: Uint8Array; tensorScale: number };
  dequantizeNvfp4(codes: Uint8Array, gscales: Uint8Array, tensorScale: number, rows: number, cols: number): Float32Array;
  packNibbles(q: Int8Array): Uint8Array;
  unpackNibbles(packed: Uint8Array, n: number, signed?: boolean): Int8Array;
  gemmW4A4Int4(qa: Int8Array, ascale: Float32Array, M: number, qw: Int8Array, wscale: Float32Array, N: number, K: number): Float32Array;
  gemmW4A4Nvfp4(
    ca: Uint8Array, agscale: Uint8Array, atscale: Float32Array, M: number,
    cw: Uint8Array, wgscale: Uint8Array, wtscale: number, N: number, K: number,
  ): Float32Array;
  /** GPTQ of W [N, K] (INT4 g64, the runtime grid) against the input rows X [S, K]. */
  gptqInt4(W: Float32Array, N: number, K: number, X: Float32Array, S: number, percdamp?: number): { q: Int8Array; scales: Float32Array };
  /** opts apply to 'randomized': power iterations (4), oversampling (16), start: rows [k, n] seeding the range finder. */
  svd(
    A: Float32Array, m: number, n: number, r: number, how?: 'exact' | 'randomized' | 'auto',
    opts?: { powerIters?: number; oversample?: number; start?: Float32Array },
  ): { U: Float32Array; S: Float32Array; Vt: Float32Array };
  quantizeLayer(args: QuantizeLayerArgs): QuantizedLayerParts;
  /** Resolves with the JSON report; the promise's cancel() stops it at the next layer (no output left). */
  quantizeCheckpoint(
    opts: NativeQuantizeOptions,
    onProgress?: (done: number, total: number, stage: string) => void,
  ): Promise<string> & { cancel(): void };
  /** Whole-model relative output error of each candidate vs the reference, on the same inputs. */
  compareModels(reference: string, candidates: string[], inputs?: string, randomSets?: number, seed?: number): Promise<number[]>;
}

export const quantNative: QuantBinding = (
  createRequire(import.meta.url)('../../native/build/Release/svdq.node') as { quant: QuantBinding }
).quant;
