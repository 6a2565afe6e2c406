// The ablation table: quantize one model several ways and measure each result's whole-model output
// error against the 16-bit model on the same inputs (held out from calibration).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProgressCallback, QuantizeOptions } from '../engine/types.ts';
import { quantNative } from './native.ts';
import { quantizeCheckpoint } from './quantize.ts';
import type { LayerReport, QuantizeExtras } from './quantize.ts';

export interface EvalConfig {
  label: string;
  opts: Partial<QuantizeOptions & QuantizeExtras>;
}

export const EVAL_CONFIGS: EvalConfig[] = [
  { label: 'naive W4A4 INT4', opts: { method: 'naive' } },
  { label: 'SmoothQuant W4A4 INT4', opts: { method: 'smoothquant' } },
  { label: 'low-rank only W4A4 INT4 r32', opts: { method: 'lowrank', rank: 32 } },
  { label: 'SVDQuant INT4 r16', opts: { rank: 16 } },
  { label: 'SVDQuant INT4 r32 (no refinement)', opts: { rank: 32, refine: 0 } },
  { label: 'SVDQuant INT4 r32', opts: { rank: 32 } },
  { label: 'SVDQuant INT4 r32 (no refinement) + GPTQ', opts: { rank: 32, refine: 0, gptq: true } },
  { label: 'SVDQuant INT4 r32 + GPTQ', opts: { rank: 32, gptq: true } },
  { label: 'SVDQuant INT4 r64', opts: { rank: 64 } },
  { label: 'SVDQuant INT4 r32 CorDA', opts: { rank: 32, lowrank: 'corda' } },
  { label: 'SVDQuant INT4 r32 whiten', opts: { rank: 32, lowrank: 'whiten' } },
  { label: 'SVDQuant NVFP4 r32', opts: { rank: 32, precision: 'nvfp4' } },
  { label: 'SVDQuant NVFP4 r32 + GPTQ', opts: { rank: 32, precision: 'nvfp4', gptq: true } },
  { label: 'W4A16 (INT4 weights g64)', opts: { method: 'w4a16' } },
];

export interface EvalRow {
  label: string;
  relError: number;
  seconds: number;
  meanLayerError: number | null;
  worstLayers: LayerReport[];
}

export async function evalMethods(
  model: string,
  o: { calib?: string; inputs?: string; configs?: EvalConfig[]; gridStep?: number; keepDir?: string; onProgress?: ProgressCallback } = {},
): Promise<EvalRow[]> {
  const dir = o.keepDir ?? mkdtempSync(join(tmpdir(), 'svdq-eval-'));
  const configs = o.configs ?? EVAL_CONFIGS;
  try {
    const paths: string[] = [];
    const rows: EvalRow[] = [];
    for (const [i, c] of configs.entries()) {
      const out = join(dir, `q${i}.safetensors`);
      const r = await quantizeCheckpoint({ input: model, output: out, force: true, calib: o.calib, gridStep: o.gridStep, ...c.opts });
      const layers = r.svdq.layers.filter((l) => l.relError !== null && l.kind !== 'dense');
      const worst = [...layers].sort((a, b) => b.relError! - a.relError!).slice(0, 3);
      const mean = layers.length ? layers.reduce((s, l) => s + l.relError!, 0) / layers.length : null;
      rows.push({ label: c.label, relError: Number.NaN, seconds: r.seconds, meanLayerError: mean, worstLayers: worst });
      paths.push(out);
      o.onProgress?.(i + 1, configs.length + 1, c.label);
    }
    // Held-out inputs: the given file, or random sets drawn with a seed the calibration does not use.
    const errs = await quantNative.compareModels(model, paths, o.inputs ?? '', 2, 99);
    errs.forEach((e, i) => (rows[i].relError = e));
    o.onProgress?.(configs.length + 1, configs.length + 1, 'compare');
    return rows;
  } finally {
    if (!o.keepDir) rmSync(dir, { recursive: true, force: true });
  }
}

export function formatEvalTable(rows: EvalRow[]): string {
  const lines = ['| method | whole-model rel. error | mean layer error (calib) | quantize s |', '|---|---|---|---|'];
  for (const r of rows)
    lines.push(`| ${r.label} | ${r.relError.toFixed(4)} | ${r.meanLayerError === null ? '-' : r.meanLayerError.toFixed(4)} | ${r.seconds.toFixed(1)} |`);
  return lines.join('\n');
}
