// Image fidelity metrics for grayscale images with values in [0, 1].
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';

/** Peak signal-to-noise ratio in dB (Infinity for identical images). */
export function psnr(a: Float32Array, b: Float32Array): number {
  checkSame(a, b);
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  const mse = se / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
}

/**
 * Structural similarity (Wang et al. 2004) with a 7x7 uniform window, C1 = (0.01)^2, C2 = (0.03)^2
 * for data range 1, averaged over every full window (scikit-image's defaults for small images).
 */
export function ssim(a: Float32Array, b: Float32Array, height: number, width: number, win = 7): number {
  checkSame(a, b);
  if (a.length !== height * width) throw new Error(`ssim: ${a.length} values for a ${height}x${width} image`);
  const c1 = 0.01 ** 2;
  const c2 = 0.03 ** 2;
  const n = win * win;
  const cov = n / (n - 1); // sample covariance, as scikit-image
  let total = 0;
  let count = 0;
  for (let y = 0; y + win <= height; y++) {
    for (let x = 0; x + win <= width; x++) {
      let sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
      for (let dy = 0; dy < win; dy++) {
        const row = (y + dy) * width + x;
        for (let dx = 0; dx < win; dx++) {
          const va = a[row + dx];
          const vb = b[row + dx];
          sa += va; sb += vb; saa += va * va; sbb += vb * vb; sab += va * vb;
        }
      }
      const ma = sa / n, mb = sb / n;
      const va = (saa / n - ma * ma) * cov;
      const vb = (sbb / n - mb * mb) * cov;
      const vab = (sab / n - ma * mb) * cov;
      total += ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
      count++;
    }
  }
  return total / count;
}

/** Mean and covariance of row-major features [n, d]. */
export function featureStats(features: Float32Array, n: number, d: number): { mean: Float64Array; cov: Matrix } {
  if (features.length !== n * d) throw new Error(`featureStats: ${features.length} values for ${n}x${d}`);
  if (n < 2) throw new Error('featureStats: need at least two samples');
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += features[i * d + j];
  for (let j = 0; j < d; j++) mean[j] /= n;
  const centered = new Matrix(n, d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) centered.set(i, j, features[i * d + j] - mean[j]);
  const cov = centered.transpose().mmul(centered).div(n - 1);
  return { mean, cov };
}

/**
 * Fréchet distance between two Gaussians: |m1 - m2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). The trace of the
 * square root is taken as the sum of sqrt of eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, PSD).
 */
export function frechetDistance(
  s1: { mean: Float64Array; cov: Matrix },
  s2: { mean: Float64Array; cov: Matrix },
): number {
  let meanTerm = 0;
  for (let j = 0; j < s1.mean.length; j++) meanTerm += (s1.mean[j] - s2.mean[j]) ** 2;
  const root1 = symmetricSqrt(s1.cov);
  const inner = root1.mmul(s2.cov).mmul(root1);
  const sym = inner.add(inner.transpose()).div(2);
  const eig = new EigenvalueDecomposition(sym, { assumeSymmetric: true }).realEigenvalues;
  const traceRoot = eig.reduce((acc, v) => acc + Math.sqrt(Math.max(v, 0)), 0);
  return meanTerm + s1.cov.trace() + s2.cov.trace() - 2 * traceRoot;
}

function symmetricSqrt(m: Matrix): Matrix {
  const e = new EigenvalueDecomposition(m, { assumeSymmetric: true });
  const v = e.eigenvectorMatrix;
  const d = Matrix.diag(e.realEigenvalues.map((x) => Math.sqrt(Math.max(x, 0))));
  return v.mmul(d).mmul(v.transpose());
}

function checkSame(a: Float32Array, b: Float32Array): void {
  if (a.length !== b.length) throw new Error(`images differ in size: ${a.length} vs ${b.length}`);
}
