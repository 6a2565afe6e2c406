// Rectified-flow sampling as FLUX (and ComfyUI's ModelSamplingFlux) does it: the model sees
// sigma in 0..1 as its timestep, x_sigma = (1 - sigma) x0 + sigma noise, and predicts v = noise - x0.

/** FLUX's time shift: sigma(t) = e^mu / (e^mu + (1/t - 1)), t running from 1 down to 0. */
export function fluxSigmas(steps: number, shift: number): Float64Array {
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
  const sigmas = new Float64Array(steps + 1);
  const e = Math.exp(shift);
  for (let i = 0; i <= steps; i++) {
    const t = 1 - i / steps;
    sigmas[i] = t <= 0 ? 0 : e / (e + (1 / t - 1));
  }
  return sigmas;
}

/** Predicts the velocity for a batch latent at noise level sigma. */
export type VelocityModel = (x: Float32Array, sigma: number) => Promise<Float32Array>;

/** Euler integration from pure noise (sigma = 1) to a clean latent (sigma = 0). */
export async function sampleEuler(
  model: VelocityModel,
  noise: Float32Array,
  sigmas: Float64Array,
  onStep?: (step: number, total: number) => void,
): Promise<Float32Array> {
  const x = Float32Array.from(noise);
  const steps = sigmas.length - 1;
  for (let i = 0; i < steps; i++) {
    const v = await model(x, sigmas[i]);
    if (v.length !== x.length) throw new Error(`model returned ${v.length} values for a latent of ${x.length}`);
    const dt = sigmas[i + 1] - sigmas[i];
    for (let j = 0; j < x.length; j++) x[j] += dt * v[j];
    onStep?.(i + 1, steps);
  }
  return x;
}
