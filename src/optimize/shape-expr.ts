/**
 * Symbolic evaluation of the small integer "shape arithmetic" that torch.onnx.export emits
 * around reshapes (Shape → Gather → Div/Mul → Cast → Unsqueeze → Concat), so that a rewrite can
 * prove what a dynamic Reshape does without running the graph. Pure logic over a GraphIndex.
 *
 * An expression is a constant, "dimension `axis` of tensor `t`", or such a dimension multiplied
 * or (integer-)divided by a constant. Dimensions are normalized through ops that keep them
 * (a MatMul by a 2-D weight keeps every dim but the last, whose size is the weight's; a bias
 * Add keeps them all), so that dims of a projection and of its input compare equal.
 */
import { getAttr } from '../onnx/attributes.js';
import type { GraphIndex } from '../onnx/graph.js';
import { tensorInts, tensorValues, tensorFloats, isExternal } from '../onnx/tensor.js';
import { DataType, type NodeProto, type TensorProto } from '../onnx/types.js';

export type ShapeExpr =
  | { readonly k: 'const'; readonly v: number }
  | { readonly k: 'dim'; readonly t: string; readonly axis: number }
  | { readonly k: 'mul'; readonly a: ShapeExpr; readonly c: number }
  | { readonly k: 'div'; readonly a: ShapeExpr; readonly c: number }
  | { readonly k: 'unknown' };

export const UNKNOWN: ShapeExpr = { k: 'unknown' };
export const cst = (v: number): ShapeExpr => ({ k: 'const', v });

export function exprEquals(a: ShapeExpr, b: ShapeExpr): boolean {
  if (a.k === 'unknown' || b.k === 'unknown') return false;
  switch (a.k) {
    case 'const':
      return b.k === 'const' && a.v === b.v;
    case 'dim':
      return b.k === 'dim' && a.t === b.t && a.axis === b.axis;
    case 'mul':
      return b.k === 'mul' && a.c === b.c && exprEquals(a.a, b.a);
    case 'div':
      return b.k === 'div' && a.c === b.c && exprEquals(a.a, b.a);
  }
}

export const isConst = (e: ShapeExpr, v?: number): boolean => e.k === 'const' && (v === undefined || e.v === v);

export function mulExpr(a: ShapeExpr, c: number): ShapeExpr {
  if (a.k === 'unknown') return a;
  if (a.k === 'const') return cst(a.v * c);
  if (c === 1) return a;
  return { k: 'mul', a, c };
}

export function divExpr(a: ShapeExpr, c: number): ShapeExpr {
  if (a.k === 'unknown' || c === 0) return UNKNOWN;
  if (a.k === 'const') return cst(Math.trunc(a.v / c));
  if (c === 1) return a;
  // (x · c) / c = x
  if (a.k === 'mul' && a.c === c) return a.a;
  return { k: 'div', a, c };
}

const INT_TYPES = new Set<number>([DataType.INT64, DataType.INT32, DataType.INT16, DataType.INT8, DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64]);
const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.FLOAT16, DataType.DOUBLE, DataType.BFLOAT16]);

/** Reads constants (initializers and Constant nodes) and evaluates shape expressions. */
export class ShapeExprs {
  constructor(private readonly idx: GraphIndex) {}

  /** The tensor behind a constant-valued name: an initializer or a Constant node's value. */
  constTensor(name: string): TensorProto | undefined {
    const init = this.idx.initializer(name);
    if (init) return this.idx.isGraphInput(name) ? undefined : init; // an input with a default can be overridden
    const p = this.idx.producer(name);
    if (p && p.opType === 'Constant' && (p.domain ?? '') === '') {
      const a = getAttr(p, 'value');
      if (a?.t) return a.t;
    }
    return undefined;
  }

  /** Integer values of a constant (initializer, Constant node incl. value_int/value_ints). */
  constInts(name: string): number[] | undefined {
    const p = this.idx.producer(name);
    if (p && p.opType === 'Constant') {
      const vi = getAttr(p, 'value_int');
      if (vi?.i !== undefined) return [Number(vi.i)];
      const vis = getAttr(p, 'value_ints');
      if (vis?.ints) return vis.ints.map(Number);
    }
    const t = this.constTensor(name);
    if (!t || isExternal(t) || !INT_TYPES.has(t.dataType)) return undefined;
    try {
      return tensorInts(t);
    } catch {
      return undefined;
    }
  }

  /** Float values of a small float constant (scales, fill values). */
  constFloats(name: string, maxElements = 16): number[] | undefined {
    const p = this.idx.producer(name);
    if (p && p.opType === 'Constant') {
      const vf = getAttr(p, 'value_float');
      if (vf?.f !== undefined) return [vf.f];
      const vfs = getAttr(p, 'value_floats');
      if (vfs?.floats) return [...vfs.floats];
    }
    const t = this.constTensor(name);
    if (!t || isExternal(t)) return undefined;
    const count = t.dims.reduce<number>((a, b) => a * Number(b), 1);
    if (count > maxElements) return undefined;
    try {
      if (FLOAT_TYPES.has(t.dataType)) return [...tensorFloats(t)];
      if (INT_TYPES.has(t.dataType)) return tensorInts(t);
    } catch {
      return undefined;
    }
    return undefined;
  }

  /** Number of elements of a constant, or undefined when not constant. */
  constSize(name: string): number | undefined {
    const t = this.constTensor(name);
    return t ? t.dims.reduce<number>((a, b) => a * Number(b), 1) : undefined;
  }

  /**
   * Normalizes "dim `axis` of `t`" (t of rank `rank`) through ops that keep it: MatMul by a 2-D
   * constant weight, Add/Sub/Mul/Div with a constant of rank ≤ 1 (a bias or scale).
   */
  dim(t: string, axis: number, rank: number): ShapeExpr {
    return this.follow(t, axis, axis === rank - 1, rank >= 2);
  }

  /**
   * The size of `t`'s last axis for a tensor of unknown rank, when the ops above prove it
   * constant (a MatMul by a 2-D weight, a bias Add); otherwise unknown.
   */
  lastDim(t: string): ShapeExpr {
    const e = this.follow(t, -1, true, true);
    return e.k === 'const' ? e : UNKNOWN;
  }

  private follow(t: string, axis: number, isLast: boolean, rank2: boolean): ShapeExpr {
    let name = t;
    for (let guard = 0; guard < 16; guard++) {
      const p = this.idx.producer(name);
      if (!p || (p.domain ?? '') !== '') break;
      if (p.opType === 'MatMul' && p.input.length === 2) {
        const w = this.constTensor(p.input[1]!) ?? this.idx.initializer(p.input[1]!);
        if (!w || w.dims.length !== 2 || !rank2) break;
        if (isLast) return cst(Number(w.dims[1]));
        name = p.input[0]!;
        continue;
      }
      if ((p.opType === 'Add' || p.opType === 'Sub' || p.opType === 'Mul' || p.opType === 'Div') && p.input.length === 2) {
        const [a, b] = p.input as [string, string];
        const ta = this.constTensor(a) ?? this.idx.initializer(a);
        const tb = this.constTensor(b) ?? this.idx.initializer(b);
        const c = tb && !ta ? tb : ta && !tb ? ta : undefined;
        if (!c || c.dims.length > 1) break;
        const count = c.dims.reduce<number>((x, y) => x * Number(y), 1);
        // a rank-≤1 constant broadcasts along the last axis only: a valid result has its length there
        if (isLast && count > 1) return cst(count);
        name = c === tb ? a : b;
        continue;
      }
      break;
    }
    return { k: 'dim', t: name, axis };
  }

  /**
   * A scalar (or one-element) integer tensor as an expression. `rankOf` gives the rank of a
   * tensor whose Shape is gathered (needed to normalize dims); unknown ranks skip normalization.
   */
  scalar(name: string, rankOf: (t: string) => number | undefined, depth = 0): ShapeExpr {
    if (depth > 24) return UNKNOWN;
    const ints = this.constInts(name);
    if (ints) return ints.length === 1 ? cst(ints[0]!) : UNKNOWN;
    const p = this.idx.producer(name);
    if (!p || (p.domain ?? '') !== '') return UNKNOWN;
    const rec = (n: string): ShapeExpr => this.scalar(n, rankOf, depth + 1);
    switch (p.opType) {
      case 'Identity':
      case 'Unsqueeze':
      case 'Squeeze':
        return rec(p.input[0]!);
      case 'Cast': {
        const to = Number(getAttr(p, 'to')?.i ?? 0);
        return INT_TYPES.has(to) ? rec(p.input[0]!) : UNKNOWN;
      }
      case 'Gather': {
        const src = this.idx.producer(p.input[0]!);
        if (!src || src.opType !== 'Shape' || Number(getAttr(p, 'axis')?.i ?? 0) !== 0) return UNKNOWN;
        if (getAttr(src, 'start') !== undefined || getAttr(src, 'end') !== undefined) return UNKNOWN;
        const k = this.constInts(p.input[1]!);
        if (!k || k.length !== 1) return UNKNOWN;
        const t = src.input[0]!;
        const rank = rankOf(t);
        let axis = k[0]!;
        if (axis < 0) {
          if (rank === undefined) return axis === -1 ? this.lastDim(t) : UNKNOWN;
          axis += rank;
        }
        return rank === undefined ? { k: 'dim', t, axis } : this.dim(t, axis, rank);
      }
      case 'Add':
      case 'Sub': {
        const a = rec(p.input[0]!);
        const b = rec(p.input[1]!);
        if (a.k !== 'const' || b.k !== 'const') return UNKNOWN;
        return cst(p.opType === 'Add' ? a.v + b.v : a.v - b.v);
      }
      case 'Mul': {
        const a = rec(p.input[0]!);
        const b = rec(p.input[1]!);
        if (b.k === 'const') return mulExpr(a, b.v);
        if (a.k === 'const') return mulExpr(b, a.v);
        return UNKNOWN;
      }
      case 'Div': {
        const a = rec(p.input[0]!);
        const b = rec(p.input[1]!);
        return b.k === 'const' ? divExpr(a, b.v) : UNKNOWN;
      }
      default:
        return UNKNOWN;
    }
  }

  /** A 1-D shape tensor (a Reshape's second input) as a list of expressions. */
  shapeList(name: string, rankOf: (t: string) => number | undefined): ShapeExpr[] | undefined {
    const ints = this.constInts(name);
    if (ints) return ints.map(cst);
    const p = this.idx.producer(name);
    if (!p || (p.domain ?? '') !== '' || p.opType !== 'Concat') return undefined;
    const out: ShapeExpr[] = [];
    for (const part of p.input) {
      const c = this.constInts(part);
      if (c) {
        out.push(...c.map(cst));
        continue;
      }
      // a non-constant part must be one element: Unsqueeze of a scalar
      const pp = this.idx.producer(part);
      if (!pp || pp.opType !== 'Unsqueeze') return undefined;
      out.push(this.scalar(part, rankOf));
    }
    return out;
  }

  /** True when the tensor is a known all-zero value (ConstantOfShape(0), x·0 with x finite, zeros). */
  isZero(name: string, depth = 0): boolean {
    if (depth > 4) return false;
    const f = this.constFloats(name, 1 << 20);
    if (f) return f.every((v) => v === 0);
    const p = this.idx.producer(name);
    if (!p || (p.domain ?? '') !== '') return false;
    if (p.opType === 'ConstantOfShape') {
      const v = this.fillValue(p);
      return v === 0;
    }
    if (p.opType === 'Mul' && p.input.length === 2) {
      const [a, b] = p.input as [string, string];
      return (this.isZero(a, depth + 1) && this.isFinite(b)) || (this.isZero(b, depth + 1) && this.isFinite(a));
    }
    if (p.opType === 'Cast' || p.opType === 'Identity') return this.isZero(p.input[0]!, depth + 1);
    return false;
  }

  /** True when the tensor is a constant (or ConstantOfShape) with only finite values. */
  isFinite(name: string): boolean {
    const f = this.constFloats(name, 1 << 20);
    if (f) return f.every((v) => Number.isFinite(v));
    const p = this.idx.producer(name);
    if (p && p.opType === 'ConstantOfShape') {
      const v = this.fillValue(p);
      return v !== undefined && Number.isFinite(v);
    }
    return false;
  }

  private fillValue(p: NodeProto): number | undefined {
    const a = getAttr(p, 'value');
    if (!a?.t) return 0; // default fill is float 0
    try {
      const v = tensorValues(a.t);
      return v.length === 1 ? Number(FLOAT_TYPES.has(a.t.dataType) ? tensorFloats(a.t)[0] : v[0]) : undefined;
    } catch {
      return undefined;
    }
  }
}
