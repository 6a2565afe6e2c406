// Rectified-flow sampling: FLUX's schedule and Euler integration of an exact velocity field.
import test from 'ava';
import { fluxSigmas, sampleEuler } from '../../sidecar/sampling/flow.ts';
import { SeededRandom } from '../../sidecar/sampling/rng.ts';

test('flux sigmas run from 1 to 0, decreasing, shifted above the linear schedule', (t) => {
  const s = fluxSigmas(20, 1.15);
  t.is(s[0], 1);
  t.is(s[20], 0);
  for (let i = 0; i < 20; i++) t.true(s[i + 1] < s[i]);
  t.true(s[10] > 0.5, 'a positive shift keeps more noise at mid-schedule');
  t.throws(() => fluxSigmas(0, 1), { message: /steps/ });
});

test('Euler on the straight path of a known x0 lands on x0', async (t) => {
  const rng = new SeededRandom(Date.now() >>> 0);
  const x0 = rng.normal(256);
  const noise = rng.normal(256);
  // Given x_sigma = (1 - sigma) x0 + sigma n, the true velocity is n - x0 = (x_sigma - x0) / sigma.
  const model = async (x: Float32Array, sigma: number) => x.map((v, i) => (v - x0[i]) / sigma);
  const out = await sampleEuler(model, noise, fluxSigmas(7, 1.15));
  let err = 0, ref = 0;
  for (let i = 0; i < 256; i++) { err += (out[i] - x0[i]) ** 2; ref += x0[i] ** 2; }
  t.true(Math.sqrt(err / ref) < 1e-5, `relative error ${Math.sqrt(err / ref)}`);
});

test('seeded noise is reproducible and standard normal', (t) => {
  const a = new SeededRandom(42).normal(20000);
  const b = new SeededRandom(42).normal(20000);
  t.deepEqual(a, b);
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const varc = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  t.true(Math.abs(mean) < 0.03 && Math.abs(varc - 1) < 0.05, `${mean} ${varc}`);
});
