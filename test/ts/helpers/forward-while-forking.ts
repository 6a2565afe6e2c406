// Child process for blas-fork.test.ts: engine forwards on a libuv worker thread while the main thread
// keeps spawning child processes (each a fork). Prints {forwards, spawns, maxRelDiff} as JSON.
import { execFile } from 'node:child_process';
import { Engine } from '../../../sidecar/engine/engine.ts';
import { f32Values } from '../../../sidecar/engine/tensor.ts';
import { tinyInputs, writeTinyFlux } from './tiny-flux.ts';

const [model, countArg] = process.argv.slice(2);
const count = Number(countArg);
const cfg = await writeTinyFlux(model!, { seed: 31, guidance: true });
// 32x32 latent: each forward runs long enough (tens of ms) for spawns to land inside its BLAS calls.
const inputs = tinyInputs(cfg, { seed: 32, batch: 2, height: 32, width: 32, textTokens: 16 });
const engine = await Engine.load(model!);
const reference = f32Values(await engine.forward(inputs));
const refMax = reference.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

let done = false, spawns = 0, maxRelDiff = 0;
const spawning = (async () => {
  while (!done) {
    await new Promise((resolve) => execFile(process.execPath, ['--version'], resolve));
    spawns++;
  }
})();
for (let i = 0; i < count; i++) {
  const out = f32Values(await engine.forward(inputs));
  let diff = 0;
  for (let j = 0; j < out.length; j++) diff = Math.max(diff, Math.abs(out[j]! - reference[j]!));
  maxRelDiff = Math.max(maxRelDiff, Number.isNaN(diff) ? Infinity : diff / refMax);
}
done = true;
await spawning;
engine.dispose();
console.log(JSON.stringify({ forwards: count, spawns, maxRelDiff }));
