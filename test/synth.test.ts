import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import * as ort from 'onnxruntime-node';
import { decodeModel } from '../src/onnx/proto.js';
import { attrInt } from '../src/onnx/attributes.js';
import { UsageError } from '../src/errors.js';
import { DataType, type ModelProto, type NodeProto } from '../src/onnx/types.js';
import { GraphBuilder, constTensor, int, ints } from '../src/onnx/builder.js';
import { float16ToFloat32, float32ToFloat16 } from '../src/onnx/tensor.js';
import { generateTinyVocab } from '../src/text/tiny-vocab.js';
import { archSpec } from '../src/synth/archs.js';
import { buildComponents, countParams, resolveArch, synthesize } from '../src/synth/index.js';
import { buildUNet, unetConfigFromDiffusers, type UNetConfig } from '../src/synth/unet.js';
import { buildTextEncoder } from '../src/synth/text-encoder.js';
import { buildVaeDecoder } from '../src/synth/vae-decoder.js';
import { modelBytes, writeModel } from '../src/synth/writer.js';
import { Xoshiro128, generateParam, tensorSeed } from '../src/synth/weights.js';
import { maxAbsDiff, FIXTURES_URL as FIX, fx, generationParams } from './helpers.js';

const fixture = (p: string): ModelProto => decodeModel(readFileSync(new URL(p, FIX)));

// ---------------------------------------------------------------------------------------------
// GraphBuilder

test('GraphBuilder names nodes and outputs like torch.onnx.export', () => {
  const b = new GraphBuilder({ opset: 14 });
  const x = b.input('x', DataType.FLOAT, ['batch', 4]);
  const [y] = b.scope('down_blocks.0', () =>
    b.scope('attn1', () => {
      const a = b.op('Transpose', [x], { perm: ints([1, 0]) });
      const k = b.constInt64([0]);
      return [b.op('Transpose', [a, k]), b.op('Unsqueeze', [a, b.anonConstant(constTensor(DataType.INT64, [1], [0]), 'Unsqueeze')])];
    }),
  );
  b.output(y!, DataType.FLOAT, [4, 'batch']);
  const m = b.build();
  const names = m.graph!.node.map((n) => n.name);
  assert.deepEqual(names, [
    '/down_blocks.0/attn1/Transpose',
    '/down_blocks.0/attn1/Constant',
    '/down_blocks.0/attn1/Transpose_1',
    `Constant_3`,
    '/down_blocks.0/attn1/Unsqueeze',
  ]);
  assert.equal(y, '/down_blocks.0/attn1/Transpose_1_output_0');
  assert.match(m.graph!.node[3]!.output[0]!, /^onnx::Unsqueeze_\d+$/);
  assert.equal(m.producerName, 'pytorch');
  assert.equal(Number(m.irVersion), 7);
  assert.deepEqual(m.opsetImport.map((o) => [o.domain, Number(o.version)]), [['', 14]]);
  assert.deepEqual(
    m.graph!.input[0]!.type!.tensorType!.shape!.dim.map((d) => d.dimParam ?? Number(d.dimValue)),
    ['batch', 4],
  );
  const attr = m.graph!.node[0]!.attribute[0]!;
  assert.deepEqual([attr.name, attr.ints], ['perm', [1, 0]]);
  assert.throws(() => b.node('Relu', [x], undefined, { name: '/down_blocks.0/attn1/Transpose' }), /duplicate/);
  // ready AttributeProtos and TensorProtos are accepted as well
  const r = b.op('Softmax', [x], [attrInt('axis', -1)]);
  assert.equal(Number(b.build().graph!.node.at(-1)!.attribute[0]!.i), -1);
  assert.equal(r, '/Softmax_output_0');
  b.addInitializer(constTensor(DataType.FLOAT, [1], [2], 'w'));
  assert.throws(() => b.initializer('w', DataType.FLOAT, [1]), /duplicate initializer/);
  assert.deepEqual(int(3), { int: 3 });
});

test('constTensor encodes little-endian raw data per type', () => {
  const t = constTensor(DataType.INT64, [2], [1, -1]);
  assert.deepEqual([...t.rawData!], [1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255]);
  const h = constTensor(DataType.FLOAT16, [2], [1, -2]);
  assert.deepEqual([...h.rawData!], [0x00, 0x3c, 0x00, 0xc0]);
  assert.throws(() => constTensor(DataType.FLOAT, [3], [1, 2]), /3 values|2 values/);
});

// ---------------------------------------------------------------------------------------------
// structure against the real exports

const FIXTURE_UNET: UNetConfig = unetConfigFromDiffusers(
  JSON.parse(readFileSync(new URL('tiny-unet/config.json', FIX), 'utf8')) as Record<string, unknown>,
);

function scopedNames(m: ModelProto, filter: (n: string) => boolean): string[] {
  return m.graph!.node.map((n) => n.name ?? '').filter((n) => n.startsWith('/') && filter(n));
}

const TB = '/down_blocks.0/attentions.0/transformer_blocks.0/';
const blockOps = (m: ModelProto, prefix: string): string[] =>
  m.graph!.node.filter((n) => (n.name ?? '').startsWith(prefix)).map((n) => n.opType);

test('tiny UNet (fixture config, opset 14) matches the torch export of diffusers UNet2DConditionModel', () => {
  const ref = fixture('tiny-unet/model.onnx');
  const built = buildUNet(FIXTURE_UNET, { opset: 14, fp16: false, timestepType: 'float32' });
  const ours = decodeModel(modelBytes(built, 1));

  // transformer-block node names (attn1/attn2/ff/norm1-3), every block
  const inTB = (n: string): boolean => /\/transformer_blocks\.\d+\/(attn1|attn2|ff|norm1|norm2|norm3)\//.test(n);
  const refTB = scopedNames(ref, inTB);
  assert.ok(refTB.length > 1000);
  assert.deepEqual(new Set(scopedNames(ours, inTB)), new Set(refTB));
  // op-type sequence inside one transformer block, and in the mid block's
  assert.deepEqual(blockOps(ours, TB), blockOps(ref, TB));
  const mid = '/mid_block/attentions.0/transformer_blocks.0/';
  assert.deepEqual(blockOps(ours, mid), blockOps(ref, mid));
  // the whole graph: same scoped node names in the same order, same op types
  const seq = (m: ModelProto): string[] =>
    m.graph!.node.filter((n) => (n.name ?? '').startsWith('/')).map((n) => `${n.name}:${n.opType}`);
  assert.deepEqual(seq(ours), seq(ref));
  assert.equal(ours.graph!.node.length, ref.graph!.node.length);

  // graph inputs / outputs
  const io = (m: ModelProto) =>
    [...m.graph!.input, ...m.graph!.output].map((v) => [v.name, v.type!.tensorType!.elemType]);
  assert.deepEqual(io(ours), io(ref));
  const dims = (m: ModelProto, i: number) =>
    m.graph!.input[i]!.type!.tensorType!.shape!.dim.map((d) => d.dimParam ?? Number(d.dimValue));
  for (let i = 0; i < 3; i++) assert.deepEqual(dims(ours, i), dims(ref, i));

  // initializers: state-dict names with shapes, derived ones (onnx::MatMul_n …) in the same order
  const named = (m: ModelProto) =>
    new Map(m.graph!.initializer.filter((t) => !t.name!.startsWith('onnx::')).map((t) => [t.name, t.dims.map(Number)]));
  assert.deepEqual(named(ours), named(ref));
  const derived = (m: ModelProto) =>
    m.graph!.initializer
      .filter((t) => t.name!.startsWith('onnx::'))
      .map((t) => `${t.name!.replace(/_\d+$/, '')}${JSON.stringify(t.dims.map(Number))}`);
  assert.deepEqual(derived(ours), derived(ref));
  assert.equal(ours.producerName, ref.producerName);
  assert.equal(Number(ours.irVersion), Number(ref.irVersion));
});

test('tiny text encoder and VAE decoder match the diffusers-script exports of tiny-sd1', () => {
  const cfg = (p: string) => JSON.parse(readFileSync(new URL(`tiny-sd1/${p}/config.json`, FIX), 'utf8'));
  const te = cfg('text_encoder');
  const vae = cfg('vae_decoder');
  const teCfg = {
    ...archSpec('tiny').textEncoder,
    vocabSize: te.vocab_size,
    hiddenSize: te.hidden_size,
    intermediateSize: te.intermediate_size,
    numLayers: te.num_hidden_layers,
    numHeads: te.num_attention_heads,
    maxPositions: te.max_position_embeddings,
    hiddenAct: te.hidden_act,
  };
  const vaeCfg = {
    ...archSpec('tiny').vae,
    blockOutChannels: vae.block_out_channels,
    layersPerBlock: vae.layers_per_block,
    normNumGroups: vae.norm_num_groups,
  };
  for (const [name, built] of [
    ['text_encoder', buildTextEncoder(teCfg, { opset: 14, fp16: false })],
    ['vae_decoder', buildVaeDecoder(vaeCfg, { opset: 14, fp16: false })],
  ] as const) {
    const ref = fixture(`tiny-sd1/${name}/model.onnx`);
    const ours = built.ctx.b.build();
    const seq = (m: ModelProto): string[] =>
      m.graph!.node.filter((n) => (n.name ?? '').startsWith('/')).map((n) => `${n.name}:${n.opType}`);
    assert.deepEqual(seq(ours), seq(ref), name);
    const key = (n: NodeProto) => `${n.opType}(${n.input.map((i) => i.replace(/_\d+$/, '')).join(',')})`;
    assert.deepEqual(ours.graph!.node.map(key), ref.graph!.node.map(key), name);
    const io = (m: ModelProto) => [...m.graph!.input, ...m.graph!.output].map((v) => v.name);
    assert.deepEqual(io(ours), io(ref), name);
    const named = (m: ModelProto) =>
      new Map(m.graph!.initializer.filter((t) => !t.name!.startsWith('onnx::')).map((t) => [t.name, t.dims.map(Number)]));
    assert.deepEqual(named(ours), named(ref), name);
  }
});

test('opset 17 uses LayerNormalization; SD2 style uses linear proj_in/proj_out', () => {
  const spec = resolveArch('tiny', 'sd2');
  const m17 = buildUNet(spec.unet, { opset: 17, fp16: false, timestepType: 'float32' }).ctx.b.build();
  const ops = new Set(m17.graph!.node.map((n) => n.opType));
  assert.ok(ops.has('LayerNormalization'));
  assert.ok(!ops.has('ReduceMean'));
  assert.deepEqual(m17.opsetImport.map((o) => Number(o.version)), [17]);
  const names = new Set(m17.graph!.node.map((n) => n.name));
  assert.ok(names.has('/down_blocks.0/attentions.0/proj_in/MatMul'));
  assert.ok(names.has('/down_blocks.0/attentions.0/transformer_blocks.0/norm1/LayerNormalization'));
  assert.ok(!names.has('/down_blocks.0/attentions.0/proj_in/Conv'));
  // per-block heads [2, 4]: the head split constant of the 64-channel mid block is 4
  const c = m17.graph!.node.find((n) => n.name === '/mid_block/attentions.0/transformer_blocks.0/attn1/Constant_4');
  const raw = c!.attribute[0]!.t!.rawData!;
  assert.equal(Number(new BigInt64Array(raw.slice().buffer)[0]), 4);
});

// ---------------------------------------------------------------------------------------------
// parameter counts (real SD shapes)

test('countParams gives the real Stable Diffusion parameter counts', () => {
  const sd15 = countParams('sd15');
  assert.equal(sd15.unet, 859520964);
  assert.equal(sd15.textEncoder, 123060480); // CLIP ViT-L/14 text model
  assert.equal(sd15.vaeDecoder, 49490199); // decoder + post_quant_conv
  // AutoencoderKL has 83,653,863 parameters: the rest is the encoder + quant_conv
  assert.equal(sd15.vaeEncoder, 83653863 - 49490199);
  const sd21 = countParams('sd21');
  assert.equal(sd21.unet, 865910724);
  assert.equal(sd21.textEncoder, 340387840); // OpenCLIP ViT-H text, 23 layers
  const tiny = countParams('tiny');
  const vocab = Object.keys(generateTinyVocab().vocab).length;
  // per layer: q/k/v/out 4·(32·32+32) + 2 LayerNorms 2·64 + fc1 32·64+64 + fc2 64·32+32 = 8544;
  // plus the final LayerNorm and the token / position embeddings
  assert.equal(tiny.textEncoder, 3 * 8544 + 64 + vocab * 32 + 77 * 32);
});

test('sd15 / sd21 graphs have the real layer layout (no weights built)', () => {
  for (const arch of ['sd15', 'sd21'] as const) {
    const m = buildComponents(resolveArch(arch));
    const unet = m.unet.ctx.b.build();
    const shapes = new Map(m.unet.params.map((p) => [p.name, p.dims]));
    const blocks = new Set(
      unet.graph!.node.map((n) => /^(.*\/transformer_blocks\.0)\//.exec(n.name ?? '')?.[1]).filter(Boolean),
    );
    assert.equal(blocks.size, 16, arch); // 6 down + 1 mid + 9 up
    assert.deepEqual(shapes.get('conv_in.weight'), [320, 4, 3, 3]);
    assert.deepEqual(shapes.get('time_embedding.linear_1.weight'), [1280, 320]);
    assert.deepEqual(shapes.get('up_blocks.3.resnets.2.conv1.weight'), [320, 640, 3, 3]);
    const heads = (scope: string) => {
      const n = unet.graph!.node.find((x) => x.name === `${scope}/transformer_blocks.0/attn1/Constant_4`)!;
      return Number(new BigInt64Array(n.attribute[0]!.t!.rawData!.slice().buffer)[0]);
    };
    const te = new Map(m.textEncoder.params.map((p) => [p.name, p.dims]));
    if (arch === 'sd15') {
      assert.deepEqual(shapes.get('down_blocks.0.attentions.0.proj_in.weight'), [320, 320, 1, 1]);
      assert.equal(heads('/down_blocks.0/attentions.0'), 8);
      assert.equal(heads('/mid_block/attentions.0'), 8);
      assert.deepEqual(te.get('text_model.embeddings.token_embedding.weight'), [49408, 768]);
      assert.ok(te.has('text_model.encoder.layers.11.mlp.fc2.bias') && !te.has('text_model.encoder.layers.12.mlp.fc2.bias'));
    } else {
      assert.ok(!shapes.has('down_blocks.0.attentions.0.proj_in.weight')); // linear: transposed onnx::MatMul
      assert.deepEqual(shapes.get('down_blocks.0.attentions.0.proj_in.bias'), [320]);
      assert.equal(heads('/down_blocks.0/attentions.0'), 5); // head dim 64 everywhere
      assert.equal(heads('/mid_block/attentions.0'), 20);
      assert.equal(heads('/up_blocks.3/attentions.2'), 5);
      assert.deepEqual(shapes.get('down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias'), [320]);
      assert.deepEqual(te.get('text_model.embeddings.token_embedding.weight'), [49408, 1024]);
      assert.ok(te.has('text_model.encoder.layers.22.mlp.fc2.bias') && !te.has('text_model.encoder.layers.23.mlp.fc2.bias'));
    }
    const vae = new Map(m.vaeDecoder.params.map((p) => [p.name, p.dims]));
    assert.deepEqual(vae.get('decoder.conv_in.weight'), [512, 4, 3, 3]);
    assert.deepEqual(vae.get('decoder.up_blocks.3.resnets.2.conv2.weight'), [128, 128, 3, 3]);
    assert.deepEqual(vae.get('post_quant_conv.weight'), [4, 4, 1, 1]);
  }
});

// ---------------------------------------------------------------------------------------------
// weights

test('weights: seeded, per-tensor deterministic, fan-in bounded, norms 1/0', () => {
  const a = new Xoshiro128(tensorSeed(7, 'x'));
  const b = new Xoshiro128(tensorSeed(7, 'x'));
  const c = new Xoshiro128(tensorSeed(8, 'x'));
  const va = Array.from({ length: 8 }, () => a.nextU32());
  assert.deepEqual(va, Array.from({ length: 8 }, () => b.nextU32()));
  assert.notDeepEqual(va, Array.from({ length: 8 }, () => c.nextU32()));
  const p = { name: 'w', dataType: DataType.FLOAT, dims: [256, 64], rule: { kind: 'uniform', bound: 0.125 } as const, trainable: true };
  const f = new Float32Array(generateParam(3, p).buffer);
  let mn = Infinity, mx = -Infinity, s = 0;
  for (const v of f) { mn = Math.min(mn, v); mx = Math.max(mx, v); s += v * v; }
  assert.ok(mn >= -0.125 && mx < 0.125 && mx > 0.12 && mn < -0.12);
  // uniform variance bound²/3
  assert.ok(Math.abs(s / f.length - 0.125 ** 2 / 3) < 0.0003);
  const ones = new Float32Array(generateParam(3, { ...p, rule: { kind: 'fill', value: 1 } }).buffer);
  assert.ok(ones.every((v) => v === 1));
  const h = new Uint16Array(generateParam(3, { ...p, dataType: DataType.FLOAT16 }).buffer);
  assert.equal(maxAbsDiff(float16ToFloat32(h), float16ToFloat32(float32ToFloat16(f))), 0);
  const pos = generateParam(0, { name: 'p', dataType: DataType.INT64, dims: [1, 77], rule: { kind: 'arange' }, trainable: false });
  assert.deepEqual([...new BigInt64Array(pos.buffer)].slice(75).map(Number), [75, 76]);
});

// ---------------------------------------------------------------------------------------------
// onnxruntime: the synthetic pipelines run and produce real images

/** Largest |a − b| (lengths must match); keeps failure messages short for big tensors. */

type Variant = { style: 'sd1' | 'sd2'; opset: 14 | 17; fp16: boolean };

function stats(a: ArrayLike<number>): { finite: boolean; std: number } {
  let s = 0, s2 = 0, finite = true;
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    if (!Number.isFinite(v)) finite = false;
    s += v;
    s2 += v * v;
  }
  const mean = s / a.length;
  return { finite, std: Math.sqrt(Math.max(0, s2 / a.length - mean * mean)) };
}

async function runPipeline(v: Variant): Promise<{ emb: Float32Array; eps: Float32Array; image: Float32Array }> {
  const spec = resolveArch('tiny', v.style);
  const m = buildComponents(spec, { opset: v.opset, fp16: v.fp16 });
  const ft = (vals: Float32Array, dims: number[]) =>
    v.fp16 ? new ort.Tensor('float16', float32ToFloat16(vals), dims) : new ort.Tensor('float32', vals, dims);
  const read = (t: ort.Tensor): Float32Array =>
    v.fp16 ? float16ToFloat32(t.data as Uint16Array) : (t.data as Float32Array);

  const vocab = generateTinyVocab().vocab;
  const eot = vocab['<|endoftext|>']!;
  const ids = new Int32Array(2 * 77).fill(v.style === 'sd2' ? 0 : eot);
  ids[0] = vocab['<|startoftext|>']!;
  ids[1] = eot;
  ids[77] = ids[0];
  ids[78] = 5;
  ids[79] = 9;
  ids[80] = eot;
  const te = await ort.InferenceSession.create(modelBytes(m.textEncoder, 0, 'text_encoder'));
  const r1 = await te.run({ input_ids: new ort.Tensor('int32', ids, [2, 77]) });
  assert.deepEqual(r1.last_hidden_state!.dims, [2, 77, 32]);
  assert.deepEqual(r1.pooler_output!.dims, [2, 32]);
  const emb = read(r1.last_hidden_state!);
  // pooled output = hidden state at the (first) end-of-text position
  const pooled = read(r1.pooler_output!);
  assert.equal(maxAbsDiff(pooled.slice(32, 64), emb.slice((77 + 3) * 32, (77 + 4) * 32)), 0);
  assert.equal(maxAbsDiff(pooled.slice(0, 32), emb.slice(1 * 32, 2 * 32)), 0);

  const un = await ort.InferenceSession.create(modelBytes(m.unet, 0, 'unet'));
  const H = 16;
  const sample = ft(Float32Array.from({ length: 2 * 4 * H * H }, (_, i) => Math.sin(i * 1.3)), [2, 4, H, H]);
  const r2 = await un.run({
    sample,
    timestep: ft(Float32Array.from([999, 1]), [2]),
    encoder_hidden_states: r1.last_hidden_state!,
  });
  assert.deepEqual(r2.out_sample!.dims, [2, 4, H, H]);
  const eps = read(r2.out_sample!);

  const va = await ort.InferenceSession.create(modelBytes(m.vaeDecoder, 0, 'vae_decoder'));
  const L = 32;
  const latent = Float32Array.from({ length: 4 * L * L }, (_, i) => eps[i % eps.length]! / 0.18215);
  const r3 = await va.run({ latent_sample: ft(latent, [1, 4, L, L]) });
  assert.deepEqual(r3.sample!.dims, [1, 3, 8 * L, 8 * L]);
  return { emb, eps, image: read(r3.sample!) };
}

function assertRealImage(image: Float32Array, label: string): void {
  const all = stats(image);
  assert.ok(all.finite, `${label}: image finite`);
  // not constant: every channel varies over the image, and in uint8 levels too
  const plane = image.length / 3;
  for (let ch = 0; ch < 3; ch++) {
    const s = stats(image.subarray(ch * plane, (ch + 1) * plane));
    assert.ok(s.std > 0.02, `${label}: channel ${ch} std ${s.std}`);
  }
  const levels = new Set<number>();
  for (const x of image) levels.add(Math.round(Math.min(1, Math.max(0, x / 2 + 0.5)) * 255));
  assert.ok(levels.size > 32, `${label}: ${levels.size} uint8 levels`);
}

for (const v of [
  { style: 'sd1', opset: 14, fp16: false },
  { style: 'sd2', opset: 14, fp16: false },
  { style: 'sd1', opset: 17, fp16: false },
  { style: 'sd1', opset: 14, fp16: true },
] as Variant[]) {
  const label = `${v.style} opset ${v.opset}${v.fp16 ? ' fp16' : ''}`;
  test(`tiny pipeline (${label}) runs in onnxruntime with finite outputs and a non-constant image`, async () => {
    const { emb, eps, image } = await runPipeline(v);
    assert.ok(stats(emb).finite && stats(emb).std > 0.5);
    assert.ok(stats(eps).finite && stats(eps).std > 0.01);
    assertRealImage(image, label);
  });
}

test('opset 17 and fp16 variants compute the same function as the opset 14 float32 model', async () => {
  const base = await runPipeline({ style: 'sd1', opset: 14, fp16: false });
  const o17 = await runPipeline({ style: 'sd1', opset: 17, fp16: false });
  assert.ok(maxAbsDiff(base.eps, o17.eps) < 1e-4);
  assert.ok(maxAbsDiff(base.image, o17.image) < 1e-4);
  const f16 = await runPipeline({ style: 'sd1', opset: 14, fp16: true });
  assert.ok(maxAbsDiff(base.eps, f16.eps) < 0.05);
});

test('timestep input variants: int64 [B] and float32 scalar give the float32 [B] result', async () => {
  const spec = resolveArch('tiny');
  const run = async (tt: 'float32' | 'int64' | 'float32-scalar', timestep: ort.Tensor) => {
    const built = buildUNet(spec.unet, { opset: 14, fp16: false, timestepType: tt });
    const s = await ort.InferenceSession.create(modelBytes(built, 0, 'unet'));
    assert.equal(s.inputNames[1], 'timestep');
    const H = 8;
    const r = await s.run({
      sample: new ort.Tensor('float32', Float32Array.from({ length: 2 * 4 * H * H }, (_, i) => Math.cos(i)), [2, 4, H, H]),
      timestep,
      encoder_hidden_states: new ort.Tensor('float32', Float32Array.from({ length: 2 * 7 * 32 }, (_, i) => Math.sin(i)), [2, 7, 32]),
    });
    return r.out_sample!.data as Float32Array;
  };
  const a = await run('float32', new ort.Tensor('float32', Float32Array.from([801, 801]), [2]));
  const b = await run('int64', new ort.Tensor('int64', BigInt64Array.from([801n, 801n]), [2]));
  const c = await run('float32-scalar', new ort.Tensor('float32', Float32Array.from([801]), []));
  assert.equal(maxAbsDiff(b, a), 0);
  assert.equal(maxAbsDiff(c, a), 0);
});

// ---------------------------------------------------------------------------------------------
// synthesize(): the folder

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else out.push(p);
  }
  return out.sort();
}

test('synthesize(tiny) writes a complete diffusers ONNX folder; same seed → byte-identical files', async () => {
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-'));
  try {
    const progress: string[] = [];
    const r1 = await synthesize({
      arch: 'tiny',
      outDir: join(root, 'a'),
      seed: 42,
      onProgress: (stage, done, total) => {
        assert.ok(done <= total);
        if (done === total) progress.push(stage);
      },
    });
    await synthesize({ arch: 'tiny', outDir: join(root, 'b'), seed: 42 });
    await synthesize({ arch: 'tiny', outDir: join(root, 'c'), seed: 43 });
    assert.deepEqual(progress, ['text_encoder', 'unet', 'vae_decoder', 'vae_encoder']);
    const rel = (d: string) => listFiles(join(root, d)).map((p) => relative(join(root, d), p));
    assert.deepEqual(rel('a'), [
      'model_index.json',
      'scheduler/scheduler_config.json',
      'text_encoder/config.json',
      'text_encoder/model.onnx',
      'tokenizer/merges.txt',
      'tokenizer/special_tokens_map.json',
      'tokenizer/tokenizer_config.json',
      'tokenizer/vocab.json',
      'unet/config.json',
      'unet/model.onnx',
      'vae_decoder/config.json',
      'vae_decoder/model.onnx',
      'vae_encoder/config.json',
      'vae_encoder/model.onnx',
    ]);
    assert.deepEqual(r1.files.map((p) => relative(join(root, 'a'), p)).sort(), rel('a'));
    for (const f of rel('a')) {
      assert.ok(readFileSync(join(root, 'a', f)).equals(readFileSync(join(root, 'b', f))), f);
    }
    assert.ok(!readFileSync(join(root, 'a/unet/model.onnx')).equals(readFileSync(join(root, 'c/unet/model.onnx'))));
    assert.deepEqual(r1.params, countParams('tiny'));

    const json = (p: string) => JSON.parse(readFileSync(join(root, 'a', p), 'utf8'));
    assert.equal(json('model_index.json')._class_name, 'OnnxStableDiffusionPipeline');
    const sched = json('scheduler/scheduler_config.json');
    assert.deepEqual(
      [sched._class_name, sched.beta_start, sched.beta_end, sched.beta_schedule, sched.num_train_timesteps],
      ['PNDMScheduler', 0.00085, 0.012, 'scaled_linear', 1000],
    );
    assert.deepEqual([sched.steps_offset, sched.skip_prk_steps, sched.set_alpha_to_one, sched.clip_sample], [1, true, false, false]);
    const vae = json('vae_decoder/config.json');
    assert.equal(2 ** (vae.block_out_channels.length - 1), 8);
    assert.equal(vae.scaling_factor, 0.18215);
    const vocab = generateTinyVocab();
    assert.deepEqual(json('tokenizer/vocab.json'), vocab.vocab);
    const merges = readFileSync(join(root, 'a/tokenizer/merges.txt'), 'utf8').split('\n');
    assert.equal(merges[0], '#version: 0.2');
    assert.deepEqual(merges.slice(1, -1), vocab.merges);
    assert.equal(json('text_encoder/config.json').vocab_size, Object.keys(vocab.vocab).length);
    assert.equal(json('tokenizer/tokenizer_config.json').pad_token, '<|endoftext|>');

    // the written models load from their paths
    const s = await ort.InferenceSession.create(join(root, 'a/unet/model.onnx'));
    assert.deepEqual(s.inputNames, ['sample', 'timestep', 'encoder_hidden_states']);
    assert.deepEqual(s.outputNames, ['out_sample']);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('bad options are usage errors', async () => {
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-'));
  try {
    const bad = [
      { arch: 'sd3' },
      { arch: 'sd15', style: 'sd2' },
      { arch: 'tiny', opset: 13 },
      { arch: 'tiny', timestepType: 'float64' },
    ];
    for (const o of bad) {
      await assert.rejects(synthesize({ outDir: root, ...o } as never), (e: Error) => e instanceof UsageError, JSON.stringify(o));
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('sd21-style tiny folder: v_prediction DDIM config, "!" padding, linear projections', async () => {
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-'));
  try {
    await synthesize({ arch: 'tiny', style: 'sd2', outDir: root, seed: 1 });
    const json = (p: string) => JSON.parse(readFileSync(join(root, p), 'utf8'));
    assert.equal(json('scheduler/scheduler_config.json').prediction_type, 'v_prediction');
    assert.equal(json('tokenizer/tokenizer_config.json').pad_token, '!');
    const unet = json('unet/config.json');
    assert.deepEqual([unet.use_linear_projection, unet.attention_head_dim, unet.upcast_attention], [true, [2, 4], true]);
    assert.equal(json('text_encoder/config.json').hidden_act, 'gelu');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('external data: weights.pb streaming gives the same model as inline weights', async () => {
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-'));
  try {
    const built = buildComponents(resolveArch('tiny')).unet;
    const inline = modelBytes(built, 5, 'unet');
    const fresh = buildComponents(resolveArch('tiny')).unet;
    const files = await writeModel(fresh, root, { seed: 5, salt: 'unet', externalFile: 'weights.pb' });
    assert.deepEqual(files.map((f) => relative(root, f)), ['model.onnx', 'weights.pb']);
    const m = decodeModel(readFileSync(join(root, 'model.onnx')));
    const ext = m.graph!.initializer.filter((t) => t.externalData?.length);
    const small = m.graph!.initializer.filter((t) => !t.externalData?.length);
    assert.ok(ext.length > 100 && small.every((t) => t.rawData!.length < 1024));
    const last = ext[ext.length - 1]!.externalData!;
    const end = Number(last.find((e) => e.key === 'offset')!.value) + Number(last.find((e) => e.key === 'length')!.value);
    assert.equal(end, statSync(join(root, 'weights.pb')).size);
    const H = 8;
    const feeds = {
      sample: new ort.Tensor('float32', Float32Array.from({ length: 4 * H * H }, (_, i) => Math.cos(i)), [1, 4, H, H]),
      timestep: new ort.Tensor('float32', Float32Array.from([10]), [1]),
      encoder_hidden_states: new ort.Tensor('float32', Float32Array.from({ length: 5 * 32 }, (_, i) => Math.sin(i)), [1, 5, 32]),
    };
    const a = await (await ort.InferenceSession.create(inline)).run(feeds);
    const b = await (await ort.InferenceSession.create(join(root, 'model.onnx'))).run(feeds);
    assert.equal(maxAbsDiff(b.out_sample!.data as Float32Array, a.out_sample!.data as Float32Array), 0);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the synthetic VAE encoder has the diffusers export's named weights (tiny-sd1) and, in a synthesized folder, serves img2img seedably", async () => {
  const { loadModel } = await import('../src/onnx/model-io.js');
  const mine = new Map(buildComponents(resolveArch('tiny')).vaeEncoder.params.map((p) => [p.name, p.dims.join('x')]));
  const ref = await loadModel(fx('tiny-sd1/vae_encoder/model.onnx'));
  const named = ref.graph!.initializer.filter((t) => /^(encoder|quant_conv)\./.test(t.name ?? ""));
  assert.ok(named.length >= 40, `named weights in the export: ${named.length}`);
  for (const t of named) assert.equal(mine.get(t.name!), t.dims.map(Number).join("x"), t.name!);
  const root = mkdtempSync(join(tmpdir(), 'sdgen-synth-enc-'));
  try {
    await synthesize({ arch: 'tiny', outDir: join(root, 'm'), seed: 5 });
    const { StableDiffusionPipeline } = await import('../src/pipeline/pipeline.js');
    const pipe = await StableDiffusionPipeline.load(join(root, 'm'), { device: 'cpu', cacheDir: join(root, 'cache') });
    try {
      const p = generationParams({
        prompt: 'a red fox', width: 64, height: 64, steps: 4, seed: 9, scheduler: 'euler',
        init: { path: fx('img2img/init_512x512.png'), strength: 0.5 },
      });
      const run = async () => {
        const out = [];
        for await (const img of pipe.generate(p)) out.push(img);
        return out;
      };
      const [a, b] = [await run(), await run()];
      assert.equal(a.length, 1);
      assert.ok(Buffer.from(a[0]!.rgb).equals(Buffer.from(b[0]!.rgb)), 'the same seed gives the same image');
      const txt = [];
      for await (const img of pipe.generate({ ...p, init: undefined })) txt.push(img);
      assert.ok(!Buffer.from(a[0]!.rgb).equals(Buffer.from(txt[0]!.rgb)), 'img2img differs from txt2img');
    } finally {
      await pipe.dispose();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

