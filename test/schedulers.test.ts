import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { RandomSource } from '../src/random/types.js';
import type { Scheduler, SchedulerConfig } from '../src/schedulers/types.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { createScheduler } from '../src/schedulers/index.js';
import { computeAlphasCumprod, computeBetas } from '../src/schedulers/common.js';
import { maxAbsDiff, readTensor, FIXTURES_URL as FIXTURES, type TensorEntry } from './helpers.js';

const TOL = 1e-5;

/** Python's json writes -Infinity / Infinity / NaN bare; parse them. */
function parsePythonJson(text: string): any {
  const quoted = text.replace(/(?<=[:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '"__$1"');
  return JSON.parse(quoted, (_k, v) =>
    v === '__-Infinity' ? -Infinity : v === '__Infinity' ? Infinity : v === '__NaN' ? NaN : v);
}

/** The tensors of one fixture .bin file, by manifest entry. */
const reader = (buf: Uint8Array) => (t: TensorEntry) => readTensor(buf, t);


/** Element-wise |got − exp| ≤ tol · max(1, |exp|): absolute for values up to 1, relative above
 * (float32 holds a value of 60 to ±3.8e-6, so an absolute 1e-5 there is ~3 ulps). */
function assertCloseRel(got: ArrayLike<number>, exp: ArrayLike<number>, label: string, tol = TOL): void {
  assert.equal(got.length, exp.length, 'length');
  let worst = 0;
  let at = -1;
  for (let i = 0; i < exp.length; i++) {
    const r = Math.abs(got[i]! - exp[i]!) / Math.max(1, Math.abs(exp[i]!));
    if (!(r <= worst)) { worst = r; at = i; }
  }
  assert.ok(worst <= tol, `${label}: |diff|/max(1,|ref|) ${worst} > ${tol} at ${at} (${got[at]} vs ${exp[at]})`);
}

function assertClose(got: ArrayLike<number>, exp: ArrayLike<number>, label: string, tol = TOL): void {
  const d = maxAbsDiff(got, exp);
  assert.ok(d <= tol, `${label}: max |diff| ${d} > ${tol}`);
}

/** A RandomSource that hands out recorded tensors in order (and fails if asked for more). */
class Replay implements RandomSource {
  used = 0;
  constructor(private readonly tensors: Float32Array[]) {}
  randn(shape: readonly number[]): Float32Array {
    const t = this.tensors[this.used++];
    assert.ok(t, 'scheduler drew more noise than recorded');
    assert.equal(shape.reduce((a, b) => a * b, 1), t.length, 'noise size');
    return t.slice();
  }
}

/** diffusers class → sdgen scheduler name (plus the per-name config the fixture run used). */
function sdgenNameFor(cls: string, overrides: Record<string, unknown>): string {
  switch (cls) {
    case 'EulerAncestralDiscreteScheduler': return 'euler_a';
    case 'EulerDiscreteScheduler': return 'euler';
    case 'DDIMScheduler': return 'ddim';
    case 'PNDMScheduler': return 'pndm';
    case 'LMSDiscreteScheduler': return 'lms';
    case 'HeunDiscreteScheduler': return 'heun';
    case 'DPMSolverSDEScheduler': return 'dpmpp_sde';
    case 'UniPCMultistepScheduler': return 'unipc';
    case 'LCMScheduler': return 'lcm';
    case 'DPMSolverMultistepScheduler':
      if (overrides['algorithm_type'] === 'sde-dpmsolver++') return 'dpmpp_2m_sde';
      return overrides['use_karras_sigmas'] ? 'dpmpp_2m_karras' : 'dpmpp_2m';
    default: throw new Error(`no sdgen scheduler for ${cls}`);
  }
}

const schedDir = new URL('schedulers/', FIXTURES);
const manifest = parsePythonJson(readFileSync(new URL('manifest.json', schedDir), 'utf8'));
const sd15: SchedulerConfig = manifest.sd15_scheduler_config;

test('alphas_cumprod of the SD 1.5 schedule is bit-identical to diffusers (torch float32)', () => {
  const run = manifest.runs[0];
  const read = reader(readFileSync(new URL(run.file, schedDir)));
  const exp = read(run.tensors.alphas_cumprod) as Float64Array;
  const got = computeAlphasCumprod(computeBetas(run.config));
  assert.equal(maxAbsDiff(got, exp), 0);
});

/**
 * Every run of a reference set (the shared diffusers 0.27.2 fixtures, and the wider set
 * tools/diffusers-scheduler-refs.py writes from diffusers' scheduler sources): schedule, model
 * inputs and each step against diffusers, then a whole free-running trajectory.
 */
function referenceSuite(label: string, dir: URL, set: any, minRuns: number): void {
  const base: SchedulerConfig = set.sd15_scheduler_config;
  test(`${label}: the fixture lists its ${minRuns} runs`, () => assert.ok(set.runs.length >= minRuns, `${set.runs.length} runs`));
  for (const run of set.runs) {
    const overrides: Record<string, unknown> = run.config_overrides ?? {};
    const name = sdgenNameFor(run.class, overrides);
    const shape: number[] = run.tensors.initial_noise.shape;
    // DPM++ SDE: diffusers draws its noise from torchsde's Brownian tree, which sdgen replaces
    // by generator draws (documented). A set that logged stand-in normal draws can be replayed;
    // one that did not can only check the schedule and the first model input.
    const brownian = run.class === 'DPMSolverSDEScheduler' && !run.steps.some((st: any) => st.noise);
    const noiseSeed: number = run.noise_seed ?? 1234;
    const eta = (run.step_kwargs?.eta as number | undefined) ?? 0;
    test(`${label} ${run.name} (${name}): schedule, model inputs and samples match diffusers ≤ ${TOL}`, () => {
      const read = reader(readFileSync(new URL(run.file, dir)));
      const cfg: SchedulerConfig = { ...base, ...overrides };
      const sched: Scheduler = createScheduler(name, cfg, { eta });
      // from_config resolution: every option the class honours equals diffusers' resolved config
      const resolved = (sched as unknown as { config: Record<string, unknown> }).config;
      for (const [k, v] of Object.entries(resolved)) {
        if (k in run.config) assert.deepEqual(v, run.config[k], `config.${k}`);
      }
      sched.setTimesteps(run.num_inference_steps);
      const expT = read(run.tensors.timesteps) as Float64Array;
      if (expT.every(Number.isInteger)) assert.deepEqual(Array.from(sched.timesteps, Number), Array.from(expT), 'timesteps');
      else assertClose(Array.from(sched.timesteps, Number), expT, 'fractional timesteps', 1e-3);
      assert.ok(Math.abs(sched.initNoiseSigma - run.init_noise_sigma) <= TOL, `init_noise_sigma ${sched.initNoiseSigma} vs ${run.init_noise_sigma}`);
      if (run.tensors.sigmas) {
        const sigmas = (sched as unknown as { sigmas: number[] }).sigmas;
        assertClose(sigmas, read(run.tensors.sigmas) as Float64Array, 'sigmas');
      }
      // initial latent = randn(seed 0) * init_noise_sigma
      const initialNoise = read(run.tensors.initial_noise) as Float32Array;
      assert.deepEqual(new TorchGenerator(0).randn(shape), initialNoise, 'initial_noise from TorchGenerator(0)');
      let x = read(run.tensors.x_T) as Float32Array;
      const xIn = new Float32Array(x.length);
      const xOut = new Float32Array(x.length);
      const torchGen = new TorchGenerator(noiseSeed);
      assert.equal(run.steps.length, sched.timesteps.length, 'number of steps');
      for (const st of brownian ? run.steps.slice(0, 1) : run.steps) {
        const tStep = Number(sched.timesteps[st.i]);
        assert.ok(Math.abs(tStep - st.t) <= 1e-3, `t at step ${st.i}: ${tStep} vs ${st.t}`);
        const noises = ((st.noise ?? []) as TensorEntry[]).map((t) => read(t) as Float32Array);
        // the recorded draws are what the seeded generator gives, in order
        for (const n of noises) assert.deepEqual(torchGen.randn([n.length]), n, `noise at step ${st.i}`);
        const replay = new Replay(noises);
        const mi = sched.scaleModelInput(x, tStep, xIn);
        assertCloseRel(mi, read(st.model_input) as Float32Array, `model_input at step ${st.i}`);
        if (brownian) break;
        const prev = sched.step(read(st.eps) as Float32Array, tStep, x, replay, xOut);
        assert.equal(replay.used, noises.length, `noise draws at step ${st.i}`);
        const expPrev = read(st.prev_sample) as Float32Array;
        assertCloseRel(prev, expPrev, `prev_sample at step ${st.i}`);
        x = expPrev; // continue from the reference so errors do not compound
      }
    });

    test(`${label} ${run.name} (${name}): a full run driven by the fake model and TorchGenerator(${noiseSeed}) ends at diffusers' final sample`, { skip: brownian ? 'Brownian-tree noise is not reproduced' : false }, () => {
      const read = reader(readFileSync(new URL(run.file, dir)));
      const sched = createScheduler(name, { ...base, ...overrides }, { eta });
      sched.setTimesteps(run.num_inference_steps);
      const gen = new TorchGenerator(noiseSeed);
      let x: Float32Array = new TorchGenerator(0).randn(shape).map((v) => Math.fround(v * sched.initNoiseSigma));
      for (const t of sched.timesteps) {
        const tn = Number(t);
        const mi = sched.scaleModelInput(x, tn);
        const c = Math.fround(Math.cos(tn / 100));
        const eps = mi.map((v) => Math.fround(Math.fround(0.1 * v) * c));
        x = sched.step(eps, tn, x, gen);
      }
      const last = run.steps[run.steps.length - 1];
      assertCloseRel(x, read(last.prev_sample) as Float32Array, 'final sample', 1e-4);
    });
  }
}

referenceSuite('diffusers 0.27.2', schedDir, manifest, 4);
const moreDir = new URL('fixtures/diffusers-schedulers/', import.meta.url);
referenceSuite('diffusers sources', moreDir, parsePythonJson(readFileSync(new URL('manifest.json', moreDir), 'utf8')), 71);

const e2eDir = new URL('e2e/', FIXTURES);
const e2e = parsePythonJson(readFileSync(new URL('manifest.json', e2eDir), 'utf8'));
const folderConfig: SchedulerConfig = JSON.parse(readFileSync(new URL('tiny-sd1/scheduler/scheduler_config.json', FIXTURES), 'utf8'));

test('the e2e fixture lists its 2 cases', () => assert.ok(e2e.cases.length >= 2, `${e2e.cases.length} cases`));
for (const c of e2e.cases) {
  const cls: string = c.args.scheduler;
  test(`e2e ${cls} from the tiny-sd1 folder config: timesteps, sigmas, init sigma and generator order`, () => {
    const read = reader(readFileSync(new URL(c.bin, e2eDir)));
    const sched = createScheduler(sdgenNameFor(cls, {}), folderConfig);
    const resolved = (sched as unknown as { config: Record<string, unknown> }).config;
    for (const [k, v] of Object.entries(resolved)) {
      if (k in c.scheduler_config) assert.deepEqual(v, c.scheduler_config[k], `config.${k}`);
    }
    sched.setTimesteps(c.args.num_inference_steps);
    assert.deepEqual(Array.from(sched.timesteps, Number), Array.from(read(c.tensors.timesteps) as Float64Array), 'timesteps');
    if (c.tensors.sigmas) {
      assertClose((sched as unknown as { sigmas: number[] }).sigmas, read(c.tensors.sigmas) as Float64Array, 'sigmas');
    }
    // initial latents: one randn draw from the seeded generator, times init_noise_sigma
    const gen = new TorchGenerator(c.args.seed);
    const noise = gen.randn(c.tensors.initial_latents.shape);
    const scaled = noise.map((v) => Math.fround(v * sched.initNoiseSigma));
    assertClose(scaled, read(c.tensors.initial_latents) as Float32Array, 'initial_latents', 0);
    // ancestral noise of step 0 is the generator's next draw
    if (c.tensors.step_noise_0) {
      assert.deepEqual(gen.randn(c.tensors.step_noise_0.shape), read(c.tensors.step_noise_0), 'step_noise_0');
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Hand-derived checks for the schedulers the fixtures do not cover.
// ---------------------------------------------------------------------------------------------
import { UsageError } from '../src/errors.js';
import { SAMPLERS, a1111Name, defaultSchedulerFor, resolveSchedulerName } from '../src/schedulers/index.js';
import { lmsCoefficient } from '../src/schedulers/lms.js';
import { guidanceScaleEmbedding, lcmBoundaryScalings, lcmTimesteps } from '../src/schedulers/lcm.js';
import { discreteTimesteps, multistepTimesteps, sigmaSchedulerTimesteps, karrasSigmas } from '../src/schedulers/common.js';

function timestepsOf(name: string, cfg: SchedulerConfig, steps: number): number[] {
  const s = createScheduler(name, cfg);
  s.setTimesteps(steps);
  return Array.from(s.timesteps, Number);
}

test('timestep spacing: leading / trailing / linspace with steps_offset, derived by hand', () => {
  // DDIM-style integer steps, N = 1000
  assert.deepEqual(discreteTimesteps('leading', 1000, 10, 1), [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
  assert.deepEqual(discreteTimesteps('trailing', 1000, 10, 1), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
  // linspace(0, 999, 5) = 0, 249.75, 499.5, 749.25, 999 → round half to even
  assert.deepEqual(discreteTimesteps('linspace', 1000, 5, 0), [999, 749, 500, 250, 0]);
  // 1000/3 = 333.33…: arange(1000, 0, −333.33) = 1000, 666.67, 333.33 → round − 1
  assert.deepEqual(discreteTimesteps('trailing', 1000, 3, 0), [999, 666, 332]);
  // sigma schedulers keep the same lists as floats
  assert.deepEqual(sigmaSchedulerTimesteps('linspace', 1000, 4, 1), [999, 666, 333, 0]);
  assert.deepEqual(sigmaSchedulerTimesteps('leading', 1000, 4, 1), [751, 501, 251, 1]);
  assert.deepEqual(sigmaSchedulerTimesteps('trailing', 1000, 4, 1), [999, 749, 499, 249]);
  assert.deepEqual(sigmaSchedulerTimesteps('linspace', 1000, 3, 0), [999, 499.5, 0]);
  // multistep solvers: n + 1 points, last dropped; leading uses N // (n + 1)
  assert.deepEqual(multistepTimesteps('linspace', 1000, 4, 0), [999, 749, 500, 250]);
  assert.deepEqual(multistepTimesteps('leading', 1000, 4, 1), [801, 601, 401, 201]);
  assert.deepEqual(multistepTimesteps('trailing', 1000, 4, 0), [999, 749, 499, 249]);
  assert.throws(() => discreteTimesteps('karras', 1000, 4, 0), /timestep_spacing/);
});

test('per-class timestep defaults under from_config of the SD 1.5 (PNDM) config', () => {
  // sd15 has no timestep_spacing key: each class uses its own default
  assert.deepEqual(timestepsOf('euler', sd15, 4), [999, 666, 333, 0]); // linspace
  assert.deepEqual(timestepsOf('ddim', sd15, 4), [751, 501, 251, 1]); // leading + offset 1
  assert.deepEqual(timestepsOf('dpmpp_2m', sd15, 4), [999, 749, 500, 250]); // linspace n+1
  assert.deepEqual(timestepsOf('unipc', sd15, 4), [999, 749, 500, 250]);
  // the folder config says leading: every class follows it
  assert.deepEqual(timestepsOf('euler_a', folderConfig, 4), [751, 501, 251, 1]);
  assert.deepEqual(timestepsOf('dpmpp_2m', folderConfig, 4), [801, 601, 401, 201]);
  assert.deepEqual(timestepsOf('lms', folderConfig, 4), [751, 501, 251, 1]);
});

test('PLMS (skip_prk_steps) repeats the second-to-last base timestep: n + 1 calls', () => {
  // base (leading, offset 1) = 1, 251, 501, 751 → [751, 501, 501, 251, 1]
  assert.deepEqual(timestepsOf('pndm', folderConfig, 4), [751, 501, 501, 251, 1]);
  assert.equal(timestepsOf('plms', folderConfig, 20).length, 21);
});

test('PNDM with Runge–Kutta warm-up (skip_prk_steps false): 12 PRK calls then PLMS', () => {
  const cfg = { ...sd15, skip_prk_steps: false, steps_offset: 0 };
  // base = 0, 100, …, 900; PRK pairs over the last 4 with half step 50
  assert.deepEqual(timestepsOf('pndm', cfg, 10), [
    900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600,
    600, 500, 400, 300, 200, 100, 0,
  ]);
});

test('Heun and DPM++ SDE double every timestep after the first; SDE odd calls sit at −log σ midpoints', () => {
  assert.deepEqual(timestepsOf('heun', sd15, 4), [999, 666, 666, 333, 333, 0, 0]);
  const sde = createScheduler('dpmpp_sde', sd15) as unknown as Scheduler & { sigmas: number[] };
  sde.setTimesteps(4);
  const ts = Array.from(sde.timesteps, Number);
  assert.equal(ts.length, 7);
  assert.deepEqual([ts[0], ts[2], ts[4], ts[6]], [999, 666, 333, 0]);
  for (const j of [1, 3, 5]) assert.ok(ts[j]! < ts[j - 1]! && ts[j]! > ts[j + 1]!, `midpoint ${j} between its neighbours`);
  assert.deepEqual(sde.sigmas.length, 8);
  assert.equal(sde.sigmas[7], 0);
});

test('LCM timesteps: skip-20 training schedule sampled evenly (original_inference_steps 50)', () => {
  // origin = 999, 979, …, 19 (50 points); indices floor(i·50/n)
  assert.deepEqual(lcmTimesteps(1000, 50, 4), [999, 759, 499, 259]);
  assert.deepEqual(lcmTimesteps(1000, 50, 8), [999, 879, 759, 639, 499, 379, 259, 139]);
  assert.deepEqual(lcmTimesteps(1000, 50, 1), [999]);
  assert.throws(() => lcmTimesteps(1000, 50, 51), /original_inference_steps/);
  assert.deepEqual(timestepsOf('lcm', sd15, 4), [999, 759, 499, 259]);
});

test('LCM boundary scalings: c_skip = σd²/(s²+σd²), c_out = s/√(s²+σd²) with s = 10·t', () => {
  assert.deepEqual(lcmBoundaryScalings(0, 10), [1, 0]);
  const [cs, co] = lcmBoundaryScalings(1, 10); // s = 10: 0.25/100.25, 10/√100.25
  assert.ok(Math.abs(cs - 0.25 / 100.25) < 1e-8);
  assert.ok(Math.abs(co - 10 / Math.sqrt(100.25)) < 1e-7);
});

test('guidanceScaleEmbedding: sin half then cos half of w·1000·10000^(−i/(half−1))', () => {
  // dim 4: half 2, frequencies 1 and 1e-4; w = 0.5 → arguments 500 and 0.05
  const e = guidanceScaleEmbedding(0.5, 4);
  const exp = [Math.sin(500), Math.sin(0.05), Math.cos(500), Math.cos(0.05)];
  assertClose(e, exp, 'dim 4', 2e-5);
  const odd = guidanceScaleEmbedding(0.5, 5);
  assert.equal(odd.length, 5);
  assert.equal(odd[4], 0);
  assertClose(odd.subarray(0, 4), exp, 'dim 5', 2e-5);
  // w = 0 → sin 0 = 0, cos 0 = 1
  assert.deepEqual(Array.from(guidanceScaleEmbedding(0, 6)), [0, 0, 0, 1, 1, 1]);
});

test('Karras sigmas: ends at σ_max and σ_min, interior follows the ρ = 7 ramp', () => {
  const s = karrasSigmas(0.1, 10, 3);
  assert.ok(Math.abs(s[0]! - 10) < 1e-12 && Math.abs(s[2]! - 0.1) < 1e-12);
  assert.ok(Math.abs(s[1]! - ((10 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7) < 1e-12);
  const k = createScheduler('dpmpp_2m_karras', sd15) as unknown as Scheduler & { sigmas: number[] };
  k.setTimesteps(3);
  const ac = computeAlphasCumprod(computeBetas({ ...sd15, num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null }));
  const sMin = Math.sqrt((1 - ac[0]!) / ac[0]!);
  const sMax = Math.sqrt((1 - ac[999]!) / ac[999]!);
  const mid = ((sMax ** (1 / 7) + sMin ** (1 / 7)) / 2) ** 7;
  assertClose(k.sigmas, [sMax, mid, sMin, 0], 'karras sigmas', 1e-5 * sMax);
  // timesteps are the rounded fractional training steps of those sigmas: first 999, last 0
  const ts = Array.from(k.timesteps, Number);
  assert.equal(ts[0], 999);
  assert.equal(ts[2], 0);
});

test('LMS coefficients: hand-integrated Lagrange bases and the polynomial-reproduction identities', () => {
  const sig = [3, 2, 1.5, 1, 0.4, 0];
  // order 1: ∫ 1 = σ_{t+1} − σ_t
  assert.ok(Math.abs(lmsCoefficient(sig, 1, 0, 0) - (2 - 3)) < 1e-14);
  // order 2 at t = 1: ∫_2^1.5 (3 − τ) dτ = −0.625, ∫_2^1.5 (τ − 2) dτ = 0.125
  assert.ok(Math.abs(lmsCoefficient(sig, 2, 1, 0) - -0.625) < 1e-14);
  assert.ok(Math.abs(lmsCoefficient(sig, 2, 1, 1) - 0.125) < 1e-14);
  // order 4 at t = 3: Σ c_j = σ_4 − σ_3, Σ c_j σ_{3−j}^p = (σ_4^{p+1} − σ_3^{p+1})/(p+1) for p < 4
  for (let p = 0; p < 4; p++) {
    let sum = 0;
    for (let j = 0; j < 4; j++) sum += lmsCoefficient(sig, 4, 3, j) * sig[3 - j]! ** p;
    const exact = (sig[4]! ** (p + 1) - sig[3]! ** (p + 1)) / (p + 1);
    assert.ok(Math.abs(sum - exact) < 1e-13, `moment ${p}: ${sum} vs ${exact}`);
  }
});

test('DDIM eta: one draw per step, prev = √ᾱ_prev·x0 + √(1−ᾱ_prev−σ²)·ε + σ·z with σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))', () => {
  const eta = 0.7;
  const s = createScheduler('DDIM', folderConfig, { eta });
  s.setTimesteps(10);
  const ac = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null }));
  const x = new TorchGenerator(5).randn([64]);
  const eps = new TorchGenerator(6).randn([64]);
  const z = new TorchGenerator(7).randn([64]);
  const t = Number(s.timesteps[0]); // 901, prev 801
  const replay = new Replay([z]);
  const got = s.step(eps, t, x, replay);
  assert.equal(replay.used, 1);
  const a = ac[t]!;
  const ap = ac[t - 100]!;
  const sd = eta * Math.sqrt(((1 - ap) / (1 - a)) * (1 - a / ap));
  const exp = Array.from(x, (xv, k) => {
    const x0 = (xv - Math.sqrt(1 - a) * eps[k]!) / Math.sqrt(a);
    return Math.sqrt(ap) * x0 + Math.sqrt(1 - ap - sd * sd) * eps[k]! + sd * z[k]!;
  });
  assertClose(got, exp, 'ddim eta step', 2e-5);
  // eta 0 draws nothing
  const d0 = createScheduler('ddim', folderConfig);
  d0.setTimesteps(10);
  const r0 = new Replay([]);
  d0.step(eps, t, x, r0);
  assert.equal(r0.used, 0);
});

test('Euler draws one noise tensor per step even without churn (generator stays in step with diffusers)', () => {
  const s = createScheduler('euler', sd15);
  s.setTimesteps(3);
  const x = new Float32Array(16).fill(1);
  const r = new Replay([new Float32Array(16), new Float32Array(16), new Float32Array(16)]);
  for (const t of s.timesteps) s.step(new Float32Array(16), Number(t), x, r);
  assert.equal(r.used, 3);
});

/**
 * A perfect denoiser for target x0: the model output is the ε that makes each scheduler's own x0
 * prediction equal x0. VP schedulers (input unscaled) see x = √ᾱ_t·x0 + √(1−ᾱ_t)·ε at integer t;
 * the k-diffusion-style ones see x/√(σ²+1) with x = x0 + σ·ε, and σ is read back from that scale.
 */
function perfectRun(name: string, cfg: SchedulerConfig, steps: number, x0: Float32Array, e: Float32Array, inPlace: boolean) {
  const s = createScheduler(name, cfg);
  s.setTimesteps(steps);
  const ac = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null }));
  const ve = s.initNoiseSigma > 1.5;
  const sMax = s.initNoiseSigma;
  let x = ve
    ? x0.map((v, k) => v + sMax * e[k]!)
    : x0.map((v, k) => Math.sqrt(ac[Number(s.timesteps[0])]!) * v + Math.sqrt(1 - ac[Number(s.timesteps[0])]!) * e[k]!);
  const gen = new TorchGenerator(99);
  const buf = new Float32Array(x.length);
  for (const tv of s.timesteps) {
    const t = Number(tv);
    const mi = s.scaleModelInput(x, t);
    const eps = new Float32Array(x.length);
    if (ve) {
      let kk = 0;
      for (let k = 1; k < x.length; k++) if (Math.abs(x[k]!) > Math.abs(x[kk]!)) kk = k;
      const r = x[kk]! / mi[kk]!;
      const sigma = Math.sqrt(Math.max(r * r - 1, 0));
      for (let k = 0; k < x.length; k++) eps[k] = (x[k]! - x0[k]!) / sigma;
    } else {
      const a = ac[Math.round(t)]!;
      for (let k = 0; k < x.length; k++) eps[k] = (x[k]! - Math.sqrt(a) * x0[k]!) / Math.sqrt(1 - a);
    }
    if (inPlace) {
      s.step(eps, t, x, gen, x);
    } else {
      x = s.step(eps, t, x, gen, buf).slice();
    }
  }
  return { x, ac };
}

for (const name of SAMPLERS.map((s) => s.name)) {
  test(`${name}: a perfect denoiser is carried exactly to its target (closed form of the final sample)`, () => {
    const x0 = new TorchGenerator(11).randn([256]).map((v) => v * 0.5);
    const e = new TorchGenerator(12).randn([256]);
    const steps = name === 'lcm' ? 4 : 12;
    const { x, ac } = perfectRun(name, folderConfig, steps, x0, e, false);
    let expected: ArrayLike<number> = x0;
    if (name === 'ddim' || name === 'pndm' || name === 'unipc') {
      // these end at the t = 0 noise level (ᾱ_0, set_alpha_to_one false / σ_min) with ε unchanged
      expected = x0.map((v, k) => Math.sqrt(ac[0]!) * v + Math.sqrt(1 - ac[0]!) * e[k]!);
    }
    assertClose(x, expected, `${name} final`, 2e-4);
    // in-place stepping (out === x) gives the same result
    const inPlace = perfectRun(name, folderConfig, steps, x0, e, true).x;
    assertClose(inPlace, x, `${name} in place`, 0);
  });
}

test('PNDM with PRK warm-up also carries a perfect denoiser exactly', () => {
  const x0 = new TorchGenerator(21).randn([64]);
  const e = new TorchGenerator(22).randn([64]);
  const { x, ac } = perfectRun('pndm', { ...sd15, skip_prk_steps: false }, 10, x0, e, false);
  assertClose(x, x0.map((v, k) => Math.sqrt(ac[0]!) * v + Math.sqrt(1 - ac[0]!) * e[k]!), 'prk final', 1e-4);
});

test('names: sdgen and A1111 names resolve case-insensitively; unknown names are a UsageError listing the valid ones', () => {
  const pairs: [string, string][] = [
    ['Euler a', 'euler_a'], ['EULER', 'euler'], ['ddim', 'ddim'], ['DPM++ 2M', 'dpmpp_2m'],
    ['dpm++ 2m karras', 'dpmpp_2m_karras'], ['PLMS', 'pndm'], ['LMS', 'lms'], ['Heun', 'heun'],
    ['DPM++ SDE', 'dpmpp_sde'], ['DPM++ 2M SDE', 'dpmpp_2m_sde'], ['UniPC', 'unipc'], ['LCM', 'lcm'],
    ['dpmpp-2m-karras', 'dpmpp_2m_karras'],
  ];
  for (const [input, want] of pairs) assert.equal(resolveSchedulerName(input), want, input);
  assert.equal(SAMPLERS.length, 12);
  assert.equal(a1111Name('dpmpp_2m_karras'), 'DPM++ 2M Karras');
  assert.equal(a1111Name('pndm'), 'PLMS');
  assert.throws(() => resolveSchedulerName('ddpm'), (err: unknown) => err instanceof UsageError && /euler_a/.test(err.message) && /DPM\+\+ 2M Karras/.test(err.message));
  assert.throws(() => createScheduler('nope', sd15), UsageError);
});

test('defaultSchedulerFor follows the folder config class', () => {
  assert.equal(defaultSchedulerFor(folderConfig), 'pndm');
  assert.equal(defaultSchedulerFor({ _class_name: 'EulerAncestralDiscreteScheduler' }), 'euler_a');
  assert.equal(defaultSchedulerFor({ _class_name: 'DDIMScheduler' }), 'ddim');
  assert.equal(defaultSchedulerFor({ _class_name: 'DPMSolverMultistepScheduler', use_karras_sigmas: true }), 'dpmpp_2m_karras');
  assert.equal(defaultSchedulerFor({ _class_name: 'DPMSolverMultistepScheduler', algorithm_type: 'sde-dpmsolver++' }), 'dpmpp_2m_sde');
  assert.equal(defaultSchedulerFor({ _class_name: 'LCMScheduler' }), 'lcm');
  assert.equal(defaultSchedulerFor({}), 'pndm');
});

test('config handling: v_prediction, trained_betas, squaredcos_cap_v2 and zero-SNR rescale', () => {
  // trained_betas override the schedule
  const betas = Array.from({ length: 1000 }, (_, i) => 0.0001 + (0.02 - 0.0001) * (i / 999));
  const lin = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear', trained_betas: null }));
  const tr = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0, beta_end: 0, beta_schedule: 'linear', trained_betas: betas }));
  assertClose(tr, lin, 'trained_betas ≈ linear', 1e-6);
  // squaredcos_cap_v2: ᾱ_t = f(t+1)/f(0) with f(t) = cos²((t/N + 0.008)/1.008 · π/2)
  const cos = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0, beta_end: 0, beta_schedule: 'squaredcos_cap_v2', trained_betas: null }));
  const fbar = (t: number) => Math.cos(((t / 1000 + 0.008) / 1.008) * Math.PI / 2) ** 2;
  for (const t of [0, 100, 500, 900]) assert.ok(Math.abs(cos[t]! - fbar(t + 1) / fbar(0)) < 1e-5, `cos ᾱ at ${t}`);
  // zero terminal SNR: last ᾱ is 0 and the first is unchanged
  const z = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null, rescale_betas_zero_snr: true }));
  const ref = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null }));
  assert.ok(Math.abs(z[999]!) < 1e-9);
  assert.ok(Math.abs(z[0]! - ref[0]!) < 1e-6);
  // v_prediction through DDIM: x0 = √ᾱ·x − √(1−ᾱ)·v, so v = √ᾱ·ε − √(1−ᾱ)·x0 reproduces the eps result
  const cfgV = { ...folderConfig, prediction_type: 'v_prediction' };
  const x = new TorchGenerator(31).randn([32]);
  const eps = new TorchGenerator(32).randn([32]);
  const dE = createScheduler('ddim', folderConfig);
  const dV = createScheduler('ddim', cfgV);
  dE.setTimesteps(10);
  dV.setTimesteps(10);
  const t = 901;
  const a = ref[t]!;
  const x0 = Array.from(x, (v, k) => (v - Math.sqrt(1 - a) * eps[k]!) / Math.sqrt(a));
  const v = Float32Array.from(x0, (x0k, k) => Math.sqrt(a) * eps[k]! - Math.sqrt(1 - a) * x0k);
  assertClose(dV.step(v, t, x), dE.step(eps, t, x), 'v vs eps', 2e-5);
});

/**
 * Convergence order on an ODE with a known solution: for unit-Gaussian data the exact denoiser
 * predicts ε = √(1−ᾱ_t)·x (VP form), and the probability-flow ODE keeps x constant. Halfway
 * through a linspace schedule every step count lands on t = 500, so the error there must fall
 * by 2^order when the step count doubles: 4× for DPM-Solver++(2M), ~8× for UniPC (order-2
 * predictor plus corrector).
 */
function halfwayError(name: string, n: number): number {
  const ac = computeAlphasCumprod(computeBetas({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', trained_betas: null }));
  const s = createScheduler(name, sd15);
  s.setTimesteps(n);
  const z = new TorchGenerator(3).randn([64]);
  let x: Float32Array = z.slice();
  for (let i = 0; i < n / 2; i++) {
    const t = Number(s.timesteps[i]);
    const eps = x.map((v) => Math.sqrt(1 - ac[t]!) * v);
    x = s.step(eps, t, x);
  }
  assert.equal(Number(s.timesteps[n / 2]), 500);
  return maxAbsDiff(x, z);
}

test('DPM-Solver++(2M) converges at second order; UniPC (bh2, P+C) at third order', () => {
  const d = [16, 32, 64].map((n) => halfwayError('dpmpp_2m', n));
  assert.ok(d[0]! / d[1]! > 3.5 && d[1]! / d[2]! > 3.5, `dpmpp_2m error ratios ${d[0]! / d[1]!}, ${d[1]! / d[2]!}`);
  const u = [16, 32, 64].map((n) => halfwayError('unipc', n));
  assert.ok(u[0]! / u[1]! > 7 && u[1]! / u[2]! > 7, `unipc error ratios ${u[0]! / u[1]!}, ${u[1]! / u[2]!}`);
  // and they are much more accurate than first-order Euler-type stepping of the same ODE
  assert.ok(u[2]! < d[2]!);
});

/** A RandomSource that counts draws and returns zeros. */
class Counting implements RandomSource {
  draws = 0;
  randn(shape: readonly number[]): Float32Array {
    this.draws++;
    return new Float32Array(shape.reduce((a, b) => a * b, 1));
  }
}

test('noise draws per run follow diffusers: one per step (euler_a, euler, dpmpp_2m_sde), n−1 (lcm), 2n−2 (dpmpp_sde), none for ODE samplers', () => {
  const n = 6;
  const expected: Record<string, number> = {
    euler_a: n, euler: n, dpmpp_2m_sde: n, lcm: n - 1, dpmpp_sde: 2 * n - 2,
    ddim: 0, dpmpp_2m: 0, dpmpp_2m_karras: 0, pndm: 0, lms: 0, heun: 0, unipc: 0,
  };
  for (const { name } of SAMPLERS) {
    const s = createScheduler(name, folderConfig);
    s.setTimesteps(n);
    const gen = new Counting();
    let x = new TorchGenerator(1).randn([32]);
    for (const tv of s.timesteps) {
      const t = Number(tv);
      const mi = s.scaleModelInput(x, t);
      x = s.step(mi.map((v) => 0.1 * v), t, x, expected[name] ? gen : undefined);
    }
    assert.equal(gen.draws, expected[name], name);
    assert.ok(x.every(Number.isFinite), `${name} finite`);
  }
});

test('DPM++ 2M SDE first step: x = (σ_t/σ_s)e^{−h}·x + α_t(1−e^{−2h})·x0 + σ_t√(1−e^{−2h})·z (VP α, σ; h = λ_t − λ_s)', () => {
  const s = createScheduler('dpmpp_2m_sde', sd15) as unknown as Scheduler & { sigmas: number[] };
  s.setTimesteps(10);
  const x = new TorchGenerator(41).randn([64]);
  const eps = new TorchGenerator(42).randn([64]);
  const z = new TorchGenerator(43).randn([64]);
  const got = s.step(eps, Number(s.timesteps[0]), x, new Replay([z]));
  const vp = (sig: number) => [1 / Math.sqrt(sig * sig + 1), sig / Math.sqrt(sig * sig + 1)] as const;
  const [aS, sS] = vp(s.sigmas[0]!);
  const [aT, sT] = vp(s.sigmas[1]!);
  const h = Math.log(aT / sT) - Math.log(aS / sS);
  const exp = Array.from(x, (xv, k) => {
    const x0 = (xv - sS * eps[k]!) / aS;
    return (sT / sS) * Math.exp(-h) * xv + aT * (1 - Math.exp(-2 * h)) * x0 + sT * Math.sqrt(1 - Math.exp(-2 * h)) * z[k]!;
  });
  assertClose(got, exp, 'sde step', 2e-5);
});

test('DPM++ SDE: predictor and corrector each take one generator draw as their normalised noise, in diffusers\' call order', () => {
  // With x0 = 0 (ε = x/σ_in) and a zero start, each call's result is just σ_up times its noise,
  // so the predictor and corrector noise can be compared with the Brownian combination by hand.
  const s = createScheduler('dpmpp_sde', sd15) as unknown as Scheduler & { sigmas: number[] };
  s.setTimesteps(5);
  const z1 = new TorchGenerator(51).randn([64]);
  const z2 = new TorchGenerator(52).randn([64]);
  const x = new Float32Array(64);
  const t0 = Number(s.timesteps[0]);
  const sigma = s.sigmas[0]!;
  const sigmaNext = s.sigmas[1]!;
  const gen = new Replay([z1, z2]);
  // predictor at x = 0 with zero model output: prev = σ_up·z1
  const p = s.step(new Float32Array(64), t0, x, gen);
  const tMid = -Math.log(sigma) + (Math.log(sigma) - Math.log(sigmaNext)) * 0.5;
  const sMid = Math.exp(-tMid);
  const up1 = Math.min(sMid, Math.sqrt((sMid ** 2 * (sigma ** 2 - sMid ** 2)) / sigma ** 2));
  assertClose(p, Array.from(z1, (v) => v * up1), 'predictor noise', 1e-5);
  // corrector from the saved x = 0, model output p/σ_mid (so x0 = 0): prev = σ_up·z2
  const c = s.step(p.map((v) => v / sMid), Number(s.timesteps[1]), p, gen);
  const up2 = Math.min(sigmaNext, Math.sqrt((sigmaNext ** 2 * (sigma ** 2 - sigmaNext ** 2)) / sigma ** 2));
  assertClose(c, Array.from(z2, (v) => v * up2), 'corrector noise', 1e-5);
  assert.equal(gen.used, 2);
});

/**
 * The same ODE in the k-diffusion (VE) form: x(σ) = x_T·√((1+σ²)/(1+σ_T²)). With an odd step
 * count n the step (n−1)/2 of a linspace schedule is t = 499.5 for every n; the error there
 * shrinks 2× per doubling for Euler, 4× for Heun and ~8× for LMS (order 4 after a lower-order
 * start). σ at each call is read back from the scheduler's input scaling.
 */
function halfwayErrorVe(name: string, n: number): number {
  const s = createScheduler(name, sd15) as unknown as Scheduler & { sigmas: number[] };
  s.setTimesteps(n);
  const z = new TorchGenerator(3).randn([64]);
  const sT = s.sigmas[0]!;
  let x: Float32Array = z.map((v) => v * sT);
  const k = (n - 1) / 2;
  const calls = name === 'heun' ? 2 * k : k;
  for (let i = 0; i < calls; i++) {
    const t = Number(s.timesteps[i]);
    const mi = s.scaleModelInput(x, t);
    let kk = 0;
    for (let j = 1; j < x.length; j++) if (Math.abs(x[j]!) > Math.abs(x[kk]!)) kk = j;
    const r = x[kk]! / mi[kk]!;
    const sg = Math.sqrt(Math.max(r * r - 1, 0));
    const sv = sg / Math.sqrt(1 + sg * sg);
    x = s.step(mi.map((v) => sv * v), t, x);
  }
  assert.equal(Number(s.timesteps[calls]), 499.5);
  const sig = s.sigmas[calls]!;
  return maxAbsDiff(x, z.map((v) => v * sT * Math.sqrt((1 + sig * sig) / (1 + sT * sT))));
}

test('Euler converges at first order, Heun at second, LMS at third-to-fourth (VE form of the Gaussian ODE)', () => {
  const ratios = (name: string) => {
    const e = [17, 33, 65].map((n) => halfwayErrorVe(name, n));
    return [e[0]! / e[1]!, e[1]! / e[2]!];
  };
  const eu = ratios('euler');
  assert.ok(eu.every((r) => r > 1.8 && r < 2.3), `euler ${eu}`);
  const he = ratios('heun');
  assert.ok(he.every((r) => r > 3.5 && r < 5), `heun ${he}`);
  const lm = ratios('lms');
  assert.ok(lm.every((r) => r > 6), `lms ${lm}`);
});

test('setTimesteps resets all state: a reused instance reproduces a fresh one (every sampler)', () => {
  const run = (s: Scheduler, steps: number) => {
    s.setTimesteps(steps);
    const gen = new TorchGenerator(8);
    let x: Float32Array = new TorchGenerator(9).randn([48]).map((v) => v * s.initNoiseSigma);
    for (const tv of s.timesteps) {
      const t = Number(tv);
      const mi = s.scaleModelInput(x, t);
      x = s.step(mi.map((v) => Math.fround(0.1 * v * Math.cos(t / 100))), t, x, gen);
    }
    return x;
  };
  for (const { name } of SAMPLERS) {
    const reused = createScheduler(name, folderConfig);
    run(reused, 7);
    const again = run(reused, 9);
    const fresh = run(createScheduler(name, folderConfig), 9);
    assert.deepEqual(again, fresh, name);
  }
});

test('createScheduler with a diffusers class name takes the variant from the config, like from_config', () => {
  const make = (name: string, cfg: SchedulerConfig) => createScheduler(name, { ...sd15, ...cfg }) as unknown as { name: string; config: Record<string, unknown> };
  assert.equal(make('DPMSolverMultistepScheduler', {}).name, 'dpmpp_2m');
  assert.equal(make('DPMSolverMultistepScheduler', { use_karras_sigmas: true }).name, 'dpmpp_2m_karras');
  assert.equal(make('DPMSolverMultistepScheduler', { use_karras_sigmas: true }).config['use_karras_sigmas'], true);
  assert.equal(make('dpmsolvermultistepscheduler', { algorithm_type: 'sde-dpmsolver++' }).name, 'dpmpp_2m_sde');
  assert.equal(make('EulerAncestralDiscreteScheduler', {}).name, 'euler_a');
  assert.equal(make('PNDMScheduler', {}).name, 'pndm');
  // sdgen and A1111 names fix the variant whatever the folder says
  assert.equal(make('dpmpp_2m', { use_karras_sigmas: true }).config['use_karras_sigmas'], false);
  assert.equal(make('DPM++ 2M Karras', {}).config['use_karras_sigmas'], true);
});
