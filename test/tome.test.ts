import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { mkdtempSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NameAllocator, checkGraph, GraphIndex } from '../src/onnx/graph.js';
import { decodeModel, encodeModel } from '../src/onnx/proto.js';
import type { ModelProto, NodeProto } from '../src/onnx/types.js';
import { UsageError } from '../src/errors.js';
import { buildMergeModel } from '../src/tome/merge-graph.js';
import {
  applyToMe, blockMergeParams, DEFAULT_TOME, describeBlocks, findTransformerBlocks, tomeApplies, tomeRandShape,
  validateToMeOptions, toMeOptionsProblem, type ToMeOptions,
} from '../src/tome/index.js';
import { getPatchedUnet, patchModelFile } from '../src/models/tome-cache.js';
import { synthesize } from '../src/synth/index.js';
import { fuseAttention } from '../src/optimize/index.js';
import { xorshiftFill as noise } from '../src/bench/inputs.js';
import { maxAbsDiff, readTensor, unetFeeds, FIXTURES_URL as FIX, type TensorEntry } from './helpers.js';


type FixtureTensor = { data: ReturnType<typeof readTensor>; shape: number[] };

/** Tensor `e` of the fixture file `file`, with its shape. */
const fixtureTensor = (file: URL, e: TensorEntry): FixtureTensor => ({ data: readTensor(readFileSync(file), e), shape: e.shape });

const f32 = (t: FixtureTensor): ort.Tensor => new ort.Tensor('float32', t.data as Float32Array, t.shape);
const nums = (t: ort.Tensor | { data: unknown }): number[] => Array.from(t.data as ArrayLike<number | bigint>, Number);


// -------------------------------------------------------------------------------------------
// The merge/unmerge subgraph against tomesd's bipartite_soft_matching_random2d vectors.

interface MergeCase {
  name: string;
  file: string;
  params: { w: number; h: number; sx: number; sy: number; ratio: number; batch: number; channels: number; N: number; r_requested: number; r_effective: number; num_dst: number | null; no_rand: boolean };
  identity: boolean;
  order_is_well_conditioned?: boolean;
  tensors: Record<string, TensorEntry>;
}

describe('merge subgraph vs tomesd reference vectors', () => {
  const dir = new URL('tome-merge/', FIX);
  const manifest = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8')) as { cases: MergeCase[] };
  test('the tome-merge fixture lists its 35 cases', () => assert.ok(manifest.cases.length >= 35, `${manifest.cases.length} cases`));
  const sessions = new Map<string, Promise<ort.InferenceSession>>();
  const session = (p: MergeCase['params']): Promise<ort.InferenceSession> => {
    const key = `${p.sx},${p.sy},${p.ratio},${p.no_rand}`;
    let s = sessions.get(key);
    if (!s) {
      const model = buildMergeModel(new NameAllocator(), {
        ratio: p.ratio, sx: p.sx, sy: p.sy, maxDownsample: 1, useRand: !p.no_rand, oddBatchDisablesRand: false,
      });
      s = ort.InferenceSession.create(encodeModel(model));
      sessions.set(key, s);
    }
    return s;
  };

  for (const c of manifest.cases) {
    test(c.name, async () => {
      const file = new URL(c.file, dir);
      const T = (k: string) => fixtureTensor(file, c.tensors[k]!);
      const p = c.params;
      const feeds: Record<string, ort.Tensor> = {
        metric: f32(T('metric')),
        x: f32(T('x')),
        grid: new ort.Tensor('int64', BigInt64Array.from([BigInt(p.h), BigInt(p.w)]), [2]),
      };
      if (!p.no_rand) {
        const ri = T('rand_idx');
        feeds.tome_rand_0 = new ort.Tensor('int64', ri.data as BigInt64Array, ri.shape);
      }
      const out = await (await session(p)).run(feeds);
      const C = p.channels;
      const x = nums(T('x'));
      if (c.identity) {
        assert.equal(nums(out.apply!)[0], 0);
        assert.deepEqual(nums(out.merged!), x);
        assert.deepEqual(nums(out.unmerged!), x);
        return;
      }
      assert.equal(nums(out.apply!)[0], 1);
      const r = p.r_effective;
      const nd = p.num_dst!;
      const ns = p.N - nd;
      const B = p.batch;
      assert.deepEqual(out.merged!.dims, [B, p.N - r, C]);
      // Unmerged does not depend on the order of the token lists.
      assert.ok(maxAbsDiff(nums(out.unmerged!), nums(T('unmerged'))) < 1e-5, 'unmerged');

      // Index sets: same destinations and sources as tomesd (ascending here; tomesd's order
      // comes from a non-stable argsort of ties).
      const aRef = nums(T('a_idx')), bRef = nums(T('b_idx'));
      const aMine = nums(out.a_idx!), bMine = nums(out.b_idx!);
      assert.deepEqual(aMine, [...aRef].sort((u, v) => u - v));
      assert.deepEqual(bMine, [...bRef].sort((u, v) => u - v));

      const mergedRef = nums(T('merged'));
      const mergedMine = nums(out.merged!);
      const nodeMaxRef = nums(T('node_max' in c.tensors ? 'node_max' : 'x'));
      for (let bi = 0; bi < B; bi++) {
        // Destination rows, matched by token.
        for (let j = 0; j < nd; j++) {
          const tok = bRef[j]!;
          const jm = bMine.indexOf(tok);
          const refRow = mergedRef.slice(((bi * (p.N - r)) + ns - r + j) * C, ((bi * (p.N - r)) + ns - r + j + 1) * C);
          const mineRow = mergedMine.slice(((bi * (p.N - r)) + ns - r + jm) * C, ((bi * (p.N - r)) + ns - r + jm + 1) * C);
          assert.ok(maxAbsDiff(refRow, mineRow) < 1e-5, `dst row of token ${tok}`);
        }
        // Unmerged-source rows: in tomesd's order (descending similarity) when that order is
        // well conditioned, else as a set.
        const unmRef: number[][] = [], unmMine: number[][] = [];
        for (let i = 0; i < ns - r; i++) {
          unmRef.push(mergedRef.slice((bi * (p.N - r) + i) * C, (bi * (p.N - r) + i + 1) * C));
          unmMine.push(mergedMine.slice((bi * (p.N - r) + i) * C, (bi * (p.N - r) + i + 1) * C));
        }
        if (c.order_is_well_conditioned === false) {
          unmRef.sort((u, v) => u[0]! - v[0]!);
          unmMine.sort((u, v) => u[0]! - v[0]!);
        }
        assert.ok(maxAbsDiff(unmRef.flat(), unmMine.flat()) < 1e-5, 'unmerged-source rows');
      }
      if ('src_idx' in c.tensors) {
        // Exposed internals, compared as tokens.
        const srcRef = nums(T('src_idx')), unmIdxRef = nums(T('unm_idx')), dstRef = nums(T('dst_idx'));
        const nodeIdxRef = nums(T('node_idx'));
        const srcMine = nums(out.src_idx!), unmIdxMine = nums(out.unm_idx!), dstMine = nums(out.dst_idx!);
        const nodeIdxMine = nums(out.node_idx!), nodeMaxMine = nums(out.node_max!);
        for (let bi = 0; bi < B; bi++) {
          for (let k = 0; k < r; k++) {
            assert.equal(aMine[srcMine[bi * r + k]!], aRef[srcRef[bi * r + k]!], 'merged source token');
            assert.equal(bMine[dstMine[bi * r + k]!], bRef[dstRef[bi * r + k]!], 'its destination token');
          }
          for (let k = 0; k < ns - r; k++) assert.equal(aMine[unmIdxMine[bi * (ns - r) + k]!], aRef[unmIdxRef[bi * (ns - r) + k]!]);
          for (let i = 0; i < ns; i++) {
            const im = aMine.indexOf(aRef[i]!);
            assert.ok(Math.abs(nodeMaxMine[bi * ns + im]! - nodeMaxRef[bi * ns + i]!) < 1e-5, 'node_max');
            assert.equal(bMine[nodeIdxMine[bi * ns + im]!], bRef[nodeIdxRef[bi * ns + i]!], 'node_idx');
          }
        }
      }
    });
  }
});

// -------------------------------------------------------------------------------------------
// Merge subgraph properties.

function mergeFeeds(metric: Float32Array, x: Float32Array, B: number, N: number, C: number, h: number, w: number): Record<string, ort.Tensor> {
  return {
    metric: new ort.Tensor('float32', metric, [B, N, C]),
    x: new ort.Tensor('float32', x, [B, N, C]),
    grid: new ort.Tensor('int64', BigInt64Array.from([BigInt(h), BigInt(w)]), [2]),
  };
}

describe('merge subgraph properties', () => {
  test('r is clamped to the number of sources', async () => {
    // 6×6 grid, sx=sy=3: 4 destinations, 32 sources; ratio 0.95 asks r = int(36·0.95) = 34 > 32.
    const model = buildMergeModel(new NameAllocator(), { ratio: 0.95, sx: 3, sy: 3, maxDownsample: 1, useRand: false });
    const s = await ort.InferenceSession.create(encodeModel(model));
    const m = noise(2 * 36 * 4, 7);
    const out = await s.run(mergeFeeds(m, m, 2, 36, 4, 6, 6));
    assert.deepEqual(out.merged!.dims, [2, 4, 4]);
    assert.deepEqual(out.src_idx!.dims, [2, 32]);
    assert.equal(blockMergeParams(6, 6, 36, { ...DEFAULT_TOME, ratio: 0.95, sx: 3, sy: 3 }).r, 32);
  });

  test('unmerge(merge(x)) = x when all tokens of each merge group are equal', async () => {
    // 8×8 tokens; every 2×2 cell holds one distinct random vector, so each source's best
    // destination is its own cell's (similarity 1) and ratio 0.75 merges exactly the cells.
    const h = 8, w = 8, C = 6, B = 2;
    const cellVec = noise(B * 16 * C, 99);
    const x = new Float32Array(B * h * w * C);
    for (let b = 0; b < B; b++) for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
      const cell = (i >> 1) * 4 + (j >> 1);
      for (let c = 0; c < C; c++) x[((b * h + i) * w + j) * C + c] = cellVec[(b * 16 + cell) * C + c]!;
    }
    const model = buildMergeModel(new NameAllocator(), { ratio: 0.75, sx: 2, sy: 2, maxDownsample: 1, useRand: false });
    const s = await ort.InferenceSession.create(encodeModel(model));
    const out = await s.run(mergeFeeds(x, x, B, h * w, C, h, w));
    assert.deepEqual(out.merged!.dims, [B, 16, C]);
    assert.deepEqual(nums(out.unmerged!), Array.from(x));
    // And the same with tokens that are not equal within cells: then it is not the identity.
    const y = noise(B * h * w * C, 5);
    const out2 = await s.run(mergeFeeds(y, y, B, h * w, C, h, w));
    assert.ok(maxAbsDiff(nums(out2.unmerged!), Array.from(y)) > 0.1);
  });

  test('an odd batch ignores the random destinations (as tomesd), an even batch uses them', async () => {
    const rand = (hsy: number, wsx: number, v: number): ort.Tensor => new ort.Tensor('int64', new BigInt64Array(hsy * wsx).fill(BigInt(v)), [hsy, wsx, 1]);
    const withRand = await ort.InferenceSession.create(encodeModel(buildMergeModel(new NameAllocator(), { ratio: 0.5, sx: 2, sy: 2, maxDownsample: 1, useRand: true })));
    const noRand = await ort.InferenceSession.create(encodeModel(buildMergeModel(new NameAllocator(), { ratio: 0.5, sx: 2, sy: 2, maxDownsample: 1, useRand: false })));
    for (const B of [1, 3]) {
      const m = noise(B * 48 * 4, B);
      const a = await withRand.run({ ...mergeFeeds(m, m, B, 48, 4, 6, 8), tome_rand_0: rand(3, 4, 3) });
      const b = await noRand.run(mergeFeeds(m, m, B, 48, 4, 6, 8));
      assert.deepEqual(nums(a.b_idx!), nums(b.b_idx!));
      assert.deepEqual(nums(a.merged!), nums(b.merged!));
    }
    const m = noise(2 * 48 * 4, 2);
    const a = await withRand.run({ ...mergeFeeds(m, m, 2, 48, 4, 6, 8), tome_rand_0: rand(3, 4, 3) });
    // destination = bottom-right token of each 2×2 cell: (2i+1)·8 + 2j+1
    assert.deepEqual(nums(a.b_idx!), [9, 11, 13, 15, 25, 27, 29, 31, 41, 43, 45, 47]);
  });

  test('merging on two threads sums every source, identically from run to run (many sources per destination)', async () => {
    // 64×64 tokens, 320 channels, sx = sy = 2, ratio 0.5: 2048 sources into 1024 destinations.
    // A two-dimensional metric makes many sources pick the same destination, the case in which
    // onnxruntime's multi-threaded ScatterND added one destination's updates concurrently.
    const [h, w, Cm, C] = [64, 64, 2, 320];
    const N = h * w;
    const model = buildMergeModel(new NameAllocator(), { ratio: 0.5, sx: 2, sy: 2, maxDownsample: 1, useRand: false });
    const s = await ort.InferenceSession.create(encodeModel(model), { intraOpNumThreads: 2, interOpNumThreads: 1 });
    const x = noise(N * C, 12);
    const feeds = {
      metric: new ort.Tensor('float32', noise(N * Cm, 11), [1, N, Cm]),
      x: new ort.Tensor('float32', x, [1, N, C]),
      grid: new ort.Tensor('int64', BigInt64Array.from([BigInt(h), BigInt(w)]), [2]),
    };
    const first = await s.run(feeds);
    const merged = first.merged!.data as Float32Array;
    const [aIdx, bIdx, unm, src, dst] = ['a_idx', 'b_idx', 'unm_idx', 'src_idx', 'dst_idx'].map((k) => nums(first[k]!));
    assert.equal(src!.length, 2048);
    const perDst = new Map<number, number>();
    for (const d of dst!) perDst.set(d, (perDst.get(d) ?? 0) + 1);
    assert.ok(Math.max(...perDst.values()) >= 4, 'several sources share a destination');
    // float64 reference from the plan's own indices: unmerged sources, then destination means
    const nd = bIdx!.length;
    const sum = new Float64Array(nd * C);
    const count = new Float64Array(nd).fill(1);
    for (let d = 0; d < nd; d++) for (let c = 0; c < C; c++) sum[d * C + c] = x[bIdx![d]! * C + c]!;
    src!.forEach((si, i) => {
      const d = dst![i]!;
      count[d]!++;
      for (let c = 0; c < C; c++) sum[d * C + c]! += x[aIdx![si]! * C + c]!;
    });
    let err = 0;
    unm!.forEach((ui, j) => {
      for (let c = 0; c < C; c++) err = Math.max(err, Math.abs(merged[j * C + c]! - x[aIdx![ui]! * C + c]!));
    });
    for (let d = 0; d < nd; d++) for (let c = 0; c < C; c++) err = Math.max(err, Math.abs(merged[(unm!.length + d) * C + c]! - sum[d * C + c]! / count[d]!));
    assert.ok(err <= 1e-5, `max abs error ${err}`);
    for (let k = 0; k < 6; k++) {
      const again = (await s.run(feeds)).merged!.data as Float32Array;
      assert.ok(again.every((v, i) => v === merged[i]), `run ${k + 2} differs from the first`);
    }
  });
});

// -------------------------------------------------------------------------------------------
// Options.

describe('options', () => {
  test('validateToMeOptions / toMeOptionsProblem', () => {
    assert.throws(() => validateToMeOptions({ ...DEFAULT_TOME, ratio: 0.9 }), (e: unknown) => e instanceof UsageError && /1 − 1\/\(sx·sy\)/.test((e as Error).message));
    assert.equal(toMeOptionsProblem({ ...DEFAULT_TOME, ratio: 0.5 }), null);
    assert.equal(toMeOptionsProblem({ ...DEFAULT_TOME, ratio: 0.75 }), null);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, ratio: 0.76 })!, /1 − 1\/\(sx·sy\)/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, ratio: 0.6, sx: 1, sy: 2 })!, /ratio/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, ratio: -0.1 })!, /ratio/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, sx: 0 })!, /sx/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, sy: 1.5 })!, /sy/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, maxDownsample: 3 })!, /1, 2, 4 or 8/);
    assert.match(toMeOptionsProblem({ ...DEFAULT_TOME, minWidth: -1 })!, /min width/);
  });

  test('tomeApplies', () => {
    assert.deepEqual(tomeApplies({ ...DEFAULT_TOME, ratio: 0.5 }, 512, 512), { apply: true });
    assert.equal(tomeApplies({ ...DEFAULT_TOME, ratio: 0 }, 512, 512).apply, false);
    const r = tomeApplies({ ...DEFAULT_TOME, ratio: 0.5, minWidth: 512 }, 256, 768);
    assert.equal(r.apply, false);
    assert.match(r.reason!, /256x768.*512x0/);
    assert.equal(tomeApplies({ ...DEFAULT_TOME, ratio: 0.5, minWidth: 512, minHeight: 512 }, 512, 512).apply, true);
  });

  test('tomeRandShape follows tomesd numbers', () => {
    const o = { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 2 };
    assert.deepEqual(tomeRandShape({ level: 1 }, 64, 64, o), [32, 32, 1]);
    assert.deepEqual(tomeRandShape({ level: 2 }, 18, 14, o), [4, 3, 1]); // 9×7 tokens
    assert.deepEqual(tomeRandShape({ level: 4 }, 64, 64, o), [0, 0, 1]); // above max downsample
    assert.deepEqual(tomeRandShape({ level: 1 }, 9, 7, { ...o, sx: 3, sy: 3 }), [3, 2, 1]);
    assert.equal(tomeRandShape({ level: null }, 64, 64, o), null);
  });
});

// -------------------------------------------------------------------------------------------
// The rewritten tiny UNet against torch + tomesd.

interface UnetCase {
  name: string; inputs: string; patched: boolean;
  tome_args: null | { ratio: number; max_downsample: number; sx: number; sy: number; use_rand: boolean; merge_attn: boolean; merge_crossattn: boolean; merge_mlp: boolean };
  merge_calls: Array<{ N: number; C: number; w: number; h: number; sx: number; sy: number; r: number; no_rand: boolean }>;
  tensors: Record<string, TensorEntry>;
}

/** The tome-unet fixture case `name`: its manifest entry, UNet input feeds and reference out_sample. */
function tomeUnetCase(name: string): { c: UnetCase; feeds: Record<string, ort.Tensor>; ref: Float32Array } {
  const dir = new URL('tome-unet/', FIX);
  const man = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8')) as { inputs: Record<string, { tensors: Record<string, TensorEntry> }>; cases: UnetCase[] };
  const c = man.cases.find((x) => x.name === name)!;
  const t = man.inputs[c.inputs]!.tensors;
  const feeds: Record<string, ort.Tensor> = {};
  for (const k of ['sample', 'timestep', 'encoder_hidden_states']) feeds[k] = f32(fixtureTensor(new URL('inputs.bin', dir), t[k]!));
  return { c, feeds, ref: fixtureTensor(new URL('outputs.bin', dir), c.tensors.out_sample!).data as Float32Array };
}
const R50_CASE = 'h32_w32_b2_tome_r50_md1_sx2sy2_a1c0m0';

const TINY_UNET = new URL('tiny-unet/model.onnx', FIX);
const tinyBytes = readFileSync(TINY_UNET);
const loadTiny = (): ModelProto => decodeModel(tinyBytes);
const toOpts = (a: NonNullable<UnetCase['tome_args']>): ToMeOptions => ({
  ...DEFAULT_TOME, ratio: a.ratio, sx: a.sx, sy: a.sy, maxDownsample: a.max_downsample, useRand: a.use_rand,
  mergeAttn: a.merge_attn, mergeCrossattn: a.merge_crossattn, mergeMlp: a.merge_mlp,
});

/** UNet inputs at timestep 500 with the text states of seed 3 (test/helpers.ts unetFeeds). */
const FEEDS = { timestep: 500, textSeed: 3 };

async function runModel(model: ModelProto | Uint8Array, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const bytes = model instanceof Uint8Array ? model : encodeModel(model);
  const s = await ort.InferenceSession.create(bytes);
  try {
    const out = await s.run(feeds);
    return out[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

describe('rewritten tiny UNet vs torch + tomesd', () => {
  const dir = new URL('tome-unet/', FIX);
  const manifest = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8')) as {
    inputs: Record<string, { tensors: Record<string, TensorEntry> }>; cases: UnetCase[];
  };
  test('the tome-unet fixture lists its 8 cases', () => assert.ok(manifest.cases.length >= 8, `${manifest.cases.length} cases`));
  const inputFeeds = (key: string): Record<string, ort.Tensor> => {
    const t = manifest.inputs[key]!.tensors;
    const f: Record<string, ort.Tensor> = {};
    for (const k of ['sample', 'timestep', 'encoder_hidden_states']) f[k] = f32(fixtureTensor(new URL('inputs.bin', dir), t[k]!));
    return f;
  };

  test('blocks found structurally, in run order, with their levels', () => {
    const r = findTransformerBlocks(loadTiny());
    assert.ok('blocks' in r, 'error' in r ? r.error : '');
    assert.deepEqual(r.blocks.map((b) => b.level), [1, 1, 2, 1, 1, 1]);
    assert.deepEqual(r.blocks.map((b) => b.name), [
      'down_blocks.0/attentions.0/transformer_blocks.0', 'down_blocks.0/attentions.1/transformer_blocks.0',
      'mid_block/attentions.0/transformer_blocks.0', 'up_blocks.1/attentions.0/transformer_blocks.0',
      'up_blocks.1/attentions.1/transformer_blocks.0', 'up_blocks.1/attentions.2/transformer_blocks.0',
    ]);
    for (const b of r.blocks) assert.deepEqual(b.sublayers, { attn: true, crossattn: true, mlp: true });
    const lines = describeBlocks(r.blocks, { ...DEFAULT_TOME, ratio: 0.5 });
    assert.equal(lines.length, 7);
    assert.match(lines[0]!, /6 transformer blocks \(levels 1, 2\)/);
    assert.match(lines[3]!, /level 2 .*merge: -/);
    assert.match(lines[1]!, /level 1 .*merge: attn$/);
  });

  // One patched model (and session) per option set; the b1 and b2 cases share it.
  const patchedFor = new Map<string, Promise<{ model: ModelProto; res: ReturnType<typeof applyToMe>; session: ort.InferenceSession | null }>>();
  const patched = (o: ToMeOptions) => {
    const key = JSON.stringify(o);
    let p = patchedFor.get(key);
    if (!p) {
      p = (async () => {
        const model = loadTiny();
        const res = applyToMe(model, o);
        return { model, res, session: res.patched ? await ort.InferenceSession.create(encodeModel(model)) : null };
      })();
      patchedFor.set(key, p);
    }
    return p;
  };
  test.after?.(async () => {
    for (const p of patchedFor.values()) await (await p).session?.release();
  });

  for (const c of manifest.cases) {
    test(c.name, async () => {
      const ref = fixtureTensor(new URL('outputs.bin', dir), c.tensors.out_sample!).data as Float32Array;
      const feeds = inputFeeds(c.inputs);
      if (!c.patched) {
        assert.ok(maxAbsDiff(await runModel(tinyBytes, feeds), ref) < 1e-4);
        return;
      }
      const o = toOpts(c.tome_args!);
      const { model, res, session } = await patched(o);
      if (o.ratio === 0) {
        // Not patched at all: the very same model runs (bit-identical to no ToMe).
        assert.equal(res.patched, false);
        assert.deepEqual(encodeModel(model), encodeModel(loadTiny()));
        assert.ok(maxAbsDiff(await runModel(model, feeds), ref) < 1e-4);
        return;
      }
      assert.equal(res.patched, true);
      assert.deepEqual(checkGraph(model), []);
      // tomesd's merge calls ↔ the blocks that merge, in order, with the same N, w, h, r.
      const [, , H, W] = feeds.sample!.dims as number[];
      const merging = res.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp);
      assert.equal(merging.length, c.merge_calls.length);
      merging.forEach((b, k) => {
        const call = c.merge_calls[k]!;
        const N = Math.ceil(H! / b.level!) * Math.ceil(W! / b.level!);
        assert.equal(N, call.N);
        const p = blockMergeParams(H!, W!, N, o);
        assert.deepEqual([p.w, p.h, p.r], [call.w, call.h, call.r]);
      });
      const got = (await session!.run(feeds)).out_sample!.data as Float32Array;
      assert.ok(maxAbsDiff(got, ref) < 1e-4, `max abs ${maxAbsDiff(got, ref)}`);
    });
  }

  test('a graph with every node and inner tensor renamed patches identically', async () => {
    const o = { ...DEFAULT_TOME, ratio: 0.5, mergeCrossattn: true, mergeMlp: true, maxDownsample: 2 };
    const plain = loadTiny();
    const renamed = loadTiny();
    const g = renamed.graph!;
    const io = new Set([...g.input, ...g.output].map((v) => v.name));
    const map = new Map<string, string>();
    const rn = (t: string): string => {
      if (t === '' || io.has(t)) return t;
      let n = map.get(t);
      if (!n) { n = `t${map.size}`; map.set(t, n); }
      return n;
    };
    g.node.forEach((n, i) => { n.name = `n${i}`; n.input = n.input.map(rn); n.output = n.output.map(rn); });
    for (const t of g.initializer) t.name = rn(t.name!);
    for (const v of g.valueInfo) v.name = rn(v.name);
    const a = applyToMe(plain, o);
    const b = applyToMe(renamed, o);
    assert.equal(b.patched, true);
    assert.deepEqual(b.blocks.map((x) => [x.level, x.merged]), a.blocks.map((x) => [x.level, x.merged]));
    assert.ok(b.blocks.every((x) => x.name === ''));
    assert.deepEqual(checkGraph(renamed), []);
    const feeds = unetFeeds(2, 16, 16, { ...FEEDS, seed: 11 });
    assert.deepEqual(await runModel(renamed, feeds), await runModel(plain, feeds));
  });

  test('latent sizes not divisible by the strides run (18×14, 10×22) and one model serves every size', async () => {
    const o = { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 2, mergeCrossattn: true };
    const model = loadTiny();
    assert.equal(applyToMe(model, o).patched, true);
    const bytes = encodeModel(model);
    const s = await ort.InferenceSession.create(bytes);
    const base = await ort.InferenceSession.create(tinyBytes);
    for (const [B, H, W] of [[1, 18, 14], [2, 10, 22], [2, 32, 32], [1, 4, 2]] as const) {
      const feeds = unetFeeds(B, H, W, { ...FEEDS, seed: H * W });
      const out = (await s.run(feeds)).out_sample!.data as Float32Array;
      const ref = (await base.run(feeds)).out_sample!.data as Float32Array;
      assert.equal(out.length, B * 4 * H * W);
      assert.ok(out.every(Number.isFinite));
      const d = maxAbsDiff(out, ref);
      assert.ok(d > 1e-4, `${H}×${W} merges (diff ${d})`);
    }
    // ratio 0.2 at 2×2: r = int(4·0.2) = 0 in every block, so exactly the original computation.
    const small = loadTiny();
    assert.equal(applyToMe(small, { ...o, ratio: 0.2 }).patched, true);
    const feeds = unetFeeds(1, 2, 2, { ...FEEDS, seed: 5 });
    assert.deepEqual(await runModel(small, feeds), (await base.run(feeds)).out_sample!.data);
    await s.release();
    await base.release();
  });

  test('random destinations through tome_rand_<k>: zeros = no rand; odd batch ignores them', async () => {
    const o = { ...DEFAULT_TOME, ratio: 0.5, useRand: true };
    const model = loadTiny();
    const res = applyToMe(model, o);
    assert.deepEqual(res.randInputs, ['tome_rand_0', 'tome_rand_1', 'tome_rand_2', 'tome_rand_3', 'tome_rand_4']);
    assert.deepEqual(res.blocks.filter((b) => b.randInput).map((b) => b.index), [0, 1, 3, 4, 5]);
    const plain = loadTiny();
    applyToMe(plain, { ...o, useRand: false });
    const s = await ort.InferenceSession.create(encodeModel(model));
    const p = await ort.InferenceSession.create(encodeModel(plain));
    const H = 16, W = 12;
    const randFeeds = (fill: (i: number) => number): Record<string, ort.Tensor> => {
      const f: Record<string, ort.Tensor> = {};
      res.blocks.forEach((b) => {
        if (!b.randInput) return;
        const [hh, ww] = tomeRandShape(b, H, W, o)!;
        f[b.randInput] = new ort.Tensor('int64', BigInt64Array.from({ length: hh * ww }, (_, i) => BigInt(fill(i))), [hh, ww, 1]);
      });
      return f;
    };
    for (const B of [1, 2]) {
      const feeds = unetFeeds(B, H, W, { ...FEEDS, seed: 21 });
      const ref = (await p.run(feeds)).out_sample!.data as Float32Array;
      const zeros = (await s.run({ ...feeds, ...randFeeds(() => 0) })).out_sample!.data as Float32Array;
      assert.deepEqual(zeros, ref);
      const rnd = (await s.run({ ...feeds, ...randFeeds((i) => (i * 7 + 3) % 4) })).out_sample!.data as Float32Array;
      if (B === 1) assert.deepEqual(rnd, ref);
      else assert.ok(maxAbsDiff(rnd, ref) > 1e-3);
    }
    await s.release();
    await p.release();
  });

  test('nothing to merge: no block at the level, or no sub-layer selected → not patched', () => {
    const m = loadTiny();
    const r = applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5, mergeAttn: false });
    assert.equal(r.patched, false);
    assert.match(r.reason!, /no sub-layer/);
    assert.deepEqual(encodeModel(m), tinyBytes.length ? encodeModel(loadTiny()) : new Uint8Array());
  });

  test('an already patched model is not patched again', () => {
    const m = loadTiny();
    assert.equal(applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5 }).patched, true);
    const before = encodeModel(m);
    const again = applyToMe(m, { ...DEFAULT_TOME, ratio: 0.3 });
    assert.equal(again.patched, false);
    assert.match(again.reason!, /already ToMe-patched/);
    assert.deepEqual(encodeModel(m), before);
  });

  test('residual adds fused as com.microsoft BiasAdd(y, bias, x) are followed', () => {
    const m = loadTiny();
    const g = m.graph!;
    const idx = new GraphIndex(g);
    let fused = 0;
    // ff.net.2: Add(bias, MatMul) → Add(·, x2)  ⇒  BiasAdd(MatMul, bias, x2)
    for (const n of [...g.node]) {
      if (n.opType !== 'Add') continue;
      const users = idx.consumers(n.output[0]!);
      const biasIn = n.input.find((i) => idx.initializer(i));
      const mm = n.input.find((i) => idx.producer(i)?.opType === 'MatMul');
      if (!biasIn || !mm || users.length !== 1 || users[0]!.opType !== 'Add') continue;
      const res = users[0]!;
      const other = res.input.find((i) => i !== n.output[0])!;
      if (!idx.producer(other) || idx.producer(other)!.opType !== 'Add') continue; // the residual stream x2
      if (!/ff\/net\.2/.test(n.name ?? '')) continue;
      Object.assign(res, { opType: 'BiasAdd', domain: 'com.microsoft', input: [mm, biasIn, other] });
      g.node.splice(g.node.indexOf(n), 1);
      fused++;
    }
    assert.equal(fused, 6);
    const r = findTransformerBlocks(m);
    assert.ok('blocks' in r, 'error' in r ? r.error : '');
    assert.deepEqual(r.blocks.map((b) => b.level), [1, 1, 2, 1, 1, 1]);
  });

  test('a graph without transformer blocks is reported in one line and left alone', () => {
    const m = loadTiny();
    const g = m.graph!;
    // Break every self-attention: the Softmax now reads a graph input instead.
    const idx = new GraphIndex(g);
    for (const n of idx.nodesByOp('Softmax')) n.opType = 'Relu';
    const before = encodeModel(m);
    const r = applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5 });
    assert.equal(r.patched, false);
    assert.ok(r.reason && !r.reason.includes('\n'));
    assert.deepEqual(encodeModel(m), before);
  });
});

// -------------------------------------------------------------------------------------------
// Files: tome-patch and the cache.

describe('patched model files', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'sdgen-tome-'));
  const o = { ...DEFAULT_TOME, ratio: 0.5 };
  const caseFeeds = () => tomeUnetCase(R50_CASE);

  test('patchModelFile keeps external data and reproduces tomesd', async () => {
    const src = new URL('tiny-sd1/unet/model.onnx', FIX).pathname;
    const out = join(tmp, 'patched', 'unet.onnx');
    const res = await patchModelFile(src, out, o);
    assert.equal(res.patched, true);
    assert.ok(existsSync(`${out}_data`), 'weights file beside the model');
    const { feeds, ref } = caseFeeds();
    const s = await ort.InferenceSession.create(out);
    const got = (await s.run(feeds)).out_sample!.data as Float32Array;
    await s.release();
    assert.ok(maxAbsDiff(got, ref) < 1e-4);
    await assert.rejects(patchModelFile(src, join(tmp, 'x.onnx'), { ...o, ratio: 0 }), /ratio is 0/);
  });

  test('getPatchedUnet caches by model identity + options', async () => {
    const src = new URL('tiny-sd1/unet/model.onnx', FIX).pathname;
    const cacheDir = join(tmp, 'cache');
    const a = await getPatchedUnet(src, o, { cacheDir });
    assert.equal(a.fromCache, false);
    assert.equal(a.patched, true);
    assert.equal(a.blocks.length, 5);
    assert.ok(a.path.startsWith(cacheDir));
    const b = await getPatchedUnet(src, { ...o, minWidth: 512 }, { cacheDir });
    assert.equal(b.fromCache, true);
    assert.equal(b.path, a.path);
    const c = await getPatchedUnet(src, { ...o, ratio: 0.3 }, { cacheDir });
    assert.equal(c.fromCache, false);
    assert.notEqual(c.path, a.path);
    assert.equal(readdirSync(join(cacheDir, 'tome')).length, 2);
    const { feeds, ref } = caseFeeds();
    const s = await ort.InferenceSession.create(b.path);
    const got = (await s.run(feeds)).out_sample!.data as Float32Array;
    await s.release();
    assert.ok(maxAbsDiff(got, ref) < 1e-4);
    const d = await getPatchedUnet(src, { ...o, mergeAttn: false }, { cacheDir });
    assert.equal(d.patched, false);
    assert.equal(d.path, src);
  });

  test.after?.(() => rmSync(tmp, { recursive: true, force: true }));
});

// -------------------------------------------------------------------------------------------
// Other export variants.

/** Rewrites the decomposed LayerNorms of an opset-14 export into LayerNormalization (opset 17). */
function toOpset17(m: ModelProto): number {
  const g = m.graph!;
  const idx = new GraphIndex(g);
  const remove = new Set<object>();
  const added: Array<{ at: object; node: NodeProto }> = [];
  let count = 0;
  const constVal = (name: string): number => {
    const p = idx.producer(name);
    const t = p?.attribute[0]?.t ?? idx.initializer(name);
    return new Float32Array(new Uint8Array(t!.rawData!).buffer)[0]!;
  };
  for (const rm of idx.nodesByOp('ReduceMean')) {
    const x = rm.input[0]!;
    const sub = idx.consumers(rm.output[0]!).find((c) => c.opType === 'Sub' && c.input[0] === x);
    if (!sub) continue;
    const pow = idx.consumers(sub.output[0]!).find((c) => c.opType === 'Pow')!;
    const div = idx.consumers(sub.output[0]!).find((c) => c.opType === 'Div')!;
    const rm2 = idx.consumers(pow.output[0]!)[0]!;
    const addEps = idx.consumers(rm2.output[0]!)[0]!;
    const sqrt = idx.consumers(addEps.output[0]!)[0]!;
    const mul = idx.consumers(div.output[0]!)[0]!;
    const add = idx.consumers(mul.output[0]!)[0]!;
    const eps = constVal(addEps.input[1]!);
    const gamma = mul.input.find((i) => i !== div.output[0])!;
    const beta = add.input.find((i) => i !== mul.output[0])!;
    for (const n of [rm, sub, pow, rm2, addEps, sqrt, div, mul, add]) remove.add(n);
    added.push({ at: rm, node: { name: `ln${count++}`, opType: 'LayerNormalization', domain: '', input: [x, gamma, beta], output: [add.output[0]!], attribute: [{ name: 'axis', type: 2, i: -1 }, { name: 'epsilon', type: 1, f: eps }] } });
  }
  const out: typeof g.node = [];
  for (const n of g.node) {
    const a = added.find((x) => x.at === n);
    if (a) out.push(a.node);
    if (!remove.has(n)) out.push(n);
  }
  g.node = out;
  m.opsetImport = [{ domain: '', version: 17 }];
  m.irVersion = 8;
  return count;
}

/**
 * Fuses each residual Add feeding a LayerNormalization into a com.microsoft
 * SkipLayerNormalization (as onnxruntime's transformer optimizer does). Returns the count.
 */
function toSkipLayerNorm(m: ModelProto): number {
  const g = m.graph!;
  const idx = new GraphIndex(g);
  const remove = new Set<NodeProto>();
  const replace = new Map<NodeProto, NodeProto>();
  for (const ln of idx.nodesByOp('LayerNormalization')) {
    const add = idx.producer(ln.input[0]!);
    if (!add || add.opType !== 'Add' || add.input.some((i) => idx.initializer(i) || idx.producer(i)?.opType === 'Constant')) continue;
    const eps = ln.attribute.find((a) => a.name === 'epsilon')!;
    replace.set(ln, {
      name: `sln_${replace.size}`, opType: 'SkipLayerNormalization', domain: 'com.microsoft',
      input: [add.input[0]!, add.input[1]!, ln.input[1]!, ln.input[2]!], output: [ln.output[0]!, '', '', add.output[0]!],
      attribute: [eps],
    });
    remove.add(add);
  }
  g.node = g.node.filter((n) => !remove.has(n)).map((n) => replace.get(n) ?? n);
  m.opsetImport.push({ domain: 'com.microsoft', version: 1 });
  return replace.size;
}

/** Makes `timestep` an int64 input (older exports), cast to float inside. */
function toInt64Timestep(m: ModelProto): void {
  const g = m.graph!;
  const ts = g.input.find((i) => i.name === 'timestep')!;
  ts.type!.tensorType!.elemType = 7;
  for (const n of g.node) n.input = n.input.map((i) => (i === 'timestep' ? 'timestep_f' : i));
  g.node.unshift({ name: 'ts_cast', opType: 'Cast', domain: '', input: ['timestep'], output: ['timestep_f'], attribute: [{ name: 'to', type: 2, i: 1 }] });
}

describe('export variants', () => {
  const { c, feeds, ref } = tomeUnetCase(R50_CASE);
  const o = toOpts(c.tome_args!);

  test('opset 17 (LayerNormalization) export reproduces tomesd', async () => {
    const m = loadTiny();
    assert.equal(toOpset17(m), 18);
    const r = applyToMe(m, o);
    assert.equal(r.patched, true);
    assert.equal(r.blocks.length, 6);
    assert.equal(Number(m.opsetImport[0]!.version), 17);
    assert.deepEqual(checkGraph(m), []);
    assert.ok(maxAbsDiff(await runModel(m, feeds), ref) < 1e-4);
  });

  test('composes with fused attention (either order) and with an optimizer-style graph (MultiHeadAttention + SkipLayerNormalization)', async () => {
    for (const order of ['fuse-then-tome', 'tome-then-fuse', 'optimized'] as const) {
      const m = loadTiny();
      if (order === 'tome-then-fuse') {
        assert.equal(applyToMe(m, o).patched, true);
        assert.equal(fuseAttention(m).count, 12);
      } else {
        if (order === 'optimized') toOpset17(m);
        assert.equal(fuseAttention(m).count, 12);
        if (order === 'optimized') assert.equal(toSkipLayerNorm(m), 12);
        const cross = order === 'optimized';
        const r = applyToMe(m, { ...o, mergeCrossattn: cross });
        assert.equal(r.patched, true, r.reason);
        assert.equal(r.blocks.filter((b) => b.merged.attn && b.merged.crossattn === cross).length, 5);
        assert.equal(m.graph!.node.filter((n) => n.opType === 'Softmax').length, 0);
      }
      assert.deepEqual(checkGraph(m), []);
      if (order !== 'optimized') {
        assert.ok(maxAbsDiff(await runModel(m, feeds), ref) < 1e-4, order);
      } else {
        const plain = loadTiny();
        applyToMe(plain, { ...o, mergeCrossattn: true });
        assert.ok(maxAbsDiff(await runModel(m, feeds), await runModel(plain, feeds)) < 1e-4, order);
      }
    }
  });

  test('int64-timestep export reproduces tomesd', async () => {
    const m = loadTiny();
    toInt64Timestep(m);
    assert.equal(applyToMe(m, o).patched, true);
    const ts = feeds.timestep!.data as Float32Array;
    const f = { ...feeds, timestep: new ort.Tensor('int64', BigInt64Array.from(ts, (v) => BigInt(Math.round(v))), [ts.length]) };
    assert.ok(maxAbsDiff(await runModel(m, f), ref) < 1e-4);
  });

  // Synthetic UNets from src/synth (seeded random weights; no torch reference for them).
  const synthUnet = async (v: { opset?: 14 | 17; fp16?: boolean; style?: 'sd1' | 'sd2'; timestepType?: 'int64' }): Promise<Uint8Array> => {
    const out = mkdtempSync(join(tmpdir(), 'sdgen-tome-synth-'));
    try {
      await synthesize({ arch: 'tiny', outDir: out, ...v });
      return readFileSync(join(out, 'unet', 'model.onnx'));
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  };
  const B = 2, H = 16, W = 16;
  const sample = noise(B * 4 * H * W, 31);
  const ehs = noise(B * 77 * 32, 32);
  const f32Feeds = (): Record<string, ort.Tensor> => ({
    sample: new ort.Tensor('float32', sample, [B, 4, H, W]),
    timestep: new ort.Tensor('float32', Float32Array.from([500, 500]), [B]),
    encoder_hidden_states: new ort.Tensor('float32', ehs, [B, 77, 32]),
  });
  const meanAbs = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
    return s / a.length;
  };
  const all = { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 2, mergeCrossattn: true, mergeMlp: true };

  test('synthetic SD2-style UNet (linear proj_in) and opset-17 / int64-timestep synth UNets patch and run', async () => {
    for (const v of [{ style: 'sd2' as const }, { opset: 17 as const }, { timestepType: 'int64' as const }]) {
      const bytes = await synthUnet(v);
      const blocks = findTransformerBlocks(decodeModel(bytes));
      assert.ok('blocks' in blocks);
      assert.deepEqual(blocks.blocks.map((b) => b.level), [1, 1, 2, 1, 1, 1]);
      const feeds = f32Feeds();
      if (v.timestepType) feeds.timestep = new ort.Tensor('int64', BigInt64Array.from([500n, 500n]), [B]);
      const base = await runModel(bytes, feeds);
      const outs: number[] = [];
      for (const ratio of [0.01, 0.5]) {
        const m = decodeModel(bytes);
        assert.equal(applyToMe(m, { ...all, ratio }).patched, true);
        assert.deepEqual(checkGraph(m), []);
        const got = await runModel(m, feeds);
        assert.ok(got.every(Number.isFinite));
        outs.push(meanAbs(got, base));
      }
      // ratio 0.01 merges a handful of tokens: close to the unpatched output; 0.5 much less so.
      assert.ok(outs[0]! < 0.01 && outs[1]! > 2 * outs[0]!, `${JSON.stringify(v)}: ${outs}`);
    }
  });

  test('fp16 UNet: merges summed in float32 (ScatterElements), close to the fp32 patched model', async () => {
    const [b16, b32] = [await synthUnet({ fp16: true }), await synthUnet({})];
    const m16 = decodeModel(b16), m32 = decodeModel(b32);
    const r16 = applyToMe(m16, all);
    assert.equal(r16.patched, true);
    assert.ok(r16.blocks.every((b) => b.elemType === 'float16'));
    applyToMe(m32, all);
    const { float32ToFloat16, float16ToFloat32 } = await import('../src/onnx/tensor.js');
    const f = f32Feeds();
    const f16: Record<string, ort.Tensor> = {};
    for (const [k, v] of Object.entries(f)) f16[k] = new ort.Tensor('float16', float32ToFloat16(v.data as Float32Array), v.dims);
    const s = await ort.InferenceSession.create(encodeModel(m16));
    const out = (await s.run(f16))[s.outputNames[0]!]!;
    await s.release();
    assert.equal(out.type, 'float16');
    const got = float16ToFloat32(out.data as Uint16Array);
    assert.ok(got.every(Number.isFinite));
    const want = await runModel(m32, f);
    assert.ok(meanAbs(got, want) < 0.03, `mean abs ${meanAbs(got, want)}`);
  });
});

describe('full-size SD 1.5 graph (synthetic, no weights)', () => {
  test('16 transformer blocks at levels 1, 2, 4, 8; all patched with max downsample 8', async () => {
    const { buildComponents, resolveArch } = await import('../src/synth/index.js');
    const built = buildComponents(resolveArch('sd15')).unet;
    const m = built.ctx.b.build();
    const r = findTransformerBlocks(m);
    assert.ok('blocks' in r);
    assert.deepEqual(r.blocks.map((b) => b.level), [1, 1, 2, 2, 4, 4, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]);
    const res = applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 8, useRand: true, mergeMlp: true });
    assert.equal(res.patched, true);
    assert.equal(res.randInputs.length, 16);
    assert.ok(res.blocks.every((b) => b.merged.attn && b.merged.mlp && !b.merged.crossattn));
    assert.deepEqual(checkGraph(m), []);
    // 512×512 image: latent 64×64; the level-1 blocks see 4096 tokens, 32×32 destinations.
    assert.deepEqual(tomeRandShape(res.blocks[0]!, 64, 64, { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 8 }), [32, 32, 1]);
    assert.deepEqual(tomeRandShape(res.blocks[6]!, 64, 64, { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 8 }), [4, 4, 1]);
  });
});
