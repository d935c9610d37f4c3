/**
 * DDIM sampler, matching diffusers' DDIMScheduler (0.27): deterministic for eta = 0; for eta > 0
 * one noise tensor per step is drawn from the generator (after the deterministic update, as
 * diffusers does) and scaled by eta·σ_t. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import {
  BETA_DEFAULTS, clampSample, computeAlphasCumprod, computeBetas, convertModelOutput, discreteTimesteps, drawNoise,
  ensure, f32, indexForTimestep, outputFor, resolveConfig, thresholdSample, unscaledInput,
} from './common.js';
import { checkStepCount, checkTimestepRange } from './config.js';

export const DDIM_DEFAULTS = {
  ...BETA_DEFAULTS,
  clip_sample: true,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  rescale_betas_zero_snr: false,
};

export interface DdimOptions {
  eta?: number;
  useClippedModelOutput?: boolean;
}

export class DdimScheduler implements Scheduler {
  readonly name = 'ddim';
  readonly config: typeof DDIM_DEFAULTS;
  readonly alphasCumprod: Float32Array;
  private readonly finalAlphaCumprod: number;
  readonly initNoiseSigma = 1;
  readonly eta: number;
  private readonly useClipped: boolean;
  timesteps: number[] = [];
  private numInferenceSteps = 0;
  private stepIndex: number | null = null;
  private x0: Float32Array | null = null;
  private noise: Float32Array | null = null;
  private scratch: Float32Array | null = null;

  constructor(config?: SchedulerConfig, opts: DdimOptions = {}) {
    this.config = resolveConfig(DDIM_DEFAULTS, config);
    this.alphasCumprod = computeAlphasCumprod(computeBetas(this.config));
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0]!;
    this.eta = opts.eta ?? 0;
    this.useClipped = opts.useClippedModelOutput ?? false;
  }

  setTimesteps(steps: number): void {
    const n = this.config.num_train_timesteps;
    checkStepCount(steps, n);
    this.numInferenceSteps = steps;
    this.timesteps = discreteTimesteps(this.config.timestep_spacing, n, steps, this.config.steps_offset);
    checkTimestepRange(this.timesteps, n, steps, this.config.steps_offset);
    this.stepIndex = null;
  }

  scaleModelInput(x: Float32Array, _t: number, out?: Float32Array): Float32Array {
    return unscaledInput(x, out);
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    if (this.stepIndex === null) this.stepIndex = indexForTimestep(this.timesteps, t);
    const o = outputFor(x, out);
    const len = x.length;
    const prevT = t - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    const aT = this.alphasCumprod[t]!;
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT]! : this.finalAlphaCumprod;
    const bT = f32(1 - aT);
    const sqA = f32(Math.sqrt(aT));
    const sqB = f32(Math.sqrt(bT));
    const pt = this.config.prediction_type;
    const x0 = (this.x0 = ensure(this.x0, len));
    const epsBuf = o; // predicted eps is kept in the output buffer until the final combine
    // 1. predicted x0 and eps
    convertModelOutput(modelOutput, x, x0, sqA, sqB, pt, true, 'DDIM');
    // 2. clip / threshold
    if (this.config.thresholding) thresholdSample(x0, this.config.dynamic_thresholding_ratio, this.config.sample_max_value, (this.scratch = ensure(this.scratch, len)));
    else if (this.config.clip_sample) clampSample(x0, this.config.clip_sample_range);
    // 3. variance and direction
    const bPrev = f32(1 - aPrev);
    const variance = f32(f32(bPrev / bT) * f32(1 - f32(aT / aPrev)));
    const stdDev = f32(this.eta * f32(Math.sqrt(variance)));
    const dirCoef = f32(Math.sqrt(f32(f32(1 - aPrev) - f32(stdDev * stdDev))));
    const sqAPrev = f32(Math.sqrt(aPrev));
    for (let k = 0; k < len; k++) {
      const s = x[k]!;
      const m = modelOutput[k]!;
      let eps: number;
      if (this.useClipped) eps = f32(f32(s - f32(sqA * x0[k]!)) / sqB);
      else if (pt === 'sample') eps = f32(f32(s - f32(sqA * m)) / sqB);
      else if (pt === 'epsilon') eps = m;
      else eps = f32(f32(sqA * m) + f32(sqB * s));
      epsBuf[k] = f32(f32(sqAPrev * x0[k]!) + f32(dirCoef * eps));
    }
    if (this.eta > 0) {
      const noise = drawNoise(generator, (this.noise = ensure(this.noise, len)), this.name);
      for (let k = 0; k < len; k++) o[k] = f32(o[k]! + f32(stdDev * noise[k]!));
    }
    this.stepIndex++;
    return o;
  }

  /** The x0 prediction of the last step (diffusers' pred_original_sample). */
  get predOriginalSample(): Float32Array | null {
    return this.x0;
  }
}
