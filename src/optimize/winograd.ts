/**
 * Winograd convolutions: rewrites each eligible 3×3 convolution (stride 1, padding 1, no
 * dilation, one group, a constant float32 weight) into the minimal-filtering algorithm
 * F(m×m, 3×3) of Lavin & Gray ("Fast Algorithms for Convolutional Neural Networks", 2016),
 * expressed in standard ONNX ops so that every provider can run it. Pure graph rewrite, no I/O.
 *
 * For an output tile of m×m pixels the algorithm reads an α×α input tile (α = m + 2):
 *
 *   U = G · w · Gᵀ        per (out, in) channel pair, α×α       (weights: constant-folded)
 *   V = Bᵀ · d · B        per input tile and channel, α×α
 *   M[ξ] = U[ξ] · V[ξ]    for each of the α² positions ξ: one [K, C] × [C, tiles] product
 *   Y = Aᵀ · M · A        per output tile and channel, m×m
 *
 * so the multiply-adds per output pixel drop from 9·C to (α/m)²·C: 4·C for m = 2 (2.25× fewer)
 * and 2.25·C for m = 4 (4× fewer). In ONNX:
 *
 *   V  = Conv(x, Bk; group = C, kernel α×α, stride m, pads [1, 1, m, m])  → [N, C·α², th, tw]
 *        (Bk = Bᵀ⊗Bᵀ repeated per channel; the end padding m makes th = ⌈H/m⌉ for every H)
 *   V' = Transpose(Reshape(V, [N, C, α², P]), [0, 2, 1, 3])              → [N, α², C, P]
 *   M  = MatMul(U [α², K, C], V')                                          → [N, α², K, P]
 *   Y  = MatMul(Aᵀ⊗Aᵀ [m², α²], Reshape(M, [N, α², K·P])) (+ bias)        → [N, m², K, P]
 *   y  = Slice(DepthToSpace(Reshape(Y, [N, m²·K, th, tw]), m), H, W)      → [N, K, H, W]
 *
 * U is (α/3)² times the weight's size (1.8× for m = 2, 4× for m = 4), which is why the tile is
 * chosen per convolution (below). Where U comes from (`weights`):
 * - 'graph': computed in the graph from the convolution's own weight (MatMul(MatMul(G, w), Gᵀ)
 *   → Reshape → Transpose), which onnxruntime folds into a constant when it first optimizes the
 *   graph. The rewritten file adds a few small constants only, but the fold holds w, U and their
 *   intermediates at once and repeats for every graph variant, so for a large UNet it costs
 *   several times the weights' memory and tens of seconds per first load (docs/performance.md,
 *   section 5).
 * - 'initializer': a new float32 initializer [α², K, C] per (weight, tile), listed in
 *   `folds` without data; the caller fills it with {@link winogradU} (sdgen writes them to a
 *   data file shared by every variant of the model, src/optimize/conv-mode.ts). Weights that
 *   no node uses any more are dropped from the graph.
 *
 * The result equals the convolution up to float rounding (a few 1e-6 relative; the transforms
 * of m = 4 have entries up to 8, so its rounding is the larger one).
 *
 * Tile choice ('auto'): from each convolution's spatial stride relative to the model's image
 * input, found by propagating strides (Conv) and nearest-neighbour Resize scales from the
 * graph's 4-D inputs. m = 4 pays most where the feature map is large (stride ≤ 2 of the
 * latent: many tiles share each weight read); at stride 4 (16² at 512²) the 1280-channel weights
 * make m = 4's U 4× the weight for little extra gain, so m = 2; at stride ≥ 8 (8² at 512²)
 * there are too few tiles per weight and the
 * convolution is left alone, as it is on maps 8× the input or larger (a VAE decoder's image
 * level, whose tile tensors would cost more in memory than they save; its upsampler convolution
 * takes the polyphase form instead, src/optimize/polyphase.ts). An unknown stride gets m = 2.
 */
import { attrInt, attrInts, getAttr, subgraphsOf } from '../onnx/attributes.js';
import { NodeEmitter, sharedInitializers } from '../onnx/emitter.js';
import { GraphIndex, NameAllocator, replaceNodes } from '../onnx/graph.js';
import { floatTensor, int64Tensor, tensorFloats } from '../onnx/tensor.js';
import { DataType, type GraphProto, type ModelProto, type NodeProto, type TensorProto } from '../onnx/types.js';

export type WinogradTile = 2 | 4;

export interface WinogradOptions {
  /** Output tile side for every eligible convolution, or 'auto' (per convolution, see above). */
  tile?: WinogradTile | 'auto';
  /** Convolutions with fewer input or output channels stay direct (default 64). */
  minChannels?: number;
  /** Where the transformed weights U come from (see the file comment; default 'graph'). */
  weights?: 'graph' | 'initializer';
}

/** A transformed weight to compute ('initializer' mode): u = winogradU(w, K, C, m). */
export interface WinogradFold {
  /** the new initializer, [α², K, C] float32, without data */
  u: TensorProto;
  /** the convolution's weight [K, C, 3, 3] float32 */
  w: TensorProto;
  m: WinogradTile;
  K: number;
  C: number;
}

export interface WinogradResult {
  /** convolutions rewritten, by tile */
  count: number;
  byTile: Record<WinogradTile, number>;
  /** bytes the transformed weights add once onnxruntime has folded them (U replaces w) */
  extraWeightBytes: number;
  /** eligible-looking 3×3 convolutions left direct, with the reason */
  skipped: string[];
  /** 'initializer' mode: the transformed weights to compute, one per (weight, tile) */
  folds: WinogradFold[];
}

/** Transform matrices of F(m×m, 3×3) (Lavin & Gray; interpolation points 0, ±1, ±2, ∞). */
const TRANSFORMS: Record<WinogradTile, { BT: number[][]; G: number[][]; AT: number[][] }> = {
  2: {
    BT: [
      [1, 0, -1, 0],
      [0, 1, 1, 0],
      [0, -1, 1, 0],
      [0, 1, 0, -1],
    ],
    G: [
      [1, 0, 0],
      [1 / 2, 1 / 2, 1 / 2],
      [1 / 2, -1 / 2, 1 / 2],
      [0, 0, 1],
    ],
    AT: [
      [1, 1, 1, 0],
      [0, 1, -1, -1],
    ],
  },
  4: {
    BT: [
      [4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1],
    ],
    G: [
      [1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1],
    ],
    AT: [
      [1, 1, 1, 1, 1, 0],
      [0, 1, -1, 2, -2, 0],
      [0, 1, 1, 4, 4, 0],
      [0, 1, -1, 8, -8, 1],
    ],
  },
};

export function winogradTransforms(m: WinogradTile): { BT: number[][]; G: number[][]; AT: number[][] } {
  return TRANSFORMS[m];
}

/**
 * U = G·w·Gᵀ for every (out, in) channel pair of a [K, C, 3, 3] weight, laid out [α², K, C]
 * (position ξ·α + ν first, as the rewrite's MatMul wants it); computed in float64, rounded once.
 */
export function winogradU(w: Float32Array, K: number, C: number, m: WinogradTile): Float32Array {
  const { G } = TRANSFORMS[m];
  const a = m + 2;
  const kc = K * C;
  if (w.length !== kc * 9) throw new Error(`winogradU: weight has ${w.length} values, expected ${kc * 9}`);
  const u = new Float32Array(a * a * kc);
  const gw = new Float64Array(a * 3);
  for (let p = 0; p < kc; p++) {
    const o = p * 9;
    for (let xi = 0; xi < a; xi++) {
      const g = G[xi]!;
      for (let j = 0; j < 3; j++) gw[xi * 3 + j] = g[0]! * w[o + j]! + g[1]! * w[o + 3 + j]! + g[2]! * w[o + 6 + j]!;
    }
    for (let xi = 0; xi < a; xi++) {
      const r0 = gw[xi * 3]!, r1 = gw[xi * 3 + 1]!, r2 = gw[xi * 3 + 2]!;
      for (let nu = 0; nu < a; nu++) {
        const g = G[nu]!;
        u[(xi * a + nu) * kc + p] = r0 * g[0]! + r1 * g[1]! + r2 * g[2]!;
      }
    }
  }
  return u;
}

/**
 * The tile 'auto' gives a convolution at `stride` (its feature map is the image input's size
 * divided by this; undefined when unknown). Undefined result: leave it direct.
 *
 * - Maps upsampled 8× or more from the input (a VAE decoder's image-resolution level) stay
 *   direct: their tile tensors (2.25× a 128–256-channel full-size map, twice) dominate the
 *   decode's memory, and a pipeline decodes once per run, so that memory is fresh and touching
 *   it for the first time costs more than the smaller GEMMs save; direct, this level roughly
 *   halves the decode's peak memory and its first decode is faster too (docs/performance.md,
 *   section 5).
 * - From 4× the input down to ½ of it: m = 4. ¼ of it: m = 2 (m = 4's U is 4× the
 *   1280-channel weights, for few tiles). Smaller maps stay direct: too few tiles per weight
 *   read.
 */
export function autoTile(stride: number | undefined): WinogradTile | undefined {
  if (stride === undefined) return 2;
  if (stride < 0.25) return undefined;
  if (stride <= 2) return 4;
  if (stride <= 4) return 2;
  return undefined;
}

/** The constant float values of a tensor name (initializer or Constant node), if small and known. */
export function constFloats(idx: GraphIndex, name: string): number[] | undefined {
  const init = idx.initializer(name);
  let t: TensorProto | undefined = init;
  if (!t) {
    const p = idx.producer(name);
    if (p?.opType === 'Constant') t = getAttr(p, 'value')?.t;
  }
  if (!t || t.dataType !== DataType.FLOAT || (t.externalData?.length ?? 0) > 0) return undefined;
  return [...tensorFloats(t)];
}

/** ops whose output describes a tensor's shape, not its values */
const SHAPE_OPS = new Set(['Shape', 'Size']);

/**
 * Spatial stride of every 4-D float tensor derived from the graph's 4-D inputs: Conv multiplies
 * by its stride, a Resize with constant scales divides by the scale; other ops pass their first
 * known input's stride on (element-wise ops, norms, Concat of skip connections). A Resize with
 * computed sizes makes its output unknown; Shape and Size outputs, and what only they feed, have
 * none.
 */
export function spatialStrides(idx: GraphIndex): Map<string, number | undefined> {
  const graph = idx.graph;
  const stride = new Map<string, number | undefined>();
  for (const i of graph.input) {
    const dims = i.type?.tensorType?.shape?.dim ?? [];
    if (dims.length === 4 && !idx.initializer(i.name)) stride.set(i.name, 1);
  }
  for (const n of graph.node) {
    // a tensor's shape is not a feature map: what is computed from shapes (the time embedding
    // broadcast to the batch, ToMe's grid sizes from the input latents) carries no stride, or an
    // Add of such a value with a feature map would take the wrong one
    if (SHAPE_OPS.has(n.opType)) continue;
    const known = n.input.find((i) => i !== '' && stride.has(i));
    if (known === undefined) continue;
    let s = stride.get(known);
    if (s !== undefined && n.opType === 'Conv') {
      const st = getAttr(n, 'strides')?.ints?.map(Number) ?? [1, 1];
      s = st[0] === st[1] ? s * st[0]! : undefined;
    } else if (s !== undefined && (n.opType === 'Resize' || n.opType === 'Upsample')) {
      // scales: Resize-11+ (X, roi, scales, sizes); Resize-10 and Upsample (X, scales)
      const at = n.opType === 'Resize' && n.input.length > 2 ? 2 : 1;
      const scales = n.input[at] ? constFloats(idx, n.input[at]) : undefined;
      s = scales && scales.length === 4 && scales[2] === scales[3] && scales[2]! > 0 ? s / scales[2]! : undefined;
    } else if (s !== undefined && (n.opType === 'MaxPool' || n.opType === 'AveragePool')) {
      const st = getAttr(n, 'strides')?.ints?.map(Number) ?? [1, 1];
      s = st[0] === st[1] ? s * st[0]! : undefined;
    }
    for (const o of n.output) if (o !== '') stride.set(o, s);
  }
  return stride;
}

/**
 * Why a Conv node is not a plain 3×3 convolution (stride 1, padding 1, one group, constant float32
 * weight and bias, at least `minChannels` in and out; undefined: it is one), with its weight's dims.
 */
export function ineligible(idx: GraphIndex, n: NodeProto, minChannels: number): { reason?: string; K: number; C: number } {
  const w = idx.initializer(n.input[1] ?? '');
  const none = { K: 0, C: 0 };
  if (!w) return { reason: 'weight is not a constant', ...none };
  const d = w.dims.map(Number);
  if (d.length !== 4 || d[2] !== 3 || d[3] !== 3) return { reason: 'not 3×3', ...none };
  const [K, C] = [d[0]!, d[1]!];
  if (w.dataType !== DataType.FLOAT) return { reason: 'not float32', K, C };
  const ints = (name: string, dflt: number[]) => getAttr(n, name)?.ints?.map(Number) ?? dflt;
  if (Number(getAttr(n, 'group')?.i ?? 1) !== 1) return { reason: 'grouped', K, C };
  if (ints('strides', [1, 1]).some((v) => v !== 1)) return { reason: 'strided', K, C };
  if (ints('dilations', [1, 1]).some((v) => v !== 1)) return { reason: 'dilated', K, C };
  const autoPad = getAttr(n, 'auto_pad')?.s;
  if (autoPad && autoPad.length > 0 && new TextDecoder().decode(autoPad) !== 'NOTSET') return { reason: 'auto_pad', K, C };
  if (ints('pads', [0, 0, 0, 0]).some((v) => v !== 1)) return { reason: 'padding is not 1', K, C };
  const bias = n.input[2];
  if (bias && !idx.initializer(bias)) return { reason: 'bias is not a constant', K, C };
  if (K < minChannels || C < minChannels) return { reason: `fewer than ${minChannels} channels`, K, C };
  return { K, C };
}

/**
 * Rewrites every eligible 3×3 convolution of `model` (in place) into its Winograd form
 * (see the file comment). Float16 models and convolutions are left alone.
 */
export function winogradConvs(model: ModelProto, opts: WinogradOptions = {}): WinogradResult {
  const result: WinogradResult = { count: 0, byTile: { 2: 0, 4: 0 }, extraWeightBytes: 0, skipped: [], folds: [] };
  const asInitializer = opts.weights === 'initializer';
  const folded = new Map<string, string>(); // (weight, tile) → U's name
  const replacedWeights = new Set<string>();
  const graph = model.graph;
  if (!graph) return result;
  const minChannels = opts.minChannels ?? 64;
  const idx = new GraphIndex(graph);
  const strides = spatialStrides(idx);
  const names = new NameAllocator(graph);
  const constant = sharedInitializers(graph, names, 'winograd/');
  const ints64 = (key: string, v: number[]) => constant(key, (name) => int64Tensor(name, v));
  // the input transform kernels per (tile, channels): one Tile of a shared base, folded by onnxruntime
  const inputKernels = new Map<string, string>();

  for (const conv of idx.nodesByOp('Conv')) {
    const label = conv.name || conv.output[0] || 'Conv';
    const e = ineligible(idx, conv, minChannels);
    if (e.reason !== undefined) {
      if (e.reason !== 'not 3×3' && e.reason !== 'weight is not a constant') result.skipped.push(`${label}: ${e.reason}`);
      continue;
    }
    const { K, C } = e;
    const m = opts.tile === undefined || opts.tile === 'auto' ? autoTile(strides.get(conv.input[0]!)) : opts.tile;
    if (m === undefined) {
      const s = strides.get(conv.input[0]!)!;
      result.skipped.push(`${label}: ${s < 1 ? `feature map ${1 / s}× the input: its tile tensors would cost more memory than they save time` : `feature map too small for its weights (stride ${s})`}`);
      continue;
    }
    const { BT, G, AT } = TRANSFORMS[m];
    const a = m + 2;
    const a2 = a * a;
    const em = new NodeEmitter(names, conv.name ? `${conv.name}/winograd` : names.alloc('winograd'));
    const x = conv.input[0]!;
    const w = conv.input[1]!;
    const y = conv.output[0]!;

    // U = Gwgᵀ → [α², K, C]
    let u: string;
    if (asInitializer) {
      const fk = `${w}\u0000${m}`;
      u = folded.get(fk) ?? '';
      if (!u) {
        u = names.alloc(`${w}/winograd_U${m}`);
        const ut: TensorProto = { name: u, dims: [a2, K, C], dataType: DataType.FLOAT };
        graph.initializer.push(ut);
        result.folds.push({ u: ut, w: idx.initializer(w)!, m, K, C });
        folded.set(fk, u);
      }
      replacedWeights.add(w);
    } else {
      const g = constant(`G${m}`, (name) => floatTensor(name, G.flat(), [a, 3]));
      const gt = constant(`GT${m}`, (name) => floatTensor(name, [0, 1, 2].flatMap((j) => G.map((r) => r[j]!)), [3, a]));
      u = em.op('Transpose', [em.op('Reshape', [em.op('MatMul', [em.op('MatMul', [g, w]), gt]), ints64(`shape_${K}_${C}_${a2}`, [K, C, a2])])], [attrInts('perm', [2, 0, 1])]);
    }

    // input transform kernel [C·α², 1, α, α]: Bᵀ ⊗ Bᵀ for every channel
    let bk = inputKernels.get(`${m}/${C}`);
    if (bk === undefined) {
      const base: number[] = [];
      for (let xi = 0; xi < a; xi++) for (let nu = 0; nu < a; nu++) for (let i = 0; i < a; i++) for (let j = 0; j < a; j++) base.push(BT[xi]![i]! * BT[nu]![j]!);
      const baseName = constant(`B${m}`, (name) => floatTensor(name, base, [a2, 1, a, a]));
      bk = em.op('Tile', [baseName, ints64(`repeat_${C}`, [C, 1, 1, 1])]);
      inputKernels.set(`${m}/${C}`, bk);
    }
    const tiles = em.op('Conv', [x, bk], [attrInts('kernel_shape', [a, a]), attrInts('strides', [m, m]), attrInts('pads', [1, 1, m, m]), attrInt('group', C)]);
    const vt = em.op('Transpose', [em.op('Reshape', [tiles, ints64(`shape_0_${C}_${a2}_-1`, [0, C, a2, -1])])], [attrInts('perm', [0, 2, 1, 3])]);
    const prod = em.op('MatMul', [u, vt]);
    const at = constant(`AT${m}`, (name) => {
      const vals: number[] = [];
      for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) for (let xi = 0; xi < a; xi++) for (let nu = 0; nu < a; nu++) vals.push(AT[i]![xi]! * AT[j]![nu]!);
      return floatTensor(name, vals, [m * m, a2]);
    });
    let out = em.op('MatMul', [at, em.op('Reshape', [prod, ints64(`shape_0_${a2}_-1`, [0, a2, -1])])]);
    const bias = conv.input[2];
    if (bias) {
      out = em.op('Add', [em.op('Reshape', [out, ints64(`shape_0_${m * m}_${K}_-1`, [0, m * m, K, -1])]), em.op('Reshape', [bias, ints64(`shape_${K}_1`, [K, 1])])]);
    }
    const hw = (t: string) => em.op('Slice', [em.op('Shape', [t]), ints64('2', [2]), ints64('4', [4])]);
    const outShape = em.op('Concat', [ints64(`shape_0_${m * m * K}`, [0, m * m * K]), hw(tiles)], [attrInt('axis', 0)]);
    const full = em.op('DepthToSpace', [em.op('Reshape', [out, outShape])], [attrInt('blocksize', m)]);
    em.op('Slice', [full, ints64('0_0', [0, 0]), hw(x), ints64('2_3', [2, 3])], [], { output: y });

    replaceNodes(graph, [conv], em.nodes);
    result.count++;
    result.byTile[m]++;
    result.extraWeightBytes += K * C * (a2 - 9) * 4;
  }
  if (replacedWeights.size > 0) {
    // weights only the rewritten convolutions used: gone from the graph (U replaces them)
    const used = new Set<string>();
    const visit = (g: GraphProto): void => {
      for (const n of g.node) {
        for (const i of n.input) used.add(i);
        for (const sg of subgraphsOf(n)) visit(sg);
      }
      for (const o of g.output) used.add(o.name);
    };
    visit(graph);
    const dropped = new Set([...replacedWeights].filter((n) => !used.has(n)));
    graph.initializer = graph.initializer.filter((t) => !dropped.has(t.name ?? ''));
    // IR < 4 lists initializers among the inputs too
    graph.input = graph.input.filter((i) => !dropped.has(i.name));
  }
  return result;
}
