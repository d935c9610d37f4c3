/**
 * Validation of a model folder's scheduler/scheduler_config.json, which is user input: every key
 * any sdgen sampler reads is checked for its type and range before a scheduler is built, so a
 * broken or hostile file ends the run with one line naming the file and the key instead of
 * black images, a stack trace or an out-of-memory abort. The accepted names are diffusers
 * 0.27.2's; the ranges are those within which the samplers' arithmetic stays finite. Unknown keys
 * are ignored (diffusers' from_config ignores them too). Pure logic, no I/O.
 */
import { SdgenError, UsageError } from '../errors.js';
import type { SchedulerConfig } from './types.js';
import { BETA_DEFAULTS, computeAlphasCumprod, computeBetas, trainSigmas } from './common.js';

/** Where a scheduler config lives in a model folder (the default `source` of the messages). */
export const SCHEDULER_CONFIG_FILE = 'scheduler/scheduler_config.json';

/**
 * Largest num_train_timesteps accepted. Published diffusion models train on 1000 steps (a few
 * use up to 4000); 100000 leaves a wide margin while keeping what every sampler builds per
 * training step (float32 betas, ᾱ, sigmas, log-sigmas: a few MB) and its O(N) scans negligible.
 * Without a bound a value such as 1e9 makes each scheduler allocate gigabytes before it fails.
 */
export const MAX_TRAIN_TIMESTEPS = 100_000;

/**
 * Largest training noise level σ = √((1 − ᾱ)/ᾱ) accepted at the last training step. SD's is
 * 14.6, the cosine schedule's 2·10^4, zero-SNR's floor 4096; much above that float32 overflows in
 * the ancestral samplers, which square σ twice (σ⁴ passes float32's 3.4·10^38 at σ ≈ 10^9.5).
 */
export const MAX_TRAIN_SIGMA = 1e5;

/** beta_schedule names diffusers 0.27 implements for the samplers sdgen has ('exp': HeunDiscreteScheduler's). */
export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2', 'exp'] as const;
export const TIMESTEP_SPACINGS = ['leading', 'linspace', 'trailing'] as const;
/** 'original_sample' is EulerDiscreteScheduler's older spelling of 'sample'. */
export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample', 'original_sample'] as const;
/** DPMSolverMultistepScheduler's names; diffusers maps 'deis' to 'dpmsolver++'. */
export const ALGORITHM_TYPES = ['dpmsolver++', 'sde-dpmsolver++', 'dpmsolver', 'sde-dpmsolver', 'deis'] as const;
/** DPM-Solver's (midpoint, heun) and UniPC's (bh1, bh2) solver types; each class maps the other's names (and 'logrho'). */
export const SOLVER_TYPES = ['midpoint', 'heun', 'bh1', 'bh2', 'logrho'] as const;

/** Which config each configuration object came from (set by validateSchedulerConfig), for later messages. */
const sources = new WeakMap<object, string>();

/** The file name a validated config was read from (SCHEDULER_CONFIG_FILE when not known). */
export function configSource(config: object): string {
  return sources.get(config) ?? SCHEDULER_CONFIG_FILE;
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 57) + '...' : v);
  if (typeof v === 'number') return String(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function oneOf(names: readonly string[]): string {
  return names.map((n) => `'${n}'`).join(', ');
}

/** A check returns what the value must be, or null when it is fine. */
type Check = (v: unknown, cfg: Record<string, unknown>) => string | null;

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

const bool: Check = (v) => (v === null || typeof v === 'boolean' ? null : 'must be true or false');
const enumOf = (names: readonly string[], nullable = false): Check => (v) =>
  (nullable && v === null) || (typeof v === 'string' && names.includes(v)) ? null : `must be ${nullable ? 'null or ' : ''}one of ${oneOf(names)}`;
const openUnit: Check = (v) => (isNum(v) && v > 0 && v < 1 ? null : 'must be a number in (0, 1)');
const positive = (nullable = false): Check => (v) => ((nullable && v === null) || (isNum(v) && v > 0) ? null : `must be ${nullable ? 'null or ' : ''}a number > 0`);
const intIn = (lo: number, hi: (cfg: Record<string, unknown>) => number, what?: string): Check => (v, cfg) => {
  const h = hi(cfg);
  return Number.isInteger(v) && (v as number) >= lo && (v as number) <= h ? null : `must be an integer in [${lo}, ${what ?? h}]`;
};

/** The training step count the other checks compare against (the class default when absent). */
function numTrain(cfg: Record<string, unknown>): number {
  const n = cfg['num_train_timesteps'];
  return typeof n === 'number' ? n : BETA_DEFAULTS.num_train_timesteps;
}

/**
 * Every key an sdgen sampler takes from the config, with its rule. Which keys a sampler reads
 * depends on the sampler (the folder's class or --scheduler), so all are checked whenever present.
 */
const RULES: ReadonlyArray<[string, Check]> = [
  ['_class_name', (v) => (typeof v === 'string' ? null : 'must be a string')],
  ['num_train_timesteps', intIn(2, () => MAX_TRAIN_TIMESTEPS)],
  ['beta_start', openUnit],
  ['beta_end', openUnit],
  ['beta_schedule', enumOf(BETA_SCHEDULES)],
  ['trained_betas', (v) => (v === null || Array.isArray(v) ? null : 'must be null or an array of numbers')],
  ['prediction_type', enumOf(PREDICTION_TYPES)],
  ['timestep_spacing', enumOf(TIMESTEP_SPACINGS)],
  ['steps_offset', intIn(0, (c) => numTrain(c) - 1, 'num_train_timesteps − 1')],
  ['set_alpha_to_one', bool],
  ['skip_prk_steps', bool],
  ['clip_sample', bool],
  ['clip_sample_range', positive()],
  ['thresholding', bool],
  ['dynamic_thresholding_ratio', (v) => (isNum(v) && v > 0 && v <= 1 ? null : 'must be a number in (0, 1]')],
  ['sample_max_value', positive()],
  ['rescale_betas_zero_snr', bool],
  ['use_karras_sigmas', bool],
  ['sigma_min', positive(true)],
  ['sigma_max', positive(true)],
  ['interpolation_type', enumOf(['linear', 'log_linear'])],
  ['timestep_type', enumOf(['discrete', 'continuous'])],
  ['algorithm_type', enumOf(ALGORITHM_TYPES)],
  ['solver_type', enumOf(SOLVER_TYPES)],
  // DPM-Solver implements orders 1–3 (diffusers too); UniPC's higher orders are unused by SD configs.
  ['solver_order', intIn(1, () => 3)],
  ['lower_order_final', bool],
  ['euler_at_final', bool],
  ['final_sigmas_type', enumOf(['zero', 'sigma_min'], true)],
  ['use_lu_lambdas', (v) => (v === null || v === false ? null : 'is not supported by sdgen (must be false)')],
  // −∞ (Python's -Infinity, diffusers' default) disables the clipping; +∞ would clip every step.
  ['lambda_min_clipped', (v) => (typeof v === 'number' && !Number.isNaN(v) && v !== Infinity ? null : 'must be a number or -Infinity')],
  // Only the learned-variance types change DPM-Solver's behaviour, and SD UNets predict no variance.
  ['variance_type', (v) => (v === null || (typeof v === 'string' && v !== 'learned' && v !== 'learned_range') ? null : `must be null (sdgen has no learned-variance UNets)`)],
  ['predict_x0', bool],
  ['solver_p', (v) => (v === null ? null : 'is not supported by sdgen (must be null)')],
  ['disable_corrector', (v) => (Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0) ? null : 'must be an array of step indices (integers ≥ 0)')],
  ['noise_sampler_seed', (v) => (v === null || (Number.isInteger(v) && (v as number) >= 0) ? null : 'must be null or an integer ≥ 0')],
  ['original_inference_steps', intIn(1, numTrain, 'num_train_timesteps')],
  ['timestep_scaling', positive()],
];

/**
 * Check a scheduler config read from `source` (a file name for the messages) and return it
 * typed. Throws SdgenError (a broken model file, exit 1) with one line naming the file and the
 * key: `scheduler/scheduler_config.json: beta_end must be a number in (0, 1) (got 7)`.
 */
export function validateSchedulerConfig(config: unknown, source: string = SCHEDULER_CONFIG_FILE): SchedulerConfig {
  const fail = (msg: string): never => {
    throw new SdgenError(`${source}: ${msg}`);
  };
  if (config === null || typeof config !== 'object' || Array.isArray(config)) fail('must be a JSON object');
  const cfg = config as Record<string, unknown>;
  const has = (k: string): boolean => Object.prototype.hasOwnProperty.call(cfg, k) && cfg[k] !== undefined;
  for (const [key, check] of RULES) {
    if (!has(key)) continue;
    const why = check(cfg[key], cfg);
    if (why) fail(`${key} ${why} (got ${show(cfg[key])})`);
  }

  const n = numTrain(cfg);
  const bs = has('beta_start') ? (cfg['beta_start'] as number) : null;
  const be = has('beta_end') ? (cfg['beta_end'] as number) : null;
  // A decreasing schedule computes, but no model trains on one: it is a swapped pair. Equal is a constant schedule.
  if (bs !== null && be !== null && bs > be) fail(`beta_start (${bs}) must not exceed beta_end (${be})`);
  const trained = has('trained_betas') ? (cfg['trained_betas'] as unknown[] | null) : null;
  if (trained) {
    if (trained.length !== n) fail(`trained_betas must list num_train_timesteps (${n}) betas (got ${trained.length})`);
    const bad = trained.findIndex((b) => !(isNum(b) && b > 0 && b < 1));
    if (bad >= 0) fail(`trained_betas[${bad}] must be a number in (0, 1) (got ${show(trained[bad])})`);
  }
  const sMin = cfg['sigma_min'];
  const sMax = cfg['sigma_max'];
  if (isNum(sMin) && isNum(sMax) && sMin >= sMax) fail(`sigma_min (${sMin}) must be below sigma_max (${sMax})`);

  checkNoiseSchedule(cfg, n, fail);
  sources.set(cfg, source);
  return cfg as SchedulerConfig;
}

/**
 * The training schedule itself must give every sampler finite, positive noise levels: in float32
 * (as diffusers computes it) 0 < ᾱ_t < 1 for all t, i.e. σ_t = √((1 − ᾱ_t)/ᾱ_t) finite and > 0.
 * Betas near 1 over many steps drive ᾱ to 0 (infinite σ); a beta below float32's resolution
 * leaves ᾱ_0 = 1 (σ_0 = 0, whose logarithm the Karras and sigma-to-timestep maps take). The top
 * σ is also bounded by MAX_TRAIN_SIGMA.
 */
function checkNoiseSchedule(cfg: Record<string, unknown>, n: number, fail: (msg: string) => never): void {
  const pick = <T>(k: string, d: T): T => (cfg[k] === undefined ? d : (cfg[k] as T));
  const betas = computeBetas({
    num_train_timesteps: n,
    beta_start: pick('beta_start', BETA_DEFAULTS.beta_start),
    beta_end: pick('beta_end', BETA_DEFAULTS.beta_end),
    beta_schedule: pick('beta_schedule', BETA_DEFAULTS.beta_schedule),
    trained_betas: pick<number[] | null>('trained_betas', null),
  });
  const sigmas = trainSigmas(computeAlphasCumprod(betas));
  const what = cfg['trained_betas'] ? 'trained_betas' : `the ${pick('beta_schedule', BETA_DEFAULTS.beta_schedule)} schedule from beta_start to beta_end`;
  if (!(sigmas[0]! > 0)) fail(`${what} leaves no noise at the first timestep in float32 (beta too small)`);
  const last = sigmas[sigmas.length - 1]!;
  if (!(last <= MAX_TRAIN_SIGMA)) {
    fail(`${what} over ${n} timesteps leaves almost no signal (top sigma ${Number.isFinite(last) ? last.toPrecision(3) : 'infinite'}, at most ${MAX_TRAIN_SIGMA} accepted; betas too large)`);
  }
}

/**
 * The prediction types each sdgen sampler implements (diffusers' own limits: PNDM, Euler a and
 * DPM++ SDE have no 'sample'; only Euler knows 'original_sample').
 */
const PREDICTIONS_BY_SAMPLER: Record<string, readonly string[]> = {
  pndm: ['epsilon', 'v_prediction'],
  euler_a: ['epsilon', 'v_prediction'],
  dpmpp_sde: ['epsilon', 'v_prediction'],
  euler: ['epsilon', 'v_prediction', 'sample', 'original_sample'],
};

/**
 * Throw SdgenError when sampler `name` (canonical sdgen name) cannot run the validated config:
 * combinations diffusers rejects or that end in NaN there.
 */
export function checkSamplerSupports(name: string, config: SchedulerConfig): void {
  const fail = (msg: string): never => {
    throw new SdgenError(`${configSource(config)}: ${msg}`);
  };
  const pt = typeof config.prediction_type === 'string' ? config.prediction_type : 'epsilon';
  const ok = PREDICTIONS_BY_SAMPLER[name] ?? ['epsilon', 'v_prediction', 'sample'];
  if (!ok.includes(pt)) fail(`prediction_type '${pt}' is not supported by sampler ${name} (it supports ${oneOf(ok)})`);
  // Zero terminal SNR makes ᾱ = 0 at the last training step, where DDIM's and LCM's ε → x0
  // conversion divides by √ᾱ (the sigma samplers and the multistep solvers floor ᾱ at 2^-24);
  // Lin et al. (2023) pair zero SNR with v-prediction for this reason.
  if ((name === 'ddim' || name === 'lcm') && config.rescale_betas_zero_snr === true && pt === 'epsilon') {
    fail(`rescale_betas_zero_snr needs prediction_type 'v_prediction' or 'sample' with sampler ${name} (epsilon is undefined at zero SNR)`);
  }
  if (name.startsWith('dpmpp_2m')) {
    // DPM-Solver takes no null final_sigmas_type (diffusers raises); UniPC's 0.27 default is null.
    if (config['final_sigmas_type'] === null) fail(`final_sigmas_type must be 'zero' or 'sigma_min' for sampler ${name} (got null)`);
    // diffusers' third-order update has no SDE form.
    if (name === 'dpmpp_2m_sde' && config['solver_order'] === 3) fail(`solver_order 3 is not supported by sampler ${name} (the SDE solver has orders 1 and 2)`);
  }
}

/**
 * The requested step count against the training schedule. Like diffusers' DDIM, DDPM and LCM
 * schedulers (which raise ValueError), sdgen refuses more inference steps than training
 * timesteps for every sampler: the spacings would repeat timesteps (leading's N // steps is 0)
 * and the multistep solvers would divide by a zero step. UsageError: --steps is the user's.
 */
export function checkStepCount(steps: number, numTrainTimesteps: number): void {
  if (!Number.isInteger(steps) || steps < 1) throw new UsageError(`steps must be a positive integer (got ${steps})`);
  if (steps > numTrainTimesteps) {
    throw new UsageError(`${steps} steps exceed the model's num_train_timesteps (${numTrainTimesteps}); use at most ${numTrainTimesteps}`);
  }
}

/**
 * Timesteps a discrete sampler (DDIM, PNDM) indexes ᾱ with must lie in [0, N − 1]. 'leading'
 * spacing adds steps_offset to (steps − 1)·(N // steps), which passes N − 1 when the steps nearly
 * fill the training range (SD's steps_offset 1 at 1000 steps gives timestep 1000; diffusers
 * fails with an IndexError there).
 */
export function checkTimestepRange(timesteps: readonly number[], numTrainTimesteps: number, steps: number, stepsOffset: number): void {
  let max = -Infinity;
  for (const t of timesteps) if (t > max) max = t;
  if (max > numTrainTimesteps - 1) {
    throw new UsageError(
      `${steps} steps with timestep_spacing 'leading' and steps_offset ${stepsOffset} reach timestep ${max}, past the model's last training timestep ${numTrainTimesteps - 1}; use fewer steps`,
    );
  }
}

/**
 * The multistep solvers (DPM-Solver, UniPC) divide by the log-SNR step between consecutive
 * sigmas, so those must strictly decrease; with nearly as many steps as training timesteps the
 * rounded timesteps repeat (or lambda_min_clipped leaves too few of them).
 */
export function checkDistinctSigmas(sigmas: readonly number[], steps: number, spacing: string): void {
  for (let i = 0; i + 1 < sigmas.length; i++) {
    if (!(sigmas[i]! > sigmas[i + 1]!)) {
      throw new UsageError(`${steps} steps are too many for this model's schedule with timestep_spacing '${spacing}' (timesteps ${i} and ${i + 1} coincide); use fewer steps`);
    }
  }
}

/**
 * Samplers look a timestep up in their schedule taking the second match when it repeats
 * (diffusers' index_for_timestep, meant for img2img), so a schedule whose first two timesteps
 * coincide would start one sigma late and run off its end (diffusers fails with an IndexError).
 * That happens with use_karras_sigmas when the top training sigma stands far above the rest
 * (squaredcos_cap_v2), as every Karras sigma near it maps back to the last timestep.
 */
export function checkFirstTimestep(timesteps: ArrayLike<number>, steps: number): void {
  if (timesteps.length > 1 && timesteps[0] === timesteps[1]) {
    throw new UsageError(
      `the schedule for ${steps} steps starts with timestep ${timesteps[0]} twice (Karras sigmas on this model's noise schedule); use a sampler without Karras sigmas`,
    );
  }
}

/**
 * JSON as Python's json module writes it: diffusers saves DPMSolverMultistepScheduler's default
 * lambda_min_clipped as a bare `-Infinity`, which JSON.parse rejects. Bare Infinity, -Infinity
 * and NaN outside strings are read as numbers; everything else is standard JSON.
 */
export function parsePythonJson(text: string): unknown {
  const prefix = '\u0000sdgen-number:';
  const values = new Map<string, number>([['-Infinity', -Infinity], ['Infinity', Infinity], ['NaN', NaN]]);
  // String literals are matched whole (and kept) so a token inside one is never rewritten.
  const quoted = text.replace(/"(?:[^"\\]|\\.)*"|-Infinity|Infinity|NaN/g, (m) => (m[0] === '"' ? m : JSON.stringify(prefix + m)));
  return JSON.parse(quoted, (_k, v: unknown) => (typeof v === 'string' && v.startsWith(prefix) && values.has(v.slice(prefix.length)) ? values.get(v.slice(prefix.length)) : v));
}

/**
 * A scheduler_config.json's text → its validated config. SdgenError with one line on bad JSON or
 * any bad value (see validateSchedulerConfig).
 */
export function parseSchedulerConfig(text: string, source: string = SCHEDULER_CONFIG_FILE): SchedulerConfig {
  let v: unknown;
  try {
    v = parsePythonJson(text);
  } catch (err) {
    throw new SdgenError(`${source}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return validateSchedulerConfig(v, source);
}
