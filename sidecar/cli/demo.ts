// `svdq demo`: the main job on the bundled model. Loads the 16-bit model, quantizes it on demand with
// SVDQuant INT4, samples one image per class from the same seeds with both, writes a side-by-side PNG
// and prints memory, time per step and fidelity.
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../engine/engine.ts';
import { loadBundled } from '../fidelity/bundled.ts';
import { Classifier, latentToImages } from '../fidelity/fmnist.ts';
import { psnr, ssim } from '../fidelity/metrics.ts';
import { writeGrid } from '../fidelity/png.ts';
import { quantizeCheckpoint } from '../quant/quantize.ts';
import { sampleClasses } from '../sampling/classes.ts';
import { progressBar } from './progress.ts';

export const USAGE = `svdq demo [--out DIR] [--steps N] [--seed S] [--cfg 2.0] [--rank 32] [--requantize]

Runs the bundled Fashion-MNIST FLUX model in 16 bit and as SVDQuant INT4 (quantized on demand into
DIR, default ./out) on the same seeds, writes DIR/demo.png (top row 16-bit, bottom row 4-bit) and
prints memory, time per step and fidelity. Classifier-free guidance (default 2.0) uses the
model's unconditional entry; time per step counts both branches.`;

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string', default: 'out' },
      steps: { type: 'string' },
      seed: { type: 'string', default: '0' },
      cfg: { type: 'string', default: '2' },
      rank: { type: 'string', default: '32' },
      requantize: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const bundled = loadBundled();
  const outDir = resolve(values.out!);
  mkdirSync(outDir, { recursive: true });
  const rank = Number(values.rank);
  const qPath = join(outDir, `flux-fmnist-svdq-int4-r${rank}.safetensors`);
  // Quantized on demand, once: redone when asked or when the bundled model is newer than the cache.
  if (values.requantize || !existsSync(qPath) || statSync(qPath).mtimeMs < statSync(bundled.model).mtimeMs) {
    const bar = progressBar('quantize');
    const t0 = performance.now();
    const r = await quantizeCheckpoint(
      { input: bundled.model, output: qPath, precision: 'int4', rank, method: 'svdquant', force: true },
      { onProgress: bar.update },
    );
    bar.stop();
    console.log(`quantized ${r.quantizedW4A4} layers W4A4 + ${r.w4a16} W4A16 in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${qPath}`);
  }
  const steps = values.steps ? Number(values.steps) : bundled.steps;
  const labels = bundled.classes.map((_, i) => i);
  const seeds = labels.map((c) => Number(values.seed) * 1000 + c);
  const classifier = Classifier.load(bundled.classifier);

  const run = async (path: string, name: string) => {
    const engine = await Engine.load(path);
    const bar = progressBar(`sample ${name}`);
    const r = await sampleClasses(engine, bundled.cond, {
      labels, seeds, steps, mu: bundled.mu, cfg: Number(values.cfg), latentShape: bundled.latentShape, onStep: (s, n) => bar.update(s, n, 'steps'),
    });
    bar.stop();
    const weightBytes = engine.info().weightBytes;
    engine.dispose();
    const images = latentToImages(r.latents, labels.length);
    const correct = images.filter((im, i) => classifier.run(im).label === labels[i]).length;
    return { images, weightBytes, msPerStep: r.secondsPerStep * 1000, accuracy: correct / labels.length };
  };
  const base = await run(bundled.model, '16-bit');
  const quant = await run(qPath, 'int4');
  const png = join(outDir, 'demo.png');
  const toGray = (pixels: Float32Array) => ({ width: 28, height: 28, pixels });
  writeGrid(png, [base.images.map(toGray), quant.images.map(toGray)]);

  const mean = (f: (i: number) => number) => labels.reduce((s, i) => s + f(i), 0) / labels.length;
  const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;
  console.log(`\nclasses: ${bundled.classes.join(', ')}  (${steps} steps, seeds ${seeds[0]}..${seeds[seeds.length - 1]})`);
  console.log(`| model | weights | ms/step (batch ${labels.length}) | classifier accuracy |`);
  console.log('| --- | --- | --- | --- |');
  console.log(`| 16-bit (BF16) | ${kib(base.weightBytes)} | ${base.msPerStep.toFixed(1)} | ${(100 * base.accuracy).toFixed(0)}% |`);
  console.log(`| SVDQuant INT4 r${rank} | ${kib(quant.weightBytes)} | ${quant.msPerStep.toFixed(1)} | ${(100 * quant.accuracy).toFixed(0)}% |`);
  console.log(`fidelity of INT4 vs 16-bit, same seeds: PSNR ${mean((i) => psnr(base.images[i], quant.images[i])).toFixed(2)} dB, SSIM ${mean((i) => ssim(base.images[i], quant.images[i], 28, 28)).toFixed(4)}`);
  console.log(`wrote ${png} (top: 16-bit, bottom: SVDQuant INT4)`);
  return 0;
}
