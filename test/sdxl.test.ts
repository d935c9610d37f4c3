/**
 * SDXL: the tiny SDXL folder (Optimum's layout) read and run end to end against diffusers 0.27.2's
 * StableDiffusionXLPipeline (test/fixtures/sdxl/), and the pieces around it: the folder's
 * defaults, the UNet's extra inputs read from the model, time ids.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync, cpSync, chmodSync, writeFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModelFolder } from '../src/models/folder.js';
import { UsageError } from '../src/errors.js';
import { StableDiffusionPipeline, type GenerationInspector } from '../src/pipeline/pipeline.js';
import type { SdxlConditioning } from '../src/pipeline/sdxl-conditioning.js';
import { sdxlTimeIds } from '../src/pipeline/sdxl-conditioning.js';
import type { GeneratedImage, GenerationParams } from '../src/pipeline/types.js';
import { optionsFromMetadata } from '../src/cli/from.js';
import { defaultSchedulerFor } from '../src/schedulers/index.js';
import { generationParams as params, maxAbsDiff, readTensor, fx, type TensorEntry, assertLatentsClose, type DiffusersRunArgs, diffusersRunParams } from './helpers.js';
import ort from 'onnxruntime-node';
import { readFile } from 'node:fs/promises';
import { decodeModel, encodeModel } from '../src/onnx/proto.js';
import { applyToMe } from '../src/tome/rewrite.js';
import { DEFAULT_TOME, autoMaxDownsample, resolveMaxDownsample } from '../src/tome/options.js';
import { resolveGraph } from '../src/models/variants.js';
import { SPEC_BY_KEY, coerceOption, parseCropOption, parseSizeOption } from '../src/config/options.js';

const TINY_SDXL = fx('tiny-sdxl');
const SDXL = fx('sdxl');

interface SdxlCase {
  id: string;
  bin: string;
  args: DiffusersRunArgs & { num_images_per_prompt: number };
  scheduler_config: Record<string, unknown>;
  do_classifier_free_guidance: boolean;
  add_time_ids: number[];
  tensors: Record<string, TensorEntry>;
}

async function collect(gen: AsyncGenerator<GeneratedImage>): Promise<GeneratedImage[]> {
  const out: GeneratedImage[] = [];
  for await (const img of gen) out.push(img);
  return out;
}

const ids = (t: BigInt64Array | Float32Array | Float64Array | Uint8Array): number[] => Array.from(t as BigInt64Array, Number);

describe('SDXL folder (tiny-sdxl, Optimum layout)', () => {
  test('family, both tokenizers, defaults from the folder', async () => {
    const f = await loadModelFolder(TINY_SDXL);
    assert.equal(f.family, 'sdxl');
    assert.equal(f.pipelineClass, 'StableDiffusionXLPipeline');
    assert.ok(f.paths.textEncoder2?.endsWith(path.join('text_encoder_2', 'model.onnx')));
    assert.ok(f.tokenizer2);
    // tokenizer pads with <|endoftext|>, tokenizer_2 with "!" (id 0), from their configs
    assert.equal(f.tokenizer.padId, f.tokenizer.eosId);
    assert.equal(f.tokenizer2.padId, 0);
    assert.equal(f.forceZerosForEmptyPrompt, true);
    // UNet sample_size 128 × VAE scale 8 (4 block_out_channels) = 1024; the VAE's scaling factor;
    // the folder's EulerDiscrete scheduler (leading spacing in its config)
    assert.equal(f.defaultWidth, 1024);
    assert.equal(f.defaultHeight, 1024);
    assert.equal(f.vaeScalingFactor, 0.13025);
    assert.equal(f.defaultScheduler, defaultSchedulerFor(f.configs.scheduler));
    assert.equal(f.defaultScheduler, 'euler');
    assert.equal(f.configs.scheduler.timestep_spacing, 'leading');
  });

  test('time ids: (original H, W, crop top, left, target H, W)', () => {
    assert.deepEqual([...sdxlTimeIds(1216, 832)], [832, 1216, 0, 0, 832, 1216]);
    assert.deepEqual(
      [...sdxlTimeIds(1024, 768, { originalSize: { width: 2048, height: 1536 }, cropTopLeft: { top: 16, left: 32 }, targetSize: { width: 1024, height: 1024 } })],
      [1536, 2048, 16, 32, 1024, 1024],
    );
    assert.throws(() => sdxlTimeIds(64, 64, { cropTopLeft: { top: -1, left: 0 } }), (e: Error) => e instanceof UsageError && /crop top must be an integer from 0/.test(e.message));
    assert.throws(() => sdxlTimeIds(64, 64, { originalSize: { width: 0.5, height: 64 } }), UsageError);
  });
});

describe('SDXL options (command line, config files, prompt files)', () => {
  const spec = (k: string) => SPEC_BY_KEY.get(k)!;
  test('sizes, crop and long-prompt mode are checked where they enter', () => {
    assert.equal(coerceOption(spec('originalSize'), '2048x1536', '--original-size'), '2048x1536');
    assert.deepEqual(parseSizeOption('2048x1536'), { width: 2048, height: 1536 });
    assert.deepEqual(parseCropOption('32,16'), { top: 16, left: 32 });
    assert.throws(() => coerceOption(spec('originalSize'), '2048', '--original-size'), /--original-size: expected WIDTHxHEIGHT/);
    assert.throws(() => coerceOption(spec('targetSize'), '0x5', '--target-size'), /WIDTHxHEIGHT/);
    assert.throws(() => coerceOption(spec('cropTopLeft'), '-1,0', '--crop-top-left'), /X,Y/);
    assert.equal(coerceOption(spec('longPrompt'), 'truncate', '--long-prompt'), 'truncate');
    assert.throws(() => coerceOption(spec('longPrompt'), 'cut', '--long-prompt'), /one of chunk, truncate/);
    assert.equal(coerceOption(spec('maxDownsample'), 'auto', '--max-downsample'), 'auto');
    assert.equal(coerceOption(spec('maxDownsample'), '2', '--max-downsample'), 2);
  });

  test('--from brings them back from the sdgen record, checked like flags', () => {
    const rec = (over: Record<string, unknown>) => ({
      file: 'x.png', chunks: [],
      sdgen: { sdgen: '0.1.0', tomeApplied: true, params: { ...params({ width: 1024, height: 768, tome: { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 2 } }), ...over } as GenerationParams },
    });
    const o = optionsFromMetadata(rec({ originalSize: { width: 2048, height: 1536 }, cropTopLeft: { top: 16, left: 32 }, targetSize: { width: 1024, height: 768 }, encodeEmptyNegative: true, longPrompt: 'truncate' })).options;
    assert.equal(o.originalSize, '2048x1536');
    assert.equal(o.cropTopLeft, '32,16');
    assert.equal(o.targetSize, '1024x768');
    assert.equal(o.encodeEmptyNegative, true);
    assert.equal(o.longPrompt, 'truncate');
    assert.equal(o.maxDownsample, 2);
    const plain = optionsFromMetadata(rec({})).options;
    assert.equal(plain.originalSize, undefined);
    assert.throws(() => optionsFromMetadata(rec({ originalSize: { width: 'wide', height: 5 } })), /x\.png: recorded original-size: expected WIDTHxHEIGHT/);
  });
});

describe('end to end vs diffusers StableDiffusionXLPipeline (tiny-sdxl)', () => {
  let pipe: StableDiffusionPipeline;
  let cacheDir: string;
  const notices: string[] = [];
  before(async () => {
    cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-sdxl-'));
    pipe = await StableDiffusionPipeline.load(TINY_SDXL, { device: 'cpu', cacheDir }, { onNotice: (m) => notices.push(m) });
  });
  after(async () => {
    await pipe?.dispose();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test('the UNet inputs are read from the model (text_embeds, time_ids)', () => {
    const io = pipe.unetIO;
    assert.deepEqual(io.textEmbeds, { name: 'text_embeds', type: 'float32', dim: 64 });
    assert.equal(io.timeIds?.name, 'time_ids');
    assert.equal(io.timeIds?.type, 'float32');
    assert.equal(io.timestep.rank, 0);
  });

  /** One cheap run (128², one step) that returns what the SDXL conditioning stage produced. */
  async function condition(over: Partial<Parameters<typeof params>[0]>): Promise<SdxlConditioning> {
    let seen: SdxlConditioning | undefined;
    await collect(pipe.generate(params({ prompt: 'a photo of a cat', width: 128, height: 128, steps: 1, cfg: 5, seed: 1, scheduler: 'euler', ...over }), { onSdxlConditioning: (x) => (seen = x), onNotice: (m) => notices.push(m) }));
    assert.ok(seen);
    return seen;
  }

  test('an empty negative prompt: zeros by default, the encoded "" with encodeEmptyNegative', async () => {
    const z = await condition({});
    assert.equal(z.zeroUncond, true);
    assert.ok(z.uncond!.embedding.data.every((v) => v === 0) && z.uncond!.pooled.every((v) => v === 0));
    const e = await condition({ encodeEmptyNegative: true });
    assert.equal(e.zeroUncond, false);
    // start, end, then each tokenizer's padding: <|endoftext|> (49407) and "!" (0)
    assert.deepEqual(e.uncond!.embedding.ids, [[49406, ...Array<number>(76).fill(49407)]]);
    assert.deepEqual(e.uncond!.ids2, [[49406, 49407, ...Array<number>(75).fill(0)]]);
    assert.ok(e.uncond!.pooled.some((v) => v !== 0));
    // the same prompt embeddings either way
    assert.deepEqual(e.cond.embedding.data, z.cond.embedding.data);
  });

  test('guidance ≤ 1 (SDXL-Turbo style): no unconditional pass, one row of text_embeds and time_ids', async () => {
    const x = await condition({ cfg: 1 });
    assert.equal(x.uncond, null);
    assert.equal(x.zeroUncond, false);
  });

  test('size and crop conditioning reach time_ids; clip skip is not applied (one notice)', async () => {
    notices.length = 0;
    const x = await condition({ originalSize: { width: 2048, height: 1536 }, cropTopLeft: { top: 16, left: 32 }, targetSize: { width: 1024, height: 1024 }, clipSkip: 2 });
    assert.deepEqual([...x.timeIds], [1536, 2048, 16, 32, 1024, 1024]);
    assert.deepEqual(notices, ['clip skip 2 not applied: SDXL reads the penultimate layer of both text encoders (as A1111 does)']);
  });

  test('long prompts: A1111 chunks on both encoders (pooled from the first chunk), or diffusers truncation', async () => {
    const about = (JSON.parse(readFileSync(path.join(SDXL, 'manifest.json'), 'utf8')) as { about: { prompts: Record<string, string> } }).about;
    const long = about.prompts['long']!;
    const chunked = await condition({ prompt: long, negativePrompt: 'blurry' });
    const c = chunked.cond;
    assert.equal(c.embedding.chunks, 2);
    assert.equal(c.embedding.seqLen, 154);
    assert.equal(c.embedding.dim, 96);
    assert.equal(c.ids2.length, 2);
    // the negative prompt is padded to the prompt's chunk count
    assert.equal(chunked.uncond!.embedding.seqLen, 154);
    // pooled = text_encoder_2's text_embeds of the first chunk's ids
    const te2 = await ort.InferenceSession.create(path.join(TINY_SDXL, 'text_encoder_2', 'model.onnx'));
    try {
      const out = await te2.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(c.ids2[0]!, BigInt), [1, 77]) });
      assert.ok(maxAbsDiff(c.pooled, out['text_embeds']!.data as Float32Array) <= 1e-6);
    } finally {
      await te2.release();
    }
    const truncated = await condition({ prompt: long, longPrompt: 'truncate' });
    const tr = truncated.cond;
    assert.equal(tr.embedding.chunks, 1);
    // diffusers: start, the first 75 tokens, end
    assert.equal(tr.embedding.ids[0]![76], 49407);
    assert.equal(tr.ids2[0]![76], 49407);
    assert.deepEqual(tr.embedding.ids[0]!.slice(0, 76), tr.ids2[0]!.slice(0, 76));
  });

  const manifest = JSON.parse(readFileSync(path.join(SDXL, 'manifest.json'), 'utf8')) as { cases: SdxlCase[] };
  test('the shared set has its two cases', () => assert.equal(manifest.cases.length, 2));

  for (const c of manifest.cases) {
    test(c.id, async (t) => {
      const buf = readFileSync(path.join(SDXL, c.bin));
      const T = (k: string) => {
        const e = c.tensors[k];
        assert.ok(e, `fixture tensor ${k}`);
        return readTensor(buf, e);
      };
      const seen: { sdxl?: SdxlConditioning; timesteps?: readonly number[]; init?: Float32Array; final?: Float32Array } = {};
      const inspector: GenerationInspector = {
        onSdxlConditioning: (x) => (seen.sdxl = x),
        onTimesteps: (x) => (seen.timesteps = x),
        onInitialLatents: (_s, l) => (seen.init = l[0]),
        onFinalLatents: (_s, l) => (seen.final = l[0]),
      };
      const images = await collect(
        pipe.generate(
          // diffusers' negative_prompt=None: sdgen's empty negative prompt (zeros by force_zeros_for_empty_prompt)
          diffusersRunParams(c.args, c.scheduler_config),
          inspector,
        ),
      );
      assert.equal(images.length, 1);
      const x = seen.sdxl!;
      assert.ok(x, 'SDXL conditioning stage ran');

      // token ids of both tokenizers
      assert.deepEqual(x.cond.embedding.ids, [ids(T('input_ids_cond'))]);
      assert.deepEqual(x.cond.ids2, [ids(T('input_ids_2_cond'))]);
      // prompt embeddings (hidden_states[-2] of both, concatenated) and pooled (text_embeds)
      const dPrompt = maxAbsDiff(x.cond.embedding.data, T('prompt_embeds_cond') as Float32Array);
      assert.ok(dPrompt <= 1e-4, `prompt_embeds_cond ${dPrompt}`);
      assert.ok(maxAbsDiff(x.cond.pooled, T('pooled_prompt_embeds_cond') as Float32Array) <= 1e-4, 'pooled_prompt_embeds_cond');
      assert.ok(x.uncond, 'unconditional pass');
      if (c.args.negative_prompt === null) {
        assert.equal(x.zeroUncond, true);
      } else {
        assert.equal(x.zeroUncond, false);
        assert.deepEqual(x.uncond.embedding.ids, [ids(T('input_ids_uncond'))]);
        assert.deepEqual(x.uncond.ids2, [ids(T('input_ids_2_uncond'))]);
      }
      assert.ok(maxAbsDiff(x.uncond.embedding.data, T('prompt_embeds_uncond') as Float32Array) <= 1e-4, 'prompt_embeds_uncond');
      assert.ok(maxAbsDiff(x.uncond.pooled, T('pooled_prompt_embeds_uncond') as Float32Array) <= 1e-4, 'pooled_prompt_embeds_uncond');
      // add_time_ids
      assert.deepEqual([...x.timeIds], [...(T('add_time_ids') as Float32Array)]);
      assert.deepEqual([...x.timeIds], c.add_time_ids);

      // timesteps, x_T, final latents
      assert.deepEqual([...seen.timesteps!], [...(T('timesteps') as Float64Array)]);
      assert.ok(maxAbsDiff(seen.init!, T('initial_latents') as Float32Array) <= 1e-5, 'initial_latents');
      const { diff: dFinal, absmax } = assertLatentsClose(seen.final!, T('final_latents') as Float32Array);

      // the image: every channel within 2/255
      const img = images[0]!;
      assert.equal(img.width, c.args.width);
      assert.equal(img.height, c.args.height);
      assert.equal(img.modelName, 'tiny-sdxl');
      const dImg = maxAbsDiff(img.rgb, T('image_u8') as Uint8Array);
      t.diagnostic(`prompt embeds ${dPrompt}, final latents ${dFinal} (absmax ${absmax}), image ${dImg}/255`);
      assert.ok(dImg <= 2, `image max diff ${dImg}/255`);
    });
  }
});

describe('SDXL text encoders exported without hidden_states outputs', () => {
  test('the penultimate layer comes from the exposed-hidden-states rewrite: the same embeddings', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-sdxl-nohs-'));
    try {
      // a copy of tiny-sdxl whose encoders have only their standard outputs (as diffusers' script / Optimum by default)
      cpSync(TINY_SDXL, path.join(tmp, 'm'), { recursive: true });
      // writable copies whatever the fixtures' modes (so the files can be rewritten and removed)
      const writable = (dir: string): void => {
        chmodSync(dir, 0o755);
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          if (e.isDirectory()) writable(path.join(dir, e.name));
          else chmodSync(path.join(dir, e.name), 0o644);
        }
      };
      writable(path.join(tmp, 'm'));
      for (const sub of ['text_encoder', 'text_encoder_2']) {
        const file = path.join(tmp, 'm', sub, 'model.onnx');
        const m = decodeModel(readFileSync(file));
        m.graph!.output = m.graph!.output.filter((o) => !/^hidden_states\./.test(o.name));
        writeFileSync(file, encodeModel(m));
      }
      const c = (JSON.parse(readFileSync(path.join(SDXL, 'manifest.json'), 'utf8')) as { cases: SdxlCase[] }).cases.find((x) => x.args.negative_prompt !== null)!;
      const buf = readFileSync(path.join(SDXL, c.bin));
      const pipe = await StableDiffusionPipeline.load(path.join(tmp, 'm'), { device: 'cpu', cacheDir: path.join(tmp, 'cache') });
      try {
        let seen: SdxlConditioning | undefined;
        await collect(pipe.generate(params({ prompt: c.args.prompt, negativePrompt: c.args.negative_prompt!, width: 128, height: 128, steps: 1, cfg: 5, scheduler: 'euler' }), { onSdxlConditioning: (x) => (seen = x) }));
        assert.ok(maxAbsDiff(seen!.cond.embedding.data, readTensor(buf, c.tensors['prompt_embeds_cond']!) as Float32Array) <= 1e-4);
        assert.ok(maxAbsDiff(seen!.uncond!.embedding.data, readTensor(buf, c.tensors['prompt_embeds_uncond']!) as Float32Array) <= 1e-4);
        assert.ok(maxAbsDiff(seen!.cond.pooled, readTensor(buf, c.tensors['pooled_prompt_embeds_cond']!) as Float32Array) <= 1e-4);
      } finally {
        await pipe.dispose();
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// ToMe on SDXL: max downsample 'auto' = the highest-resolution level with transformer blocks

describe('ToMe on SDXL (max downsample auto)', () => {
  const TOME = fx('sdxl/tome/');
  interface TomeCase { name: string; inputs: string; tome_args: { ratio: number; max_downsample: number; sx: number; sy: number; use_rand: boolean; merge_attn: boolean; merge_crossattn: boolean; merge_mlp: boolean } | null; num_merge_calls: number; tensors: Record<string, TensorEntry> }
  const man = JSON.parse(readFileSync(path.join(TOME, 'manifest.json'), 'utf8')) as {
    inputs: Record<string, { tensors: Record<string, TensorEntry> }>;
    cases: TomeCase[];
    basic_transformer_blocks_forward_order: string[];
  };
  const UNET = path.join(TINY_SDXL, 'unet', 'model.onnx');

  /** The recorded inputs (timestep as the rank-0 input the export takes) and a case's out_sample. */
  function caseData(c: TomeCase): { feeds: Record<string, ort.Tensor>; ref: Float32Array } {
    const inBuf = readFileSync(path.join(TOME, 'inputs.bin'));
    const outBuf = readFileSync(path.join(TOME, 'outputs.bin'));
    const t = man.inputs[c.inputs]!.tensors;
    const feeds: Record<string, ort.Tensor> = {};
    for (const k of ['sample', 'encoder_hidden_states', 'text_embeds', 'time_ids']) {
      feeds[k] = new ort.Tensor('float32', readTensor(inBuf, t[k]!) as Float32Array, t[k]!.shape);
    }
    feeds['timestep'] = new ort.Tensor('float32', readTensor(inBuf, t['timestep']!) as Float32Array, []);
    return { feeds, ref: readTensor(outBuf, c.tensors['out_sample']!) as Float32Array };
  }
  async function run(bytes: Uint8Array, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
    const s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    try {
      const out = await s.run(feeds);
      return out[s.outputNames[0]!]!.data as Float32Array;
    } finally {
      await s.release();
    }
  }

  test('auto resolves from block levels: the smallest known level, else 1', () => {
    assert.equal(autoMaxDownsample([1, 1, 2, 4, 8]), 1); // SD 1.x/2.x
    assert.equal(autoMaxDownsample([2, 2, 4, 4, 4, null]), 2); // SDXL
    assert.equal(autoMaxDownsample([null]), 1);
    assert.equal(resolveMaxDownsample({ maxDownsample: 4 }, [2]), 4);
    assert.equal(DEFAULT_TOME.maxDownsample, 'auto');
  });

  test('the fixture holds its four cases', () => assert.equal(man.cases.length, 4));

  test('ratio 0.5 at auto merges the level-2 blocks and matches tomesd at max_downsample 2', async (t) => {
    const c = man.cases.find((x) => x.tome_args?.max_downsample === 2 && x.tome_args.ratio === 0.5)!;
    assert.ok(c);
    const model = decodeModel(await readFile(UNET));
    const res = applyToMe(model, { ...DEFAULT_TOME, ratio: 0.5 });
    assert.equal(res.patched, true, res.reason);
    const merged = res.blocks.filter((b) => b.merged.attn);
    assert.equal(merged.length, c.num_merge_calls); // 5: down_blocks.1 ×2, up_blocks.1 ×3
    assert.ok(merged.every((b) => b.level === 2), 'only level-2 blocks merge');
    assert.equal(res.blocks.length, man.basic_transformer_blocks_forward_order.length);
    const { feeds, ref } = caseData(c);
    const out = await run(encodeModel(model), feeds);
    const d = maxAbsDiff(out, ref);
    t.diagnostic(`max |sdgen − tomesd| = ${d}`);
    assert.ok(d <= 1e-4, `out_sample max diff ${d}`);
    // and it does merge: the unpatched output differs from it
    const plain = man.cases.find((x) => x.tome_args === null)!;
    assert.ok(maxAbsDiff(caseData(plain).ref, ref) > 1e-3);
  });

  test('an explicit max downsample 1 merges nothing and says so in one line', () => {
    const model = decodeModel(readFileSync(UNET));
    const res = applyToMe(model, { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 1 });
    assert.equal(res.patched, false);
    assert.equal(res.reason, 'max downsample 1 merges nothing on this model: its transformer blocks are at downsample 2, 4 (auto: 2)');
  });

  test('resolveGraph reports the effective max downsample; the pipeline records it', async () => {
    const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-sdxl-tome-'));
    try {
      const g = await resolveGraph({ file: UNET, what: 'unet', cacheDir, provider: 'cpu', tome: { ...DEFAULT_TOME, ratio: 0.5 }, attention: 'standard', optimizedCache: false });
      assert.ok(g.tome);
      assert.equal(g.tome.maxDownsample, 2);
      assert.equal(g.tome.blocks.length, 5);
      const notices: string[] = [];
      const pipe = await StableDiffusionPipeline.load(TINY_SDXL, { device: 'cpu', cacheDir, verbose: true }, { onNotice: (m) => notices.push(m) }, { attention: 'standard' });
      try {
        const p = params({ prompt: 'a photo of a cat', width: 256, height: 256, steps: 2, cfg: 5, seed: 3, scheduler: 'euler', tome: { ...DEFAULT_TOME, ratio: 0.5 }, attention: 'standard' });
        const [img] = await collect(pipe.generate(p));
        assert.equal(img!.tomeApplied, true);
        assert.equal(img!.params.tome.maxDownsample, 2);
        // --verbose says where it merges
        assert.ok(notices.some((m) => /^ToMe: max downsample auto = 2, merging in 5 blocks: down_blocks\.1\/attentions\.0\/transformer_blocks\.0 \(level 2\), /.test(m)), notices.join('\n'));
        notices.length = 0;
        const [one] = await collect(pipe.generate({ ...p, tome: { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 1 } }));
        assert.equal(one!.tomeApplied, false);
        assert.deepEqual(notices.filter((m) => /ToMe/.test(m)), ['ToMe skipped: max downsample 1 merges nothing on this model: its transformer blocks are at downsample 2, 4 (auto: 2)']);
      } finally {
        await pipe.dispose();
      }
    } finally {
      rmSync(cacheDir, { recursive: true, force: true });
    }
  });
});

describe('SDXL-Turbo-style folder (its own scheduler config: Euler ancestral, trailing spacing)', () => {
  let dir: string;
  let pipe: StableDiffusionPipeline;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-turbo-'));
    cpSync(TINY_SDXL, dir, { recursive: true });
    // SDXL-Turbo's scheduler_config.json (stabilityai/sdxl-turbo)
    writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify({
      _class_name: 'EulerAncestralDiscreteScheduler', beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085,
      clip_sample: false, interpolation_type: 'linear', num_train_timesteps: 1000, prediction_type: 'epsilon', sample_max_value: 1.0,
      set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, timestep_spacing: 'trailing', trained_betas: null,
    }));
    pipe = await StableDiffusionPipeline.load(dir, { device: 'cpu', cacheDir: path.join(dir, '.cache') });
  });
  after(async () => {
    await pipe?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  async function run(steps: number): Promise<{ timesteps: number[]; uncond: boolean; image: GeneratedImage }> {
    let timesteps: number[] = [];
    let uncond = true;
    const [image] = await collect(pipe.generate(params({ prompt: 'a cat', width: 128, height: 128, steps, cfg: 0, seed: 3 }), {
      onTimesteps: (t) => (timesteps = [...t]),
      onSdxlConditioning: (c) => (uncond = c.uncond !== null),
    }));
    return { timesteps, uncond, image: image! };
  }
  test('1 and 4 steps at guidance 0: trailing timesteps (round(arange(1000, 0, −1000/N)) − 1), no unconditional pass', async () => {
    const one = await run(1);
    assert.deepEqual(one.timesteps, [999]);
    assert.equal(one.uncond, false);
    assert.equal(one.image.params.scheduler, 'euler_a');
    const four = await run(4);
    assert.deepEqual(four.timesteps, [999, 749, 499, 249]);
    assert.equal(four.image.rgb.length, 128 * 128 * 3);
    assert.ok(new Set(four.image.rgb).size > 16, 'a picture, not a flat fill');
  });
});
