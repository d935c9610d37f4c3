/**
 * Clip skip on text encoders exported without per-layer hidden states: the graph rewrite that
 * exposes them (src/optimize/clip-skip.ts), the text encoder's use of it, and the CLI.
 *
 * References: the Optimum export in tiny-sdxl/text_encoder has its own `hidden_states.0..3`
 * outputs (the exporter's labels of embeddings and layer outputs), so the layers sdgen finds in
 * the same graph stripped of those outputs are checked against upstream's; tiny-sd1's encoder
 * (diffusers' export, opset 14, no hidden states) is checked against the tensors named in its
 * export, exposed here by plain Identity outputs and normalized by a layer norm written in this
 * file from the export's `final_layer_norm` initializers and config.json's eps.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { UsageError } from '../src/errors.js';
import { loadModelFolder } from '../src/models/folder.js';
import { SessionManager, type ModelSession } from '../src/models/session.js';
import { loadModel, saveModel } from '../src/onnx/model-io.js';
import { tensorFloats } from '../src/onnx/tensor.js';
import { DataType, type ModelProto } from '../src/onnx/types.js';
import { encoderLayerOutputs, exposeHiddenStates, getClipSkipModel } from '../src/optimize/clip-skip.js';
import { TextEncoder, clipSkipSource } from '../src/pipeline/text-encoding.js';
import { findFinalLayerNorm } from '../src/optimize/final-layer-norm.js';
import { fx, maxAbsDiff, spawnCli } from './helpers.js';

const TINY = fx('tiny-sd1');
const SD1_TE = fx('tiny-sd1/text_encoder/model.onnx');
const SD2_TE = fx('tiny-sd2v/text_encoder/model.onnx');
const XL_TE = fx('tiny-sdxl/text_encoder/model.onnx');
const ROOT = fileURLToPath(new URL('../', import.meta.url));

let tmp = '';
let cacheDir = '';
const sessions = new SessionManager({ device: 'cpu', threads: 1 });
before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-clip-skip-'));
  cacheDir = path.join(tmp, 'cache');
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The model without its hidden_states outputs (what a standard export looks like). */
function stripHiddenStates(m: ModelProto): ModelProto {
  m.graph!.output = m.graph!.output.filter((o) => !/^hidden_states\./.test(o.name));
  return m;
}

/** 77 ids: start, a few tokens, end, padded with the end token (SD 1.x convention). */
function ids77(tokens: number[]): number[] {
  const ids = [49406, ...tokens, 49407];
  while (ids.length < 77) ids.push(49407);
  return ids;
}
const IDS = ids77([320, 1125, 539, 320, 2368]); // "a photo of a cat"

async function runOutputs(model: ModelSession, ids: number[], names: string[]): Promise<Record<string, Float32Array>> {
  const input = model.info.inputs[0]!;
  const data = input.type === 'int64' ? BigInt64Array.from(ids, (v) => BigInt(v)) : Int32Array.from(ids);
  const out = await model.session.run({ [input.name]: new ort.Tensor(input.type as 'int32', data, [1, ids.length]) }, names);
  return Object.fromEntries(names.map((n) => [n, out[n]!.data as Float32Array]));
}

/** Layer norm over the last axis in float64, then rounded to float32 (the reference). */
function refLayerNorm(x: Float32Array, dim: number, w: Float32Array, b: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length / dim; r++) {
    const row = x.subarray(r * dim, (r + 1) * dim);
    const mean = row.reduce((s, v) => s + v, 0) / dim;
    const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / dim;
    for (let j = 0; j < dim; j++) out[r * dim + j] = ((row[j]! - mean) / Math.sqrt(variance + eps)) * w[j]! + b[j]!;
  }
  return out;
}

test('the encoder layers found by name and by structure are the ones the exporters label', async () => {
  // Optimum's export names its layer outputs hidden_states.K itself: strip the graph outputs and
  // the layers found must be exactly those tensors
  const xl = stripHiddenStates(await loadModel(XL_TE));
  const expectXl = [0, 1, 2, 3].map((k) => `hidden_states.${k}`);
  // diffusers' export: the embeddings Add, then the second residual Add of each layer
  const sd1 = await loadModel(SD1_TE);
  const expectSd1 = ['/text_model/embeddings/Add_output_0', ...[0, 1, 2].map((k) => `/text_model/encoder/layers.${k}/Add_1_output_0`)];
  const sd2 = await loadModel(SD2_TE); // Optimum layout, opset 17, GELU, 2 layers
  const expectSd2 = ['/text_model/embeddings/Add_output_0', ...[0, 1].map((k) => `/text_model/encoder/layers.${k}/Add_1_output_0`)];
  const cases: [string, ModelProto, string[]][] = [['tiny-sdxl', xl, expectXl], ['tiny-sd1', sd1, expectSd1], ['tiny-sd2v', sd2, expectSd2]];
  let checked = 0;
  for (const [name, m, expected] of cases) {
    for (const e of expected) assert.ok(m.graph!.node.some((n) => n.output.includes(e)), `${name}: ${e} is in the export`);
    assert.deepEqual(encoderLayerOutputs(m.graph!), { states: expected, method: 'names' }, name);
    // the same graph with every node name erased: found from the residual structure alone
    for (const n of m.graph!.node) n.name = '';
    assert.deepEqual(encoderLayerOutputs(m.graph!), { states: expected, method: 'structure' }, `${name} without names`);
    checked++;
  }
  assert.equal(checked, 3);
});

test('the rewrite adds hidden_states.0…L and nothing else; graphs it cannot serve are left alone with the reason', async () => {
  const m = await loadModel(SD1_TE);
  const before = { nodes: m.graph!.node.length, outputs: m.graph!.output.map((o) => o.name) };
  const r = exposeHiddenStates(m);
  assert.equal(r.count, 3);
  assert.equal(r.layers, 3);
  assert.deepEqual(r.skipped, []);
  assert.deepEqual(m.graph!.output.map((o) => o.name), [...before.outputs, 'hidden_states.0', 'hidden_states.1', 'hidden_states.2', 'hidden_states.3']);
  const added = m.graph!.node.slice(before.nodes);
  assert.deepEqual(added.map((n) => [n.opType, n.output[0]]), [0, 1, 2, 3].map((k) => ['Cast', `hidden_states.${k}`]));
  for (const o of m.graph!.output.slice(2)) assert.equal(o.type?.tensorType?.elemType, DataType.FLOAT);

  // an export with the outputs already
  const xl = await loadModel(XL_TE);
  const again = exposeHiddenStates(xl);
  assert.equal(again.count, 0);
  assert.match(again.skipped[0]!, /has hidden_states outputs already/);
  // a graph that is not a CLIP text encoder
  const vae = await loadModel(fx('tiny-sd1/vae_decoder/model.onnx'));
  const none = exposeHiddenStates(vae);
  assert.equal(none.count, 0);
  assert.match(none.skipped[0]!, /final layer norm producing \S+ not found/);
  await assert.rejects(getClipSkipModel(fx('tiny-sd1/vae_decoder/model.onnx'), { cacheDir }), /clip skip: cannot find the encoder layers of .*final layer norm/);
});

test('Optimum export stripped of hidden_states: the rewrite gives the exporter\'s own hidden states, and the same clip skip', async () => {
  const stripped = path.join(tmp, 'xl-stripped', 'model.onnx');
  await saveModel(stripHiddenStates(await loadModel(XL_TE)), stripped);
  const rewritten = await getClipSkipModel(stripped, { cacheDir });
  assert.equal(rewritten.layers, 3);
  const native = await sessions.open(XL_TE, 'native');
  const ours = await sessions.open(rewritten.path, 'rewritten');
  const names = [0, 1, 2, 3].map((k) => `hidden_states.${k}`);
  const a = await runOutputs(native, IDS, names);
  const b = await runOutputs(ours, IDS, names);
  for (const n of names) assert.ok(maxAbsDiff(a[n]!, b[n]!) <= 1e-5, n);
  assert.ok(maxAbsDiff(a['hidden_states.1']!, a['hidden_states.2']!) > 1e-2, 'the layers differ from each other');

  // TextEncoder: the native export's hidden states path against the rewrite opened on demand
  const folder = await loadModelFolder(TINY);
  const plain = await sessions.open(stripped, 'text encoder');
  assert.equal(await findFinalLayerNorm(stripped, plain.info), null, 'no hidden states, no norm needed');
  const teNative = new TextEncoder(native, folder.tokenizer, await findFinalLayerNorm(XL_TE, native.info));
  const teOurs = new TextEncoder(plain, folder.tokenizer, null, clipSkipSource(sessions, stripped, cacheDir));
  for (const n of [2, 3]) {
    const x = await teNative.encodeIds(IDS, n);
    const y = await teOurs.encodeIds(IDS, n);
    assert.ok(maxAbsDiff(x.data, y.data) <= 1e-5, `clip skip ${n}`);
  }
  await teOurs.release();
  await Promise.all([native.release(), ours.release(), plain.release()]);
});

test('clip skip on tiny-sd1 (no hidden_states outputs): matches the layer output normalized as A1111 does; clip skip 1 is untouched', async () => {
  const folder = await loadModelFolder(TINY);
  // reference: the export with its layer outputs exposed by Identity nodes
  const ref = await loadModel(SD1_TE);
  const g = ref.graph!;
  const layerOut = ['/text_model/embeddings/Add_output_0', ...[0, 1, 2].map((k) => `/text_model/encoder/layers.${k}/Add_1_output_0`)];
  layerOut.forEach((src, k) => {
    g.node.push({ opType: 'Identity', name: `expose_${k}`, input: [src], output: [`ref_${k}`], attribute: [] });
    g.output.push({ name: `ref_${k}`, type: { tensorType: { elemType: DataType.FLOAT } } });
  });
  const init = (name: string): Float32Array => tensorFloats(g.initializer.find((t) => t.name === name)!);
  const lnW = init('text_model.final_layer_norm.weight');
  const lnB = init('text_model.final_layer_norm.bias');
  const eps = (JSON.parse(readFileSync(fx('tiny-sd1/text_encoder/config.json'), 'utf8')) as { layer_norm_eps: number }).layer_norm_eps;
  const refPath = path.join(tmp, 'sd1-ref', 'model.onnx');
  await saveModel(ref, refPath);
  const refModel = await sessions.open(refPath, 'reference');
  const states = await runOutputs(refModel, IDS, ['last_hidden_state', 'ref_0', 'ref_1', 'ref_2', 'ref_3']);
  await refModel.release();
  // the reference norm reproduces the export's own last_hidden_state from the last layer
  assert.ok(maxAbsDiff(refLayerNorm(states['ref_3']!, 32, lnW, lnB, eps), states['last_hidden_state']!) <= 1e-5);

  const model = await sessions.open(SD1_TE, 'text encoder');
  const te = new TextEncoder(model, folder.tokenizer, await findFinalLayerNorm(SD1_TE, model.info), clipSkipSource(sessions, SD1_TE, cacheDir));
  assert.equal(te.io.hiddenStates.length, 0);
  const bare = new TextEncoder(model, folder.tokenizer);
  const skip1 = await te.encodeIds(IDS, 1);
  assert.deepEqual(skip1.data, states['last_hidden_state'], 'clip skip 1 = the export\'s last_hidden_state, bit for bit');
  let n = 0;
  for (const [clipSkip, layer] of [[2, 2], [3, 1]] as const) {
    const got = await te.encodeIds(IDS, clipSkip);
    const want = refLayerNorm(states[`ref_${layer}`]!, 32, lnW, lnB, eps);
    assert.ok(maxAbsDiff(got.data, want) <= 1e-5, `clip skip ${clipSkip}: ${maxAbsDiff(got.data, want)}`);
    assert.ok(maxAbsDiff(got.data, skip1.data) > 1e-2, `clip skip ${clipSkip} differs from the last layer`);
    n++;
  }
  assert.equal(n, 2);
  // after clip skip ran, clip skip 1 still runs the exported graph
  assert.deepEqual((await te.encodeIds(IDS, 1)).data, skip1.data);
  assert.deepEqual((await bare.encodeIds(IDS, 1)).data, skip1.data);
  // the pair encoding goes the same way (prompt through the tokenizer)
  const pair = await te.encodePair('a photo of a cat', '', false, { emphasis: true, clipSkip: 2 });
  assert.ok(maxAbsDiff(pair.cond.data, refLayerNorm(states['ref_2']!, 32, lnW, lnB, eps)) <= 1e-5);

  // clip skip N needs N ≤ layers (3); N = 4 would be the embeddings, which A1111 does not offer
  await assert.rejects(te.encodeIds(IDS, 4), (e: unknown) => e instanceof UsageError && /clip skip 4 is not available for this text encoder: it has 3 layers \(clip skip N needs N ≤ 3\)/.test(e.message));
  // without a source of hidden states (a TextEncoder built bare) the error says what is missing
  await assert.rejects(bare.encodeIds(IDS, 2), /clip skip 2 needs a text encoder exported with per-layer hidden states/);

  // the rewrite is cached: one entry, found again without rewriting
  const entries = readdirSync(path.join(cacheDir, 'clip-skip')).filter((e) => existsSync(path.join(cacheDir, 'clip-skip', e, 'model.onnx')));
  assert.ok(entries.length >= 1);
  const again = await getClipSkipModel(SD1_TE, { cacheDir });
  assert.equal(again.cached, true);
  assert.equal(again.layers, 3);
  await te.release();
  await model.release();
});

test('CLI: --clip-skip 2 on tiny-sd1 runs and differs from clip skip 1', async () => {
  const tsx = import.meta.resolve('tsx');
  const main = path.join(ROOT, 'src/cli/main.ts');
  const home = path.join(tmp, 'home');
  // one Euler step: tiny-sd1's one-step PNDM image saturates to the same pixels whatever the prompt
  const args = ['a fox', '--model', TINY, '--steps', '1', '--scheduler', 'euler', '--width', '64', '--height', '64', '--seed', '7', '--device', 'cpu'];
  const run = (clipSkip: number) => spawnCli(['--import', tsx, main], [...args, '--clip-skip', String(clipSkip), '--out', path.join(tmp, `out-${clipSkip}`)], { cwd: tmp, home });
  const [r1, r2] = await Promise.all([run(1), run(2)]);
  const pixels: Buffer[] = [];
  for (const [r, clipSkip] of [[r1, 1], [r2, 2]] as const) {
    assert.equal(r.status, 0, `clip skip ${clipSkip}: ${r.stderr}`);
    const dir = path.join(tmp, `out-${clipSkip}`);
    const pngs = readdirSync(dir).filter((f) => f.endsWith('.png'));
    assert.equal(pngs.length, 1);
    const manifestFile = readdirSync(dir).find((f) => /^sdgen-run-.+\.jsonl$/.test(f))!; // each run's own manifest
    const manifest = JSON.parse(readFileSync(path.join(dir, manifestFile), 'utf8').trim()) as { params: { clipSkip: number } };
    assert.equal(manifest.params.clipSkip, clipSkip);
    const { data, info } = await sharp(path.join(dir, pngs[0]!)).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual([info.width, info.height], [64, 64]);
    pixels.push(data);
  }
  assert.ok(maxAbsDiff(pixels[0]!, pixels[1]!) > 0, 'clip skip 2 changes the image');
});
