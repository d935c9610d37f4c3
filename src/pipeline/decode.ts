/**
 * Latents → uint8 RGB through the VAE decoder, converted exactly as diffusers does:
 * `latents / scaling_factor` → decoder → `(x / 2 + 0.5)` clamped to [0, 1] → ×255 → round half
 * to even (numpy's round), every operation in float32.
 */
import ort from 'onnxruntime-node';
import { SdgenError } from '../errors.js';
import { ortErrorMessage } from '../models/ort-log.js';
import type { VaeDecoderIO } from '../models/io.js';
import { FloatInput, toFloat32 } from './tensors.js';

/** Round half to even (numpy.round / torch.round) for non-negative finite values. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Decoder output [1, 3, H, W] (float32, NCHW) → RGB uint8 [H, W, 3], diffusers' conversion.
 */
export function decodedToRgb(x: Float32Array, width: number, height: number, out?: Uint8Array): Uint8Array {
  const plane = width * height;
  if (x.length !== 3 * plane) throw new Error(`decodedToRgb: expected ${3 * plane} values, got ${x.length}`);
  const rgb = out ?? new Uint8Array(plane * 3);
  for (let c = 0; c < 3; c++) {
    const base = c * plane;
    for (let p = 0; p < plane; p++) {
      let v = Math.fround(Math.fround(x[base + p]! / 2) + 0.5);
      if (!(v > 0)) v = 0; // also maps NaN to 0, as clamp + uint8 cast of 0
      else if (v > 1) v = 1;
      rgb[p * 3 + c] = roundHalfEven(Math.fround(v * 255));
    }
  }
  return rgb;
}

export class VaeDecoder {
  constructor(
    private readonly session: ort.InferenceSession,
    readonly io: VaeDecoderIO,
    readonly scalingFactor: number,
  ) {}

  /** Decode one image's latents [1,4,h,w] to RGB (width = w·scale, height = h·scale). */
  async decode(latents: Float32Array, latentHeight: number, latentWidth: number): Promise<{ rgb: Uint8Array; width: number; height: number }> {
    const input = new FloatInput(this.io.latent.type, [1, 4, latentHeight, latentWidth]);
    const sf = Math.fround(this.scalingFactor);
    for (let i = 0; i < latents.length; i++) input.data[i] = Math.fround(latents[i]! / sf);
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.session.run({ [this.io.latent.name]: input.sync() }, [this.io.output.name]);
    } catch (err) {
      throw new SdgenError(`vae decoder failed: ${ortErrorMessage(err)}`, { cause: err });
    }
    const t = out[this.io.output.name] as ort.Tensor;
    const dims = t.dims;
    if (dims.length !== 4 || dims[0] !== 1 || dims[1] !== 3) {
      throw new SdgenError(`vae decoder: output "${this.io.output.name}" has shape [${dims.join(', ')}]; expected [1, 3, H, W]`);
    }
    const height = dims[2]!;
    const width = dims[3]!;
    const rgb = decodedToRgb(toFloat32(t), width, height);
    t.dispose?.();
    return { rgb, width, height };
  }
}
