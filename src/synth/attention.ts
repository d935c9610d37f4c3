/**
 * diffusers `Attention` with the classic `AttnProcessor` (the processor used when exporting with
 * torch < 2, as diffusers' ONNX script did): to_q/to_k/to_v, head_to_batch_dim, baddbmm scores
 * (an empty tensor times beta=0 plus scale·QKᵀ), softmax, bmm with V, batch_to_head_dim, to_out.0,
 * then the rescale division. Emitted with the exact node names and shape arithmetic of that export.
 * Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { constTensor, int, tensorAttr } from '../onnx/builder.js';
import type { SynthContext } from './context.js';
import { constVec, dimOf, divCastCast, linear, reshape, transpose, unsq0 } from './layers.js';

export interface AttentionSpec {
  /** query input channels (= inner dim here) */
  queryDim: number;
  /** key/value input channels */
  contextDim: number;
  heads: number;
  dimHead: number;
  /** q/k/v projections have a bias (VAE: yes; UNet: no) */
  qkvBias: boolean;
  /** scores are cast to float32 before the softmax (VAE) */
  upcastSoftmax: boolean;
  /** query and key are cast to float32 before the scores (SD 2.x `upcast_attention`) */
  upcastAttention: boolean;
}

/** [B, S, H·D] → [B·H, S, D] (diffusers head_to_batch_dim). */
function headToBatch(c: SynthContext, x: string, heads: number): string {
  const b = dimOf(c, x, 0);
  const s = dimOf(c, x, 1);
  const d = dimOf(c, x, 2);
  const hd = divCastCast(c, d, heads);
  const u0 = unsq0(c, b);
  const u1 = unsq0(c, s);
  const hc = constVec(c, heads);
  const u2 = unsq0(c, hd);
  const cat = c.b.op('Concat', [u0, u1, hc, u2], { axis: int(0) });
  const r = reshape(c, x, cat);
  const t = transpose(c, r, [0, 2, 1, 3]);
  // torch's peephole pass drops a multiplication by 1 (single-head attention)
  const bh = heads === 1 ? b : c.b.op('Mul', [b, c.b.constInt64(heads)]);
  const cat1 = c.b.op('Concat', [unsq0(c, bh), unsq0(c, s), unsq0(c, hd)], { axis: int(0) });
  return reshape(c, t, cat1);
}

/** [B·H, S, D] → [B, S, H·D] (diffusers batch_to_head_dim). */
function batchToHead(c: SynthContext, x: string, heads: number): string {
  const bh = dimOf(c, x, 0);
  const s = dimOf(c, x, 1);
  const d = dimOf(c, x, 2);
  const b = divCastCast(c, bh, heads);
  const u0 = unsq0(c, b);
  const hc = constVec(c, heads);
  const u1 = unsq0(c, s);
  const u2 = unsq0(c, d);
  const cat = c.b.op('Concat', [u0, hc, u1, u2], { axis: int(0) });
  const r = reshape(c, x, cat);
  const t = transpose(c, r, [0, 2, 1, 3]);
  const hd = heads === 1 ? d : c.b.op('Mul', [d, c.b.constInt64(heads)]);
  const cat1 = c.b.op('Concat', [unsq0(c, b), unsq0(c, s), unsq0(c, hd)], { axis: int(0) });
  return reshape(c, t, cat1);
}

/**
 * Core of the attention (call inside the attention module's scope): projections through the
 * output projection. Returns the to_out.0 output (before rescale / residual).
 */
export function attentionCore(c: SynthContext, x: string, context: string, spec: AttentionSpec): string {
  const inner = spec.heads * spec.dimHead;
  const q = linear(c, 'to_q', x, spec.queryDim, inner, spec.qkvBias);
  const k = linear(c, 'to_k', context, spec.contextDim, inner, spec.qkvBias);
  const v = linear(c, 'to_v', context, spec.contextDim, inner, spec.qkvBias);
  let qh = headToBatch(c, q, spec.heads);
  let kh = headToBatch(c, k, spec.heads);
  const vh = headToBatch(c, v, spec.heads);

  const upcastQK = spec.upcastAttention && c.ft !== DataType.FLOAT;
  const scoreType = upcastQK ? DataType.FLOAT : c.ft;
  if (upcastQK) {
    qh = c.b.op('Cast', [qh], { to: int(DataType.FLOAT) });
    kh = c.b.op('Cast', [kh], { to: int(DataType.FLOAT) });
  }
  const qb = dimOf(c, qh, 0);
  const ql = dimOf(c, qh, 1);
  const kl = dimOf(c, kh, 1);
  const shape = c.b.op('Concat', [unsq0(c, qb), unsq0(c, ql), unsq0(c, kl)], { axis: int(0) });
  const empty = c.b.op('ConstantOfShape', [shape], {
    value: tensorAttr(constTensor(scoreType, [1], [0])),
  });
  const kt = transpose(c, kh, [0, 2, 1]);
  const mm = c.b.op('MatMul', [qh, kt]);
  const scale = c.b.constScalar(1 / Math.sqrt(spec.dimHead), scoreType);
  const scaled = c.b.op('Mul', [mm, scale]);
  const beta = c.b.constScalar(0, scoreType);
  const zeroed = c.b.op('Mul', [empty, beta]);
  let scores = c.b.op('Add', [scaled, zeroed]);
  if (spec.upcastSoftmax) scores = c.b.op('Cast', [scores], { to: int(DataType.FLOAT) });
  const probs = c.b.op('Softmax', [scores], { axis: int(-1) });
  const probsT = c.b.op('Cast', [probs], { to: int(c.ft) });
  const out = c.b.op('MatMul', [probsT, vh]);
  const merged = batchToHead(c, out, spec.heads);
  return linear(c, 'to_out.0', merged, inner, spec.queryDim, true);
}
