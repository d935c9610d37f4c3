/**
 * diffusers `UNet2DConditionModel` (SD 1.x / 2.x and SDXL layouts) as `torch.onnx.export` writes
 * it: timestep broadcast + sinusoidal projection, time_embedding (with `cond_proj` on the extra
 * `timestep_cond` input when `time_cond_proj_dim` is set, as in LCM-distilled UNets), SDXL's
 * `text_time` added conditioning (`add_time_proj` of the flattened `time_ids`, concatenated
 * after `text_embeds`, through `add_embedding`, added to the time embedding), conv_in, down
 * blocks (resnets, Transformer2D attentions with `transformer_layers_per_block` transformer
 * blocks each, downsamplers), mid block, up blocks with skip concatenation and nearest
 * upsampling, conv_norm_out/act/conv_out → `out_sample`. Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { constTensor, int, tensorAttr } from '../onnx/builder.js';
import { SynthContext, type ParamEntry } from './context.js';
import { attentionCore } from './attention.js';
import {
  conv2d,
  dimOf,
  geluErf,
  groupNorm,
  layerNorm,
  linear,
  linearGemm,
  reshape,
  resizeNearest2x,
  silu,
  transpose,
  unsq0,
  unsqueezeScoped,
  constVec,
} from './layers.js';

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UpBlockType = 'UpBlock2D' | 'CrossAttnUpBlock2D';
export type TimestepType = 'float32' | 'int64' | 'float32-scalar';

export interface UNetConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  downBlockTypes: DownBlockType[];
  upBlockTypes: UpBlockType[];
  layersPerBlock: number;
  crossAttentionDim: number;
  /** diffusers' `attention_head_dim`, which SD configs use as the number of heads */
  attentionHeadDim: number | number[];
  normNumGroups: number;
  normEps: number;
  useLinearProjection: boolean;
  upcastAttention: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  /**
   * diffusers' `time_cond_proj_dim` (LCM-distilled UNets, e.g. 256): adds the graph input
   * `timestep_cond` [batch, D] and `time_embedding.cond_proj` (Linear D → blockOutChannels[0],
   * no bias), whose output is added to the sinusoidal projection before `linear_1`. Unset: none.
   */
  timeCondProjDim?: number | null;
  /**
   * diffusers' `transformer_layers_per_block`: BasicTransformerBlocks per Transformer2DModel, one
   * number for every level or one per level (SDXL base: [1, 2, 10]). The up blocks take the
   * list reversed and the mid block its last entry, as UNet2DConditionModel does when
   * `reverse_transformer_layers_per_block` is unset. Default 1.
   */
  transformerLayersPerBlock?: number | number[];
  /**
   * diffusers' `addition_embed_type`: 'text_time' (SDXL) adds the graph inputs `text_embeds`
   * [batch, projectionClassEmbeddingsInputDim − 6·additionTimeEmbedDim] and `time_ids`
   * [batch, 6]. Unset: none.
   */
  additionEmbedType?: 'text_time' | null;
  /** `addition_time_embed_dim` (SDXL: 256): sinusoidal width of each time id */
  additionTimeEmbedDim?: number;
  /** `projection_class_embeddings_input_dim` (SDXL: 2816 = 1280 + 6·256): add_embedding's input width */
  projectionClassEmbeddingsInputDim?: number;
}

/** Number of time ids SDXL conditions on: original size, crop top-left, target size (2 each). */
export const SDXL_TIME_IDS = 6;

/** The `text_embeds` width of a text_time UNet (projection input minus the time-id embeddings). */
export function textEmbedsDim(cfg: UNetConfig): number {
  return cfg.projectionClassEmbeddingsInputDim! - SDXL_TIME_IDS * cfg.additionTimeEmbedDim!;
}

/** Transformer blocks per attention at level `i` (down block i, or the mid block for the last). */
export function layersAt(cfg: UNetConfig, i: number): number {
  const t = cfg.transformerLayersPerBlock ?? 1;
  return Array.isArray(t) ? t[i]! : t;
}

export interface UNetBuildOptions {
  opset: 14 | 17;
  fp16: boolean;
  timestepType: TimestepType;
}

export interface BuiltModel {
  ctx: SynthContext;
  params: ParamEntry[];
}

interface UNetState {
  c: SynthContext;
  cfg: UNetConfig;
  temb: string;
  tembAct: string | undefined;
  ehs: string;
}

function headsFor(cfg: UNetConfig, blockIndex: number): number {
  const a = cfg.attentionHeadDim;
  return Array.isArray(a) ? a[blockIndex]! : a;
}

/** ResnetBlock2D with time embedding (diffusers naming: norm1/act/conv1/time_emb_proj/...). */
function resnet(st: UNetState, name: string, x: string, cin: number, cout: number): string {
  const { c, cfg } = st;
  return c.mod(name, () => {
    let h = groupNorm(c, 'norm1', x, cin, cfg.normNumGroups, cfg.normEps);
    h = silu(c, 'act', h);
    h = conv2d(c, 'conv1', h, cin, cout, 3);
    // torch merges the identical SiLU(temb) of every resnet into the first one's `act_1`.
    let secondAct = 'act_1';
    if (st.tembAct === undefined) {
      st.tembAct = silu(c, 'act_1', st.temb);
      secondAct = 'act_2';
    }
    const tembDim = cfg.blockOutChannels[0]! * 4;
    let t = linearGemm(c, 'time_emb_proj', st.tembAct, tembDim, cout);
    t = unsqueezeScoped(c, t, 2);
    t = unsqueezeScoped(c, t, 3);
    h = c.b.op('Add', [h, t]);
    h = groupNorm(c, 'norm2', h, cout, cfg.normNumGroups, cfg.normEps);
    h = silu(c, secondAct, h);
    h = conv2d(c, 'conv2', h, cout, cout, 3);
    const shortcut = cin !== cout ? conv2d(c, 'conv_shortcut', x, cin, cout, 1) : x;
    const sum = c.b.op('Add', [shortcut, h]);
    const one = c.b.constScalar(1, c.ft);
    return c.b.op('Div', [sum, one]);
  });
}

/** BasicTransformerBlock: norm1/attn1 (self), norm2/attn2 (cross), norm3/ff (GEGLU). */
function transformerBlock(st: UNetState, index: number, x: string, dim: number, heads: number): string {
  const { c, cfg } = st;
  const dimHead = dim / heads;
  return c.mod(`transformer_blocks.${index}`, () => {
    const spec = {
      queryDim: dim,
      heads,
      dimHead,
      qkvBias: false,
      upcastSoftmax: false,
      upcastAttention: cfg.upcastAttention,
    };
    const rescale = (v: string): string => c.b.op('Div', [v, c.b.constScalar(1, c.ft)]);
    const n1 = layerNorm(c, 'norm1', x, dim, 1e-5);
    const a1 = c.mod('attn1', () => rescale(attentionCore(c, n1, n1, { ...spec, contextDim: dim })));
    const h1 = c.b.op('Add', [a1, x]);
    const n2 = layerNorm(c, 'norm2', h1, dim, 1e-5);
    const a2 = c.mod('attn2', () =>
      rescale(attentionCore(c, n2, st.ehs, { ...spec, contextDim: cfg.crossAttentionDim })),
    );
    const h2 = c.b.op('Add', [a2, h1]);
    const n3 = layerNorm(c, 'norm3', h2, dim, 1e-5);
    const ff = c.mod('ff', () => {
      const inner = dim * 4;
      const g = c.mod('net.0', () => {
        const p = linear(c, 'proj', n3, dim, inner * 2);
        // hidden, gate = proj.chunk(2, dim=-1)
        const s = c.b.op('Shape', [p]);
        const axis = constVec(c, -1);
        const size = c.b.op('Gather', [s, axis], { axis: int(0) });
        const zero = constVec(c, 0);
        const oneV = constVec(c, 1);
        const plus = c.b.op('Add', [size, oneV]);
        const two = constVec(c, 2);
        const half = c.b.op('Div', [plus, two]);
        const k1 = constVec(c, 1);
        const end0 = c.b.op('Mul', [half, k1]);
        const hidden = c.b.op('Slice', [p, zero, end0, axis]);
        const k2 = constVec(c, 2);
        const end1 = c.b.op('Mul', [half, k2]);
        const gate = c.b.op('Slice', [p, end0, end1, axis]);
        const gg = geluErf(c, gate);
        return c.b.op('Mul', [hidden, gg]);
      });
      return linear(c, 'net.2', g, inner, dim);
    });
    return c.b.op('Add', [ff, h2]);
  });
}

/** Transformer2DModel (SD1: 1×1 conv proj_in/out; SD2/SDXL: linear projections) with `depth` transformer blocks. */
function transformer2d(st: UNetState, name: string, x: string, ch: number, heads: number, depth: number): string {
  const { c, cfg } = st;
  return c.mod(name, () => {
    const batch = dimOf(c, x, 0);
    const height = dimOf(c, x, 2);
    const width = dimOf(c, x, 3);
    const normed = groupNorm(c, 'norm', x, ch, cfg.normNumGroups, 1e-6);
    let h: string;
    let inner: string;
    const flatten = (v: string): string => {
      const t = transpose(c, v, [0, 2, 3, 1]);
      const hw = c.b.op('Mul', [height, width]);
      const cat = c.b.op('Concat', [unsq0(c, batch), unsq0(c, hw), unsq0(c, inner)], { axis: int(0) });
      return reshape(c, t, cat);
    };
    if (cfg.useLinearProjection) {
      inner = dimOf(c, normed, 1);
      h = flatten(normed);
      h = linear(c, 'proj_in', h, ch, ch);
    } else {
      const p = conv2d(c, 'proj_in', normed, ch, ch, 1);
      inner = dimOf(c, p, 1);
      h = flatten(p);
    }
    for (let d = 0; d < depth; d++) h = transformerBlock(st, d, h, ch, heads);
    const unflatten = (v: string): string => {
      const cat = c.b.op(
        'Concat',
        [unsq0(c, batch), unsq0(c, height), unsq0(c, width), unsq0(c, inner)],
        { axis: int(0) },
      );
      const r = reshape(c, v, cat);
      return transpose(c, r, [0, 3, 1, 2]);
    };
    let out: string;
    if (cfg.useLinearProjection) {
      out = unflatten(linear(c, 'proj_out', h, ch, ch));
    } else {
      out = conv2d(c, 'proj_out', unflatten(h), ch, ch, 1);
    }
    return c.b.op('Add', [out, x]);
  });
}

/** `timesteps.expand(sample.shape[0])` as torch records it. */
function expandTimestep(c: SynthContext, timestep: string, sample: string): string {
  const batch = dimOf(c, sample, 0);
  const u = c.b.op('Unsqueeze', [batch, constVec(c, 0)]);
  const cat = c.b.op('Concat', [u], { axis: int(0) });
  const shape = reshape(c, cat, constVec(c, -1));
  const s1 = c.b.op('Shape', [shape]);
  const ones = c.b.op('ConstantOfShape', [s1], {
    value: tensorAttr(constTensor(DataType.INT64, [1], [1])),
  });
  const neg = c.b.op('Mul', [ones, c.b.constInt64(-1)]);
  const eq = c.b.op('Equal', [shape, neg]);
  const where = c.b.op('Where', [eq, ones, shape]);
  return c.b.op('Expand', [timestep, where]);
}

/** Sinusoidal timestep projection (diffusers get_timestep_embedding), flip_sin_to_cos, in module `scope`. */
function timeProj(c: SynthContext, t: string, dim: number, flip: boolean, shift: number, scope = 'time_proj'): string {
  return c.mod(scope, () => {
    const half = dim / 2;
    const u = c.b.op('Unsqueeze', [t, constVec(c, 1)]);
    const f = c.b.op('Cast', [u], { to: int(DataType.FLOAT) });
    const freqs: number[] = [];
    // float32 arithmetic like torch: exp(float32(-ln 10000) · i / (half − shift))
    const f32 = Math.fround;
    const base = f32(-Math.log(10000));
    for (let i = 0; i < half; i++) freqs.push(f32(Math.exp(f32(f32(base * i) / (half - shift)))));
    const exponent = c.b.constant(constTensor(DataType.FLOAT, [1, half], freqs));
    const arg = c.b.op('Mul', [f, exponent]);
    const sin = c.b.op('Sin', [arg]);
    const cos = c.b.op('Cos', [arg]);
    const emb = c.b.op('Concat', [sin, cos], { axis: int(-1) });
    if (!flip) return emb;
    const axes0 = constVec(c, 1);
    const st0 = constVec(c, half);
    const en0 = c.b.constInt64([9223372036854775807n]);
    const step0 = constVec(c, 1);
    const second = c.b.op('Slice', [emb, st0, en0, axes0, step0]);
    const axes1 = constVec(c, 1);
    const st1 = constVec(c, 0);
    const en1 = constVec(c, half);
    const step1 = constVec(c, 1);
    const first = c.b.op('Slice', [emb, st1, en1, axes1, step1]);
    return c.b.op('Concat', [second, first], { axis: int(-1) });
  });
}

export function buildUNet(cfg: UNetConfig, opts: UNetBuildOptions): BuiltModel {
  const c = new SynthContext(opts.opset, opts.fp16);
  const b = c.b;
  const ft = c.ft;
  const boc = cfg.blockOutChannels;
  const sample = b.input('sample', ft, ['batch', 'channels', 'height', 'width']);
  const tsElem = opts.timestepType === 'int64' ? DataType.INT64 : ft;
  const timestep = b.input('timestep', tsElem, opts.timestepType === 'float32-scalar' ? [] : ['batch']);
  const ehs = b.input('encoder_hidden_states', ft, ['batch', 'sequence', cfg.crossAttentionDim]);
  const condDim = cfg.timeCondProjDim ?? null;
  // UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, class_labels, timestep_cond, …)
  const timestepCond = condDim !== null ? b.input('timestep_cond', ft, ['batch', condDim]) : null;
  // added_cond_kwargs of an SDXL UNet (Optimum's input order: after encoder_hidden_states)
  const textTime = cfg.additionEmbedType === 'text_time';
  if (cfg.additionEmbedType != null && !textTime) throw new Error(`buildUNet: addition_embed_type ${String(cfg.additionEmbedType)} is not supported`);
  const textEmbeds = textTime ? b.input('text_embeds', ft, ['batch', textEmbedsDim(cfg)]) : null;
  const timeIds = textTime ? b.input('time_ids', ft, ['batch', SDXL_TIME_IDS]) : null;

  let ts = timestep;
  if (opts.timestepType === 'float32-scalar') ts = b.op('Unsqueeze', [ts, constVec(c, 0)]);
  const expanded = expandTimestep(c, ts, sample);
  const tproj = timeProj(c, expanded, boc[0]!, cfg.flipSinToCos, cfg.freqShift);
  const tcast = b.op('Cast', [tproj], { to: int(ft) });
  const tembDim = boc[0]! * 4;
  const temb = c.mod('time_embedding', () => {
    let x = tcast;
    if (timestepCond !== null) {
      // TimestepEmbedding: `sample = sample + self.cond_proj(condition)`. A bias-free Linear on a
      // 2-D input exports as MatMul on the transposed weight (no Gemm: addmm needs the bias).
      const proj = linear(c, 'cond_proj', timestepCond, condDim!, boc[0]!, false);
      x = b.op('Add', [x, proj]);
    }
    const l1 = linearGemm(c, 'linear_1', x, boc[0]!, tembDim);
    const a = silu(c, 'act', l1);
    return linearGemm(c, 'linear_2', a, tembDim, tembDim);
  });
  let emb = temb;
  if (textEmbeds !== null && timeIds !== null) {
    // diffusers 0.27.2 `get_aug_embed` for text_time: add_time_proj(time_ids.flatten()) reshaped
    // to (B, −1), concatenated after text_embeds, cast to the embedding's dtype, add_embedding.
    const flat = reshape(c, timeIds, constVec(c, -1));
    const tdim = cfg.additionTimeEmbedDim!;
    const timeEmb = timeProj(c, flat, tdim, cfg.flipSinToCos, cfg.freqShift, 'add_time_proj');
    const rowShape = b.op('Concat', [unsq0(c, dimOf(c, textEmbeds, 0)), constVec(c, -1)], { axis: int(0) });
    const rows = reshape(c, timeEmb, rowShape);
    // torch.concat promotes float16 text_embeds with the float32 sinusoids to float32
    const te = ft === DataType.FLOAT ? textEmbeds : b.op('Cast', [textEmbeds], { to: int(DataType.FLOAT) });
    let addEmbeds = b.op('Concat', [te, rows], { axis: int(-1) });
    if (ft !== DataType.FLOAT) addEmbeds = b.op('Cast', [addEmbeds], { to: int(ft) });
    const inDim = cfg.projectionClassEmbeddingsInputDim!;
    const aug = c.mod('add_embedding', () => {
      const l1 = linearGemm(c, 'linear_1', addEmbeds, inDim, tembDim);
      const a = silu(c, 'act', l1);
      return linearGemm(c, 'linear_2', a, tembDim, tembDim);
    });
    emb = b.op('Add', [temb, aug]);
  }
  const st: UNetState = { c, cfg, temb: emb, tembAct: undefined, ehs };

  let h = conv2d(c, 'conv_in', sample, cfg.inChannels, boc[0]!, 3);
  const skips: { name: string; ch: number }[] = [{ name: h, ch: boc[0]! }];

  // down blocks
  let outCh = boc[0]!;
  cfg.downBlockTypes.forEach((type, i) => {
    const inCh = outCh;
    outCh = boc[i]!;
    const isFinal = i === boc.length - 1;
    c.mod(`down_blocks.${i}`, () => {
      for (let j = 0; j < cfg.layersPerBlock; j++) {
        h = resnet(st, `resnets.${j}`, h, j === 0 ? inCh : outCh, outCh);
        if (type === 'CrossAttnDownBlock2D') {
          h = transformer2d(st, `attentions.${j}`, h, outCh, headsFor(cfg, i), layersAt(cfg, i));
        }
        skips.push({ name: h, ch: outCh });
      }
      if (!isFinal) {
        h = c.mod('downsamplers.0', () => conv2d(c, 'conv', h, outCh, outCh, 3, 2, 1));
        skips.push({ name: h, ch: outCh });
      }
    });
  });

  // mid block
  const midCh = boc[boc.length - 1]!;
  c.mod('mid_block', () => {
    h = resnet(st, 'resnets.0', h, midCh, midCh);
    h = transformer2d(st, 'attentions.0', h, midCh, headsFor(cfg, boc.length - 1), layersAt(cfg, boc.length - 1));
    h = resnet(st, 'resnets.1', h, midCh, midCh);
  });

  // up blocks
  const rev = [...boc].reverse();
  const revHeads = boc.map((_, i) => headsFor(cfg, i)).reverse();
  const revLayers = boc.map((_, i) => layersAt(cfg, i)).reverse();
  let upOut = rev[0]!;
  cfg.upBlockTypes.forEach((type, i) => {
    const prevOut = upOut;
    upOut = rev[i]!;
    const isFinal = i === boc.length - 1;
    c.mod(`up_blocks.${i}`, () => {
      for (let j = 0; j <= cfg.layersPerBlock; j++) {
        const skip = skips.pop()!;
        const cat = b.op('Concat', [h, skip.name], { axis: int(1) });
        const resIn = j === 0 ? prevOut : upOut;
        h = resnet(st, `resnets.${j}`, cat, resIn + skip.ch, upOut);
        if (type === 'CrossAttnUpBlock2D') {
          h = transformer2d(st, `attentions.${j}`, h, upOut, revHeads[i]!, revLayers[i]!);
        }
      }
      if (!isFinal) {
        h = c.mod('upsamplers.0', () => conv2d(c, 'conv', resizeNearest2x(c, h), upOut, upOut, 3));
      }
    });
  });

  h = groupNorm(c, 'conv_norm_out', h, boc[0]!, cfg.normNumGroups, cfg.normEps);
  h = silu(c, 'act', h);
  conv2d(c, 'conv_out', h, boc[0]!, cfg.outChannels, 3, 1, 1, 'out_sample');
  b.output('out_sample', ft, ['batch', cfg.outChannels, 'height', 'width']);
  return { ctx: c, params: c.finish() };
}

/** A UNetConfig from a diffusers UNet2DConditionModel config.json (the fields SD 1.x/2.x use). */
export function unetConfigFromDiffusers(json: Record<string, unknown>): UNetConfig {
  const get = <T>(key: string, fallback?: T): T => {
    const v = json[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) throw new Error(`UNet config: missing ${key}`);
      return fallback;
    }
    return v as T;
  };
  return {
    sampleSize: get<number>('sample_size', 64),
    inChannels: get<number>('in_channels', 4),
    outChannels: get<number>('out_channels', 4),
    blockOutChannels: get<number[]>('block_out_channels'),
    downBlockTypes: get<DownBlockType[]>('down_block_types'),
    upBlockTypes: get<UpBlockType[]>('up_block_types'),
    layersPerBlock: get<number>('layers_per_block', 2),
    crossAttentionDim: get<number>('cross_attention_dim'),
    attentionHeadDim: get<number | number[]>('attention_head_dim', 8),
    normNumGroups: get<number>('norm_num_groups', 32),
    normEps: get<number>('norm_eps', 1e-5),
    useLinearProjection: get<boolean>('use_linear_projection', false),
    upcastAttention: get<boolean>('upcast_attention', false),
    flipSinToCos: get<boolean>('flip_sin_to_cos', true),
    freqShift: get<number>('freq_shift', 0),
    timeCondProjDim: (json['time_cond_proj_dim'] as number | null | undefined) ?? null,
    ...sdxlFieldsFromDiffusers(json),
  };
}

/** The SDXL fields of a diffusers UNet config (transformer depth per level, text_time addition). */
function sdxlFieldsFromDiffusers(json: Record<string, unknown>): Partial<UNetConfig> {
  const out: Partial<UNetConfig> = {};
  const t = json['transformer_layers_per_block'];
  if (t !== undefined && t !== null) {
    const ok = typeof t === 'number' || (Array.isArray(t) && t.every((v) => typeof v === 'number'));
    if (!ok) throw new Error('UNet config: transformer_layers_per_block must be a number or a list of numbers');
    out.transformerLayersPerBlock = t as number | number[];
  }
  if (json['reverse_transformer_layers_per_block'] != null) {
    throw new Error('UNet config: reverse_transformer_layers_per_block is not supported');
  }
  const a = json['addition_embed_type'];
  if (a !== undefined && a !== null) {
    if (a !== 'text_time') throw new Error(`UNet config: addition_embed_type ${JSON.stringify(a)} is not supported`);
    const tdim = json['addition_time_embed_dim'];
    const pdim = json['projection_class_embeddings_input_dim'];
    if (typeof tdim !== 'number' || typeof pdim !== 'number') {
      throw new Error('UNet config: text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim');
    }
    out.additionEmbedType = 'text_time';
    out.additionTimeEmbedDim = tdim;
    out.projectionClassEmbeddingsInputDim = pdim;
  }
  return out;
}

/** The diffusers config.json for a UNet built from `cfg`. */
export function unetConfigJson(cfg: UNetConfig): Record<string, unknown> {
  return {
    _class_name: 'UNet2DConditionModel',
    _diffusers_version: '0.27.2',
    act_fn: 'silu',
    attention_head_dim: cfg.attentionHeadDim,
    block_out_channels: cfg.blockOutChannels,
    center_input_sample: false,
    cross_attention_dim: cfg.crossAttentionDim,
    down_block_types: cfg.downBlockTypes,
    downsample_padding: 1,
    dual_cross_attention: false,
    flip_sin_to_cos: cfg.flipSinToCos,
    freq_shift: cfg.freqShift,
    in_channels: cfg.inChannels,
    layers_per_block: cfg.layersPerBlock,
    mid_block_scale_factor: 1,
    mid_block_type: 'UNetMidBlock2DCrossAttn',
    norm_eps: cfg.normEps,
    norm_num_groups: cfg.normNumGroups,
    num_attention_heads: null,
    only_cross_attention: false,
    out_channels: cfg.outChannels,
    resnet_time_scale_shift: 'default',
    sample_size: cfg.sampleSize,
    time_embedding_type: 'positional',
    transformer_layers_per_block: 1,
    up_block_types: cfg.upBlockTypes,
    upcast_attention: cfg.upcastAttention,
    use_linear_projection: cfg.useLinearProjection,
    // written only when set, so that the configs of plain SD folders stay as they were
    ...(cfg.timeCondProjDim != null ? { time_cond_proj_dim: cfg.timeCondProjDim } : {}),
    ...(cfg.transformerLayersPerBlock !== undefined ? { transformer_layers_per_block: cfg.transformerLayersPerBlock } : {}),
    ...(cfg.additionEmbedType === 'text_time'
      ? {
          addition_embed_type: 'text_time',
          addition_embed_type_num_heads: 64,
          addition_time_embed_dim: cfg.additionTimeEmbedDim,
          projection_class_embeddings_input_dim: cfg.projectionClassEmbeddingsInputDim,
        }
      : {}),
  };
}
