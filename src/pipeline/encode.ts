/**
 * The VAE encoder stage of img2img, inpainting and pixel-space hires fix: an RGB u8 picture →
 * [−1, 1] → encoder → the latent distribution's parameters (mean|logvar, Optimum's
 * `latent_parameters`, or what src/optimize/encoder-params.ts rewrites an old diffusers export
 * into) → a sample `mean + std·randn` drawn from the image's TorchGenerator → × scaling factor,
 * every operation in float32 as diffusers 0.27.2 does it (DiagonalGaussianDistribution: logvar
 * clamped to [−30, 20], std = exp(½·logvar); `retrieve_latents(vae.encode(x), generator)`
 * then `scaling_factor · latents`).
 *
 * An encoder that samples inside its graph (not rewritable) still gets a randn draw of the
 * latent's shape from the image's generator, discarded, so that the draws after it (the start
 * noise, the sampler's noise) are diffusers'; its own sample is random on every run.
 */
import ort from 'onnxruntime-node';
import { SdgenError } from '../errors.js';
import type { FloatType } from '../models/io.js';
import type { SessionInfo } from '../models/session.js';
import type { RandomSource } from '../random/types.js';
import { LATENT_PARAMETERS } from '../optimize/encoder-params.js';
import { rgbToEncoderInput, type RgbImage } from '../image/init-image.js';
import { FloatInput, toFloat32 } from './tensors.js';
import { exceedsTile, tiledApply, type TileSpec } from './tiling.js';

export interface VaeEncoderIO {
  input: { name: string; type: FloatType };
  output: { name: string; type: FloatType };
  /** 'parameters': mean|logvar on channels; 'sample': a sample drawn inside the graph */
  kind: 'parameters' | 'sample';
}

/** The encoder's I/O from its session metadata; SdgenError naming what does not fit. */
export function vaeEncoderIO(info: SessionInfo, what = 'vae encoder'): VaeEncoderIO {
  const input = info.inputs.find((v) => v.name === 'sample') ?? (info.inputs.length === 1 ? info.inputs[0] : undefined);
  if (!input) throw new SdgenError(`${what}: no "sample" input (inputs: ${info.inputs.map((v) => v.name).join(', ')})`);
  if (info.inputs.length !== 1) throw new SdgenError(`${what}: ${info.inputs.length} inputs; expected one image input "sample"`);
  if (input.shape.length !== 4) throw new SdgenError(`${what}: input "${input.name}" has rank ${input.shape.length}; expected 4 [B,3,H,W]`);
  const out = info.outputs.find((v) => v.name === LATENT_PARAMETERS) ?? info.outputs.find((v) => v.name === 'latent_sample') ?? info.outputs[0];
  if (!out) throw new SdgenError(`${what}: no outputs`);
  const ft = (t: string, name: string): FloatType => {
    if (t === 'float32' || t === 'float16') return t;
    throw new SdgenError(`${what}: "${name}" has element type ${t}; expected float32 or float16`);
  };
  return {
    input: { name: input.name, type: ft(input.type, input.name) },
    output: { name: out.name, type: ft(out.type, out.name) },
    kind: out.name === LATENT_PARAMETERS ? 'parameters' : 'sample',
  };
}

/** The diagonal Gaussian of an encoding: mean and std, [1, C, h, w] each. */
export interface LatentDistribution {
  mean: Float32Array;
  std: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/**
 * diffusers' DiagonalGaussianDistribution from `latent_parameters` [1, 2C, h, w]: mean = the
 * first C channels, logvar = the rest clamped to [−30, 20], std = exp(½·logvar) (float32).
 */
export function latentDistribution(params: Float32Array, channels2: number, height: number, width: number): LatentDistribution {
  if (channels2 % 2 !== 0) throw new SdgenError(`vae encoder: ${channels2} output channels; expected mean and logvar (an even count)`);
  const plane = height * width;
  if (params.length !== channels2 * plane) throw new Error(`latentDistribution: ${params.length} values for [1, ${channels2}, ${height}, ${width}]`);
  const c = channels2 / 2;
  const n = c * plane;
  const mean = params.slice(0, n);
  const std = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let lv = params[n + i]!;
    if (lv < -30) lv = -30;
    else if (lv > 20) lv = 20;
    std[i] = Math.fround(Math.exp(Math.fround(0.5 * lv)));
  }
  return { mean, std, channels: c, height, width };
}

/**
 * A sample of the distribution drawn from `generator` (one randn of the latent's shape, diffusers'
 * `mean + std·randn`), times `scalingFactor` (float32: scaling_factor · sample).
 */
export function sampleLatents(dist: LatentDistribution, generator: RandomSource, scalingFactor: number): Float32Array {
  const n = dist.mean.length;
  const noise = generator.randn([1, dist.channels, dist.height, dist.width]);
  const sf = Math.fround(scalingFactor);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.fround(sf * Math.fround(dist.mean[i]! + Math.fround(dist.std[i]! * noise[i]!)));
  return out;
}

export class VaeEncoder {
  /** tiles for large pictures (diffusers' tiled_encode), null: one pass (see tiling.ts) */
  tiling: TileSpec | null = null;

  constructor(
    private readonly session: ort.InferenceSession,
    readonly io: VaeEncoderIO,
    readonly scalingFactor: number,
    /** the VAE's downsampling factor (8 for SD) */
    readonly scale: number = 8,
  ) {}

  /**
   * Runs the encoder on an input [1, 3, H, W] in [−1, 1] (tile by tile when `tiling` is set and
   * the picture is larger than a tile); returns its output and its channel count.
   */
  async run(input: Float32Array, width: number, height: number): Promise<{ data: Float32Array; channels: number; height: number; width: number }> {
    if (this.tiling && exceedsTile(this.tiling, height, width)) {
      const r = await tiledApply({ data: input, c: 3, h: height, w: width }, this.tiling, async (t) => {
        const o = await this.runOnce(t.data, t.w, t.h);
        return { data: o.data, c: o.channels, h: o.height, w: o.width };
      });
      return { data: r.data, channels: r.c, height: r.h, width: r.w };
    }
    return this.runOnce(input, width, height);
  }

  private async runOnce(input: Float32Array, width: number, height: number): Promise<{ data: Float32Array; channels: number; height: number; width: number }> {
    const x = new FloatInput(this.io.input.type, [1, 3, height, width]);
    if (input.length !== x.data.length) throw new Error(`vae encoder: ${input.length} input values for ${width}×${height}`);
    x.data.set(input);
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.session.run({ [this.io.input.name]: x.sync() }, [this.io.output.name]);
    } catch (err) {
      throw new SdgenError(`vae encoder failed: ${(err as Error).message.split('\n')[0]}`, { cause: err });
    }
    const t = out[this.io.output.name] as ort.Tensor;
    const dims = t.dims;
    if (dims.length !== 4 || dims[0] !== 1) {
      throw new SdgenError(`vae encoder: output "${this.io.output.name}" has shape [${dims.join(', ')}]; expected [1, C, h, w]`);
    }
    const data = toFloat32(t).slice();
    t.dispose?.();
    return { data, channels: dims[1]!, height: dims[2]!, width: dims[3]! };
  }

  /** The latent distribution of an input [1, 3, H, W] in [−1, 1] (an encoder that outputs parameters). */
  async distribution(input: Float32Array, width: number, height: number): Promise<LatentDistribution> {
    if (this.io.kind !== 'parameters') throw new Error('vae encoder: this export outputs a sample, not the distribution');
    const r = await this.run(input, width, height);
    return latentDistribution(r.data, r.channels, r.height, r.width);
  }

  /**
   * Scaled latents of an input [1, 3, H, W] in [−1, 1], sampled with `generator` (diffusers'
   * `scaling_factor · vae.encode(x).latent_dist.sample(generator)`).
   */
  async encodeInput(input: Float32Array, width: number, height: number, generator: RandomSource): Promise<Float32Array> {
    if (this.io.kind === 'parameters') return sampleLatents(await this.distribution(input, width, height), generator, this.scalingFactor);
    const r = await this.run(input, width, height);
    // the graph sampled already; the draw diffusers makes here is made and dropped (see header)
    generator.randn([1, r.channels, r.height, r.width]);
    const sf = Math.fround(this.scalingFactor);
    return r.data.map((v) => Math.fround(sf * v));
  }

  /** Scaled latents of an RGB picture (its size must be a multiple of the VAE's scale). */
  async encode(img: RgbImage, generator: RandomSource): Promise<Float32Array> {
    return this.encodeInput(rgbToEncoderInput(img), img.width, img.height, generator);
  }
}
