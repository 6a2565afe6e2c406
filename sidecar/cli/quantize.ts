// `svdq quantize IN -o OUT`: a 16-bit FLUX checkpoint to an SVDQuant checkpoint.
import { parseArgs } from 'node:util';
import type { QuantizeOptions } from '../engine/types.ts';
import { quantizeCheckpoint } from '../quant/quantize.ts';
import type { QuantizeExtras } from '../quant/quantize.ts';
import { progressBar } from './progress.ts';

export const USAGE = `svdq quantize IN.safetensors -o OUT.safetensors [--precision int4|nvfp4] [--rank N]
             [--calib FILE] [--method svdquant|smoothquant|lowrank|naive|w4a16] [--lowrank svd|corda|whiten]
             [--refine N] [--refine-tol F] [--gptq] [--grid-step S] [--exhaustive-grid] [--adaln w4a16|16bit] [--calib-rows N] [--device cpu|cuda]
             [--force] [--json]

Without --calib, calibrates on random inputs of the model's shapes (recorded in the metadata).
--gptq quantizes each W4A4 layer's 4-bit residual with GPTQ (error feedback through the smoothed
calibration inputs) instead of rounding to nearest; not with --method w4a16.`;

export function parseQuantizeArgs(argv: string[]): { opts: QuantizeOptions & QuantizeExtras; json: boolean; help: boolean } {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      precision: { type: 'string' },
      rank: { type: 'string' },
      calib: { type: 'string' },
      method: { type: 'string' },
      lowrank: { type: 'string' },
      refine: { type: 'string' },
      'refine-tol': { type: 'string' },
      gptq: { type: 'boolean' },
      'grid-step': { type: 'string' },
      'exhaustive-grid': { type: 'boolean' },
      adaln: { type: 'string' },
      'calib-rows': { type: 'string' },
      device: { type: 'string' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  const int = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`--${name}: '${v}' is not an integer`);
    return n;
  };
  if (values.device && values.device !== 'cpu' && values.device !== 'cuda')
    throw new Error(`--device: '${values.device}' is not cpu or cuda`);
  if (values.device === 'cuda') throw new Error('--device cuda: the CUDA quantizer is not built yet; use --device cpu');
  if (values.adaln && values.adaln !== 'w4a16' && values.adaln !== '16bit') throw new Error(`--adaln: '${values.adaln}' is not w4a16 or 16bit`);
  if (positionals.length > 1) throw new Error(`one input checkpoint expected, got ${positionals.length}`);
  const opts: QuantizeOptions & QuantizeExtras = {
    input: positionals[0] ?? '',
    output: values.output ?? '',
    precision: values.precision as QuantizeOptions['precision'],
    rank: int('rank', values.rank),
    calib: values.calib,
    method: values.method as QuantizeOptions['method'],
    lowrank: values.lowrank as QuantizeOptions['lowrank'],
    gptq: values.gptq,
    force: values.force ?? false,
    refine: int('refine', values.refine),
    refineTol: values['refine-tol'] === undefined ? undefined : Number(values['refine-tol']),
    gridStep: values['grid-step'] === undefined ? undefined : Number(values['grid-step']),
    exhaustiveGrid: values['exhaustive-grid'],
    adaln: values.adaln as QuantizeExtras['adaln'],
    calibRows: int('calib-rows', values['calib-rows']),
  };
  for (const k of Object.keys(opts) as Array<keyof typeof opts>) if (opts[k] === undefined) delete opts[k];
  return { opts, json: values.json ?? false, help: values.help ?? false };
}

export async function main(argv: string[]): Promise<number> {
  const { opts, json, help } = parseQuantizeArgs(argv);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  if (!opts.input || !opts.output) throw new Error(`an input and -o OUT are required\n${USAGE}`);
  const bar = progressBar('quantize');
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  let report;
  try {
    report = await quantizeCheckpoint(opts, { onProgress: bar.update, signal: ac.signal });
  } finally {
    bar.stop();
    process.off('SIGINT', onSig);
  }
  if (json) {
    console.log(JSON.stringify(report, null, 2));
    return 0;
  }
  const s = report.svdq;
  console.log(`${report.output}: ${report.quantizedW4A4} W4A4 (${s.precision}, rank ${s.rank}, ${s.method}/${s.lowrank}${s.gptq ? ', GPTQ' : ''}), ` +
    `${report.w4a16} W4A16, ${report.kept16} kept 16-bit`);
  console.log(`calibration: ${s.calibration}`);
  if (s.padded_layers.length) console.log(`padded to the group size: ${s.padded_layers.join(', ')}`);
  const worst = s.layers.filter((l) => l.relError !== null).sort((a, b) => b.relError! - a.relError!).slice(0, 5);
  for (const l of worst) console.log(`  ${l.name.padEnd(36)} ${l.kind.padEnd(18)} rel err ${l.relError!.toFixed(4)}  ${l.smoothing}`);
  console.log(`time ${report.seconds.toFixed(1)} s (calibration ${report.calibSeconds.toFixed(1)} s), peak RSS ${(report.peakRssBytes / 2 ** 20).toFixed(0)} MiB`);
  return 0;
}
