/**
 * diffusers `AutoencoderKL` encoder half in the layout of Optimum's export (`vae_encoder`):
 * encoder.conv_in → down blocks (layers_per_block resnets; a stride-2 convolution on the
 * input padded by one row and column at the bottom and right, except the last block) → mid
 * block (resnet, single-head attention, resnet) → conv_norm_out/SiLU/conv_out (2 × latent
 * channels: mean and log-variance) → quant_conv → `latent_parameters`. sdgen samples
 * `mean + exp(0.5·logvar)·randn` itself and applies the scaling factor. Pure logic, no I/O.
 */
import { SynthContext } from './context.js';
import type { BuiltModel } from './unet.js';
import { conv2d, groupNorm, silu } from './layers.js';
import { vaeAttention, vaeResnet, type VaeBuildOptions, type VaeConfig } from './vae-decoder.js';

export function buildVaeEncoder(cfg: VaeConfig, opts: VaeBuildOptions): BuiltModel {
  const c = new SynthContext(opts.opset, opts.fp16);
  const b = c.b;
  const boc = cfg.blockOutChannels;
  const sample = b.input('sample', c.ft, ['batch', cfg.outChannels, 'height', 'width']);
  let h = sample;
  c.mod('encoder', () => {
    h = conv2d(c, 'conv_in', h, cfg.outChannels, boc[0]!, 3);
    let out = boc[0]!;
    boc.forEach((ch, i) => {
      const prev = out;
      out = ch;
      c.mod(`down_blocks.${i}`, () => {
        for (let j = 0; j < cfg.layersPerBlock; j++) h = vaeResnet(c, cfg, `resnets.${j}`, h, j === 0 ? prev : out, out);
        if (i !== boc.length - 1) {
          h = c.mod('downsamplers.0', () => conv2d(c, 'conv', h, out, out, 3, 2, [0, 0, 1, 1]));
        }
      });
    });
    const top = boc[boc.length - 1]!;
    c.mod('mid_block', () => {
      h = vaeResnet(c, cfg, 'resnets.0', h, top, top);
      h = vaeAttention(c, cfg, h, top);
      h = vaeResnet(c, cfg, 'resnets.1', h, top, top);
    });
    h = groupNorm(c, 'conv_norm_out', h, top, cfg.normNumGroups, 1e-6);
    h = silu(c, 'conv_act', h);
    h = conv2d(c, 'conv_out', h, top, 2 * cfg.latentChannels, 3);
  });
  conv2d(c, 'quant_conv', h, 2 * cfg.latentChannels, 2 * cfg.latentChannels, 1, 1, 0, 'latent_parameters');
  b.output('latent_parameters', c.ft, ['batch', 2 * cfg.latentChannels, 'height_latent', 'width_latent']);
  return { ctx: c, params: c.finish() };
}
