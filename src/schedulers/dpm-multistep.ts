/**
 * DPM-Solver++ multistep sampler, matching diffusers' DPMSolverMultistepScheduler (0.27):
 * algorithm_type dpmsolver++ / dpmsolver / sde-dpmsolver++ / sde-dpmsolver, solver_order 1–3,
 * solver_type midpoint / heun, lower_order_final, euler_at_final, final_sigmas_type, Karras
 * sigmas, lambda_min_clipped. SDE variants draw one noise tensor per step from the generator
 * (before the update, as diffusers does). History buffers are reused across steps. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import {
  BETA_DEFAULTS, THRESHOLDING_DEFAULTS, convertModelOutput, drawNoise, ensure, f32, indexForTimestep, lambdaOf, multistepTimesteps,
  outputFor, resolveConfig, sigmaToAlphaSigma, thresholdSample, unscaledInput,
} from './common.js';
import { checkDistinctSigmas, checkFirstTimestep, checkStepCount, checkTimestepRange } from './config.js';
import { TrainingSchedule, multistepSigmas } from './sigma-base.js';

export const DPM_MULTISTEP_DEFAULTS = {
  ...BETA_DEFAULTS,
  solver_order: 2,
  prediction_type: 'epsilon',
  ...THRESHOLDING_DEFAULTS,
  algorithm_type: 'dpmsolver++',
  solver_type: 'midpoint',
  lower_order_final: true,
  euler_at_final: false,
  use_karras_sigmas: false,
  use_lu_lambdas: false,
  final_sigmas_type: 'zero',
  lambda_min_clipped: -Infinity,
  variance_type: null as string | null,
  timestep_spacing: 'linspace',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

export type DpmMultistepConfig = typeof DPM_MULTISTEP_DEFAULTS;

export class DpmMultistepScheduler implements Scheduler {
  readonly name: string;
  readonly config: DpmMultistepConfig;
  readonly initNoiseSigma = 1;
  private readonly train: TrainingSchedule;
  private readonly lambdaT: Float32Array;
  timesteps: number[] = [];
  sigmas: number[] = [];
  private stepIndex: number | null = null;
  private lowerOrderNums = 0;
  /** model_outputs history, oldest first; length solver_order. */
  private history: Float32Array[] = [];
  private historyFilled = 0;
  private noise: Float32Array | null = null;
  private scratch: Float32Array | null = null;

  constructor(config?: SchedulerConfig, overrides: Partial<DpmMultistepConfig> = {}, name = 'dpmpp_2m') {
    this.name = name;
    const resolved = { ...resolveConfig(DPM_MULTISTEP_DEFAULTS, config), ...overrides };
    // As diffusers' __init__: 'deis' runs as dpmsolver++, and UniPC's / DEIS's solver types
    // (a UniPC folder sampled with DPM++) as midpoint.
    if (resolved.algorithm_type === 'deis') resolved.algorithm_type = 'dpmsolver++';
    if (resolved.solver_type === 'logrho' || resolved.solver_type === 'bh1' || resolved.solver_type === 'bh2') resolved.solver_type = 'midpoint';
    this.config = resolved;
    const c = this.config;
    const algos = ['dpmsolver', 'dpmsolver++', 'sde-dpmsolver', 'sde-dpmsolver++'];
    if (!algos.includes(c.algorithm_type)) throw new Error(`DPM-Solver: algorithm_type '${c.algorithm_type}' is not supported`);
    if (c.solver_type !== 'midpoint' && c.solver_type !== 'heun') throw new Error(`DPM-Solver: solver_type '${c.solver_type}' is not supported`);
    if (c.final_sigmas_type === 'zero' && (c.algorithm_type === 'dpmsolver' || c.algorithm_type === 'sde-dpmsolver')) {
      throw new Error(`DPM-Solver: final_sigmas_type 'zero' is not supported with algorithm_type '${c.algorithm_type}'; use 'sigma_min'`);
    }
    if (c.use_lu_lambdas) throw new Error('DPM-Solver: use_lu_lambdas is not supported');
    this.train = new TrainingSchedule(c, true);
    this.lambdaT = Float32Array.from(this.train.alphasCumprod, (a) => lambdaOf(f32(Math.sqrt(a)), f32(Math.sqrt(f32(1 - a)))));
  }

  setTimesteps(steps: number): void {
    const c = this.config;
    const nTrain = c.num_train_timesteps;
    checkStepCount(steps, nTrain);
    // searchsorted(flip(lambda_t), lambda_min_clipped): how many of the flipped lambdas are below it
    let clipped = 0;
    for (let i = this.lambdaT.length - 1; i >= 0; i--) if (this.lambdaT[i]! < c.lambda_min_clipped) clipped++;
    const last = nTrain - clipped;
    const spaced = multistepTimesteps(c.timestep_spacing, nTrain, steps, c.steps_offset, last);
    checkTimestepRange(spaced, nTrain, steps, c.steps_offset);
    const { timesteps, sigmas } = multistepSigmas(this.train, spaced, steps, c.use_karras_sigmas);
    checkDistinctSigmas(sigmas.map(f32), steps, c.timestep_spacing);
    checkFirstTimestep(timesteps, steps);
    let sigmaLast: number;
    if (c.final_sigmas_type === 'sigma_min') sigmaLast = this.train.sigmas[0]!;
    else if (c.final_sigmas_type === 'zero') sigmaLast = 0;
    else throw new Error(`DPM-Solver: final_sigmas_type '${c.final_sigmas_type}' must be 'zero' or 'sigma_min'`);
    this.sigmas = [...sigmas, sigmaLast].map(f32);
    this.timesteps = timesteps;
    this.stepIndex = null;
    this.lowerOrderNums = 0;
    this.historyFilled = 0;
  }

  scaleModelInput(x: Float32Array, _t: number, out?: Float32Array): Float32Array {
    return unscaledInput(x, out);
  }

  /** diffusers' convert_model_output: x0 prediction (dpmsolver++) or eps prediction (dpmsolver). */
  private convert(modelOutput: Float32Array, x: Float32Array, dst: Float32Array): void {
    const c = this.config;
    const dataPred = c.algorithm_type === 'dpmsolver++' || c.algorithm_type === 'sde-dpmsolver++';
    const [alpha, sigma] = sigmaToAlphaSigma(this.sigmas[this.stepIndex!]!);
    convertModelOutput(modelOutput, x, dst, alpha, sigma, c.prediction_type, dataPred, 'DPM-Solver');
    if (dataPred && c.thresholding) {
      thresholdSample(dst, c.dynamic_thresholding_ratio, c.sample_max_value, (this.scratch = ensure(this.scratch, x.length)));
    }
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const c = this.config;
    if (this.stepIndex === null) this.stepIndex = indexForTimestep(this.timesteps, t);
    const i = this.stepIndex;
    const len = x.length;
    const order = c.solver_order;
    const nSteps = this.timesteps.length;
    const lowerOrderFinal =
      i === nSteps - 1 && (c.euler_at_final || (c.lower_order_final && nSteps < 15) || c.final_sigmas_type === 'zero');
    const lowerOrderSecond = i === nSteps - 2 && c.lower_order_final && nSteps < 15;

    if (this.history.length !== order || this.history[0]!.length !== len) {
      this.history = Array.from({ length: order }, () => new Float32Array(len));
    }
    // Rotate: the oldest buffer becomes the newest slot.
    const oldest = this.history.shift()!;
    this.history.push(oldest);
    this.convert(modelOutput, x, oldest);
    this.historyFilled = Math.min(this.historyFilled + 1, order);

    const sde = c.algorithm_type === 'sde-dpmsolver' || c.algorithm_type === 'sde-dpmsolver++';
    const noise = sde ? drawNoise(generator, (this.noise = ensure(this.noise, len)), this.name) : null;
    const o = outputFor(x, out);
    if (order === 1 || this.lowerOrderNums < 1 || lowerOrderFinal) this.firstOrder(x, noise, o);
    else if (order === 2 || this.lowerOrderNums < 2 || lowerOrderSecond) this.secondOrder(x, noise, o);
    else this.thirdOrder(x, o);
    if (this.lowerOrderNums < order) this.lowerOrderNums++;
    this.stepIndex = i + 1;
    return o;
  }

  private firstOrder(x: Float32Array, noise: Float32Array | null, o: Float32Array): void {
    const i = this.stepIndex!;
    const [alphaT, sigmaT] = sigmaToAlphaSigma(this.sigmas[i + 1]!);
    const [alphaS, sigmaS] = sigmaToAlphaSigma(this.sigmas[i]!);
    const h = f32(lambdaOf(alphaT, sigmaT) - lambdaOf(alphaS, sigmaS));
    const m0 = this.history[this.history.length - 1]!;
    const algo = this.config.algorithm_type;
    if (algo === 'dpmsolver++') {
      const a = f32(sigmaT / sigmaS);
      const b = f32(alphaT * f32(f32(Math.exp(-h)) - 1));
      for (let k = 0; k < x.length; k++) o[k] = f32(f32(a * x[k]!) - f32(b * m0[k]!));
    } else if (algo === 'dpmsolver') {
      const a = f32(alphaT / alphaS);
      const b = f32(sigmaT * f32(f32(Math.exp(h)) - 1));
      for (let k = 0; k < x.length; k++) o[k] = f32(f32(a * x[k]!) - f32(b * m0[k]!));
    } else if (algo === 'sde-dpmsolver++') {
      const e2 = f32(Math.exp(f32(-2 * h)));
      const a = f32(f32(sigmaT / sigmaS) * f32(Math.exp(-h)));
      const b = f32(alphaT * f32(1 - e2));
      const n = f32(sigmaT * f32(Math.sqrt(f32(1 - e2))));
      for (let k = 0; k < x.length; k++) o[k] = f32(f32(f32(a * x[k]!) + f32(b * m0[k]!)) + f32(n * noise![k]!));
    } else {
      const a = f32(alphaT / alphaS);
      const b = f32(2 * f32(sigmaT * f32(f32(Math.exp(h)) - 1)));
      const n = f32(sigmaT * f32(Math.sqrt(f32(f32(Math.exp(f32(2 * h))) - 1))));
      for (let k = 0; k < x.length; k++) o[k] = f32(f32(f32(a * x[k]!) - f32(b * m0[k]!)) + f32(n * noise![k]!));
    }
  }

  private secondOrder(x: Float32Array, noise: Float32Array | null, o: Float32Array): void {
    const i = this.stepIndex!;
    const [alphaT, sigmaT] = sigmaToAlphaSigma(this.sigmas[i + 1]!);
    const [alphaS0, sigmaS0] = sigmaToAlphaSigma(this.sigmas[i]!);
    const [alphaS1, sigmaS1] = sigmaToAlphaSigma(this.sigmas[i - 1]!);
    const lt = lambdaOf(alphaT, sigmaT);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const l1 = lambdaOf(alphaS1, sigmaS1);
    const m0 = this.history[this.history.length - 1]!;
    const m1 = this.history[this.history.length - 2]!;
    const h = f32(lt - l0);
    const h0 = f32(l0 - l1);
    const r0 = f32(h0 / h);
    const invR0 = f32(1 / r0);
    const algo = this.config.algorithm_type;
    const midpoint = this.config.solver_type === 'midpoint';
    const d1 = (k: number): number => f32(invR0 * f32(m0[k]! - m1[k]!));
    if (algo === 'dpmsolver++') {
      const a = f32(sigmaT / sigmaS0);
      const em1 = f32(f32(Math.exp(-h)) - 1);
      const b = f32(alphaT * em1);
      const cc = midpoint ? f32(0.5 * b) : f32(alphaT * f32(f32(em1 / h) + 1));
      for (let k = 0; k < x.length; k++) {
        const base = f32(f32(a * x[k]!) - f32(b * m0[k]!));
        o[k] = midpoint ? f32(base - f32(cc * d1(k))) : f32(base + f32(cc * d1(k)));
      }
    } else if (algo === 'dpmsolver') {
      const a = f32(alphaT / alphaS0);
      const ep1 = f32(f32(Math.exp(h)) - 1);
      const b = f32(sigmaT * ep1);
      const cc = midpoint ? f32(0.5 * b) : f32(sigmaT * f32(f32(ep1 / h) - 1));
      for (let k = 0; k < x.length; k++) o[k] = f32(f32(f32(a * x[k]!) - f32(b * m0[k]!)) - f32(cc * d1(k)));
    } else if (algo === 'sde-dpmsolver++') {
      const e2 = f32(Math.exp(f32(-2 * h)));
      const a = f32(f32(sigmaT / sigmaS0) * f32(Math.exp(-h)));
      const b = f32(alphaT * f32(1 - e2));
      const cc = midpoint ? f32(0.5 * b) : f32(alphaT * f32(f32(f32(1 - e2) / f32(-2 * h)) + 1));
      const n = f32(sigmaT * f32(Math.sqrt(f32(1 - e2))));
      for (let k = 0; k < x.length; k++) {
        o[k] = f32(f32(f32(f32(a * x[k]!) + f32(b * m0[k]!)) + f32(cc * d1(k))) + f32(n * noise![k]!));
      }
    } else {
      const a = f32(alphaT / alphaS0);
      const ep1 = f32(f32(Math.exp(h)) - 1);
      const b = f32(2 * f32(sigmaT * ep1));
      const cc = midpoint ? f32(sigmaT * ep1) : f32(2 * f32(sigmaT * f32(f32(ep1 / h) - 1)));
      const n = f32(sigmaT * f32(Math.sqrt(f32(f32(Math.exp(f32(2 * h))) - 1))));
      for (let k = 0; k < x.length; k++) {
        o[k] = f32(f32(f32(f32(a * x[k]!) - f32(b * m0[k]!)) - f32(cc * d1(k))) + f32(n * noise![k]!));
      }
    }
  }

  private thirdOrder(x: Float32Array, o: Float32Array): void {
    const i = this.stepIndex!;
    const [alphaT, sigmaT] = sigmaToAlphaSigma(this.sigmas[i + 1]!);
    const [alphaS0, sigmaS0] = sigmaToAlphaSigma(this.sigmas[i]!);
    const [alphaS1, sigmaS1] = sigmaToAlphaSigma(this.sigmas[i - 1]!);
    const [alphaS2, sigmaS2] = sigmaToAlphaSigma(this.sigmas[i - 2]!);
    const lt = lambdaOf(alphaT, sigmaT);
    const l0 = lambdaOf(alphaS0, sigmaS0);
    const l1 = lambdaOf(alphaS1, sigmaS1);
    const l2 = lambdaOf(alphaS2, sigmaS2);
    const n = this.history.length;
    const m0 = this.history[n - 1]!;
    const m1 = this.history[n - 2]!;
    const m2 = this.history[n - 3]!;
    const h = f32(lt - l0);
    const h0 = f32(l0 - l1);
    const h1 = f32(l1 - l2);
    const r0 = f32(h0 / h);
    const r1 = f32(h1 / h);
    const inv0 = f32(1 / r0);
    const inv1 = f32(1 / r1);
    const w = f32(r0 / f32(r0 + r1));
    const inv01 = f32(1 / f32(r0 + r1));
    const dataPred = this.config.algorithm_type === 'dpmsolver++';
    if (!dataPred && this.config.algorithm_type !== 'dpmsolver') {
      throw new Error('DPM-Solver: third order is only defined for dpmsolver++ and dpmsolver');
    }
    let a: number, b: number, c1: number, c2: number;
    if (dataPred) {
      const em1 = f32(f32(Math.exp(-h)) - 1);
      a = f32(sigmaT / sigmaS0);
      b = f32(alphaT * em1);
      c1 = f32(alphaT * f32(f32(em1 / h) + 1));
      c2 = f32(alphaT * f32(f32(f32(em1 + h) / f32(h * h)) - 0.5));
    } else {
      const ep1 = f32(f32(Math.exp(h)) - 1);
      a = f32(alphaT / alphaS0);
      b = f32(sigmaT * ep1);
      c1 = f32(sigmaT * f32(f32(ep1 / h) - 1));
      c2 = f32(sigmaT * f32(f32(f32(ep1 - h) / f32(h * h)) - 0.5));
    }
    for (let k = 0; k < x.length; k++) {
      const d10 = f32(inv0 * f32(m0[k]! - m1[k]!));
      const d11 = f32(inv1 * f32(m1[k]! - m2[k]!));
      const d1 = f32(d10 + f32(w * f32(d10 - d11)));
      const d2 = f32(inv01 * f32(d10 - d11));
      const base = f32(f32(a * x[k]!) - f32(b * m0[k]!));
      o[k] = dataPred ? f32(f32(base + f32(c1 * d1)) - f32(c2 * d2)) : f32(f32(base - f32(c1 * d1)) - f32(c2 * d2));
    }
  }
}
