// Fidelity metrics against closed forms on fresh random inputs.
import test from 'ava';
import { Matrix, QrDecomposition } from 'ml-matrix';
import { featureStats, frechetDistance, psnr, ssim } from '../../sidecar/fidelity/metrics.ts';
import { SeededRandom } from '../../sidecar/sampling/rng.ts';

const seed = Date.now() >>> 0;
const rng = new SeededRandom(seed);

test('psnr of a constant offset is 10 log10(1/d^2)', (t) => {
  const a = Float32Array.from(rng.normal(784), (v) => 0.5 + 0.1 * v);
  const d = 0.05;
  const b = a.map((v) => v + d);
  t.true(Math.abs(psnr(a, b) - 10 * Math.log10(1 / (d * d))) < 1e-3, `seed ${seed}`);
  t.is(psnr(a, a), Infinity);
});

test('ssim: identity is 1, constant images follow the luminance formula, noise lowers it', (t) => {
  const h = 28, w = 28;
  const a = Float32Array.from(rng.normal(h * w), (v) => 0.5 + 0.2 * v);
  t.true(Math.abs(ssim(a, a, h, w) - 1) < 1e-9);
  const c1 = 0.3, c2 = 0.6, C1 = 0.01 ** 2;
  const expected = (2 * c1 * c2 + C1) / (c1 * c1 + c2 * c2 + C1);
  const got = ssim(new Float32Array(h * w).fill(c1), new Float32Array(h * w).fill(c2), h, w);
  t.true(Math.abs(got - expected) < 1e-6, `${got} vs ${expected}`);
  const noisy = a.map((v, i) => v + 0.1 * (i % 2 ? 1 : -1));
  const noisier = a.map((v, i) => v + 0.3 * (i % 2 ? 1 : -1));
  const s1 = ssim(a, noisy, h, w), s2 = ssim(a, noisier, h, w);
  t.true(s1 < 1 && s2 < s1, `${s1} ${s2}`);
  t.true(Math.abs(ssim(noisy, a, h, w) - s1) < 1e-12, 'symmetric');
  t.throws(() => ssim(a, a, 27, 28), { message: /27x28/ });
});

test('frechet distance matches the diagonal closed form and is rotation invariant', (t) => {
  const d = 12;
  const m1 = Float64Array.from(rng.normal(d));
  const m2 = Float64Array.from(rng.normal(d));
  const v1 = Array.from(rng.normal(d), (x) => 0.5 + x * x);
  const v2 = Array.from(rng.normal(d), (x) => 0.5 + x * x);
  let expected = 0;
  for (let j = 0; j < d; j++) expected += (m1[j] - m2[j]) ** 2 + (Math.sqrt(v1[j]) - Math.sqrt(v2[j])) ** 2;
  const s1 = { mean: m1, cov: Matrix.diag(v1) };
  const s2 = { mean: m2, cov: Matrix.diag(v2) };
  t.true(Math.abs(frechetDistance(s1, s2) - expected) < 1e-8 * Math.max(1, expected));
  // A random rotation of both Gaussians leaves the distance unchanged (non-diagonal path).
  const q = new QrDecomposition(new Matrix([...Array(d)].map(() => Array.from(rng.normal(d))))).orthogonalMatrix;
  const rot = (s: { mean: Float64Array; cov: Matrix }) => ({
    mean: Float64Array.from(q.mmul(Matrix.columnVector(Array.from(s.mean))).getColumn(0)),
    cov: q.mmul(s.cov).mmul(q.transpose()),
  });
  const got = frechetDistance(rot(s1), rot(s2));
  t.true(Math.abs(got - expected) < 1e-6 * Math.max(1, expected), `${got} vs ${expected}`);
  t.true(Math.abs(frechetDistance(s1, s1)) < 1e-8);
});

test('featureStats gives the sample mean and unbiased covariance', (t) => {
  const n = 400, d = 3;
  const f = rng.normal(n * d);
  const { mean, cov } = featureStats(f, n, d);
  let m0 = 0;
  for (let i = 0; i < n; i++) m0 += f[i * d];
  m0 /= n;
  let c01 = 0;
  for (let i = 0; i < n; i++) c01 += (f[i * d] - mean[0]) * (f[i * d + 1] - mean[1]);
  t.true(Math.abs(mean[0] - m0) < 1e-9);
  t.true(Math.abs(cov.get(0, 1) - c01 / (n - 1)) < 1e-9);
});

test('Fashion-MNIST test images survive the latent mapping round trip and the classifier judges them', async (t) => {
  const { loadTestSet, imagesToLatent, latentToImages, Classifier } = await import('../../sidecar/fidelity/fmnist.ts');
  const { loadBundled } = await import('../../sidecar/fidelity/bundled.ts');
  const { images, labels } = loadTestSet(200);
  t.is(images.length, 200);
  t.true(labels.every((l) => Number.isInteger(l) && l >= 0 && l < 10));
  const back = latentToImages(imagesToLatent(images), images.length);
  // Exact at 8 bit (what an image file holds), and within float rounding as values.
  for (let i = 0; i < images.length; i++) {
    t.deepEqual(back[i].map((v) => Math.round(v * 255)), images[i].map((v) => Math.round(v * 255)));
    t.true(back[i].every((v, j) => Math.abs(v - images[i][j]) < 1e-6));
  }
  // The shipped judge: its accuracy on real test images is close to what its metadata claims (0.89).
  const clf = Classifier.load(loadBundled().classifier);
  const acc = images.filter((im, i) => clf.run(im).label === labels[i]).length / images.length;
  t.true(acc > 0.8, `classifier accuracy ${acc}`);
});
