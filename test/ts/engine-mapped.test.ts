// BF16 checkpoints are read in place from their memory map: loading costs no process memory for the
// weights (they are in the page cache), and the mapped model computes what a copied one does.
// Alone in its file so no other test's allocations move the resident-set measurement.
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../../sidecar/engine/engine.ts';
import { f32Values } from '../../sidecar/engine/tensor.ts';
import { tinyInputs, writeTinyFlux } from './helpers/tiny-flux.ts';

test('a BF16 model loads without copying its weights into process memory, and runs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'svdq-mapped-'));
  const p = join(dir, 'model.safetensors');
  const cfg = await writeTinyFlux(p, { seed: 5, hidden: 768, heads: 6, depth: 2, single: 2, dtype: 'BF16' });
  globalThis.gc?.();
  const before = process.memoryUsage().rss;
  const e = await Engine.load(p);
  const grew = process.memoryUsage().rss - before;
  const weights = e.info().weightBytes;
  t.log(`weights ${(weights / 2 ** 20).toFixed(1)} MiB, resident set grew ${(grew / 2 ** 20).toFixed(1)} MiB on load`);
  t.true(weights > 100 * 2 ** 20, 'the model is big enough for the measurement to mean something');
  t.true(grew < weights / 2, 'a copy of the weights would have grown the resident set by their size');
  const out = f32Values(await e.forward(tinyInputs(cfg, { seed: 6, height: 8, width: 8 })));
  t.false(out.some((v) => !Number.isFinite(v)));
  e.dispose();
});
