/**
 * Euler ancestral sampler ("Euler a"), matching diffusers' EulerAncestralDiscreteScheduler (0.27).
 * Each step: x0 = x − σ·ε (or the v-prediction form); step down to σ_down deterministically, then
 * add σ_up of fresh noise drawn from the image's generator after the model call. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import { drawNoise, ensure, f32, indexForTimestep, outputFor, resolveConfig, scaleBySigma, sigmaInitNoise } from './common.js';
import { TrainingSchedule, sigmaGrid } from './sigma-base.js';

export const EULER_ANCESTRAL_DEFAULTS = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null as number[] | null,
  prediction_type: 'epsilon',
  timestep_spacing: 'linspace',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

export class EulerAncestralScheduler implements Scheduler {
  readonly name = 'euler_a';
  readonly config: typeof EULER_ANCESTRAL_DEFAULTS;
  private readonly train: TrainingSchedule;
  timesteps: number[] = [];
  /** Sigmas per step plus the final 0. */
  sigmas: number[] = [];
  private stepIndex: number | null = null;
  private noise: Float32Array | null = null;

  constructor(config?: SchedulerConfig) {
    this.config = resolveConfig(EULER_ANCESTRAL_DEFAULTS, config);
    this.train = new TrainingSchedule(this.config, true);
  }

  get initNoiseSigma(): number {
    let max = 0;
    for (const s of this.sigmas) if (s > max) max = s;
    return sigmaInitNoise(max, this.config.timestep_spacing);
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps);
    this.timesteps = grid.timesteps;
    this.sigmas = [...grid.sigmas, 0];
    this.stepIndex = null;
  }

  private index(t: number): number {
    if (this.stepIndex === null) this.stepIndex = indexForTimestep(this.timesteps, t);
    return this.stepIndex;
  }

  scaleModelInput(x: Float32Array, t: number, out?: Float32Array): Float32Array {
    return scaleBySigma(x, this.sigmas[this.index(t)]!, out);
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
    const pt = this.config.prediction_type;
    const vScale = f32(-sigma / f32(Math.sqrt(f32(sFrom2 + 1))));
    const vDen = f32(sFrom2 + 1);
    if (pt !== 'epsilon' && pt !== 'v_prediction') {
      throw new Error(`Euler a: prediction_type '${pt}' is not supported`);
    }
    // Noise is drawn after the deterministic part in diffusers; drawing first is equivalent
    // because nothing else uses the generator in between.
    const noise = drawNoise(generator, (this.noise = ensure(this.noise, x.length)), this.name);
    for (let k = 0; k < x.length; k++) {
      const s = x[k]!;
      const m = modelOutput[k]!;
      const x0 = pt === 'epsilon' ? f32(s - f32(sigma * m)) : f32(f32(m * vScale) + f32(s / vDen));
      const d = f32(f32(s - x0) / sigma);
      const prev = f32(s + f32(d * dt));
      o[k] = f32(prev + f32(noise[k]! * sigmaUp));
    }
    this.stepIndex = i + 1;
    return o;
  }
}
