// `--lora FILE[:STRENGTH]` (repeatable) as the svdq commands take it.

export interface LoraArg {
  path: string;
  strength: number;
}

/**
 * Splits FILE[:STRENGTH]. The strength is whatever follows the last ':' when it reads as a number,
 * so paths that contain ':' (C:\loras\x.safetensors, a:b.safetensors) still work; default strength 1.
 */
export function parseLoraArg(arg: string): LoraArg {
  const i = arg.lastIndexOf(':');
  if (i > 0) {
    const tail = arg.slice(i + 1);
    if (/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(tail)) {
      const strength = Number(tail);
      if (!Number.isFinite(strength)) throw new Error(`--lora ${arg}: strength ${tail} is not a finite number`);
      return { path: arg.slice(0, i), strength };
    }
  }
  if (arg === '') throw new Error('--lora needs a file: --lora FILE[:STRENGTH]');
  return { path: arg, strength: 1 };
}

/** All --lora values of a parseArgs result (string, string[] or absent). */
export function parseLoraArgs(values: string | string[] | undefined): LoraArg[] {
  if (values === undefined) return [];
  return (Array.isArray(values) ? values : [values]).map(parseLoraArg);
}
