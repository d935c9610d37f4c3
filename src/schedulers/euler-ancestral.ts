/**
 * Euler ancestral sampler ("Euler a"), matching diffusers' EulerAncestralDiscreteScheduler (0.27).
 * Each step: x0 = x − σ·ε (or the v-prediction form); step down to σ_down deterministically, then
 * add σ_up of fresh noise drawn from the image's generator after the model call. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, drawNoise, ensure, f32, outputFor, resolveConfig } from './common.js';
import { SigmaScheduler, sigmaDenoiser, sigmaGrid } from './sigma-base.js';

export const EULER_ANCESTRAL_DEFAULTS = {
  ...BETA_DEFAULTS,
  prediction_type: 'epsilon',
  timestep_spacing: 'linspace',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

export class EulerAncestralScheduler extends SigmaScheduler<typeof EULER_ANCESTRAL_DEFAULTS> {
  readonly name = 'euler_a';
  private noise: Float32Array | null = null;

  constructor(config?: SchedulerConfig) {
    super(resolveConfig(EULER_ANCESTRAL_DEFAULTS, config));
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps);
    this.timesteps = grid.timesteps;
    this.sigmas = [...grid.sigmas, 0];
    this.stepIndex = null;
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const i = this.index(t);
    const o = outputFor(x, out);
    const sigma = this.sigmas[i]!;
    const sigmaTo = this.sigmas[i + 1]!;
    const sFrom2 = f32(sigma * sigma);
    const sTo2 = f32(sigmaTo * sigmaTo);
    const sigmaUp = f32(Math.sqrt(f32(f32(sTo2 * f32(sFrom2 - sTo2)) / sFrom2)));
    const sigmaDown = f32(Math.sqrt(f32(sTo2 - f32(sigmaUp * sigmaUp))));
    const dt = f32(sigmaDown - sigma);
    const denoise = sigmaDenoiser(this.config.prediction_type, sigma, 'Euler a');
    // Noise is drawn after the deterministic part in diffusers; drawing first is equivalent
    // because nothing else uses the generator in between.
    const noise = drawNoise(generator, (this.noise = ensure(this.noise, x.length)), this.name);
    for (let k = 0; k < x.length; k++) {
      const s = x[k]!;
      const x0 = denoise(s, modelOutput[k]!);
      const d = f32(f32(s - x0) / sigma);
      const prev = f32(s + f32(d * dt));
      o[k] = f32(prev + f32(noise[k]! * sigmaUp));
    }
    this.stepIndex = i + 1;
    return o;
  }
}
