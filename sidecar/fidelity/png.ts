// Writes grayscale image grids as PNG (pngjs), e.g. the demo's 16-bit vs 4-bit side-by-side.
import { writeFileSync } from 'node:fs';
import { PNG } from 'pngjs';

export interface GrayImage {
  width: number;
  height: number;
  /** Row-major values in [0, 1]; values outside are clipped. */
  pixels: Float32Array;
}

/** Lays images out row by row (`rows[r][c]`) with a gap, upscaled by `scale`, and writes a PNG. */
export function writeGrid(path: string, rows: GrayImage[][], scale = 3, gap = 4): void {
  const cellW = Math.max(...rows.flat().map((im) => im.width)) * scale;
  const cellH = Math.max(...rows.flat().map((im) => im.height)) * scale;
  const cols = Math.max(...rows.map((r) => r.length));
  const png = new PNG({ width: cols * (cellW + gap) + gap, height: rows.length * (cellH + gap) + gap });
  png.data.fill(255);
  rows.forEach((row, r) =>
    row.forEach((im, c) => {
      const ox = gap + c * (cellW + gap);
      const oy = gap + r * (cellH + gap);
      for (let y = 0; y < im.height * scale; y++) {
        for (let x = 0; x < im.width * scale; x++) {
          const v = im.pixels[Math.floor(y / scale) * im.width + Math.floor(x / scale)];
          const g = Math.round(255 * Math.min(1, Math.max(0, v)));
          const o = ((oy + y) * png.width + ox + x) * 4;
          png.data[o] = png.data[o + 1] = png.data[o + 2] = g;
          png.data[o + 3] = 255;
        }
      }
    }),
  );
  writeFileSync(path, PNG.sync.write(png));
}
