// `svdq eval --model IN`: whole-model error of each quantization method vs the 16-bit model.
import { parseArgs } from 'node:util';
import { EVAL_CONFIGS, evalMethods, formatEvalTable } from '../quant/eval.ts';
import { progressBar } from './progress.ts';

export const USAGE = `svdq eval --model IN.safetensors [--calib FILE] [--inputs FILE] [--only LABEL,...] [--grid-step S]
          [--keep DIR] [--json]

Quantizes IN with each method (${EVAL_CONFIGS.length} configurations) and prints the whole-model relative output
error against IN on held-out inputs (--inputs, else random ones), plus the worst layers.`;

export async function main(argv: string[]): Promise<number> {
  // Image-level fidelity on the bundled model lives with the other fidelity code.
  if (argv.includes('--fidelity')) return (await import('../fidelity/evaluate.ts')).main(argv.filter((a) => a !== '--fidelity'));
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      calib: { type: 'string' },
      inputs: { type: 'string' },
      only: { type: 'string' },
      'grid-step': { type: 'string' },
      keep: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.model) throw new Error(`--model is required\n${USAGE}`);
  let configs = EVAL_CONFIGS;
  if (values.only) {
    const want = values.only.split(',').map((s) => s.trim().toLowerCase());
    configs = EVAL_CONFIGS.filter((c) => want.some((w) => c.label.toLowerCase().includes(w)));
    if (!configs.length) throw new Error(`--only '${values.only}' matches none of: ${EVAL_CONFIGS.map((c) => c.label).join('; ')}`);
  }
  const gridStep = values['grid-step'] === undefined ? 0.1 : Number(values['grid-step']);
  const bar = progressBar('eval');
  const t0 = performance.now();
  let rows;
  try {
    rows = await evalMethods(values.model, { calib: values.calib, inputs: values.inputs, configs, gridStep, keepDir: values.keep, onProgress: bar.update });
  } finally {
    bar.stop();
  }
  if (values.json) {
    console.log(JSON.stringify(rows, null, 2));
    return 0;
  }
  console.log(formatEvalTable(rows));
  console.log('\nworst layers (calibration-sample relative error):');
  for (const r of rows) console.log(`  ${r.label}: ${r.worstLayers.map((l) => `${l.name} ${l.relError!.toFixed(4)}`).join(', ')}`);
  console.log(`\n${((performance.now() - t0) / 1000).toFixed(1)} s, peak RSS ${((process.resourceUsage().maxRSS * 1024) / 2 ** 20).toFixed(0)} MiB`);
  return 0;
}
