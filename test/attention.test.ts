import { test } from 'node:test';
import { xorshiftFill } from '../src/bench/inputs.js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { decodeModel, encodeModel } from '../src/onnx/proto.js';
import { checkGraph } from '../src/onnx/graph.js';
import { loadModel } from '../src/onnx/model-io.js';
import { attrInt, attrInts } from '../src/onnx/attributes.js';
import { floatTensor, int64Tensor } from '../src/onnx/tensor.js';
import { DataType, type ModelProto, type NodeProto, type TensorProto } from '../src/onnx/types.js';
import { chooseAttention, fuseAttention } from '../src/optimize/index.js';
import { applyToMe, type ToMeOptions } from '../src/tome/index.js';
import { maxAbsDiff, fx, unetFeeds } from './helpers.js';


const rand = xorshiftFill;


const countOp = (m: ModelProto, op: string): number => m.graph!.node.filter((n) => n.opType === op).length;

async function session(m: ModelProto | Uint8Array): Promise<ort.InferenceSession> {
  const bytes = m instanceof Uint8Array ? m : encodeModel(m);
  return ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
}

async function runFirst(s: ort.InferenceSession, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const out = await s.run(feeds);
  return out[s.outputNames[0]!]!.data as Float32Array;
}

const UNET_CASES = [
  { b: 1, h: 8, w: 8, seq: 77 },
  { b: 2, h: 16, w: 12, seq: 77 },
  { b: 2, h: 6, w: 10, seq: 5 },
  { b: 1, h: 20, w: 14, seq: 77 },
];

test('tiny-unet: every attention becomes one MultiHeadAttention and the graph stays valid', () => {
  const m = decodeModel(readFileSync(fx('tiny-unet/model.onnx')));
  const softmaxes = countOp(m, 'Softmax');
  assert.equal(softmaxes, 12, 'fixture has 6 transformer blocks × (attn1, attn2)');
  const r = fuseAttention(m);
  assert.deepEqual(r.skipped, []);
  assert.equal(r.count, softmaxes);
  assert.equal(countOp(m, 'MultiHeadAttention'), softmaxes);
  assert.equal(countOp(m, 'Softmax'), 0);
  assert.deepEqual(checkGraph(m), []);
  assert.ok(m.opsetImport.some((o) => o.domain === 'com.microsoft'));
  for (const n of m.graph!.node.filter((x) => x.opType === 'MultiHeadAttention')) {
    assert.equal(n.domain, 'com.microsoft');
    const heads = Number(n.attribute.find((a) => a.name === 'num_heads')!.i);
    const scale = n.attribute.find((a) => a.name === 'scale')!.f!;
    assert.equal(heads, 8, "tiny UNet: diffusers' attention_head_dim 8 is the head count");
    const qProj = m.graph!.node.find((x) => x.output[0] === n.input[0])!;
    const hidden = Number(m.graph!.initializer.find((t) => t.name === qProj.input[1])!.dims[1]);
    assert.ok(Math.abs(scale - 1 / Math.sqrt(hidden / heads)) < 1e-6, `scale ${scale} for hidden ${hidden}`);
  }
  // fusing again finds nothing left to do
  const again = fuseAttention(m);
  assert.equal(again.count, 0);
});

test('tiny-unet: fused matches standard (≤ 1e-4) for several sizes, batch 1 and 2, self and cross attention', async () => {
  const buf = readFileSync(fx('tiny-unet/model.onnx'));
  const fused = decodeModel(buf);
  fuseAttention(fused);
  const s0 = await session(buf);
  const s1 = await session(fused);
  for (const c of UNET_CASES) {
    const feeds = unetFeeds(c.b, c.h, c.w, { seq: c.seq, seed: 11 + c.h, textSeed: 18 + c.h });
    const d = maxAbsDiff(await runFirst(s0, feeds), await runFirst(s1, feeds));
    assert.ok(d <= 1e-4, `B${c.b} ${c.h}×${c.w} seq ${c.seq}: max abs ${d}`);
  }
});

test('tiny-sd1 UNet (external data) and VAE decoder: fused matches standard', async () => {
  const unet = await loadModel(fx('tiny-sd1/unet/model.onnx'));
  const ref = encodeModel(unet);
  const r = fuseAttention(unet);
  assert.equal(r.count, 12);
  assert.deepEqual(checkGraph(unet), []);
  const u0 = await session(ref);
  const u1 = await session(unet);
  const feeds = unetFeeds(2, 8, 10, { seed: 5, textSeed: 12 });
  const du = maxAbsDiff(await runFirst(u0, feeds), await runFirst(u1, feeds));
  assert.ok(du <= 1e-4, `unet max abs ${du}`);

  const vbuf = readFileSync(fx('tiny-sd1/vae_decoder/model.onnx'));
  const vae = decodeModel(vbuf);
  const rv = fuseAttention(vae);
  assert.equal(rv.count, 1, 'the VAE mid-block attention (single head) is fused');
  assert.equal(countOp(vae, 'MultiHeadAttention'), 1);
  const mha = vae.graph!.node.find((n) => n.opType === 'MultiHeadAttention')!;
  assert.equal(Number(mha.attribute.find((a) => a.name === 'num_heads')!.i), 1);
  assert.deepEqual(checkGraph(vae), []);
  const v0 = await session(vbuf);
  const v1 = await session(vae);
  for (const [b, h, w] of [[1, 8, 8], [2, 6, 10]] as const) {
    const f = { latent_sample: new ort.Tensor('float32', rand(b * 4 * h * w, 3 + h), [b, 4, h, w]) };
    const dv = maxAbsDiff(await runFirst(v0, f), await runFirst(v1, f));
    assert.ok(dv <= 1e-4, `vae B${b} ${h}×${w}: max abs ${dv}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Hand-built attention graphs: the SDPA-style export (4-D heads, sqrt-scales on Q and K), float16,
// and patterns that must be left alone.

interface MiniOptions {
  /** 4-D heads with the scale split as sqrt on Q and on Kᵀ (torch ≥ 2 SDPA export) */
  sdpa?: boolean;
  elem?: DataType;
  /** add a non-zero additive mask to the scores */
  mask?: boolean;
  /** also expose the probabilities as a graph output */
  probsOutput?: boolean;
  /** wrong merge: reshape to [B, S·H, d]-like nonsense */
  badReshape?: boolean;
  /** SDPA style with K's sqrt-scale applied before its transpose */
  kScaleFirst?: boolean;
}

const C = 16;
const H = 4;
const D = C / H;

/** x [B, S, C] → self-attention (no projections bias) → y [B, S, C], shapes via Shape/Gather. */
function miniAttention(o: MiniOptions = {}): ModelProto {
  const elem = o.elem ?? DataType.FLOAT;
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  let k = 0;
  const node = (opType: string, input: string[], attribute = [] as NodeProto['attribute'], outs = 1): string[] => {
    const name = `/attn/${opType}_${k++}`;
    const output = Array.from({ length: outs }, (_, i) => `${name}_out${i}`);
    nodes.push({ name, opType, input, output, attribute });
    return output;
  };
  const one = (o2: string[]): string => o2[0]!;
  const ci = (name: string, vals: number[]): string => {
    inits.push(int64Tensor(name, vals, vals.length === 1 && name.startsWith('s_') ? [] : [vals.length]));
    return name;
  };
  const cf = (name: string, v: number): string => {
    const t = floatTensor(name, [v], []);
    if (elem === DataType.FLOAT16) {
      t.dataType = DataType.FLOAT16;
      t.rawData = new Uint8Array(new Uint16Array([f16(v)]).buffer);
    }
    inits.push(t);
    return name;
  };
  const weight = (name: string, seed: number): string => {
    const vals = rand(C * C, seed).map((x) => x * 0.5);
    const t = floatTensor(name, vals, [C, C]);
    if (elem === DataType.FLOAT16) {
      t.dataType = DataType.FLOAT16;
      t.rawData = new Uint8Array(Uint16Array.from(vals, f16).buffer);
    }
    inits.push(t);
    return name;
  };
  ci('axes0', [0]);
  const q = one(node('MatMul', ['x', weight('wq', 1)]));
  const kk = one(node('MatMul', ['x', weight('wk', 2)]));
  const v = one(node('MatMul', ['x', weight('wv', 3)]));
  const dim = (t: string, axis: number): string => {
    const s = one(node('Shape', [t]));
    return one(node('Gather', [s, ci(`s_ax${k}`, [axis])], [attrInt('axis', 0)]));
  };
  const unsq = (t: string): string => one(node('Unsqueeze', [t, 'axes0']));
  const splitShape = (t: string): string =>
    one(node('Concat', [unsq(dim(t, 0)), ci(`minus1_${k}`, [-1]), ci(`heads_${k}`, [H]), ci(`d_${k}`, [D])], [attrInt('axis', 0)]));
  const split = (t: string, p: number[]): string => {
    const r = one(node('Reshape', [t, splitShape(t)]));
    return one(node('Transpose', [r], [attrInts('perm', p)]));
  };
  let scores: string;
  let ctx: string;
  const sq = Math.sqrt(1 / Math.sqrt(D));
  let probs: string;
  if (o.sdpa) {
    const qh = one(node('Mul', [split(q, [0, 2, 1, 3]), cf('sq1', sq)]));
    const khT = o.kScaleFirst
      ? one(node('Transpose', [one(node('Mul', [split(kk, [0, 2, 1, 3]), cf('sq2', sq)]))], [attrInts('perm', [0, 1, 3, 2])]))
      : one(node('Mul', [one(node('Transpose', [split(kk, [0, 2, 1, 3])], [attrInts('perm', [0, 1, 3, 2])])), cf('sq2', sq)]));
    scores = one(node('MatMul', [qh, khT]));
  } else {
    // 3-D heads: [B·H, S, d]
    const to3 = (t: string, src: string): string => {
      const shp = one(node('Concat', [unsq(one(node('Mul', [dim(src, 0), ci(`s_h3_${k}`, [H])]))), unsq(dim(src, 1)), ci(`d3_${k}`, [D])], [attrInt('axis', 0)]));
      return one(node('Reshape', [t, shp]));
    };
    const qh = to3(split(q, [0, 2, 1, 3]), q);
    const kh = to3(split(kk, [0, 2, 1, 3]), kk);
    const khT = one(node('Transpose', [kh], [attrInts('perm', [0, 2, 1])]));
    scores = one(node('Div', [one(node('MatMul', [qh, khT])), cf('sqrtd', Math.sqrt(D))]));
  }
  if (o.mask) scores = one(node('Add', [scores, cf('maskval', 0.25)]));
  probs = one(node('Softmax', [scores], [attrInt('axis', -1)]));
  if (o.sdpa) {
    ctx = one(node('MatMul', [probs, split(v, [0, 2, 1, 3])]));
  } else {
    const vsplit = split(v, [0, 2, 1, 3]);
    const shp = one(node('Concat', [unsq(one(node('Mul', [dim(v, 0), ci('s_h3v', [H])]))), unsq(dim(v, 1)), ci('d3v', [D])], [attrInt('axis', 0)]));
    const vh = one(node('Reshape', [vsplit, shp]));
    const c3 = one(node('MatMul', [probs, vh]));
    const back = one(node('Concat', [ci('m1b', [-1]), ci('hb', [H]), unsq(dim(c3, 1)), unsq(dim(c3, 2))], [attrInt('axis', 0)]));
    ctx = one(node('Reshape', [c3, back]));
  }
  const tr = one(node('Transpose', [ctx], [attrInts('perm', [0, 2, 1, 3])]));
  const finalShape = o.badReshape
    ? one(node('Concat', [unsq(dim(q, 0)), ci('hbad', [H]), ci('m1bad', [-1])], [attrInt('axis', 0)]))
    : one(node('Concat', [unsq(dim(q, 0)), ci('m1f', [-1]), ci('cf', [C])], [attrInt('axis', 0)]));
  const y = one(node('Reshape', [tr, finalShape]));
  nodes.push({ name: '/out/Identity', opType: 'Identity', input: [y], output: ['y'], attribute: [] });
  const vi = (name: string, dims: (number | string)[]) => ({
    name,
    type: { tensorType: { elemType: elem, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  });
  const outputs = [vi('y', ['B', 'S', C])];
  if (o.probsOutput) {
    nodes.push({ name: '/out/probs', opType: 'Identity', input: [probs], output: ['probs'], attribute: [] });
    outputs.push(vi('probs', ['BH', 'S', 'S']));
  }
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'attention.test',
    graph: { name: 'mini', node: nodes, initializer: inits, input: [vi('x', ['B', 'S', C])], output: outputs, valueInfo: [] },
  };
}

function f16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  const mant = (u >>> 13) & 0x3ff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | mant;
}

test('hand-built attentions (3-D heads with Div scale; SDPA-style 4-D heads with sqrt-scales on Q and Kᵀ) fuse and match', async () => {
  for (const [sdpa, kScaleFirst] of [[false, false], [true, false], [true, true]] as const) {
    const ref = miniAttention({ sdpa, kScaleFirst });
    const bytes = encodeModel(ref);
    const m = decodeModel(bytes);
    const r = fuseAttention(m);
    assert.deepEqual(r.skipped, [], `sdpa=${sdpa}`);
    assert.equal(r.count, 1);
    assert.deepEqual(checkGraph(m), []);
    const mha = m.graph!.node.find((n) => n.opType === 'MultiHeadAttention')!;
    assert.ok(Math.abs(mha.attribute.find((a) => a.name === 'scale')!.f! - 1 / Math.sqrt(D)) < 1e-6);
    assert.ok(m.graph!.node.length < ref.graph!.node.length - 10, 'shape arithmetic removed');
    const s0 = await session(bytes);
    const s1 = await session(m);
    for (const [b, s] of [[1, 9], [2, 24]] as const) {
      const feeds = { x: new ort.Tensor('float32', rand(b * s * C, 17 + s), [b, s, C]) };
      const d = maxAbsDiff(await runFirst(s0, feeds), await runFirst(s1, feeds));
      assert.ok(d <= 1e-4, `sdpa=${sdpa} B${b} S${s}: ${d}`);
    }
  }
});

test('unrecognized or unsafe patterns are left unchanged', () => {
  const cases: [MiniOptions, RegExp][] = [
    [{ mask: true }, /non-zero additive/],
    [{ sdpa: true, mask: true }, /non-zero additive/],
    [{ probsOutput: true }, /graph output|consumers/],
    [{ badReshape: true }, /target shape/],
  ];
  for (const [o, why] of cases) {
    const m = miniAttention(o);
    const before = encodeModel(m);
    const r = fuseAttention(m);
    assert.equal(r.count, 0, JSON.stringify(o));
    assert.equal(r.skipped.length, 1);
    assert.match(r.skipped[0]!, why);
    assert.ok(Buffer.from(encodeModel(m)).equals(Buffer.from(before)), `${JSON.stringify(o)}: model changed`);
  }
  // a Softmax that is no attention at all (classifier head)
  const plain: ModelProto = {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      node: [{ opType: 'Softmax', input: ['x'], output: ['y'], attribute: [attrInt('axis', -1)], name: 'sm' }],
      initializer: [],
      input: [{ name: 'x', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 2 }, { dimValue: 3 }] } } } }],
      output: [{ name: 'y', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 2 }, { dimValue: 3 }] } } } }],
      valueInfo: [],
    },
  };
  const before = encodeModel(plain);
  const r = fuseAttention(plain);
  assert.equal(r.count, 0);
  assert.ok(Buffer.from(encodeModel(plain)).equals(Buffer.from(before)));
  assert.ok(!plain.opsetImport.some((o) => o.domain === 'com.microsoft'), 'no opset added when nothing was fused');
});

test('float16 attention is skipped for the CPU provider (fp32-only kernel) unless allowed', () => {
  const m = miniAttention({ elem: DataType.FLOAT16 });
  const r = fuseAttention(m);
  assert.equal(r.count, 0);
  assert.match(r.skipped[0]!, /float16/);
  const m2 = miniAttention({ elem: DataType.FLOAT16 });
  const r2 = fuseAttention(m2, { allowFloat16: true });
  assert.equal(r2.count, 1);
  assert.deepEqual(checkGraph(m2), []);
});

test('chooseAttention encodes the measurements', () => {
  assert.equal(chooseAttention('auto', 'cpu', false), 'fused');
  assert.equal(chooseAttention('auto', 'cpu', true), 'standard');
  assert.equal(chooseAttention('auto', 'cuda', true), 'fused');
  assert.equal(chooseAttention('standard', 'cpu', false), 'standard');
  assert.equal(chooseAttention('fused', 'cuda', true), 'fused');
  assert.throws(() => chooseAttention('fused', 'cpu', true), /float32/);
});

// ---------------------------------------------------------------------------------------------
// Composition with the ToMe rewrite (src/tome): merge before q/k/v, unmerge after to_out.

const TOME_OPTS: ToMeOptions = {
  ratio: 0.5, sx: 2, sy: 2, maxDownsample: 1, useRand: false,
  mergeAttn: true, mergeCrossattn: true, mergeMlp: false, minWidth: 0, minHeight: 0,
};

test('ToMe then fuse matches ToMe alone; fuse then ToMe too', async () => {
  const buf = readFileSync(fx('tiny-unet/model.onnx'));
  const tomeOnly = decodeModel(buf);
  assert.equal(applyToMe(tomeOnly, { ...TOME_OPTS }).patched, true);
  const tomeBytes = encodeModel(tomeOnly);
  const tomeFused = decodeModel(tomeBytes);
  const r = fuseAttention(tomeFused);
  assert.equal(r.count, 12, r.skipped.join('\n'));
  assert.deepEqual(checkGraph(tomeFused), []);
  const fusedFirst = decodeModel(buf);
  assert.equal(fuseAttention(fusedFirst).count, 12);
  const p = applyToMe(fusedFirst, { ...TOME_OPTS });
  assert.equal(p.patched, true, p.reason);
  assert.deepEqual(checkGraph(fusedFirst), []);
  const s0 = await session(tomeBytes);
  const s1 = await session(tomeFused);
  const s2 = await session(fusedFirst);
  for (const c of [UNET_CASES[0]!, UNET_CASES[1]!, { b: 2, h: 12, w: 12, seq: 77 }, { b: 1, h: 10, w: 14, seq: 77 }]) {
    const feeds = unetFeeds(c.b, c.h, c.w, { seq: c.seq, seed: 31 + c.w, textSeed: 38 + c.w });
    const ref = await runFirst(s0, feeds);
    const d = maxAbsDiff(ref, await runFirst(s1, feeds));
    assert.ok(d <= 1e-4, `ToMe→fuse B${c.b} ${c.h}×${c.w}: ${d}`);
    const d2 = maxAbsDiff(ref, await runFirst(s2, feeds));
    assert.ok(d2 <= 1e-4, `fuse→ToMe B${c.b} ${c.h}×${c.w}: ${d2}`);
  }
});

test('getFusedModel writes a cached fused UNet that links the source weights and matches', async () => {
  const { mkdtempSync, rmSync, readdirSync, statSync } = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { getFusedModel } = await import('../src/optimize/index.js');
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-fused-'));
  try {
    const src = fx('tiny-sd1/unet/model.onnx');
    const a = await getFusedModel(src, { cacheDir });
    assert.ok(a.fused && !a.cached && a.count === 12);
    const b = await getFusedModel(src, { cacheDir });
    assert.ok(b.fused && b.cached && b.path === (a.fused ? a.path : ''));
    const dir = path.dirname(b.fused ? b.path : '');
    assert.deepEqual(readdirSync(dir).sort(), ['meta.json', 'model.onnx', 'weights.pb']);
    assert.equal(statSync(path.join(dir, 'weights.pb')).size, statSync(fx('tiny-sd1/unet/weights.pb')).size);
    const s0 = await ort.InferenceSession.create(src);
    const s1 = await ort.InferenceSession.create(b.fused ? b.path : '');
    const feeds = unetFeeds(1, 8, 8, { seed: 9, textSeed: 16 });
    const d = maxAbsDiff(await runFirst(s0, feeds), await runFirst(s1, feeds));
    assert.ok(d <= 1e-4, `max abs ${d}`);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('synthetic tiny UNets (SD2 style with upcast softmax and linear proj_in, opset 17): fused matches standard', async () => {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { synthesize } = await import('../src/synth/index.js');
  const root = mkdtempSync(path.join(os.tmpdir(), 'sdgen-attn-synth-'));
  try {
    for (const style of ['sd2', 'sd1'] as const) {
      const dir = path.join(root, style);
      await synthesize({ arch: 'tiny', outDir: dir, style, opset: 17, seed: 3 });
      const file = path.join(dir, 'unet', 'model.onnx');
      const m = await loadModel(file);
      const ref = encodeModel(m);
      const r = fuseAttention(m);
      assert.equal(r.count, countOp(decodeModel(ref), 'Softmax'), `${style}: ${r.skipped.join('; ')}`);
      assert.deepEqual(checkGraph(m), []);
      const s0 = await session(ref);
      const s1 = await session(m);
      const d = s0.inputMetadata.find((x) => x.name === 'encoder_hidden_states')!;
      const width = d.isTensor && typeof d.shape[2] === 'number' ? d.shape[2] : 32;
      const feeds = {
        sample: new ort.Tensor('float32', rand(2 * 4 * 8 * 12, 4), [2, 4, 8, 12]),
        timestep: new ort.Tensor('float32', Float32Array.from([900, 100]), [2]),
        encoder_hidden_states: new ort.Tensor('float32', rand(2 * 77 * width, 5), [2, 77, width]),
      };
      const diff = maxAbsDiff(await runFirst(s0, feeds), await runFirst(s1, feeds));
      assert.ok(diff <= 1e-4, `${style}: max abs ${diff}`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
