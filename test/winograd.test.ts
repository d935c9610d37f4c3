/**
 * Winograd convolutions (src/optimize/winograd.ts): the transforms against the definition of a
 * correlation, the rewrite against onnxruntime's own Conv on single convolutions (odd sizes,
 * bias, both tiles), on the real torch export of a UNet and on tiny-sd1's VAE decoder, and the
 * tile choice from spatial strides.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { xorshiftFill } from '../src/bench/inputs.js';
import { decodeModel, encodeModel } from '../src/onnx/proto.js';
import { checkGraph, GraphIndex } from '../src/onnx/graph.js';
import { attrInt, attrInts } from '../src/onnx/attributes.js';
import { floatTensor } from '../src/onnx/tensor.js';
import type { ModelProto, NodeProto } from '../src/onnx/types.js';
import { autoTile, getWinogradModel, spatialStrides, useWinograd, winogradConvs, winogradTransforms, winogradU } from '../src/optimize/index.js';
import { WINOGRAD_WEIGHTS_FILE } from '../src/optimize/conv-mode.js';
import { saveModel } from '../src/onnx/model-io.js';
import { maxAbsDiff, runFeeds, fx, unetFeeds } from './helpers.js';


test('F(2,3) and F(4,3): Aᵀ[(G·g) ⊙ (Bᵀ·d)] is the correlation of d with g (float64, 1e-12)', () => {
  for (const m of [2, 4] as const) {
    const { BT, G, AT } = winogradTransforms(m);
    const a = m + 2;
    for (let trial = 0; trial < 20; trial++) {
      const d = Array.from({ length: a }, (_, i) => Math.sin(trial * 7 + i * 1.3) * 3);
      const g = Array.from({ length: 3 }, (_, i) => Math.cos(trial * 5 + i * 0.7));
      const u = G.map((row) => row.reduce((s, v, j) => s + v * g[j]!, 0));
      const v = BT.map((row) => row.reduce((s, x, j) => s + x * d[j]!, 0));
      const y = AT.map((row) => row.reduce((s, x, j) => s + x * u[j]! * v[j]!, 0));
      const direct = Array.from({ length: m }, (_, i) => d[i]! * g[0]! + d[i + 1]! * g[1]! + d[i + 2]! * g[2]!);
      assert.ok(maxAbsDiff(y, direct) < 1e-12, `m=${m}`);
    }
  }
});

/** One Conv y = conv(x, w[, b]) with the given attributes. */
function convModel(c: number, k: number, attrs: NodeProto['attribute'], bias: boolean, kernel = 3): ModelProto {
  const w = xorshiftFill(k * c * kernel * kernel, 5).map((v) => v * Math.sqrt(3 / (c * kernel * kernel)));
  const init = [floatTensor('w', w, [k, c, kernel, kernel])];
  if (bias) init.push(floatTensor('b', xorshiftFill(k, 9), [k]));
  const dim = (name: string) => ({ dimParam: name });
  const vi = (name: string, ch: number) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [dim('N'), { dimValue: ch }, dim('H'), dim('W')] } } } });
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'test',
    graph: {
      name: 'conv',
      node: [{ name: '/block/conv/Conv', opType: 'Conv', domain: '', input: bias ? ['x', 'w', 'b'] : ['x', 'w'], output: ['y'], attribute: attrs }],
      initializer: init,
      input: [vi('x', c)],
      output: [vi('y', k)],
      valueInfo: [],
    },
  };
}

async function run(m: ModelProto, x: Float32Array, dims: number[]): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(encodeModel(m), { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
  try {
    const out = await s.run({ [s.inputNames[0]!]: new ort.Tensor('float32', x, dims) });
    return out[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

const pad1 = [attrInts('pads', [1, 1, 1, 1]), attrInts('kernel_shape', [3, 3])];

test('a 3×3 convolution in Winograd form equals onnxruntime Conv (tiles 2 and 4, bias or not, sizes not divisible by the tile)', async () => {
  for (const [c, k, n, h, w, bias] of [
    [8, 16, 1, 8, 8, true],
    [16, 8, 2, 7, 10, false],
    [12, 12, 1, 5, 3, true],
    [8, 8, 2, 1, 1, true],
    [24, 40, 1, 13, 9, true],
  ] as const) {
    const x = xorshiftFill(n * c * h * w, c + h * 31 + w);
    const ref = await run(convModel(c, k, pad1, bias), x, [n, c, h, w]);
    const scale = Math.max(...ref.map(Math.abs));
    for (const tile of [2, 4] as const) {
      const m = convModel(c, k, pad1, bias);
      const r = winogradConvs(m, { tile, minChannels: 1 });
      assert.equal(r.count, 1);
      assert.deepEqual(r.byTile, { 2: tile === 2 ? 1 : 0, 4: tile === 4 ? 1 : 0 });
      assert.equal(r.extraWeightBytes, k * c * ((tile + 2) ** 2 - 9) * 4);
      assert.deepEqual(checkGraph(m), []);
      assert.equal(m.graph!.node.filter((nd) => nd.opType === 'Conv' && nd.input[1] === 'w').length, 0, 'the direct Conv is gone');
      const y = await run(m, x, [n, c, h, w]);
      const d = maxAbsDiff(y, ref);
      assert.ok(d <= 2e-6 * Math.max(1, scale) * (tile === 4 ? 4 : 1), `C${c} K${k} ${n}×${h}×${w} tile ${tile}: ${d}`);
    }
  }
});

test('convolutions the rewrite cannot express stay direct, each with its reason', () => {
  const cases: [NodeProto['attribute'], string | null, number?][] = [
    [[attrInts('pads', [1, 1, 1, 1]), attrInts('strides', [2, 2])], 'strided'],
    [[attrInts('pads', [1, 1, 1, 1]), attrInts('dilations', [2, 2])], 'dilated'],
    [[attrInts('pads', [0, 0, 0, 0])], 'padding is not 1'],
    [[], 'padding is not 1'],
    [[attrInts('pads', [1, 1, 1, 1]), attrInt('group', 2)], 'grouped'],
    [[], null, 1], // 1×1: not a candidate, not reported
  ];
  for (const [attrs, reason, kernel] of cases) {
    const m = convModel(8, 8, attrs, true, kernel ?? 3);
    const before = JSON.stringify(m.graph!.node);
    const r = winogradConvs(m, { tile: 2, minChannels: 1 });
    assert.equal(r.count, 0);
    assert.equal(JSON.stringify(m.graph!.node), before);
    if (reason) assert.match(r.skipped[0] ?? '', new RegExp(`: ${reason}$`));
    else assert.deepEqual(r.skipped, []);
  }
  const small = convModel(8, 8, pad1, true);
  assert.match(winogradConvs(small).skipped[0] ?? '', /fewer than 64 channels/);
});

test('auto tile from the spatial stride: the real torch export of a UNet', () => {
  assert.equal(autoTile(1), 4);
  assert.equal(autoTile(0.5), 4);
  assert.equal(autoTile(0.25), 4);
  assert.equal(autoTile(0.125), undefined, "a VAE decoder's image level stays direct");
  assert.equal(autoTile(2), 4);
  assert.equal(autoTile(4), 2);
  assert.equal(autoTile(8), undefined);
  assert.equal(autoTile(undefined), 2);
  const m = decodeModel(readFileSync(fx('tiny-unet/model.onnx')));
  const idx = new GraphIndex(m.graph!);
  const strides = spatialStrides(idx);
  const byConv = new Map(idx.nodesByOp('Conv').map((n) => [n.name, strides.get(n.input[0]!)]));
  // block_out_channels [32, 64]: full resolution, one downsample, back up through Resize(scales 2)
  assert.equal(byConv.get('/conv_in/Conv'), 1);
  assert.equal(byConv.get('/down_blocks.0/resnets.0/conv1/Conv'), 1);
  assert.equal(byConv.get('/down_blocks.0/downsamplers.0/conv/Conv'), 1);
  assert.equal(byConv.get('/down_blocks.1/resnets.0/conv1/Conv'), 2);
  assert.equal(byConv.get('/up_blocks.0/resnets.0/conv1/Conv'), 2);
  assert.equal(byConv.get('/up_blocks.0/upsamplers.0/conv/Conv'), 1);
  assert.equal(byConv.get('/up_blocks.1/resnets.2/conv2/Conv'), 1);
  assert.equal(byConv.get('/conv_out/Conv'), 1);
});

test('spatial strides through Upsample / Resize-10 scales; a Resize to computed sizes is unknown (tile 2)', () => {
  const conv = (name: string, x: string, y: string, stride = 1): NodeProto => ({
    name, opType: 'Conv', domain: '', input: [x, 'w'], output: [y], attribute: [attrInts('pads', [1, 1, 1, 1]), attrInts('strides', [stride, stride])],
  });
  const m: ModelProto = {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 9 }],
    producerName: 'test',
    graph: {
      name: 'g',
      node: [
        conv('c0', 'x', 'a', 2),
        { name: 'up', opType: 'Upsample', domain: '', input: ['a', 'scales'], output: ['b'], attribute: [] },
        conv('c1', 'b', 'c'),
        { name: 'rs', opType: 'Resize', domain: '', input: ['c', '', '', 'sizes'], output: ['d'], attribute: [] },
        conv('c2', 'd', 'e'),
        conv('c3', 'a', 'f'),
      ],
      initializer: [floatTensor('w', new Float32Array(8 * 8 * 9), [8, 8, 3, 3]), floatTensor('scales', [1, 1, 4, 4], [4])],
      input: [{ name: 'x', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 1 }, { dimValue: 8 }, { dimParam: 'H' }, { dimParam: 'W' }] } } } }, { name: 'sizes', type: { tensorType: { elemType: 7, shape: { dim: [{ dimValue: 4 }] } } } }],
      output: [{ name: 'e', type: {} }, { name: 'f', type: {} }],
      valueInfo: [],
    },
  };
  const strides = spatialStrides(new GraphIndex(m.graph!));
  assert.equal(strides.get('a'), 2);
  assert.equal(strides.get('b'), 0.5);
  assert.equal(strides.get('d'), undefined);
  assert.equal(strides.has('d'), true);
  const r = winogradConvs(m, { minChannels: 1 });
  assert.deepEqual(r.byTile, { 2: 1, 4: 2 }); // c1 (stride ½) and c3 (stride 2): 4; c2 (unknown): 2; c0 strided
});

test('the torch-exported UNet in Winograd form matches the export (≤ 1e-4), at sizes the tiles do not divide', async () => {
  const bytes = readFileSync(fx('tiny-unet/model.onnx'));
  const m = decodeModel(bytes);
  const r = winogradConvs(m, { minChannels: 1 });
  // every stride-1 3×3 conv except conv_in / conv_out (4 channels): 2 levels × resnets + upsampler
  assert.ok(r.count >= 15, `${r.count} rewritten`);
  assert.ok(r.byTile[4] === r.count, 'strides 1 and 2 take tile 4');
  assert.deepEqual(r.skipped.filter((s) => !/strided|fewer than/.test(s)), []);
  assert.deepEqual(checkGraph(m), []);
  const rewritten = encodeModel(m);
  for (const [b, h, w] of [[2, 8, 8], [1, 12, 20], [2, 6, 10]] as const) {
    const feeds = unetFeeds(b, h, w);
    const ref = await runFeeds(bytes, feeds);
    const y = await runFeeds(rewritten, feeds);
    const d = maxAbsDiff(y, ref);
    assert.ok(d <= 1e-4, `${b}×${h}×${w}: ${d}`);
  }
});

test("tiny-sd1's VAE decoder in Winograd form matches (≤ 1e-4 on [-1, 1] pixels)", async () => {
  const bytes = readFileSync(fx('tiny-sd1/vae_decoder/model.onnx'));
  // auto leaves the image-resolution level (8× the latent) direct, and only it
  const auto = winogradConvs(decodeModel(bytes), { minChannels: 1 });
  const direct = auto.skipped.filter((s) => /8× the input/.test(s));
  assert.equal(direct.length, 6, direct.join('\n'));
  assert.ok(direct.every((s) => /up_blocks\.3\/|up_blocks\.2\/upsamplers|conv_out/.test(s)), direct.join('\n'));
  assert.ok(auto.count >= 19 && auto.byTile[4] === auto.count, `${JSON.stringify(auto.byTile)}`);
  // every 3×3 convolution in m = 4 form, the image level included
  const m = decodeModel(bytes);
  const r = winogradConvs(m, { minChannels: 1, tile: 4 });
  assert.equal(r.count, auto.count + direct.length);
  const feeds = { latent_sample: new ort.Tensor('float32', xorshiftFill(4 * 16 * 12, 8), [1, 4, 16, 12]) };
  const d = maxAbsDiff(await runFeeds(m, feeds), await runFeeds(bytes, feeds));
  assert.ok(d <= 1e-4, `${d}`);
});

test('--conv resolution, and the cached Winograd file (count 0 remembered without a model)', async () => {
  const GB = 2 ** 30;
  assert.equal(useWinograd('auto', 'cpu', 24 * GB), true);
  assert.equal(useWinograd(undefined, 'cpu', 16 * GB), true);
  assert.equal(useWinograd('auto', 'cpu', 8 * GB), false, 'U would crowd a small machine');
  assert.equal(useWinograd('winograd', 'cpu', 8 * GB), true);
  assert.equal(useWinograd('auto', 'cuda', 24 * GB), false);
  assert.equal(useWinograd('winograd', 'dml'), true);
  assert.equal(useWinograd('direct', 'cpu'), false);
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-wino-'));
  try {
    const unet = fx('tiny-sd1/unet/model.onnx');
    const a = await getWinogradModel(unet, cacheDir);
    assert.ok(a.rewritten && !a.cached && a.count > 0);
    const b = await getWinogradModel(unet, cacheDir);
    assert.ok(b.rewritten && b.cached && b.path === (a.rewritten ? a.path : ''));
    // the text encoder has no convolution: nothing written but the verdict
    const te = await getWinogradModel(fx('tiny-sd1/text_encoder/model.onnx'), cacheDir);
    assert.equal(te.rewritten, false);
    const again = await getWinogradModel(fx('tiny-sd1/text_encoder/model.onnx'), cacheDir);
    assert.ok(!again.rewritten && again.cached);
    const tsType = decodeModel(readFileSync(unet)).graph!.input.find((i) => i.name === 'timestep')!.type!.tensorType!.elemType;
    const feeds = {
      sample: new ort.Tensor('float32', xorshiftFill(2 * 4 * 8 * 8, 1), [2, 4, 8, 8]),
      timestep: tsType === 7 ? new ort.Tensor('int64', BigInt64Array.from([981n]), [1]) : new ort.Tensor('float32', Float32Array.from([981]), [1]),
      encoder_hidden_states: new ort.Tensor('float32', xorshiftFill(2 * 77 * 32, 2), [2, 77, 32]),
    };
    const runFile = async (file: string): Promise<Float32Array> => {
      const s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
      try {
        return (await s.run(feeds))[s.outputNames[0]!]!.data as Float32Array;
      } finally {
        await s.release();
      }
    };
    const ref = await runFile(unet);
    const y = await runFile(a.rewritten ? a.path : '');
    assert.ok(maxAbsDiff(y, ref) <= 1e-4);
    assert.ok(existsSync(path.join(cacheDir, 'winograd')));
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('winogradU is G·w·Gᵀ per channel pair, laid out [α², K, C]', () => {
  const K = 3, C = 2;
  const w = xorshiftFill(K * C * 9, 11);
  for (const m of [2, 4] as const) {
    const { G } = winogradTransforms(m);
    const a = m + 2;
    const u = winogradU(w, K, C, m);
    assert.equal(u.length, a * a * K * C);
    let worst = 0;
    for (let k = 0; k < K; k++) for (let c = 0; c < C; c++) for (let xi = 0; xi < a; xi++) for (let nu = 0; nu < a; nu++) {
      let ref = 0;
      for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) ref += G[xi]![i]! * w[((k * C + c) * 3 + i) * 3 + j]! * G[nu]![j]!;
      worst = Math.max(worst, Math.abs(u[((xi * a + nu) * K + k) * C + c]! - ref));
    }
    assert.ok(worst < 1e-6, `m=${m}: ${worst}`);
  }
  assert.throws(() => winogradU(w, K, C + 1, 4), /expected/);
});

test('cached Winograd variants: U computed by sdgen into one weights file per model weights, shared by variants; external weights; replaced weights dropped', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-wino-ext-'));
  try {
    // the torch-exported UNet saved with its weights as external data, and a second file (as a
    // ToMe variant would be) whose graph differs but whose weights are the same
    const src = path.join(cacheDir, 'src');
    const m = decodeModel(readFileSync(fx('tiny-unet/model.onnx')));
    await saveModel(m, path.join(src, 'a', 'model.onnx'), { externalData: true, weightsFile: 'weights.pb' });
    m.producerName = 'variant';
    await saveModel(m, path.join(src, 'b', 'model.onnx'), { externalData: true, weightsFile: 'weights.pb' });
    const a = await getWinogradModel(path.join(src, 'a', 'model.onnx'), cacheDir, { minChannels: 1 });
    assert.ok(a.rewritten);
    const { modelFileIdentity } = await import('../src/onnx/model-io.js');
    const identityA = await modelFileIdentity(a.path);
    await new Promise((r) => setTimeout(r, 20)); // a touched file would get a later time
    const b = await getWinogradModel(path.join(src, 'b', 'model.onnx'), cacheDir, { minChannels: 1 });
    assert.ok(a.rewritten && b.rewritten && a.path !== b.path);
    const shared = readdirSync(path.join(cacheDir, 'winograd', 'weights')).filter((f) => f.endsWith('.bin'));
    assert.equal(shared.length, 1, `one weights file for both variants: ${shared}`);
    // reusing the file marks it beside it: the first variant's identity (its optimized graph's cache key) holds
    assert.ok(existsSync(path.join(cacheDir, 'winograd', 'weights', `${shared[0]}.used`)));
    assert.equal(await modelFileIdentity(a.path), identityA);
    const rewritten = decodeModel(readFileSync(a.path));
    const inits = rewritten.graph!.initializer;
    const us = inits.filter((t) => /winograd_U[24]$/.test(t.name ?? ''));
    assert.equal(us.length, a.count, 'one U per convolution (no weight is shared here)');
    assert.ok(us.every((t) => t.externalData?.find((e) => e.key === 'location')?.value === WINOGRAD_WEIGHTS_FILE));
    const convWeights = new Set(decodeModel(readFileSync(fx('tiny-unet/model.onnx'))).graph!.node.filter((n) => n.opType === 'Conv').map((n) => n.input[1]!));
    const consumers = new Set(rewritten.graph!.node.flatMap((n) => n.input));
    for (const t of inits) if (convWeights.has(t.name ?? '')) assert.ok(consumers.has(t.name!), `${t.name} kept only while a node uses it`);
    assert.ok(inits.filter((t) => convWeights.has(t.name ?? '')).length < convWeights.size, 'the replaced weights are gone');
    const bytes = readFileSync(fx('tiny-unet/model.onnx'));
    const feeds = unetFeeds(2, 8, 8);
    const ref = await runFeeds(bytes, feeds);
    const s = await ort.InferenceSession.create(a.path, { intraOpNumThreads: 1 });
    try {
      const y = (await s.run(feeds))[s.outputNames[0]!]!.data as Float32Array;
      assert.ok(maxAbsDiff(y, ref) <= 1e-4, `${maxAbsDiff(y, ref)}`);
    } finally {
      await s.release();
    }
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("tiny-sd1's VAE decoder through getWinogradModel (inline weights, unaligned in the file): pixels match (≤ 1e-4)", async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-wino-vae-'));
  try {
    const src = fx('tiny-sd1/vae_decoder/model.onnx');
    const r = await getWinogradModel(src, cacheDir, { minChannels: 1 });
    assert.ok(r.rewritten);
    const m = decodeModel(readFileSync(r.path));
    const us = m.graph!.initializer.filter((t) => /winograd_U4$/.test(t.name ?? ''));
    // the image level's upsampler convolution, left direct by Winograd, in polyphase form
    const poly = m.graph!.node.filter((n) => n.opType === 'DepthToSpace' && /polyphase/.test(n.name ?? ''));
    assert.equal(poly.length, 1);
    assert.equal(us.length + poly.length, r.count);
    assert.ok(us.every((t) => t.externalData?.some((e) => e.key === 'location' && e.value === WINOGRAD_WEIGHTS_FILE)));
    const feeds = { latent_sample: new ort.Tensor('float32', xorshiftFill(4 * 16 * 12, 8), [1, 4, 16, 12]) };
    const session = await ort.InferenceSession.create(r.path, { intraOpNumThreads: 1 });
    let y: Float32Array;
    try {
      y = (await session.run(feeds))[session.outputNames[0]!]!.data as Float32Array;
    } finally {
      await session.release();
    }
    const d = maxAbsDiff(y, await runFeeds(readFileSync(src), feeds));
    assert.ok(d <= 1e-4, `${d}`);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('the rewrite runs on opset 10 models too (DepthToSpace without the opset-11 mode attribute)', async () => {
  const [c, k, n, h, w] = [8, 8, 1, 6, 9];
  const x = xorshiftFill(n * c * h * w, 17);
  const ref = convModel(c, k, pad1, true);
  ref.opsetImport = [{ domain: '', version: 10 }];
  const m = convModel(c, k, pad1, true);
  m.opsetImport = [{ domain: '', version: 10 }];
  assert.equal(winogradConvs(m, { tile: 4, minChannels: 1 }).count, 1);
  assert.ok(maxAbsDiff(await run(m, x, [n, c, h, w]), await run(ref, x, [n, c, h, w])) <= 1e-5);
});

test('spatial strides: ToMe at max downsample 2 on an SDXL-shaped UNet leaves every convolution’s stride as in the exported graph', async () => {
  const { loadModel } = await import('../src/onnx/model-io.js');
  const { applyToMe } = await import('../src/tome/index.js');
  const { DEFAULT_TOME } = await import('../src/tome/options.js');
  const file = fx('tiny-sdxl/unet/model.onnx');
  const convStrides = (m: ModelProto) => {
    const idx = new GraphIndex(m.graph!);
    const s = spatialStrides(idx);
    return new Map(idx.nodesByOp('Conv').map((n) => [n.name, s.get(n.input[0]!)]));
  };
  const plain = convStrides(await loadModel(file, { externalData: 'lazy' }));
  const m = await loadModel(file, { externalData: 'lazy' });
  const r = applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 2 });
  assert.ok(r.patched && r.blocks.length > 0, 'ToMe merges at level 2');
  const patched = convStrides(m);
  assert.equal(patched.size, plain.size);
  assert.ok(plain.size >= 10, `${plain.size} convolutions`);
  assert.deepEqual([...patched], [...plain]);
  // the exported graph's own strides: 1 at full resolution, 2 and 4 below, back up to 1
  assert.equal(plain.get('/conv_in/Conv'), 1);
  assert.equal(plain.get('/conv_out/Conv'), 1);
  assert.ok([...plain.values()].includes(4), 'the lowest level is at stride 4');
});
