/**
 * Linear multistep sampler (LMS, order 4 by default), matching diffusers' LMSDiscreteScheduler
 * (0.27). The multistep coefficients are integrals of Lagrange basis polynomials over
 * [σ_i, σ_{i+1}]; diffusers integrates them numerically, here they are integrated exactly with
 * Gauss–Legendre quadrature (the integrand is a polynomial of degree ≤ 3, so 4 nodes are exact).
 * Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, f32, outputFor, resolveConfig } from './common.js';
import { SigmaScheduler, sigmaDenoiser, sigmaGrid } from './sigma-base.js';

export const LMS_DEFAULTS = {
  ...BETA_DEFAULTS,
  use_karras_sigmas: false,
  prediction_type: 'epsilon',
  timestep_spacing: 'linspace',
  steps_offset: 0,
};

// 8-point Gauss–Legendre nodes/weights on [−1, 1] (exact for polynomials up to degree 15).
const GL_NODES = [
  -0.9602898564975363, -0.7966664774136267, -0.5255324099163290, -0.1834346424956498,
  0.1834346424956498, 0.5255324099163290, 0.7966664774136267, 0.9602898564975363,
];
const GL_WEIGHTS = [
  0.1012285362903763, 0.2223810344533745, 0.3137066458778873, 0.3626837833783620,
  0.3626837833783620, 0.3137066458778873, 0.2223810344533745, 0.1012285362903763,
];

/** ∫_a^b f(τ) dτ by 8-point Gauss–Legendre. */
export function gaussLegendre(fn: (tau: number) => number, a: number, b: number): number {
  const half = (b - a) / 2;
  const mid = (a + b) / 2;
  let sum = 0;
  for (let i = 0; i < GL_NODES.length; i++) sum += GL_WEIGHTS[i]! * fn(mid + half * GL_NODES[i]!);
  return sum * half;
}

/**
 * LMS coefficient: ∫_{σ_t}^{σ_{t+1}} Π_{k≠j, k<order} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ.
 */
export function lmsCoefficient(sigmas: ArrayLike<number>, order: number, t: number, j: number): number {
  const basis = (tau: number): number => {
    let prod = 1;
    for (let k = 0; k < order; k++) {
      if (k === j) continue;
      prod *= (tau - sigmas[t - k]!) / (sigmas[t - j]! - sigmas[t - k]!);
    }
    return prod;
  };
  return gaussLegendre(basis, sigmas[t]!, sigmas[t + 1]!);
}

export class LmsScheduler extends SigmaScheduler<typeof LMS_DEFAULTS> {
  readonly name = 'lms';
  readonly order: number;
  /** Derivative history, newest last (at most `order`). */
  private derivatives: Float32Array[] = [];
  private spare: Float32Array[] = [];
  private coeffs: number[] = [];

  constructor(config?: SchedulerConfig, order = 4) {
    super(resolveConfig(LMS_DEFAULTS, config));
    this.order = order;
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps);
    this.timesteps = grid.timesteps;
    this.sigmas = [...grid.sigmas, 0];
    this.stepIndex = null;
    this.spare.push(...this.derivatives);
    this.derivatives = [];
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, _generator?: RandomSource, out?: Float32Array): Float32Array {
    const i = this.index(t);
    const len = x.length;
    const o = outputFor(x, out);
    const sigma = this.sigmas[i]!;
    const denoise = sigmaDenoiser(this.config.prediction_type, sigma, 'LMS', ['sample']);
    // derivative buffer: reuse the oldest when the history is full
    let d: Float32Array;
    if (this.derivatives.length >= this.order) d = this.derivatives.shift()!;
    else {
      const s = this.spare.pop();
      d = s && s.length === len ? s : new Float32Array(len);
    }
    for (let k = 0; k < len; k++) {
      const s = x[k]!;
      const x0 = denoise(s, modelOutput[k]!);
      d[k] = f32(f32(s - x0) / sigma);
    }
    this.derivatives.push(d);
    const order = Math.min(i + 1, this.order);
    const coeffs = this.coeffs;
    coeffs.length = 0;
    for (let j = 0; j < order; j++) coeffs.push(f32(lmsCoefficient(this.sigmas, order, i, j)));
    const n = this.derivatives.length;
    for (let k = 0; k < len; k++) {
      // sum(coeff_j · derivative_{newest − j}), accumulated in that order
      let acc = f32(coeffs[0]! * this.derivatives[n - 1]![k]!);
      // zip(coeffs, reversed(derivatives)) in diffusers: a run started mid-schedule (img2img)
      // has fewer derivatives than its order
      for (let j = 1; j < Math.min(order, n); j++) acc = f32(acc + f32(coeffs[j]! * this.derivatives[n - 1 - j]![k]!));
      o[k] = f32(x[k]! + acc);
    }
    this.stepIndex = i + 1;
    return o;
  }
}
