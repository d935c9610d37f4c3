/**
 * img2img, inpainting and hires fix against diffusers 0.27.2 (test/fixtures/img2img, on the
 * tiny-sd1 and tiny-sd2v pipelines), block by block: the encoder's parameters (after sdgen's
 * rewrite of tiny-sd1's in-graph sampling), the encoder sample and every random draw in
 * diffusers' order, the truncated schedules, add_noise per scheduler family, the inpainting
 * masks, and the latent upscale of hires fix. Plus hand-derived properties of the pieces the
 * fixtures do not cover (other upscalers, mask blur, schedule lengths, mid-schedule starts
 * against the schedulers fixture).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fx, maxAbsDiff, FIXTURES_DIR, readTensor } from './helpers.js';
import { loadModel } from '../src/onnx/model-io.js';
import { encoderParamsRewrite, getEncoderParamsModel, LATENT_PARAMETERS } from '../src/optimize/encoder-params.js';
import { latentDistribution, sampleLatents, VaeEncoder, vaeEncoderIO } from '../src/pipeline/encode.js';
import { loadInitImage, loadMask, resizeRgb, rgbToEncoderInput } from '../src/image/init-image.js';
import { binarizeMask, blurMask, gaussianKernel, invertMask, latentMask, maskImageInput, overlayInit, toGray } from '../src/image/mask.js';
import { interpolate, resolveHiresUpscaler, type LatentUpscaleMode } from '../src/image/interpolate.js';
import {
  addNoise, img2imgSteps, scheduleLengthFor, startMidSchedule, truncatedSchedule, validateStrength,
} from '../src/schedulers/img2img.js';
import { createScheduler } from '../src/schedulers/index.js';
import type { Scheduler, SchedulerConfig } from '../src/schedulers/types.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import type { RandomSource } from '../src/random/types.js';
import { UsageError } from '../src/errors.js';
import { SessionManager } from '../src/models/session.js';
import { vaeDecoderIO } from '../src/models/io.js';
import { VaeDecoder } from '../src/pipeline/decode.js';
import { StableDiffusionPipeline } from '../src/pipeline/pipeline.js';
import { TailScheduler, inpaintStart } from '../src/pipeline/img2img.js';
import { denoiseBatch } from '../src/pipeline/denoise.js';
import type { UnetIO } from '../src/models/io.js';
import type { PromptEmbedding } from '../src/pipeline/text-encoding.js';
import { firstPassParams, hiresSize, secondPassParams } from '../src/pipeline/hires.js';
import { modeParams } from '../src/run/modes.js';
import { formatInfotext } from '../src/metadata/infotext.js';
import type { GeneratedImage, GenerationParams } from '../src/pipeline/types.js';
import { generationParams } from './helpers.js';
import { createHash } from 'node:crypto';
import { TiledVaeDecoder, decodeTileSpec, encodeTileSpec, shouldTile, tiledApply, type Planes } from '../src/pipeline/tiling.js';
import { GraphBuilder, constTensor } from '../src/onnx/builder.js';
import { DataType } from '../src/onnx/types.js';
import { encodeModel } from '../src/onnx/proto.js';
import ort from 'onnxruntime-node';
import { phaseLabel } from '../src/cli/ui.js';

// ---------------------------------------------------------------------------------------------
// Fixture reading

interface TensorEntry {
  dtype: 'float32' | 'int64' | 'float64' | 'uint8';
  shape: number[];
  offset: number;
  nbytes: number;
}
interface SchedulerInfo {
  class: string;
  config: SchedulerConfig;
  init_noise_sigma: number;
}
interface Img2ImgCase {
  id: string;
  bin: string;
  mode: 'img2img' | 'hires' | 'inpaint';
  pipeline: 'tiny-sd1' | 'tiny-sd2v';
  height: number;
  width: number;
  strength: number;
  steps: number | { first: number; second: number };
  seeds: number[];
  scheduler: SchedulerInfo;
  init_image?: string;
  mask_image?: string;
  steps_run: number;
  t_start_index: number;
  timesteps: number[];
  upscaler?: string;
  first_pass?: { height: number; width: number; timesteps: number[] };
  second_pass?: { steps_run: number; t_start_index: number; timesteps: number[] };
  tensors: Record<string, TensorEntry>;
}

const DIR = fx('img2img/');
const manifest = JSON.parse(readFileSync(path.join(DIR, 'manifest.json'), 'utf8')) as { cases: Img2ImgCase[] };
const CASES = manifest.cases;

type Typed = Float32Array | Float64Array | BigInt64Array | Uint8Array;
const bins = new Map<string, Buffer>();
function tensor(c: Img2ImgCase, name: string): Typed {
  const e = c.tensors[name];
  assert.ok(e, `${c.id}: no tensor ${name}`);
  let buf = bins.get(c.bin);
  if (!buf) bins.set(c.bin, (buf = readFileSync(path.join(DIR, c.bin))));
  return readTensor(buf, e);
}
const f32t = (c: Img2ImgCase, name: string): Float32Array => tensor(c, name) as Float32Array;
const nums = (c: Img2ImgCase, name: string): number[] => Array.from(tensor(c, name) as Float64Array);

/** Largest |a − b| relative to the reference's largest magnitude. */
function relDiff(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < ref.length; i++) m = Math.max(m, Math.abs(ref[i]!));
  return maxAbsDiff(a, ref) / Math.max(m, 1e-12);
}

function schedulerFor(c: Img2ImgCase, steps: number): Scheduler {
  const s = createScheduler(c.scheduler.class, { ...c.scheduler.config, _class_name: c.scheduler.class });
  s.setTimesteps(steps);
  return s;
}
/** Encoder outputs: onnxruntime against PyTorch, relative to the largest value. */
const ENC_TOL = 1e-3;

const stepsOf = (c: Img2ImgCase): number => (typeof c.steps === 'number' ? c.steps : c.steps.second);

test('the img2img fixture holds the four reference cases', () => {
  assert.equal(CASES.length, 4);
  assert.deepEqual(CASES.map((c) => c.mode).sort(), ['hires', 'img2img', 'img2img', 'inpaint']);
});

// ---------------------------------------------------------------------------------------------
// The encoder: tiny-sd1's in-graph sampling rewritten to parameters; tiny-sd2v's as exported

describe('VAE encoder parameters', () => {
  let cacheDir: string;
  let sessions: SessionManager;
  const encoders = new Map<string, VaeEncoder>();
  before(async () => {
    cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-i2i-enc-'));
    sessions = new SessionManager({ device: 'cpu', cacheDir, threads: 1 }, () => {});
  });
  after(() => rmSync(cacheDir, { recursive: true, force: true }));

  async function encoderOf(pipeline: string): Promise<VaeEncoder> {
    let e = encoders.get(pipeline);
    if (!e) {
      const file = path.join(FIXTURES_DIR, pipeline, 'vae_encoder', 'model.onnx');
      const r = await getEncoderParamsModel(file, cacheDir);
      assert.ok(r.params, `${pipeline}: ${'reason' in r ? r.reason : ''}`);
      const m = await sessions.open(r.path, 'vae encoder', { optimizedCache: false });
      e = new VaeEncoder(m.session, vaeEncoderIO(m.info), 0.18215);
      encoders.set(pipeline, e);
    }
    return e;
  }

  test('tiny-sd1: the RandomNormalLike sample is rewritten into latent_parameters (mean|logvar)', async () => {
    const file = fx('tiny-sd1/vae_encoder/model.onnx');
    const model = await loadModel(file, { externalData: 'lazy' });
    assert.deepEqual(model.graph!.output.map((o) => o.name), ['latent_sample']);
    const r = encoderParamsRewrite(model);
    assert.equal(r.count, 1, r.skipped.join('; '));
    const g = model.graph!;
    assert.deepEqual(g.output.map((o) => o.name), [LATENT_PARAMETERS]);
    // the export's dims are symbolic: the channel dim gets a symbol of its own (it is 2C, not C)
    assert.deepEqual(g.output[0]!.type!.tensorType!.shape!.dim[1], { dimParam: 'channels' });
    for (const op of ['RandomNormalLike', 'Exp', 'Clip']) assert.ok(!g.node.some((n) => n.opType === op), `${op} left`);
    // the new output is the quant_conv output the two halves were sliced from
    const id = g.node.find((n) => n.output[0] === LATENT_PARAMETERS)!;
    assert.equal(id.input[0], '/quant_conv/Conv_output_0');
    assert.equal(r.moments, '/quant_conv/Conv_output_0');
  });

  test('a graph without the sampling pattern is left alone, with the reason', async () => {
    const dec = await loadModel(fx('tiny-sd1/vae_decoder/model.onnx'), { externalData: 'lazy' });
    const r1 = encoderParamsRewrite(dec);
    assert.equal(r1.count, 0);
    assert.match(r1.skipped[0]!, /no RandomNormalLike/);
    // the same encoder with exp(0.4·logvar): not diffusers' std
    const enc = await loadModel(fx('tiny-sd1/vae_encoder/model.onnx'), { externalData: 'lazy' });
    const half = enc.graph!.node.find((n) => n.output[0] === '/Constant_8_output_0')!;
    const t = half.attribute.find((a) => a.name === 'value')!.t!;
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setFloat32(0, 0.4, true);
    t.rawData = bytes;
    t.floatData = [];
    const r2 = encoderParamsRewrite(enc);
    assert.equal(r2.count, 0);
    assert.match(r2.skipped[0]!, /not a diffusers latent sample \(the exponent is not ½·logvar\)/);
    assert.deepEqual(enc.graph!.output.map((o) => o.name), ['latent_sample']);
  });

  test('getEncoderParamsModel: rewritten once and cached; an Optimum export is used as is', async () => {
    const sd1 = fx('tiny-sd1/vae_encoder/model.onnx');
    const a = await getEncoderParamsModel(sd1, cacheDir);
    const b = await getEncoderParamsModel(sd1, cacheDir);
    assert.ok(a.params && b.params && a.rewritten && b.rewritten);
    assert.equal(a.path, b.path);
    assert.notEqual(a.path, sd1);
    const sd2 = fx('tiny-sd2v/vae_encoder/model.onnx');
    const c = await getEncoderParamsModel(sd2, cacheDir);
    assert.deepEqual(c, { params: true, path: sd2, rewritten: false });
    const dec = fx('tiny-sd1/vae_decoder/model.onnx');
    const d = await getEncoderParamsModel(dec, cacheDir);
    assert.equal(d.params, false);
  });

  // every case that encodes the init picture: its latent_parameters (or mean/std) and init latents
  const encodeCases = CASES.filter((c) => c.mode !== 'hires');
  test('encode cases: three', () => assert.equal(encodeCases.length, 3));
  for (const c of encodeCases) {
    test(`${c.id}: parameters, mean and std of the init picture's encoding`, async () => {
      const img = await loadInitImage(path.join(DIR, c.init_image!), c.width, c.height);
      assert.equal(img.resized, false);
      const enc = await encoderOf(c.pipeline);
      assert.equal(enc.io.kind, 'parameters');
      const out = await enc.run(rgbToEncoderInput(img), img.width, img.height);
      assert.deepEqual([out.channels, out.height, out.width], [8, c.height / 8, c.width / 8]);
      // onnxruntime's kernels against PyTorch's on this VAE: up to 4e-4 of the largest value
      if (c.tensors['latent_parameters']) assert.ok(relDiff(out.data, f32t(c, 'latent_parameters')) < ENC_TOL, `${relDiff(out.data, f32t(c, 'latent_parameters'))}`);
      const dist = latentDistribution(out.data, out.channels, out.height, out.width);
      assert.ok(relDiff(dist.mean, f32t(c, 'latent_mean')) < ENC_TOL, `mean ${relDiff(dist.mean, f32t(c, 'latent_mean'))}`);
      assert.ok(relDiff(dist.std, f32t(c, 'latent_std')) < ENC_TOL, `std ${relDiff(dist.std, f32t(c, 'latent_std'))}`);
      // and from the reference's own parameters (where it has them) exactly diffusers' mean and std
      if (c.tensors['latent_parameters']) {
        const ref = latentDistribution(f32t(c, 'latent_parameters'), 8, out.height, out.width);
        assert.equal(maxAbsDiff(ref.mean, f32t(c, 'latent_mean')), 0);
        assert.ok(relDiff(ref.std, f32t(c, 'latent_std')) <= 2e-7, `std ${relDiff(ref.std, f32t(c, 'latent_std'))}`);
      }
    });
  }

  test('inpaint: the masked picture encodes to diffusers\' masked_image_latents', async () => {
    const c = CASES.find((k) => k.mode === 'inpaint')!;
    const img = await loadInitImage(path.join(DIR, c.init_image!), c.width, c.height);
    const mask = await loadMask(path.join(DIR, c.mask_image!), c.width, c.height);
    const binary = binarizeMask(mask.gray);
    const enc = await encoderOf(c.pipeline);
    const g = new TorchGenerator(c.seeds[0]!);
    const imageLatents = await enc.encodeInput(rgbToEncoderInput(img), c.width, c.height, g);
    assert.ok(relDiff(imageLatents, f32t(c, 'image_latents')) < ENC_TOL, `${relDiff(imageLatents, f32t(c, 'image_latents'))}`);
    g.randn([1, 4, c.height / 8, c.width / 8]); // the start noise (checked in the draws test)
    const masked = await enc.encodeInput(maskImageInput(rgbToEncoderInput(img), binary), c.width, c.height, g);
    assert.ok(relDiff(masked, f32t(c, 'masked_image_latents')) < ENC_TOL, `${relDiff(masked, f32t(c, 'masked_image_latents'))}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Random draws, init latents and the start latents

describe('draws in diffusers\' order, init latents, add_noise at the first timestep', () => {
  for (const c of CASES) {
    test(`${c.id}`, () => {
      const g = new TorchGenerator(c.seeds[0]!);
      const shape = [1, 4, c.height / 8, c.width / 8];
      let start: Float32Array;
      const s = schedulerFor(c, stepsOf(c));
      const tr = truncatedSchedule(s, stepsOf(c), c.strength);
      if (c.mode === 'hires') {
        // pass 2 takes the upscaled latents as they are (no encoder); the fresh generator's first draw is the noise
        const noise = g.randn(shape);
        assert.equal(maxAbsDiff(noise, f32t(c, 'noise')), 0);
        start = addNoise(s, f32t(c, 'upscaled_latents'), noise, tr.beginIndex);
      } else {
        // the encoder sample first, from the reference's own mean and std
        const mean = f32t(c, 'latent_mean');
        const std = f32t(c, 'latent_std');
        const encNoise = new TorchGenerator(c.seeds[0]!).randn(shape);
        assert.equal(maxAbsDiff(encNoise, f32t(c, 'encoder_noise')), 0);
        const init = sampleLatents({ mean, std, channels: 4, height: shape[2]!, width: shape[3]! }, g, 0.18215);
        const initRef = f32t(c, c.mode === 'inpaint' ? 'image_latents' : 'init_latents');
        assert.ok(maxAbsDiff(init, initRef) <= 1e-6 * 8, `init latents ${maxAbsDiff(init, initRef)}`);
        const noise = g.randn(shape);
        assert.equal(maxAbsDiff(noise, f32t(c, 'noise')), 0);
        if (c.mode === 'inpaint') {
          assert.equal(c.strength, 1);
          // strength 1: pure noise × init_noise_sigma (diffusers' is_strength_max), then the masked image's draw
          start = noise.map((v) => Math.fround(v * s.initNoiseSigma));
          assert.equal(maxAbsDiff(g.randn(shape), f32t(c, 'masked_image_encoder_noise')), 0);
        } else {
          start = addNoise(s, initRef, noise, tr.beginIndex);
        }
      }
      assert.ok(maxAbsDiff(start, f32t(c, 'noised_latents')) <= 2e-6, `noised ${maxAbsDiff(start, f32t(c, 'noised_latents'))}`);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Schedules

describe('truncated schedules', () => {
  for (const c of CASES) {
    test(`${c.id}: timesteps run`, () => {
      const n = stepsOf(c);
      const s = schedulerFor(c, n);
      assert.deepEqual(Array.from(s.timesteps, Number), nums(c, 'timesteps_full'));
      const tr = truncatedSchedule(s, n, c.strength);
      const run = c.second_pass ?? c;
      assert.equal(tr.stepsRun, run.steps_run);
      assert.equal(tr.beginIndex, run.t_start_index);
      assert.deepEqual(tr.timesteps, run.timesteps);
      assert.deepEqual(tr.timesteps, nums(c, 'timesteps'));
      if (c.tensors['sigmas']) assert.ok(maxAbsDiff((s as unknown as { sigmas: number[] }).sigmas, nums(c, 'sigmas')) < 1e-5);
      if (c.first_pass) {
        const s1 = schedulerFor(c, (c.steps as { first: number }).first);
        assert.deepEqual(Array.from(s1.timesteps, Number), c.first_pass.timesteps);
        assert.deepEqual(Array.from(s1.timesteps, Number), nums(c, 'pass1_timesteps'));
      }
    });
  }

  test('img2imgSteps: int(N·S) steps from N − int(N·S); none left is a usage error', () => {
    assert.deepEqual(img2imgSteps(4, 0.75), { tStart: 1, stepsRun: 3 });
    assert.deepEqual(img2imgSteps(6, 0.5), { tStart: 3, stepsRun: 3 });
    assert.deepEqual(img2imgSteps(20, 1), { tStart: 0, stepsRun: 20 });
    assert.deepEqual(img2imgSteps(10, 0.3), { tStart: 7, stepsRun: 3 }); // int(10·0.3) = int(3.0000000000000004)
    assert.throws(() => img2imgSteps(3, 0.2), UsageError);
    for (const bad of [0, -0.1, 1.01, Number.NaN]) assert.throws(() => validateStrength(bad), UsageError);
  });

  test('scheduleLengthFor: the smallest M with int(M·S) = N', () => {
    assert.equal(scheduleLengthFor(10, 0.7), 15); // 14·0.7 = 9.8, 15·0.7 = 10.5
    assert.equal(scheduleLengthFor(10, 0.5), 20);
    assert.equal(scheduleLengthFor(3, 0.3), 10);
    assert.equal(scheduleLengthFor(7, 1), 7);
    assert.equal(scheduleLengthFor(5, 0.7), 8); // hires case: 8 steps at 0.7 run 5
    for (const S of [0.05, 0.13, 0.33, 0.5, 0.71, 0.99]) {
      for (let n = 1; n <= 40; n++) {
        const m = scheduleLengthFor(n, S);
        assert.equal(img2imgSteps(m, S).stepsRun, n, `${n} at ${S}`);
        if (m > 1) assert.ok(Math.min(Math.floor((m - 1) * S), m - 1) < n, `${n} at ${S}: ${m} is not the smallest`);
      }
    }
  });

  test('Heun-type schedules (order 2) start at 2·t_start', () => {
    const s = createScheduler('heun', { ...CASES[0]!.scheduler.config });
    s.setTimesteps(5);
    const tr = truncatedSchedule(s, 5, 0.6); // int(3) steps: t_start 2
    assert.equal(tr.beginIndex, 4);
    assert.equal(tr.timesteps.length, s.timesteps.length - 4);
    assert.equal(tr.timesteps[0], s.timesteps[4]);
  });
});

// ---------------------------------------------------------------------------------------------
// Mid-schedule starts against the schedulers fixture (diffusers' full 20-step runs)

describe('starting mid-schedule', () => {
  interface SchedRun {
    name: string;
    file: string;
    class: string;
    config: SchedulerConfig;
    steps: { i: number; t: number; eps: TensorEntry; prev_sample: TensorEntry; model_input: TensorEntry; noise?: TensorEntry[] }[];
    tensors: Record<string, TensorEntry>;
  }
  // Python's json writes -Infinity bare (lambda_min_clipped)
  const text = readFileSync(fx('schedulers/manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '"$1"');
  const sm = JSON.parse(text, (_k, v) => (v === '-Infinity' ? -Infinity : v === 'Infinity' ? Infinity : v === 'NaN' ? NaN : v)) as { runs: SchedRun[] };
  const read = (r: SchedRun, e: TensorEntry): Float32Array => {
    const buf = readFileSync(fx(`schedulers/${r.file}`));
    return new Float32Array(Uint8Array.prototype.slice.call(buf, e.offset, e.offset + e.nbytes).buffer);
  };
  // one-step schedulers: a run started at step k from diffusers' x_k gives diffusers' x_{k+1}
  const single = sm.runs.filter((r) => ['DDIMScheduler', 'EulerDiscreteScheduler', 'EulerAncestralDiscreteScheduler'].includes(r.class));
  test('three single-step runs in the schedulers fixture', () => assert.equal(single.length, 3));
  for (const r of single) {
    test(`${r.name}: steps 7 and 13 started alone`, () => {
      for (const k of [7, 13]) {
        const s = createScheduler(r.class, { ...r.config, _class_name: r.class });
        s.setTimesteps(20);
        startMidSchedule(s, k);
        const st = r.steps[k]!;
        const x = read(r, r.steps[k - 1]!.prev_sample);
        // Euler draws its (unused) churn noise too; Euler a uses it
        assert.ok(!st.noise || st.noise.length === 1);
        const noise = st.noise ? read(r, st.noise[0]!) : null;
        const gen: RandomSource = { randn: () => noise!.slice() };
        const mi = s.scaleModelInput(x, st.t);
        assert.ok(maxAbsDiff(mi, read(r, st.model_input)) <= 1e-6);
        const out = s.step(read(r, st.eps), st.t, x, noise ? gen : undefined);
        assert.ok(maxAbsDiff(out, read(r, st.prev_sample)) <= 2e-6, `${r.name} k=${k}: ${maxAbsDiff(out, read(r, st.prev_sample))}`);
      }
    });
  }

  test('every sampler runs a truncated schedule from its begin index (finite, one output per call)', () => {
    const cfg = CASES[0]!.scheduler.config;
    const names = ['euler_a', 'euler', 'ddim', 'dpmpp_2m', 'dpmpp_2m_karras', 'dpmpp_2m_sde', 'pndm', 'lms', 'heun', 'dpmpp_sde', 'unipc', 'lcm'];
    for (const name of names) {
      const s = createScheduler(name, { ...cfg });
      s.setTimesteps(10);
      const tr = truncatedSchedule(s, 10, 0.5);
      startMidSchedule(s, tr.beginIndex);
      const g = new TorchGenerator(3);
      let x = g.randn([1, 4, 4, 4]);
      for (const t of tr.timesteps) {
        const mi = s.scaleModelInput(x, t);
        const eps = mi.map((v) => 0.1 * v * Math.cos(t / 100));
        x = s.step(eps, t, x, g);
        assert.ok(x.every(Number.isFinite), `${name} at t=${t}`);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Inpainting masks

describe('inpainting masks', () => {
  const c = CASES.find((k) => k.mode === 'inpaint')!;
  test('binarized mask and latent mask as diffusers makes them', async () => {
    const mask = await loadMask(path.join(DIR, c.mask_image!), c.width, c.height);
    assert.equal(mask.resized, false);
    const binary = binarizeMask(mask.gray);
    assert.equal(maxAbsDiff(binary, tensor(c, 'mask_binary_u8') as Uint8Array), 0);
    assert.equal(maxAbsDiff(latentMask(binary, c.width, c.height, 8), f32t(c, 'mask_latent')), 0);
    const ones = binary.reduce((a, v) => a + v, 0);
    assert.ok(ones > 0 && ones < binary.length, 'the mask repaints part of the picture');
  });

  test('PIL luma, inversion, masked image', () => {
    const rgb = Uint8Array.from([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
    assert.deepEqual(Array.from(toGray(rgb, 4, 1, 3)), [76, 150, 29, 255]);
    const rgba = Uint8Array.from([255, 0, 0, 7, 0, 255, 0, 0]);
    assert.deepEqual(Array.from(toGray(rgba, 2, 1, 4)), [76, 150]);
    assert.deepEqual(Array.from(invertMask(Uint8Array.from([0, 127, 128, 255]))), [255, 128, 127, 0]);
    assert.deepEqual(Array.from(binarizeMask(Uint8Array.from([0, 127, 128, 255]))), [0, 0, 1, 1]);
    const input = Float32Array.from([0.5, -0.5, 1, -1, 0.25, 0.75]); // 2 pixels × 3 channels (planar)
    assert.deepEqual(Array.from(maskImageInput(input, Uint8Array.from([0, 1]))), [0.5, 0, 1, 0, 0.25, 0]);
  });

  test('mask blur: A1111\'s kernel size, reflect-101 borders, mass kept, 0 = unchanged', () => {
    const k = gaussianKernel(2 * Math.floor(2.5 * 4 + 0.5) + 1, 4);
    assert.equal(k.length, 21);
    assert.ok(Math.abs(k.reduce((a, v) => a + v, 0) - 1) < 1e-12);
    assert.ok(Math.abs(k[0]! - k[20]!) < 1e-15 && k[10]! > k[9]!);
    const w = 32;
    const h = 24;
    const flat = new Uint8Array(w * h).fill(200);
    assert.deepEqual(blurMask(flat, w, h, 3), flat);
    const sq = new Uint8Array(w * h);
    for (let y = 8; y < 16; y++) for (let x = 10; x < 22; x++) sq[y * w + x] = 255;
    assert.deepEqual(blurMask(sq, w, h, 0), sq);
    const b = blurMask(sq, w, h, 2);
    assert.ok(b[12 * w + 16]! > 240 && b[12 * w + 16]! <= 255, 'centre stays white');
    assert.ok(b[12 * w + 9]! > 0 && b[12 * w + 9]! < 200, 'the edge fades outward');
    assert.equal(b[0], 0);
    const mass = (a: Uint8Array): number => a.reduce((s, v) => s + v, 0);
    assert.ok(Math.abs(mass(b) - mass(sq)) / mass(sq) < 0.01);
    // symmetric square → symmetric blur
    for (let y = 0; y < h; y++) for (let x = 0; x < 16; x++) assert.equal(b[y * w + x], b[y * w + (31 - x)]);
  });

  test('overlay: init outside the mask, generated inside, a mix on the blurred edge', () => {
    const gen = Uint8Array.from([10, 20, 30, 10, 20, 30, 10, 20, 30]);
    const init = Uint8Array.from([200, 100, 0, 200, 100, 0, 200, 100, 0]);
    assert.deepEqual(Array.from(overlayInit(gen, init, Uint8Array.from([0, 255, 51]))), [200, 100, 0, 10, 20, 30, 162, 84, 6]);
  });
});

// ---------------------------------------------------------------------------------------------
// Latent upscalers

describe('latent upscalers', () => {
  test('Latent: the hires case\'s upscaled latents (bilinear, align_corners False)', () => {
    const hires = CASES.filter((c) => c.mode === 'hires');
    assert.equal(hires.length, 1);
    for (const c of hires) {
      const up = resolveHiresUpscaler(c.upscaler!);
      assert.equal(up.kind, 'latent');
      const fp = c.first_pass!;
      const out = interpolate(f32t(c, 'pass1_final_latents'), [1, 4, fp.height / 8, fp.width / 8], c.height / 8, c.width / 8, (up as { mode: LatentUpscaleMode }).mode);
      // float32 rounding of torch's kernel (one ulp at most)
      assert.ok(relDiff(out, f32t(c, 'upscaled_latents')) <= 2e-7, `${relDiff(out, f32t(c, 'upscaled_latents'))}`);
    }
  });

  test('A1111 names, case-insensitive; others are usage errors', () => {
    assert.deepEqual(resolveHiresUpscaler('latent (bicubic antialiased)'), { kind: 'latent', name: 'Latent (bicubic antialiased)', mode: 'bicubic-aa' });
    assert.deepEqual(resolveHiresUpscaler('Latent (nearest-exact)'), { kind: 'latent', name: 'Latent (nearest-exact)', mode: 'nearest-exact' });
    assert.deepEqual(resolveHiresUpscaler('lanczos'), { kind: 'pixel', name: 'Lanczos' });
    assert.deepEqual(resolveHiresUpscaler('Nearest'), { kind: 'pixel', name: 'Nearest' });
    assert.throws(() => resolveHiresUpscaler('ESRGAN_4x'), UsageError);
  });

  const ramp = (h: number, w: number): Float32Array => Float32Array.from({ length: h * w }, (_, i) => 3 * Math.floor(i / w) + 0.5 * (i % w));

  test('nearest and nearest-exact pick floor(dst·in/out) and floor((dst+½)·in/out)', () => {
    const x = Float32Array.from([0, 1, 2]);
    assert.deepEqual(Array.from(interpolate(x, [1, 1, 1, 3], 1, 6, 'nearest')), [0, 0, 1, 1, 2, 2]);
    // 3 → 5: scale 0.6; nearest floor(0, .6, 1.2, 1.8, 2.4); exact floor(.3, .9, 1.5, 2.1, 2.7)
    assert.deepEqual(Array.from(interpolate(x, [1, 1, 1, 3], 1, 5, 'nearest')), [0, 0, 1, 1, 2]);
    assert.deepEqual(Array.from(interpolate(x, [1, 1, 1, 3], 1, 5, 'nearest-exact')), [0, 0, 1, 2, 2]);
  });

  test('bilinear 2×: quarter/three-quarter weights, borders repeated', () => {
    const x = Float32Array.from([0, 4, 8]);
    assert.deepEqual(Array.from(interpolate(x, [1, 1, 1, 3], 1, 6, 'bilinear')), [0, 1, 3, 5, 7, 8]);
  });

  test('antialiased bilinear: equal to bilinear when upscaling, a [1,3,3,1]/8 filter when halving', () => {
    const x = new TorchGenerator(5).randn([1, 2, 6, 10]);
    const a = interpolate(x, [1, 2, 6, 10], 15, 23, 'bilinear');
    const b = interpolate(x, [1, 2, 6, 10], 15, 23, 'bilinear-aa');
    assert.ok(maxAbsDiff(a, b) < 1e-6);
    const row = Float32Array.from([8, 0, 0, 0, 16, 0, 0, 0]);
    const half = interpolate(row, [1, 1, 1, 8], 1, 4, 'bilinear-aa');
    // output 0 takes samples 0..2 (weights .75,.75,.25 normalized), output 1 samples 1..4
    assert.ok(maxAbsDiff(half, [8 * 0.75 / 1.75, 16 / 8, 16 * 3 / 8, 0]) < 1e-6, Array.from(half).join());
  });

  test('bicubic (A = −0.75): identity at the same size, Keys weights at a quarter offset; antialiased (A = −0.5) exact on a ramp', () => {
    const x = new TorchGenerator(6).randn([1, 1, 5, 7]);
    assert.ok(maxAbsDiff(interpolate(x, [1, 1, 5, 7], 5, 7, 'bicubic'), x) < 1e-6);
    // 0…7 doubled: output 4 samples src 1.75 from taps 0..3 with weights
    // (−0.03515625, 0.26171875, 0.87890625, −0.10546875) → 1.703125 (A = −0.75 does not reproduce a ramp)
    const row = Float32Array.from({ length: 8 }, (_, i) => i);
    const up = interpolate(row, [1, 1, 1, 8], 1, 16, 'bicubic');
    assert.equal(up[4], 1.703125);
    // output 0: src −0.25, taps −2…1 clamped to samples 0, 0, 0, 1: only sample 1 (value 1) counts
    assert.equal(up[0], -0.10546875);
    // A = −0.5 (Keys' third-order choice) reproduces a linear ramp away from the borders
    const r = ramp(8, 8);
    const upaa = interpolate(r, [1, 1, 8, 8], 16, 16, 'bicubic-aa');
    for (let y = 4; y < 12; y++) for (let xx = 4; xx < 12; xx++) {
      assert.ok(Math.abs(upaa[y * 16 + xx]! - (3 * ((y + 0.5) / 2 - 0.5) + 0.5 * ((xx + 0.5) / 2 - 0.5))) < 1e-5, `${y},${xx}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Init pictures

describe('init pictures', () => {
  let tmp: string;
  before(() => (tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-i2i-img-'))));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('the picture at its own size is used bit for bit; another size is resized to the target', async () => {
    const file = path.join(DIR, 'init_512x512.png');
    const a = await loadInitImage(file, 512, 512);
    const { default: sharp } = await import('sharp');
    const raw = await sharp(file).raw().toBuffer();
    assert.equal(maxAbsDiff(a.rgb, raw), 0);
    assert.match(a.sha256, /^[0-9a-f]{64}$/);
    const b = await loadInitImage(file, 256, 384);
    assert.deepEqual([b.width, b.height, b.resized, b.sourceWidth, b.sourceHeight, b.rgb.length], [256, 384, true, 512, 512, 256 * 384 * 3]);
    // RGBA and JPEG inputs decode to RGB
    const rgba = path.join(tmp, 'a.webp');
    await sharp(file).ensureAlpha(0.5).webp({ lossless: true }).toFile(rgba);
    const c = await loadInitImage(rgba, 512, 512);
    assert.equal(maxAbsDiff(c.rgb, raw), 0);
    const jpg = path.join(tmp, 'a.jpg');
    await sharp(file).jpeg({ quality: 95 }).toFile(jpg);
    assert.equal((await loadInitImage(jpg, 512, 512)).rgb.length, 512 * 512 * 3);
  });

  test('missing or unreadable files are one-line usage errors', async () => {
    await assert.rejects(loadInitImage(path.join(tmp, 'nope.png'), 64, 64), (e: Error) => e instanceof UsageError && /init image .*nope\.png: cannot read it \(no such file\)/.test(e.message));
    const txt = path.join(tmp, 'x.png');
    writeFileSync(txt, 'not a picture');
    await assert.rejects(loadInitImage(txt, 64, 64), (e: Error) => e instanceof UsageError && /not a readable PNG, JPEG or WebP/.test(e.message));
    await assert.rejects(loadMask(tmp, 64, 64), (e: Error) => e instanceof UsageError && /mask .*it is a folder/.test(e.message));
  });

  test('encoder input: 2·(u8/255) − 1, planar', () => {
    const x = rgbToEncoderInput({ rgb: Uint8Array.from([0, 255, 51, 128, 0, 255]), width: 2, height: 1 });
    assert.deepEqual(Array.from(x), [-1, Math.fround(Math.fround(2 * Math.fround(128 / 255)) - 1), 1, -1, Math.fround(Math.fround(2 * Math.fround(51 / 255)) - 1), 1]);
  });

  test('pixel upscalers: Nearest repeats pixels, Lanczos keeps a flat picture flat', () => {
    const rgb = Uint8Array.from({ length: 8 * 8 * 3 }, (_, i) => i);
    const n = resizeRgb({ rgb, width: 8, height: 8 }, 16, 16, 'Nearest');
    // output (x, y) is input (x >> 1, y >> 1)
    for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) for (let c = 0; c < 3; c++) assert.equal(n.rgb[(y * 16 + x) * 3 + c], rgb[((y >> 1) * 8 + (x >> 1)) * 3 + c]);
    const flat = new Uint8Array(8 * 8 * 3).fill(77);
    const l = resizeRgb({ rgb: flat, width: 8, height: 8 }, 16, 12, 'Lanczos');
    assert.deepEqual([l.width, l.height], [16, 12]);
    assert.ok(l.rgb.every((v) => v === 77));
  });
});

// ---------------------------------------------------------------------------------------------
// End to end through StableDiffusionPipeline.generate: the start latents, timesteps, final
// latents and the image within 2/255 of diffusers'

describe('img2img, inpainting and hires through the pipeline', () => {
  let cacheDir: string;
  const pipes = new Map<string, StableDiffusionPipeline>();
  const notices: string[] = [];
  before(() => (cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-i2i-pipe-'))));
  after(async () => {
    for (const p of pipes.values()) await p.dispose();
    rmSync(cacheDir, { recursive: true, force: true });
  });
  async function pipeline(name: string): Promise<StableDiffusionPipeline> {
    let p = pipes.get(name);
    if (!p) {
      p = await StableDiffusionPipeline.load(path.join(FIXTURES_DIR, name), { device: 'cpu', cacheDir }, { onNotice: (m) => notices.push(m) }, { optimizedCache: false });
      pipes.set(name, p);
    }
    return p;
  }
  function paramsOf(c: Img2ImgCase): GenerationParams {
    return generationParams({
      prompt: 'a photo of a cat', negativePrompt: (c as unknown as { negative_prompt: string }).negative_prompt, width: c.width, height: c.height,
      steps: typeof c.steps === 'number' ? c.steps : c.steps.first, cfg: 7.5, seed: c.seeds[0]!, scheduler: c.scheduler.class, vaeTiling: 'off',
    });
  }
  interface Seen { timesteps: number[][]; initial: Float32Array[]; final: Float32Array[]; steps: string[] }
  async function run(c: Img2ImgCase, p: GenerationParams): Promise<{ images: GeneratedImage[]; seen: Seen }> {
    const seen: Seen = { timesteps: [], initial: [], final: [], steps: [] };
    const pipe = await pipeline(c.pipeline);
    const images: GeneratedImage[] = [];
    for await (const img of pipe.generate(p, {
      onTimesteps: (t) => seen.timesteps.push([...t]),
      onInitialLatents: (_s, l) => seen.initial.push(l[0]!),
      onFinalLatents: (_s, l) => seen.final.push(l[0]!),
      onNotice: (m) => notices.push(m),
      onStep: (step, total, _b, _n, phase) => seen.steps.push(`${phaseLabel(phase)} ${step}/${total}`),
    })) images.push(img);
    return { images, seen };
  }
  function checkImage(c: Img2ImgCase, img: GeneratedImage, final: Float32Array): void {
    assert.deepEqual([img.width, img.height], [c.width, c.height]);
    const rel = relDiff(final, f32t(c, 'final_latents'));
    assert.ok(rel < 2e-3, `final latents ${rel}`);
    const d = maxAbsDiff(img.rgb, tensor(c, 'image_u8') as Uint8Array);
    assert.ok(d <= 2, `image differs by ${d}/255`);
  }
  const byMode = (mode: string) => CASES.filter((c) => c.mode === mode);
  test('case counts: two img2img, one inpaint, one hires', () => {
    assert.deepEqual([byMode('img2img').length, byMode('inpaint').length, byMode('hires').length], [2, 1, 1]);
  });

  for (const c of byMode('img2img')) {
    test(`${c.id}`, async () => {
      const file = path.join(DIR, c.init_image!);
      const { images, seen } = await run(c, { ...paramsOf(c), init: { path: file, strength: c.strength } });
      assert.equal(images.length, 1);
      assert.deepEqual(seen.timesteps, [c.timesteps]);
      assert.ok(relDiff(seen.initial[0]!, f32t(c, 'noised_latents')) < ENC_TOL);
      checkImage(c, images[0]!, seen.final[0]!);
      // recorded: the init picture by path and hash
      const sha = createHash('sha256').update(readFileSync(file)).digest('hex');
      assert.deepEqual(images[0]!.params.init, { path: file, strength: c.strength, sha256: sha });
    });
  }

  for (const c of byMode('inpaint')) {
    test(`${c.id}`, async () => {
      const { images, seen } = await run(c, {
        ...paramsOf(c), init: { path: path.join(DIR, c.init_image!), strength: c.strength }, mask: { path: path.join(DIR, c.mask_image!), blur: 0, invert: false },
      });
      assert.deepEqual(seen.timesteps, [c.timesteps]);
      assert.equal(maxAbsDiff(seen.initial[0]!, f32t(c, 'noised_latents')), 0);
      checkImage(c, images[0]!, seen.final[0]!);
      assert.match(images[0]!.params.mask!.sha256!, /^[0-9a-f]{64}$/);
    });
  }

  for (const c of byMode('hires')) {
    test(`${c.id}`, async () => {
      const fp = c.first_pass!;
      const second = (c.steps as { second: number }).second;
      const hires = { width: c.width, height: c.height, upscaler: c.upscaler!, strength: c.strength, steps: Math.floor(second * c.strength) };
      const { images, seen } = await run(c, { ...paramsOf(c), width: fp.width, height: fp.height, hires });
      assert.equal(images.length, 1);
      assert.deepEqual(seen.timesteps, [fp.timesteps, c.second_pass!.timesteps]);
      assert.ok(maxAbsDiff(seen.initial[0]!, f32t(c, 'pass1_initial_latents')) <= 1e-6);
      assert.ok(relDiff(seen.final[0]!, f32t(c, 'pass1_final_latents')) < 2e-3);
      assert.ok(relDiff(seen.initial[1]!, f32t(c, 'noised_latents')) < 2e-3);
      checkImage(c, images[0]!, seen.final[1]!);
      assert.deepEqual(images[0]!.params.hires?.width, c.width);
    });
  }

  test('pixel-space hires (Nearest) and inpainting with a blurred mask, at small sizes', async () => {
    const c = byMode('img2img').find((k) => k.pipeline === 'tiny-sd1')!;
    const base = { ...paramsOf(c), steps: 3, width: 64, height: 64, scheduler: 'euler_a' };
    const { images, seen } = await run(c, { ...base, hires: { width: 128, height: 96, upscaler: 'Nearest', strength: 0.5, steps: 2 } });
    assert.deepEqual([images.length, images[0]!.width, images[0]!.height], [1, 128, 96]);
    assert.deepEqual(seen.timesteps.map((t) => t.length), [3, 2]); // pass 2: 4 steps at 0.5 run 2
    // progress names each pass and its size
    assert.deepEqual(seen.steps, ['pass 1/2 64×64 1/3', 'pass 1/2 64×64 2/3', 'pass 1/2 64×64 3/3', 'hires 2/2 128×96 1/2', 'hires 2/2 128×96 2/2']);
    // inpainting with mask blur: outside the blurred mask the result is the init picture itself
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-i2i-blur-'));
    try {
      const { default: sharp } = await import('sharp');
      const initFile = path.join(tmp, 'init.png');
      const maskFile = path.join(tmp, 'mask.png');
      const init = Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 13) % 251);
      await sharp(Buffer.from(init), { raw: { width: 64, height: 64, channels: 3 } }).png().toFile(initFile);
      const m = Uint8Array.from({ length: 64 * 64 }, (_, i) => (i % 64 >= 32 ? 255 : 0));
      await sharp(Buffer.from(m), { raw: { width: 64, height: 64, channels: 1 } }).png().toFile(maskFile);
      const r = await run(c, { ...base, init: { path: initFile, strength: 0.8 }, mask: { path: maskFile, blur: 2, invert: false } });
      const gray = blurMask(m, 64, 64, 2);
      const out = r.images[0]!.rgb;
      let kept = 0;
      let changed = 0;
      for (let p = 0; p < 64 * 64; p++) {
        for (let ch = 0; ch < 3; ch++) {
          if (gray[p] === 0) assert.equal(out[p * 3 + ch], init[p * 3 + ch], `pixel ${p}`);
          else if (gray[p] === 255 && out[p * 3 + ch] !== init[p * 3 + ch]) changed++;
        }
        if (gray[p] === 0) kept++;
      }
      assert.ok(kept > 1000 && changed > 1000, `${kept} kept, ${changed} changed`);
      assert.match(formatInfotext(r.images[0]!.params), /Denoising strength: 0\.8, Mask blur: 2/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('bad input: one clear line each', async () => {
    const c = byMode('img2img').find((k) => k.pipeline === 'tiny-sd1')!;
    const pipe = await pipeline('tiny-sd1');
    const drain = async (p: GenerationParams) => {
      for await (const _ of pipe.generate(p)) void _;
    };
    const base = { ...paramsOf(c), steps: 2, width: 64, height: 64 };
    await assert.rejects(drain({ ...base, mask: { path: path.join(DIR, c.init_image!), blur: 0, invert: false } }), (e: Error) => e instanceof UsageError && /--mask needs --init-image/.test(e.message));
    await assert.rejects(drain({ ...base, init: { path: path.join(DIR, c.init_image!), strength: 1.5 } }), (e: Error) => e instanceof UsageError && /strength must be a number in \(0, 1\]/.test(e.message));
    await assert.rejects(drain({ ...base, init: { path: path.join(DIR, 'missing.png'), strength: 0.5 } }), (e: Error) => e instanceof UsageError && /cannot read it/.test(e.message));
    await assert.rejects(drain({ ...base, hires: { width: 100, height: 128, upscaler: 'Latent', strength: 0.5, steps: 0 } }), (e: Error) => e instanceof UsageError && /hires width must be a positive multiple of 8/.test(e.message));
    await assert.rejects(drain({ ...base, hires: { width: 128, height: 128, upscaler: 'Bogus', strength: 0.5, steps: 0 } }), (e: Error) => e instanceof UsageError && /unknown hires upscaler/.test(e.message));
  });
});

// ---------------------------------------------------------------------------------------------
// Tiled VAE (diffusers' tiled_decode / tiled_encode)

describe('tiled VAE', () => {
  test('tile specs of SD\'s VAE (sample_size 512): 64-latent tiles every 48, 128-pixel blends, 384 kept', () => {
    assert.deepEqual(decodeTileSpec(512), { tile: 64, stride: 48, scale: 8, blend: 128, limit: 384 });
    assert.deepEqual(encodeTileSpec(512), { tile: 512, stride: 384, scale: 1 / 8, blend: 16, limit: 48 });
    const GB = 2 ** 30;
    assert.equal(shouldTile('auto', 2048 * 2048, 24 * GB), true);
    assert.equal(shouldTile('auto', 1024 * 1024, 24 * GB), false);
    assert.equal(shouldTile('on', 64, 24 * GB), true);
    assert.equal(shouldTile('off', 8192 * 8192, 24 * GB), false);
  });

  test('assembly: crops add up to the whole; a pointwise "VAE" gives the untiled result', async () => {
    // a decoder stand-in without any spatial context: nearest ×8 upsampling then ×2 + 1, per pixel
    const spec = decodeTileSpec(128); // 16-latent tiles every 12, blend 32, keep 96
    for (const [h, w] of [[100, 36], [16, 17], [40, 40]] as const) {
      const x: Planes = { data: new TorchGenerator(h).randn([3 * h * w]), c: 3, h, w };
      const local = async (t: Planes): Promise<Planes> => {
        const H = t.h * 8;
        const W = t.w * 8;
        const out = new Float32Array(t.c * H * W);
        for (let c = 0; c < t.c; c++) for (let y = 0; y < H; y++) for (let xx = 0; xx < W; xx++) {
          out[c * H * W + y * W + xx] = Math.fround(2 * t.data[c * t.h * t.w + (y >> 3) * t.w + (xx >> 3)]! + 1);
        }
        return { data: out, c: t.c, h: H, w: W };
      };
      const whole = await local(x);
      const tiled = await tiledApply(x, spec, local);
      assert.deepEqual([tiled.c, tiled.h, tiled.w], [3, 8 * h, 8 * w]);
      // overlaps hold equal values, so the ramps change nothing but the last bit
      assert.ok(relDiff(tiled.data, whole.data) < 1e-6, `${h}×${w}: ${relDiff(tiled.data, whole.data)}`);
    }
  });

  test('blends: a linear ramp between two tiles of constant values', async () => {
    // two tiles side by side: the left one decodes to 0, the right one to 1 (by tile position)
    const spec = { tile: 4, stride: 3, scale: 1, blend: 2, limit: 3 };
    const x: Planes = { data: new Float32Array(6), c: 1, h: 1, w: 6 };
    let k = 0;
    const out = await tiledApply(x, spec, async (t) => ({ data: new Float32Array(t.w).fill(k++), c: 1, h: 1, w: t.w }));
    // tile 0 covers 0..3 (kept 0..2); tile 1 covers 3..5: columns blend 1·(0) then ½·0 + ½·1
    assert.deepEqual(Array.from(out.data), [0, 0, 0, 0, 0.5, 1]);
  });

  test('tiny-sd1: the tiled decode is close to the untiled one (64×64 latents in 32-latent tiles)', async () => {
    const c = CASES.find((k) => k.mode === 'img2img' && k.pipeline === 'tiny-sd1')!;
    const sessions = new SessionManager({ device: 'cpu' }, () => {});
    const m = await sessions.open(fx('tiny-sd1/vae_decoder/model.onnx'), 'vae decoder', { optimizedCache: false });
    try {
      const io = vaeDecoderIO(m.info);
      const final = f32t(c, 'final_latents');
      const whole = await new VaeDecoder(m.session, io, 0.18215).decode(final, 64, 64);
      const tiled = await new TiledVaeDecoder(m.session, io, 0.18215, decodeTileSpec(256)).decode(final, 64, 64);
      assert.deepEqual([tiled.width, tiled.height], [512, 512]);
      let sum = 0;
      for (let i = 0; i < whole.rgb.length; i++) sum += Math.abs(whole.rgb[i]! - tiled.rgb[i]!);
      const mean = sum / whole.rgb.length;
      // group norms see each tile's own statistics: a difference, small on average (1.3 levels here)
      assert.ok(mean < 2.5, `mean |Δ| ${mean}`);
      assert.ok(mean > 0, 'tiles were really decoded alone');
    } finally {
      await m.release();
    }
  });

  test('tiled encode: an encoder split into tiles gives the untiled parameters for a pointwise encoder', async () => {
    // an "encoder" of stride 8 without context: AveragePool 8×8 then 8 output channels by a 1×1 conv
    const b = new GraphBuilder({ opset: 14 });
    const x = b.input('sample', DataType.FLOAT, [1, 3, 'h', 'w']);
    const p = b.op('AveragePool', [x], { kernel_shape: { ints: [8, 8] }, strides: { ints: [8, 8] } });
    const wv = Float32Array.from({ length: 24 }, (_, i) => ((i * 7) % 5) / 5 - 0.4);
    const w = b.anonConstant(constTensor(DataType.FLOAT, [8, 3, 1, 1], Array.from(wv)), 'Conv');
    b.output(b.op('Conv', [p, w], {}, { outputs: ['latent_parameters'] }), DataType.FLOAT, [1, 8, 'lh', 'lw']);
    const s = await ort.InferenceSession.create(encodeModel(b.build()));
    const enc = new VaeEncoder(s, { input: { name: 'sample', type: 'float32' }, output: { name: 'latent_parameters', type: 'float32' }, kind: 'parameters' }, 0.18215);
    const img = new TorchGenerator(9).randn([3 * 96 * 160]);
    const whole = await enc.run(img, 160, 96);
    enc.tiling = encodeTileSpec(32); // 32-pixel tiles every 24, 1-latent blend, keep 3
    const tiled = await enc.run(img, 160, 96);
    assert.deepEqual([tiled.channels, tiled.height, tiled.width], [8, 12, 20]);
    assert.ok(relDiff(tiled.data, whole.data) < 1e-6);
    await s.release();
  });
});

// ---------------------------------------------------------------------------------------------
// 9-channel inpainting UNets and the draw order of inpainting starts

describe('inpainting starts and 9-channel UNets', () => {
  // a pointwise stand-in encoder of stride 8 (AveragePool, then a 1×1 conv to mean|logvar)
  async function standInEncoder(): Promise<{ enc: VaeEncoder; release: () => Promise<void> }> {
    const b = new GraphBuilder({ opset: 14 });
    const x = b.input('sample', DataType.FLOAT, [1, 3, 'h', 'w']);
    const p = b.op('AveragePool', [x], { kernel_shape: { ints: [8, 8] }, strides: { ints: [8, 8] } });
    const w = b.anonConstant(constTensor(DataType.FLOAT, [8, 3, 1, 1], Array.from({ length: 24 }, (_, i) => (i % 7) / 7 - 0.5)), 'Conv');
    b.output(b.op('Conv', [p, w], {}, { outputs: ['latent_parameters'] }), DataType.FLOAT, [1, 8, 'lh', 'lw']);
    const s = await ort.InferenceSession.create(encodeModel(b.build()));
    const enc = new VaeEncoder(s, { input: { name: 'sample', type: 'float32' }, output: { name: 'latent_parameters', type: 'float32' }, kind: 'parameters' }, 0.18215);
    return { enc, release: () => s.release() };
  }
  const W = 32;
  const H = 16;
  const image = { rgb: Uint8Array.from({ length: W * H * 3 }, (_, i) => (i * 37) % 256), width: W, height: H };
  const binary = Uint8Array.from({ length: W * H }, (_, i) => (i % W >= 16 ? 1 : 0));
  const lmask = latentMask(binary, W, H, 8);
  const sched = (): TailScheduler => TailScheduler.create(createScheduler('ddim', { ...CASES[0]!.scheduler.config }), 4, 1);

  test('draw order per generator: 4 channels encode, noise, masked draw; 9 channels at strength 1 noise, masked encode', async () => {
    const { enc, release } = await standInEncoder();
    try {
      const input = rgbToEncoderInput(image);
      const dist = await enc.distribution(input, W, H);
      const distMasked = await enc.distribution(maskImageInput(input, binary), W, H);
      const shape = [1, 4, H / 8, W / 8];
      const ref = new TorchGenerator(7);
      const d1 = ref.randn(shape);
      const d2 = ref.randn(shape);
      const d3 = ref.randn(shape);
      const sample = (d: typeof dist, n: Float32Array) => sampleLatents(d, { randn: () => n.slice() }, 0.18215);

      const g4 = new TorchGenerator(7);
      const s4 = await inpaintStart(enc, image, binary, lmask, sched(), 1, g4, 4);
      assert.deepEqual(Array.from(s4.blend!.initLatents), Array.from(sample(dist, d1)));
      assert.deepEqual(Array.from(s4.blend!.noise), Array.from(d2));
      assert.deepEqual(Array.from(s4.latents), Array.from(d2)); // × init_noise_sigma = 1 (DDIM)
      assert.equal(s4.extraChannels, null);
      // the masked picture's draw was made too (unused by a 4-channel UNet): the next draw is the fourth
      ref.randn([1]);
      void d3;
      const after = new TorchGenerator(7);
      for (let k = 0; k < 3; k++) after.randn(shape);
      assert.deepEqual(Array.from(g4.randn([20])), Array.from(after.randn([20])));

      const g9 = new TorchGenerator(7);
      const s9 = await inpaintStart(enc, image, binary, lmask, sched(), 1, g9, 9);
      assert.equal(s9.blend, null);
      assert.deepEqual(Array.from(s9.latents), Array.from(d1)); // no init encode at strength 1: the noise comes first
      const plane = lmask.length;
      assert.deepEqual(Array.from(s9.extraChannels!.subarray(0, plane)), Array.from(lmask));
      assert.deepEqual(Array.from(s9.extraChannels!.subarray(plane)), Array.from(sample(distMasked, d2)));
    } finally {
      await release();
    }
  });

  test('denoiseBatch feeds [latents, mask, masked latents] on the sample input, in uncond and cond rows', async () => {
    const calls: Record<string, { dims: readonly number[]; data: Float32Array }>[] = [];
    const session = {
      async run(feeds: Record<string, ort.Tensor>, fetches: Record<string, ort.Tensor>) {
        const rec: (typeof calls)[number] = {};
        for (const [k, t] of Object.entries(feeds)) rec[k] = { dims: [...t.dims], data: Float32Array.from(t.data as ArrayLike<number>) };
        calls.push(rec);
        (fetches['out_sample']!.data as Float32Array).fill(0.01);
        return { out_sample: fetches['out_sample']! };
      },
    } as unknown as ort.InferenceSession;
    const io: UnetIO = {
      sample: { name: 'sample', type: 'float32', dims: [null, 9, null, null] },
      timestep: { name: 'timestep', type: 'float32', rank: 1, length: null },
      encoderHiddenStates: { name: 'encoder_hidden_states', type: 'float32', dim: null },
      timestepCond: null,
      tomeRand: [],
      output: { name: 'out_sample', type: 'float32' },
    } as UnetIO;
    const emb = (v: number): PromptEmbedding => ({ data: new Float32Array(6).fill(v), seqLen: 2, dim: 3, ids: [], chunks: 1, tokenCount: 0 });
    const n = 4 * 2 * 4;
    const extra = [Float32Array.from({ length: 5 * 8 }, (_, i) => 100 + i), Float32Array.from({ length: 5 * 8 }, (_, i) => 200 + i)];
    const s = [sched(), sched()];
    const latents = [new TorchGenerator(1).randn([n]), new TorchGenerator(2).randn([n])];
    const first = latents.map((l) => l.slice());
    await denoiseBatch({
      session, io, schedulers: s, generators: [new TorchGenerator(1), new TorchGenerator(2)], latents, latentHeight: 2, latentWidth: 4,
      cond: emb(1), uncond: emb(-1), cfg: 7, timestepCond: null, tomeRand: null, extraChannels: extra,
    });
    assert.equal(calls.length, 4);
    const x = calls[0]!['sample']!;
    assert.deepEqual(x.dims, [4, 9, 2, 4]);
    const row = 9 * 8;
    for (const [r, b] of [[0, 0], [1, 1], [2, 0], [3, 1]] as const) {
      assert.deepEqual(Array.from(x.data.subarray(r * row, r * row + n)), Array.from(first[b]!), `row ${r} latents`);
      assert.deepEqual(Array.from(x.data.subarray(r * row + n, (r + 1) * row)), Array.from(extra[b]!), `row ${r} extra channels`);
    }
    // a UNet whose sample input is fixed at 4 channels is told so
    await assert.rejects(
      denoiseBatch({
        session, io: { ...io, sample: { name: 'sample', type: 'float32', dims: [null, 4, null, null] } }, schedulers: [sched()], generators: [new TorchGenerator(1)],
        latents: [new Float32Array(n)], latentHeight: 2, latentWidth: 4, cond: emb(1), uncond: null, cfg: 1, timestepCond: null, tomeRand: null, extraChannels: [extra[0]!],
      }),
      /fixed channels of 4; this run needs 9/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Hires parameters

describe('hires parameters', () => {
  test('sizes: scale × the job\'s size, or the given side(s), multiples of 8', () => {
    assert.deepEqual(hiresSize({ width: 512, height: 768 }, { scale: 2 }), { width: 1024, height: 1536 });
    assert.deepEqual(hiresSize({ width: 512, height: 768 }, { scale: 1.5 }), { width: 768, height: 1152 });
    assert.deepEqual(hiresSize({ width: 512, height: 768 }, { width: 1024 }), { width: 1024, height: 1536 });
    assert.deepEqual(hiresSize({ width: 512, height: 512 }, { width: 1024, height: 768 }), { width: 1024, height: 768 });
    assert.throws(() => hiresSize({ width: 512, height: 512 }, { scale: 1.3 }), (e: Error) => e instanceof UsageError && /665×665 is not a multiple of 8/.test(e.message));
  });

  test('pass 2: hires size, prompt, sampler, ToMe, and the schedule whose tail runs the hires steps', () => {
    const p = generationParams({ width: 256, height: 256, steps: 20, seed: 5, prompt: 'a', negativePrompt: 'b', scheduler: 'euler_a' });
    const hires = { width: 512, height: 512, upscaler: 'Latent', strength: 0.7, steps: 10, prompt: 'c', scheduler: 'ddim', tome: { ...p.tome, ratio: 0.5 } };
    const p2 = secondPassParams({ ...p, hires }, 9);
    assert.deepEqual([p2.width, p2.height, p2.steps, p2.prompt, p2.negativePrompt, p2.scheduler, p2.tome.ratio, p2.seed, p2.hires], [512, 512, 15, 'c', 'b', 'ddim', 0.5, 9, undefined]);
    // hires steps 0: as many steps as the job's
    const p3 = secondPassParams({ ...p, hires: { ...hires, steps: 0, prompt: undefined, scheduler: undefined, tome: undefined } }, 9);
    assert.deepEqual([p3.steps, p3.prompt, p3.scheduler, p3.tome.ratio], [29, 'a', 'euler_a', 0]); // int(29·0.7) = 20
    const p1 = firstPassParams({ ...p, hires }, 9);
    assert.deepEqual([p1.width, p1.steps, p1.hires, p1.seed], [256, 20, undefined, 9]);
  });
});

// ---------------------------------------------------------------------------------------------
// Options → GenerationParams, and the infotext keys

describe('mode options and metadata', () => {
  const tome = generationParams().tome;
  const size = { width: 512, height: 768 };
  test('defaults: strength 0.75, no blur; hires ×2, Latent, denoising 0.7, steps 0', () => {
    assert.deepEqual(modeParams({}, size, tome), {});
    assert.deepEqual(modeParams({ initImage: 'a.png' }, size, tome), { init: { path: 'a.png', strength: 0.75 } });
    assert.deepEqual(modeParams({ initImage: 'a.png', strength: 0.4, mask: 'm.png', invertMask: true }, size, tome), {
      init: { path: 'a.png', strength: 0.4 }, mask: { path: 'm.png', blur: 0, invert: true },
    });
    assert.deepEqual(modeParams({ hires: true }, size, tome), { hires: { width: 1024, height: 1536, scale: 2, upscaler: 'Latent', strength: 0.7, steps: 0 } });
    const h = modeParams({ hires: true, hiresWidth: 1024, hiresUpscaler: 'Lanczos', denoisingStrength: 0.5, hiresSteps: 10, hiresTome: 0.5, vaeTiling: 'on' }, size, tome);
    assert.deepEqual(h, { vaeTiling: 'on', hires: { width: 1024, height: 1536, upscaler: 'Lanczos', strength: 0.5, steps: 10, tome: { ...tome, ratio: 0.5 } } });
  });

  test('bad combinations are one-line usage errors', () => {
    const bad: [Parameters<typeof modeParams>[0], RegExp][] = [
      [{ mask: 'm.png' }, /--mask needs --init-image/],
      [{ strength: 0.5 }, /--strength needs --init-image/],
      [{ initImage: 'a.png', strength: 0 }, /strength must be a number in \(0, 1\]/],
      [{ hiresScale: 2 }, /need --hires/],
      [{ hires: true, initImage: 'a.png' }, /txt2img mode/],
      [{ hires: true, hiresScale: 2, hiresWidth: 1024 }, /not both/],
      [{ hires: true, hiresScale: 1.01 }, /not a multiple of 8/],
      [{ hires: true, denoisingStrength: 0 }, /denoising strength must be a number in \(0, 1\]/],
    ];
    for (const [o, re] of bad) assert.throws(() => modeParams(o, size, tome), (e: Error) => e instanceof UsageError && re.test(e.message) && !e.message.includes('\n'), JSON.stringify(o));
  });

  test('A1111 infotext keys', () => {
    const p = generationParams({ prompt: 'x', steps: 20, seed: 1 });
    const i2i = formatInfotext({ ...p, init: { path: 'a.png', strength: 0.6 }, mask: { path: 'm.png', blur: 4, invert: true } });
    assert.match(i2i, /Denoising strength: 0\.6, Mask blur: 4, Mask mode: Inpaint not masked/);
    const hi = formatInfotext({ ...p, hires: { width: 1024, height: 1024, scale: 2, upscaler: 'Latent (bicubic)', strength: 0.7, steps: 10, tome: { ...p.tome, ratio: 0.5 } } }, { tomeApplied: true });
    assert.match(hi, /Denoising strength: 0\.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent \(bicubic\), Token merging ratio hr: 0\.5/);
    const rs = formatInfotext({ ...p, hires: { width: 1024, height: 768, upscaler: 'Lanczos', strength: 0.7, steps: 0 } });
    assert.match(rs, /Hires resize: 1024x768, Hires upscaler: Lanczos/);
  });
});
