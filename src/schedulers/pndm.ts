/**
 * PNDM / PLMS sampler, matching diffusers' PNDMScheduler (0.27). With skip_prk_steps (the SD 1.x
 * folders' setting) it runs pure PLMS: the timestep list repeats the second one (the first
 * "step" is a half step that the next call completes), so there are n+1 model calls for n
 * steps. Without it, the first steps are Runge–Kutta (PRK) steps. The state is advanced by call
 * order; the pipeline just iterates `timesteps`. Pure logic.
 */
import type { RandomSource } from '../random/types.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import {
  BETA_DEFAULTS, computeAlphasCumprod, computeBetas, f32, outputFor, resolveConfig, roundHalfEven, npArange, npLinspace,
  unscaledInput,
} from './common.js';
import { checkStepCount, checkTimestepRange } from './config.js';
import { UsageError } from '../errors.js';

const SIXTH = f32(1 / 6);
const THIRD = f32(1 / 3);

export const PNDM_DEFAULTS = {
  ...BETA_DEFAULTS,
  skip_prk_steps: false,
  set_alpha_to_one: false,
  prediction_type: 'epsilon',
  timestep_spacing: 'leading',
  steps_offset: 0,
};

export class PndmScheduler implements Scheduler {
  readonly name = 'pndm';
  readonly config: typeof PNDM_DEFAULTS;
  readonly initNoiseSigma = 1;
  private readonly alphasCumprod: Float32Array;
  private readonly finalAlphaCumprod: number;
  timesteps: number[] = [];
  private prkTimesteps: number[] = [];
  private numInferenceSteps = 0;
  private counter = 0;
  /** Ring of the last (up to 4) model outputs, oldest first. */
  private ets: Float32Array[] = [];
  private spare: Float32Array[] = [];
  private curSample: Float32Array | null = null;
  private hasCurSample = false;
  private curModelOutput: Float32Array | null = null;
  private combined: Float32Array | null = null;

  constructor(config?: SchedulerConfig) {
    this.config = resolveConfig(PNDM_DEFAULTS, config);
    if (this.config.prediction_type !== 'epsilon' && this.config.prediction_type !== 'v_prediction') {
      throw new Error(`PNDM: prediction_type '${this.config.prediction_type}' is not supported`);
    }
    this.alphasCumprod = computeAlphasCumprod(computeBetas(this.config));
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0]!;
  }

  setTimesteps(steps: number): void {
    const c = this.config;
    const N = c.num_train_timesteps;
    checkStepCount(steps, N);
    // Without skip_prk_steps one step leaves no timestep at all (diffusers then returns the noise).
    if (!c.skip_prk_steps && steps < 2) throw new UsageError('PNDM with PRK steps (skip_prk_steps false) needs at least 2 steps');
    this.numInferenceSteps = steps;
    // ascending base timesteps
    let base: number[];
    if (c.timestep_spacing === 'linspace') base = npLinspace(0, N - 1, steps).map(roundHalfEven);
    else if (c.timestep_spacing === 'leading') {
      const ratio = Math.floor(N / steps);
      base = Array.from({ length: steps }, (_, i) => i * ratio + c.steps_offset);
    } else if (c.timestep_spacing === 'trailing') {
      base = npArange(N, 0, -N / steps).map(roundHalfEven).reverse().map((v) => v - 1);
    } else {
      throw new Error(`timestep_spacing '${c.timestep_spacing}' is not supported; use 'linspace', 'leading' or 'trailing'`);
    }
    let plms: number[];
    if (c.skip_prk_steps) {
      this.prkTimesteps = [];
      // np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]]): one step is just the last timestep
      const withRepeat = [...base.slice(0, -1), ...base.slice(-2, -1), ...base.slice(-1)];
      plms = withRepeat.reverse();
    } else {
      const half = Math.floor(Math.floor(N / steps) / 2);
      const last4 = base.slice(-4);
      const prk: number[] = [];
      for (const t of last4) prk.push(t, t + half);
      // prk[:-1].repeat(2)[1:-1], reversed
      const rep: number[] = [];
      for (const t of prk.slice(0, -1)) rep.push(t, t);
      this.prkTimesteps = rep.slice(1, -1).reverse();
      plms = base.slice(0, -3).reverse();
    }
    this.timesteps = [...this.prkTimesteps, ...plms];
    checkTimestepRange(this.timesteps, N, steps, c.steps_offset);
    this.counter = 0;
    this.spare.push(...this.ets);
    this.ets = [];
    this.hasCurSample = false;
    this.curModelOutput?.fill(0);
  }

  scaleModelInput(x: Float32Array, _t: number, out?: Float32Array): Float32Array {
    return unscaledInput(x, out);
  }

  private ensureBuffers(len: number): void {
    if (this.curSample && this.curSample.length === len) return;
    this.ets = [];
    this.spare = Array.from({ length: 4 }, () => new Float32Array(len));
    this.curSample = new Float32Array(len);
    this.curModelOutput = new Float32Array(len);
    this.combined = new Float32Array(len);
  }

  /** Append a copy of `m` to ets, keeping the last 4 (the evicted buffer is reused). */
  private pushEts(m: Float32Array): void {
    let buf: Float32Array;
    if (this.ets.length === 4) buf = this.ets.shift()!;
    else buf = this.spare.pop() ?? new Float32Array(m.length);
    buf.set(m);
    this.ets.push(buf);
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, _generator?: RandomSource, out?: Float32Array): Float32Array {
    this.ensureBuffers(x.length);
    const o = outputFor(x, out);
    if (this.counter < this.prkTimesteps.length && !this.config.skip_prk_steps) this.stepPrk(modelOutput, t, x, o);
    else this.stepPlms(modelOutput, t, x, o);
    return o;
  }

  private stepPrk(m: Float32Array, t: number, x: Float32Array, o: Float32Array): void {
    const N = this.config.num_train_timesteps;
    const diffToPrev = this.counter % 2 ? 0 : Math.floor(Math.floor(N / this.numInferenceSteps) / 2);
    const prevT = t - diffToPrev;
    const tt = this.prkTimesteps[Math.floor(this.counter / 4) * 4]!;
    const cur = this.curModelOutput!;
    const len = x.length;
    let eff: Float32Array = m;
    const phase = this.counter % 4;
    if (phase === 0) {
      for (let k = 0; k < len; k++) cur[k] = f32(cur[k]! + f32(SIXTH * m[k]!));
      this.pushEts(m);
      this.curSample!.set(x);
      this.hasCurSample = true;
    } else if (phase === 1 || phase === 2) {
      for (let k = 0; k < len; k++) cur[k] = f32(cur[k]! + f32(THIRD * m[k]!));
    } else {
      const comb = this.combined!;
      for (let k = 0; k < len; k++) comb[k] = f32(cur[k]! + f32(SIXTH * m[k]!));
      cur.fill(0);
      eff = comb;
    }
    const sample = this.hasCurSample ? this.curSample! : x;
    this.prevSample(sample, tt, prevT, eff, o);
    this.counter++;
  }

  private stepPlms(m: Float32Array, t: number, x: Float32Array, o: Float32Array): void {
    const N = this.config.num_train_timesteps;
    const ratio = Math.floor(N / this.numInferenceSteps);
    let prevT = t - ratio;
    if (this.counter !== 1) {
      this.pushEts(m);
    } else {
      prevT = t;
      t = t + ratio;
    }
    const len = x.length;
    const e = this.ets;
    const n = e.length;
    const comb = this.combined!;
    let sample = x;
    let eff: Float32Array;
    if (n === 1 && this.counter === 0) {
      eff = m;
      this.curSample!.set(x);
      this.hasCurSample = true;
    } else if (n === 1 && this.counter === 1) {
      for (let k = 0; k < len; k++) comb[k] = f32(f32(m[k]! + e[n - 1]![k]!) / 2);
      eff = comb;
      sample = this.curSample!;
      this.hasCurSample = false;
    } else if (n === 2) {
      for (let k = 0; k < len; k++) comb[k] = f32(f32(f32(3 * e[1]![k]!) - e[0]![k]!) / 2);
      eff = comb;
    } else if (n === 3) {
      for (let k = 0; k < len; k++) {
        comb[k] = f32(f32(f32(f32(23 * e[2]![k]!) - f32(16 * e[1]![k]!)) + f32(5 * e[0]![k]!)) / 12);
      }
      eff = comb;
    } else {
      const c24 = f32(1 / 24);
      for (let k = 0; k < len; k++) {
        const s = f32(f32(f32(f32(55 * e[3]![k]!) - f32(59 * e[2]![k]!)) + f32(37 * e[1]![k]!)) - f32(9 * e[0]![k]!));
        comb[k] = f32(c24 * s);
      }
      eff = comb;
    }
    this.prevSample(sample, t, prevT, eff, o);
    this.counter++;
  }

  /** Formula (9) of the PNDM paper: x_{t−δ} from x_t and the (combined) eps. */
  private prevSample(sample: Float32Array, t: number, prevT: number, m: Float32Array, o: Float32Array): void {
    const aT = this.alphasCumprod[t]!;
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT]! : this.finalAlphaCumprod;
    const bT = f32(1 - aT);
    const bPrev = f32(1 - aPrev);
    const v = this.config.prediction_type === 'v_prediction';
    const sqA = f32(Math.sqrt(aT));
    const sqB = f32(Math.sqrt(bT));
    const sampleCoeff = f32(Math.sqrt(f32(aPrev / aT)));
    const denom = f32(f32(aT * f32(Math.sqrt(bPrev))) + f32(Math.sqrt(f32(f32(aT * bT) * aPrev))));
    const diff = f32(aPrev - aT);
    for (let k = 0; k < sample.length; k++) {
      const s = sample[k]!;
      const eps = v ? f32(f32(sqA * m[k]!) + f32(sqB * s)) : m[k]!;
      o[k] = f32(f32(sampleCoeff * s) - f32(f32(diff * eps) / denom));
    }
  }
}

