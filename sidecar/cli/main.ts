// `svdq <command> ...`: dispatches to one module per command, loaded on demand.

interface Command {
  summary: string;
  load: () => Promise<{ main(argv: string[]): Promise<number> }>;
}

const commands: Record<string, Command> = {
  forward: { summary: 'run the transformer once on inputs from a safetensors file', load: () => import('./forward.ts') },
  quantize: { summary: 'quantize a 16-bit FLUX checkpoint to SVDQuant 4-bit', load: () => import('./quantize.ts') },
  convert: { summary: "rewrite Nunchaku's SVDQuant checkpoint in our layout", load: () => import('./convert.ts') },
  eval: { summary: 'whole-model error of each quantization method vs the 16-bit model', load: () => import('./eval.ts') },
  serve: { summary: 'start the sidecar (REST + ComfyUI channel)', load: () => import('./serve.ts') },
  demo: { summary: 'the bundled model in 16 bit and SVDQuant INT4, side by side', load: () => import('./demo.ts') },
};

function usage(): string {
  const rows = Object.entries(commands).map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`);
  return `usage: svdq <command> [options]\n\ncommands:\n${rows.join('\n')}\n\nsvdq <command> --help for a command's options.`;
}

export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h') {
    console.log(usage());
    return name ? 0 : 1;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(`svdq: unknown command '${name}'\n\n${usage()}`);
    return 1;
  }
  try {
    return await (await cmd.load()).main(rest);
  } catch (e) {
    // Our errors carry a message that names the problem; a stack only helps for bugs.
    console.error(`svdq ${name}: ${e instanceof Error ? e.message : String(e)}`);
    if (process.env.SVDQ_DEBUG && e instanceof Error) console.error(e.stack);
    return 1;
  }
}
