/**
 * The LCM few-step path on a real graph: the synthesizer's LCM-style UNet (diffusers'
 * `time_cond_proj_dim`: input `timestep_cond`, `time_embedding.cond_proj`), the folder it writes
 * (LCMScheduler config), the pipeline running it with the lcm sampler, and the UNet's cond path
 * checked against the plain UNet with onnxruntime directly.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { UsageError } from '../src/errors.js';
import { decodeModel } from '../src/onnx/proto.js';
import { DataType, type ModelProto } from '../src/onnx/types.js';
import { float32ToFloat16, float16ToFloat32 } from '../src/onnx/tensor.js';
import { buildComponents, countParams, resolveArch, synthesize } from '../src/synth/index.js';
import { modelBytes } from '../src/synth/writer.js';
import { loadModelFolder } from '../src/models/folder.js';
import { StableDiffusionPipeline } from '../src/pipeline/pipeline.js';
import type { GeneratedImage } from '../src/pipeline/types.js';
import type { PromptEmbedding } from '../src/pipeline/text-encoding.js';
import { createScheduler } from '../src/schedulers/index.js';
import { LCM_DEFAULTS, guidanceScaleEmbedding, type LcmScheduler } from '../src/schedulers/lcm.js';
import { cmdSynth } from '../src/cli/commands.js';
import { generationParams as params, maxAbsDiff, spawnCli, type Ran } from './helpers.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const D = 256; // LCM_Dreamshaper_v7's time_cond_proj_dim
const TINY_T_IN = 32; // tiny UNet: block_out_channels[0], the width of the sinusoidal projection

let tmp = '';
before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-lcm-'));
});
after(() => rmSync(tmp, { recursive: true, force: true }));


const inputDims = (m: ModelProto, name: string): (string | number)[] =>
  m.graph!.input.find((v) => v.name === name)!.type!.tensorType!.shape!.dim.map((d) => d.dimParam ?? Number(d.dimValue));
const inputType = (m: ModelProto, name: string): number => m.graph!.input.find((v) => v.name === name)!.type!.tensorType!.elemType!;

/** The CLI as a child process through tsx (src/, whatever state dist/ is in). */
const cli = (args: string[]): Promise<Ran> =>
  spawnCli(['--import', import.meta.resolve('tsx'), path.join(ROOT, 'src/cli/main.ts')], args, { cwd: tmp, home: tmp });

// ---------------------------------------------------------------------------------------------
// The folder `sdgen synth --time-cond-proj-dim` writes, and the pipeline on it

describe('LCM folder from `sdgen synth --time-cond-proj-dim 256`', () => {
  let dir = '';
  let plain = '';
  before(async () => {
    dir = path.join(tmp, 'lcm');
    plain = path.join(tmp, 'plain');
    const [r] = await Promise.all([
      cli(['synth', '--arch', 'tiny', '--out', dir, '--seed', '3', '--time-cond-proj-dim', String(D), '--json']),
      synthesize({ arch: 'tiny', outDir: plain, seed: 3 }),
    ]);
    assert.equal(r.status, 0, r.stderr);
    const line = JSON.parse(r.stdout) as { params: { unet: number } };
    assert.deepEqual(line.params, countParams('tiny', 'sd1', D));
  });

  test('UNet input timestep_cond [batch, D], config time_cond_proj_dim D, default scheduler lcm', async () => {
    const json = (p: string) => JSON.parse(readFileSync(path.join(dir, p), 'utf8'));
    const m = decodeModel(readFileSync(path.join(dir, 'unet/model.onnx')));
    assert.deepEqual(m.graph!.input.map((v) => v.name), ['sample', 'timestep', 'encoder_hidden_states', 'timestep_cond']);
    assert.deepEqual(inputDims(m, 'timestep_cond'), ['batch', D]);
    assert.equal(inputType(m, 'timestep_cond'), DataType.FLOAT);
    assert.equal(json('unet/config.json').time_cond_proj_dim, D);
    // the plain folder: no cond input, no key
    const p = decodeModel(readFileSync(path.join(plain, 'unet/model.onnx')));
    assert.deepEqual(p.graph!.input.map((v) => v.name), ['sample', 'timestep', 'encoder_hidden_states']);
    assert.equal('time_cond_proj_dim' in JSON.parse(readFileSync(path.join(plain, 'unet/config.json'), 'utf8')), false);

    // cond_proj: a bias-free Linear D → 32, exported as MatMul on the transposed weight
    const mm = m.graph!.node.find((n) => n.name === '/time_embedding/cond_proj/MatMul')!;
    assert.equal(mm.opType, 'MatMul');
    assert.equal(mm.input[0], 'timestep_cond');
    const w = m.graph!.initializer.find((t) => t.name === mm.input[1])!;
    assert.deepEqual(w.dims.map(Number), [D, TINY_T_IN]);
    assert.ok(!m.graph!.initializer.some((t) => t.name!.startsWith('time_embedding.cond_proj.')), 'no bias');
    const add = m.graph!.node.find((n) => n.name === '/time_embedding/Add')!;
    assert.deepEqual(add.input, ['/Cast_output_0', mm.output[0]]);
    const l1 = m.graph!.node.find((n) => n.name === '/time_embedding/linear_1/Gemm')!;
    assert.equal(l1.input[0], add.output[0]);
    const params = countParams('tiny', 'sd1', D);
    assert.equal(params.unet - countParams('tiny').unet, D * TINY_T_IN);

    // the folder as sdgen reads it
    const folder = await loadModelFolder(dir);
    assert.equal(folder.timeCondProjDim, D);
    assert.equal(folder.defaultScheduler, 'lcm');
    assert.equal(folder.pipelineClass, 'LatentConsistencyModelPipeline');
    assert.deepEqual(folder.configs.modelIndex['scheduler'], ['diffusers', 'LCMScheduler']);
    const sched = json('scheduler/scheduler_config.json');
    assert.equal(sched._class_name, 'LCMScheduler');
    // every key sdgen's lcm reads is in the file, with its LCMScheduler default
    for (const [k, v] of Object.entries(LCM_DEFAULTS)) assert.deepEqual(sched[k], v, k);
    assert.deepEqual((createScheduler('lcm', folder.configs.scheduler) as LcmScheduler).config, LCM_DEFAULTS);
    assert.equal((await loadModelFolder(plain)).defaultScheduler, 'pndm');
  });

  test('lcm generation: one UNet row per image, the guidance embedding reaches the graph, same seed → same bytes', async () => {
    const cacheDir = path.join(tmp, 'cache');
    const pipe = await StableDiffusionPipeline.load(dir, { device: 'cpu', cacheDir });
    // Every UNet call, recorded at onnxruntime's InferenceSession.run (the pipeline's own session).
    const calls: { sample: readonly number[]; ehs: readonly number[]; timestep: number; cond: readonly number[]; condData: Float32Array }[] = [];
    // (the class behind onnxruntime-node's InferenceSession factory type, shared with src/)
    const proto = (ort.InferenceSession as unknown as { prototype: ort.InferenceSession }).prototype;
    const run0 = proto.run;
    proto.run = function (this: ort.InferenceSession, feeds: ort.InferenceSession.FeedsType, ...rest: unknown[]) {
      const c = feeds['timestep_cond'];
      if (c) {
        calls.push({
          sample: [...feeds['sample']!.dims],
          ehs: [...feeds['encoder_hidden_states']!.dims],
          timestep: Number((feeds['timestep']!.data as Float32Array)[0]),
          cond: [...c.dims],
          condData: Float32Array.from(c.data as Float32Array),
        });
      }
      return (run0 as (...a: unknown[]) => ReturnType<typeof run0>).call(this, feeds, ...rest);
    } as typeof run0;
    const gen = async (over: Parameters<typeof params>[0]) => {
      let uncond: PromptEmbedding | null | undefined;
      let initial: Float32Array[] = [];
      const images: GeneratedImage[] = [];
      const p = params({ prompt: 'a red fox', negativePrompt: 'blurry', width: 64, height: 64, steps: 4, cfg: 8, seed: 11, scheduler: '', ...over });
      for await (const img of pipe.generate(p, { onPrompts: (_c, u) => (uncond = u), onInitialLatents: (_s, l) => (initial = l.map((x) => x.slice())) })) {
        images.push(img);
      }
      return { images, uncond, initial };
    };
    try {
      assert.deepEqual(pipe.unetIO.timestepCond, { name: 'timestep_cond', type: 'float32', dim: D });

      const a = await gen({});
      assert.equal(a.images.length, 1);
      assert.equal(a.images[0]!.params.scheduler, 'lcm', 'the folder default');
      assert.equal(a.uncond, null, 'no unconditional prompt is encoded');
      // four UNet calls, one row each, LCM's timesteps, w = cfg − 1 embedded
      assert.equal(calls.length, 4);
      assert.deepEqual(calls.map((c) => c.timestep), [999, 759, 499, 259]);
      const emb8 = guidanceScaleEmbedding(7, D);
      for (const c of calls) {
        assert.deepEqual([c.sample, c.ehs, c.cond], [[1, 4, 8, 8], [1, 77, 32], [1, D]]);
        assert.deepEqual(c.condData, emb8);
      }

      calls.length = 0;
      const again = await gen({});
      assert.ok(Buffer.from(again.images[0]!.rgb).equals(Buffer.from(a.images[0]!.rgb)), 'same seed + guidance: identical bytes');

      // only the guidance scale changes: same initial latents, another embedding, another image
      calls.length = 0;
      const b = await gen({ cfg: 3 });
      assert.deepEqual(b.initial, a.initial);
      assert.deepEqual(calls[0]!.condData, guidanceScaleEmbedding(2, D));
      const ra = a.images[0]!.rgb;
      const rb = b.images[0]!.rgb;
      let differing = 0;
      for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) differing++;
      assert.ok(differing > ra.length / 4, `guidance 8 vs 3: ${differing} of ${ra.length} bytes differ`);

      // a batch of two: still one row per image
      calls.length = 0;
      const two = await gen({ batchSize: 2 });
      assert.equal(two.images.length, 2);
      assert.equal(calls.length, 4);
      for (const c of calls) assert.deepEqual([c.sample[0], c.ehs[0], c.cond[0]], [2, 2, 2]);
    } finally {
      proto.run = run0;
      await pipe.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The cond path itself, against the plain UNet (same seed), in onnxruntime directly

/** Sinusoidal timestep projection as the graph computes it (flip_sin_to_cos, shift 0), float64. */
function timeProj(t: number, dim: number): Float64Array {
  const half = dim / 2;
  const f32 = Math.fround;
  const out = new Float64Array(dim);
  for (let i = 0; i < half; i++) {
    const freq = f32(Math.exp(f32(f32(-Math.log(10000)) * i) / half));
    const arg = f32(t * freq);
    out[i] = Math.cos(arg);
    out[half + i] = Math.sin(arg);
  }
  return out;
}

/** Minimum-norm c with M·c = d for M [rows, cols] (rows ≤ cols, full rank): c = Mᵀ(MMᵀ)⁻¹d. */
function minNormSolve(M: Float64Array[], d: Float64Array): Float64Array {
  const n = M.length;
  const cols = M[0]!.length;
  const A = M.map((ri) => {
    const row = new Float64Array(n + 1);
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += ri[k]! * M[j]![k]!;
      row[j] = s;
    }
    return row;
  });
  A.forEach((row, i) => (row[n] = d[i]!));
  for (let col = 0; col < n; col++) {
    let piv = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(A[r]![col]!) > Math.abs(A[piv]![col]!)) piv = r;
    [A[col], A[piv]] = [A[piv]!, A[col]!];
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const f = A[r]![col]! / A[col]![col]!;
      for (let k = col; k <= n; k++) A[r]![k]! -= f * A[col]![k]!;
    }
  }
  const y = A.map((row, i) => row[n]! / row[i]!);
  const c = new Float64Array(cols);
  for (let k = 0; k < cols; k++) for (let j = 0; j < n; j++) c[k]! += M[j]![k]! * y[j]!;
  return c;
}

describe('cond path of the LCM UNet, against the plain UNet built from the same seed', () => {
  const H = 8;
  const sampleData = Float32Array.from({ length: 4 * H * H }, (_, i) => Math.cos(i * 0.7));
  const ehsData = Float32Array.from({ length: 7 * 32 }, (_, i) => Math.sin(i * 1.3));

  for (const v of [
    { opset: 14 as const, fp16: false },
    { opset: 17 as const, fp16: true },
  ]) {
    test(`opset ${v.opset}${v.fp16 ? ' fp16' : ''}: timestep_cond = 0 gives the plain UNet bit for bit; a guidance embedding changes it`, async () => {
      const lcm = modelBytes(buildComponents(resolveArch('tiny', 'sd1', D), v).unet, 5, 'unet');
      const plain = modelBytes(buildComponents(resolveArch('tiny'), v).unet, 5, 'unet');
      assert.equal(inputType(decodeModel(lcm), 'timestep_cond'), v.fp16 ? DataType.FLOAT16 : DataType.FLOAT);
      const ft = (x: Float32Array, dims: number[]) => (v.fp16 ? new ort.Tensor('float16', float32ToFloat16(x), dims) : new ort.Tensor('float32', x, dims));
      const read = (t: ort.Tensor) => (v.fp16 ? float16ToFloat32(t.data as Uint16Array) : (t.data as Float32Array));
      const feeds = (t: number) => ({
        sample: ft(sampleData, [1, 4, H, H]),
        timestep: ft(Float32Array.from([t]), [1]),
        encoder_hidden_states: ft(ehsData, [1, 7, 32]),
      });
      const sL = await ort.InferenceSession.create(lcm);
      const sP = await ort.InferenceSession.create(plain);
      try {
        const outL = async (t: number, cond: Float32Array) => read((await sL.run({ ...feeds(t), timestep_cond: ft(cond, [1, D]) })).out_sample!);
        const outP = async (t: number) => read((await sP.run(feeds(t))).out_sample!);
        const p = await outP(500);
        assert.equal(maxAbsDiff(await outL(500, new Float32Array(D)), p), 0);
        const g = await outL(500, guidanceScaleEmbedding(7, D));
        assert.ok(maxAbsDiff(g, p) > 1e-2, `guidance embedding changes the output by ${maxAbsDiff(g, p)}`);
      } finally {
        await Promise.all([sL.release(), sP.release()]);
      }
    });
  }

  test('cond_proj(c) is added to the sinusoidal projection before linear_1: it can stand in for another timestep', async () => {
    // With M the cond_proj weight [32, D], a condition c with M·c = proj(t2) − proj(t1) makes the
    // LCM UNet at t1 compute what the plain UNet computes at t2 (the timestep enters the UNet only
    // through that projection). This fails if the condition is added anywhere else, scaled, or
    // taken through the wrong weight orientation.
    const lcmBuilt = buildComponents(resolveArch('tiny', 'sd1', D)).unet;
    const lcm = modelBytes(lcmBuilt, 5, 'unet');
    const plain = modelBytes(buildComponents(resolveArch('tiny')).unet, 5, 'unet');
    const model = decodeModel(lcm);
    const mm = model.graph!.node.find((n) => n.name === '/time_embedding/cond_proj/MatMul')!;
    const init = model.graph!.initializer.find((t) => t.name === mm.input[1])!;
    const wt = new Float32Array(Uint8Array.from(init.rawData!).buffer); // [D, 32]: the transposed weight
    const M = Array.from({ length: TINY_T_IN }, (_, j) => Float64Array.from({ length: D }, (_, k) => wt[k * TINY_T_IN + j]!));
    const t1 = 500;
    const t2 = 260;
    const p1 = timeProj(t1, TINY_T_IN);
    const p2 = timeProj(t2, TINY_T_IN);
    const c = Float32Array.from(minNormSolve(M, p2.map((x, i) => x - p1[i]!)));
    // the solve itself: M·c reproduces the difference
    for (let j = 0; j < TINY_T_IN; j++) {
      let s = 0;
      for (let k = 0; k < D; k++) s += M[j]![k]! * c[k]!;
      assert.ok(Math.abs(s - (p2[j]! - p1[j]!)) < 1e-5, `row ${j}`);
    }
    const feeds = (t: number) => ({
      sample: new ort.Tensor('float32', sampleData, [1, 4, H, H]),
      timestep: new ort.Tensor('float32', Float32Array.from([t]), [1]),
      encoder_hidden_states: new ort.Tensor('float32', ehsData, [1, 7, 32]),
    });
    const sL = await ort.InferenceSession.create(lcm);
    const sP = await ort.InferenceSession.create(plain);
    try {
      const shifted = (await sL.run({ ...feeds(t1), timestep_cond: new ort.Tensor('float32', c, [1, D]) })).out_sample!.data as Float32Array;
      const at1 = (await sP.run(feeds(t1))).out_sample!.data as Float32Array;
      const at2 = (await sP.run(feeds(t2))).out_sample!.data as Float32Array;
      const apart = maxAbsDiff(at1, at2);
      assert.ok(apart > 1e-2, `the two timesteps give different outputs (${apart})`);
      const d = maxAbsDiff(shifted, at2);
      assert.ok(d < 1e-4 + apart * 1e-3, `LCM UNet at t=${t1} with c vs plain UNet at t=${t2}: ${d} (t1 vs t2: ${apart})`);
    } finally {
      await Promise.all([sL.release(), sP.release()]);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Option validation

test('bad time_cond_proj_dim values are usage errors (library and CLI, one line)', async () => {
  const out = path.join(tmp, 'never');
  for (const bad of [0, 2, 3, -256, 2.5, 65537, Number.NaN, '256']) {
    await assert.rejects(
      synthesize({ arch: 'tiny', outDir: out, timeCondProjDim: bad as number }),
      (e: Error) => e instanceof UsageError && /^timeCondProjDim: expected an integer from 4 to 65536/.test(e.message),
      String(bad),
    );
  }
  assert.throws(() => countParams('tiny', 'sd1', 1), UsageError);
  const quiet = { json: false, color: false, verbose: false, quiet: true };
  for (const bad of ['abc', '3', '0', '-8', '1.5', '65537', '']) {
    await assert.rejects(
      cmdSynth({ ...quiet, arch: 'tiny', out, timeCondProjDim: bad }),
      (e: Error) => e instanceof UsageError && e.message === `--time-cond-proj-dim: expected an integer from 4 to 65536, got ${JSON.stringify(bad)}`,
      bad,
    );
  }
  const r = await cli(['synth', '--arch', 'tiny', '--out', out, '--time-cond-proj-dim', 'wide']);
  assert.equal(r.status, 2, r.stderr);
  assert.deepEqual(r.stderr.trimEnd().split('\n'), ['sdgen: --time-cond-proj-dim: expected an integer from 4 to 65536, got "wide"']);
  assert.equal(r.stdout, '');
});
