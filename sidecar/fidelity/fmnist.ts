// The bundled Fashion-MNIST model's fixed latent space, its judge (an MLP classifier), and the real
// test images (Debian's dataset-fashion-mnist), as models/flux-fmnist/README.md documents them.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { addon } from '../engine/addon.ts';
import { f32Values } from '../engine/tensor.ts';

export const IMAGE = 28;
const PAD = 2;
const LATENT = 16;
export const DATASET_DIR = process.env.FMNIST_DIR ?? '/usr/share/datasets/fashion-mnist';

/** latent [N, 4, 16, 16] -> images [N, 28, 28] in [0, 1]: pixel-shuffle, crop the 2 px border. */
export function latentToImages(z: Float32Array, n: number): Float32Array[] {
  if (z.length !== n * 4 * LATENT * LATENT) throw new Error(`latentToImages: ${z.length} values for ${n} latents of [4, 16, 16]`);
  const out: Float32Array[] = [];
  for (let b = 0; b < n; b++) {
    const img = new Float32Array(IMAGE * IMAGE);
    for (let y = 0; y < IMAGE; y++)
      for (let x = 0; x < IMAGE; x++) {
        const py = y + PAD, px = x + PAD;
        const ch = 2 * (py % 2) + (px % 2);
        const v = z[((b * 4 + ch) * LATENT + (py >> 1)) * LATENT + (px >> 1)];
        img[y * IMAGE + x] = Math.min(1, Math.max(0, (v + 1) / 2));
      }
    out.push(img);
  }
  return out;
}

/** images in [0, 1] -> latent [N, 4, 16, 16] (the inverse of latentToImages for in-range pixels). */
export function imagesToLatent(images: Float32Array[]): Float32Array {
  const z = new Float32Array(images.length * 4 * LATENT * LATENT).fill(-1);
  images.forEach((img, b) => {
    for (let y = 0; y < IMAGE; y++)
      for (let x = 0; x < IMAGE; x++) {
        const py = y + PAD, px = x + PAD;
        z[((b * 4 + 2 * (py % 2) + (px % 2)) * LATENT + (py >> 1)) * LATENT + (px >> 1)] = img[y * IMAGE + x] * 2 - 1;
      }
  });
  return z;
}

/** An idx (gzip) file of unsigned bytes: returns its dims and body. */
export function readIdx(path: string): { dims: number[]; data: Uint8Array } {
  const raw = gunzipSync(readFileSync(path));
  if (raw.length < 4 || raw[0] !== 0 || raw[1] !== 0 || raw[2] !== 0x08) throw new Error(`${path}: not an unsigned-byte idx file`);
  const dims: number[] = [];
  for (let i = 0; i < raw[3]; i++) dims.push(raw.readUInt32BE(4 + 4 * i));
  const data = raw.subarray(4 + 4 * raw[3]);
  if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new Error(`${path}: header says [${dims}], body has ${data.length} bytes`);
  return { dims, data };
}

/** Test-split images in [0, 1] and labels. */
export function loadTestSet(limit = Infinity, dir = DATASET_DIR): { images: Float32Array[]; labels: number[] } {
  const x = readIdx(join(dir, 't10k-images-idx3-ubyte.gz'));
  const y = readIdx(join(dir, 't10k-labels-idx1-ubyte.gz'));
  const n = Math.min(limit, x.dims[0]);
  const images = Array.from({ length: n }, (_, i) => Float32Array.from(x.data.subarray(i * 784, (i + 1) * 784), (v) => v / 255));
  return { images, labels: Array.from(y.data.subarray(0, n)) };
}

/** The MLP judge 784 -> 256 (ReLU) -> 10 on pixels/255 (rounded to 8 bit first, as an image file would be). */
export class Classifier {
  private constructor(
    private w1: Float32Array,
    private b1: Float32Array,
    private w2: Float32Array,
    private b2: Float32Array,
  ) {}

  static load(path: string): Classifier {
    const { tensors } = addon().readSafetensors(path);
    const get = (k: string) => {
      if (!tensors[k]) throw new Error(`${path}: missing tensor '${k}'`);
      return Float32Array.from(f32Values(tensors[k]));
    };
    return new Classifier(get('fc1.weight'), get('fc1.bias'), get('fc2.weight'), get('fc2.bias'));
  }

  /** Hidden ReLU features [256] (the space the Fréchet distance is measured in) and the predicted class. */
  run(img: Float32Array): { features: Float32Array; label: number } {
    const h = new Float32Array(256);
    for (let j = 0; j < 256; j++) {
      let s = this.b1[j];
      for (let i = 0; i < 784; i++) s += this.w1[j * 784 + i] * (Math.round(img[i] * 255) / 255);
      h[j] = Math.max(0, s);
    }
    let best = 0, bestV = -Infinity;
    for (let c = 0; c < 10; c++) {
      let s = this.b2[c];
      for (let j = 0; j < 256; j++) s += this.w2[c * 256 + j] * h[j];
      if (s > bestV) { bestV = s; best = c; }
    }
    return { features: h, label: best };
  }
}
