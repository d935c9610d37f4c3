/**
 * Fused attention: rewrites each decomposed scaled-dot-product attention of a torch-exported
 * diffusers model (UNet transformer blocks, VAE mid-block attention) into one onnxruntime
 * `com.microsoft` MultiHeadAttention node. Pure graph rewrite, no I/O.
 *
 * Recognized (structurally; node names are never relied on), for each Softmax over the last axis:
 *
 *   q, k, v : [B, S|L, hidden]  (any producer: projections, ToMe-merged tokens, ...)
 *   split   : Reshape [B, S, H, d] → Transpose(0,2,1,3)                       ("4-D" heads)
 *             optionally → Reshape [B·H, S, d]                                  ("3-D" heads)
 *   Kᵀ      : Transpose(0,2,1) of 3-D K heads, Transpose(0,1,3,2) of 4-D K heads, or
 *             Transpose(0,2,3,1) straight from K's [B, L, H, d] reshape
 *   scores  : MatMul(Q, Kᵀ) with constant scalar Mul/Div factors on Q, on Kᵀ and/or on the
 *             product (sqrt-scales split over Q and K are multiplied together), optionally
 *             + a known-zero term (torch's baddbmm with beta = 0 exports ConstantOfShape·0)
 *   probs   : [Cast] → Softmax(axis = last) → [Cast]
 *   context : MatMul(probs, V) → (3-D: Reshape [B, H, S, dv]) → Transpose(0,2,1,3)
 *             → Reshape [B, S, H·dv]
 *
 * Every Reshape is checked symbolically (see shape-expr.ts): its target shape must provably be
 * the head split / merge above, else the attention is left as it is and reported in `skipped`.
 * The replaced nodes and the shape arithmetic only they used are removed; the fused node
 * produces the tensor the final Reshape produced, so the rest of the graph is untouched.
 *
 * onnxruntime's CPU MultiHeadAttention is float32 only: float16 attention is skipped unless
 * `allowFloat16` (for GPU providers) is set.
 */
import { getAttr, attrFloat, attrInt } from '../onnx/attributes.js';
import { NodeEmitter } from '../onnx/emitter.js';
import { GraphIndex, NameAllocator, ensureOpset, getValueInfoShape, nodeUses, replaceNodes } from '../onnx/graph.js';
import { DataType, type GraphProto, type ModelProto, type NodeProto } from '../onnx/types.js';
import { ShapeExprs, divExpr, exprEquals, isConst, mulExpr, type ShapeExpr } from './shape-expr.js';

export const MS_DOMAIN = 'com.microsoft';

export interface FuseAttentionOptions {
  /** Fuse float16 attention too (CUDA / DirectML). onnxruntime's CPU kernel is float32 only. */
  allowFloat16?: boolean;
}

export interface FuseAttentionResult {
  /** Number of attentions replaced by a MultiHeadAttention node. */
  count: number;
  /** One line per Softmax that looked like attention but was left unchanged, with the reason. */
  skipped: string[];
}

type Layout = '3d' | '4d';

interface HeadSplit {
  /** the [B, S, hidden] tensor that is split into heads */
  src: string;
  heads: number;
  layout: Layout;
  /** batch, sequence and head-size expressions of the split */
  b: ShapeExpr;
  s: ShapeExpr;
  d: ShapeExpr;
  nodes: NodeProto[];
}

interface Match {
  q: string;
  k: string;
  v: string;
  heads: number;
  scale: number;
  /** nodes of the decomposed attention (the fused node replaces them) */
  core: NodeProto[];
  /** tensor the fused node produces (the final Reshape's output) */
  output: string;
  /** node whose name prefix names the fused node */
  anchor: NodeProto;
}

class NoMatch extends Error {}
const fail = (why: string): never => {
  throw new NoMatch(why);
};

const isStd = (n: NodeProto | undefined): n is NodeProto => n !== undefined && (n.domain ?? '') === '';

function perm(n: NodeProto): number[] | undefined {
  const a = getAttr(n, 'perm');
  return a?.ints?.map(Number);
}
const samePerm = (p: number[] | undefined, want: readonly number[]): boolean =>
  p !== undefined && p.length === want.length && p.every((v, i) => v === want[i]);

/** Pattern matcher over one graph state. Rebuilt after each rewrite. */
class AttentionMatcher {
  readonly idx: GraphIndex;
  readonly se: ShapeExprs;
  private readonly ranks = new Map<string, number>();

  constructor(readonly graph: GraphProto) {
    this.idx = new GraphIndex(graph);
    this.se = new ShapeExprs(this.idx);
  }

  private rankOf = (t: string): number | undefined => this.ranks.get(t) ?? getValueInfoShape(this.graph, t)?.length;

  private producer(t: string, op: string): NodeProto {
    const p = this.idx.producer(t);
    if (!isStd(p) || p.opType !== op) fail(`expected ${op} producing ${t}, found ${p ? p.opType : 'graph input/initializer'}`);
    return p!;
  }

  private shape(n: NodeProto, rank: number): ShapeExpr[] {
    const s = this.se.shapeList(n.input[1]!, this.rankOf);
    if (!s || s.length !== rank) fail(`cannot read the target shape of Reshape ${n.name ?? ''}`);
    if (Number(getAttr(n, 'allowzero')?.i ?? 0) !== 0 && s!.some((e) => isConst(e, 0))) fail('Reshape with allowzero');
    return s!;
  }

  /** Strips constant scalar Mul/Div factors; returns the tensor below them and the product. */
  private stripScale(t: string, nodes: NodeProto[]): { t: string; factor: number } {
    let factor = 1;
    for (let guard = 0; guard < 8; guard++) {
      const p = this.idx.producer(t);
      if (!isStd(p) || (p.opType !== 'Mul' && p.opType !== 'Div') || p.input.length !== 2) break;
      const [a, b] = p.input as [string, string];
      const cb = this.scalarConst(b);
      const ca = p.opType === 'Mul' ? this.scalarConst(a) : undefined;
      if (cb !== undefined) {
        factor = p.opType === 'Mul' ? factor * cb : factor / cb;
        t = a;
      } else if (ca !== undefined) {
        factor *= ca;
        t = b;
      } else break;
      nodes.push(p);
    }
    return { t, factor };
  }

  private scalarConst(t: string): number | undefined {
    if (this.se.constSize(t) !== 1 && this.idx.producer(t)?.opType !== 'Constant') return undefined;
    const f = this.se.constFloats(t, 1);
    return f && f.length === 1 && Number.isFinite(f[0]!) ? f[0] : undefined;
  }

  /** Skips Cast nodes to a float type (the upcast around softmax). */
  private skipCastsUp(t: string, nodes: NodeProto[]): string {
    for (let guard = 0; guard < 4; guard++) {
      const p = this.idx.producer(t);
      if (!isStd(p) || p.opType !== 'Cast') break;
      const to = Number(getAttr(p, 'to')?.i ?? 0);
      if (to !== DataType.FLOAT && to !== DataType.FLOAT16) break;
      nodes.push(p);
      t = p.input[0]!;
    }
    return t;
  }

  /**
   * The one consumer of `t` that carries the data on (Shape nodes reading only its size are
   * ignored here; the dead-code check proves they go away with the attention).
   */
  private soleConsumer(t: string): NodeProto {
    if (this.idx.isGraphOutput(t)) fail(`${t} is a graph output`);
    const c = this.idx.consumers(t).filter((n) => !(isStd(n) && n.opType === 'Shape'));
    if (c.length !== 1) fail(`${t} has ${c.length} consumers`);
    return c[0]!;
  }

  /**
   * `x` is [B, S, hidden] split into heads: Reshape [B, S, H, d] then Transpose `lastPerm`.
   * Returns the split with its expressions (checked: the reshape is the head split).
   */
  private split4(x: string, lastPerm: readonly number[], nodes: NodeProto[]): HeadSplit {
    const tr = this.producer(x, 'Transpose');
    if (!samePerm(perm(tr), lastPerm)) fail(`Transpose ${tr.name ?? ''} has perm [${perm(tr)?.join(',')}]`);
    const rs = this.producer(tr.input[0]!, 'Reshape');
    const src = rs.input[0]!;
    this.ranks.set(src, 3);
    const [e0, e1, e2, e3] = this.shape(rs, 4) as [ShapeExpr, ShapeExpr, ShapeExpr, ShapeExpr];
    const bDim = this.se.dim(src, 0, 3);
    const sDim = this.se.dim(src, 1, 3);
    const hidden = this.se.dim(src, 2, 3);
    if (e2.k !== 'const' || e2.v <= 0) fail(`head split ${rs.name ?? ''}: the head count is not a constant`);
    const heads = (e2 as { v: number }).v;
    const dCanon = divExpr(hidden, heads);
    const bOk = isConst(e0, 0) || exprEquals(e0, bDim);
    const sOk = isConst(e1, 0) || exprEquals(e1, sDim);
    const dOk = exprEquals(e3, dCanon) || (e3.k === 'const' && e3.v > 0 && (hidden.k !== 'const' || e3.v * heads === hidden.v));
    if (!bOk) fail(`head split ${rs.name ?? ''}: first dim is not the batch`);
    // element count: with B and heads fixed, one of S / d may be inferred (-1) if the other is proven
    if (!((sOk && (dOk || isConst(e3, -1))) || (isConst(e1, -1) && dOk && (exprEquals(e3, dCanon) || hidden.k === 'const')))) {
      fail(`head split ${rs.name ?? ''}: target shape is not [B, S, heads, hidden/heads]`);
    }
    nodes.push(tr, rs);
    return { src, heads, layout: '4d', b: bDim, s: sDim, d: e3.k === 'const' && e3.v > 0 ? e3 : dCanon, nodes };
  }

  /** Heads of `x`: 4-D ([B, H, S, d]) or 3-D ([B·H, S, d] via one more Reshape). */
  private heads(x: string, nodes: NodeProto[]): HeadSplit {
    const p = this.idx.producer(x);
    if (isStd(p) && p.opType === 'Reshape') {
      const sp = this.split4(p.input[0]!, [0, 2, 1, 3], nodes);
      const [a, b, c] = this.shape(p, 3) as [ShapeExpr, ShapeExpr, ShapeExpr];
      const bh = mulExpr(sp.b, sp.heads);
      const sOk = exprEquals(b, sp.s);
      const dOk = exprEquals(c, sp.d) || (c.k === 'const' && sp.d.k === 'const' && c.v === sp.d.v);
      const aOk = exprEquals(a, bh);
      if (!((sOk && dOk) || (aOk && sOk && isConst(c, -1)) || (aOk && dOk && isConst(b, -1)))) {
        fail(`head merge ${p.name ?? ''}: target shape is not [B·heads, S, d]`);
      }
      nodes.push(p);
      return { ...sp, layout: '3d' };
    }
    return this.split4(x, [0, 2, 1, 3], nodes);
  }

  /** Kᵀ: transposed K heads, in either layout; `factor` collects a scale met between the two. */
  private keyHeadsT(x: string, layout: Layout, nodes: NodeProto[], factor: { v: number }): HeadSplit {
    const tr = this.producer(x, 'Transpose');
    const pm = perm(tr);
    if (layout === '3d') {
      if (!samePerm(pm, [0, 2, 1])) fail(`K transpose ${tr.name ?? ''} has perm [${pm?.join(',')}]`);
      nodes.push(tr);
      const h = this.heads(tr.input[0]!, nodes);
      if (h.layout !== '3d') fail('K heads are 4-D but Q heads are 3-D');
      return h;
    }
    if (samePerm(pm, [0, 2, 3, 1])) return this.split4(x, [0, 2, 3, 1], nodes);
    if (!samePerm(pm, [0, 1, 3, 2])) fail(`K transpose ${tr.name ?? ''} has perm [${pm?.join(',')}]`);
    nodes.push(tr);
    const inner = this.stripScale(tr.input[0]!, nodes);
    factor.v *= inner.factor;
    return this.split4(inner.t, [0, 2, 1, 3], nodes);
  }

  /** The decomposed attention whose probabilities come from `softmax`, or throws NoMatch. */
  match(softmax: NodeProto): Match {
    const core: NodeProto[] = [softmax];
    // --- softmax axis: the last one
    const scoresIn = softmax.input[0]!;
    // --- upward: casts, zero term, scales, MatMul(Q, Kᵀ)
    let t = this.skipCastsUp(scoresIn, core);
    let scale = 1;
    for (let guard = 0; guard < 6; guard++) {
      const p = this.idx.producer(t);
      if (!isStd(p)) break;
      if (p.opType === 'Add' && p.input.length === 2) {
        const [a, b] = p.input as [string, string];
        if (this.se.isZero(b)) t = a;
        else if (this.se.isZero(a)) t = b;
        else fail('scores have a non-zero additive term (mask or bias)');
        core.push(p);
        continue;
      }
      if (p.opType === 'Mul' || p.opType === 'Div') {
        const s = this.stripScale(t, core);
        if (s.t === t) fail(`scores scaled by a non-constant ${p.opType}`);
        scale *= s.factor;
        t = s.t;
        continue;
      }
      if (p.opType === 'Cast') {
        t = this.skipCastsUp(t, core);
        continue;
      }
      break;
    }
    const qk = this.producer(t, 'MatMul');
    core.push(qk);
    const qs = this.stripScale(qk.input[0]!, core);
    const ks = this.stripScale(qk.input[1]!, core);
    scale *= qs.factor * ks.factor;
    const qh = this.heads(qs.t, core);
    const kFactor = { v: 1 };
    const kh = this.keyHeadsT(ks.t, qh.layout, core, kFactor);
    scale *= kFactor.v;
    const rank = qh.layout === '3d' ? 3 : 4;
    const axis = Number(getAttr(softmax, 'axis')?.i ?? Number.NaN);
    if (!(axis === -1 || axis === rank - 1)) fail(`Softmax axis ${Number.isNaN(axis) ? '(default)' : axis} is not the last`);

    // --- downward: casts, MatMul(probs, V)
    let probs = softmax.output[0]!;
    let c = this.soleConsumer(probs);
    for (let guard = 0; guard < 4 && isStd(c) && c.opType === 'Cast'; guard++) {
      const to = Number(getAttr(c, 'to')?.i ?? 0);
      if (to !== DataType.FLOAT && to !== DataType.FLOAT16) fail('probabilities cast to a non-float type');
      core.push(c);
      probs = c.output[0]!;
      c = this.soleConsumer(probs);
    }
    if (!isStd(c) || c.opType !== 'MatMul' || c.input[0] !== probs) fail('probabilities do not feed MatMul(·, V)');
    const pv = c;
    core.push(pv);
    const vh = this.heads(pv.input[1]!, core);
    if (vh.layout !== qh.layout) fail('V heads and Q heads have different layouts');
    if (qh.heads !== kh.heads || qh.heads !== vh.heads) fail(`head counts differ (q ${qh.heads}, k ${kh.heads}, v ${vh.heads})`);
    const heads = qh.heads;

    // --- merge heads back: [3-D: Reshape [B, H, S, dv]] → Transpose(0,2,1,3) → Reshape [B, S, H·dv]
    const ctx = pv.output[0]!;
    this.ranks.set(ctx, rank);
    const bSet: ShapeExpr[] = [qh.b];
    const sSet: ShapeExpr[] = [qh.s];
    const dvSet: ShapeExpr[] = [vh.d];
    let x = ctx;
    if (qh.layout === '3d') {
      bSet.push(divExpr({ k: 'dim', t: ctx, axis: 0 }, heads));
      sSet.push({ k: 'dim', t: ctx, axis: 1 });
      dvSet.push({ k: 'dim', t: ctx, axis: 2 });
      const r = this.soleConsumer(ctx);
      if (!isStd(r) || r.opType !== 'Reshape' || r.input[0] !== ctx) fail('attention output is not reshaped back');
      const [a, h, s, dv] = this.shape(r, 4) as [ShapeExpr, ShapeExpr, ShapeExpr, ShapeExpr];
      if (!isConst(h, heads)) fail(`head un-merge ${r.name ?? ''}: second dim is not the head count`);
      const aOk = bSet.some((e) => exprEquals(a, e));
      const sOk = sSet.some((e) => exprEquals(s, e));
      const dOk = dvSet.some((e) => exprEquals(dv, e));
      if (!((aOk && sOk && dOk) || (isConst(a, -1) && sOk && dOk) || (aOk && sOk && isConst(dv, -1)))) {
        fail(`head un-merge ${r.name ?? ''}: target shape is not [B, heads, S, dv]`);
      }
      if (!isConst(a, -1)) bSet.push(a);
      sSet.push(s);
      if (!isConst(dv, -1)) dvSet.push(dv);
      core.push(r);
      x = r.output[0]!;
    } else {
      bSet.push({ k: 'dim', t: ctx, axis: 0 });
      sSet.push({ k: 'dim', t: ctx, axis: 2 });
      dvSet.push({ k: 'dim', t: ctx, axis: 3 });
    }
    const tr = this.soleConsumer(x);
    if (!isStd(tr) || tr.opType !== 'Transpose' || !samePerm(perm(tr), [0, 2, 1, 3])) fail('attention output heads are not transposed back');
    core.push(tr);
    const fin = this.soleConsumer(tr.output[0]!);
    if (!isStd(fin) || fin.opType !== 'Reshape' || fin.input[0] !== tr.output[0]) fail('attention output is not reshaped to [B, S, hidden]');
    const [f, g, h] = this.shape(fin, 3) as [ShapeExpr, ShapeExpr, ShapeExpr];
    const hSet = dvSet.map((e) => mulExpr(e, heads));
    const vHidden = this.se.dim(vh.src, 2, 3);
    hSet.push(vHidden);
    const fOk = isConst(f, 0) || bSet.some((e) => exprEquals(f, e));
    const gOk = isConst(g, 0) || sSet.some((e) => exprEquals(g, e));
    const hOk = hSet.some((e) => exprEquals(h, e));
    const minus = [f, g, h].filter((e) => isConst(e, -1)).length;
    if (!((fOk && gOk && hOk) || (minus === 1 && [fOk, gOk, hOk].filter(Boolean).length === 2))) {
      fail(`head merge ${fin.name ?? ''}: target shape is not [B, S, heads·dv]`);
    }
    core.push(fin);
    if (!Number.isFinite(scale) || scale === 0) fail(`scale ${scale} is not usable`);
    return { q: qh.src, k: kh.src, v: vh.src, heads, scale, core, output: fin.output[0]!, anchor: qk };
  }

  /**
   * Nodes that become dead once `core` is removed and q/k/v stay used: the shape arithmetic of
   * the attention. Null when a core intermediate is used outside (then the match is unsafe).
   */
  deadClosure(m: Match): Set<NodeProto> | string {
    const removed = new Set<NodeProto>(m.core);
    const keep = new Set([m.q, m.k, m.v]);
    const stack: NodeProto[] = [];
    const pushProducers = (n: NodeProto): void => {
      for (const i of n.input) {
        const p = i ? this.idx.producer(i) : undefined;
        if (p && !removed.has(p)) stack.push(p);
      }
    };
    for (const n of m.core) pushProducers(n);
    // nodes hanging off core intermediates (Shape of the context, ...) are found from their uses
    for (const n of m.core) {
      for (const o of n.output) {
        if (o === m.output) continue;
        for (const c of this.idx.consumers(o)) if (!removed.has(c)) stack.push(c);
      }
    }
    const isDead = (n: NodeProto): boolean =>
      n.output.every(
        (o) => o === '' || (!this.idx.isGraphOutput(o) && !keep.has(o) && this.idx.consumers(o).every((c) => removed.has(c))),
      );
    while (stack.length > 0) {
      const n = stack.pop()!;
      if (removed.has(n) || !isStd(n) || !isDead(n)) continue;
      removed.add(n);
      pushProducers(n);
    }
    for (const n of m.core) {
      for (const o of n.output) {
        if (o === m.output) continue;
        if (this.idx.isGraphOutput(o)) return `${o} is a graph output`;
        const outside = this.idx.consumers(o).find((c) => !removed.has(c));
        if (outside) return `${o} is also used by ${outside.name ?? outside.opType}`;
      }
    }
    return removed;
  }
}

/** Element type of an attention: the type of its q projection weight, else the model's float type. */
function attentionElemType(idx: GraphIndex, q: string, fallback: number): number {
  let t = q;
  for (let guard = 0; guard < 4; guard++) {
    const p = idx.producer(t);
    if (!p) break;
    for (const i of p.input) {
      const init = i ? idx.initializer(i) : undefined;
      if (init && (init.dataType === DataType.FLOAT || init.dataType === DataType.FLOAT16)) return init.dataType;
    }
    t = p.input[0] ?? '';
  }
  return fallback;
}

/** The model's float type: of its first float graph input, else of its first float initializer. */
export function modelFloatType(model: ModelProto): number {
  const g = model.graph;
  if (!g) return DataType.FLOAT;
  for (const i of g.input) {
    const et = i.type?.tensorType?.elemType;
    if (et === DataType.FLOAT || et === DataType.FLOAT16) return et;
  }
  for (const t of g.initializer) if (t.dataType === DataType.FLOAT || t.dataType === DataType.FLOAT16) return t.dataType;
  return DataType.FLOAT;
}

const scopeOf = (name: string | undefined): string => {
  if (!name) return '';
  const i = name.lastIndexOf('/');
  return i > 0 ? name.slice(0, i) : '';
};

/**
 * Replaces every recognized decomposed attention of `model` by a com.microsoft
 * MultiHeadAttention (in place). Softmax nodes that do not belong to a recognized attention are
 * left untouched and listed in `skipped` with the reason.
 */
export function fuseAttention(model: ModelProto, opts: FuseAttentionOptions = {}): FuseAttentionResult {
  const graph = model.graph;
  const result: FuseAttentionResult = { count: 0, skipped: [] };
  if (!graph) return result;
  const fallbackType = modelFloatType(model);
  const names = new NameAllocator(graph);
  const tried = new Set<NodeProto>();
  const removedOutputs = new Set<string>();
  const removedInputs = new Set<string>();
  for (;;) {
    const matcher = new AttentionMatcher(graph);
    const softmax = matcher.idx.nodesByOp('Softmax').find((n) => !tried.has(n));
    if (!softmax) break;
    tried.add(softmax);
    const label = softmax.name || softmax.output[0] || 'Softmax';
    let m: Match;
    try {
      m = matcher.match(softmax);
    } catch (e) {
      if (e instanceof NoMatch) {
        result.skipped.push(`${label}: ${e.message}`);
        continue;
      }
      throw e;
    }
    const elem = attentionElemType(matcher.idx, m.q, fallbackType);
    if (elem === DataType.FLOAT16 && !opts.allowFloat16) {
      result.skipped.push(`${label}: float16 attention (onnxruntime's CPU MultiHeadAttention is float32 only)`);
      continue;
    }
    const dead = matcher.deadClosure(m);
    if (typeof dead === 'string') {
      result.skipped.push(`${label}: ${dead}`);
      continue;
    }
    const scope = scopeOf(m.anchor.name) || scopeOf(softmax.name);
    const em = new NodeEmitter(names, scope);
    em.op('MultiHeadAttention', [m.q, m.k, m.v], [attrInt('num_heads', m.heads), attrFloat('scale', m.scale)], { domain: MS_DOMAIN, output: m.output });
    for (const n of dead) {
      for (const o of n.output) if (o !== m.output) removedOutputs.add(o);
      for (const i of n.input) if (i) removedInputs.add(i);
    }
    replaceNodes(graph, [...dead], em.nodes);
    result.count++;
  }
  if (result.count > 0) {
    ensureOpset(model, MS_DOMAIN, 1);
    // initializers and value infos only the removed nodes referred to
    const used = new Set<string>();
    for (const n of graph.node) for (const i of nodeUses(n)) used.add(i);
    for (const o of graph.output) used.add(o.name);
    const inputs = new Set(graph.input.map((i) => i.name));
    graph.initializer = graph.initializer.filter(
      (t) => t.name === undefined || !removedInputs.has(t.name) || used.has(t.name) || inputs.has(t.name),
    );
    graph.valueInfo = graph.valueInfo.filter((v) => !removedOutputs.has(v.name));
  }
  return result;
}

