/**
 * Heun sampler (2nd-order, two model calls per step), matching diffusers' HeunDiscreteScheduler
 * (0.27): timesteps after the first are doubled, and calls alternate between the Euler predictor
 * and the trapezoidal corrector; the predictor's derivative, dt and sample are kept between the
 * two calls. The last step is a plain Euler step to σ = 0. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, clampSample, f32, outputFor, resolveConfig } from './common.js';
import { SigmaScheduler, sigmaDenoiser, sigmaGrid } from './sigma-base.js';

export const HEUN_DEFAULTS = {
  ...BETA_DEFAULTS,
  beta_start: 0.00085,
  beta_end: 0.012,
  prediction_type: 'epsilon',
  use_karras_sigmas: false,
  clip_sample: false,
  clip_sample_range: 1.0,
  timestep_spacing: 'linspace',
  steps_offset: 0,
};

/** [a, b, c] → [a, b, b, c, c] (diffusers' cat([x[:1], x[1:].repeat_interleave(2)])). */
export function doubleAfterFirst(v: readonly number[]): number[] {
  const out = [v[0]!];
  for (let i = 1; i < v.length; i++) out.push(v[i]!, v[i]!);
  return out;
}

export class HeunScheduler extends SigmaScheduler<typeof HEUN_DEFAULTS> {
  readonly name = 'heun';
  private dt: number | null = null;
  private prevDerivative: Float32Array | null = null;
  private savedSample: Float32Array | null = null;
  private x0: Float32Array | null = null;

  constructor(config?: SchedulerConfig) {
    super(resolveConfig(HEUN_DEFAULTS, config));
  }

  /** True when the next step call is a predictor (first-order) call. */
  get stateInFirstOrder(): boolean {
    return this.dt === null;
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps);
    // σ per call: [σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0]
    this.sigmas = [...doubleAfterFirst(grid.sigmas), 0];
    this.timesteps = doubleAfterFirst(grid.timesteps);
    this.stepIndex = null;
    this.dt = null;
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, _generator?: RandomSource, out?: Float32Array): Float32Array {
    const i = this.index(t);
    const len = x.length;
    const first = this.stateInFirstOrder;
    const sigma = first ? this.sigmas[i]! : this.sigmas[i - 1]!;
    const sigmaNext = first ? this.sigmas[i + 1]! : this.sigmas[i]!;
    const sigmaHat = sigma; // gamma = 0
    const sigmaIn = first ? sigmaHat : sigmaNext;
    const denoise = sigmaDenoiser(this.config.prediction_type, sigmaIn, 'Heun', ['sample']);
    const x0 = (this.x0 = this.x0 && this.x0.length === len ? this.x0 : new Float32Array(len));
    for (let k = 0; k < len; k++) x0[k] = denoise(x[k]!, modelOutput[k]!);
    if (this.config.clip_sample) clampSample(x0, this.config.clip_sample_range);
    const o = outputFor(x, out);
    if (first) {
      const pd = (this.prevDerivative = this.prevDerivative && this.prevDerivative.length === len ? this.prevDerivative : new Float32Array(len));
      const saved = (this.savedSample = this.savedSample && this.savedSample.length === len ? this.savedSample : new Float32Array(len));
      const dt = f32(sigmaNext - sigmaHat);
      for (let k = 0; k < len; k++) {
        const s = x[k]!;
        const d = f32(f32(s - x0[k]!) / sigmaHat);
        pd[k] = d;
        saved[k] = s;
        o[k] = f32(s + f32(d * dt));
      }
      this.dt = dt;
    } else {
      const pd = this.prevDerivative!;
      const saved = this.savedSample!;
      const dt = this.dt!;
      for (let k = 0; k < len; k++) {
        const d2 = f32(f32(x[k]! - x0[k]!) / sigmaNext);
        const d = f32(f32(pd[k]! + d2) / 2);
        o[k] = f32(saved[k]! + f32(d * dt));
      }
      this.dt = null;
    }
    this.stepIndex = i + 1;
    return o;
  }
}
