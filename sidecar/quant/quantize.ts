// Quantize a 16-bit FLUX checkpoint into an SVDQuant checkpoint (the work is native and runs off the
// event loop; this module validates options, forwards progress and cancellation, and shapes the report).
import type { ProgressCallback, QuantizeOptions } from '../engine/types.ts';
import { quantNative } from './native.ts';
import type { NativeQuantizeOptions } from './native.ts';

export interface LayerReport {
  name: string;
  kind: string;
  /** Relative output error of the quantized layer on its calibration sample (null for 16-bit layers). */
  relError: number | null;
  /** Same for plain W4A4 with the top-r SVD and no smoothing (null when not applicable). */
  naiveRelError: number | null;
  smoothing: string;
  refineSteps: number;
  seconds: number;
  /** The residual is GPTQ-quantized (asked for with gptq, and it lowered relError). */
  gptq: boolean;
  /** With gptq asked for: relError with the round-to-nearest residual (null for non-W4A4 layers). */
  rtnRelError?: number | null;
}

export interface QuantizeReport {
  output: string;
  seconds: number;
  calibSeconds: number;
  quantizedW4A4: number;
  w4a16: number;
  kept16: number;
  /** Peak resident set size of this process so far, bytes. */
  peakRssBytes: number;
  quantization_config: Record<string, unknown>;
  svdq: {
    version: string;
    method: string;
    precision: string;
    rank: number;
    lowrank: string;
    gptq: boolean;
    calibration: string;
    padded_layers: string[];
    kept_16bit: string[];
    layers: LayerReport[];
  } & Record<string, unknown>;
}

/** Options beyond the shared QuantizeOptions, for ablations and tests. */
export interface QuantizeExtras {
  refine?: number;
  /** Refinement stops once a step lowers the layer error by less than this fraction (default 1e-3; 0: only when it rises). */
  refineTol?: number;
  gridStep?: number;
  /** Every smoothing grid point instead of coarse (every 4th) then fine around the best. */
  exhaustiveGrid?: boolean;
  adaln?: 'w4a16' | '16bit';
  calibRows?: number;
  randomCalibSets?: number;
  /** Most calibration sets per forward (default: as many of one shape as 2 GiB of activations allow). */
  calibBatch?: number;
  unsignedGelu?: boolean;
}

const METHODS = ['svdquant', 'smoothquant', 'lowrank', 'naive', 'w4a16'];
const PRECISIONS = ['int4', 'nvfp4'];
const LOWRANKS = ['svd', 'corda', 'whiten'];

function check(opts: QuantizeOptions & QuantizeExtras): void {
  if (!opts.input) throw new Error('quantize: no input checkpoint');
  if (!opts.output) throw new Error('quantize: no output path');
  if (opts.method && !METHODS.includes(opts.method)) throw new Error(`quantize: unknown method '${opts.method}' (${METHODS.join(' | ')})`);
  if (opts.precision && !PRECISIONS.includes(opts.precision))
    throw new Error(`quantize: unknown precision '${opts.precision}' (${PRECISIONS.join(' | ')})`);
  if (opts.lowrank && !LOWRANKS.includes(opts.lowrank)) throw new Error(`quantize: unknown low-rank mode '${opts.lowrank}' (${LOWRANKS.join(' | ')})`);
  const integer = (what: string, v: number | undefined, min: number) => {
    if (v !== undefined && (!Number.isInteger(v) || v < min))
      throw new Error(`quantize: ${what} must be ${min > 0 ? 'a positive' : 'a non-negative'} integer, got ${v}`);
  };
  integer('rank', opts.rank, 1);
  integer('refine', opts.refine, 0);
  integer('calibration rows', opts.calibRows, 1);
  integer('random calibration sets', opts.randomCalibSets, 1);
  integer('calibration batch', opts.calibBatch, 1);
  if (opts.refineTol !== undefined && !(opts.refineTol >= 0 && opts.refineTol < 1))
    throw new Error(`quantize: refine tolerance must be in [0, 1), got ${opts.refineTol}`);
  if (opts.gridStep !== undefined && !(opts.gridStep > 0 && opts.gridStep < 0.5))
    throw new Error(`quantize: grid step must be in (0, 0.5), got ${opts.gridStep}`);
}

export async function quantizeCheckpoint(
  opts: QuantizeOptions & QuantizeExtras,
  ctl: { onProgress?: ProgressCallback; signal?: AbortSignal } = {},
): Promise<QuantizeReport> {
  check(opts);
  ctl.signal?.throwIfAborted();
  const native: NativeQuantizeOptions = { ...opts };
  const job = quantNative.quantizeCheckpoint(native, ctl.onProgress);
  const onAbort = () => job.cancel();
  ctl.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const report = JSON.parse(await job) as Omit<QuantizeReport, 'peakRssBytes'>;
    return { ...report, peakRssBytes: process.resourceUsage().maxRSS * 1024 };
  } catch (e) {
    if (ctl.signal?.aborted) {
      const err = new Error(`quantize ${opts.input}: aborted`);
      err.name = 'AbortError';
      throw err;
    }
    throw e;
  } finally {
    ctl.signal?.removeEventListener('abort', onAbort);
  }
}
