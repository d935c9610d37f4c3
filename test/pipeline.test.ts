/**
 * The end-to-end pipeline against diffusers' StableDiffusionPipeline on the shared tiny SD 1.x
 * fixtures, plus the pieces around it (model folder, provider fallback, UNet I/O metadata).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync, mkdirSync, writeFileSync, readdirSync, cpSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { loadModelFolder, vaeScaleFactorOf } from '../src/models/folder.js';
import { ProviderSelector, autoProviderFor, type ProviderName } from '../src/models/providers.js';
import { physicalCoreCount, type SessionInfo } from '../src/models/session.js';
import { unetIO, textEncoderIO } from '../src/models/io.js';
import { SdgenError, UsageError } from '../src/errors.js';
import { StableDiffusionPipeline, resolveAttention, type GenerationInspector } from '../src/pipeline/pipeline.js';
import { decodedToRgb, roundHalfEven } from '../src/pipeline/decode.js';
import type { PromptEmbedding } from '../src/pipeline/text-encoding.js';
import type { GeneratedImage, GenerationParams } from '../src/pipeline/types.js';
import type { RuntimeOptions } from '../src/models/session.js';
import { DEFAULT_TOME } from '../src/tome/options.js';
import { generationParams as params, maxAbsDiff, readTensor, FIXTURES_DIR as FIXTURES, assertLatentsClose, type DiffusersRunArgs, diffusersRunParams } from './helpers.js';
import { defaultSchedulerFor } from '../src/schedulers/index.js';
import { SessionManager } from '../src/models/session.js';
import { TextEncoder } from '../src/pipeline/text-encoding.js';
import { findFinalLayerNorm, finalLayerNormOf, layerNorm } from '../src/optimize/final-layer-norm.js';
import { loadModel, saveModel } from '../src/onnx/model-io.js';
import { valueInfo } from '../src/onnx/builder.js';
import { DataType } from '../src/onnx/types.js';
import { synthesize } from '../src/synth/index.js';
import { denoiseBatch, initialLatents } from '../src/pipeline/denoise.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { createScheduler } from '../src/schedulers/index.js';
import { guidanceScaleEmbedding } from '../src/schedulers/lcm.js';
import type { UnetIO } from '../src/models/io.js';

const TINY = path.join(FIXTURES, 'tiny-sd1');
const E2E = path.join(FIXTURES, 'e2e');

// ---------------------------------------------------------------------------------------------
// Fixture reading

interface TensorEntry {
  dtype: 'float32' | 'int64' | 'float64' | 'uint8';
  shape: number[];
  offset: number;
  nbytes: number;
}
interface E2ECase {
  id: string;
  bin: string;
  args: DiffusersRunArgs;
  scheduler_config: Record<string, unknown>;
  do_classifier_free_guidance: boolean;
  tensors: Record<string, TensorEntry>;
}


/**
 * The tiny-sd1 pipeline on CPU for the enclosing describe, with a cache folder of its own
 * (`prefix`…) and the notices it gives: loaded before its tests, disposed and removed after.
 */
function tinyPipeline(prefix: string, runtime: Partial<RuntimeOptions> = {}): { pipe: StableDiffusionPipeline; cacheDir: string; notices: string[] } {
  const fx = { pipe: undefined as unknown as StableDiffusionPipeline, cacheDir: undefined as unknown as string, notices: [] as string[] };
  before(async () => {
    fx.cacheDir = mkdtempSync(path.join(os.tmpdir(), prefix));
    fx.pipe = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir: fx.cacheDir, ...runtime }, { onNotice: (m) => fx.notices.push(m) });
  });
  after(async () => {
    await fx.pipe?.dispose();
    rmSync(fx.cacheDir, { recursive: true, force: true });
  });
  return fx;
}

async function collect(gen: AsyncGenerator<GeneratedImage>): Promise<GeneratedImage[]> {
  const out: GeneratedImage[] = [];
  for await (const img of gen) out.push(img);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Provider fallback (fake session factory)

describe('provider selection', () => {
  test('auto falls back to CPU with one notice and probes only once', async () => {
    const notices: string[] = [];
    const calls: ProviderName[][] = [];
    const sel = new ProviderSelector('auto', (m) => notices.push(m), 'linux');
    const factory = async (p: ProviderName[]) => {
      calls.push(p);
      if (p[0] === 'cuda') throw new Error('OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library\nmore');
      return `session on ${p.join('+')}`;
    };
    assert.equal(await sel.create(factory), 'session on cpu');
    assert.equal(await sel.create(factory), 'session on cpu');
    assert.deepEqual(calls, [['cuda', 'cpu'], ['cpu'], ['cpu']]);
    assert.deepEqual(notices, [
      'cuda unavailable (CUDA provider libraries not installed: OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library; see README "GPU"); using CPU',
    ]);
    assert.equal(sel.provider, 'cpu');
  });

  test('auto keeps a working accelerator, per platform', async () => {
    assert.equal(autoProviderFor('linux'), 'cuda');
    assert.equal(autoProviderFor('win32'), 'dml');
    assert.equal(autoProviderFor('darwin'), 'coreml');
    assert.equal(autoProviderFor('freebsd'), null);
    const notices: string[] = [];
    const sel = new ProviderSelector('auto', (m) => notices.push(m), 'win32');
    const used: ProviderName[][] = [];
    await sel.create(async (p) => used.push(p));
    await sel.create(async (p) => used.push(p));
    assert.deepEqual(used, [['dml', 'cpu'], ['dml', 'cpu']]);
    assert.equal(sel.provider, 'dml');
    assert.equal(notices.length, 0, notices.join('\n'));
    const plain = new ProviderSelector('auto', (m) => notices.push(m), 'aix');
    const p2: ProviderName[][] = [];
    await plain.create(async (p) => p2.push(p));
    assert.deepEqual(p2, [['cpu']]);
    assert.equal(notices.length, 0, notices.join('\n'));
  });

  test('an explicitly requested provider that fails is an error', async () => {
    const notices: string[] = [];
    const sel = new ProviderSelector('cuda', (m) => notices.push(m), 'linux');
    await assert.rejects(
      sel.create(async () => {
        throw new Error('Failed to load shared library libcudart.so');
      }),
      (e: unknown) => e instanceof SdgenError && /execution provider "cuda" failed to load: CUDA provider libraries not installed: Failed to load shared library libcudart\.so; see README "GPU"/.test(e.message),
    );
    assert.equal(notices.length, 0, notices.join('\n'));
    const cpu = new ProviderSelector('cpu', undefined, 'linux');
    const seen: ProviderName[][] = [];
    await cpu.create(async (p) => seen.push(p));
    assert.deepEqual(seen, [['cpu']]);
    assert.throws(() => new ProviderSelector('tpu' as never), SdgenError);
  });

  test('a broken model file is reported as such, not as a provider problem', async () => {
    const notices: string[] = [];
    const sel = new ProviderSelector('auto', (m) => notices.push(m), 'linux');
    await assert.rejects(
      sel.create(async () => {
        throw new Error('Load model from /x/model.onnx failed:Protobuf parsing failed.');
      }, 'unet'),
      (e: unknown) => e instanceof SdgenError && e.message === 'cannot load unet: Load model from /x/model.onnx failed:Protobuf parsing failed.',
    );
    assert.equal(notices.length, 0, notices.join('\n'));
  });

  test('physical cores from /proc/cpuinfo', () => {
    const info = [0, 1, 2, 3]
      .map((i) => `processor\t: ${i}\nphysical id\t: 0\ncore id\t\t: ${i % 2}\n`)
      .join('\n');
    assert.equal(physicalCoreCount(info), 2);
    assert.equal(physicalCoreCount('processor : 0\n'), null);
  });
});

// ---------------------------------------------------------------------------------------------
// I/O metadata

describe('model I/O from session metadata', () => {
  const base = (timestep: { type: string; shape: (number | string)[] }, extra: SessionInfo['inputs'] = []): SessionInfo => ({
    inputs: [
      { name: 'sample', type: 'float32', shape: ['batch', 4, 'h', 'w'] },
      { name: 'timestep', type: timestep.type as 'float32', shape: timestep.shape },
      { name: 'encoder_hidden_states', type: 'float32', shape: ['batch', 'seq', 768] },
      ...extra,
    ],
    outputs: [{ name: 'out_sample', type: 'float32', shape: ['batch', 4, 'h', 'w'] }],
  });

  test('timestep kinds: float32 [B], float32 scalar, int64 [1]', () => {
    assert.deepEqual(unetIO(base({ type: 'float32', shape: ['batch'] })).timestep, { name: 'timestep', type: 'float32', rank: 1, length: null });
    assert.deepEqual(unetIO(base({ type: 'float32', shape: [] })).timestep, { name: 'timestep', type: 'float32', rank: 0, length: null });
    assert.deepEqual(unetIO(base({ type: 'int64', shape: [1] })).timestep, { name: 'timestep', type: 'int64', rank: 1, length: 1 });
  });

  test('inputs that do not fit are named', () => {
    assert.throws(() => unetIO(base({ type: 'string', shape: [1] })), /input "timestep" has element type string/);
    assert.throws(
      () => unetIO(base({ type: 'float32', shape: ['batch'] }, [{ name: 'text_embeds', type: 'float32', shape: ['batch', 1280] }])),
      // SDXL's added conditioning comes as a pair: one without the other is named
      /input "text_embeds" without "time_ids"/,
    );
    const lcm = unetIO(base({ type: 'float32', shape: ['batch'] }, [{ name: 'timestep_cond', type: 'float32', shape: ['batch', 256] }]));
    assert.deepEqual(lcm.timestepCond, { name: 'timestep_cond', type: 'float32', dim: 256 });
    assert.equal(lcm.encoderHiddenStates.dim, 768);
    assert.throws(
      () => textEncoderIO({ inputs: [{ name: 'input_ids', type: 'float32', shape: ['b', 77] }], outputs: [] }),
      /input "input_ids" has element type float32/,
    );
    const te = textEncoderIO({
      inputs: [{ name: 'input_ids', type: 'int64', shape: ['b', 77] }],
      outputs: [
        { name: 'last_hidden_state', type: 'float32', shape: ['b', 77, 768] },
        { name: 'hidden_states.1', type: 'float32', shape: ['b', 77, 768] },
        { name: 'hidden_states.0', type: 'float32', shape: ['b', 77, 768] },
      ],
    });
    assert.deepEqual(te.inputIds, { name: 'input_ids', type: 'int64', seqLen: 77 });
    assert.deepEqual(te.hiddenStates.map((h) => h.name), ['hidden_states.0', 'hidden_states.1']);
  });
});

// ---------------------------------------------------------------------------------------------
// Model folder

describe('model folder', () => {
  test('tiny-sd1 layout, configs and defaults', async () => {
    const f = await loadModelFolder(TINY);
    assert.equal(f.name, 'tiny-sd1');
    assert.equal(f.pipelineClass, 'OnnxStableDiffusionPipeline');
    assert.equal(f.vaeScaleFactor, 8);
    assert.equal(f.vaeScalingFactor, 0.18215);
    assert.equal(f.defaultWidth, 512);
    assert.equal(f.defaultHeight, 512);
    assert.equal(f.defaultScheduler, 'pndm');
    assert.equal(f.predictionType, 'epsilon');
    assert.equal(f.paths.unet, path.join(TINY, 'unet', 'model.onnx'));
    assert.equal(f.tokenizer.padId, 49407);
    assert.equal(vaeScaleFactorOf({ block_out_channels: [128, 256, 512] }), 4);
    assert.equal(vaeScaleFactorOf(null), 8);
  });

  test('clear errors for folders that are not SD ONNX folders', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-folder-'));
    try {
      await assert.rejects(loadModelFolder(tmp), (e: unknown) => e instanceof SdgenError && e.message === `not a Stable Diffusion ONNX folder: ${tmp} (no model_index.json)`);
      writeFileSync(path.join(tmp, 'model_index.json'), '{"_class_name": "OnnxStableDiffusionPipeline"}');
      await assert.rejects(loadModelFolder(tmp), /missing text_encoder\/model\.onnx/);
      await assert.rejects(loadModelFolder(path.join(tmp, 'nope')), /model folder not found/);
      // a text file where a model should be → one clear line when the session opens
      for (const d of ['text_encoder', 'unet', 'vae_decoder', 'scheduler']) mkdirSync(path.join(tmp, d));
      writeFileSync(path.join(tmp, 'text_encoder', 'model.onnx'), 'version https://git-lfs.github.com/spec/v1\noid sha256:abc\n');
      writeFileSync(path.join(tmp, 'unet', 'model.onnx'), 'x');
      writeFileSync(path.join(tmp, 'vae_decoder', 'model.onnx'), 'x');
      writeFileSync(path.join(tmp, 'scheduler', 'scheduler_config.json'), readFileSync(path.join(TINY, 'scheduler', 'scheduler_config.json')));
      mkdirSync(path.join(tmp, 'tokenizer'));
      for (const f of ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']) {
        writeFileSync(path.join(tmp, 'tokenizer', f), readFileSync(path.join(TINY, 'tokenizer', f)));
      }
      await assert.rejects(
        StableDiffusionPipeline.load(tmp, { device: 'cpu' }),
        (e: unknown) => e instanceof SdgenError && /is a Git LFS pointer, not the model/.test(e.message),
      );
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Decode conversion

test('uint8 conversion is diffusers\' (clamp, ×255, round half to even)', () => {
  assert.equal(roundHalfEven(0.5), 0);
  assert.equal(roundHalfEven(1.5), 2);
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(2.5000001), 3);
  // x/2+0.5: -3 → 0, 3 → 255, 0 → 127.5 → 128 (even), 1/255 steps
  const x = Float32Array.from([-3, 3, 0, Math.fround(2 * (1 / 255) - 1)]);
  // one pixel per value: [1,3,H=1,W=4] NCHW with the same values in every channel
  const nchw = new Float32Array(12);
  for (let c = 0; c < 3; c++) nchw.set(x, c * 4);
  const rgb = decodedToRgb(nchw, 4, 1);
  assert.deepEqual([...rgb.subarray(0, 3)], [0, 0, 0]);
  assert.deepEqual([...rgb.subarray(3, 6)], [255, 255, 255]);
  assert.deepEqual([...rgb.subarray(6, 9)], [128, 128, 128]);
  assert.deepEqual([...rgb.subarray(9, 12)], [1, 1, 1]);
});

// ---------------------------------------------------------------------------------------------
// End to end against diffusers

describe('end to end vs diffusers (tiny-sd1)', () => {
  const fx = tinyPipeline('sdgen-e2e-');

  const manifest = JSON.parse(readFileSync(path.join(E2E, 'manifest.json'), 'utf8')) as { cases: E2ECase[] };
  for (const c of manifest.cases) {
    test(c.id, async (t) => {
      const buf = readFileSync(path.join(E2E, c.bin));
      const T = (k: string) => {
        const e = c.tensors[k];
        assert.ok(e, `fixture tensor ${k}`);
        return readTensor(buf, e);
      };
      const seen: { cond?: PromptEmbedding; uncond?: PromptEmbedding | null; timesteps?: readonly number[]; init?: Float32Array; final?: Float32Array } = {};
      const inspector: GenerationInspector = {
        onPrompts: (cond, uncond) => Object.assign(seen, { cond, uncond }),
        onTimesteps: (t) => (seen.timesteps = t),
        onInitialLatents: (_s, l) => (seen.init = l[0]),
        onFinalLatents: (_s, l) => (seen.final = l[0]),
      };
      let steps = 0;
      const images = await collect(
        fx.pipe.generate(
          diffusersRunParams(c.args, c.scheduler_config),
          { ...inspector, onStep: () => steps++ },
        ),
      );
      assert.equal(images.length, 1);
      assert.equal(steps, c.args.num_inference_steps);

      // prompt ids and embeddings
      assert.equal(seen.cond!.chunks, 1);
      assert.deepEqual(seen.cond!.ids[0], Array.from(T('input_ids_cond') as BigInt64Array, Number));
      assert.ok(maxAbsDiff(seen.cond!.data, T('prompt_embeds_cond') as Float32Array) <= 1e-4, 'prompt_embeds_cond');
      if (c.do_classifier_free_guidance) {
        assert.ok(seen.uncond, 'unconditional pass');
        assert.deepEqual(seen.uncond.ids[0], Array.from(T('input_ids_uncond') as BigInt64Array, Number));
        assert.ok(maxAbsDiff(seen.uncond.data, T('prompt_embeds_uncond') as Float32Array) <= 1e-4, 'prompt_embeds_uncond');
      } else {
        assert.equal(seen.uncond, null, 'cfg ≤ 1 skips the unconditional pass');
      }
      // timesteps and latents
      assert.deepEqual([...seen.timesteps!], [...(T('timesteps') as Float64Array)]);
      assert.ok(maxAbsDiff(seen.init!, T('initial_latents') as Float32Array) <= 1e-6, 'initial_latents');
      const { diff: dFinal, absmax } = assertLatentsClose(seen.final!, T('final_latents') as Float32Array);

      // the image: every channel within 2/255
      const img = images[0]!;
      assert.equal(img.width, c.args.width);
      assert.equal(img.height, c.args.height);
      assert.equal(img.seed, c.args.seed);
      assert.equal(img.modelName, 'tiny-sd1');
      assert.equal(img.tomeApplied, false);
      const dImg = maxAbsDiff(img.rgb, T('image_u8') as Uint8Array);
      t.diagnostic(`embeds ${maxAbsDiff(seen.cond!.data, T('prompt_embeds_cond') as Float32Array)}, final latents ${dFinal} (absmax ${absmax}), image ${dImg}/255`);
      assert.ok(dImg <= 2, `image max diff ${dImg}/255`);
      assert.ok(img.timings.unetMs > 0 && img.timings.vaeMs > 0 && img.timings.textEncoderMs > 0);
      // 'auto' (these runs' mode) is fused attention on CPU float32: diffusers' reference above is
      // standard attention, so the bounds above hold for the fused graph against it.
      assert.deepEqual(fx.pipe.openUnets, [{ variant: 'original', attention: 'fused' }]);
      assert.deepEqual(fx.notices.filter((m) => /attention/.test(m)), []);
    });
  }

  test('image i of a batch equals a single run with seed + i; sizes are validated', async () => {
    const p = params({ prompt: 'a red fox', negativePrompt: 'blurry', width: 128, height: 128, steps: 3, seed: 77, scheduler: 'euler_a', cfg: 5 });
    const batch = await collect(fx.pipe.generate({ ...p, batchSize: 2 }));
    assert.equal(batch.length, 2);
    assert.deepEqual(batch.map((b) => b.seed), [77, 78]);
    assert.deepEqual(batch.map((b) => b.index), [0, 1]);
    const single = await collect(fx.pipe.generate({ ...p, seed: 78 }));
    assert.equal(single.length, 1);
    assert.equal(single[0]!.params.seed, 78);
    assert.deepEqual(batch[1]!.rgb, single[0]!.rgb, 'batch image 1 = seed+1 alone');
    assert.notDeepEqual(batch[0]!.rgb, batch[1]!.rgb);
    // nIter: a second batch continues the seeds
    const iter = await collect(fx.pipe.generate({ ...p, nIter: 2 }));
    assert.deepEqual(iter.map((b) => b.seed), [77, 78]);
    assert.deepEqual(iter[1]!.rgb, single[0]!.rgb);

    // a slice of the job: images 1 and 2 of 2 × 2, each with its own seed, bit-identical to the whole job's
    const all = await collect(fx.pipe.generate({ ...p, batchSize: 2, nIter: 2 }));
    const slice = await collect(fx.pipe.generate({ ...p, batchSize: 2, nIter: 2 }, undefined, undefined, { images: { first: 1, count: 2 } }));
    assert.deepEqual(slice.map((b) => [b.index, b.seed]), [[1, 78], [2, 79]]);
    assert.deepEqual(slice[0]!.rgb, all[1]!.rgb);
    assert.deepEqual(slice[1]!.rgb, all[2]!.rgb);
    await assert.rejects(collect(fx.pipe.generate(p, undefined, undefined, { images: { first: 1, count: 1 } })), UsageError, 'a slice outside the job');

    await assert.rejects(collect(fx.pipe.generate({ ...p, width: 100 })), (e: unknown) => e instanceof UsageError && /multiple of 8/.test(e.message));
    // options are checked where they enter: an out-of-range ToMe ratio from a library caller
    await assert.rejects(
      collect(fx.pipe.generate({ ...p, tome: { ...p.tome, ratio: 0.9 } })),
      (e: unknown) => e instanceof UsageError && /ToMe ratio must satisfy 0 ≤ R ≤ 1 − 1\/\(sx·sy\) = 0\.75/.test(e.message),
    );
  });

  test('abort between steps: no partial output', async () => {
    const ac = new AbortController();
    const got: GeneratedImage[] = [];
    await assert.rejects(
      (async () => {
        for await (const img of fx.pipe.generate(params({ prompt: 'x', width: 64, height: 64, steps: 4 }), { onStep: (s) => s === 2 && ac.abort() }, ac.signal)) {
          got.push(img);
        }
      })(),
      (e: unknown) => e instanceof Error && e.name === 'AbortError',
    );
    assert.equal(got.length, 0);
    // the pipeline is usable again after an abort; one generate at a time
    const small = params({ prompt: 'x', width: 64, height: 64, steps: 1, nIter: 2 });
    const a = fx.pipe.generate(small);
    const first = a.next();
    await assert.rejects(fx.pipe.generate(small).next(), /already generating/);
    assert.equal((await first).done, false);
    await a.return(undefined); // leaving early frees the pipeline
    assert.equal((await collect(fx.pipe.generate({ ...small, nIter: 1 }))).length, 1);
  });
});

// ---------------------------------------------------------------------------------------------
// Text encoding: long prompts, clip skip

describe('text encoding', () => {
  const tokens = JSON.parse(readFileSync(path.join(FIXTURES, 'clip', 'tokens.json'), 'utf8')) as {
    prompts: { prompt: string; ids: number[]; input_ids_77_pad_eot: number[] }[];
  };
  const long = tokens.prompts.find((p) => p.ids.length > 75)!;
  let tmp: string;
  let sessions: SessionManager;
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-te-'));
    sessions = new SessionManager({ device: 'cpu' });
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('long prompts: A1111 chunks by default, diffusers ids with truncate', async () => {
    assert.ok(long, 'fixture has a prompt over 75 tokens');
    const folder = await loadModelFolder(TINY);
    const model = await sessions.open(folder.paths.textEncoder, 'text encoder');
    const te = new TextEncoder(model, folder.tokenizer);
    const chunked = await te.encodePair(long.prompt, '', true, { emphasis: true, clipSkip: 1 });
    const n = chunked.cond.chunks;
    assert.ok(n >= Math.ceil(long.ids.length / 75), `${n} chunks for ${long.ids.length} tokens`);
    assert.equal(chunked.cond.seqLen, 77 * n);
    assert.equal(chunked.uncond!.seqLen, 77 * n, 'negative padded to the prompt\'s chunk count');
    assert.equal(chunked.cond.data.length, 77 * n * 32);
    // every chunk is start + ≤75 tokens + end, and together they hold every token in order
    const inner = chunked.cond.ids.flatMap((c) => c.slice(1, 1 + c.slice(1).indexOf(49407)));
    assert.deepEqual(inner, long.ids);
    const trunc = await te.encodePair(long.prompt, '', true, { emphasis: true, clipSkip: 1, longPrompt: 'truncate' });
    assert.equal(trunc.cond.chunks, 1);
    assert.deepEqual(trunc.cond.ids[0], long.input_ids_77_pad_eot);
    // the truncated embedding is the encoder's output for exactly those ids
    const direct = await te.encodeIds(long.input_ids_77_pad_eot);
    assert.deepEqual(trunc.cond.data, direct.data);
    // cache: one encoding per distinct prompt text
    const cache = new Map<string, PromptEmbedding>();
    const a = await te.encodePair('a cat', 'a cat', true, { emphasis: true, clipSkip: 1 }, cache);
    assert.equal(a.cond, a.uncond);
    assert.equal(cache.size, 1);
    await model.release();
  });

  test('emphasis weights multiply the hidden states with the mean restored; off = literal text', async () => {
    const folder = await loadModelFolder(TINY);
    const model = await sessions.open(folder.paths.textEncoder, 'text encoder');
    const te = new TextEncoder(model, folder.tokenizer);
    const plain = (await te.encodePair('a photo of a cat', '', false, { emphasis: true, clipSkip: 1 })).cond;
    const weighted = (await te.encodePair('a photo of a (cat:1.5)', '', false, { emphasis: true, clipSkip: 1 })).cond;
    assert.deepEqual(weighted.ids, plain.ids);
    const expected = plain.data.slice();
    const w = new Array(77).fill(1);
    w[5] = 1.5; // start, a, photo, of, a, cat
    applyEmphasisRef(expected, 77, 32, w);
    assert.ok(maxAbsDiff(weighted.data, expected) <= 1e-5);
    assert.ok(maxAbsDiff(weighted.data, plain.data) > 1e-3);
    const literal = (await te.encodePair('a photo of a (cat:1.5)', '', false, { emphasis: false, clipSkip: 1 })).cond;
    assert.notDeepEqual(literal.ids, plain.ids);
    await model.release();
  });

  test('clip skip: needs per-layer hidden states; uses the final layer norm of the graph', async () => {
    const folder = await loadModelFolder(TINY);
    const plain = await sessions.open(folder.paths.textEncoder, 'text encoder');
    const te0 = new TextEncoder(plain, folder.tokenizer, await findFinalLayerNorm(folder.paths.textEncoder, plain.info));
    await assert.rejects(
      te0.encodePair('a cat', '', false, { emphasis: true, clipSkip: 2 }),
      (e: unknown) => e instanceof SdgenError && /clip skip 2 needs a text encoder exported with per-layer hidden states/.test(e.message),
    );
    await plain.release();

    // The same encoder with hidden_states.0…3 exposed (embeddings, then each layer's output).
    const m = await loadModel(folder.paths.textEncoder);
    const g = m.graph!;
    const layerOut = ['/text_model/embeddings/Add_output_0', ...[0, 1, 2].map((i) => `/text_model/encoder/layers.${i}/Add_1_output_0`)];
    layerOut.forEach((src, k) => {
      assert.ok(g.node.some((n) => n.output.includes(src)), src);
      g.node.push({ opType: 'Identity', name: `expose_${k}`, input: [src], output: [`hidden_states.${k}`], attribute: [] });
      g.output.push(valueInfo(`hidden_states.${k}`, DataType.FLOAT, ['batch', 'sequence', 32]));
    });
    const p = path.join(tmp, 'text_encoder', 'model.onnx');
    await saveModel(m, p);
    const lnParams = finalLayerNormOf(g);
    assert.ok(lnParams);
    assert.equal(lnParams.weight.length, 32);
    assert.ok(Math.abs(lnParams.epsilon - 1e-5) < 1e-9);
    const model = await sessions.open(p, 'text encoder');
    const ln = await findFinalLayerNorm(p, model.info);
    assert.ok(ln, 'final layer norm found');
    const te = new TextEncoder(model, folder.tokenizer, ln);
    assert.equal(te.io.hiddenStates.length, 4);
    const ids = folder.tokenizer.encodePadded('a photo of a cat');
    const last = await te.encodeIds(ids, 1);
    // LN(hidden_states[-1]) reproduces last_hidden_state: the norm was read correctly
    const out = await model.session.run({ input_ids: new ort.Tensor('int32', Int32Array.from(ids), [1, 77]) });
    const h3 = out['hidden_states.3']!.data as Float32Array;
    assert.ok(maxAbsDiff(layerNorm(h3, 32, lnParams), last.data) <= 1e-5);
    const skip2 = await te.encodeIds(ids, 2);
    const h2 = out['hidden_states.2']!.data as Float32Array;
    assert.ok(maxAbsDiff(skip2.data, layerNorm(h2, 32, lnParams)) <= 1e-6);
    assert.ok(maxAbsDiff(skip2.data, last.data) > 1e-2, 'clip skip 2 differs from the last layer');
    await assert.rejects(te.encodeIds(ids, 5), /clip skip 5 is not available/);
    await model.release();
  });
});

// ---------------------------------------------------------------------------------------------
// ToMe through the pipeline (tiny-sd1, small size)

describe('ToMe in the pipeline', () => {
  const fx = tinyPipeline('sdgen-tome-');
  const p = params({ prompt: 'a red fox', negativePrompt: 'blurry', width: 128, height: 128, steps: 2, seed: 5, scheduler: 'euler_a', cfg: 5 });
  const tome = (o: Partial<GenerationParams['tome']>) => ({ ...DEFAULT_TOME, ratio: 0.5, ...o });

  test('applied, skipped below the minimum size (bit-identical to no ToMe), random destinations reproducible per image', async () => {
    const base = await collect(fx.pipe.generate({ ...p, batchSize: 2 }));
    const merged = await collect(fx.pipe.generate({ ...p, batchSize: 2, tome: tome({}) }));
    assert.deepEqual(merged.map((i) => i.tomeApplied), [true, true]);
    assert.ok(maxAbsDiff(merged[0]!.rgb, base[0]!.rgb) > 2, 'ToMe changes the image');

    fx.notices.length = 0;
    const skipped = await collect(fx.pipe.generate({ ...p, batchSize: 2, tome: tome({ minWidth: 256, minHeight: 256 }) }));
    assert.deepEqual(skipped.map((i) => i.tomeApplied), [false, false]);
    assert.deepEqual(skipped[1]!.rgb, base[1]!.rgb);
    assert.deepEqual(fx.notices, ['ToMe skipped: image 128x128 is below the ToMe minimum 256x256']);

    const rand = await collect(fx.pipe.generate({ ...p, batchSize: 2, tome: tome({ useRand: true }) }));
    const alone = await collect(fx.pipe.generate({ ...p, seed: 6, tome: tome({ useRand: true }) }));
    assert.deepEqual(rand[1]!.rgb, alone[0]!.rgb, 'image 1 of a batch = its seed alone');
    assert.ok(maxAbsDiff(rand[1]!.rgb, merged[1]!.rgb) > 0, 'random destinations change the merge');

    // Without CFG the UNet batch is odd: tomesd turns random destinations off (zeros), so the
    // rand-input graph gives exactly the no-rand result.
    const oddRand = await collect(fx.pipe.generate({ ...p, cfg: 1, tome: tome({ useRand: true }) }));
    const oddPlain = await collect(fx.pipe.generate({ ...p, cfg: 1, tome: tome({}) }));
    assert.ok(maxAbsDiff(oddRand[0]!.rgb, oddPlain[0]!.rgb) <= 1);
  });

  test('a load for a ToMe first run opens only the patched UNet; a last run releases it before decoding; images are bit-identical throughout', async () => {
    const job = { ...p, tome: tome({}) };
    // fx.pipe was loaded with the exported UNet and switches to the patched one
    const [switched] = await collect(fx.pipe.generate(job));
    const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-tome-first-'));
    const pipe = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir }, undefined, { first: job });
    try {
      assert.deepEqual(pipe.openUnets, [{ variant: 'tome', attention: 'fused' }]);
      // the exported UNet was never opened: the only fused UNet copy is the patched graph's
      const fusedSources = readdirSync(path.join(cacheDir, 'fused')).map((e) => (JSON.parse(readFileSync(path.join(cacheDir, 'fused', e, 'meta.json'), 'utf8')) as { source: string }).source);
      assert.equal(fusedSources.filter((s) => s.includes(`${path.sep}unet${path.sep}`)).length, 0, fusedSources.join(', '));
      assert.deepEqual(pipe.unetIO.tomeRand, [], 'the I/O of the exported graph');
      const [first] = await collect(pipe.generate(job));
      assert.equal(first!.tomeApplied, true);
      assert.deepEqual(first!.rgb, switched!.rgb);
      // a run without ToMe reopens the exported graph in place of the patched one
      const [plain] = await collect(pipe.generate(p));
      assert.deepEqual(pipe.openUnets, [{ variant: 'original', attention: 'fused' }]);
      const [plainRef] = await collect(fx.pipe.generate(p));
      assert.deepEqual(plain!.rgb, plainRef!.rgb);
      // last: the UNet goes before the decode; a later call reopens it and gets the same image
      const [lastRun] = await collect(pipe.generate(p, undefined, undefined, { last: true }));
      assert.deepEqual(pipe.openUnets, []);
      assert.deepEqual(lastRun!.rgb, plainRef!.rgb);
      const [again] = await collect(pipe.generate(job));
      assert.deepEqual(pipe.openUnets, [{ variant: 'tome', attention: 'fused' }]);
      assert.deepEqual(again!.rgb, switched!.rgb);
      // a patch that fails at load (here: the cache's tome directory is a file) is only a hint that
      // failed: load opens the exported graph, and the ToMe run reports the error itself
      const blocked = mkdtempSync(path.join(os.tmpdir(), 'sdgen-tome-blocked-'));
      writeFileSync(path.join(blocked, 'tome'), 'not a directory');
      const fallback = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir: blocked }, undefined, { first: job });
      try {
        assert.deepEqual(fallback.openUnets, [{ variant: 'original', attention: 'fused' }]);
        await assert.rejects(collect(fallback.generate(job)), /ENOTDIR|not a directory/);
      } finally {
        await fallback.dispose();
        rmSync(blocked, { recursive: true, force: true });
      }
      // a first run that ToMe skips (below its minimum size) opens the exported graph
      const skipped = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir }, undefined, { first: { ...job, tome: tome({ minWidth: 256 }) } });
      assert.deepEqual(skipped.openUnets, [{ variant: 'original', attention: 'fused' }]);
      await skipped.dispose();
    } finally {
      await pipe.dispose();
      rmSync(cacheDir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Fused attention through the pipeline (tiny-sd1, small size)

describe('fused attention in the pipeline', () => {
  test('attention mode per provider and float type: auto → fused on CPU float32; fallbacks carry a reason', () => {
    assert.deepEqual(resolveAttention('auto', 'cpu', false), { attention: 'fused' });
    assert.deepEqual(resolveAttention('fused', 'cpu', false), { attention: 'fused' });
    assert.deepEqual(resolveAttention('standard', 'cpu', false), { attention: 'standard' });
    assert.deepEqual(resolveAttention('auto', 'cuda', true), { attention: 'fused' });
    const fp16 = resolveAttention('fused', 'cpu', true);
    assert.equal(fp16.attention, 'standard');
    assert.match(fp16.reason ?? '', /float32 only and this UNet is float16/);
    assert.equal(resolveAttention('auto', 'cpu', true).attention, 'standard');
    assert.equal(resolveAttention('auto', 'coreml', false).attention, 'standard');
  });

  // direct convolutions: this compares attention kernels only
  const fx = tinyPipeline('sdgen-fused-', { conv: 'direct' });
  const p = params({ prompt: 'a red fox', negativePrompt: 'blurry', width: 128, height: 128, steps: 3, seed: 11, scheduler: 'euler_a', cfg: 5 });
  async function final(over: Partial<GenerationParams>): Promise<{ img: GeneratedImage; latents: Float32Array }> {
    let latents: Float32Array | undefined;
    const [img] = await collect(fx.pipe.generate({ ...p, ...over }, { onFinalLatents: (_s, l) => (latents = l[0]) }));
    return { img: img!, latents: latents! };
  }

  test('fused matches standard (final latents ≤ 1e-4); only the sessions of the mode in use stay open', async (t) => {
    // load() opened the UNet in the mode 'auto' resolves to
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'original', attention: 'fused' }]);
    const fused = await final({ attention: 'fused' });
    const std = await final({ attention: 'standard' });
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'original', attention: 'standard' }]);
    const auto = await final({ attention: 'auto' });
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'original', attention: 'fused' }]);
    const d = maxAbsDiff(fused.latents, std.latents);
    t.diagnostic(`fused vs standard: final latents ${d}, image ${maxAbsDiff(fused.img.rgb, std.img.rgb)}/255`);
    assert.ok(d <= 1e-4, `fused vs standard final latents ${d}`);
    assert.ok(maxAbsDiff(fused.img.rgb, std.img.rgb) <= 1);
    assert.deepEqual(auto.latents, fused.latents);
    assert.deepEqual(fx.notices, []);
  });

  test('ToMe then fused: differs from ToMe-standard by ≤ 1e-3; the fused rewrite runs on the patched graph', async (t) => {
    const tome = { ...DEFAULT_TOME, ratio: 0.5 };
    const fused = await final({ tome, attention: 'fused' });
    // the exported graph's session went when the patched one was opened
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'tome', attention: 'fused' }]);
    // fused copies of the exported and of the ToMe-patched UNet, and of the VAE decoder
    const sources = readdirSync(path.join(fx.cacheDir, 'fused')).map((e) => JSON.parse(readFileSync(path.join(fx.cacheDir, 'fused', e, 'meta.json'), 'utf8')) as { source: string; count: number });
    assert.equal(sources.length, 3);
    assert.equal(sources.filter((m) => m.source.includes(`${path.sep}vae_decoder${path.sep}`) && m.count === 1).length, 1, 'the VAE mid-block attention is fused');
    const std = await final({ tome, attention: 'standard' });
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'tome', attention: 'standard' }]);
    assert.equal(fused.img.tomeApplied, true);
    assert.equal(std.img.tomeApplied, true);
    const d = maxAbsDiff(fused.latents, std.latents);
    t.diagnostic(`ToMe fused vs ToMe standard: final latents ${d}`);
    assert.ok(d <= 1e-3, `ToMe fused vs ToMe standard final latents ${d}`);
    const plain = await final({ attention: 'fused' });
    assert.deepEqual(fx.pipe.openUnets, [{ variant: 'original', attention: 'fused' }]);
    assert.ok(maxAbsDiff(plain.latents, fused.latents) > 1e-3, 'ToMe changes the result');
    // random destinations (tome_rand inputs) survive the fused rewrite
    const rand = { ...tome, useRand: true };
    const randFused = await final({ tome: rand, attention: 'fused' });
    const randStd = await final({ tome: rand, attention: 'standard' });
    assert.ok(maxAbsDiff(randFused.latents, randStd.latents) <= 1e-3);
    assert.deepEqual(fx.notices, []);
  });
});

// ---------------------------------------------------------------------------------------------
// onnxruntime's optimized-graph cache through the pipeline

describe('optimized-graph cache', () => {
  let cacheDir: string;
  before(() => {
    cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-optcache-'));
  });
  after(() => rmSync(cacheDir, { recursive: true, force: true }));
  const p = params({ prompt: 'a red fox', width: 64, height: 64, steps: 2, seed: 4, scheduler: 'euler_a', cfg: 5 });

  async function once(): Promise<{ hits: StableDiffusionPipeline['optimizedCacheHits']; latents: Float32Array; rgb: Uint8Array }> {
    const pipe = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir });
    try {
      let latents: Float32Array | undefined;
      const [img] = await collect(pipe.generate(p, { onFinalLatents: (_s, l) => (latents = l[0]) }));
      return { hits: pipe.optimizedCacheHits, latents: latents!, rgb: img!.rgb };
    } finally {
      await pipe.dispose();
    }
  }

  test('the second load reads the text encoder and UNet from the cache (the VAE decoder never) and gives the same image', async () => {
    const first = await once();
    assert.deepEqual(first.hits, { textEncoder: false, unet: false, tomeUnet: null, vaeDecoder: false });
    // the VAE decoder is loaded plainly (quick to optimize; its cached graph's first run is slower)
    assert.equal(readdirSync(path.join(cacheDir, 'optimized')).length, 2);
    const second = await once();
    assert.deepEqual(second.hits, { textEncoder: true, unet: true, tomeUnet: null, vaeDecoder: false });
    const d = maxAbsDiff(first.latents, second.latents);
    assert.ok(d <= 1e-5, `cached vs optimized-now final latents ${d}`);
    assert.ok(maxAbsDiff(first.rgb, second.rgb) <= 1);
  });

  test('a cache that cannot be written loads the model as it is', async () => {
    const notDir = path.join(cacheDir, 'a-file');
    writeFileSync(notDir, 'x');
    const sessions = new SessionManager({ device: 'cpu' }, undefined, undefined, { cacheDir: notDir });
    const m = await sessions.open(path.join(TINY, 'vae_decoder', 'model.onnx'), 'vae decoder');
    assert.equal(m.fromOptimizedCache, false);
    assert.equal(m.info.inputs.length, 1);
    await m.release();
  });
});

// ---------------------------------------------------------------------------------------------
// Timestep and element types from the metadata (synthetic tiny models)

describe('exports with other timestep / element types', () => {
  let tmp: string;
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-synth-'));
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const p = params({ prompt: 'a red fox', negativePrompt: 'blurry', width: 64, height: 64, steps: 3, seed: 3, scheduler: 'euler_a', cfg: 5 });

  async function run(dir: string): Promise<{ rgb: Uint8Array; timestep: string }> {
    const pipe = await StableDiffusionPipeline.load(dir, { device: 'cpu' });
    try {
      const [img] = await collect(pipe.generate(p));
      return { rgb: img!.rgb, timestep: `${pipe.unetIO.timestep.type}/${pipe.unetIO.timestep.rank}` };
    } finally {
      await pipe.dispose();
    }
  }

  test('int64 [B] timestep gives the float32 [B] image; scalar timestep and fp16 models run', async () => {
    for (const [name, opts] of [
      ['f32', { timestepType: 'float32' }],
      ['i64', { timestepType: 'int64' }],
      ['scalar', { timestepType: 'float32-scalar' }],
      ['fp16', { fp16: true }],
    ] as const) {
      await synthesize({ arch: 'tiny', outDir: path.join(tmp, name), ...opts });
    }
    const f32 = await run(path.join(tmp, 'f32'));
    const i64 = await run(path.join(tmp, 'i64'));
    const scalar = await run(path.join(tmp, 'scalar'));
    const fp16 = await run(path.join(tmp, 'fp16'));
    assert.equal(f32.timestep, 'float32/1');
    assert.equal(i64.timestep, 'int64/1');
    assert.equal(scalar.timestep, 'float32/0');
    assert.equal(fp16.timestep, 'float16/1');
    // euler_a's leading-spaced timesteps are integers: int64 feeding is exact
    assert.deepEqual(i64.rgb, f32.rgb);
    // fp16 weights and activations: same picture within a few levels
    let sum = 0;
    for (let i = 0; i < f32.rgb.length; i++) sum += Math.abs(f32.rgb[i]! - fp16.rgb[i]!);
    assert.ok(sum / f32.rgb.length < 2, `fp16 mean diff ${sum / f32.rgb.length}`);
    assert.equal(scalar.rgb.length, 64 * 64 * 3);
  });

  test('float16 UNet on CPU: auto runs standard attention silently; an explicit fused falls back with one notice', async () => {
    const fp16 = path.join(tmp, 'fp16-attn');
    const f32 = path.join(tmp, 'f32-attn');
    await synthesize({ arch: 'tiny', outDir: fp16, fp16: true });
    await synthesize({ arch: 'tiny', outDir: f32 });
    const cacheDir = path.join(tmp, 'cache');
    const notices: string[] = [];
    const pipe = await StableDiffusionPipeline.load(fp16, { device: 'cpu', cacheDir }, { onNotice: (m) => notices.push(m) });
    try {
      assert.deepEqual(pipe.openUnets, [{ variant: 'original', attention: 'standard' }]);
      const [auto] = await collect(pipe.generate(p));
      assert.equal(notices.length, 0, notices.join('\n'));
      const [fused] = await collect(pipe.generate({ ...p, attention: 'fused' }));
      assert.deepEqual(notices, [
        "fused attention not used: onnxruntime's CPU MultiHeadAttention is float32 only and this UNet is float16; using standard attention",
      ]);
      assert.deepEqual(fused!.rgb, auto!.rgb);
    } finally {
      await pipe.dispose();
    }
    // A float32 text encoder makes load() expect a float32 UNet: the fused rewrite of the
    // float16 UNet fuses nothing (CPU), and the exported graph runs, silently.
    rmSync(path.join(fp16, 'text_encoder'), { recursive: true });
    cpSync(path.join(f32, 'text_encoder'), path.join(fp16, 'text_encoder'), { recursive: true });
    notices.length = 0;
    const mixed = await StableDiffusionPipeline.load(fp16, { device: 'cpu', cacheDir }, { onNotice: (m) => notices.push(m) });
    try {
      assert.deepEqual(mixed.openUnets, [{ variant: 'original', attention: 'standard' }]);
      const [img] = await collect(mixed.generate(p));
      assert.equal(img!.rgb.length, 64 * 64 * 3);
      assert.equal(notices.length, 0, notices.join('\n'));
      // nothing fused: the cache remembers that (meta.json, count 0) and holds no model
      const fusedDir = path.join(cacheDir, 'fused');
      const entries = existsSync(fusedDir) ? readdirSync(fusedDir) : [];
      for (const e of entries) {
        assert.equal(existsSync(path.join(fusedDir, e, 'model.onnx')), false, 'nothing fused, no model cached');
        assert.equal(JSON.parse(readFileSync(path.join(fusedDir, e, 'meta.json'), 'utf8')).count, 0);
      }
    } finally {
      await mixed.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The loop's feeds, checked with a fake UNet session

describe('denoise loop feeds (fake UNet)', () => {
  const sched = JSON.parse(readFileSync(path.join(TINY, 'scheduler', 'scheduler_config.json'), 'utf8'));
  const emb = (v: number, seqLen = 2, dim = 3): PromptEmbedding => ({
    data: new Float32Array(seqLen * dim).fill(v), seqLen, dim, ids: [], chunks: 1, tokenCount: 0,
  });
  /** A session whose eps is 0.01·(row + 1)·sample; records every feed. */
  function fakeSession(outName = 'out_sample') {
    const calls: Record<string, { type: string; dims: readonly number[]; data: unknown[] }>[] = [];
    const session = {
      async run(feeds: Record<string, ort.Tensor>, fetches: Record<string, ort.Tensor>) {
        const rec: (typeof calls)[number] = {};
        for (const [k, t] of Object.entries(feeds)) rec[k] = { type: t.type, dims: [...t.dims], data: Array.from(t.data as ArrayLike<unknown>) };
        calls.push(rec);
        const sample = feeds['sample']!;
        const out = fetches[outName]!;
        const x = sample.data as Float32Array;
        const o = out.data as Float32Array;
        const per = x.length / sample.dims[0]!;
        for (let i = 0; i < x.length; i++) o[i] = Math.fround(0.01 * (Math.floor(i / per) + 1) * x[i]!);
        return { [outName]: out };
      },
    } as unknown as ort.InferenceSession;
    return { session, calls };
  }
  const io = (over: Partial<UnetIO> = {}): UnetIO => ({
    sample: { name: 'sample', type: 'float32' },
    timestep: { name: 'timestep', type: 'float32', rank: 1, length: null },
    encoderHiddenStates: { name: 'encoder_hidden_states', type: 'float32', dim: null },
    timestepCond: null,
    tomeRand: [],
    output: { name: 'out_sample', type: 'float32' },
    ...over,
  });
  const setup = (seeds: number[], steps = 2) => {
    const generators = seeds.map((s) => new TorchGenerator(s));
    const schedulers = seeds.map(() => {
      const s = createScheduler('euler_a', sched);
      s.setTimesteps(steps);
      return s;
    });
    const latents = generators.map((g, i) => initialLatents(g, schedulers[i]!, 2, 2));
    return { generators, schedulers, latents };
  };

  test('CFG batch layout, timestep kinds and the guidance combination', async () => {
    for (const [ts, type, dims, values] of [
      [{ type: 'float32', rank: 1, length: null }, 'float32', [4], (t: number) => [t, t, t, t]],
      [{ type: 'float32', rank: 0, length: null }, 'float32', [], (t: number) => [t]],
      [{ type: 'int64', rank: 1, length: 1 }, 'int64', [1], (t: number) => [BigInt(Math.trunc(t))]],
    ] as const) {
      const { session, calls } = fakeSession();
      const s = setup([10, 11]);
      const ref = setup([10, 11]);
      const timesteps = Array.from(s.schedulers[0]!.timesteps, Number);
      await denoiseBatch({
        session, io: io({ timestep: { name: 'timestep', ...ts } }), ...s, latentHeight: 2, latentWidth: 2,
        cond: emb(1), uncond: emb(-1), cfg: 7.5, timestepCond: null, tomeRand: null,
      });
      assert.equal(calls.length, 2);
      const c0 = calls[0]!;
      assert.equal(c0['timestep']!.type, type);
      assert.deepEqual(c0['timestep']!.dims, dims);
      assert.deepEqual(c0['timestep']!.data, values(timesteps[0]!));
      assert.deepEqual(c0['sample']!.dims, [4, 4, 2, 2]);
      // rows: [uncond img0, uncond img1, cond img0, cond img1]
      assert.deepEqual(c0['encoder_hidden_states']!.data, [...Array(12).fill(-1), ...Array(12).fill(1)]);
      const x = c0['sample']!.data as number[];
      assert.deepEqual(x.slice(0, 16), x.slice(32, 48));
      assert.deepEqual(x.slice(16, 32), x.slice(48, 64));
      // replay by hand: eps_u = 0.01·(b+1)·x, eps_c = 0.01·(2+b+1)·x, eps = u + 7.5·(c − u)
      for (let i = 0; i < 2; i++) {
        const t = timesteps[i]!;
        const xin = calls[i]!['sample']!.data as number[];
        for (let b = 0; b < 2; b++) {
          const eps = new Float32Array(16);
          for (let j = 0; j < 16; j++) {
            const u = Math.fround(0.01 * (b + 1) * xin[b * 16 + j]!);
            const c = Math.fround(0.01 * (b + 3) * xin[(2 + b) * 16 + j]!);
            eps[j] = Math.fround(u + Math.fround(7.5 * Math.fround(c - u)));
          }
          ref.latents[b] = ref.schedulers[b]!.step(eps, t, ref.latents[b]!, ref.generators[b]);
        }
      }
      assert.deepEqual(s.latents, ref.latents);
    }
  });

  test('no CFG: one row per image; LCM timestep_cond; ToMe rand inputs from the image seed', async () => {
    const { session, calls } = fakeSession();
    const s = setup([3]);
    const w = guidanceScaleEmbedding(8.5 - 1, 4);
    await denoiseBatch({
      session,
      io: io({ timestepCond: { name: 'timestep_cond', type: 'float32', dim: 4 } }),
      ...s, latentHeight: 2, latentWidth: 2, cond: emb(1), uncond: null, cfg: 8.5,
      timestepCond: Float32Array.from(w), tomeRand: null,
    });
    assert.deepEqual(calls[0]!['sample']!.dims, [1, 4, 2, 2]);
    assert.deepEqual(calls[0]!['timestep_cond']!.dims, [1, 4]);
    assert.deepEqual(calls[0]!['timestep_cond']!.data, Array.from(w));

    // ToMe random destinations: even batch (CFG) → randint(sx·sy) per input per step from the seed
    const rio = io({ tomeRand: [{ name: 'tome_rand_0', type: 'int64' }, { name: 'tome_rand_1', type: 'int64' }] });
    const shapes = [[1, 1, 1], [2, 1, 1]];
    const run = async (uncond: PromptEmbedding | null) => {
      const f = fakeSession();
      await denoiseBatch({
        session: f.session, io: rio, ...setup([42], 3), latentHeight: 2, latentWidth: 2, cond: emb(1), uncond, cfg: 5,
        timestepCond: null,
        tomeRand: { inputs: shapes.map((shape, k) => ({ name: `tome_rand_${k}`, type: 'int64' as const, shape })), high: 4, generators: [new TorchGenerator(42)] },
      });
      return f.calls;
    };
    const even = await run(emb(-1));
    const g = new TorchGenerator(42);
    for (const call of even) {
      assert.deepEqual(call['tome_rand_0']!.data, Array.from(g.randint(4, shapes[0]!)));
      assert.deepEqual(call['tome_rand_1']!.data, Array.from(g.randint(4, shapes[1]!)));
      assert.deepEqual(call['tome_rand_1']!.dims, [2, 1, 1]);
    }
    const odd = await run(null);
    for (const call of odd) assert.deepEqual(call['tome_rand_1']!.data, [0n, 0n]);
  });

  test('a UNet with a fixed batch or size that does not fit is named before running', async () => {
    const { session, calls } = fakeSession();
    await assert.rejects(
      denoiseBatch({
        session, io: io({ sample: { name: 'sample', type: 'float32', dims: [2, 4, 64, 64] } }), ...setup([1]),
        latentHeight: 2, latentWidth: 2, cond: emb(1), uncond: emb(0), cfg: 7, timestepCond: null, tomeRand: null,
      }),
      (e: unknown) => e instanceof SdgenError && /input "sample" has a fixed height of 64; this run needs 2/.test(e.message),
    );
    await assert.rejects(
      denoiseBatch({
        session, io: io({ sample: { name: 'sample', type: 'float32', dims: [2, 4, null, null] } }), ...setup([1]),
        latentHeight: 2, latentWidth: 2, cond: emb(1), uncond: null, cfg: 1, timestepCond: null, tomeRand: null,
      }),
      /fixed batch of 2; this run needs 1/,
    );
    assert.equal(calls.length, 0);
  });
});

/** A1111's "Original" emphasis, written out for the test: scale rows, then restore the mean. */
function applyEmphasisRef(h: Float32Array, seq: number, dim: number, w: number[]): void {
  let before = 0;
  for (const v of h) before += v;
  let after = 0;
  for (let s = 0; s < seq; s++) for (let j = 0; j < dim; j++) after += h[s * dim + j]! * w[s]!;
  for (let s = 0; s < seq; s++) for (let j = 0; j < dim; j++) h[s * dim + j] = h[s * dim + j]! * w[s]! * (before / after);
}

// ---------------------------------------------------------------------------------------------
// Winograd convolutions through the pipeline (tiny-sd1: its UNet has 64-channel convolutions)

describe('Winograd convolutions in the pipeline', () => {
  const direct = tinyPipeline('sdgen-direct-', { conv: 'direct' });
  const wino = tinyPipeline('sdgen-wino-', { conv: 'winograd' });
  const p = params({ prompt: 'a lighthouse at dusk', width: 128, height: 96, steps: 4, seed: 5, scheduler: 'ddim', cfg: 6 });
  test('the CPU session runs the cached Winograd UNet; the image matches direct convolutions (latents ≤ 1e-3, pixels ≤ 1)', async (t) => {
    const latents: Float32Array[] = [];
    const [a] = await collect(direct.pipe.generate(p, { onFinalLatents: (_s, l) => latents.push(l[0]!) }));
    const [b] = await collect(wino.pipe.generate(p, { onFinalLatents: (_s, l) => latents.push(l[0]!) }));
    const d = maxAbsDiff(latents[0]!, latents[1]!);
    t.diagnostic(`winograd vs direct: final latents ${d}, image ${maxAbsDiff(a!.rgb, b!.rgb)}/255`);
    assert.ok(d > 0 && d <= 1e-3, `${d}`);
    assert.ok(maxAbsDiff(a!.rgb, b!.rgb) <= 1);
    const entries = (dir: string) => (existsSync(path.join(dir, 'winograd')) ? readdirSync(path.join(dir, 'winograd')) : []);
    assert.deepEqual(entries(direct.cacheDir), [], '--conv direct rewrites nothing');
    const models = entries(wino.cacheDir).filter((e) => existsSync(path.join(wino.cacheDir, 'winograd', e, 'model.onnx')));
    // the UNet (fused) has convolutions of 64 channels; the VAE decoder's upsampler
    // convolutions take the polyphase form
    assert.equal(models.length, 2);
    assert.deepEqual(wino.notices, []);
  });
});
