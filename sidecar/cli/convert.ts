// `svdq convert --from nunchaku IN -o OUT`: another tool's checkpoint rewritten in our layout.
// Engine.load reads Nunchaku's files directly too; converting once skips the unpacking on every load.
import { parseArgs } from 'node:util';
import { addon } from '../engine/addon.ts';

export const USAGE = `svdq convert --from nunchaku IN.safetensors -o OUT.safetensors [--force]

Rewrites Nunchaku's published SVDQuant FLUX checkpoint (svdq-int4_r32-*.safetensors) in our
checkpoint layout (BFL names, plain row-major tensors), computing the same model.`;

type ConvertCheckpoint = (input: string, output: string, opts: { from: string; force: boolean }) => Promise<void>;

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      from: { type: 'string' },
      output: { type: 'string', short: 'o' },
      force: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.from !== 'nunchaku') throw new Error(`--from: '${values.from ?? ''}' is not a supported format (nunchaku)\n${USAGE}`);
  if (positionals.length !== 1 || !values.output) throw new Error(`one input and -o OUT are required\n${USAGE}`);
  const t0 = performance.now();
  await (addon().convertCheckpoint as ConvertCheckpoint)(positionals[0], values.output, { from: values.from, force: values.force ?? false });
  console.error(`converted ${positionals[0]} -> ${values.output} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return 0;
}
