// npm run bench:gemm — W4A4 GEMM speed at FLUX shapes (issue 8): fused W4A4 + low-rank r=32, W4A4
// without the branch, unfused (two cuBLASLt BF16 GEMMs for the branch), cuBLASLt BF16; effective TOPS
// (2 M N K / time) and ratios to BF16, for M = 4608 (1024x1024 image + 512 text tokens), 1024, 256.
// Each W4A4 column includes the activation-quantization kernel (the layer's real cost).
// Options: --iters N (default 20), --m 4608,1024,256, --path auto|s4|s8, --json FILE (also $OUT/gemm.json).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadGpu } from '../test/gpu/helpers.ts';

const SHAPES: Array<[number, number, string]> = [
  [3072, 9216, 'qkv'], [3072, 3072, 'out_proj'], [3072, 12288, 'mlp_fc1'],
  [12288, 3072, 'mlp_fc2'], [3072, 21504, 'single linear1'], [15360, 3072, 'single linear2'],
];

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
}

const { gpu, why } = loadGpu();
if (!gpu) {
  console.error(`bench:gemm needs a CUDA device: ${why}`);
  process.exit(2);
}
const info = gpu.info();
const iters = Number(arg('iters', '20'));
const Ms = arg('m', '4608,1024,256').split(',').map(Number);
const path = arg('path', 'auto');
const rows: Array<Record<string, number | string | null>> = [];
const f = (v: number | null, d = 1) => (v === null ? 'n/a' : v.toFixed(d));
const header = '| M | K | N | layer | fused ms | fused TOPS | plain TOPS | unfused TOPS | BF16 TFLOPS | fused/BF16 | branch cost | unfused branch cost |';
const lines = [header, '|' + '---|'.repeat(12)];
for (const M of Ms) {
  for (const [K, N, name] of SHAPES) {
    const t = gpu.benchGemm({ M, K, N, rank: 32, iters, path });
    const ops = 2 * M * N * K;
    const tops = (ms: number | null) => (ms === null ? null : ops / (ms * 1e-3) / 1e12);
    const row = {
      M, K, N, layer: name, fused_ms: t.fused, plain_ms: t.plain, unfused_ms: t.unfused, bf16_ms: t.bf16,
      quant_ms: t.quant, gemm_ms: t.gemm,
      fused_tops: tops(t.fused), plain_tops: tops(t.plain), unfused_tops: tops(t.unfused), bf16_tflops: tops(t.bf16),
      speedup_vs_bf16: t.bf16 === null ? null : t.bf16 / t.fused,
      branch_cost: t.fused / t.plain - 1, unfused_branch_cost: t.unfused === null ? null : t.unfused / t.plain - 1,
    };
    rows.push(row);
    lines.push(
      `| ${M} | ${K} | ${N} | ${name} | ${f(t.fused, 3)} | ${f(row.fused_tops)} | ${f(row.plain_tops)} | ${f(row.unfused_tops)} | ` +
        `${f(row.bf16_tflops)} | ${row.speedup_vs_bf16 === null ? 'n/a' : row.speedup_vs_bf16.toFixed(2) + 'x'} | ` +
        `${(100 * row.branch_cost).toFixed(1)}% | ${row.unfused_branch_cost === null ? 'n/a' : (100 * row.unfused_branch_cost).toFixed(1) + '%'} |`,
    );
  }
}
const title = `W4A4 GEMM (${info.device}, sm_${info.computeCapability}, path ${path}, ${new Date().toISOString().slice(0, 10)}, ${iters} iters)`;
console.log(title);
console.log(lines.join('\n'));
const json = { title, device: info.device, computeCapability: info.computeCapability, path, iters, rows };
const out = arg('json', process.env.OUT ? join(process.env.OUT, 'gemm.json') : '');
if (out) writeFileSync(out, JSON.stringify(json, null, 2));
