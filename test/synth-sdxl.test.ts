/**
 * `sdgen synth --arch sdxl / sdxl-tiny`: SDXL base 1.0's parameter counts from the configuration
 * alone (held against the built graphs), the named weights and I/O of the graphs against
 * Optimum's export of the tiny SDXL fixture (test/fixtures/tiny-sdxl/), and a synthesized
 * sdxl-tiny folder run through the real pipeline, with ToMe.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeModel } from '../src/onnx/proto.js';
import type { ModelProto, ValueInfoProto } from '../src/onnx/types.js';
import { DataType } from '../src/onnx/types.js';
import { ARCHS, archSpec, type ArchSpec } from '../src/synth/archs.js';
import { EXTERNAL_DATA_BYTES, buildComponents, builtParams, countParams, resolveArch, specParams, synthesize } from '../src/synth/index.js';
import { unetConfigFromDiffusers, unetConfigJson } from '../src/synth/unet.js';
import { textEncoderConfigFromHF } from '../src/synth/text-encoder.js';
import { modelIndexJson, schedulerConfigJson } from '../src/synth/folder-files.js';
import { totalBytes } from '../src/synth/writer.js';
import type { ParamEntry } from '../src/synth/context.js';
import { fx, generationParams } from './helpers.js';

const json = (p: string): Record<string, unknown> => JSON.parse(readFileSync(fx(p), 'utf8')) as Record<string, unknown>;
const onnx = (p: string): ModelProto => decodeModel(readFileSync(fx(p)));

test('sdxl: SDXL base 1.0 parameter counts from the configuration alone', () => {
  const p = countParams('sdxl');
  assert.equal(p.unet, 2_567_463_684);
  assert.equal(p.textEncoder, 123_060_480); // CLIP ViT-L/14 text model (as SD 1.x's)
  // OpenCLIP ViT-bigG/14 text model: 49408·1280 + 77·1280 embeddings, 32 layers of
  // 4·(1280² + 1280) + 2·2560 + (1280·5120 + 5120) + (5120·1280 + 1280) = 19,677,440,
  // the final LayerNorm 2560 and the bias-free text_projection 1280²
  assert.equal(p.textEncoder2, 49408 * 1280 + 77 * 1280 + 32 * 19_677_440 + 2560 + 1280 * 1280);
  assert.equal(p.textEncoder2, 694_659_840);
  // SD's VAE: decoder + post_quant_conv, encoder + quant_conv (83,653,863 together)
  assert.equal(p.vaeDecoder, 49_490_199);
  assert.equal(p.vaeEncoder, 83_653_863 - 49_490_199);
  // float32 UNet: about 10.3 GB of weights
  assert.equal(p.unet * 4, 10_269_854_736);
});

test('the configuration counts equal the parameters of the built graphs, every architecture', () => {
  const specs: [string, ArchSpec][] = ARCHS.map((a) => [a, resolveArch(a)]);
  specs.push(['tiny sd2', resolveArch('tiny', 'sd2')], ['tiny lcm', resolveArch('tiny', 'sd1', 256)]);
  assert.equal(specs.length, 7);
  for (const [name, spec] of specs) {
    const built = builtParams(buildComponents(spec));
    assert.deepEqual(specParams(spec), built, name);
  }
});

test('sdxl graphs: per-level transformer depth, text_time inputs, external data where protobuf needs it', () => {
  const spec = resolveArch('sdxl');
  const m = buildComponents(spec);
  const names = new Set(m.unet.params.map((p) => p.name));
  const depth = (prefix: string): number => {
    let n = 0;
    while (names.has(`${prefix}.transformer_blocks.${n}.norm1.weight`)) n++;
    return n;
  };
  // down: level 0 none (DownBlock2D), levels 1 and 2 two attentions of 2 and 10 blocks
  assert.equal(depth('down_blocks.0.attentions.0'), 0);
  assert.deepEqual([depth('down_blocks.1.attentions.0'), depth('down_blocks.1.attentions.1'), depth('down_blocks.1.attentions.2')], [2, 2, 0]);
  assert.deepEqual([depth('down_blocks.2.attentions.0'), depth('down_blocks.2.attentions.1')], [10, 10]);
  assert.equal(depth('mid_block.attentions.0'), 10);
  // up blocks reversed: three attentions each (layers_per_block + 1)
  assert.deepEqual([0, 1, 2, 3].map((j) => depth(`up_blocks.0.attentions.${j}`)), [10, 10, 10, 0]);
  assert.deepEqual([0, 1, 2, 3].map((j) => depth(`up_blocks.1.attentions.${j}`)), [2, 2, 2, 0]);
  assert.equal(depth('up_blocks.2.attentions.0'), 0);
  const shape = (n: string): number[] | undefined => m.unet.params.find((p) => p.name === n)?.dims;
  assert.deepEqual(shape('add_embedding.linear_1.weight'), [1280, 2816]);
  assert.deepEqual(shape('add_embedding.linear_2.weight'), [1280, 1280]);
  assert.deepEqual(shape('down_blocks.1.attentions.0.proj_in.bias'), [640]);
  const io = (v: readonly ValueInfoProto[]): string[] =>
    v.map((x) => `${x.name}:${x.type!.tensorType!.elemType}:${x.type!.tensorType!.shape!.dim.map((d) => d.dimParam ?? Number(d.dimValue)).join(',')}`);
  const unet = m.unet.ctx.b.build().graph!;
  assert.deepEqual(io(unet.input), [
    'sample:1:batch,channels,height,width',
    'timestep:1:',
    'encoder_hidden_states:1:batch,sequence,2048',
    'text_embeds:1:batch,1280',
    'time_ids:1:batch,6',
  ]);
  const te2 = m.textEncoder2!.ctx.b.build().graph!;
  assert.deepEqual(io(te2.output).slice(0, 3), ['text_embeds:1:batch,1280', 'last_hidden_state:1:batch,sequence,1280', 'hidden_states.0:1:batch,sequence,1280']);
  assert.equal(te2.output.length, 2 + 33);
  assert.equal(m.textEncoder.ctx.b.build().graph!.output.length, 2 + 13);
  // protobuf cannot hold 2 GiB: the 2.8 GB bigG encoder goes external, ViT-L (0.5 GB) stays inline,
  // as does SD 2.1's 1.4 GB OpenCLIP-H encoder
  assert.ok(totalBytes(m.textEncoder2!.params) >= EXTERNAL_DATA_BYTES);
  assert.ok(totalBytes(m.textEncoder.params) < EXTERNAL_DATA_BYTES);
  assert.ok(totalBytes(buildComponents(archSpec('sd21')).textEncoder.params) < EXTERNAL_DATA_BYTES);
  assert.ok(EXTERNAL_DATA_BYTES < 2 ** 31);
  assert.equal(spec.externalUNet, true);
});

/** name → shape of the state-dict-named initializers, and the sorted shapes of torch's derived ones. */
function weights(names: { name: string; dims: readonly number[] }[]): { named: Map<string, string>; derived: string[] } {
  const named = new Map<string, string>();
  const derived: string[] = [];
  for (const { name, dims } of names) {
    const s = dims.join('x');
    if (name.startsWith('onnx::')) derived.push(s);
    else named.set(name, s);
  }
  return { named, derived: derived.sort() };
}
const fromModel = (m: ModelProto) => weights(m.graph!.initializer.map((t) => ({ name: t.name!, dims: t.dims.map(Number) })));
const fromParams = (p: readonly ParamEntry[]) => weights(p.map((x) => ({ name: x.name, dims: x.dims })));

/** name:elemType:rank of a graph's inputs or outputs. */
const ioSig = (v: readonly ValueInfoProto[]): string[] => v.map((x) => `${x.name}:${x.type!.tensorType!.elemType}:${x.type!.tensorType!.shape!.dim.length}`);

test("a synth with tiny-sdxl's configs has the Optimum export's weights (names and shapes) and I/O", () => {
  const spec: ArchSpec = {
    unet: unetConfigFromDiffusers(json('tiny-sdxl/unet/config.json')),
    textEncoder: { ...textEncoderConfigFromHF(json('tiny-sdxl/text_encoder/config.json')), inputIdsType: 'int64' },
    textEncoder2: { ...textEncoderConfigFromHF(json('tiny-sdxl/text_encoder_2/config.json')), inputIdsType: 'int64' },
    vae: { ...archSpec('sdxl-tiny').vae, sampleSize: 1024 },
    predictionType: 'epsilon',
    padToken: '<|endoftext|>',
    padToken2: '!',
    externalUNet: false,
  };
  assert.equal(spec.textEncoder2!.withProjection, true);
  assert.equal(spec.textEncoder.withProjection, false);
  const m = buildComponents(spec);
  const cases: [string, ParamEntry[]][] = [
    ['unet', m.unet.params],
    ['text_encoder', m.textEncoder.params],
    ['text_encoder_2', m.textEncoder2!.params],
    ['vae_decoder', m.vaeDecoder.params],
    ['vae_encoder', m.vaeEncoder.params],
  ];
  let checked = 0;
  for (const [dir, params] of cases) {
    const ref = onnx(`tiny-sdxl/${dir}/model.onnx`);
    const want = fromModel(ref);
    const got = fromParams(params);
    assert.deepEqual(got.named, want.named, `${dir}: named initializers`);
    assert.deepEqual(got.derived, want.derived, `${dir}: shapes of the derived (onnx::) initializers`);
    checked += want.named.size + want.derived.length;
    const ours = { unet: m.unet, text_encoder: m.textEncoder, text_encoder_2: m.textEncoder2!, vae_decoder: m.vaeDecoder, vae_encoder: m.vaeEncoder }[dir]!;
    const g = ours.ctx.b.build().graph!;
    assert.deepEqual(ioSig(g.input), ioSig(ref.graph!.input), `${dir}: inputs`);
    assert.deepEqual(ioSig(g.output), ioSig(ref.graph!.output), `${dir}: outputs`);
  }
  // 618 UNet + 53 + 38 text encoder + 108 VAE decoder + 76 VAE encoder initializers
  assert.equal(checked, 618 + 53 + 38 + 108 + 76);
  // the parameter count agrees with the export's weights (position_ids is a buffer)
  const numel = (mp: ModelProto): number =>
    mp.graph!.initializer.filter((t) => !t.name!.endsWith('position_ids')).reduce((a, t) => a + t.dims.map(Number).reduce((x, y) => x * y, 1), 0);
  const counts = specParams(spec);
  assert.equal(counts.unet, numel(onnx('tiny-sdxl/unet/model.onnx')));
  assert.equal(counts.textEncoder2, numel(onnx('tiny-sdxl/text_encoder_2/model.onnx')));
});

test("sdxl-tiny has tiny-sdxl's topology; the SDXL folder files are the fixture's", () => {
  const mine = unetConfigJson(archSpec('sdxl-tiny').unet);
  const ref = json('tiny-sdxl/unet/config.json');
  const keys = [
    'block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block', 'transformer_layers_per_block',
    'attention_head_dim', 'cross_attention_dim', 'norm_num_groups', 'use_linear_projection', 'addition_embed_type',
    'addition_time_embed_dim', 'projection_class_embeddings_input_dim', 'in_channels', 'out_channels', 'flip_sin_to_cos', 'freq_shift',
  ];
  assert.equal(keys.length, 16);
  for (const k of keys) assert.deepEqual(mine[k], ref[k], k);
  // the SDXL base config round-trips through the diffusers config reader
  const sdxl = archSpec('sdxl');
  assert.deepEqual(unetConfigFromDiffusers(unetConfigJson(sdxl.unet)), { ...sdxl.unet, timeCondProjDim: null });
  assert.deepEqual(modelIndexJson(sdxl), json('tiny-sdxl/model_index.json'));
  assert.deepEqual(schedulerConfigJson(sdxl), json('tiny-sdxl/scheduler/scheduler_config.json'));
});

test('a synthesized sdxl-tiny folder runs through the SDXL pipeline, and ToMe merges in its level-2 blocks', async () => {
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-sdxl-'));
  try {
    const dir = join(root, 'm');
    const res = await synthesize({ arch: 'sdxl-tiny', outDir: dir, seed: 2 });
    assert.deepEqual(res.params, countParams('sdxl-tiny'));
    const { loadModelFolder } = await import('../src/models/folder.js');
    const f = await loadModelFolder(dir);
    assert.equal(f.family, 'sdxl');
    assert.equal(f.pipelineClass, 'StableDiffusionXLPipeline');
    assert.equal(f.forceZerosForEmptyPrompt, true);
    assert.equal(f.tokenizer2!.padId, 0); // "!"
    assert.equal(f.tokenizer.padId, f.tokenizer.eosId);
    assert.equal(f.vaeScalingFactor, 0.13025);
    assert.equal(f.defaultWidth, 256);
    assert.equal(f.defaultScheduler, 'euler');

    const { StableDiffusionPipeline } = await import('../src/pipeline/pipeline.js');
    const { DEFAULT_TOME } = await import('../src/tome/options.js');
    const notices: string[] = [];
    const pipe = await StableDiffusionPipeline.load(dir, { device: 'cpu', cacheDir: join(root, 'cache'), verbose: true }, { onNotice: (m) => notices.push(m) });
    try {
      const p = generationParams({ prompt: 'a photo of a cat', width: 256, height: 256, steps: 2, cfg: 5, seed: 3, scheduler: 'euler' });
      const run = async (q: typeof p) => {
        const out = [];
        for await (const img of pipe.generate(q)) out.push(img);
        assert.equal(out.length, 1);
        return out[0]!;
      };
      const plain = await run(p);
      assert.equal(plain.width, 256);
      assert.equal(plain.height, 256);
      assert.equal(plain.rgb.length, 256 * 256 * 3);
      assert.equal(plain.tomeApplied, false);
      const values = new Set(plain.rgb);
      assert.ok(values.size > 16, `a picture, not a flat image (${values.size} distinct values)`);

      const merged = await run({ ...p, tome: { ...DEFAULT_TOME, ratio: 0.5 } });
      assert.equal(merged.tomeApplied, true);
      // auto = the highest-resolution level that has transformer blocks: 2 (level 1 is DownBlock2D)
      assert.equal(merged.params.tome.maxDownsample, 2);
      // down_blocks.1 (2 attentions × 1 block) and up_blocks.1 (3 × 1) are at level 2
      const line = notices.find((m) => m.startsWith('ToMe: max downsample auto = 2'));
      assert.ok(line, notices.join('\n'));
      assert.match(line, /merging in 5 blocks: down_blocks\.1\/attentions\.0\/transformer_blocks\.0 \(level 2\)/);
      assert.ok(!Buffer.from(merged.rgb).equals(Buffer.from(plain.rgb)), 'merging changes the picture');
    } finally {
      await pipe.dispose();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('int64 input_ids and hidden_states outputs are options of the SD text encoder too (element types)', () => {
  const spec = resolveArch('tiny');
  const m = buildComponents({ ...spec, textEncoder: { ...spec.textEncoder, inputIdsType: 'int64', outputHiddenStates: true } });
  const g = m.textEncoder.ctx.b.build().graph!;
  assert.equal(g.input[0]!.type!.tensorType!.elemType, DataType.INT64);
  assert.deepEqual(g.output.map((o) => o.name), ['last_hidden_state', 'pooler_output', 'hidden_states.0', 'hidden_states.1', 'hidden_states.2', 'hidden_states.3']);
});
