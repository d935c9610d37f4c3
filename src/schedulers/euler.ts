/**
 * Euler sampler, matching diffusers' EulerDiscreteScheduler (0.27), including s_churn options
 * (off by default). Like diffusers it draws one noise tensor per step from the generator even
 * when churn is off, so the generator's state stays in step with diffusers. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, drawNoise, ensure, f32, outputFor, resolveConfig } from './common.js';
import { SigmaScheduler, sigmaDenoiser, sigmaGrid } from './sigma-base.js';

export const EULER_DEFAULTS = {
  ...BETA_DEFAULTS,
  prediction_type: 'epsilon',
  interpolation_type: 'linear',
  use_karras_sigmas: false,
  sigma_min: null as number | null,
  sigma_max: null as number | null,
  timestep_spacing: 'linspace',
  timestep_type: 'discrete',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

export interface EulerOptions {
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
}

export class EulerScheduler extends SigmaScheduler<typeof EULER_DEFAULTS> {
  readonly name: string = 'euler';
  private readonly opts: Required<EulerOptions>;
  private noise: Float32Array | null = null;

  constructor(config?: SchedulerConfig, opts: EulerOptions = {}, overrides: Partial<typeof EULER_DEFAULTS> = {}) {
    super({ ...resolveConfig(EULER_DEFAULTS, config), ...overrides });
    this.opts = { sChurn: opts.sChurn ?? 0, sTmin: opts.sTmin ?? 0, sTmax: opts.sTmax ?? Infinity, sNoise: opts.sNoise ?? 1 };
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps);
    this.sigmas = [...grid.sigmas, 0];
    this.timesteps =
      this.config.timestep_type === 'continuous' && this.config.prediction_type === 'v_prediction'
        ? grid.sigmas.map((s) => f32(0.25 * f32(Math.log(s))))
        : grid.timesteps;
    this.stepIndex = null;
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const i = this.index(t);
    const o = outputFor(x, out);
    const sigma = this.sigmas[i]!;
    const { sChurn, sTmin, sTmax, sNoise } = this.opts;
    const gamma = sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (this.sigmas.length - 1), 2 ** 0.5 - 1) : 0;
    // diffusers draws this tensor even when churn is off (it is then unused); draw it whenever a
    // generator is given so the generator's stream stays aligned with diffusers.
    const noise = generator || gamma > 0 ? drawNoise(generator, (this.noise = ensure(this.noise, x.length)), this.name) : null;
    const sigmaHat = f32(sigma * f32(gamma + 1));
    const churn = gamma > 0 ? f32(Math.sqrt(f32(f32(sigmaHat * sigmaHat) - f32(sigma * sigma)))) : 0;
    const denoise = sigmaDenoiser(this.config.prediction_type, sigma, 'Euler', ['sample', 'original_sample'], sigmaHat);
    const dt = f32(this.sigmas[i + 1]! - sigmaHat);
    for (let k = 0; k < x.length; k++) {
      let s = x[k]!;
      if (gamma > 0) s = f32(s + f32(f32(noise![k]! * sNoise) * churn));
      const x0 = denoise(s, modelOutput[k]!);
      const d = f32(f32(s - x0) / sigmaHat);
      o[k] = f32(s + f32(d * dt));
    }
    this.stepIndex = i + 1;
    return o;
  }
}
