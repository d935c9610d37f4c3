/**
 * diffusers `AutoencoderKL` decoder half as the diffusers ONNX script exports it (`vae_decoder`):
 * post_quant_conv → decoder.conv_in → mid block (resnet, single-head attention with its own
 * GroupNorm and residual, resnet) → up blocks (layers_per_block + 1 resnets, nearest ×2 upsample
 * except the last) → conv_norm_out/SiLU/conv_out → `sample`. The 1/0.18215 latent scaling is not
 * part of the graph. Pure logic, no I/O.
 */
import { int } from '../onnx/builder.js';
import { SynthContext } from './context.js';
import { attentionCore } from './attention.js';
import type { BuiltModel } from './unet.js';
import { conv2d, dimOf, groupNorm, reshape, resizeNearest2x, silu, transpose, unsq0 } from './layers.js';

export interface VaeConfig {
  blockOutChannels: number[];
  layersPerBlock: number;
  latentChannels: number;
  outChannels: number;
  normNumGroups: number;
  sampleSize: number;
  scalingFactor: number;
}

export interface VaeBuildOptions {
  opset: 14 | 17;
  fp16: boolean;
}

export function vaeResnet(c: SynthContext, cfg: VaeConfig, name: string, x: string, cin: number, cout: number): string {
  return c.mod(name, () => {
    let h = groupNorm(c, 'norm1', x, cin, cfg.normNumGroups, 1e-6);
    h = silu(c, 'nonlinearity', h);
    h = conv2d(c, 'conv1', h, cin, cout, 3);
    h = groupNorm(c, 'norm2', h, cout, cfg.normNumGroups, 1e-6);
    h = silu(c, 'nonlinearity_1', h);
    h = conv2d(c, 'conv2', h, cout, cout, 3);
    const shortcut = cin !== cout ? conv2d(c, 'conv_shortcut', x, cin, cout, 1) : x;
    const sum = c.b.op('Add', [shortcut, h]);
    return c.b.op('Div', [sum, c.b.constScalar(1, c.ft)]);
  });
}

export function vaeAttention(c: SynthContext, cfg: VaeConfig, x: string, ch: number): string {
  return c.mod('attentions.0', () => {
    const batch = dimOf(c, x, 0);
    const channel = dimOf(c, x, 1);
    const height = dimOf(c, x, 2);
    const width = dimOf(c, x, 3);
    const hw = c.b.op('Mul', [height, width]);
    const cat = c.b.op('Concat', [unsq0(c, batch), unsq0(c, channel), unsq0(c, hw)], { axis: int(0) });
    const flat = reshape(c, x, cat);
    const seqFirst = transpose(c, flat, [0, 2, 1]);
    const batch2 = dimOf(c, seqFirst, 0);
    const normed = groupNorm(c, 'group_norm', flat, ch, cfg.normNumGroups, 1e-6, 3);
    const h = transpose(c, normed, [0, 2, 1]);
    const out = attentionCore(c, h, h, {
      queryDim: ch,
      contextDim: ch,
      heads: 1,
      dimHead: ch,
      qkvBias: true,
      upcastSoftmax: true,
      upcastAttention: false,
    });
    const t = transpose(c, out, [0, 2, 1]);
    const back = c.b.op(
      'Concat',
      [unsq0(c, batch2), unsq0(c, channel), unsq0(c, height), unsq0(c, width)],
      { axis: int(0) },
    );
    const r = reshape(c, t, back);
    const res = c.b.op('Add', [r, x]);
    return c.b.op('Div', [res, c.b.constScalar(1, c.ft)]);
  });
}

export function buildVaeDecoder(cfg: VaeConfig, opts: VaeBuildOptions): BuiltModel {
  const c = new SynthContext(opts.opset, opts.fp16);
  const b = c.b;
  const boc = cfg.blockOutChannels;
  const latent = b.input('latent_sample', c.ft, ['batch', 'channels', 'height', 'width']);
  let h = conv2d(c, 'post_quant_conv', latent, cfg.latentChannels, cfg.latentChannels, 1);
  c.mod('decoder', () => {
    const top = boc[boc.length - 1]!;
    h = conv2d(c, 'conv_in', h, cfg.latentChannels, top, 3);
    c.mod('mid_block', () => {
      h = vaeResnet(c, cfg, 'resnets.0', h, top, top);
      h = vaeAttention(c, cfg, h, top);
      h = vaeResnet(c, cfg, 'resnets.1', h, top, top);
    });
    h = b.op('Cast', [h], { to: int(c.ft) });
    const rev = [...boc].reverse();
    let out = rev[0]!;
    rev.forEach((_, i) => {
      const prev = out;
      out = rev[i]!;
      c.mod(`up_blocks.${i}`, () => {
        for (let j = 0; j <= cfg.layersPerBlock; j++) {
          h = vaeResnet(c, cfg, `resnets.${j}`, h, j === 0 ? prev : out, out);
        }
        if (i !== rev.length - 1) {
          h = c.mod('upsamplers.0', () => conv2d(c, 'conv', resizeNearest2x(c, h), out, out, 3));
        }
      });
    });
    h = groupNorm(c, 'conv_norm_out', h, boc[0]!, cfg.normNumGroups, 1e-6);
    h = silu(c, 'conv_act', h);
    conv2d(c, 'conv_out', h, boc[0]!, cfg.outChannels, 3, 1, 1, 'sample');
  });
  b.output('sample', c.ft, ['batch', cfg.outChannels, 'height_out', 'width_out']);
  return { ctx: c, params: c.finish() };
}

export function vaeConfigJson(cfg: VaeConfig): Record<string, unknown> {
  const n = cfg.blockOutChannels.length;
  return {
    _class_name: 'AutoencoderKL',
    _diffusers_version: '0.27.2',
    act_fn: 'silu',
    block_out_channels: cfg.blockOutChannels,
    down_block_types: new Array<string>(n).fill('DownEncoderBlock2D'),
    force_upcast: true,
    in_channels: 3,
    latent_channels: cfg.latentChannels,
    latents_mean: null,
    latents_std: null,
    layers_per_block: cfg.layersPerBlock,
    norm_num_groups: cfg.normNumGroups,
    out_channels: cfg.outChannels,
    sample_size: cfg.sampleSize,
    scaling_factor: cfg.scalingFactor,
    up_block_types: new Array<string>(n).fill('UpDecoderBlock2D'),
  };
}
