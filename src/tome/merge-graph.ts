/**
 * ONNX subgraphs for tomesd's bipartite_soft_matching_random2d, built from standard ops only and
 * driven entirely by runtime shapes (one patched model serves every image and batch size).
 *
 * Per transformer block, `emitBlockPlan` computes from the block input (the metric) and the
 * latent size H×W:
 *   downsample = ceil(sqrt(H·W // N)), w = ceil(W/ds), h = ceil(H/ds), r = int(N·ratio),
 *   hsy = h // sy, wsx = w // sx, num_dst = hsy·wsx, r_eff = min(r, N − num_dst),
 * and a boolean `apply` = ds ≤ max_downsample ∧ r_eff > 0 ∧ num_dst > 0 ∧ h·w = N. (tomesd fails
 * on the last two, which only happen for degenerate latent sizes; sdgen leaves such a block alone.)
 * When `apply` holds, an If node computes the merge plan once (cosine similarity sources ×
 * destinations, best destination per source, the r_eff most similar sources merged); every merge
 * and unmerge is an If too, whose else branch is Identity, so a block that does not merge at the
 * current size runs exactly the original computation.
 *
 * Token order: destinations and sources are listed in ascending token index. (tomesd takes them
 * from torch's non-stable argsort, whose order for ties is an artefact of the sort; it only
 * permutes the rows of the merged tensor, which attention and MLPs do not see.) Sources are
 * ordered by descending best similarity (TopK, ties in ascending order) exactly as tomesd does.
 */
import { attrInt, attrInts, attrString } from '../onnx/attributes.js';
import type { NameAllocator } from '../onnx/graph.js';
import { DataType, type ModelProto } from '../onnx/types.js';
import { ToMeEmitter } from './emitter.js';

/** Int64 scalars (0-d) holding the latent height and width. */
export interface LatentGrid {
  H: string;
  W: string;
}

/** Graph-level ToMe settings the plan needs. */
export interface PlanSettings {
  ratio: number;
  sx: number;
  sy: number;
  maxDownsample: number;
  /** Name of an int64 [h//sy, w//sx, 1] input with the destination index in each cell, if random. */
  randInput?: string;
  /** tomesd's compute_merge ignores the random input when the batch is odd (default true). */
  oddBatchDisablesRand?: boolean;
}

/** Tensors produced for one block; every name except `apply` is an output of the plan's If. */
export interface MergePlan {
  apply: string;
  /** [B, ns−r]: rows of x viewed as [B·N, C] that stay unmerged (in tomesd's unm order). */
  unmRows: string;
  /** [nd]: destination token indices. */
  bIdx: string;
  /** [B, r]: rows of x (as [B·N, C]) merged into destinations. */
  srcRows: string;
  /** [B, r, 1]: the destination (0 … nd−1) each merged source goes to, per batch item. */
  dstCol: string;
  /** [B, nd, 1] float32: 1 + number of sources merged into each destination. */
  counts: string;
  /** [B, N]: for each output token, its row in the merged tensor viewed as [B·(N−r), C]. */
  invRows: string;
  /** The internals (tomesd's closure variables), for tests. */
  aIdx: string;
  unmIdx: string;
  srcIdx: string;
  dstIdx: string;
  nodeMax: string;
  nodeIdx: string;
}

const PLAN_TYPES: DataType[] = [
  DataType.INT64, DataType.INT64, DataType.INT64, DataType.INT64, DataType.FLOAT, DataType.INT64,
  DataType.INT64, DataType.INT64, DataType.INT64, DataType.INT64, DataType.FLOAT, DataType.INT64,
];

/** H and W (int64 scalars) from a [B, C, H, W] tensor's shape. */
export function emitLatentGrid(e: ToMeEmitter, sample: string): LatentGrid {
  const shape = e.op('Shape', [sample]);
  return {
    H: e.op('Gather', [shape, e.i64(2)], [attrInt('axis', 0)]),
    W: e.op('Gather', [shape, e.i64(3)], [attrInt('axis', 0)]),
  };
}

/**
 * The merge plan of one block. `metric` is the block input [B, N, C] (float32 or float16; the
 * similarities are computed in float32).
 */
export function emitBlockPlan(e: ToMeEmitter, metric: string, metricType: DataType, grid: LatentGrid, s: PlanSettings): MergePlan {
  const I = (v: number | number[]): string => e.i64(v);
  const shX = e.op('Shape', [metric]);
  const B = e.op('Gather', [shX, I(0)], [attrInt('axis', 0)]);
  const N = e.op('Gather', [shX, I(1)], [attrInt('axis', 0)]);
  // downsample = ceil(sqrt(H·W // N)), exactly in integers: floor(sqrt) from float64, then fixed up.
  const k = e.op('Div', [e.op('Mul', [grid.H, grid.W]), N]);
  const ds0 = e.cast(e.op('Sqrt', [e.cast(k, DataType.DOUBLE)]), DataType.INT64);
  const ds1 = e.op('Add', [ds0, e.cast(e.op('Less', [e.op('Mul', [ds0, ds0]), k]), DataType.INT64)]);
  const ds = e.op('Max', [ds1, I(1)]);
  const ceilDiv = (a: string): string => e.op('Div', [e.op('Sub', [e.op('Add', [a, ds]), I(1)]), ds]);
  const w = ceilDiv(grid.W);
  const h = ceilDiv(grid.H);
  // r = int(N · ratio) in float64 as Python does; Cast truncates toward zero (= floor here).
  const r = e.cast(e.op('Mul', [e.cast(N, DataType.DOUBLE), e.scalar(DataType.DOUBLE, s.ratio)]), DataType.INT64);
  // (No Div/Mul by 1: onnxruntime would remove them and warn about the If branches using them.)
  const hsy = s.sy === 1 ? h : e.op('Div', [h, I(s.sy)]);
  const wsx = s.sx === 1 ? w : e.op('Div', [w, I(s.sx)]);
  const nd = e.op('Mul', [hsy, wsx]);
  const ns = e.op('Sub', [N, nd]);
  const reff = e.op('Min', [r, ns]);
  const okDs = e.op('Not', [e.op('Greater', [ds, I(s.maxDownsample)])]);
  const okR = e.op('Greater', [reff, I(0)]);
  const okNd = e.op('Greater', [nd, I(0)]);
  const okGrid = e.op('Equal', [e.op('Mul', [h, w]), N]);
  const apply = e.op('And', [e.op('And', [okDs, okR]), e.op('And', [okNd, okGrid])], [], { label: 'Apply' });

  const outs = e.ifNode(apply, PLAN_TYPES, (t) => {
    const ti = (v: number | number[]): string => t.i64(v);
    const range = (n: string): string => t.op('Range', [ti(0), n, ti(1)]);
    // Destination token of each sy×sx cell: (i·sy + v // sx)·w + j·sx + v % sx.
    const rows = t.unsqueeze(s.sy === 1 ? range(hsy) : t.op('Mul', [range(hsy), ti(s.sy)]), [1]); // [hsy,1]
    const cols = t.unsqueeze(s.sx === 1 ? range(wsx) : t.op('Mul', [range(wsx), ti(s.sx)]), [0]); // [1,wsx]
    let tok: string;
    if (s.randInput) {
      const cellShape = t.shape1d([{ scalar: hsy }, { scalar: wsx }]);
      const readRand = (u: ToMeEmitter): string[] => [u.op('Reshape', [s.randInput!, cellShape])];
      const zeros = (u: ToMeEmitter): string[] => [u.filled(cellShape, DataType.INT64, 0)];
      let v: string;
      if (s.oddBatchDisablesRand ?? true) {
        const even = t.op('Equal', [t.op('Mod', [B, ti(2)]), ti(0)]);
        v = t.ifNode(even, [DataType.INT64], readRand, zeros, 'Rand')[0]!;
      } else {
        v = readRand(t)[0]!;
      }
      if (s.sx === 1) {
        tok = t.op('Add', [t.op('Mul', [t.op('Add', [rows, v]), w]), cols]);
      } else {
        const dy = t.op('Div', [v, ti(s.sx)]);
        const dx = t.op('Mod', [v, ti(s.sx)]);
        const row = t.op('Mul', [t.op('Add', [rows, dy]), w]);
        tok = t.op('Add', [t.op('Add', [row, cols]), dx]);
      }
    } else {
      tok = t.op('Add', [t.op('Mul', [rows, w]), cols]);
    }
    const tokFlat = t.op('Reshape', [tok, ti([-1])]);
    const mask0 = t.filled(t.unsqueeze(N, [0]), DataType.INT64, 0);
    const ones = t.filled(t.unsqueeze(nd, [0]), DataType.INT64, 1);
    const mask = t.op('ScatterElements', [mask0, tokFlat, ones], [attrInt('axis', 0)]);
    const bIdx = t.op('Reshape', [t.op('NonZero', [mask]), ti([-1])]);
    const aIdx = t.op('Reshape', [t.op('NonZero', [t.op('Equal', [mask, ti(0)])]), ti([-1])]);

    // Cosine similarity sources × destinations (float32).
    const m32 = metricType === DataType.FLOAT ? metric : t.cast(metric, DataType.FLOAT);
    const mn = t.op('Div', [m32, t.reduce('ReduceL2', m32, [-1], true)]);
    const a = t.op('Gather', [mn, aIdx], [attrInt('axis', 1)]);
    const b = t.op('Gather', [mn, bIdx], [attrInt('axis', 1)]);
    const scores = t.op('MatMul', [a, t.op('Transpose', [b], [attrInts('perm', [0, 2, 1])])]);
    const nodeMax = t.reduce('ReduceMax', scores, [-1], false);
    const nodeIdx = t.op('ArgMax', [scores], [attrInt('axis', -1), attrInt('keepdims', 0)]);
    const ns1 = t.unsqueeze(ns, [0]);
    const r1 = t.unsqueeze(reff, [0]);
    const order = t.node('TopK', [nodeMax, ns1], [attrInt('axis', -1), attrInt('largest', 1), attrInt('sorted', 1)], { outputs: 2 })[1]!;
    const srcIdx = t.op('Slice', [order, ti([0]), r1, ti([1])]);
    const unmIdx = t.op('Slice', [order, r1, ns1, ti([1])]);
    const dstIdx = t.op('GatherElements', [nodeIdx, srcIdx], [attrInt('axis', 1)]);
    const unmTok = t.op('Gather', [aIdx, unmIdx], [attrInt('axis', 0)]);
    const srcTok = t.op('Gather', [aIdx, srcIdx], [attrInt('axis', 0)]);
    const bRange = t.unsqueeze(range(B), [1]); // [B,1]
    const unmRows = t.op('Add', [unmTok, t.op('Mul', [bRange, N])]);
    const srcRows = t.op('Add', [srcTok, t.op('Mul', [bRange, N])]);
    const dstCol = t.unsqueeze(dstIdx, [2]);
    // counts = 1 + number of sources merged into each destination. The sums use ScatterElements,
    // which adds the updates of one destination in source order on one thread; onnxruntime's
    // CPU ScatterND splits the updates over threads, so that duplicate destinations are added
    // in a varying order (and concurrently): results that change from run to run.
    const cnt0 = t.filled(t.shape1d([{ scalar: B }, { scalar: nd }]), DataType.FLOAT, 1);
    const cntUpd = t.filled(t.op('Shape', [dstIdx]), DataType.FLOAT, 1);
    const cnt = t.op('ScatterElements', [cnt0, dstIdx, cntUpd], [attrInt('axis', 1), attrString('reduction', 'add')]);
    const counts = t.unsqueeze(cnt, [2]);
    // Inverse map for unmerge: output token → row of the merged tensor.
    const nUnm = t.op('Sub', [ns, reff]);
    const bN = t.shape1d([{ scalar: B }, { scalar: nd }]);
    const bUnm = t.shape1d([{ scalar: B }, { scalar: nUnm }]);
    const tokAll = t.op('Concat', [unmTok, t.op('Expand', [t.unsqueeze(bIdx, [0]), bN]), srcTok], [attrInt('axis', 1)]);
    const rowsUnm = t.op('Expand', [t.unsqueeze(range(nUnm), [0]), bUnm]);
    const rowsDst = t.op('Expand', [t.unsqueeze(t.op('Add', [range(nd), nUnm]), [0]), bN]);
    const rowsSrc = t.op('Add', [dstIdx, nUnm]);
    const rowsAll = t.op('Concat', [rowsUnm, rowsDst, rowsSrc], [attrInt('axis', 1)]);
    const inv0 = t.filled(t.shape1d([{ scalar: B }, { scalar: N }]), DataType.INT64, 0);
    const inv = t.op('ScatterElements', [inv0, tokAll, rowsAll], [attrInt('axis', 1)]);
    const invRows = t.op('Add', [inv, t.op('Mul', [bRange, t.op('Add', [nUnm, nd])])]);
    return [unmRows, bIdx, srcRows, dstCol, counts, invRows, aIdx, unmIdx, srcIdx, dstIdx, nodeMax, nodeIdx];
  }, (f) => PLAN_TYPES.map((ty) => f.empty(ty)), 'Plan');

  const [unmRows, bIdx, srcRows, dstCol, counts, invRows, aIdx, unmIdx, srcIdx, dstIdx, nodeMax, nodeIdx] = outs as [
    string, string, string, string, string, string, string, string, string, string, string, string,
  ];
  return { apply, unmRows, bIdx, srcRows, dstCol, counts, invRows, aIdx, unmIdx, srcIdx, dstIdx, nodeMax, nodeIdx };
}

/** merge(x): [B, N, C] → [B, N − r, C] (Identity when the plan does not apply). */
export function emitMerge(e: ToMeEmitter, x: string, xType: DataType, p: MergePlan, label = 'Merge'): string {
  return e.ifNode(p.apply, [xType], (t) => {
    const xf = t.op('Flatten', [x], [attrInt('axis', 2)]);
    const unm = t.op('Gather', [xf, p.unmRows], [attrInt('axis', 0)]);
    let dst = t.op('Gather', [x, p.bIdx], [attrInt('axis', 1)]);
    let src = t.op('Gather', [xf, p.srcRows], [attrInt('axis', 0)]);
    if (xType !== DataType.FLOAT) {
      // onnxruntime's CPU provider adds with a reduction in float32 only.
      dst = t.cast(dst, DataType.FLOAT);
      src = t.cast(src, DataType.FLOAT);
    }
    // [B, nd, C] += src [B, r, C] at the destinations, in source order (see the counts above)
    const idx = t.op('Expand', [p.dstCol, t.op('Shape', [src])]);
    const summed = t.op('ScatterElements', [dst, idx, src], [attrInt('axis', 1), attrString('reduction', 'add')]);
    let mean = t.op('Div', [summed, p.counts]);
    if (xType !== DataType.FLOAT) mean = t.cast(mean, xType);
    return [t.op('Concat', [unm, mean], [attrInt('axis', 1)])];
  }, (f) => [f.op('Identity', [x])], label)[0]!;
}

/** unmerge(y): [B, N − r, C] → [B, N, C] (Identity when the plan does not apply). */
export function emitUnmerge(e: ToMeEmitter, y: string, yType: DataType, p: MergePlan, label = 'Unmerge'): string {
  return e.ifNode(p.apply, [yType], (t) => {
    const yf = t.op('Flatten', [y], [attrInt('axis', 2)]);
    return [t.op('Gather', [yf, p.invRows], [attrInt('axis', 0)])];
  }, (f) => [f.op('Identity', [y])], label)[0]!;
}

/**
 * A standalone model running one merge plan: inputs `metric` [B,N,Cm] and `x` [B,N,C] (float32),
 * `grid` int64 [2] = (h, w) of the token grid (downsample 1), and `tome_rand_0` when `randInput`
 * is asked for; outputs `merged` = merge(x), `unmerged` = unmerge(merge(x)) and the plan's index
 * tensors (`a_idx`, `b_idx`, `unm_idx`, `src_idx`, `dst_idx`, `node_max`, `node_idx`, `apply`).
 * Used by the tests to check the subgraph against tomesd's reference vectors.
 */
export function buildMergeModel(
  names: NameAllocator,
  s: Omit<PlanSettings, 'randInput'> & { useRand: boolean },
  opset = 16,
): ModelProto {
  const e = new ToMeEmitter(names, '/tome', opset);
  const gridShape = e.op('Identity', ['grid']);
  const grid: LatentGrid = {
    H: e.op('Gather', [gridShape, e.i64(0)], [attrInt('axis', 0)]),
    W: e.op('Gather', [gridShape, e.i64(1)], [attrInt('axis', 0)]),
  };
  const plan = emitBlockPlan(e, 'metric', DataType.FLOAT, grid, { ...s, randInput: s.useRand ? 'tome_rand_0' : undefined });
  const merged = emitMerge(e, 'x', DataType.FLOAT, plan);
  const unmerged = emitUnmerge(e, merged, DataType.FLOAT, plan);
  const outs: Array<[string, string, DataType]> = [
    ['merged', merged, DataType.FLOAT], ['unmerged', unmerged, DataType.FLOAT],
    ['a_idx', plan.aIdx, DataType.INT64], ['b_idx', plan.bIdx, DataType.INT64], ['unm_idx', plan.unmIdx, DataType.INT64],
    ['src_idx', plan.srcIdx, DataType.INT64], ['dst_idx', plan.dstIdx, DataType.INT64],
    ['node_max', plan.nodeMax, DataType.FLOAT], ['node_idx', plan.nodeIdx, DataType.INT64], ['apply', plan.apply, DataType.BOOL],
  ];
  for (const [name, from] of outs) e.op('Identity', [from], [], { label: `out_${name}`, output: name });
  const vi = (name: string, elemType: DataType, dims: Array<string | number>) => ({
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  });
  const input = [vi('metric', DataType.FLOAT, ['B', 'N', 'Cm']), vi('x', DataType.FLOAT, ['B', 'N', 'C']), vi('grid', DataType.INT64, [2])];
  if (s.useRand) input.push(vi('tome_rand_0', DataType.INT64, ['hsy', 'wsx', 1]));
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: opset }],
    producerName: 'sdgen',
    graph: {
      name: 'tome_merge',
      node: e.nodes,
      initializer: [],
      input,
      output: outs.map(([name, , t]) => ({ name, type: { tensorType: { elemType: t } } })),
      valueInfo: [],
    },
  };
}
