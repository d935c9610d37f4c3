/**
 * GEGLU projection split. diffusers' feed-forward (GEGLU) projects to twice its inner width and
 * halves the result (`proj(x).chunk(2, -1)`: hidden states and gate), which torch exports as a
 * MatMul by a [C, 2h] weight, a bias Add, and two Slice nodes (or one Split) copying the halves
 * out of the [..., 2h] product. This rewrite gives each half its own MatMul and bias Add, taking
 * the weight's and the bias's halves with Slice nodes on the constants (onnxruntime folds them
 * when it optimizes the graph), so the full product and the two copies are never made. The
 * products are the same dot products: the outputs equal the original up to the GEMM's blocking
 * (in practice bit-identical on onnxruntime's CPU kernels). Pure graph rewrite, no I/O.
 *
 * Recognized for any float type, structurally (names are never relied on):
 *   y = Add(MatMul(x, W [C, 2h]), b [2h])   (either Add operand order; or no bias)
 *   halves = Slice(y, [0], [h], [-1]) and Slice(y, [h], [≥2h], [-1])   (starts/ends constant or
 *            torch's Shape → Gather → Add → Div → Mul arithmetic, evaluated symbolically)
 *          | Split(y, [h, h], axis = -1)
 * and nothing else uses y or the MatMul's product.
 */
import { getAttr, getInt, getInts, subgraphsOf } from '../onnx/attributes.js';
import { NodeEmitter, sharedInitializers } from '../onnx/emitter.js';
import { GraphIndex, NameAllocator, getValueInfoShape, replaceNodes } from '../onnx/graph.js';
import { int64Tensor } from '../onnx/tensor.js';
import type { ModelProto, NodeProto } from '../onnx/types.js';
import { ShapeExprs } from './shape-expr.js';

export interface GegluSplitResult {
  /** projections split in two */
  count: number;
}

const isStd = (n: NodeProto | undefined): n is NodeProto => n !== undefined && (n.domain ?? '') === '';

/** Splits every GEGLU projection of the model's main graph (see the file comment). */
export function splitGeglu(model: ModelProto): GegluSplitResult {
  const graph = model.graph;
  if (!graph) return { count: 0 };
  const idx = new GraphIndex(graph);
  const se = new ShapeExprs(idx);
  const names = new NameAllocator(graph);
  const rankOf = (t: string): number | undefined => getValueInfoShape(graph, t)?.length;
  const shared = sharedInitializers(graph, names, 'geglu/');
  const ints = (v: number[]): string => shared(v.join('_'), (name) => int64Tensor(name, v));

  let count = 0;
  for (const mm of [...idx.nodesByOp('MatMul')]) {
    if (mm.input.length !== 2) continue;
    const w = se.constTensor(mm.input[1]!);
    if (!w || w.dims.length !== 2) continue;
    const width = Number(w.dims[1]);
    if (width < 2 || width % 2 !== 0) continue;
    const h = width / 2;
    const prod = mm.output[0]!;
    // optional bias Add
    let y = prod;
    let add: NodeProto | undefined;
    let bias: string | undefined;
    const users = idx.consumers(prod);
    if (users.length === 1 && isStd(users[0]) && users[0].opType === 'Add' && users[0].input.length === 2 && !idx.isGraphOutput(prod)) {
      const other = users[0].input[0] === prod ? users[0].input[1]! : users[0].input[0]!;
      const b = se.constTensor(other);
      if (b && b.dims.length === 1 && Number(b.dims[0]) === width) {
        add = users[0];
        bias = other;
        y = add.output[0]!;
      }
    }
    if (idx.isGraphOutput(y) || (add === undefined && idx.isGraphOutput(prod))) continue;
    const rank = rankOf(y) ?? rankOf(mm.input[0]!);
    const lastAxis = (a: number): boolean => a === -1 || (rank !== undefined && a === rank - 1);
    const halves = halvesOf(y, idx, se, rankOf, width, lastAxis);
    if (!halves) continue;

    const e = new NodeEmitter(names, (mm.name || prod).replace(/\/MatMul$/, ''));
    const half = (k: 0 | 1, out: string): void => {
      const tag = k === 0 ? 'hidden' : 'gate';
      const wk = e.op('Slice', [mm.input[1]!, ints([k * h]), ints([(k + 1) * h]), ints([1])], [], { label: `geglu_${tag}_weight` });
      if (bias === undefined) {
        e.op('MatMul', [mm.input[0]!, wk], [], { label: `geglu_${tag}_MatMul`, output: out });
        return;
      }
      const bk = e.op('Slice', [bias, ints([k * h]), ints([(k + 1) * h]), ints([0])], [], { label: `geglu_${tag}_bias` });
      const p = e.op('MatMul', [mm.input[0]!, wk], [], { label: `geglu_${tag}_MatMul` });
      e.op('Add', [p, bk], [], { label: `geglu_${tag}_Add`, output: out });
    };
    half(0, halves.outputs[0]);
    half(1, halves.outputs[1]);
    const removed = [mm, ...(add ? [add] : []), ...halves.nodes];
    // Constant nodes that fed only the removed nodes (torch's bound arithmetic) go with them
    const constants = new Set(removed.flatMap((n) => n.input.map((i) => idx.producer(i))).filter((p): p is NodeProto => isStd(p) && p.opType === 'Constant'));
    replaceNodes(graph, removed, e.nodes);
    idx.refresh();
    const dead = [...constants].filter((c) => graph.node.includes(c) && c.output.every((o) => idx.consumers(o).length === 0 && !idx.isGraphOutput(o)));
    if (dead.length > 0) {
      replaceNodes(graph, dead, []);
      idx.refresh();
    }
    count++;
  }
  return { count };
}

/**
 * The two nodes that copy the halves [0, h) and [h, 2h) of `y`'s last axis, and their outputs
 * (hidden first), or undefined when `y` is used any other way.
 */
function halvesOf(
  y: string,
  idx: GraphIndex,
  se: ShapeExprs,
  rankOf: (t: string) => number | undefined,
  width: number,
  lastAxis: (a: number) => boolean,
): { nodes: NodeProto[]; outputs: [string, string] } | undefined {
  const h = width / 2;
  const users = idx.consumers(y);
  if (users.length === 1 && isStd(users[0]) && users[0].opType === 'Split') {
    const s = users[0];
    if (s.output.length !== 2 || s.output.some((o) => o === '') || !lastAxis(Number(getInt(s, 'axis', 0)))) return undefined;
    if (s.input.length > 1 && s.input[1]) {
      const sizes = se.constInts(s.input[1]);
      if (!sizes || sizes.length !== 2 || sizes[0] !== h || sizes[1] !== h) return undefined;
    } else if (getAttr(s, 'split')) {
      const sizes = getInts(s, 'split').map(Number);
      if (sizes.length !== 2 || sizes[0] !== h || sizes[1] !== h) return undefined;
    }
    return { nodes: [s], outputs: [s.output[0]!, s.output[1]!] };
  }
  // two Slices, plus torch's Shape(y) arithmetic computing their bounds (dead once they go)
  const slices = users.filter((u) => isStd(u) && u.opType === 'Slice' && u.input[0] === y && u.input.length >= 3);
  const shapes = users.filter((u) => isStd(u) && u.opType === 'Shape' && u.input[0] === y);
  if (slices.length !== 2 || slices.length + shapes.length !== users.length) return undefined;
  const arithmetic = deadWith(shapes, slices, idx);
  if (!arithmetic) return undefined;
  const range = (s: NodeProto): [number, number] | undefined => {
    if (s.input.length > 3 && s.input[3]) {
      const axes = se.constInts(s.input[3]);
      if (!axes || axes.length !== 1 || !lastAxis(axes[0]!)) return undefined;
    } else {
      return undefined; // default axes: the first axis
    }
    if (s.input.length > 4 && s.input[4]) {
      const steps = se.constInts(s.input[4]);
      if (!steps || steps.length !== 1 || steps[0] !== 1) return undefined;
    }
    const value = (t: string): number | undefined => {
      const e = se.scalar(t, rankOf);
      return e.k === 'const' ? e.v : undefined;
    };
    const clamp = (v: number): number => Math.min(Math.max(v < 0 ? v + width : v, 0), width);
    const start = value(s.input[1]!);
    const end = value(s.input[2]!);
    return start === undefined || end === undefined ? undefined : [clamp(start), clamp(end)];
  };
  const r = slices.map(range);
  const is = (x: [number, number] | undefined, a: number, b: number): boolean => x !== undefined && x[0] === a && x[1] === b;
  const [s0, s1] = slices as [NodeProto, NodeProto];
  const nodes = [s0, s1, ...arithmetic];
  if (is(r[0], 0, h) && is(r[1], h, width)) return { nodes, outputs: [s0.output[0]!, s1.output[0]!] };
  if (is(r[1], 0, h) && is(r[0], h, width)) return { nodes, outputs: [s1.output[0]!, s0.output[0]!] };
  return undefined;
}

/**
 * The nodes computed from `roots` (Shape nodes of the product) when everything they compute
 * ends in the `sinks` (the Slices' bound inputs), so that removing the sinks leaves them dead;
 * undefined when any of it is used elsewhere.
 */
function deadWith(roots: NodeProto[], sinks: NodeProto[], idx: GraphIndex): NodeProto[] | undefined {
  const found = new Set<NodeProto>(roots);
  const queue = [...roots];
  const sinkSet = new Set(sinks);
  while (queue.length > 0) {
    const n = queue.pop()!;
    for (const o of n.output) {
      if (o === '') continue;
      if (idx.isGraphOutput(o)) return undefined;
      for (const u of idx.consumers(o)) {
        if (sinkSet.has(u)) {
          if (u.input[0] === o) return undefined; // data, not a bound
          continue;
        }
        if (!isStd(u) || subgraphsOf(u).length > 0) return undefined;
        if (!found.has(u)) {
          found.add(u);
          queue.push(u);
        }
      }
    }
  }
  return found.size > 64 ? undefined : [...found];
}
