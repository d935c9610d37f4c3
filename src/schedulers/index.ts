/**
 * Scheduler registry: sdgen names, AUTOMATIC1111 sampler names, the folder's default, and a
 * factory that builds a scheduler from a model folder's scheduler_config.json exactly like
 * diffusers' `XScheduler.from_config(folder_config)` (the folder's betas, prediction type and
 * spacing kept, every other option at the target class's default). Pure logic.
 */
import { UsageError } from '../errors.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import { EulerAncestralScheduler } from './euler-ancestral.js';
import { EulerScheduler } from './euler.js';
import { DdimScheduler } from './ddim.js';
import { DpmMultistepScheduler } from './dpm-multistep.js';

export interface SamplerInfo {
  /** sdgen name (`--scheduler NAME`). */
  name: string;
  /** AUTOMATIC1111's sampler name (infotext `Sampler:`). */
  a1111: string;
  /** The diffusers class it reproduces. */
  diffusersClass: string;
  description: string;
}

export const SAMPLERS: ReadonlyArray<SamplerInfo> = [
  { name: 'euler_a', a1111: 'Euler a', diffusersClass: 'EulerAncestralDiscreteScheduler', description: 'Euler ancestral: fast, stochastic, changes with step count' },
  { name: 'euler', a1111: 'Euler', diffusersClass: 'EulerDiscreteScheduler', description: 'Euler: simple deterministic first-order ODE sampler' },
  { name: 'ddim', a1111: 'DDIM', diffusersClass: 'DDIMScheduler', description: 'DDIM: deterministic (eta 0) or stochastic with --eta' },
  { name: 'dpmpp_2m', a1111: 'DPM++ 2M', diffusersClass: 'DPMSolverMultistepScheduler', description: 'DPM-Solver++ second-order multistep: good quality in 20-30 steps' },
];

export interface CreateSchedulerOptions {
  /** DDIM's eta (0 = deterministic). */
  eta?: number;
}

const byLower = new Map<string, string>();
for (const s of SAMPLERS) {
  byLower.set(s.name.toLowerCase(), s.name);
  byLower.set(s.a1111.toLowerCase(), s.name);
}

/** Canonical sdgen name for an sdgen or A1111 name (case-insensitive); UsageError otherwise. */
export function resolveSchedulerName(nameOrA1111: string): string {
  const key = nameOrA1111.trim().toLowerCase();
  const hit = byLower.get(key) ?? byLower.get(key.replace(/[-\s]+/g, '_'));
  if (hit) return hit;
  const valid = SAMPLERS.map((s) => `${s.name} ("${s.a1111}")`).join(', ');
  throw new UsageError(`unknown scheduler '${nameOrA1111}'; valid: ${valid}`);
}

/** A1111's sampler name for an sdgen (or A1111) name. */
export function a1111Name(name: string): string {
  const canonical = resolveSchedulerName(name);
  return SAMPLERS.find((s) => s.name === canonical)!.a1111;
}

/** The sdgen scheduler a model folder uses by default, from its scheduler_config `_class_name`. */
export function defaultSchedulerFor(config: SchedulerConfig | undefined): string {
  const cls = config?._class_name;
  switch (cls) {
    case 'EulerAncestralDiscreteScheduler':
      return 'euler_a';
    case 'EulerDiscreteScheduler':
      return 'euler';
    case 'DDIMScheduler':
      return 'ddim';
    case 'DPMSolverMultistepScheduler':
      return 'dpmpp_2m';
    default:
      return 'euler_a';
  }
}

/** Build scheduler `name` (sdgen or A1111 name) from a folder's scheduler config. */
export function createScheduler(name: string, config: SchedulerConfig, opts: CreateSchedulerOptions = {}): Scheduler {
  const canonical = resolveSchedulerName(name);
  switch (canonical) {
    case 'euler_a':
      return new EulerAncestralScheduler(config);
    case 'euler':
      return new EulerScheduler(config);
    case 'ddim':
      return new DdimScheduler(config, { eta: opts.eta ?? 0 });
    case 'dpmpp_2m':
      return new DpmMultistepScheduler(config, { algorithm_type: 'dpmsolver++', use_karras_sigmas: false }, 'dpmpp_2m');
    default:
      throw new UsageError(`scheduler '${name}' is not available`);
  }
}
