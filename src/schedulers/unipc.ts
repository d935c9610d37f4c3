/**
 * UniPC multistep sampler (predictor UniP + corrector UniC, B(h) = bh2 by default), matching
 * diffusers' UniPCMultistepScheduler (0.27): solver_order 2, predict_x0, lower_order_final,
 * disable_corrector, Karras sigmas. As in 0.27 the schedule ends at σ_min (the t = 0 noise level)
 * unless the config names final_sigmas_type ('zero' or 'sigma_min', the later diffusers key).
 * Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import {
  BETA_DEFAULTS, THRESHOLDING_DEFAULTS, convertModelOutput, ensure, f32, lambdaOf, multistepTimesteps, outputFor, resolveConfig,
  sigmaToAlphaSigma, thresholdSample, unscaledInput,
} from './common.js';
import { checkDistinctSigmas, checkFirstTimestep, checkStepCount, checkTimestepRange } from './config.js';
import { TrainingSchedule, multistepSigmas } from './sigma-base.js';

export const UNIPC_DEFAULTS = {
  ...BETA_DEFAULTS,
  solver_order: 2,
  prediction_type: 'epsilon',
  ...THRESHOLDING_DEFAULTS,
  predict_x0: true,
  solver_type: 'bh2',
  lower_order_final: true,
  disable_corrector: [] as number[],
  solver_p: null as unknown,
  use_karras_sigmas: false,
  timestep_spacing: 'linspace',
  steps_offset: 0,
  final_sigmas_type: null as string | null,
  rescale_betas_zero_snr: false,
};

/** Solve the small dense system A·x = b (Gaussian elimination with partial pivoting). */
export function solveLinear(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    for (let r = c + 1; r < n; r++) {
      const f = m[r]![c]! / m[c]![c]!;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = m[r]![n]!;
    for (let k = r + 1; k < n; k++) s -= m[r]![k]! * x[k]!;
    x[r] = s / m[r]![r]!;
  }
  return x;
}

export class UniPcScheduler implements Scheduler {
  readonly name = 'unipc';
  readonly config: typeof UNIPC_DEFAULTS;
  readonly initNoiseSigma = 1;
  private readonly train: TrainingSchedule;
  timesteps: number[] = [];
  sigmas: number[] = [];
  private stepIndex: number | null = null;
  private lowerOrderNums = 0;
  private thisOrder = 0;
  /** Converted model outputs, oldest first (length solver_order). */
  private history: Float32Array[] = [];
  private lastSample: Float32Array | null = null;
  private hasLast = false;
  private converted: Float32Array | null = null;
  private corrected: Float32Array | null = null;
  private scratch: Float32Array | null = null;

  constructor(config?: SchedulerConfig) {
    this.config = resolveConfig(UNIPC_DEFAULTS, config);
    const c = this.config;
    // As diffusers' __init__: DPM-Solver's and DEIS's solver types (a DPM++ folder sampled with UniPC) run as bh2.
    if (c.solver_type === 'midpoint' || c.solver_type === 'heun' || c.solver_type === 'logrho') c.solver_type = 'bh2';
    if (c.solver_type !== 'bh1' && c.solver_type !== 'bh2') throw new Error(`UniPC: solver_type '${c.solver_type}' is not supported`);
    if (c.solver_p != null) throw new Error('UniPC: solver_p is not supported');
    this.train = new TrainingSchedule(c, true);
  }

  setTimesteps(steps: number): void {
    const c = this.config;
    checkStepCount(steps, c.num_train_timesteps);
    const spaced = multistepTimesteps(c.timestep_spacing, c.num_train_timesteps, steps, c.steps_offset);
    checkTimestepRange(spaced, c.num_train_timesteps, steps, c.steps_offset);
    const { timesteps, sigmas } = multistepSigmas(this.train, spaced, steps, c.use_karras_sigmas);
    checkDistinctSigmas(sigmas.map(f32), steps, c.timestep_spacing);
    checkFirstTimestep(timesteps, steps);
    let sigmaLast = c.use_karras_sigmas ? sigmas[sigmas.length - 1]! : this.train.sigmas[0]!;
    if (c.final_sigmas_type === 'zero') sigmaLast = 0;
    else if (c.final_sigmas_type === 'sigma_min') sigmaLast = this.train.sigmas[0]!;
    else if (c.final_sigmas_type != null) throw new Error(`UniPC: final_sigmas_type '${c.final_sigmas_type}' must be 'zero' or 'sigma_min'`);
    this.sigmas = [...sigmas, sigmaLast].map(f32);
    this.timesteps = timesteps;
    this.stepIndex = null;
    this.lowerOrderNums = 0;
    this.thisOrder = 0;
    this.hasLast = false;
  }

  scaleModelInput(x: Float32Array, _t: number, out?: Float32Array): Float32Array {
    return unscaledInput(x, out);
  }

  private initIndex(t: number): number {
    const hits: number[] = [];
    this.timesteps.forEach((v, i) => { if (v === t) hits.push(i); });
    if (hits.length === 0) return this.timesteps.length - 1;
    return hits.length > 1 ? hits[1]! : hits[0]!;
  }

  private convert(modelOutput: Float32Array, x: Float32Array, dst: Float32Array): void {
    const c = this.config;
    const [alpha, sigma] = sigmaToAlphaSigma(this.sigmas[this.stepIndex!]!);
    convertModelOutput(modelOutput, x, dst, alpha, sigma, c.prediction_type, c.predict_x0, 'UniPC');
    if (c.predict_x0 && c.thresholding) {
      thresholdSample(dst, c.dynamic_thresholding_ratio, c.sample_max_value, (this.scratch = ensure(this.scratch, x.length)));
    }
  }

  /** b_i coefficients and h·φ₁, B(h) for step size h (shared by UniP and UniC). */
  private coefficients(h: number, order: number): { hPhi1: number; bH: number; b: number[] } {
    const hh = this.config.predict_x0 ? f32(-h) : h;
    const hPhi1 = f32(Math.expm1(hh));
    let hPhiK = f32(f32(hPhi1 / hh) - 1);
    let factorial = 1;
    const bH = this.config.solver_type === 'bh1' ? hh : f32(Math.expm1(hh));
    const b: number[] = [];
    for (let i = 1; i <= order; i++) {
      b.push(f32(f32(hPhiK * factorial) / bH));
      factorial *= i + 1;
      hPhiK = f32(f32(hPhiK / hh) - f32(1 / factorial));
    }
    return { hPhi1, bH, b };
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, _generator?: RandomSource, out?: Float32Array): Float32Array {
    const c = this.config;
    if (this.stepIndex === null) this.stepIndex = this.initIndex(t);
    const i = this.stepIndex;
    const len = x.length;
    const order = c.solver_order;
    if (this.history.length !== order || this.history[0]!.length !== len) {
      this.history = Array.from({ length: order }, () => new Float32Array(len));
      this.lastSample = new Float32Array(len);
      this.converted = new Float32Array(len);
      this.corrected = new Float32Array(len);
    }
    const useCorrector = i > 0 && !c.disable_corrector.includes(i - 1) && this.hasLast;
    const conv = this.converted!;
    this.convert(modelOutput, x, conv);
    let sample = x;
    if (useCorrector) {
      this.corrector(conv, this.lastSample!, x, this.thisOrder, this.corrected!);
      sample = this.corrected!;
    }
    // rotate history; the converted output becomes the newest entry
    const oldest = this.history.shift()!;
    oldest.set(conv);
    this.history.push(oldest);
    let thisOrder = c.lower_order_final ? Math.min(order, this.timesteps.length - i) : order;
    thisOrder = Math.min(thisOrder, this.lowerOrderNums + 1);
    this.thisOrder = thisOrder;
    this.lastSample!.set(sample);
    this.hasLast = true;
    const o = outputFor(x, out);
    this.predictor(this.lastSample!, thisOrder, o);
    if (this.lowerOrderNums < order) this.lowerOrderNums++;
    this.stepIndex = i + 1;
    return o;
  }

  private lambdaAt(idx: number): number {
    const [a, s] = sigmaToAlphaSigma(this.sigmas[idx]!);
    return lambdaOf(a, s);
  }

  /** UniP: x_t from the sample at step_index using the last `order` converted outputs. */
  private predictor(x: Float32Array, order: number, o: Float32Array): void {
    const i = this.stepIndex!;
    const n = this.history.length;
    const m0 = this.history[n - 1]!;
    const [alphaT, sigmaT] = sigmaToAlphaSigma(this.sigmas[i + 1]!);
    const [alphaS0, sigmaS0] = sigmaToAlphaSigma(this.sigmas[i]!);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const h = f32(lambdaOf(alphaT, sigmaT) - l0);
    const rks: number[] = [];
    for (let j = 1; j < order; j++) rks.push(f32(f32(this.lambdaAt(i - j) - l0) / h));
    rks.push(1);
    const { hPhi1, bH, b } = this.coefficients(h, order);
    let rhos: number[] = [];
    if (order === 2) rhos = [0.5];
    else if (order > 2) {
      const R = Array.from({ length: order - 1 }, (_, r) => rks.slice(0, order - 1).map((v) => v ** r));
      rhos = solveLinear(R, b.slice(0, order - 1)).map(f32);
    }
    const px0 = this.config.predict_x0;
    const a = px0 ? f32(sigmaT / sigmaS0) : f32(alphaT / alphaS0);
    const cm = px0 ? f32(alphaT * hPhi1) : f32(sigmaT * hPhi1);
    const cr = px0 ? f32(alphaT * bH) : f32(sigmaT * bH);
    const ms = rks.slice(0, order - 1).map((_, j) => this.history[n - 2 - j]!);
    for (let k = 0; k < x.length; k++) {
      const base = f32(f32(a * x[k]!) - f32(cm * m0[k]!));
      if (order === 1) {
        o[k] = base;
        continue;
      }
      let res = 0;
      for (let j = 0; j < order - 1; j++) {
        const d1 = f32(f32(ms[j]![k]! - m0[k]!) / rks[j]!);
        res = j === 0 ? f32(rhos[0]! * d1) : f32(res + f32(rhos[j]! * d1));
      }
      o[k] = f32(base - f32(cr * res));
    }
  }

  /** UniC: corrects the sample predicted at the previous call with the new model output. */
  private corrector(modelT: Float32Array, last: Float32Array, _thisSample: Float32Array, order: number, o: Float32Array): void {
    const i = this.stepIndex!;
    const n = this.history.length;
    const m0 = this.history[n - 1]!;
    const [alphaT, sigmaT] = sigmaToAlphaSigma(this.sigmas[i]!);
    const [alphaS0, sigmaS0] = sigmaToAlphaSigma(this.sigmas[i - 1]!);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const h = f32(lambdaOf(alphaT, sigmaT) - l0);
    const rks: number[] = [];
    for (let j = 1; j < order; j++) rks.push(f32(f32(this.lambdaAt(i - (j + 1)) - l0) / h));
    rks.push(1);
    const { hPhi1, bH, b } = this.coefficients(h, order);
    let rhos: number[];
    if (order === 1) rhos = [0.5];
    else {
      const R = Array.from({ length: order }, (_, r) => rks.map((v) => v ** r));
      rhos = solveLinear(R, b).map(f32);
    }
    const px0 = this.config.predict_x0;
    const a = px0 ? f32(sigmaT / sigmaS0) : f32(alphaT / alphaS0);
    const cm = px0 ? f32(alphaT * hPhi1) : f32(sigmaT * hPhi1);
    const cr = px0 ? f32(alphaT * bH) : f32(sigmaT * bH);
    const ms = rks.slice(0, order - 1).map((_, j) => this.history[n - 2 - j]!);
    const rLast = rhos[rhos.length - 1]!;
    for (let k = 0; k < last.length; k++) {
      const base = f32(f32(a * last[k]!) - f32(cm * m0[k]!));
      let corr = 0;
      for (let j = 0; j < order - 1; j++) {
        const d1 = f32(f32(ms[j]![k]! - m0[k]!) / rks[j]!);
        corr = j === 0 ? f32(rhos[0]! * d1) : f32(corr + f32(rhos[j]! * d1));
      }
      const d1t = f32(modelT[k]! - m0[k]!);
      o[k] = f32(base - f32(cr * f32(corr + f32(rLast * d1t))));
    }
  }
}
