// Loads the native addon (native/build/Release/svdq.node) once, with a clear error when it is not built.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { TensorData } from './types.ts';

export const addonPath = fileURLToPath(new URL('../../native/build/Release/svdq.node', import.meta.url));

export interface SafetensorsContents {
  metadata: Record<string, string>;
  tensors: Record<string, TensorData>;
}
export interface SafetensorsHeader {
  metadata: Record<string, string>;
  tensors: Record<string, { dtype: TensorData['dtype']; shape: number[] }>;
}

/** The parts of the addon this module types; other modules (quant, lora) type their own. */
export interface Addon {
  readSafetensors(path: string): SafetensorsContents;
  inspectSafetensors(path: string): SafetensorsHeader;
  writeSafetensors(path: string, tensors: Record<string, TensorData>, metadata?: Record<string, string>, overwrite?: boolean): void;
  Engine: new (path: string, options?: { axesDim?: number[]; memoryLimitBytes?: number; threads?: number }) => NativeEngine;
  [name: string]: unknown;
}

export interface NativeEngine {
  forward(inputs: Record<string, TensorData | TensorData[] | string | undefined>, cancel?: Int32Array): Promise<TensorData>;
  info(): NativeEngineInfo;
  dispose(): void;
}

export interface NativeEngineInfo {
  path: string;
  config: Record<string, number | boolean | number[]>;
  weightBytes: number;
  layers: Array<{ name: string; kind: string; in: number; out: number }>;
  metadata: Record<string, string>;
}

let cached: Addon | undefined;

export function addon(): Addon {
  if (cached) return cached;
  if (!existsSync(addonPath)) throw new Error(`native addon not built (${addonPath} is missing): run npm run build`);
  cached = createRequire(import.meta.url)(addonPath) as Addon;
  return cached;
}
