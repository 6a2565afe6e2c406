// The tiny outlier FLUX of the whole-model quantizer tests (hidden 64, one double and one single block,
// tools/fixtures/outlier-flux.ts) in a fresh temporary folder, with calibration and held-out input sets
// (8x8 latents, 16 text tokens).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultOutlierConfig, makeInputs, makeOutlierFlux, writeSafetensors } from '../../../tools/fixtures/outlier-flux.ts';

export function tinyOutlierModel(seed: number, calibSets: number, heldSets: number) {
  const dir = mkdtempSync(join(tmpdir(), 'svdq-quant-model-'));
  const cfg = { ...defaultOutlierConfig, hidden: 64, heads: 1, depthDouble: 1, depthSingle: 1, seed };
  const model = join(dir, 'model.safetensors');
  const calib = join(dir, 'calib.safetensors');
  const held = join(dir, 'held.safetensors');
  writeSafetensors(model, makeOutlierFlux(cfg));
  writeSafetensors(calib, makeInputs(cfg, calibSets, 10, 8, 16));
  writeSafetensors(held, makeInputs(cfg, heldSets, 20, 8, 16));
  return { dir, cfg, model, calib, held };
}
