/**
 * Latent Consistency Model sampler, matching diffusers' LCMScheduler (0.27): its own timestep
 * selection (a skip-k schedule over `original_inference_steps` training points, sampled evenly),
 * consistency boundary conditions c_skip/c_out, and a fresh noise draw between steps (none after
 * the last). Also the guidance-scale embedding LCM UNets take as `timestep_cond`. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import {
  BETA_DEFAULTS, THRESHOLDING_DEFAULTS, clampSample, convertModelOutput, computeAlphasCumprod, computeBetas, drawNoise,
  ensure, f32, indexForTimestep, outputFor, resolveConfig, thresholdSample, unscaledInput,
} from './common.js';
import { checkStepCount } from './config.js';
import { UsageError } from '../errors.js';

export const LCM_DEFAULTS = {
  ...BETA_DEFAULTS,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  original_inference_steps: 50,
  clip_sample: false,
  clip_sample_range: 1.0,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  ...THRESHOLDING_DEFAULTS,
  timestep_spacing: 'leading',
  timestep_scaling: 10.0,
  rescale_betas_zero_snr: false,
};

const SIGMA_DATA = 0.5;

/**
 * LCM timesteps: the training schedule t_j = j·(N // original) − 1 for j = 1 … original·strength,
 * reversed, sampled at floor(linspace(0, len, n, endpoint=false)).
 */
export function lcmTimesteps(numTrain: number, originalSteps: number, n: number, strength = 1): number[] {
  if (originalSteps > numTrain) throw new Error(`LCM: original_inference_steps ${originalSteps} exceeds num_train_timesteps ${numTrain}`);
  checkStepCount(n, numTrain);
  if (n > originalSteps) throw new UsageError(`${n} steps exceed the LCM schedule's original_inference_steps (${originalSteps}); use at most ${originalSteps}`);
  const k = Math.floor(numTrain / originalSteps);
  const count = Math.floor(originalSteps * strength);
  const origin: number[] = [];
  for (let j = count; j >= 1; j--) origin.push(j * k - 1);
  if (Math.floor(origin.length / n) < 1) throw new Error(`LCM: ${n} steps need at least ${n} schedule points (strength too low)`);
  const out: number[] = [];
  const step = origin.length / n; // np.linspace(0, len, n, endpoint=False), then floor
  for (let i = 0; i < n; i++) out.push(origin[Math.floor(i * step)]!);
  return out;
}

/** c_skip, c_out of the consistency parameterisation at timestep t (float32). */
export function lcmBoundaryScalings(t: number, timestepScaling: number): [number, number] {
  const st = f32(t * timestepScaling);
  const st2 = f32(st * st);
  const sd2 = SIGMA_DATA * SIGMA_DATA;
  const cSkip = f32(sd2 / f32(st2 + sd2));
  const cOut = f32(st / f32(Math.sqrt(f32(st2 + sd2))));
  return [cSkip, cOut];
}

/**
 * Guidance-scale embedding of LCM UNets (diffusers' get_guidance_scale_embedding): w·1000 times
 * exp(−ln(10000)·i/(dim/2 − 1)), sin half then cos half, zero-padded when dim is odd. float32.
 * Pass w = guidance_scale − 1, as diffusers' LCM pipeline does.
 */
export function guidanceScaleEmbedding(w: number, dim: number): Float32Array {
  const out = new Float32Array(dim);
  const half = Math.floor(dim / 2);
  const ww = f32(f32(w) * 1000);
  const base = f32(f32(Math.log(10000)) / (half - 1));
  for (let i = 0; i < half; i++) {
    const freq = f32(Math.exp(f32(i * -base)));
    const arg = f32(ww * freq);
    out[i] = Math.sin(arg);
    out[half + i] = Math.cos(arg);
  }
  return out;
}

export class LcmScheduler implements Scheduler {
  readonly name = 'lcm';
  readonly config: typeof LCM_DEFAULTS;
  readonly initNoiseSigma = 1;
  private readonly alphasCumprod: Float32Array;
  private readonly finalAlphaCumprod: number;
  timesteps: number[] = [];
  private stepIndex: number | null = null;
  private denoisedBuf: Float32Array | null = null;
  private noise: Float32Array | null = null;
  private scratch: Float32Array | null = null;
  /** original_inference_steps override (diffusers' set_timesteps argument). */
  originalInferenceSteps: number | null = null;
  strength = 1;

  constructor(config?: SchedulerConfig) {
    this.config = resolveConfig(LCM_DEFAULTS, config);
    this.alphasCumprod = computeAlphasCumprod(computeBetas(this.config));
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0]!;
  }

  setTimesteps(steps: number): void {
    const original = this.originalInferenceSteps ?? this.config.original_inference_steps;
    this.timesteps = lcmTimesteps(this.config.num_train_timesteps, original, steps, this.strength);
    this.stepIndex = null;
  }

  scaleModelInput(x: Float32Array, _t: number, out?: Float32Array): Float32Array {
    return unscaledInput(x, out);
  }

  /** The consistency model's denoised estimate from the last step (diffusers' `denoised`). */
  get denoised(): Float32Array | null {
    return this.denoisedBuf;
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const c = this.config;
    if (this.stepIndex === null) this.stepIndex = indexForTimestep(this.timesteps, t);
    const i = this.stepIndex;
    const len = x.length;
    const prevT = i + 1 < this.timesteps.length ? this.timesteps[i + 1]! : t;
    const aT = this.alphasCumprod[t]!;
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT]! : this.finalAlphaCumprod;
    const bT = f32(1 - aT);
    const bPrev = f32(1 - aPrev);
    const [cSkip, cOut] = lcmBoundaryScalings(t, c.timestep_scaling);
    const sqA = f32(Math.sqrt(aT));
    const sqB = f32(Math.sqrt(bT));
    const den = (this.denoisedBuf = ensure(this.denoisedBuf, len));
    convertModelOutput(modelOutput, x, den, sqA, sqB, c.prediction_type, true, 'LCM');
    if (c.thresholding) thresholdSample(den, c.dynamic_thresholding_ratio, c.sample_max_value, (this.scratch = ensure(this.scratch, len)));
    else if (c.clip_sample) clampSample(den, c.clip_sample_range);
    for (let k = 0; k < len; k++) den[k] = f32(f32(cOut * den[k]!) + f32(cSkip * x[k]!));
    const o = outputFor(x, out);
    if (i !== this.timesteps.length - 1) {
      const noise = drawNoise(generator, (this.noise = ensure(this.noise, len)), this.name);
      const sqAPrev = f32(Math.sqrt(aPrev));
      const sqBPrev = f32(Math.sqrt(bPrev));
      for (let k = 0; k < len; k++) o[k] = f32(f32(sqAPrev * den[k]!) + f32(sqBPrev * noise[k]!));
    } else {
      o.set(den);
    }
    this.stepIndex = i + 1;
    return o;
  }
}
