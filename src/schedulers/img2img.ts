/**
 * img2img on sdgen's schedulers, as diffusers 0.27.2's StableDiffusionImg2ImgPipeline and
 * StableDiffusionInpaintPipeline run them:
 *
 * - `get_timesteps`: with N inference steps and strength S the schedule is set up for N steps
 *   and the run takes its tail: init = min(int(N·S), N), t_start = N − init, timesteps =
 *   scheduler.timesteps[t_start · order :] (order 2 for Heun and DPM-SDE, whose schedules list
 *   each timestep after the first twice), and `scheduler.set_begin_index(t_start · order)` on the
 *   schedulers that have it.
 * - The schedulers keep their full N-step timesteps (multistep solvers look at the schedule's
 *   length for their lower-order final steps); only the loop runs the tail. What diffusers'
 *   begin_index does — the first step's index is the tail's start, not a search for the
 *   timestep — is what sdgen's schedulers do by themselves when the tail's first timestep occurs
 *   once in the schedule, or twice as in Heun's and DPM-SDE's (their search takes the second
 *   occurrence, which is where a tail of an order-2 schedule starts). startMidSchedule sets the
 *   index explicitly anyway, so a schedule with other repeats (Karras sigmas rounded to one
 *   timestep) starts where diffusers starts.
 * - `add_noise(x0, noise, t)` per scheduler family: the sigma schedulers (Euler, Euler a, LMS,
 *   Heun, DPM-SDE) x0 + σ·noise with σ at the begin index (or, once stepping, the step index);
 *   DPM-Solver multistep and UniPC α_t·x0 + σ_t·noise with α_t = 1/√(σ²+1), σ_t = σ·α_t from the
 *   same σ; DDIM, PNDM and LCM √ᾱ_t·x0 + √(1−ᾱ_t)·noise at the integer timestep t. Every
 *   operation in float32 like torch.
 *
 * Pure logic.
 */
import { UsageError } from '../errors.js';
import type { Scheduler } from './types.js';
import { computeAlphasCumprod, computeBetas, f32, sigmaToAlphaSigma } from './common.js';
import { SigmaScheduler } from './sigma-base.js';
import { DdimScheduler } from './ddim.js';
import { PndmScheduler } from './pndm.js';
import { LcmScheduler } from './lcm.js';
import { DpmMultistepScheduler } from './dpm-multistep.js';
import { UniPcScheduler } from './unipc.js';
import { HeunScheduler } from './heun.js';
import { DpmSdeScheduler } from './dpm-sde.js';

/** diffusers' `scheduler.order`: 2 for the schedulers that call the UNet twice per step. */
export function schedulerOrder(s: Scheduler): number {
  return s instanceof HeunScheduler || s instanceof DpmSdeScheduler ? 2 : 1;
}

/** Check an img2img strength: a number in (0, 1]. */
export function validateStrength(strength: number, what = 'strength'): void {
  if (!(typeof strength === 'number' && Number.isFinite(strength) && strength > 0 && strength <= 1)) {
    throw new UsageError(`${what} must be a number in (0, 1] (got ${String(strength)})`);
  }
}

/**
 * How many of `steps` inference steps an img2img run of `strength` takes (diffusers' int(N·S),
 * at most N) and where they start (t_start = N − that). A strength so low that no step is left
 * is a UsageError (diffusers would fail on an empty schedule).
 */
export function img2imgSteps(steps: number, strength: number): { tStart: number; stepsRun: number } {
  validateStrength(strength);
  const init = Math.min(Math.floor(steps * strength), steps);
  if (init < 1) {
    throw new UsageError(`strength ${strength} with ${steps} steps runs no step (int(steps × strength) = 0); raise --strength or --steps`);
  }
  return { tStart: Math.max(steps - init, 0), stepsRun: init };
}

/**
 * The smallest schedule length M whose img2img run of `strength` takes exactly `run` steps
 * (int(M·S) = run): how sdgen realizes `--hires-steps run`, A1111's "the steps the second pass
 * actually runs", with diffusers' truncated schedule. int(M·S) grows by at most 1 per M when
 * S ≤ 1, so such an M exists for every run ≥ 1.
 */
export function scheduleLengthFor(run: number, strength: number): number {
  validateStrength(strength);
  if (!Number.isInteger(run) || run < 1) throw new UsageError(`steps must be a positive integer (got ${run})`);
  // int(M·S) ≥ run needs M ≥ run / S; start a little below to absorb the rounding of M·S
  let m = Math.max(run, Math.floor(run / strength) - 2);
  while (Math.min(Math.floor(m * strength), m) < run) m++;
  while (m > run && Math.min(Math.floor((m - 1) * strength), m - 1) >= run) m--;
  return m;
}

/** The part of a set-up schedule an img2img run takes. */
export interface TruncatedSchedule {
  /** index in scheduler.timesteps of the first timestep run (diffusers' begin_index) */
  beginIndex: number;
  /** the timesteps run, in order (one per UNet call) */
  timesteps: number[];
  /** inference steps taken: int(N·S), at most N */
  stepsRun: number;
}

/**
 * The tail of a scheduler's schedule (set up for `steps`) that an img2img run of `strength`
 * takes, diffusers' get_timesteps. Does not change the scheduler (see startMidSchedule).
 */
export function truncatedSchedule(s: Scheduler, steps: number, strength: number): TruncatedSchedule {
  const { tStart, stepsRun } = img2imgSteps(steps, strength);
  const beginIndex = tStart * schedulerOrder(s);
  const all = Array.from(s.timesteps, Number);
  if (beginIndex >= all.length) throw new Error(`img2img: begin index ${beginIndex} is past the ${all.length} timesteps`);
  return { beginIndex, timesteps: all.slice(beginIndex), stepsRun };
}

/**
 * diffusers' set_begin_index: the scheduler's first step will be at `beginIndex` of its
 * timesteps. The schedulers with a step index (all but PNDM, which counts its calls and starts
 * its PLMS history at whatever timestep it is given first) take it as their starting index.
 * DDIM has no begin index in diffusers and finds nothing by index (its step uses t only).
 */
export function startMidSchedule(s: Scheduler, beginIndex: number): void {
  if (!Number.isInteger(beginIndex) || beginIndex < 0 || beginIndex >= s.timesteps.length) {
    throw new Error(`begin index ${beginIndex} is outside the ${s.timesteps.length} timesteps`);
  }
  if (s instanceof PndmScheduler || s instanceof DdimScheduler) return;
  // The step index is each class's own state (null until the first step, then found from t);
  // setting it is what diffusers' set_begin_index + _init_step_index amounts to.
  const holder = s as unknown as { stepIndex?: number | null };
  if (!('stepIndex' in holder)) throw new Error(`scheduler '${s.name}' cannot start mid-schedule`);
  holder.stepIndex = beginIndex;
}

/** How a scheduler's add_noise mixes the clean sample with noise at one point of its schedule. */
export type NoiseMix = { a: number; b: number };

/**
 * add_noise's coefficients at position `index` of the scheduler's timesteps: noisy = a·x0 + b·noise
 * (a = 1, b = σ for the sigma schedulers, whose torch form is x0 + noise·σ: the same float32
 * result). For the inpainting blend after the last step there is no next position: the caller
 * uses the clean latents.
 */
export function noiseMixAt(s: Scheduler, index: number): NoiseMix {
  const ts = s.timesteps;
  if (!Number.isInteger(index) || index < 0 || index >= ts.length) throw new Error(`add_noise: index ${index} is outside the ${ts.length} timesteps`);
  if (s instanceof SigmaScheduler) return { a: 1, b: f32(s.sigmas[index]!) };
  if (s instanceof DpmMultistepScheduler || s instanceof UniPcScheduler) {
    const [alpha, sigma] = sigmaToAlphaSigma(f32(s.sigmas[index]!));
    return { a: alpha, b: sigma };
  }
  if (s instanceof DdimScheduler || s instanceof PndmScheduler || s instanceof LcmScheduler) {
    const ac = s instanceof DdimScheduler ? s.alphasCumprod : alphasCumprodOf(s);
    const t = Number(ts[index]);
    const abar = ac[t];
    if (!Number.isInteger(t) || abar === undefined) throw new Error(`add_noise: timestep ${t} has no alphas_cumprod entry`);
    return { a: f32(Math.sqrt(abar)), b: f32(Math.sqrt(f32(1 - abar))) };
  }
  throw new Error(`add_noise: scheduler '${s.name}' is not supported`);
}

const alphasCache = new WeakMap<Scheduler, Float32Array>();

/** ᾱ of PNDM / LCM, computed from their resolved config as the classes do themselves. */
function alphasCumprodOf(s: PndmScheduler | LcmScheduler): Float32Array {
  let ac = alphasCache.get(s);
  if (!ac) {
    ac = computeAlphasCumprod(computeBetas(s.config as Parameters<typeof computeBetas>[0]));
    alphasCache.set(s, ac);
  }
  return ac;
}

/**
 * diffusers' `scheduler.add_noise(x0, noise, timesteps[index])` with the index rules of 0.27
 * (begin index before the first step, step index after): float32 `a·x0 + b·noise` (sigma
 * schedulers: `x0 + noise·σ`). Writes `out` when given (may be x0 itself).
 */
export function addNoise(s: Scheduler, x0: Float32Array, noise: Float32Array, index: number, out?: Float32Array): Float32Array {
  if (noise.length !== x0.length) throw new Error(`add_noise: ${noise.length} noise values for ${x0.length} latents`);
  const o = out ?? new Float32Array(x0.length);
  const { a, b } = noiseMixAt(s, index);
  if (s instanceof SigmaScheduler) {
    for (let k = 0; k < x0.length; k++) o[k] = f32(x0[k]! + f32(noise[k]! * b));
  } else {
    for (let k = 0; k < x0.length; k++) o[k] = f32(f32(a * x0[k]!) + f32(b * noise[k]!));
  }
  return o;
}
