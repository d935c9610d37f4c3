/**
 * Scheduler registry: sdgen names, AUTOMATIC1111 sampler names, the folder's default, and a
 * factory that builds a scheduler from a model folder's scheduler_config.json exactly like
 * diffusers' `XScheduler.from_config(folder_config)` (the folder's betas, prediction type and
 * spacing kept, every other option at the target class's default). Pure logic.
 */
import { SdgenError, UsageError } from '../errors.js';
import type { Scheduler, SchedulerConfig } from './types.js';
import { checkSamplerSupports, configSource, validateSchedulerConfig } from './config.js';
import { EulerAncestralScheduler } from './euler-ancestral.js';
import { EulerScheduler } from './euler.js';
import { DdimScheduler } from './ddim.js';
import { DpmMultistepScheduler } from './dpm-multistep.js';
import { PndmScheduler } from './pndm.js';
import { LmsScheduler } from './lms.js';
import { HeunScheduler } from './heun.js';
import { DpmSdeScheduler } from './dpm-sde.js';
import { UniPcScheduler } from './unipc.js';
import { LcmScheduler } from './lcm.js';

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
  { name: 'dpmpp_2m_karras', a1111: 'DPM++ 2M Karras', diffusersClass: 'DPMSolverMultistepScheduler', description: 'DPM++ 2M on the Karras sigma schedule (use_karras_sigmas)' },
  { name: 'pndm', a1111: 'PLMS', diffusersClass: 'PNDMScheduler', description: 'PNDM/PLMS (skip_prk_steps in SD 1.x folders): the original SD sampler' },
  { name: 'lms', a1111: 'LMS', diffusersClass: 'LMSDiscreteScheduler', description: 'Linear multistep, order 4' },
  { name: 'heun', a1111: 'Heun', diffusersClass: 'HeunDiscreteScheduler', description: 'Heun: second order, two UNet calls per step' },
  { name: 'dpmpp_sde', a1111: 'DPM++ SDE', diffusersClass: 'DPMSolverSDEScheduler', description: 'DPM++ SDE: stochastic, two UNet calls per step (noise from the seed, not torchsde)' },
  { name: 'dpmpp_2m_sde', a1111: 'DPM++ 2M SDE', diffusersClass: 'DPMSolverMultistepScheduler', description: 'DPM-Solver++ 2M, SDE variant (sde-dpmsolver++): stochastic' },
  { name: 'unipc', a1111: 'UniPC', diffusersClass: 'UniPCMultistepScheduler', description: 'UniPC predictor-corrector (bh2, order 2): good in 10-20 steps' },
  { name: 'lcm', a1111: 'LCM', diffusersClass: 'LCMScheduler', description: 'Latent Consistency Model sampler: 2-8 steps with LCM weights/LoRA' },
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

const ALIASES = new Map<string, string>([
  ['plms', 'pndm'],
  ['euler_ancestral', 'euler_a'],
  ['k_euler_a', 'euler_a'],
  ['k_euler', 'euler'],
  ['k_lms', 'lms'],
  ['k_heun', 'heun'],
  ['eulerancestraldiscretescheduler', 'euler_a'],
  ['eulerdiscretescheduler', 'euler'],
  ['ddimscheduler', 'ddim'],
  ['dpmsolvermultistepscheduler', 'dpmpp_2m'],
  ['pndmscheduler', 'pndm'],
  ['lmsdiscretescheduler', 'lms'],
  ['heundiscretescheduler', 'heun'],
  ['dpmsolversdescheduler', 'dpmpp_sde'],
  ['unipcmultistepscheduler', 'unipc'],
  ['lcmscheduler', 'lcm'],
]);

/**
 * What defaultSchedulerFor returns for a folder whose scheduler_config names a class sdgen does
 * not implement, followed by that class. There is no sensible default then: the class decides
 * the folder's sampler and its meaning of the config (a DDPM, KDPM2 or EDM folder sampled as
 * PNDM gives different images without a word), so resolving it fails with a one-line SdgenError,
 * and the folder runs only when the user names a sampler (--scheduler), which then samples the
 * folder's noise schedule as from_config would.
 */
export const UNSUPPORTED_CLASS = 'unsupported-class:';

/** The diffusers classes sdgen implements, as a readable list. */
export function supportedClasses(): string {
  return [...new Set(SAMPLERS.map((s) => s.diffusersClass))].join(', ');
}

/** Canonical sdgen name for an sdgen or A1111 name (case-insensitive); UsageError otherwise. */
export function resolveSchedulerName(nameOrA1111: string): string {
  if (nameOrA1111.startsWith(UNSUPPORTED_CLASS)) {
    const cls = nameOrA1111.slice(UNSUPPORTED_CLASS.length);
    throw new SdgenError(
      `the model's scheduler_config.json names _class_name '${cls}', which sdgen does not implement ` +
        `(it has ${supportedClasses()}); pass --scheduler NAME to sample this model with one of sdgen's samplers (see: sdgen samplers)`,
    );
  }
  const key = nameOrA1111.trim().toLowerCase();
  const hit = byLower.get(key) ?? byLower.get(key.replace(/[-\s]+/g, '_')) ?? ALIASES.get(key);
  if (hit) return hit;
  const valid = SAMPLERS.map((s) => `${s.name} ("${s.a1111}")`).join(', ');
  throw new UsageError(`unknown scheduler '${nameOrA1111}'; valid: ${valid}`);
}

/** A1111's sampler name for an sdgen (or A1111) name. */
export function a1111Name(name: string): string {
  const canonical = resolveSchedulerName(name);
  return SAMPLERS.find((s) => s.name === canonical)!.a1111;
}

/**
 * The sdgen scheduler a model folder uses by default, from its scheduler_config `_class_name`:
 * PNDM when the config names no class (diffusers' StableDiffusionPipeline default), and
 * UNSUPPORTED_CLASS + the class for a class sdgen does not implement (an error once resolved).
 */
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
      if (config?.['algorithm_type'] === 'sde-dpmsolver++') return 'dpmpp_2m_sde';
      return config?.['use_karras_sigmas'] ? 'dpmpp_2m_karras' : 'dpmpp_2m';
    case 'PNDMScheduler':
      return 'pndm';
    case 'LMSDiscreteScheduler':
      return 'lms';
    case 'HeunDiscreteScheduler':
      return 'heun';
    case 'DPMSolverSDEScheduler':
      return 'dpmpp_sde';
    case 'UniPCMultistepScheduler':
      return 'unipc';
    case 'LCMScheduler':
      return 'lcm';
    case undefined:
      // No class: diffusers' StableDiffusionPipeline default for SD 1.x folders.
      return 'pndm';
    default:
      return UNSUPPORTED_CLASS + String(cls);
  }
}

/**
 * Build scheduler `name` (sdgen or A1111 name) from a folder's scheduler config. The config is
 * validated first (SdgenError naming the file and key on a bad value, see ./config.ts); a
 * sampler's unsupported prediction_type is an SdgenError too.
 */
export function createScheduler(name: string, config: SchedulerConfig, opts: CreateSchedulerOptions = {}): Scheduler {
  validateSchedulerConfig(config, configSource(config));
  // A diffusers class name ("DPMSolverMultistepScheduler") takes its variant from the config, as
  // from_config does (use_karras_sigmas, algorithm_type); sdgen and A1111 names fix it.
  const cls = SAMPLERS.find((s) => s.diffusersClass.toLowerCase() === name.trim().toLowerCase())?.diffusersClass;
  const canonical = cls ? defaultSchedulerFor({ ...config, _class_name: cls }) : resolveSchedulerName(name);
  checkSamplerSupports(canonical, config);
  switch (canonical) {
    case 'euler_a':
      return new EulerAncestralScheduler(config);
    case 'euler':
      return new EulerScheduler(config);
    case 'ddim':
      return new DdimScheduler(config, { eta: opts.eta ?? 0 });
    case 'dpmpp_2m':
      return new DpmMultistepScheduler(config, { algorithm_type: 'dpmsolver++', use_karras_sigmas: false }, 'dpmpp_2m');
    case 'dpmpp_2m_karras':
      return new DpmMultistepScheduler(config, { algorithm_type: 'dpmsolver++', use_karras_sigmas: true }, 'dpmpp_2m_karras');
    case 'dpmpp_2m_sde':
      return new DpmMultistepScheduler(config, { algorithm_type: 'sde-dpmsolver++' }, 'dpmpp_2m_sde');
    case 'pndm':
      return new PndmScheduler(config);
    case 'lms':
      return new LmsScheduler(config);
    case 'heun':
      return new HeunScheduler(config);
    case 'dpmpp_sde':
      return new DpmSdeScheduler(config);
    case 'unipc':
      return new UniPcScheduler(config);
    case 'lcm':
      return new LcmScheduler(config);
    default:
      throw new UsageError(`scheduler '${name}' is not available`);
  }
}
