import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { RandomSource } from '../src/random/types.js';
import type { Scheduler, SchedulerConfig } from '../src/schedulers/types.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { createScheduler } from '../src/schedulers/index.js';
import { computeAlphasCumprod, computeBetas } from '../src/schedulers/common.js';

const FIXTURES = new URL('../../shared/fixtures/', import.meta.url);
const TOL = 1e-5;

interface TensorRef { dtype: string; shape: number[]; offset: number; nbytes: number }

/** Python's json writes -Infinity / Infinity / NaN bare; parse them. */
function parsePythonJson(text: string): any {
  const quoted = text.replace(/(?<=[:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '"__$1"');
  return JSON.parse(quoted, (_k, v) =>
    v === '__-Infinity' ? -Infinity : v === '__Infinity' ? Infinity : v === '__NaN' ? NaN : v);
}

function reader(buf: Buffer) {
  return (t: TensorRef): Float32Array | Float64Array | BigInt64Array => {
    const ab = buf.buffer.slice(buf.byteOffset + t.offset, buf.byteOffset + t.offset + t.nbytes) as ArrayBuffer;
    if (t.dtype === 'float32') return new Float32Array(ab);
    if (t.dtype === 'float64') return new Float64Array(ab);
    if (t.dtype === 'int64') return new BigInt64Array(ab);
    throw new Error(`dtype ${t.dtype}`);
  };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d; // NaN-propagating
  }
  return m;
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

for (const run of manifest.runs) {
  const overrides: Record<string, unknown> = run.config_overrides ?? {};
  const name = sdgenNameFor(run.class, overrides);
  test(`${run.name} (${name}): schedule, model inputs and samples match diffusers ≤ ${TOL}`, () => {
    const read = reader(readFileSync(new URL(run.file, schedDir)));
    const cfg: SchedulerConfig = { ...sd15, ...overrides };
    const sched: Scheduler = createScheduler(name, cfg, { eta: (run.step_kwargs?.eta as number | undefined) ?? 0 });
    // from_config resolution: every option the class honours equals diffusers' resolved config
    const resolved = (sched as unknown as { config: Record<string, unknown> }).config;
    for (const [k, v] of Object.entries(resolved)) {
      if (k in run.config) assert.deepEqual(v, run.config[k], `config.${k}`);
    }
    sched.setTimesteps(run.num_inference_steps);
    const expT = read(run.tensors.timesteps) as Float64Array;
    assert.deepEqual(Array.from(sched.timesteps, Number), Array.from(expT), 'timesteps');
    assert.ok(Math.abs(sched.initNoiseSigma - run.init_noise_sigma) <= TOL, `init_noise_sigma ${sched.initNoiseSigma} vs ${run.init_noise_sigma}`);
    if (run.tensors.sigmas) {
      const sigmas = (sched as unknown as { sigmas: number[] }).sigmas;
      assertClose(sigmas, read(run.tensors.sigmas) as Float64Array, 'sigmas');
    }
    // initial latent = randn(seed 0) * init_noise_sigma
    const initialNoise = read(run.tensors.initial_noise) as Float32Array;
    assert.deepEqual(new TorchGenerator(0).randn([1, 4, 8, 8]), initialNoise, 'initial_noise from TorchGenerator(0)');
    let x = read(run.tensors.x_T) as Float32Array;
    const xIn = new Float32Array(x.length);
    const xOut = new Float32Array(x.length);
    const torchGen = new TorchGenerator(1234);
    assert.equal(run.steps.length, sched.timesteps.length, 'number of steps');
    for (const st of run.steps) {
      assert.equal(Number(sched.timesteps[st.i]), st.t, `t at step ${st.i}`);
      const noises = ((st.noise ?? []) as TensorRef[]).map((t) => read(t) as Float32Array);
      // the recorded draws are what the seeded generator gives, in order
      for (const n of noises) assert.deepEqual(torchGen.randn(n.shape ?? [n.length]), n, `noise at step ${st.i}`);
      const replay = new Replay(noises);
      const mi = sched.scaleModelInput(x, st.t, xIn);
      assertClose(mi, read(st.model_input) as Float32Array, `model_input at step ${st.i}`);
      const prev = sched.step(read(st.eps) as Float32Array, st.t, x, replay, xOut);
      assert.equal(replay.used, noises.length, `noise draws at step ${st.i}`);
      const expPrev = read(st.prev_sample) as Float32Array;
      assertClose(prev, expPrev, `prev_sample at step ${st.i}`);
      x = expPrev; // continue from the reference so errors do not compound
    }
  });

  test(`${run.name} (${name}): a full run driven by the fake model and TorchGenerator(1234) ends at diffusers' final sample`, () => {
    const read = reader(readFileSync(new URL(run.file, schedDir)));
    const sched = createScheduler(name, { ...sd15, ...overrides }, { eta: (run.step_kwargs?.eta as number | undefined) ?? 0 });
    sched.setTimesteps(run.num_inference_steps);
    const gen = new TorchGenerator(1234);
    let x = new TorchGenerator(0).randn([1, 4, 8, 8]).map((v) => Math.fround(v * sched.initNoiseSigma));
    for (const t of sched.timesteps) {
      const tn = Number(t);
      const mi = sched.scaleModelInput(x, tn);
      const c = Math.fround(Math.cos(tn / 100));
      const eps = mi.map((v) => Math.fround(Math.fround(0.1 * v) * c));
      x = sched.step(eps, tn, x, gen);
    }
    const last = run.steps[run.steps.length - 1];
    assertClose(x, read(last.prev_sample) as Float32Array, 'final sample', 1e-4);
  });
}

const e2eDir = new URL('e2e/', FIXTURES);
const e2e = parsePythonJson(readFileSync(new URL('manifest.json', e2eDir), 'utf8'));
const folderConfig: SchedulerConfig = JSON.parse(readFileSync(new URL('tiny-sd1/scheduler/scheduler_config.json', FIXTURES), 'utf8'));

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
