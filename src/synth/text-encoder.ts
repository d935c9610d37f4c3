/**
 * transformers `CLIPTextModel` (as of 4.30) as `torch.onnx.export` writes it: token + position
 * embeddings, causal mask built from Range/Less/Where, pre-LN encoder layers (self-attention with
 * the q scaling before the head split, quick_gelu or gelu MLP), final LayerNorm →
 * `last_hidden_state`, and the pooled output gathered at argmax(input_ids) → `pooler_output`.
 * Optionally in the form of Optimum's SDXL export (`output_hidden_states`): the embeddings and
 * every layer's output as `hidden_states.0 … hidden_states.L`; and `CLIPTextModelWithProjection`
 * (SDXL's text_encoder_2): the pooled output through the bias-free `text_projection` →
 * `text_embeds` in place of `pooler_output`, outputs in Optimum's order (text_embeds,
 * last_hidden_state, hidden_states.*). Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { constTensor, int, tensorAttr } from '../onnx/builder.js';
import { SynthContext } from './context.js';
import type { BuiltModel } from './unet.js';
import { constVec, dimOf, geluErf, layerNorm, linear, reshape, transpose, unsq0 } from './layers.js';

export interface TextEncoderConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  hiddenAct: 'quick_gelu' | 'gelu';
  projectionDim: number;
  layerNormEps: number;
  /** token ids written into config.json (the tokenizer's bos/eos/pad) */
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  /** element type of `input_ids`: int32 (diffusers' SD script, default) or int64 (Optimum) */
  inputIdsType?: 'int32' | 'int64';
  /** outputs `hidden_states.0 … hidden_states.L` (transformers' `output_hidden_states`) */
  outputHiddenStates?: boolean;
  /** CLIPTextModelWithProjection: `text_projection` (projectionDim, no bias) → `text_embeds` */
  withProjection?: boolean;
}

export interface TextEncoderBuildOptions {
  opset: 14 | 17;
  fp16: boolean;
}

function encoderLayer(c: SynthContext, cfg: TextEncoderConfig, i: number, x: string, mask: string, outputName?: string): string {
  const d = cfg.hiddenSize;
  const heads = cfg.numHeads;
  const hd = d / heads;
  return c.mod(`layers.${i}`, () => {
    const n1 = layerNorm(c, 'layer_norm1', x, d, cfg.layerNormEps);
    const attn = c.mod('self_attn', () => {
      const bsz = dimOf(c, n1, 0);
      const tgt = dimOf(c, n1, 1);
      const emb = dimOf(c, n1, 2);
      const q0 = linear(c, 'q_proj', n1, d, d);
      const q = c.b.op('Mul', [q0, c.b.constScalar(1 / Math.sqrt(hd), c.ft)]);
      const k0 = linear(c, 'k_proj', n1, d, d);
      const splitShape = (): string =>
        c.b.op('Concat', [unsq0(c, bsz), constVec(c, -1), constVec(c, heads), constVec(c, hd)], { axis: int(0) });
      const kShape = splitShape();
      const vShape = splitShape();
      const k = transpose(c, reshape(c, k0, kShape), [0, 2, 1, 3]);
      const v0 = linear(c, 'v_proj', n1, d, d);
      const v = transpose(c, reshape(c, v0, vShape), [0, 2, 1, 3]);
      const bh = c.b.op('Mul', [bsz, c.b.constInt64(heads)]);
      const qShape = c.b.op('Concat', [unsq0(c, bsz), unsq0(c, tgt), constVec(c, heads), constVec(c, hd)], {
        axis: int(0),
      });
      const qh = transpose(c, reshape(c, q, qShape), [0, 2, 1, 3]);
      const proj = (): string => c.b.op('Concat', [unsq0(c, bh), constVec(c, -1), constVec(c, hd)], { axis: int(0) });
      const pq = proj();
      const pk = proj();
      const pv = proj();
      const q3 = reshape(c, qh, pq);
      const k3 = reshape(c, k, pk);
      const v3 = reshape(c, v, pv);
      const src = dimOf(c, k3, 1);
      const kt = transpose(c, k3, [0, 2, 1]);
      const w = c.b.op('MatMul', [q3, kt]);
      const s4 = c.b.op('Concat', [unsq0(c, bsz), constVec(c, heads), unsq0(c, tgt), unsq0(c, src)], {
        axis: int(0),
      });
      const w4 = reshape(c, w, s4);
      const masked = c.b.op('Add', [w4, mask]);
      const s3 = c.b.op('Concat', [unsq0(c, bh), unsq0(c, tgt), unsq0(c, src)], { axis: int(0) });
      const w3 = reshape(c, masked, s3);
      const p = c.b.op('Softmax', [w3], { axis: int(-1) });
      const o = c.b.op('MatMul', [p, v3]);
      const o4s = c.b.op('Concat', [unsq0(c, bsz), constVec(c, heads), unsq0(c, tgt), constVec(c, hd)], {
        axis: int(0),
      });
      const o4 = transpose(c, reshape(c, o, o4s), [0, 2, 1, 3]);
      const o3s = c.b.op('Concat', [unsq0(c, bsz), unsq0(c, tgt), unsq0(c, emb)], { axis: int(0) });
      const o3 = reshape(c, o4, o3s);
      return linear(c, 'out_proj', o3, d, d);
    });
    const h = c.b.op('Add', [x, attn]);
    const n2 = layerNorm(c, 'layer_norm2', h, d, cfg.layerNormEps);
    const mlp = c.mod('mlp', () => {
      const f1 = linear(c, 'fc1', n2, d, cfg.intermediateSize);
      const act = c.mod(
        'activation_fn',
        () => {
          if (cfg.hiddenAct === 'gelu') return geluErf(c, f1);
          const m = c.b.op('Mul', [f1, c.b.constScalar(1.702, c.ft)]);
          const s = c.b.op('Sigmoid', [m]);
          return c.b.op('Mul', [f1, s]);
        },
        null,
      );
      return linear(c, 'fc2', act, cfg.intermediateSize, d);
    });
    return c.b.op('Add', [h, mlp], undefined, outputName ? { outputs: [outputName] } : undefined);
  });
}

/** Causal mask [B, 1, S, S] (0 on and below the diagonal, the dtype's minimum above). */
function causalMask(c: SynthContext, bsz: string, seq: string): string {
  const b = c.b;
  const minValue = c.ft === DataType.FLOAT16 ? -65504 : -3.4028234663852886e38;
  const sq = b.op('Concat', [unsq0(c, seq), unsq0(c, seq)], { axis: int(0) });
  const full = b.op('ConstantOfShape', [sq], { value: tensorAttr(constTensor(c.ft, [1], [minValue])) });
  const lastDim = (): string => {
    const s = b.op('Shape', [full]);
    const z = constVec(c, 0);
    const sl = b.op('Slice', [s, constVec(c, -1), b.constInt64([9223372036854775807n]), z]);
    return b.op('Squeeze', [sl, constVec(c, 0)]);
  };
  const n = b.op('Cast', [lastDim()], { to: int(DataType.INT64) });
  const range = b.op('Range', [b.constInt64(0), n, b.constInt64(1)]);
  const plus = b.op('Add', [range, b.constInt64(1)]);
  const n2 = lastDim();
  const col = reshape(c, plus, b.op('Concat', [unsq0(c, n2), constVec(c, 1)], { axis: int(0) }));
  const less = b.op('Less', [range, col]);
  const cond = b.op('Cast', [less], { to: int(DataType.BOOL) });
  const where = b.op('Where', [cond, b.constScalar(0, c.ft), full]);
  const m = b.op('Cast', [where], { to: int(c.ft) });
  const m1 = b.op('Unsqueeze', [m, constVec(c, 0)]);
  const m2 = b.op('Unsqueeze', [m1, constVec(c, 1)]);
  // .expand(bsz, 1, tgt, tgt)
  const u0 = b.op('Unsqueeze', [bsz, constVec(c, 0)]);
  const one = constVec(c, 1);
  const u1 = b.op('Unsqueeze', [seq, constVec(c, 0)]);
  const u2 = b.op('Unsqueeze', [seq, constVec(c, 0)]);
  const cat = b.op('Concat', [u0, one, u1, u2], { axis: int(0) });
  const shape = reshape(c, cat, constVec(c, -1));
  const ones = b.op('ConstantOfShape', [b.op('Shape', [shape])], {
    value: tensorAttr(constTensor(DataType.INT64, [1], [1])),
  });
  const neg = b.op('Mul', [ones, b.constInt64(-1)]);
  const eq = b.op('Equal', [shape, neg]);
  const w = b.op('Where', [eq, ones, shape]);
  return b.op('Expand', [m2, w]);
}

export function buildTextEncoder(cfg: TextEncoderConfig, opts: TextEncoderBuildOptions): BuiltModel {
  const c = new SynthContext(opts.opset, opts.fp16);
  const b = c.b;
  const d = cfg.hiddenSize;
  const hsName = (k: number): string | undefined => (cfg.outputHiddenStates ? `hidden_states.${k}` : undefined);
  const ids = b.input('input_ids', cfg.inputIdsType === 'int64' ? DataType.INT64 : DataType.INT32, ['batch', 'sequence']);
  let pooledOut = '';
  c.mod('text_model', () => {
    const bsz = dimOf(c, ids, 0);
    const seq = dimOf(c, ids, 1);
    const viewShape = b.op('Concat', [constVec(c, -1), unsq0(c, seq)], { axis: int(0) });
    const flatIds = reshape(c, ids, viewShape);
    const emb = c.mod('embeddings', () => {
      const s = dimOf(c, flatIds, 1);
      const posIds = c.buffer('position_ids', [1, cfg.maxPositions], { kind: 'arange' }, DataType.INT64);
      const start = constVec(c, 0);
      const end = b.op('Unsqueeze', [s, constVec(c, 0)]);
      const pos = b.op('Slice', [posIds, start, end, constVec(c, 1), constVec(c, 1)]);
      const tok = c.mod('token_embedding', () => {
        const w = c.param('weight', [cfg.vocabSize, d], { kind: 'uniform', bound: 0.02 * Math.sqrt(3) });
        return b.op('Gather', [w, flatIds]);
      });
      const pe = c.mod('position_embedding', () => {
        const w = c.param('weight', [cfg.maxPositions, d], { kind: 'uniform', bound: 0.01 * Math.sqrt(3) });
        return b.op('Gather', [w, pos]);
      });
      const e0 = hsName(0);
      return b.op('Add', [tok, pe], undefined, e0 ? { outputs: [e0] } : undefined);
    });
    const mask = causalMask(c, bsz, seq);
    let h = emb;
    c.mod('encoder', () => {
      for (let i = 0; i < cfg.numLayers; i++) h = encoderLayer(c, cfg, i, h, mask, hsName(i + 1));
    });
    const last = layerNorm(c, 'final_layer_norm', h, d, cfg.layerNormEps, 'last_hidden_state');
    // pooled = last[arange(B), input_ids.to(int).argmax(-1)]
    const nb = b.op('Cast', [dimOf(c, last, 0)], { to: int(DataType.INT64) });
    const rows = b.op('Range', [b.constInt64(0), nb, b.constInt64(1)]);
    const idsInt = b.op('Cast', [flatIds], { to: int(DataType.INT32) });
    const eos = b.op('ArgMax', [idsInt], { axis: int(-1), keepdims: int(0), select_last_index: int(0) });
    const shp = b.op('Shape', [last]);
    const sLen = b.op('Gather', [shp, constVec(c, 1)], { axis: int(0) });
    const dLen = b.op('Gather', [shp, constVec(c, 2)], { axis: int(0) });
    const flat = b.op('Flatten', [last], { axis: int(2) });
    const offs = b.op('Mul', [rows, sLen]);
    const idx = b.op('Add', [eos, offs]);
    const picked = b.op('Gather', [flat, idx], { axis: int(0) });
    const idxShape = b.op('Shape', [idx]);
    const r1 = reshape(c, picked, b.op('Concat', [constVec(c, -1), dLen], { axis: int(0) }));
    const fin = b.op('Concat', [idxShape, dLen], { axis: int(0) });
    if (cfg.withProjection) pooledOut = reshape(c, r1, fin);
    else b.node('Reshape', [r1, fin], { allowzero: int(0) }, { outputs: ['pooler_output'] });
  });
  if (cfg.withProjection) {
    // CLIPTextModelWithProjection: text_embeds = text_projection(pooled_output); a bias-free
    // Linear on a 2-D input exports as MatMul on the transposed weight
    c.mod('text_projection', () => {
      const w = c.derivedParam('MatMul', [d, cfg.projectionDim], { kind: 'uniform', bound: 1 / Math.sqrt(d) }, 'weight');
      b.node('MatMul', [pooledOut, w], undefined, { outputs: ['text_embeds'] });
    });
    b.output('text_embeds', c.ft, ['batch', cfg.projectionDim]);
  }
  b.output('last_hidden_state', c.ft, ['batch', 'sequence', d]);
  if (!cfg.withProjection) b.output('pooler_output', c.ft, ['batch', d]);
  if (cfg.outputHiddenStates) {
    for (let k = 0; k <= cfg.numLayers; k++) b.output(`hidden_states.${k}`, c.ft, ['batch', 'sequence', d]);
  }
  return { ctx: c, params: c.finish() };
}

/** A TextEncoderConfig from a transformers CLIPTextConfig config.json (and Optimum's flags). */
export function textEncoderConfigFromHF(json: Record<string, unknown>): TextEncoderConfig {
  const num = (key: string): number => {
    const v = json[key];
    if (typeof v !== 'number') throw new Error(`text encoder config: missing ${key}`);
    return v;
  };
  const act = json['hidden_act'];
  if (act !== 'quick_gelu' && act !== 'gelu') throw new Error(`text encoder config: hidden_act ${JSON.stringify(act)} is not supported`);
  const archs = json['architectures'];
  return {
    vocabSize: num('vocab_size'),
    hiddenSize: num('hidden_size'),
    intermediateSize: num('intermediate_size'),
    numLayers: num('num_hidden_layers'),
    numHeads: num('num_attention_heads'),
    maxPositions: num('max_position_embeddings'),
    hiddenAct: act,
    projectionDim: num('projection_dim'),
    layerNormEps: num('layer_norm_eps'),
    bosTokenId: num('bos_token_id'),
    eosTokenId: num('eos_token_id'),
    padTokenId: num('pad_token_id'),
    outputHiddenStates: json['output_hidden_states'] === true,
    withProjection: Array.isArray(archs) && archs.includes('CLIPTextModelWithProjection'),
  };
}

export function textEncoderConfigJson(cfg: TextEncoderConfig): Record<string, unknown> {
  return {
    architectures: [cfg.withProjection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel'],
    attention_dropout: 0.0,
    bos_token_id: cfg.bosTokenId,
    dropout: 0.0,
    eos_token_id: cfg.eosTokenId,
    hidden_act: cfg.hiddenAct,
    hidden_size: cfg.hiddenSize,
    initializer_factor: 1.0,
    initializer_range: 0.02,
    intermediate_size: cfg.intermediateSize,
    layer_norm_eps: cfg.layerNormEps,
    max_position_embeddings: cfg.maxPositions,
    model_type: 'clip_text_model',
    num_attention_heads: cfg.numHeads,
    num_hidden_layers: cfg.numLayers,
    pad_token_id: cfg.padTokenId,
    projection_dim: cfg.projectionDim,
    torch_dtype: 'float32',
    transformers_version: '4.30.0',
    vocab_size: cfg.vocabSize,
    // Optimum writes the flag its export was made with (the hidden_states.N outputs)
    ...(cfg.outputHiddenStates ? { output_hidden_states: true } : {}),
  };
}
