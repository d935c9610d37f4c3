/**
 * DPM++ SDE sampler (stochastic second-order single-step, two model calls per step), following
 * diffusers' DPMSolverSDEScheduler (0.27). Timesteps after the first are doubled and the odd
 * calls are evaluated at the midpoint (in −log σ) of each step.
 *
 * Noise: diffusers samples it from a torchsde BrownianTree (seeded from torch's global RNG when
 * no noise_sampler_seed is given), which cannot be reproduced without torchsde. Here each call
 * that adds noise (the predictor's, over [σ, σ_mid], and the corrector's, over [σ, σ_next]) takes
 * one standard normal draw from the image's generator, in diffusers' call order, used as that
 * call's normalised increment — so noise replayed from a diffusers run gives its numbers exactly.
 * (The tree would correlate the two increments of a step; independent draws keep each one's law.)
 * Steps ending at σ = 0 draw nothing. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, drawNoise, ensure, f32, outputFor, resolveConfig, scaleBySigma, sigmaToT } from './common.js';
import { SigmaScheduler, sigmaDenoiser, sigmaGrid } from './sigma-base.js';
import { doubleAfterFirst } from './heun.js';

export const DPM_SDE_DEFAULTS = {
  ...BETA_DEFAULTS,
  beta_start: 0.00085,
  beta_end: 0.012,
  prediction_type: 'epsilon',
  use_karras_sigmas: false,
  noise_sampler_seed: null as number | null,
  timestep_spacing: 'linspace',
  steps_offset: 0,
};

const tOf = (sigma: number): number => f32(-f32(Math.log(sigma)));
const sigmaOf = (t: number): number => f32(Math.exp(-t));

export class DpmSdeScheduler extends SigmaScheduler<typeof DPM_SDE_DEFAULTS> {
  readonly name = 'dpmpp_sde';
  private savedSample: Float32Array | null = null;
  private inSecondOrder = false;
  private midPointSigma: number | null = null;
  private x0: Float32Array | null = null;
  private z: Float32Array | null = null;
  private readonly sNoise: number;

  constructor(config?: SchedulerConfig, sNoise = 1) {
    super(resolveConfig(DPM_SDE_DEFAULTS, config));
    this.sNoise = sNoise;
  }

  setTimesteps(steps: number): void {
    const grid = sigmaGrid(this.train, this.config, steps, true);
    // midpoint timesteps: σ at the middle of each interval in t = −log σ, mapped back to a timestep
    const mids: number[] = [];
    for (let i = 0; i + 1 < grid.sigmas64.length; i++) {
      const t0 = -Math.log(grid.sigmas64[i]!);
      const t1 = -Math.log(grid.sigmas64[i + 1]!);
      mids.push(sigmaToT(Math.exp(-(t0 + (t1 - t0) * 0.5)), this.train.logSigmas));
    }
    const ts = doubleAfterFirst(grid.timesteps);
    for (let j = 0; j < mids.length; j++) ts[1 + 2 * j] = f32(mids[j]!);
    this.timesteps = ts;
    this.sigmas = [...doubleAfterFirst(grid.sigmas), 0];
    this.stepIndex = null;
    this.inSecondOrder = false;
    this.midPointSigma = null;
  }

  override scaleModelInput(x: Float32Array, t: number, out?: Float32Array): Float32Array {
    const sigma = this.sigmas[this.index(t)]!;
    return scaleBySigma(x, this.inSecondOrder ? this.midPointSigma! : sigma, out);
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const i = this.index(t);
    const len = x.length;
    const first = !this.inSecondOrder;
    const sigma = first ? this.sigmas[i]! : this.sigmas[i - 1]!;
    const sigmaNext = first ? this.sigmas[i + 1]! : this.sigmas[i]!;
    const o = outputFor(x, out);
    const tCur = tOf(sigma);
    const tNextFull = sigmaNext > 0 ? tOf(sigmaNext) : Infinity;
    const tProposed = f32(tCur + f32(f32(tNextFull - tCur) * 0.5));
    const sigmaIn = first ? sigma : sigmaOf(tProposed);
    const denoise = sigmaDenoiser(this.config.prediction_type, sigmaIn, 'DPM++ SDE');
    const x0 = (this.x0 = ensure(this.x0, len));
    for (let k = 0; k < len; k++) x0[k] = denoise(x[k]!, modelOutput[k]!);
    if (sigmaNext === 0) {
      // Euler step to zero
      const dt = f32(sigmaNext - sigma);
      for (let k = 0; k < len; k++) {
        const s = x[k]!;
        o[k] = f32(s + f32(f32(f32(s - x0[k]!) / sigma) * dt));
      }
    } else {
      const tNext = first ? tProposed : tNextFull;
      const base = first ? x : this.savedSample!;
      const sFrom = sigmaOf(tCur);
      const sTo = sigmaOf(tNext);
      const sFrom2 = f32(sFrom * sFrom);
      const sTo2 = f32(sTo * sTo);
      const sigmaUp = Math.min(sTo, f32(Math.sqrt(f32(f32(sTo2 * f32(sFrom2 - sTo2)) / sFrom2))));
      const sigmaDown = f32(Math.sqrt(f32(sTo2 - f32(sigmaUp * sigmaUp))));
      const ancestralT = tOf(sigmaDown);
      const a = f32(sigmaOf(ancestralT) / sigmaOf(tCur));
      const b = f32(Math.expm1(f32(tCur - ancestralT)));
      const noise = drawNoise(generator, (this.z = ensure(this.z, len)), this.name);
      const nScale = f32(this.sNoise * sigmaUp);
      if (first) {
        const saved = (this.savedSample = ensure(this.savedSample, len));
        saved.set(x);
      }
      for (let k = 0; k < len; k++) {
        const prev = f32(f32(a * base[k]!) - f32(b * x0[k]!));
        o[k] = f32(prev + f32(noise[k]! * nScale));
      }
      if (first) {
        this.inSecondOrder = true;
        this.midPointSigma = sigmaOf(tNext);
      } else {
        this.inSecondOrder = false;
        this.midPointSigma = null;
      }
    }
    this.stepIndex = i + 1;
    return o;
  }
}
