/**
 * Shared pure helpers for the schedulers: config resolution, training noise schedules, timestep
 * spacing, sigma schedules and float32-faithful arithmetic. Everything here mirrors what diffusers
 * 0.27 computes (torch float32 tensors for betas/alphas/sigmas, numpy float64 for spacing and
 * interpolation) so the results agree to float32 rounding. No I/O.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';

export const f32 = Math.fround;

/** Keys every scheduler takes for its training noise schedule. */
export interface BetaConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: string;
  trained_betas: number[] | null;
}

/** The training noise schedule most diffusers schedulers default to (linear betas 1e-4 … 0.02 over 1000 steps). */
export const BETA_DEFAULTS = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null as number[] | null,
};

/** Dynamic thresholding keys (off by default) of the schedulers that support it (see thresholdSample). */
export const THRESHOLDING_DEFAULTS = {
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
};

/**
 * diffusers' `XScheduler.from_config(config)`: start from the class's own defaults and take every
 * key the class accepts from `config` (a key present with `null` passes `null`, like Python's None).
 * Keys the class does not accept are ignored.
 */
export function resolveConfig<T extends object>(defaults: T, config: SchedulerConfig | undefined): T {
  const out = { ...defaults } as Record<string, unknown>;
  if (config) {
    for (const key of Object.keys(defaults)) {
      if (Object.prototype.hasOwnProperty.call(config, key) && config[key] !== undefined) out[key] = config[key];
    }
  }
  return out as T;
}

/**
 * torch.linspace(start, end, steps) values before the final float32 store: start/end rounded to
 * float32, step and points in double, the first half counted up from start and the second half
 * down from end. (Squaring these unrounded points, then rounding, reproduces the reference
 * alphas_cumprod of the fixtures bit for bit.)
 */
export function torchLinspacePoints(start: number, end: number, steps: number): Float64Array {
  const out = new Float64Array(steps);
  if (steps === 1) {
    out[0] = f32(start);
    return out;
  }
  const s = f32(start);
  const e = f32(end);
  const step = (e - s) / (steps - 1);
  const halfway = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) out[i] = i < halfway ? s + step * i : e - step * (steps - i - 1);
  return out;
}

/** Betas of the training schedule (float32, as diffusers' torch tensors), zero-SNR rescale applied if asked. */
export function computeBetas(cfg: BetaConfig & { rescale_betas_zero_snr?: boolean }): Float32Array {
  const n = cfg.num_train_timesteps;
  let betas: Float32Array;
  if (cfg.trained_betas != null) {
    betas = Float32Array.from(cfg.trained_betas);
  } else if (cfg.beta_schedule === 'linear') {
    betas = Float32Array.from(torchLinspacePoints(cfg.beta_start, cfg.beta_end, n));
  } else if (cfg.beta_schedule === 'scaled_linear') {
    const pts = torchLinspacePoints(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), n);
    betas = Float32Array.from(pts, (v) => v * v);
  } else if (cfg.beta_schedule === 'squaredcos_cap_v2') {
    betas = betasForAlphaBar(n, (t) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2);
  } else if (cfg.beta_schedule === 'exp') {
    betas = betasForAlphaBar(n, (t) => Math.exp(t * -12.0));
  } else {
    throw new Error(`beta_schedule '${cfg.beta_schedule}' is not implemented`);
  }
  if (cfg.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
  return betas;
}

function betasForAlphaBar(n: number, alphaBar: (t: number) => number, maxBeta = 0.999): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t1 = i / n;
    const t2 = (i + 1) / n;
    out[i] = Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
  }
  return out;
}

/** Rescale betas so the final timestep has zero SNR (Lin et al. 2023, Algorithm 1), float32 like torch. */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const n = betas.length;
  const sq = new Float32Array(n);
  let acc = 1;
  for (let i = 0; i < n; i++) {
    acc *= f32(1 - betas[i]!);
    sq[i] = f32(Math.sqrt(f32(acc)));
  }
  const a0 = sq[0]!;
  const aT = sq[n - 1]!;
  const scale = f32(a0 / f32(a0 - aT));
  const bar = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = f32(f32(sq[i]! - aT) * scale);
    bar[i] = f32(v * v);
  }
  const out = new Float32Array(n);
  out[0] = f32(1 - bar[0]!);
  for (let i = 1; i < n; i++) out[i] = f32(1 - f32(bar[i]! / bar[i - 1]!));
  return out;
}

/** alphas_cumprod = cumprod(1 - betas) (torch accumulates float32 cumprod in double on CPU). */
export function computeAlphasCumprod(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]!);
    out[i] = acc;
  }
  return out;
}

/** ((1 − ᾱ) / ᾱ) ** 0.5 per training timestep, float32 ops. */
export function trainSigmas(alphasCumprod: Float32Array): Float32Array {
  const out = new Float32Array(alphasCumprod.length);
  for (let i = 0; i < out.length; i++) {
    const a = alphasCumprod[i]!;
    out[i] = Math.sqrt(f32(f32(1 - a) / a));
  }
  return out;
}

/** numpy's round (half to even). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  if (Math.abs(x % 1) === 0.5 && r % 2 !== 0) return r - 1;
  return r;
}

/** np.linspace(start, stop, num) in float64 (endpoint included). */
export function npLinspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  const out: number[] = [];
  for (let i = 0; i < num; i++) out.push(i * step + start);
  out[num - 1] = stop;
  return out;
}

/** np.arange(start, stop, step) for floats. */
export function npArange(start: number, stop: number, step: number): number[] {
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  const out: number[] = [];
  for (let i = 0; i < len; i++) out.push(i === 0 ? start : start + i * delta);
  return out;
}

export type Spacing = 'linspace' | 'leading' | 'trailing';

function checkSpacing(spacing: string): Spacing {
  if (spacing === 'linspace' || spacing === 'leading' || spacing === 'trailing') return spacing;
  throw new Error(`timestep_spacing '${spacing}' is not supported; use 'linspace', 'leading' or 'trailing'`);
}

/**
 * Timesteps of the sigma-based schedulers (Euler, Euler a, LMS, Heun, DPM SDE): float32 values,
 * descending. linspace: np.linspace(0, N−1, n); leading: arange(n)·(N//n) + offset; trailing:
 * round(arange(N, 0, −N/n)) − 1.
 */
export function sigmaSchedulerTimesteps(
  spacing: string, numTrain: number, n: number, stepsOffset: number, float64 = false,
): number[] {
  const sp = checkSpacing(spacing);
  // DPMSolverSDE builds its linspace in float64 (dtype=float); the others in float32
  if (sp === 'linspace') return npLinspace(0, numTrain - 1, n).map(float64 ? (v: number) => v : f32).reverse();
  if (sp === 'leading') {
    const ratio = Math.floor(numTrain / n);
    const ts: number[] = [];
    for (let i = n - 1; i >= 0; i--) ts.push(f32(roundHalfEven(i * ratio)) + stepsOffset);
    return ts.map(f32);
  }
  return npArange(numTrain, 0, -numTrain / n).map((v) => f32(roundHalfEven(v)) - 1);
}

/**
 * Integer timesteps of DDIM / PNDM / LCM-style schedulers (descending): linspace:
 * round(np.linspace(0, N−1, n)); leading: arange(n)·(N//n) + offset; trailing: round(arange(N, 0, −N/n)) − 1.
 */
export function discreteTimesteps(spacing: string, numTrain: number, n: number, stepsOffset: number): number[] {
  const sp = checkSpacing(spacing);
  if (sp === 'linspace') return npLinspace(0, numTrain - 1, n).map(roundHalfEven).reverse();
  if (sp === 'leading') {
    const ratio = Math.floor(numTrain / n);
    const ts: number[] = [];
    for (let i = n - 1; i >= 0; i--) ts.push(i * ratio + stepsOffset);
    return ts;
  }
  return npArange(numTrain, 0, -numTrain / n).map((v) => roundHalfEven(v) - 1);
}

/**
 * Timesteps of the multistep solvers (DPM-Solver++, UniPC): n+1 points with the last dropped.
 * linspace: round(np.linspace(0, last−1, n+1))[::-1][:-1]; leading: arange(n+1)·(last//(n+1)), reversed,
 * last dropped, + offset; trailing: round(arange(last, 0, −N/n)) − 1.
 */
export function multistepTimesteps(spacing: string, numTrain: number, n: number, stepsOffset: number, lastTimestep = numTrain): number[] {
  const sp = checkSpacing(spacing);
  if (sp === 'linspace') return npLinspace(0, lastTimestep - 1, n + 1).map(roundHalfEven).reverse().slice(0, n);
  if (sp === 'leading') {
    const ratio = Math.floor(lastTimestep / (n + 1));
    const ts: number[] = [];
    for (let i = n; i >= 1; i--) ts.push(i * ratio + stepsOffset);
    return ts;
  }
  return npArange(lastTimestep, 0, -numTrain / n).map((v) => roundHalfEven(v) - 1);
}

/** np.interp(x, arange(len(fp)), fp) in float64. */
export function interpIndex(x: number, fp: ArrayLike<number>): number {
  const last = fp.length - 1;
  if (x <= 0) return fp[0]!;
  if (x >= last) return fp[last]!;
  const j = Math.floor(x);
  const slope = fp[j + 1]! - fp[j]!;
  return slope * (x - j) + fp[j]!;
}

/** Karras et al. (2022) sigma ramp, rho = 7, from sigmaMax down to sigmaMin (float64). */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number, rho = 7): number[] {
  const minInv = sigmaMin ** (1 / rho);
  const maxInv = sigmaMax ** (1 / rho);
  return npLinspace(0, 1, n).map((r) => (maxInv + r * (minInv - maxInv)) ** rho);
}

/** diffusers' _sigma_to_t: fractional training timestep whose log-sigma interpolates to log(sigma). */
export function sigmaToT(sigma: number, logSigmas: ArrayLike<number>): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  const n = logSigmas.length;
  let low = 0;
  for (let i = 0; i < n; i++) if (logSigma - logSigmas[i]! >= 0) low = i;
  if (low > n - 2) low = n - 2;
  const high = low + 1;
  const lo = logSigmas[low]!;
  const hi = logSigmas[high]!;
  let w = (lo - logSigma) / (lo - hi);
  w = Math.min(1, Math.max(0, w));
  return (1 - w) * low + w * high;
}

/** init_noise_sigma of the sigma-based schedulers. */
export function sigmaInitNoise(maxSigma: number, spacing: string): number {
  if (spacing === 'linspace' || spacing === 'trailing') return maxSigma;
  return f32(Math.sqrt(f32(f32(maxSigma * maxSigma) + 1)));
}

/** diffusers' index_for_timestep: position of t in the schedule (the second match if t repeats). */
export function indexForTimestep(timesteps: ArrayLike<number>, t: number): number {
  const hits: number[] = [];
  for (let i = 0; i < timesteps.length; i++) if (timesteps[i] === t || f32(timesteps[i]!) === f32(t)) hits.push(i);
  if (hits.length === 0) throw new Error(`timestep ${t} is not in the scheduler's timesteps`);
  return hits.length > 1 ? hits[1]! : hits[0]!;
}

/** Fill `buf` with standard normal noise from `generator` (same values as generator.randn). */
export function drawNoise(generator: RandomSource | undefined, buf: Float32Array, who: string): Float32Array {
  if (!generator) throw new Error(`scheduler '${who}' draws noise and needs a generator`);
  if (generator.randnInto) return generator.randnInto(buf, [buf.length]);
  buf.set(generator.randn([buf.length]));
  return buf;
}

/** Output buffer: `out` if given (checked for size), else a new array. */
export function outputFor(x: Float32Array, out?: Float32Array): Float32Array {
  if (!out) return new Float32Array(x.length);
  if (out.length !== x.length) throw new Error(`output buffer has ${out.length} elements, expected ${x.length}`);
  return out;
}

/** Reuse `buf` when it has length n, else allocate (first call only in steady state). */
export function ensure(buf: Float32Array | null, n: number): Float32Array {
  return buf && buf.length === n ? buf : new Float32Array(n);
}

/** scale_model_input of the schedulers that do not scale (DDIM, PNDM, LCM, DPM-Solver, UniPC): x itself, or copied into `out`. */
export function unscaledInput(x: Float32Array, out?: Float32Array): Float32Array {
  if (!out) return x;
  if (out !== x) out.set(x);
  return out;
}

/** Scale a sample by 1 / sqrt(sigma² + 1) (float32, as the k-diffusion-style schedulers do). */
export function scaleBySigma(x: Float32Array, sigma: number, out?: Float32Array): Float32Array {
  const o = outputFor(x, out);
  const d = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
  for (let i = 0; i < x.length; i++) o[i] = f32(x[i]! / d);
  return o;
}

/**
 * diffusers' dynamic thresholding (Imagen): s = clamp(quantile(|x|, ratio), 1, maxValue);
 * x = clamp(x, −s, s) / s. One image (all of x is one batch row). In place.
 */
export function thresholdSample(x: Float32Array, ratio: number, maxValue: number, scratch?: Float32Array): void {
  const abs = scratch && scratch.length === x.length ? scratch : new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) abs[i] = Math.abs(x[i]!);
  abs.sort();
  const pos = ratio * (abs.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, abs.length - 1);
  let s = abs[lo]! + (abs[hi]! - abs[lo]!) * (pos - lo);
  s = f32(Math.min(Math.max(s, 1), maxValue));
  for (let i = 0; i < x.length; i++) x[i] = f32(Math.min(Math.max(x[i]!, -s), s) / s);
}

/** Clamp in place to [−range, range]. */
export function clampSample(x: Float32Array, range: number): void {
  for (let i = 0; i < x.length; i++) x[i] = Math.min(Math.max(x[i]!, -range), range);
}

/**
 * diffusers' conversion of a model output into `dst` with alpha = √ᾱ and sigma = √(1 − ᾱ) of the
 * current step: the data (x0) prediction when `predictX0`, else the noise prediction, from an
 * epsilon, sample or v_prediction output (float32). DDIM and LCM take the x0 prediction;
 * DPM-Solver and UniPC's convert_model_output either. Any other prediction_type throws
 * `${who}: prediction_type '…' is not supported`.
 */
export function convertModelOutput(
  modelOutput: Float32Array, x: Float32Array, dst: Float32Array, alpha: number, sigma: number, pt: string, predictX0: boolean, who: string,
): void {
  if (pt !== 'epsilon' && pt !== 'sample' && pt !== 'v_prediction') throw new Error(`${who}: prediction_type '${pt}' is not supported`);
  for (let k = 0; k < x.length; k++) {
    const s = x[k]!;
    const m = modelOutput[k]!;
    if (predictX0) {
      if (pt === 'epsilon') dst[k] = f32(f32(s - f32(sigma * m)) / alpha);
      else if (pt === 'sample') dst[k] = m;
      else dst[k] = f32(f32(alpha * s) - f32(sigma * m));
    } else {
      if (pt === 'epsilon') dst[k] = m;
      else if (pt === 'sample') dst[k] = f32(f32(s - f32(alpha * m)) / sigma);
      else dst[k] = f32(f32(alpha * m) + f32(sigma * s));
    }
  }
}

/** alpha_t = 1/sqrt(σ²+1), sigma_t = σ·alpha_t (float32), as DPM-Solver/UniPC convert sigmas. */
export function sigmaToAlphaSigma(sigma: number): [number, number] {
  const alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  return [alpha, f32(sigma * alpha)];
}

/** log(alpha) − log(sigma) in float32 (+∞ when sigma is 0). */
export function lambdaOf(alpha: number, sigma: number): number {
  return f32(f32(Math.log(alpha)) - f32(Math.log(sigma)));
}
