/**
 * SDXL: the tiny SDXL folder (Optimum's layout) read and run end to end against diffusers 0.27.2's
 * StableDiffusionXLPipeline (test/fixtures/sdxl/), and the pieces around it: the folder's
 * defaults, the UNet's extra inputs read from the model, time ids.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModelFolder } from '../src/models/folder.js';
import { StableDiffusionPipeline, type GenerationInspector } from '../src/pipeline/pipeline.js';
import type { SdxlConditioning } from '../src/pipeline/sdxl-conditioning.js';
import { sdxlTimeIds } from '../src/pipeline/sdxl-conditioning.js';
import type { GeneratedImage } from '../src/pipeline/types.js';
import { defaultSchedulerFor } from '../src/schedulers/index.js';
import { generationParams as params, maxAbsDiff, readTensor, fx, type TensorEntry } from './helpers.js';

const TINY_SDXL = fx('tiny-sdxl');
const SDXL = fx('sdxl');

interface SdxlCase {
  id: string;
  bin: string;
  args: {
    scheduler: string;
    prompt: string;
    negative_prompt: string | null;
    guidance_scale: number;
    height: number;
    width: number;
    num_inference_steps: number;
    seed: number;
    num_images_per_prompt: number;
  };
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
          params({
            prompt: c.args.prompt,
            // diffusers' negative_prompt=None: sdgen's empty negative prompt (zeros by force_zeros_for_empty_prompt)
            negativePrompt: c.args.negative_prompt ?? '',
            cfg: c.args.guidance_scale,
            width: c.args.width,
            height: c.args.height,
            steps: c.args.num_inference_steps,
            seed: c.args.seed,
            scheduler: defaultSchedulerFor({ ...c.scheduler_config, _class_name: c.args.scheduler }),
          }),
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
      const ref = T('final_latents') as Float32Array;
      const dFinal = maxAbsDiff(seen.final!, ref);
      let absmax = 0;
      for (const v of ref) absmax = Math.max(absmax, Math.abs(v));
      assert.ok(dFinal <= 1e-4 * Math.max(1, absmax), `final_latents max diff ${dFinal} (absmax ${absmax})`);

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
