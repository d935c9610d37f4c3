/**
 * Shared set-up of the k-diffusion-style schedulers that diffusers implements on a sigma grid
 * (Euler, Euler a, LMS, Heun, DPM++ SDE): training sigmas, spaced timesteps, interpolated (or
 * Karras) sigmas, and the base class with their common state (step index, init noise sigma,
 * input scaling). The multistep solvers (DPM-Solver++, UniPC) take the training schedule and their
 * sigmas from here too. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler } from './types.js';
import {
  computeAlphasCumprod, computeBetas, f32, indexForTimestep, interpIndex, karrasSigmas, roundHalfEven, scaleBySigma,
  sigmaInitNoise, sigmaSchedulerTimesteps, sigmaToT, trainSigmas,
  type BetaConfig,
} from './common.js';
import { checkFirstTimestep, checkStepCount, checkTimestepRange } from './config.js';

export interface SigmaGridConfig extends BetaConfig {
  timestep_spacing: string;
  steps_offset: number;
  rescale_betas_zero_snr?: boolean;
  use_karras_sigmas?: boolean;
  interpolation_type?: string;
  sigma_min?: number | null;
  sigma_max?: number | null;
}

export interface SigmaGrid {
  /** Timesteps (float32 values), one per inference step. */
  timesteps: number[];
  /** Sigmas per inference step (float32 values), without the trailing 0. */
  sigmas: number[];
  /** The same sigmas before rounding to float32 (numpy float64). */
  sigmas64: number[];
}

export class TrainingSchedule {
  readonly alphasCumprod: Float32Array;
  /** Training sigmas ascending in t (float32 values). */
  readonly sigmas: Float32Array;
  readonly logSigmas: Float64Array;

  constructor(cfg: BetaConfig & { rescale_betas_zero_snr?: boolean }, zeroSnrFloor = false) {
    const ac = computeAlphasCumprod(computeBetas(cfg));
    // With zero terminal SNR the last ᾱ is 0; the sigma schedulers replace it with 2^-24.
    if (cfg.rescale_betas_zero_snr && zeroSnrFloor) ac[ac.length - 1] = 2 ** -24;
    this.alphasCumprod = ac;
    this.sigmas = trainSigmas(ac);
    this.logSigmas = Float64Array.from(this.sigmas, (s) => Math.fround(Math.log(s)));
  }

  get maxSigma(): number {
    let m = 0;
    for (const s of this.sigmas) if (s > m) m = s;
    return m;
  }
}

/** Timesteps and sigmas for n steps, as Euler/LMS/Heun/DPM-SDE's set_timesteps compute them. */
export function sigmaGrid(train: TrainingSchedule, cfg: SigmaGridConfig, n: number, float64Timesteps = false): SigmaGrid {
  checkStepCount(n, cfg.num_train_timesteps);
  let timesteps = sigmaSchedulerTimesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset, float64Timesteps);
  // Past N − 1 the interpolated sigmas repeat (np.interp clamps), which LMS's coefficients divide by.
  checkTimestepRange(timesteps, cfg.num_train_timesteps, n, cfg.steps_offset);
  let sigmas: number[];
  const interp = cfg.interpolation_type ?? 'linear';
  if (interp === 'linear') {
    sigmas = timesteps.map((t) => interpIndex(t, train.sigmas));
  } else if (interp === 'log_linear') {
    // torch.linspace(log σ_min, log σ_max, n + 1).exp(), float32
    const lo = Math.fround(Math.log(train.sigmas[0]!));
    const hi = Math.fround(Math.log(train.sigmas[train.sigmas.length - 1]!));
    sigmas = [];
    for (let i = 0; i <= n; i++) sigmas.push(Math.fround(Math.exp(Math.fround(hi + ((lo - hi) * i) / n))));
  } else {
    throw new Error(`interpolation_type '${interp}' is not supported; use 'linear' or 'log_linear'`);
  }
  if (cfg.use_karras_sigmas) {
    const sMin = cfg.sigma_min ?? sigmas[sigmas.length - 1]!;
    const sMax = cfg.sigma_max ?? sigmas[0]!;
    sigmas = karrasSigmas(sMin, sMax, n);
    timesteps = sigmas.map((s) => Math.fround(sigmaToT(s, train.logSigmas)));
    checkFirstTimestep(timesteps, n);
  }
  return { timesteps, sigmas: sigmas.map(Math.fround), sigmas64: sigmas };
}

/**
 * State and methods the sigma-grid schedulers share: the training schedule, timesteps and sigmas
 * (one per model call, then the final 0), the step index (diffusers' _init_step_index on the
 * first call after set_timesteps), init_noise_sigma and scale_model_input at the current sigma.
 */
export abstract class SigmaScheduler<C extends SigmaGridConfig> implements Scheduler {
  abstract readonly name: string;
  readonly config: C;
  protected readonly train: TrainingSchedule;
  timesteps: number[] = [];
  sigmas: number[] = [];
  protected stepIndex: number | null = null;

  constructor(config: C) {
    this.config = config;
    // The zero-SNR floor only applies to configs that take rescale_betas_zero_snr (Euler, Euler a).
    this.train = new TrainingSchedule(config, true);
  }

  get initNoiseSigma(): number {
    let max = 0;
    for (const s of this.sigmas) if (s > max) max = s;
    return sigmaInitNoise(max, this.config.timestep_spacing);
  }

  abstract setTimesteps(steps: number): void;

  protected index(t: number): number {
    if (this.stepIndex === null) this.stepIndex = indexForTimestep(this.timesteps, t);
    return this.stepIndex;
  }

  scaleModelInput(x: Float32Array, t: number, out?: Float32Array): Float32Array {
    return scaleBySigma(x, this.sigmas[this.index(t)]!, out);
  }

  abstract step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array;
}

/**
 * The denoised sample x0 = f(sample s, model output m) at noise level sigma, as the sigma-grid
 * schedulers compute it (float32): epsilon s − σ·m (σ = `epsSigma`, Euler's σ̂), v_prediction
 * m·(−σ/√(σ²+1)) + s/(σ²+1), and m itself for the "sample" types in `sampleTypes`. Any other
 * prediction_type throws `${who}: prediction_type '…' is not supported`.
 */
export function sigmaDenoiser(
  pt: string, sigma: number, who: string, sampleTypes: readonly string[] = [], epsSigma = sigma,
): (s: number, m: number) => number {
  if (pt === 'epsilon') return (s, m) => f32(s - f32(epsSigma * m));
  if (pt === 'v_prediction') {
    const vScale = f32(-sigma / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
    const vDen = f32(f32(sigma * sigma) + 1);
    return (s, m) => f32(f32(m * vScale) + f32(s / vDen));
  }
  if (sampleTypes.includes(pt)) return (_s, m) => m;
  throw new Error(`${who}: prediction_type '${pt}' is not supported`);
}

/**
 * Sigmas of the multistep solvers (DPM-Solver++, UniPC) for their integer `timesteps` (float64,
 * without the final sigma): interpolated from the training sigmas, or the Karras ramp over the
 * training range with timesteps mapped back (rounded) from it.
 */
export function multistepSigmas(
  train: TrainingSchedule, timesteps: number[], steps: number, useKarras: boolean,
): { timesteps: number[]; sigmas: number[] } {
  if (!useKarras) return { timesteps, sigmas: timesteps.map((t) => interpIndex(t, train.sigmas)) };
  const sigmas = karrasSigmas(train.sigmas[0]!, train.sigmas[train.sigmas.length - 1]!, steps);
  return { timesteps: sigmas.map((s) => roundHalfEven(sigmaToT(s, train.logSigmas))), sigmas };
}
