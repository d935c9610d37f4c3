/**
 * Polyphase upsampling convolutions (src/optimize/polyphase.ts): Conv3×3(Resize 2× nearest)
 * rewritten into four 2×2 convolutions of the source map, against onnxruntime running the
 * original graph: single pairs at odd sizes (bias or not, torch's Resize and opset-9 Upsample),
 * the cases left alone, and tiny-sd1's VAE decoder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { xorshiftFill } from '../src/bench/inputs.js';
import { decodeModel } from '../src/onnx/proto.js';
import { checkGraph } from '../src/onnx/graph.js';
import { attrInts, attrString as str } from '../src/onnx/attributes.js';
import { floatTensor } from '../src/onnx/tensor.js';
import type { AttributeProto, ModelProto, NodeProto } from '../src/onnx/types.js';
import { polyphaseUpsampleConvs } from '../src/optimize/index.js';
import { maxAbsDiff, runFeeds as run, fx } from './helpers.js';


/** x → upsample 2× (Resize as torch exports it, or opset-9 Upsample) → Conv 3×3 pad 1 → y. */
function upConvModel(c: number, k: number, bias: boolean, opts: { upsample?: 'resize' | 'upsample'; scale?: number; resizeAttrs?: AttributeProto[]; extraUse?: boolean } = {}): ModelProto {
  const scale = opts.scale ?? 2;
  const w = xorshiftFill(k * c * 9, 5).map((v) => v * Math.sqrt(3 / (c * 9)));
  const init = [floatTensor('w', w, [k, c, 3, 3]), floatTensor('scales', [1, 1, scale, scale], [4])];
  if (bias) init.push(floatTensor('b', xorshiftFill(k, 9), [k]));
  const resize: NodeProto = opts.upsample === 'upsample'
    ? { name: 'up', opType: 'Upsample', domain: '', input: ['x', 'scales'], output: ['u'], attribute: [str('mode', 'nearest')] }
    : {
        name: 'up', opType: 'Resize', domain: '', input: ['x', '', 'scales'], output: ['u'],
        attribute: opts.resizeAttrs ?? [str('coordinate_transformation_mode', 'asymmetric'), str('mode', 'nearest'), str('nearest_mode', 'floor')],
      };
  const conv: NodeProto = { name: '/up/conv/Conv', opType: 'Conv', domain: '', input: bias ? ['u', 'w', 'b'] : ['u', 'w'], output: ['y'], attribute: [attrInts('pads', [1, 1, 1, 1]), attrInts('kernel_shape', [3, 3])] };
  const dim = (name: string) => ({ dimParam: name });
  const vi = (name: string, ch: number) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [dim('N'), { dimValue: ch }, dim(`H${name}`), dim(`W${name}`)] } } } });
  const nodes = [resize, conv];
  const outputs = [vi('y', k)];
  if (opts.extraUse) {
    nodes.push({ name: 'relu', opType: 'Relu', domain: '', input: ['u'], output: ['r'], attribute: [] });
    outputs.push(vi('r', c));
  }
  return {
    irVersion: opts.upsample === 'upsample' ? 4 : 8,
    opsetImport: [{ domain: '', version: opts.upsample === 'upsample' ? 9 : 17 }],
    producerName: 'test',
    graph: { name: 'upconv', node: nodes, initializer: init, input: [vi('x', c)], output: outputs, valueInfo: [] },
  };
}

const halfPixel = [str('coordinate_transformation_mode', 'half_pixel'), str('mode', 'nearest')];

test('Conv3×3(2× nearest upsample) in polyphase form equals the original (odd sizes, bias or not, Resize and Upsample)', async () => {
  for (const [c, k, n, h, w, bias, upsample, resizeAttrs] of [
    [8, 16, 1, 8, 8, true, 'resize', undefined],
    [16, 8, 2, 7, 10, false, 'resize', undefined],
    [5, 3, 1, 1, 1, true, 'resize', undefined],
    [12, 12, 1, 5, 3, true, 'upsample', undefined],
    // half_pixel with rounding to nearest picks the same source pixels
    [6, 10, 1, 6, 5, true, 'resize', halfPixel],
    [6, 10, 1, 6, 5, true, 'resize', [str('mode', 'nearest'), str('nearest_mode', 'round_prefer_ceil')]],
  ] as const) {
    const opts = { upsample, ...(resizeAttrs ? { resizeAttrs: [...resizeAttrs] } : {}) };
    const feeds = { x: new ort.Tensor('float32', xorshiftFill(n * c * h * w, c + h * 31 + w), [n, c, h, w]) };
    const ref = await run(upConvModel(c, k, bias, opts), feeds);
    assert.equal(ref.length, n * k * 4 * h * w);
    const m = upConvModel(c, k, bias, opts);
    const r = polyphaseUpsampleConvs(m);
    assert.equal(r.count, 1);
    assert.deepEqual(r.convs, ['/up/conv/Conv']);
    assert.deepEqual(checkGraph(m), []);
    const ops = m.graph!.node.map((nd) => nd.opType);
    assert.ok(!ops.includes('Resize') && !ops.includes('Upsample'), 'the upsampled map is never made');
    assert.equal(m.graph!.node.filter((nd) => nd.opType === 'Conv').length, 4);
    const y = await run(m, feeds);
    const d = maxAbsDiff(y, ref);
    assert.ok(d <= 2e-6 * Math.max(1, ...ref.map(Math.abs)), `C${c} K${k} ${n}×${h}×${w} ${upsample}: ${d}`);
  }
});

test('polyphase leaves alone: other scales, resizes that pick other source pixels, an upsample used twice, unselected convolutions', () => {
  const cases: [string, ModelProto, ((n: NodeProto) => boolean)?][] = [
    ['scale 3', upConvModel(4, 4, true, { scale: 3 })],
    ['half_pixel (the opset-11 default) with floor', upConvModel(4, 4, true, { resizeAttrs: [str('mode', 'nearest'), str('nearest_mode', 'floor')] })],
    ['align_corners', upConvModel(4, 4, true, { resizeAttrs: [str('coordinate_transformation_mode', 'align_corners'), str('mode', 'nearest')] })],
    ['round_prefer_ceil', upConvModel(4, 4, true, { resizeAttrs: [str('coordinate_transformation_mode', 'asymmetric'), str('mode', 'nearest'), str('nearest_mode', 'round_prefer_ceil')] })],
    ['linear', upConvModel(4, 4, true, { resizeAttrs: [str('coordinate_transformation_mode', 'asymmetric'), str('mode', 'linear')] })],
    ['upsample used twice', upConvModel(4, 4, true, { extraUse: true })],
    ['not selected', upConvModel(4, 4, true), () => false],
  ];
  for (const [what, m, select] of cases) {
    const before = JSON.stringify(m.graph!.node);
    assert.equal(polyphaseUpsampleConvs(m, select).count, 0, what);
    assert.equal(JSON.stringify(m.graph!.node), before, what);
  }
});

test("tiny-sd1's VAE decoder with its upsampler convolutions in polyphase form matches (≤ 1e-5 on [-1, 1] pixels)", async () => {
  const bytes = readFileSync(fx('tiny-sd1/vae_decoder/model.onnx'));
  const m = decodeModel(bytes);
  const r = polyphaseUpsampleConvs(m);
  assert.equal(r.count, 3, r.convs.join(', '));
  assert.ok(r.convs.every((c) => /upsamplers\.0\/conv/.test(c)), r.convs.join(', '));
  assert.deepEqual(checkGraph(m), []);
  const feeds = { latent_sample: new ort.Tensor('float32', xorshiftFill(4 * 16 * 12, 8), [1, 4, 16, 12]) };
  const d = maxAbsDiff(await run(m, feeds), await run(bytes, feeds));
  assert.ok(d <= 1e-5, `${d}`);
});
