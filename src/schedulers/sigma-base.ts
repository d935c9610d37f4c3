/**
 * Shared set-up of the k-diffusion-style schedulers that diffusers implements on a sigma grid
 * (Euler, Euler a, LMS, Heun, DPM++ SDE): training sigmas, spaced timesteps, interpolated (or
 * Karras) sigmas. Pure logic.
 */
import {
  computeAlphasCumprod, computeBetas, interpIndex, karrasSigmas, sigmaSchedulerTimesteps, sigmaToT, trainSigmas,
  type BetaConfig,
} from './common.js';

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
export function sigmaGrid(train: TrainingSchedule, cfg: SigmaGridConfig, n: number): SigmaGrid {
  let timesteps = sigmaSchedulerTimesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset);
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
  }
  return { timesteps, sigmas: sigmas.map(Math.fround), sigmas64: sigmas };
}
