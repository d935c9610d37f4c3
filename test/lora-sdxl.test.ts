/**
 * LoRAs and textual-inversion embeddings on SDXL (test/fixtures/tiny-sdxl): kohya files written
 * here in both UNet naming schemes (SGM `input_blocks_4_1_…` and diffusers `down_blocks_1_…`),
 * the SGM → diffusers block mapping against expectations derived by hand from diffusers 0.27.2's
 * rules for tiny-sdxl's config, merged weights against W + scale·(alpha/rank)·up·down computed
 * here, the pipeline against a folder whose models were merged by this test, and embeddings
 * against the prompt whose token rows they hold.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import ort from 'onnxruntime-node';
import { UsageError } from '../src/errors.js';
import { parseLoraKeys, type TensorInfo } from '../src/lora/keys.js';
import { mapLoraModules, WeightSites } from '../src/lora/map.js';
import { mergeLoras, openLora } from '../src/lora/merge.js';
import { sgmToDiffusers, unetLayoutFromConfig, unetLayoutFromPaths } from '../src/lora/sgm.js';
import { getLoraVariant } from '../src/lora/variant.js';
import { loadModel, readTensorBytes } from '../src/onnx/model-io.js';
import { encodeModel } from '../src/onnx/proto.js';
import type { GraphProto, ModelProto, TensorProto } from '../src/onnx/types.js';
import { StableDiffusionPipeline } from '../src/pipeline/pipeline.js';
import type { SdxlConditioning } from '../src/pipeline/sdxl-conditioning.js';
import type { GeneratedImage } from '../src/pipeline/types.js';
import { loadTokenizer } from '../src/text/load.js';
import { fx, generationParams, maxAbsDiff, writeSafetensors, f32, type WTensor } from './helpers.js';

const TINY = fx('tiny-sdxl');
const FILES = {
  unet: fx('tiny-sdxl/unet/model.onnx'),
  text_encoder: fx('tiny-sdxl/text_encoder/model.onnx'),
  text_encoder_2: fx('tiny-sdxl/text_encoder_2/model.onnx'),
} as const;
type Target = keyof typeof FILES;

// ---------------------------------------------------------------------------------------------
// Test-side helpers (independent of src/lora)


function rand(n: number, seed: number, amp = 0.1): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 31 - 1) * amp;
  });
}

const tmp = (): string => mkdtempSync(path.join(os.tmpdir(), 'sdgen-lora-sdxl-'));

/**
 * The node torch.onnx.export names after a module: `/` between module names, a ModuleList index
 * kept on its list's name (`down_blocks.1`, `to_out.0`, `net.0`), then the op.
 */
function nodeName(modulePath: string, op: string): string {
  const parts: string[] = [];
  for (const p of modulePath.split('.')) {
    if (/^\d+$/.test(p) && parts.length > 0) parts[parts.length - 1] += `.${p}`;
    else parts.push(p);
  }
  return `/${parts.join('/')}/${op}`;
}

/** The weight initializer of a module, by its node's name; its layout. */
function weightOf(graph: GraphProto, modulePath: string): { t: TensorProto; layout: 'in_out' | 'out_in' } {
  for (const op of ['MatMul', 'Gemm', 'Conv']) {
    const n = graph.node.find((x) => x.name === nodeName(modulePath, op));
    if (n === undefined) continue;
    const t = graph.initializer.find((i) => i.name === n.input[1]);
    assert.ok(t, `${modulePath}: initializer ${n.input[1]}`);
    return { t, layout: op === 'MatMul' ? 'in_out' : 'out_in' };
  }
  throw new Error(`no weight node for ${modulePath}`);
}

async function floatsOf(t: TensorProto): Promise<Float32Array> {
  const b = new Uint8Array((await readTensorBytes(t))!);
  return new Float32Array(b.buffer, 0, b.length / 4);
}

// ---------------------------------------------------------------------------------------------
// The LoRA: modules of all three models; UNet modules under both names. `module` is the
// diffusers module each SGM name lands on for tiny-sdxl's config (layers_per_block 2; down
// blocks DownBlock2D, CrossAttnDownBlock2D ×2; up blocks CrossAttnUpBlock2D ×2, UpBlock2D),
// derived by hand: input_blocks.i (i ≥ 1) → down block ⌊(i−1)/3⌋, layer (i−1) mod 3 (layer 2 =
// the downsampler `op`); output_blocks.i → up block ⌊i/3⌋, layer i mod 3 (`.2.conv` = upsampler);
// middle_block.0/1/2 → resnets.0/attentions.0/resnets.1; in_layers.2 → conv1, out_layers.3 →
// conv2, emb_layers.1 → time_emb_proj, skip_connection → conv_shortcut.

interface Mod {
  target: Target;
  /** kohya name after `lora_unet_` / `lora_te1_` / `lora_te2_` (SGM for the UNet) */
  kohya: string;
  module: string;
  /** LoCon: a 4-D down weight */
  conv?: boolean;
}
const MODS: Mod[] = [
  { target: 'unet', kohya: 'input_blocks_4_1_transformer_blocks_0_attn1_to_q', module: 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q' },
  { target: 'unet', kohya: 'input_blocks_8_1_transformer_blocks_1_ff_net_0_proj', module: 'down_blocks.2.attentions.1.transformer_blocks.1.ff.net.0.proj' },
  { target: 'unet', kohya: 'middle_block_1_proj_in', module: 'mid_block.attentions.0.proj_in' },
  { target: 'unet', kohya: 'output_blocks_2_1_transformer_blocks_1_attn2_to_k', module: 'up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k' },
  { target: 'unet', kohya: 'output_blocks_5_1_proj_out', module: 'up_blocks.1.attentions.2.proj_out' },
  { target: 'unet', kohya: 'output_blocks_3_1_transformer_blocks_0_attn1_to_out_0', module: 'up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0' },
  { target: 'unet', kohya: 'input_blocks_1_0_in_layers_2', module: 'down_blocks.0.resnets.0.conv1', conv: true },
  { target: 'unet', kohya: 'input_blocks_3_0_op', module: 'down_blocks.0.downsamplers.0.conv', conv: true },
  { target: 'unet', kohya: 'output_blocks_0_0_skip_connection', module: 'up_blocks.0.resnets.0.conv_shortcut', conv: true },
  { target: 'unet', kohya: 'output_blocks_2_2_conv', module: 'up_blocks.0.upsamplers.0.conv', conv: true },
  { target: 'unet', kohya: 'output_blocks_7_0_emb_layers_1', module: 'up_blocks.2.resnets.1.time_emb_proj' },
  { target: 'unet', kohya: 'middle_block_2_out_layers_3', module: 'mid_block.resnets.1.conv2', conv: true },
  { target: 'unet', kohya: 'time_embed_0', module: 'time_embedding.linear_1' },
  { target: 'text_encoder', kohya: 'text_model_encoder_layers_0_self_attn_q_proj', module: 'text_model.encoder.layers.0.self_attn.q_proj' },
  { target: 'text_encoder', kohya: 'text_model_encoder_layers_2_mlp_fc1', module: 'text_model.encoder.layers.2.mlp.fc1' },
  { target: 'text_encoder_2', kohya: 'text_model_encoder_layers_1_self_attn_v_proj', module: 'text_model.encoder.layers.1.self_attn.v_proj' },
  { target: 'text_encoder_2', kohya: 'text_model_encoder_layers_0_mlp_fc2', module: 'text_model.encoder.layers.0.mlp.fc2' },
  { target: 'text_encoder_2', kohya: 'text_projection', module: 'text_projection' },
];
const PREFIX: Record<Target, string> = { unet: 'lora_unet_', text_encoder: 'lora_te1_', text_encoder_2: 'lora_te2_' };
const RANK = 4;
const ALPHA = 2;

interface Factors {
  up: number[];
  down: number[];
  out: number;
  inFlat: number;
  downShape: number[];
  upShape: number[];
}

/** Per module: random factors shaped after the base weight (same values in both files). */
async function factors(): Promise<Map<Mod, Factors>> {
  const graphs = new Map<Target, GraphProto>();
  for (const t of Object.keys(FILES) as Target[]) graphs.set(t, (await loadModel(FILES[t], { externalData: 'lazy' })).graph!);
  const out = new Map<Mod, Factors>();
  MODS.forEach((m, k) => {
    const { t, layout } = weightOf(graphs.get(m.target)!, m.module);
    const d = t.dims.map(Number);
    const [o, inShape] = layout === 'in_out' ? [d[1]!, [d[0]!]] : [d[0]!, d.slice(1)];
    const inFlat = inShape.reduce((a, b) => a * b, 1);
    const downShape = m.conv ? [RANK, ...inShape] : [RANK, inFlat];
    const upShape = m.conv ? [o, RANK, 1, 1] : [o, RANK];
    out.set(m, { up: rand(o * RANK, 100 + k), down: rand(RANK * inFlat, 200 + k), out: o, inFlat, downShape, upShape });
  });
  return out;
}

function writeLora(file: string, f: Map<Mod, Factors>, naming: 'sgm' | 'diffusers' | 'peft'): void {
  const tensors: Record<string, WTensor> = {};
  for (const m of MODS) {
    const x = f.get(m)!;
    if (naming === 'peft') {
      // diffusers' SDXL training scripts: `unet.` / `text_encoder.` / `text_encoder_2.` + the module, no alpha
      tensors[`${m.target}.${m.module}.lora_A.weight`] = f32(x.downShape, x.down);
      tensors[`${m.target}.${m.module}.lora_B.weight`] = f32(x.upShape, x.up);
      continue;
    }
    const name = m.target === 'unet' && naming === 'diffusers' ? m.module.replaceAll('.', '_') : m.kohya;
    const key = PREFIX[m.target] + name;
    tensors[`${key}.lora_down.weight`] = f32(x.downShape, x.down);
    tensors[`${key}.lora_up.weight`] = f32(x.upShape, x.up);
    tensors[`${key}.alpha`] = f32([], [ALPHA]);
  }
  writeSafetensors(file, tensors);
}

/** W + scale·(alpha/rank)·up·down in float64, in W's layout. */
function expected(base: Float32Array, x: Factors, layout: 'in_out' | 'out_in', scale: number, ratio = ALPHA / RANK): Float64Array {
  const w = Float64Array.from(base);
  for (let o = 0; o < x.out; o++) {
    for (let i = 0; i < x.inFlat; i++) {
      let s = 0;
      for (let r = 0; r < RANK; r++) s += x.up[o * RANK + r]! * x.down[r * x.inFlat + i]!;
      const idx = layout === 'in_out' ? i * x.out + o : o * x.inFlat + i;
      w[idx] = w[idx]! + scale * ratio * s;
    }
  }
  return w;
}

let shared: Promise<{ dir: string; sgm: string; diffusers: string; f: Map<Mod, Factors> }> | undefined;
function loraFiles(): Promise<{ dir: string; sgm: string; diffusers: string; f: Map<Mod, Factors> }> {
  shared ??= (async () => {
    const dir = tmp();
    const f = await factors();
    const sgm = path.join(dir, 'sgm.safetensors');
    const diffusers = path.join(dir, 'diffusers.safetensors');
    writeLora(sgm, f, 'sgm');
    writeLora(diffusers, f, 'diffusers');
    return { dir, sgm, diffusers, f };
  })();
  return shared;
}

// ---------------------------------------------------------------------------------------------

describe('SGM → diffusers block mapping', () => {
  test("tiny-sdxl's layout from its config and from its graph", async () => {
    const expectedLayout = { downLayers: [2, 2, 2], downAttn: [false, true, true], upLayers: [3, 3, 3], upAttn: [true, true, false] };
    assert.deepEqual(unetLayoutFromConfig(JSON.parse(readFileSync(fx('tiny-sdxl/unet/config.json'), 'utf8'))), expectedLayout);
    const g = (await loadModel(FILES.unet, { externalData: 'lazy' })).graph!;
    assert.deepEqual(unetLayoutFromPaths(new WeightSites(g).byPath.keys()), expectedLayout);
  });

  test('SGM names land on the hand-derived diffusers modules; names outside the UNet on nothing', () => {
    const layout = unetLayoutFromConfig(JSON.parse(readFileSync(fx('tiny-sdxl/unet/config.json'), 'utf8')))!;
    const cases: [string, string | undefined][] = [
      ...MODS.filter((m) => m.target === 'unet').map((m): [string, string] => [m.kohya, m.module.replaceAll('.', '_')]),
      ['input_blocks_0_0', 'conv_in'],
      ['input_blocks_2_0_emb_layers_1', 'down_blocks_0_resnets_1_time_emb_proj'],
      ['input_blocks_4_0_skip_connection', 'down_blocks_1_resnets_0_conv_shortcut'],
      ['input_blocks_5_1_proj_in', 'down_blocks_1_attentions_1_proj_in'],
      ['input_blocks_6_0_op', 'down_blocks_1_downsamplers_0_conv'],
      ['input_blocks_7_1_transformer_blocks_1_attn2_to_v', 'down_blocks_2_attentions_0_transformer_blocks_1_attn2_to_v'],
      ['middle_block_0_in_layers_2', 'mid_block_resnets_0_conv1'],
      ['output_blocks_5_2_conv', 'up_blocks_1_upsamplers_0_conv'],
      ['output_blocks_6_0_in_layers_2', 'up_blocks_2_resnets_0_conv1'],
      ['output_blocks_8_0_out_layers_3', 'up_blocks_2_resnets_2_conv2'],
      ['label_emb_0_2', 'add_embedding_linear_2'],
      ['out_2', 'conv_out'],
      // the first down block (DownBlock2D) has no transformers; the last has no downsampler,
      // the last up block no upsampler; there are 9 input and 9 output blocks after conv_in
      ['input_blocks_1_1_proj_in', undefined],
      ['input_blocks_9_0_op', undefined],
      ['input_blocks_10_0_in_layers_2', undefined],
      ['output_blocks_8_1_conv', undefined],
      ['output_blocks_9_0_in_layers_2', undefined],
      ['middle_block_3_in_layers_2', undefined],
      ['input_blocks_1_0_in_layers_0', undefined],
    ];
    for (const [sgm, want] of cases) assert.equal(sgmToDiffusers(sgm, layout), want, sgm);
    assert.equal(cases.length, 13 + 19);
  });

  test("SD 1.5's layout: its first up block (UpBlock2D) has the upsampler at .1.conv", () => {
    const sd15 = unetLayoutFromConfig({
      layers_per_block: 2,
      down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
    })!;
    assert.equal(sgmToDiffusers('output_blocks_2_1_conv', sd15), 'up_blocks_0_upsamplers_0_conv');
    assert.equal(sgmToDiffusers('output_blocks_5_2_conv', sd15), 'up_blocks_1_upsamplers_0_conv');
    assert.equal(sgmToDiffusers('input_blocks_1_1_proj_in', sd15), 'down_blocks_0_attentions_0_proj_in');
    assert.equal(sgmToDiffusers('output_blocks_11_1_proj_out', sd15), 'up_blocks_3_attentions_2_proj_out');
    assert.equal(sgmToDiffusers('input_blocks_11_0_in_layers_2', sd15), 'down_blocks_3_resnets_1_conv1');
  });
});

describe('SDXL kohya LoRAs onto the graphs', () => {
  test('both naming schemes map every module onto its model, the node the test names', async () => {
    const { sgm, diffusers } = await loraFiles();
    let checked = 0;
    for (const file of [sgm, diffusers]) {
      const lora = await openLora(file, 'x');
      try {
        assert.equal(lora.parsed.format, 'kohya');
        for (const target of Object.keys(FILES) as Target[]) {
          const g = (await loadModel(FILES[target], { externalData: 'lazy' })).graph!;
          const r = mapLoraModules(g, lora.parsed.modules, [target], file);
          const want = MODS.filter((m) => m.target === target);
          assert.equal(r.unmatched.length, 0, `${target}: ${r.unmatched.map((m) => m.id).join(', ')}`);
          assert.equal(r.matched.length, want.length);
          for (const { module, site } of r.matched) {
            const m = want.find((x) => (target === 'unet' && file === diffusers ? x.module.replaceAll('.', '_') : x.kohya) === module.path)!;
            assert.ok(m, module.path);
            assert.equal(site.initializer, weightOf(g, m.module).t);
            assert.equal(site.modulePath, m.module);
            checked++;
          }
        }
      } finally {
        await lora.file.close();
      }
    }
    assert.equal(checked, 2 * MODS.length);
  });

  test('an SDXL LoRA on SD 1.x, and an SD 1.x LoRA on SDXL, are refused with one line', async () => {
    const { sgm } = await loraFiles();
    const cases: [string, string][] = [
      [sgm, fx('tiny-sd1/unet/model.onnx')],
      [fx('lora/full_r8_a8_f16.safetensors'), FILES.unet],
    ];
    for (const [file, unetFile] of cases) {
      const unet = await loadModel(unetFile, { externalData: 'lazy' });
      const lora = await openLora(file, 'x');
      try {
        await assert.rejects(mergeLoras(unet, [{ lora, scale: 1 }], ['unet'], 'the UNet'), (e: unknown) => {
          assert.ok(e instanceof UsageError, String(e));
          assert.ok(!e.message.includes('\n'), e.message);
          assert.match(e.message, /another (architecture|model)/);
          return true;
        });
      } finally {
        await lora.file.close();
      }
    }
  });
});

/** A model with the test's own merge of `mods` written into its weights. */
async function mergedByHand(target: Target, f: Map<Mod, Factors>, scale: number): Promise<ModelProto> {
  const model = await loadModel(FILES[target]);
  for (const m of MODS.filter((x) => x.target === target)) {
    const { t, layout } = weightOf(model.graph!, m.module);
    const w = expected(await floatsOf(t), f.get(m)!, layout, scale);
    t.rawData = new Uint8Array(Float32Array.from(w).buffer);
  }
  return model;
}

describe('SDXL LoRA variants', () => {
  test('changed weights equal W + scale·alpha/rank·up·down; both namings give the same bytes; text_encoder_2 keeps its outputs', async () => {
    const { dir, sgm, diffusers, f } = await loraFiles();
    const cacheDir = path.join(dir, 'cache-variants');
    let checked = 0;
    for (const target of Object.keys(FILES) as Target[]) {
      const base = (await loadModel(FILES[target], { externalData: 'lazy' })).graph!;
      const va = await getLoraVariant(FILES[target], { cacheDir, target, loras: [{ path: sgm, scale: 0.8 }] });
      const vb = await getLoraVariant(FILES[target], { cacheDir, target, loras: [{ path: diffusers, scale: 0.8 }] });
      const want = MODS.filter((m) => m.target === target);
      assert.equal(va.changed, want.length);
      assert.deepEqual(va.reports.map((r) => [r.total, r.matched]), [[want.length, want.length]]);
      const ga = (await loadModel(va.path, { externalData: 'lazy' })).graph!;
      const gb = (await loadModel(vb.path, { externalData: 'lazy' })).graph!;
      for (const m of want) {
        const { t, layout } = weightOf(base, m.module);
        const exp = expected(await floatsOf(t), f.get(m)!, layout, 0.8);
        const a = await floatsOf(weightOf(ga, m.module).t);
        const b = await floatsOf(weightOf(gb, m.module).t);
        assert.ok(maxAbsDiff(a, exp) < 2e-6, `${m.module}: ${maxAbsDiff(a, exp)}`);
        assert.deepEqual(b, a);
        checked++;
      }
      assert.deepEqual(ga.output.map((o) => o.name), base.output.map((o) => o.name));
    }
    assert.equal(checked, MODS.length);

    // text_encoder_2's variant runs with its outputs, and text_embeds is the hand-merged model's
    const v2 = await getLoraVariant(FILES.text_encoder_2, { cacheDir, target: 'text_encoder_2', loras: [{ path: sgm, scale: 0.8 }] });
    const hand = path.join(dir, 'te2-hand.onnx');
    writeFileSync(hand, encodeModel(await mergedByHand('text_encoder_2', f, 0.8)));
    const ids = new ort.Tensor('int64', BigInt64Array.from([49406, 320, 2368, 49407, ...Array(73).fill(0)].map(BigInt)), [1, 77]);
    const run = async (file: string): Promise<ort.InferenceSession.OnnxValueMapType> => {
      const s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
      try {
        return await s.run({ input_ids: ids });
      } finally {
        await s.release();
      }
    };
    const [lo, ha, ba] = [await run(v2.path), await run(hand), await run(FILES.text_encoder_2)];
    for (const k of ['text_embeds', 'last_hidden_state', 'hidden_states.1']) {
      assert.ok(maxAbsDiff(lo[k]!.data as Float32Array, ha[k]!.data as Float32Array) < 1e-5, k);
    }
    assert.ok(maxAbsDiff(lo['text_embeds']!.data as Float32Array, ba['text_embeds']!.data as Float32Array) > 1e-3, 'the LoRA changes text_embeds');
  });

  test('PEFT keys (unet., text_encoder., text_encoder_2.; alpha = rank) merge into the same modules', async () => {
    const { dir, f } = await loraFiles();
    const peft = path.join(dir, 'peft.safetensors');
    writeLora(peft, f, 'peft');
    let checked = 0;
    for (const target of Object.keys(FILES) as Target[]) {
      const base = (await loadModel(FILES[target], { externalData: 'lazy' })).graph!;
      const v = await getLoraVariant(FILES[target], { cacheDir: path.join(dir, 'cache-peft'), target, loras: [{ path: peft, scale: 0.5 }] });
      const want = MODS.filter((m) => m.target === target);
      assert.deepEqual(v.reports.map((r) => [r.total, r.matched]), [[want.length, want.length]]);
      const g = (await loadModel(v.path, { externalData: 'lazy' })).graph!;
      for (const m of want) {
        const { t, layout } = weightOf(base, m.module);
        const exp = expected(await floatsOf(t), f.get(m)!, layout, 0.5, 1);
        const d = maxAbsDiff(await floatsOf(weightOf(g, m.module).t), exp);
        assert.ok(d < 2e-6, `${m.module}: ${d}`);
        checked++;
      }
    }
    assert.equal(checked, MODS.length);
  });

  test('scale 0 is the base model itself', async () => {
    const { dir, sgm } = await loraFiles();
    for (const target of Object.keys(FILES) as Target[]) {
      const v = await getLoraVariant(FILES[target], { cacheDir: path.join(dir, 'cache-zero'), target, loras: [{ path: sgm, scale: 0 }] });
      assert.equal(v.path, FILES[target]);
      assert.equal(v.changed, 0);
    }
  });
});

async function collect(gen: AsyncGenerator<GeneratedImage>): Promise<GeneratedImage[]> {
  const out: GeneratedImage[] = [];
  for await (const img of gen) out.push(img);
  return out;
}

describe('SDXL pipeline with LoRAs and embeddings', () => {
  test('an image with the LoRA differs from without, matches the hand-merged models, and scale 0 is bit-identical to none', async () => {
    const { dir, sgm, f } = await loraFiles();
    // the hand-merged folder: tiny-sdxl with all three models merged by this test
    const folder = path.join(dir, 'hand-merged');
    cpSync(TINY, folder, { recursive: true });
    for (const target of Object.keys(FILES) as Target[]) {
      const rel = path.relative(TINY, FILES[target]);
      writeFileSync(path.join(folder, rel), encodeModel(await mergedByHand(target, f, 0.8)));
    }
    const p = (loras?: { path: string; scale: number }[]) =>
      generationParams({ prompt: 'a photo of a cat', width: 128, height: 128, steps: 2, cfg: 5, seed: 7, scheduler: 'euler', ...(loras ? { loras } : {}) });
    const latentsOf = async (pipe: StableDiffusionPipeline, params: ReturnType<typeof p>): Promise<{ latents: Float32Array; pixels: Uint8Array }> => {
      let latents: Float32Array | undefined;
      const [img] = await collect(pipe.generate(params, { onFinalLatents: (_s, l) => (latents = Float32Array.from(l[0]!)) }));
      return { latents: latents!, pixels: img!.rgb };
    };
    const notices: string[] = [];
    const pipe = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir: path.join(dir, 'cache-pipe') }, { onNotice: (m) => notices.push(m) });
    let none, zero, withLora;
    try {
      none = await latentsOf(pipe, p());
      withLora = await latentsOf(pipe, p([{ path: sgm, scale: 0.8 }]));
      zero = await latentsOf(pipe, p([{ path: sgm, scale: 0 }]));
    } finally {
      await pipe.dispose();
    }
    const handPipe = await StableDiffusionPipeline.load(folder, { device: 'cpu', cacheDir: path.join(dir, 'cache-hand') });
    let hand;
    try {
      hand = await latentsOf(handPipe, p());
    } finally {
      await handPipe.dispose();
    }
    assert.deepEqual(notices.filter((n) => /LoRA|match nothing/.test(n)), []);
    assert.deepEqual(zero.latents, none.latents);
    assert.deepEqual(Buffer.from(zero.pixels), Buffer.from(none.pixels));
    assert.ok(maxAbsDiff(withLora.latents, none.latents) > 1e-3, 'the LoRA changes the image');
    const d = maxAbsDiff(withLora.latents, hand.latents);
    assert.ok(d < 1e-4, `LoRA'd vs hand-merged latents: ${d}`);
    assert.ok(maxAbsDiff(withLora.pixels, hand.pixels) <= 1, 'pixels: LoRA vs hand-merged');
  });

  test('embeddings: clip_l rows in text_encoder, clip_g rows in text_encoder_2; files for one encoder or for SD 1.x are left out with one line', async () => {
    const dir = tmp();
    const emb = path.join(dir, 'emb');
    mkdirSync(emb);
    const tok = await loadTokenizer(fx('tiny-sdxl/tokenizer'));
    const tok2 = await loadTokenizer(fx('tiny-sdxl/tokenizer_2'));
    const rowsOf = async (file: string, t: typeof tok, width: number): Promise<number[]> => {
      const g = (await loadModel(file, { externalData: 'lazy' })).graph!;
      const table = g.initializer.find((i) => i.name === 'text_model.embeddings.token_embedding.weight')!;
      assert.deepEqual(table.dims.map(Number), [49408, width]);
      const all = await floatsOf(table);
      return [t.encode('cat')[0]!, t.encode('dog')[0]!].flatMap((id) => [...all.subarray(id * width, (id + 1) * width)]);
    };
    writeSafetensors(path.join(emb, 'catdog.safetensors'), {
      clip_l: f32([2, 32], await rowsOf(FILES.text_encoder, tok, 32)),
      clip_g: f32([2, 64], await rowsOf(FILES.text_encoder_2, tok2, 64)),
    });
    writeSafetensors(path.join(emb, 'onlyl.safetensors'), { clip_l: f32([1, 32], rand(32, 5)) });
    writeSafetensors(path.join(emb, 'sdone.safetensors'), { emb_params: f32([1, 32], rand(32, 6)) });
    const notices: string[] = [];
    const pipe = await StableDiffusionPipeline.load(TINY, { device: 'cpu', cacheDir: path.join(dir, 'cache') }, { onNotice: (m) => notices.push(m) }, { embeddingsDir: emb });
    const cond: SdxlConditioning[] = [];
    try {
      for (const prompt of ['a photo of catdog at night', 'a photo of cat dog at night', 'a photo of onlyl sdone']) {
        await collect(pipe.generate(generationParams({ prompt, width: 128, height: 128, steps: 1, cfg: 5, seed: 1, scheduler: 'euler' }), { onSdxlConditioning: (c) => cond.push(c) }));
      }
    } finally {
      await pipe.dispose();
    }
    assert.deepEqual(notices.filter((n) => n.startsWith('embedding ')), [
      'embedding onlyl: has clip_l vectors but no clip_g; SDXL needs both (one set per text encoder); not used',
      'embedding sdone: an SD 1.x/2.x embedding (width 32) does not fit SDXL, whose embeddings have clip_l and clip_g vectors (one set per text encoder); not used',
    ]);
    const [a, b, c] = cond as [SdxlConditioning, SdxlConditioning, SdxlConditioning];
    // the embedding's rows have new ids in both encoders, and its outputs are the words'
    assert.deepEqual(a.cond.embedding.ids[0]!.slice(4, 6), [49408, 49409]);
    assert.deepEqual(a.cond.ids2[0]!.slice(4, 6), [49408, 49409]);
    assert.deepEqual(b.cond.embedding.ids[0]!.slice(4, 6), [2368, 1929]);
    assert.ok(maxAbsDiff(a.cond.embedding.data, b.cond.embedding.data) < 1e-5, 'prompt embeddings: embedding vs its words');
    // the pooled embedding (text_embeds) is still taken at the end token
    assert.ok(maxAbsDiff(a.cond.pooled, b.cond.pooled) < 1e-5, `pooled: embedding vs its words: ${maxAbsDiff(a.cond.pooled, b.cond.pooled)}`);
    // the files left out are words: their names tokenize as text
    assert.deepEqual(c.cond.embedding.ids[0]!.slice(4, 4 + tok.encode('onlyl sdone').length), tok.encode('onlyl sdone'));
  });
});
