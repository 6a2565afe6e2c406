// `svdq eval --fidelity`: image-level fidelity of every quantization method on the bundled model.
// Each variant samples the same seeds; PSNR/SSIM are against the 16-bit sample of the same seed, the
// classifier judges the class, and a Fréchet distance compares generated and real test images in the
// classifier's hidden-feature space (NOT FID: no Inception network here).
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { progressBar } from '../cli/progress.ts';
import { Engine } from '../engine/engine.ts';
import type { QuantizeOptions } from '../engine/types.ts';
import { quantizeCheckpoint } from '../quant/quantize.ts';
import { sampleClasses } from '../sampling/classes.ts';
import { loadBundled } from './bundled.ts';
import { Classifier, latentToImages, loadTestSet } from './fmnist.ts';
import { featureStats, frechetDistance, psnr, ssim } from './metrics.ts';
import { writeGrid } from './png.ts';

interface Variant {
  name: string;
  quant?: Pick<QuantizeOptions, 'method' | 'precision' | 'rank' | 'lowrank'>;
}

export const VARIANTS: Variant[] = [
  { name: 'BF16' },
  { name: 'W4A16 (INT4 g64)', quant: { method: 'w4a16' } },
  { name: 'naive W4A4', quant: { method: 'naive', rank: 32 } },
  { name: 'SmoothQuant W4A4', quant: { method: 'smoothquant', rank: 32 } },
  { name: 'SVDQuant INT4 r16', quant: { method: 'svdquant', precision: 'int4', rank: 16 } },
  { name: 'SVDQuant INT4 r32', quant: { method: 'svdquant', precision: 'int4', rank: 32 } },
  { name: 'SVDQuant INT4 r64', quant: { method: 'svdquant', precision: 'int4', rank: 64 } },
  { name: 'SVDQuant NVFP4 r32', quant: { method: 'svdquant', precision: 'nvfp4', rank: 32 } },
  { name: 'SVDQuant INT4 r32 CorDA', quant: { method: 'svdquant', precision: 'int4', rank: 32, lowrank: 'corda' } },
  { name: 'SVDQuant INT4 r32 whiten', quant: { method: 'svdquant', precision: 'int4', rank: 32, lowrank: 'whiten' } },
];

export const USAGE = `svdq eval --fidelity [--samples 500] [--steps N] [--batch 50] [--cfg 2.0] [--out DIR] [--only SUBSTR]

Samples the bundled model with every quantization variant on fixed seeds and prints PSNR/SSIM vs
the 16-bit samples, classifier accuracy, and a Fréchet distance to real test images in the
classifier's feature space (not FID). Writes DIR/fidelity.md and DIR/fidelity.png.`;

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      samples: { type: 'string', default: '500' },
      steps: { type: 'string' },
      batch: { type: 'string', default: '50' },
      cfg: { type: 'string', default: '2' },
      out: { type: 'string', default: 'out/fidelity' },
      only: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const n = Number(values.samples), batch = Number(values.batch);
  if (!Number.isInteger(n) || n < 2) throw new Error(`--samples: expected an integer >= 2, got ${values.samples}`);
  const bundled = loadBundled();
  const steps = values.steps ? Number(values.steps) : bundled.steps;
  const outDir = resolve(values.out!);
  mkdirSync(outDir, { recursive: true });
  const classifier = Classifier.load(bundled.classifier);
  const labels = Array.from({ length: n }, (_, i) => i % 10);
  const seeds = labels.map((_, i) => 100000 + i);

  const real = loadTestSet(n);
  const realFeats = new Float32Array(n * 256);
  real.images.forEach((im, i) => realFeats.set(classifier.run(im).features, i * 256));
  const realStats = featureStats(realFeats, n, 256);
  const realAcc = real.images.filter((im, i) => classifier.run(im).label === real.labels[i]).length / n;

  const rows: string[] = [];
  const grid: Float32Array[][] = [];
  let reference: Float32Array[] | undefined;
  const variants = VARIANTS.filter((v) => v.name === 'BF16' || !values.only || v.name.includes(values.only));
  for (const v of variants) {
    let path = bundled.model;
    if (v.quant) {
      path = join(outDir, `${v.name.replace(/[^A-Za-z0-9]+/g, '_')}.safetensors`);
      if (!existsSync(path) || statSync(path).mtimeMs < statSync(bundled.model).mtimeMs) {
        const bar = progressBar(`quantize ${v.name}`);
        await quantizeCheckpoint({ input: bundled.model, output: path, force: true, ...v.quant }, { onProgress: bar.update });
        bar.stop();
      }
    }
    const engine = await Engine.load(path);
    const weightBytes = engine.info().weightBytes;
    const bar = progressBar(`sample ${v.name}`);
    const images: Float32Array[] = [];
    let secondsPerStep = 0;
    for (let b0 = 0; b0 < n; b0 += batch) {
      const ls = labels.slice(b0, b0 + batch);
      const r = await sampleClasses(engine, bundled.cond, {
        labels: ls, seeds: seeds.slice(b0, b0 + batch), steps, mu: bundled.mu, cfg: Number(values.cfg), latentShape: bundled.latentShape,
      });
      secondsPerStep += r.secondsPerStep;
      images.push(...latentToImages(r.latents, ls.length));
      bar.update(images.length, n, 'samples');
    }
    bar.stop();
    engine.dispose();
    reference ??= images;
    const feats = new Float32Array(n * 256);
    let correct = 0, ps = 0, ss = 0;
    images.forEach((im, i) => {
      const c = classifier.run(im);
      feats.set(c.features, i * 256);
      if (c.label === labels[i]) correct++;
      ps += Math.min(psnr(reference![i], im), 100); // identical images (BF16 itself) count as 100 dB
      ss += ssim(reference![i], im, 28, 28);
    });
    const fd = frechetDistance(featureStats(feats, n, 256), realStats);
    rows.push(
      `| ${v.name} | ${(weightBytes / 1024).toFixed(0)} | ${v.quant ? (ps / n).toFixed(2) : '—'} | ${v.quant ? (ss / n).toFixed(4) : '—'} | ${((100 * correct) / n).toFixed(1)}% | ${fd.toFixed(2)} |`,
    );
    grid.push(images.slice(0, 10));
    console.log(rows[rows.length - 1]);
  }
  const table = [
    `Bundled model, ${n} samples (seeds 100000..${100000 + n - 1}, classes round-robin), ${steps} Euler steps, CFG ${values.cfg}.`,
    `Real test images: classifier accuracy ${(100 * realAcc).toFixed(1)}% on the same count. FD = Fréchet distance to`,
    `${n} real test images in the classifier's 256-d ReLU feature space (not FID's Inception).`,
    '',
    '| variant | weights KiB | PSNR vs BF16 (dB) | SSIM vs BF16 | classifier accuracy | FD (classifier features) |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
  console.log(`\n${table}`);
  writeFileSync(join(outDir, 'fidelity.md'), `${table}\n`);
  writeGrid(join(outDir, 'fidelity.png'), grid.map((r) => r.map((pixels) => ({ width: 28, height: 28, pixels }))));
  return 0;
}
