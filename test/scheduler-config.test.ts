/**
 * scheduler/scheduler_config.json validation (src/schedulers/config.ts): every bad value class
 * gives its one-line SdgenError naming the file and key; the upstream configs in the fixtures
 * (diffusers 0.27.2's own, as saved by it) all validate; step counts the samplers cannot run are
 * one-line UsageErrors; an unknown _class_name is an error unless a sampler is named; and the CLI
 * on a copied tiny-sd1 folder with a broken config exits 1 with one line and no stack.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SdgenError, UsageError } from '../src/errors.js';
import { MAX_TRAIN_TIMESTEPS, checkStepCount, parsePythonJson, parseSchedulerConfig, validateSchedulerConfig } from '../src/schedulers/config.js';
import { SAMPLERS, UNSUPPORTED_CLASS, createScheduler, defaultSchedulerFor, resolveSchedulerName } from '../src/schedulers/index.js';
import type { SchedulerConfig } from '../src/schedulers/types.js';
import { fx, type Ran, cliSandbox, CLI, assertOneErrorLine } from './helpers.js';

const SD1_TEXT = readFileSync(fx('tiny-sd1/scheduler/scheduler_config.json'), 'utf8');
const SD1: SchedulerConfig = JSON.parse(SD1_TEXT);
const FILE = 'scheduler/scheduler_config.json';

/** The SdgenError (not a UsageError) `fn` throws; its message must be one line. */
function sdgenError(fn: () => unknown): SdgenError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof SdgenError, `expected an SdgenError, got ${String(e)}`);
    assert.doesNotMatch(e.message, /\n/, 'one line');
    return e;
  }
  assert.fail('no error thrown');
}

test('each bad value class gives its one-line error naming the file and the key', () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ beta_end: 7 }, 'beta_end must be a number in (0, 1) (got 7)'],
    [{ beta_end: '0.012' }, 'beta_end must be a number in (0, 1) (got "0.012")'],
    [{ beta_end: null }, 'beta_end must be a number in (0, 1) (got null)'],
    [{ beta_start: 0 }, 'beta_start must be a number in (0, 1) (got 0)'],
    [{ beta_start: -0.001 }, 'beta_start must be a number in (0, 1) (got -0.001)'],
    [{ beta_start: 0.02, beta_end: 0.012 }, 'beta_start (0.02) must not exceed beta_end (0.012)'],
    [{ num_train_timesteps: 1e9 }, `num_train_timesteps must be an integer in [2, ${MAX_TRAIN_TIMESTEPS}] (got 1000000000)`],
    [{ num_train_timesteps: 999.5 }, `num_train_timesteps must be an integer in [2, ${MAX_TRAIN_TIMESTEPS}] (got 999.5)`],
    [{ num_train_timesteps: 1 }, `num_train_timesteps must be an integer in [2, ${MAX_TRAIN_TIMESTEPS}] (got 1)`],
    [{ num_train_timesteps: '1000' }, `num_train_timesteps must be an integer in [2, ${MAX_TRAIN_TIMESTEPS}] (got "1000")`],
    [{ steps_offset: 1000 }, 'steps_offset must be an integer in [0, num_train_timesteps − 1] (got 1000)'],
    [{ steps_offset: -1 }, 'steps_offset must be an integer in [0, num_train_timesteps − 1] (got -1)'],
    [{ steps_offset: true }, 'steps_offset must be an integer in [0, num_train_timesteps − 1] (got true)'],
    [{ beta_schedule: 'sigmoid' }, "beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2', 'exp' (got \"sigmoid\")"],
    [{ timestep_spacing: 'even' }, "timestep_spacing must be one of 'leading', 'linspace', 'trailing' (got \"even\")"],
    [{ prediction_type: 'flow' }, "prediction_type must be one of 'epsilon', 'v_prediction', 'sample', 'original_sample' (got \"flow\")"],
    [{ trained_betas: 'none' }, 'trained_betas must be null or an array of numbers (got "none")'],
    [{ trained_betas: [0.1, 0.2] }, 'trained_betas must list num_train_timesteps (1000) betas (got 2)'],
    [{ num_train_timesteps: 3, trained_betas: [0.1, 1.5, 0.2] }, 'trained_betas[1] must be a number in (0, 1) (got 1.5)'],
    [{ num_train_timesteps: 3, trained_betas: [0.1, 0.2, 'x'] }, 'trained_betas[2] must be a number in (0, 1) (got "x")'],
    [{ clip_sample: 'false' }, 'clip_sample must be true or false (got "false")'],
    [{ set_alpha_to_one: 1 }, 'set_alpha_to_one must be true or false (got 1)'],
    [{ skip_prk_steps: 'yes' }, 'skip_prk_steps must be true or false (got "yes")'],
    [{ use_karras_sigmas: 0 }, 'use_karras_sigmas must be true or false (got 0)'],
    [{ rescale_betas_zero_snr: 'no' }, 'rescale_betas_zero_snr must be true or false (got "no")'],
    [{ thresholding: [] }, 'thresholding must be true or false (got an array of 0)'],
    [{ timestep_type: 'fractional' }, "timestep_type must be one of 'discrete', 'continuous' (got \"fractional\")"],
    [{ interpolation_type: 'cubic' }, "interpolation_type must be one of 'linear', 'log_linear' (got \"cubic\")"],
    [{ algorithm_type: 'dpm' }, "algorithm_type must be one of 'dpmsolver++', 'sde-dpmsolver++', 'dpmsolver', 'sde-dpmsolver', 'deis' (got \"dpm\")"],
    [{ solver_type: 'rk4' }, "solver_type must be one of 'midpoint', 'heun', 'bh1', 'bh2', 'logrho' (got \"rk4\")"],
    [{ solver_order: 4 }, 'solver_order must be an integer in [1, 3] (got 4)'],
    [{ solver_order: 0 }, 'solver_order must be an integer in [1, 3] (got 0)'],
    [{ final_sigmas_type: 'one' }, "final_sigmas_type must be null or one of 'zero', 'sigma_min' (got \"one\")"],
    [{ use_lu_lambdas: true }, 'use_lu_lambdas is not supported by sdgen (must be false) (got true)'],
    [{ lambda_min_clipped: Infinity }, 'lambda_min_clipped must be a number or -Infinity (got Infinity)'],
    [{ lambda_min_clipped: NaN }, 'lambda_min_clipped must be a number or -Infinity (got NaN)'],
    [{ variance_type: 'learned_range' }, 'variance_type must be null (sdgen has no learned-variance UNets) (got "learned_range")'],
    [{ solver_p: {} }, 'solver_p is not supported by sdgen (must be null) (got an object)'],
    [{ disable_corrector: [1, -2] }, 'disable_corrector must be an array of step indices (integers ≥ 0) (got an array of 2)'],
    [{ sigma_min: 0 }, 'sigma_min must be null or a number > 0 (got 0)'],
    [{ sigma_min: 2, sigma_max: 1 }, 'sigma_min (2) must be below sigma_max (1)'],
    [{ clip_sample_range: -1 }, 'clip_sample_range must be a number > 0 (got -1)'],
    [{ dynamic_thresholding_ratio: 1.5 }, 'dynamic_thresholding_ratio must be a number in (0, 1] (got 1.5)'],
    [{ sample_max_value: 0 }, 'sample_max_value must be a number > 0 (got 0)'],
    [{ original_inference_steps: 2000 }, 'original_inference_steps must be an integer in [1, num_train_timesteps] (got 2000)'],
    [{ timestep_scaling: -10 }, 'timestep_scaling must be a number > 0 (got -10)'],
    [{ noise_sampler_seed: 1.5 }, 'noise_sampler_seed must be null or an integer ≥ 0 (got 1.5)'],
    [{ _class_name: 42 }, '_class_name must be a string (got 42)'],
    // valid per key, but the schedule they make has no usable noise levels in float32
    [{ beta_schedule: 'linear', beta_start: 0.0001, beta_end: 0.9 },
      'the linear schedule from beta_start to beta_end over 1000 timesteps leaves almost no signal (top sigma infinite, at most 100000 accepted; betas too large)'],
    [{ beta_schedule: 'linear', beta_start: 1e-9, beta_end: 0.012 },
      'the linear schedule from beta_start to beta_end leaves no noise at the first timestep in float32 (beta too small)'],
  ];
  for (const [patch, msg] of cases) {
    const e = sdgenError(() => validateSchedulerConfig({ ...SD1, ...patch }));
    assert.equal(e.message, `${FILE}: ${msg}`, JSON.stringify(patch));
  }
  assert.equal(cases.length, 50);
  // the source given is the one named; a non-object is refused
  assert.equal(sdgenError(() => validateSchedulerConfig({ ...SD1, beta_end: 7 }, 'models/x/scheduler/scheduler_config.json')).message,
    'models/x/scheduler/scheduler_config.json: beta_end must be a number in (0, 1) (got 7)');
  assert.equal(sdgenError(() => validateSchedulerConfig([1, 2])).message, `${FILE}: must be a JSON object`);
  assert.match(sdgenError(() => parseSchedulerConfig('{"beta_end": 0.012,')).message, /^scheduler\/scheduler_config\.json: not valid JSON \(/);
});

test('createScheduler validates too, and sampler-specific limits are one-line SdgenErrors', () => {
  const e = sdgenError(() => createScheduler('euler', { ...SD1, num_train_timesteps: 1e9 }));
  assert.match(e.message, /num_train_timesteps must be an integer in \[2, 100000\]/);
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['euler_a', { prediction_type: 'sample' }, "prediction_type 'sample' is not supported by sampler euler_a (it supports 'epsilon', 'v_prediction')"],
    ['pndm', { prediction_type: 'sample' }, "prediction_type 'sample' is not supported by sampler pndm (it supports 'epsilon', 'v_prediction')"],
    ['dpmpp_sde', { prediction_type: 'sample' }, "prediction_type 'sample' is not supported by sampler dpmpp_sde (it supports 'epsilon', 'v_prediction')"],
    ['ddim', { prediction_type: 'original_sample' }, "prediction_type 'original_sample' is not supported by sampler ddim (it supports 'epsilon', 'v_prediction', 'sample')"],
    ['ddim', { rescale_betas_zero_snr: true }, "rescale_betas_zero_snr needs prediction_type 'v_prediction' or 'sample' with sampler ddim (epsilon is undefined at zero SNR)"],
    ['dpmpp_2m', { final_sigmas_type: null }, "final_sigmas_type must be 'zero' or 'sigma_min' for sampler dpmpp_2m (got null)"],
    ['dpmpp_2m_sde', { solver_order: 3 }, 'solver_order 3 is not supported by sampler dpmpp_2m_sde (the SDE solver has orders 1 and 2)'],
  ];
  for (const [name, patch, msg] of cases) {
    assert.equal(sdgenError(() => createScheduler(name, { ...SD1, ...patch })).message, `${FILE}: ${msg}`, `${name} ${JSON.stringify(patch)}`);
  }
  // the ones allowed: Euler's 'original_sample', zero SNR with v-prediction, UniPC's null final sigmas
  createScheduler('euler', { ...SD1, prediction_type: 'original_sample' });
  createScheduler('ddim', { ...SD1, rescale_betas_zero_snr: true, prediction_type: 'v_prediction' });
  createScheduler('unipc', { ...SD1, final_sigmas_type: null });
});

test('the fixture configs (tiny folders and every diffusers 0.27.2 run config) validate and build', () => {
  for (const dir of ['tiny-sd1', 'tiny-sd2v']) {
    const text = readFileSync(fx(`${dir}/scheduler/scheduler_config.json`), 'utf8');
    const cfg = parseSchedulerConfig(text, `${dir}/${FILE}`);
    assert.deepEqual(cfg, JSON.parse(text));
  }
  let runs = 0;
  for (const [set, expected] of [['schedulers', 4], ['diffusers-schedulers', 71]] as const) {
    const m = parsePythonJson(readFileSync(fx(`${set}/manifest.json`), 'utf8')) as {
      sd15_scheduler_config: SchedulerConfig;
      runs: Array<{ name: string; class: string; config: SchedulerConfig; num_inference_steps: number }>;
    };
    validateSchedulerConfig(m.sd15_scheduler_config);
    assert.equal(m.runs.length, expected, `${set} runs`);
    for (const r of m.runs) {
      validateSchedulerConfig(r.config, `${set}/${r.name}`);
      // the class's own scheduler from its resolved config runs the reference's step count
      const s = createScheduler(r.class, r.config);
      s.setTimesteps(r.num_inference_steps);
      assert.ok(s.timesteps.length > 0, r.name);
      runs++;
    }
  }
  assert.equal(runs, 75);
});

test('Python JSON: bare -Infinity / Infinity / NaN are numbers, the same words inside strings stay text', () => {
  const v = parsePythonJson('{"a": -Infinity, "b": [Infinity, NaN, 1e3], "c": "NaN and -Infinity", "d": "say \\"Infinity\\""}') as Record<string, unknown>;
  assert.equal(v['a'], -Infinity);
  assert.deepEqual(v['b'], [Infinity, NaN, 1000]);
  assert.equal(v['c'], 'NaN and -Infinity');
  assert.equal(v['d'], 'say "Infinity"');
  // diffusers' DPMSolverMultistepScheduler saves lambda_min_clipped -Infinity: such a file loads
  const dpm = parseSchedulerConfig(SD1_TEXT.replace('"_class_name": "PNDMScheduler"', '"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity'));
  assert.equal(dpm['lambda_min_clipped'], -Infinity);
  assert.equal(defaultSchedulerFor(dpm), 'dpmpp_2m');
});

test('step counts: more than num_train_timesteps, or a leading schedule past the last timestep, are UsageErrors', () => {
  const usage = (fn: () => unknown): string => {
    try {
      fn();
    } catch (e) {
      assert.ok(e instanceof UsageError, String(e));
      return e.message;
    }
    return assert.fail('no error thrown');
  };
  assert.equal(usage(() => checkStepCount(1001, 1000)), "1001 steps exceed the model's num_train_timesteps (1000); use at most 1000");
  assert.equal(usage(() => checkStepCount(0, 1000)), 'steps must be a positive integer (got 0)');
  // every sampler refuses steps > N on a small training schedule
  const small = { ...SD1, num_train_timesteps: 10, steps_offset: 0, original_inference_steps: 10 };
  for (const s of SAMPLERS) {
    assert.equal(usage(() => createScheduler(s.name, small).setTimesteps(11)), "11 steps exceed the model's num_train_timesteps (10); use at most 10", s.name);
  }
  assert.equal(SAMPLERS.length, 12);
  // SD 1.5's leading spacing with steps_offset 1: (n − 1)·(1000 // n) + 1 is 1000 at n = 1000 (diffusers: IndexError)
  const past = "1000 steps with timestep_spacing 'leading' and steps_offset 1 reach timestep 1000, past the model's last training timestep 999; use fewer steps";
  for (const name of ['ddim', 'pndm', 'euler', 'lms']) {
    assert.equal(usage(() => createScheduler(name, { ...SD1, timestep_spacing: 'leading' }).setTimesteps(1000)), past, name);
    createScheduler(name, { ...SD1, timestep_spacing: 'leading' }).setTimesteps(999);
  }
  // the multistep solvers need distinct sigmas: leading's ratio 1000 // 1001 is 0 at 1000 steps
  assert.match(usage(() => createScheduler('dpmpp_2m', { ...SD1, steps_offset: 0, timestep_spacing: 'leading' }).setTimesteps(1000)),
    /^1000 steps are too many for this model's schedule with timestep_spacing 'leading' \(timesteps 0 and 1 coincide\); use fewer steps$/);
  // LCM: at most original_inference_steps
  assert.equal(usage(() => createScheduler('lcm', SD1).setTimesteps(51)), "51 steps exceed the LCM schedule's original_inference_steps (50); use at most 50");
  // Karras sigmas on the cosine schedule: the top sigma (2·10^4) maps every high Karras sigma to t = 999
  assert.match(usage(() => createScheduler('dpmpp_2m_karras', { ...SD1, beta_schedule: 'squaredcos_cap_v2' }).setTimesteps(20)),
    /^the schedule for 20 steps starts with timestep 999 twice/);
});

test('PNDM: one PLMS step is the last base timestep alone (numpy concatenate semantics), one PRK step is refused', () => {
  const s = createScheduler('pndm', SD1);
  s.setTimesteps(1);
  // leading: arange(1)·(1000 // 1) + steps_offset 1 = [1]; [:-1] and [-2:-1] are empty
  assert.deepEqual(Array.from(s.timesteps), [1]);
  s.setTimesteps(2);
  assert.deepEqual(Array.from(s.timesteps), [501, 1, 1]);
  assert.throws(() => createScheduler('pndm', { ...SD1, skip_prk_steps: false }).setTimesteps(1), UsageError);
});

test('foreign solver types map as in diffusers: a DPM++ folder sampled with UniPC runs bh2, a UniPC folder with DPM++ runs midpoint', () => {
  const x = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i + 1) * 3);
  const run = (name: string, cfg: SchedulerConfig): Float32Array => {
    const s = createScheduler(name, cfg);
    s.setTimesteps(6);
    let v: Float32Array = x;
    for (const t of s.timesteps) v = s.step(Float32Array.from(v, (a) => 0.1 * a * Math.cos(Number(t) / 100)), Number(t), v);
    return v;
  };
  assert.deepEqual(run('unipc', { ...SD1, solver_type: 'midpoint' }), run('unipc', { ...SD1, solver_type: 'bh2' }));
  assert.notDeepEqual(run('unipc', { ...SD1, solver_type: 'bh1' }), run('unipc', { ...SD1, solver_type: 'bh2' }));
  assert.deepEqual(run('dpmpp_2m', { ...SD1, solver_type: 'bh2' }), run('dpmpp_2m', { ...SD1, solver_type: 'midpoint' }));
  assert.deepEqual(
    run('DPMSolverMultistepScheduler', { ...SD1, algorithm_type: 'deis' }),
    run('DPMSolverMultistepScheduler', { ...SD1, algorithm_type: 'dpmsolver++' }),
  );
});

test('an unknown _class_name has no default sampler: an error naming the class and the supported ones, unless a sampler is named', () => {
  const cfg = { ...SD1, _class_name: 'KDPM2DiscreteScheduler' };
  const d = defaultSchedulerFor(cfg);
  assert.equal(d, UNSUPPORTED_CLASS + 'KDPM2DiscreteScheduler');
  const e = sdgenError(() => resolveSchedulerName(d));
  assert.ok(!(e instanceof UsageError));
  assert.match(e.message, /_class_name 'KDPM2DiscreteScheduler', which sdgen does not implement \(it has EulerAncestralDiscreteScheduler, .*LCMScheduler\); pass --scheduler NAME/);
  // a named sampler runs on the folder's noise schedule, its class irrelevant
  const a = createScheduler('euler', cfg);
  const b = createScheduler('euler', SD1);
  a.setTimesteps(10);
  b.setTimesteps(10);
  assert.deepEqual(a.timesteps, b.timesteps);
  // no class at all stays diffusers' pipeline default
  assert.equal(defaultSchedulerFor({}), 'pndm');
});

// ---- the CLI on a copied tiny-sd1 folder --------------------------------------------------------

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const sb = cliSandbox('schedcfg');

/** A copy of tiny-sd1 whose scheduler config is `text`. */
function folderWith(name: string, text: string): string {
  const dir = path.join(sb.tmp, name);
  cpSync(fx('tiny-sd1'), dir, { recursive: true });
  writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), text);
  return dir;
}

const oneErrorLine = assertOneErrorLine;

test('CLI: a broken scheduler config in a model folder exits 1 with one line naming the file and key', async () => {
  const bad = folderWith('bad-beta', SD1_TEXT.replace('"beta_end": 0.012', '"beta_end": 7'));
  const huge = folderWith('huge-n', SD1_TEXT.replace('"num_train_timesteps": 1000', '"num_train_timesteps": 1000000000'));
  const unknown = folderWith('unknown-class', SD1_TEXT.replace('PNDMScheduler', 'KDPM2DiscreteScheduler'));
  const args = (m: string, out: string, more: string[] = []) =>
    ['a fox', '--model', m, '--steps', '2', '-W', '64', '-H', '64', '--seed', '1', '--device', 'cpu', '--out', path.join(sb.tmp, out), ...more];
  const [a, b, c, d] = await Promise.all([
    sb.run(args(bad, 'o1')),
    sb.run(args(huge, 'o2')),
    sb.run(args(unknown, 'o3')),
    sb.run(args(unknown, 'o4', ['--scheduler', 'euler'])),
  ]);
  oneErrorLine(a, 1, /bad-beta\/scheduler\/scheduler_config\.json: beta_end must be a number in \(0, 1\) \(got 7\)$/);
  oneErrorLine(b, 1, /huge-n\/scheduler\/scheduler_config\.json: num_train_timesteps must be an integer in \[2, 100000\] \(got 1000000000\)$/);
  // the class is needed only when the job runs (a named sampler makes it irrelevant), so it
  // fails as a job does: the runner's "failed (N images): <one line>" and its summary, exit 1
  assert.equal(c.status, 1, c.stderr);
  assert.doesNotMatch(c.stderr, /\n\s+at |this is a bug/);
  assert.equal(c.stderr.split('\n').filter((l) => /_class_name 'KDPM2DiscreteScheduler', which sdgen does not implement .*pass --scheduler NAME/.test(l)).length, 1);
  // with a named sampler the folder runs
  assert.equal(d.status, 0, d.stderr);
  assert.equal(readdirSync(path.join(sb.tmp, 'o4')).filter((f) => f.endsWith('.png')).length, 1);
});
