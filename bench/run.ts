// npm run bench: every benchmark that can run on this machine, one after another (speed targets live
// here, not in tests). GPU benchmarks (bench:gemm) run only where the addon has a CUDA device.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const benches: Array<{ file: string; args: string[]; gpu?: boolean }> = [
  { file: 'channel.ts', args: ['--iters', '10'] },
  { file: 'lora.ts', args: ['--repeat', '3'] },
  { file: 'quantize.ts', args: ['--double', '1', '--single', '1'] },  // ~20 min on 2 cores
  { file: 'gemm.ts', args: [], gpu: true },
];

const gpu = process.env.SVDQ_GPU_TESTS === '1';
let failed = 0;
for (const b of benches) {
  if (b.gpu && !gpu) {
    console.log(`\n== ${b.file}: skipped (needs a GPU; set SVDQ_GPU_TESTS=1 on a GPU machine)`);
    continue;
  }
  console.log(`\n== ${b.file} ${b.args.join(' ')}`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL(b.file, import.meta.url)), ...b.args], {
    stdio: 'inherit',
  });
  if (r.status !== 0) failed++;
}
process.exitCode = failed ? 1 : 0;
