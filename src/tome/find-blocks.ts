/**
 * Structural search for the UNet's transformer blocks (diffusers BasicTransformerBlock):
 *
 *   x0 → norm1 → attn1 (Q, K, V all from norm1) → +x0 = x1
 *   x1 → norm2 → attn2 (K, V from outside the block, i.e. encoder_hidden_states) → +x1 = x2
 *   x2 → norm3 → ff (no attention) → +x2 = x3
 *
 * A "sub-layer" is found from a norm: its output n, the nodes reachable from n up to the residual
 * node that adds the sub-layer's output y back onto the norm's input stream x (a plain Add, or a
 * com.microsoft SkipLayerNormalization that fuses the residual add with the next norm). Norms:
 * the decomposed LayerNorm of opset-14 exports (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div with
 * optional affine Mul/Add), LayerNormalization (opset 17), SkipLayerNormalization. Attention: a
 * Softmax (decomposed) or a com.microsoft MultiHeadAttention / Attention node. Names are never
 * used, so graphs renamed by optimizers are handled the same.
 *
 * The level (downsample factor) of each block is found by following the data flow from the
 * `sample` input: stride-2 convolutions double it, Resize/Upsample divide it by their scale.
 * Pure logic, no I/O.
 */
import { getAttr, getInts } from '../onnx/attributes.js';
import { GraphIndex, isTopologicallySorted, topologicalSort } from '../onnx/graph.js';
import { tensorValues } from '../onnx/tensor.js';
import { DataType, type GraphProto, type ModelProto, type NodeProto, type TensorProto } from '../onnx/types.js';
import type { BlockInfo } from './types.js';

export interface SubLayer {
  kind: 'attn' | 'crossattn' | 'mlp';
  /** The residual stream entering the norm. */
  stream: string;
  /** The norm's output (what merge applies to). */
  normOutput: string;
  /** The sub-layer's output before the residual add (what unmerge applies to). */
  output: string;
  /** The node adding `output` back onto `stream`, and the input slot `output` takes there. */
  residual: NodeProto;
  residualSlot: number;
  /** The stream after the residual add ('' when the residual node does not expose it). */
  next: string;
  /** Nodes between the norm output and the residual node. */
  region: NodeProto[];
}

export interface FoundBlock {
  info: BlockInfo;
  /** The block input (tomesd's metric). */
  metric: string;
  /** Element type of the block's hidden states. */
  elemType: DataType;
  attn: SubLayer;
  crossattn: SubLayer | null;
  mlp: SubLayer;
}

const MS = 'com.microsoft';
const isDefault = (n: NodeProto): boolean => !n.domain || n.domain === '' || n.domain === 'ai.onnx';
const isOp = (n: NodeProto, op: string, domain: 'default' | 'ms' | 'any' = 'default'): boolean =>
  n.opType === op && (domain === 'any' || (domain === 'ms' ? n.domain === MS : isDefault(n)));
const isAttentionNode = (n: NodeProto): boolean =>
  isOp(n, 'Softmax') || isOp(n, 'MultiHeadAttention', 'ms') || isOp(n, 'Attention', 'ms');

interface NormMatch {
  stream: string;
  output: string;
  /** The node whose output is `output`. */
  last: NodeProto;
}

/** A constant value: an initializer or a Constant node's tensor. */
function constTensor(idx: GraphIndex, name: string): TensorProto | undefined {
  const init = idx.initializer(name);
  if (init) return init;
  const p = idx.producer(name);
  if (p && isOp(p, 'Constant')) return getAttr(p, 'value')?.t;
  return undefined;
}

function constNumbers(idx: GraphIndex, name: string): number[] | undefined {
  const t = constTensor(idx, name);
  if (!t || (t.dataLocation === 1 && !t.rawData)) return undefined;
  try {
    return Array.from(tensorValues(t) as ArrayLike<number | bigint>, Number);
  } catch {
    return undefined;
  }
}

const isParam = (idx: GraphIndex, name: string): boolean => constTensor(idx, name) !== undefined;

/** Norms that start at `node`. */
function matchNorm(idx: GraphIndex, node: NodeProto): NormMatch | null {
  if (isOp(node, 'LayerNormalization', 'any')) return { stream: node.input[0]!, output: node.output[0]!, last: node };
  if (isOp(node, 'SkipLayerNormalization', 'ms')) {
    const sum = node.output[3];
    if (!sum) return null;
    return { stream: sum, output: node.output[0]!, last: node };
  }
  if (!isOp(node, 'ReduceMean')) return null;
  // Decomposed LayerNorm: mean = ReduceMean(x); d = x − mean; var = ReduceMean(d²); (d / sqrt(var + eps)) · γ + β.
  const x = node.input[0]!;
  const sub = idx.consumers(node.output[0]!).find((c) => isOp(c, 'Sub') && c.input[0] === x && c.input[1] === node.output[0]);
  if (!sub) return null;
  const subUsers = idx.consumers(sub.output[0]!);
  const pow = subUsers.find((c) => isOp(c, 'Pow') || isOp(c, 'Mul'));
  const div = subUsers.find((c) => isOp(c, 'Div') && c.input[0] === sub.output[0]);
  if (!pow || !div) return null;
  let last = div;
  const single = (t: string): NodeProto | undefined => {
    const u = idx.consumers(t);
    return u.length === 1 ? u[0] : undefined;
  };
  const mul = single(last.output[0]!);
  if (mul && isOp(mul, 'Mul') && mul.input.some((i) => i !== last.output[0] && isParam(idx, i))) {
    last = mul;
    const add = single(last.output[0]!);
    if (add && isOp(add, 'Add') && add.input.some((i) => i !== last.output[0] && isParam(idx, i))) last = add;
  }
  return { stream: x, output: last.output[0]!, last };
}

const REGION_LIMIT = 4000;

/** The sub-layer hanging off a norm, or null when the structure is not a residual sub-layer. */
function matchSubLayer(idx: GraphIndex, norm: NormMatch): Omit<SubLayer, 'kind'> & { attention: NodeProto | null } | null {
  // Residual nodes: Add(y, x); SkipLayerNormalization(y, x, …) (residual add fused with the next
  // norm); BiasAdd(y, bias, x) (com.microsoft).
  const isResidualOp = (c: NodeProto): boolean =>
    isOp(c, 'Add') || isOp(c, 'SkipLayerNormalization', 'ms') || (isOp(c, 'BiasAdd', 'ms') && c.input[2] === norm.stream);
  const streamUsers = new Set(idx.consumers(norm.stream).filter(isResidualOp));
  if (isOp(norm.last, 'SkipLayerNormalization', 'ms')) streamUsers.delete(norm.last);
  const region: NodeProto[] = [];
  const seen = new Set<NodeProto>();
  const produced = new Set<string>([norm.output]);
  const queue: string[] = [norm.output];
  let residual: NodeProto | null = null;
  while (queue.length > 0) {
    const t = queue.shift()!;
    for (const c of idx.consumers(t)) {
      if (seen.has(c)) continue;
      if (streamUsers.has(c)) {
        if (residual && residual !== c) return null;
        residual = c;
        continue;
      }
      seen.add(c);
      region.push(c);
      if (region.length > REGION_LIMIT) return null;
      for (const o of c.output) {
        if (o !== '' && !produced.has(o)) {
          produced.add(o);
          queue.push(o);
        }
      }
    }
  }
  if (!residual) return null;
  const slots = residual.input.map((i, k) => (produced.has(i) && i !== norm.stream ? k : -1)).filter((k) => k >= 0);
  if (slots.length !== 1) return null;
  const slot = slots[0]!;
  if (isOp(residual, 'BiasAdd', 'ms')) {
    if (slot !== 0) return null;
  } else if (slot > 1 || !residual.input.slice(0, 2).includes(norm.stream)) {
    return null;
  }
  const next = isOp(residual, 'SkipLayerNormalization', 'ms') ? residual.output[3] ?? '' : residual.output[0]!;
  const attns = region.filter(isAttentionNode);
  if (attns.length > 1) return null;
  // The region must feed nothing but the residual node (else merging would leak shapes).
  for (const n of region) {
    for (const o of n.output) {
      if (o === '') continue;
      for (const c of idx.consumers(o)) if (c !== residual && !seen.has(c)) return null;
      if (idx.isGraphOutput(o)) return null;
    }
  }
  return {
    stream: norm.stream, normOutput: norm.output, output: residual.input[slot]!, residual, residualSlot: slot, next, region,
    attention: attns[0] ?? null,
  };
}

/** Self-attention (keys from the sub-layer's own tokens) or cross-attention. */
function attentionKind(idx: GraphIndex, att: NodeProto, region: Set<NodeProto>): 'self' | 'cross' | null {
  const inRegion = (t: string): boolean => {
    const p = idx.producer(t);
    return p !== undefined && region.has(p);
  };
  if (!isOp(att, 'Softmax')) {
    // MultiHeadAttention(query, key, value, …) / Attention(input, weights, …).
    if (isOp(att, 'Attention', 'ms')) return 'self';
    const key = att.input[1] ?? '';
    if (key === '') return inRegion(att.input[0]!) ? 'self' : null;
    return inRegion(key) ? 'self' : 'cross';
  }
  // Walk back from the Softmax to the Q·Kᵀ MatMul through scaling / masking / casts.
  let t = att.input[0]!;
  for (let steps = 0; steps < 8; steps++) {
    const p = idx.producer(t);
    if (!p) return null;
    if (isOp(p, 'MatMul')) {
      const qIn = inRegion(p.input[0]!);
      const kIn = inRegion(p.input[1]!);
      if (!qIn) return null;
      return kIn ? 'self' : 'cross';
    }
    if (['Add', 'Mul', 'Div', 'Cast', 'Where', 'Sub'].includes(p.opType) && isDefault(p)) {
      // Follow the operand computed inside the region (the other is a constant or a mask).
      const nextIn = p.input.filter((i) => inRegion(i));
      if (nextIn.length === 0) return null;
      t = p.opType === 'Where' ? nextIn[nextIn.length - 1]! : nextIn[0]!;
      continue;
    }
    return null;
  }
  return null;
}

/** Element type of a tensor, from value infos or the parameters of its consumers. */
function elemTypeOf(model: ModelProto, idx: GraphIndex, tensor: string, sub: SubLayer): DataType {
  const g = model.graph!;
  for (const v of [...g.valueInfo, ...g.input, ...g.output]) {
    if (v.name === tensor && v.type?.tensorType?.elemType) return v.type.tensorType.elemType;
  }
  for (const n of sub.region) {
    if (!(isOp(n, 'MatMul') || isOp(n, 'Gemm') || isOp(n, 'Add'))) continue;
    for (const i of n.input) {
      const t = idx.initializer(i);
      if (t && (t.dataType === DataType.FLOAT || t.dataType === DataType.FLOAT16 || t.dataType === DataType.BFLOAT16)) return t.dataType;
    }
  }
  return DataType.FLOAT;
}

/** The UNet's latent input: `sample`, else the first rank-4 input. */
export function findSampleInput(graph: GraphProto): string | null {
  const byName = graph.input.find((i) => i.name === 'sample');
  if (byName) return byName.name;
  const r4 = graph.input.find((i) => i.type?.tensorType?.shape?.dim.length === 4);
  return r4?.name ?? null;
}

/** Downsample factor of every tensor reachable from `sample` (see the module comment). */
function levels(idx: GraphIndex, nodes: NodeProto[], sample: string): Map<string, number> {
  const L = new Map<string, number>([[sample, 1]]);
  for (const n of nodes) {
    if (n.opType === 'Shape' || n.opType === 'Constant') continue;
    let lv: number | undefined;
    for (const i of n.input) {
      const v = L.get(i);
      if (v !== undefined) {
        lv = v;
        break;
      }
    }
    if (lv === undefined) continue;
    if (n.opType === 'Conv' || n.opType === 'NhwcConv') {
      const strides = getAttr(n, 'strides') ? getInts(n, 'strides').map(Number) : [1];
      lv *= Math.max(...strides);
    } else if (n.opType === 'Resize' || n.opType === 'Upsample') {
      const scalesName = n.opType === 'Upsample' ? n.input[1] : n.input[2];
      const scales = scalesName ? constNumbers(idx, scalesName) : undefined;
      const s = scales && scales.length >= 3 ? scales[scales.length - 1]! : 2;
      if (s > 0) lv /= s;
    }
    for (const o of n.output) if (o !== '') L.set(o, lv);
  }
  return L;
}

/**
 * Every transformer block of a UNet graph, in the order the UNet runs them (down, mid, up), or
 * a one-line reason why the graph is not understood.
 */
export function findBlocks(model: ModelProto): { blocks: FoundBlock[] } | { error: string } {
  const g = model.graph;
  if (!g) return { error: 'the model has no graph' };
  const sample = findSampleInput(g);
  if (!sample) return { error: 'no latent input (sample [B,4,H,W]) found' };
  const ordered = isTopologicallySorted(g) ? g.node : topologicalSort({ ...g, node: [...g.node] }).node;
  const idx = new GraphIndex(g);
  const position = new Map<NodeProto, number>(ordered.map((n, i) => [n, i]));

  const subByStream = new Map<string, SubLayer & { attention: NodeProto | null }>();
  for (const node of ordered) {
    const norm = matchNorm(idx, node);
    if (!norm) continue;
    const m = matchSubLayer(idx, norm);
    if (!m) continue;
    let kind: SubLayer['kind'];
    if (m.attention) {
      const k = attentionKind(idx, m.attention, new Set(m.region));
      if (!k) continue;
      kind = k === 'self' ? 'attn' : 'crossattn';
    } else {
      if (!m.region.some((n) => isOp(n, 'MatMul') || isOp(n, 'Gemm'))) continue;
      kind = 'mlp';
    }
    subByStream.set(m.stream, { ...m, kind });
  }

  const L = levels(idx, ordered, sample);
  const blocks: FoundBlock[] = [];
  const used = new Set<string>();
  const attnTotal = ordered.filter(isAttentionNode).length;
  let attnCovered = 0;
  for (const s of [...subByStream.values()].sort((a, b) => position.get(a.region[0]!)! - position.get(b.region[0]!)!)) {
    if (s.kind !== 'attn' || used.has(s.stream)) continue;
    let second = s.next ? subByStream.get(s.next) : undefined;
    let cross: SubLayer | null = null;
    if (second?.kind === 'crossattn') {
      cross = second;
      second = second.next ? subByStream.get(second.next) : undefined;
    }
    if (second?.kind !== 'mlp') continue;
    const mlp = second;
    used.add(s.stream);
    attnCovered += cross ? 2 : 1;
    const level = L.get(s.stream);
    const k = blocks.length;
    const hint = nameHint(idx, s);
    const elemType = elemTypeOf(model, idx, s.stream, s);
    const strip = ({ attention: _a, ...rest }: SubLayer & { attention: NodeProto | null }): SubLayer => rest;
    blocks.push({
      info: {
        index: k,
        name: hint,
        level: level !== undefined && Number.isInteger(level) && level >= 1 ? level : null,
        sublayers: { attn: true, crossattn: cross !== null, mlp: true },
        elemType: elemType === DataType.FLOAT16 ? 'float16' : elemType === DataType.BFLOAT16 ? 'bfloat16' : 'float32',
      },
      metric: s.stream,
      elemType,
      attn: strip(s),
      crossattn: cross ? strip(cross as SubLayer & { attention: NodeProto | null }) : null,
      mlp: strip(mlp),
    });
  }
  if (blocks.length === 0) {
    return { error: attnTotal === 0 ? 'no attention found in the graph' : `none of the ${attnTotal} attention ops sits in a recognizable transformer block` };
  }
  if (attnCovered < attnTotal) {
    return { error: `${attnTotal - attnCovered} of ${attnTotal} attention ops are outside recognizable transformer blocks` };
  }
  return { blocks };
}

/** A readable block name from the node names, when they carry diffusers' module path. */
function nameHint(idx: GraphIndex, s: SubLayer): string {
  for (const n of s.region) {
    const m = /^\/?(.*?transformer_blocks\.\d+)\//.exec(n.name ?? '');
    if (m) return m[1]!.replace(/^\//, '');
  }
  void idx;
  return '';
}
