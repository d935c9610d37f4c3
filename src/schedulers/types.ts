import type { RandomSource } from '../random/types.js';

/** diffusers' scheduler_config.json, as read from a model folder (unknown keys kept). */
export interface SchedulerConfig {
  _class_name?: string;
  num_train_timesteps?: number;
  beta_start?: number;
  beta_end?: number;
  beta_schedule?: 'linear' | 'scaled_linear' | 'squaredcos_cap_v2' | string;
  trained_betas?: number[] | null;
  prediction_type?: 'epsilon' | 'v_prediction' | 'sample' | string;
  timestep_spacing?: 'leading' | 'trailing' | 'linspace' | string;
  steps_offset?: number;
  set_alpha_to_one?: boolean;
  skip_prk_steps?: boolean;
  clip_sample?: boolean;
  [key: string]: unknown;
}

/**
 * One diffusion sampler, stepping one image's latents (diffusers semantics, float32 arrays,
 * internal math in float64 where diffusers uses float32 tensors is fine as long as results
 * match to 1e-5).
 */
export interface Scheduler {
  /** Canonical sdgen name, e.g. 'euler_a'. */
  readonly name: string;
  /** Set up `steps` inference steps. */
  setTimesteps(steps: number): void;
  /** The timesteps the UNet is called with, in order (may be fractional for Karras-type samplers). */
  readonly timesteps: Float64Array | number[];
  /** Factor for the initial noise (sigma_max-based for Euler-type samplers, 1 for DDIM). */
  readonly initNoiseSigma: number;
  /** Scale the UNet input for timestep t (returns a new array or writes `out`). */
  scaleModelInput(x: Float32Array, t: number, out?: Float32Array): Float32Array;
  /**
   * One step: model output (eps or v, per prediction_type) at t, current sample x →
   * previous sample. `generator` supplies noise for ancestral/stochastic samplers in
   * diffusers' order. Writes `out` if given, else returns a new array.
   */
  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array;
}
