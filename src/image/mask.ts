/**
 * Inpainting masks (white = repaint), pure pixel logic:
 *
 * - `toGray`: decoded pixels → one 8-bit channel the way PIL's `convert('L')` does it (ITU-R
 *   601-2 luma in PIL's fixed point; an alpha channel is ignored), which is what diffusers'
 *   mask processor and A1111 do with an RGB mask.
 * - `invertMask` (`--invert-mask`, A1111's "Inpaint not masked"): 255 − v.
 * - `blurMask` (`--mask-blur N`, A1111's mask blur): a Gaussian blur of σ = N, horizontal then
 *   vertical, kernel size 2·int(2.5·N + 0.5) + 1 and mirrored borders (reflect-101), as A1111
 *   runs cv2.GaussianBlur; float arithmetic rounded to 8 bits at each pass (OpenCV's 8-bit path
 *   rounds in fixed point, so a value may differ by one level). N = 0 leaves the mask alone
 *   (diffusers).
 * - diffusers 0.27.2's StableDiffusionInpaintPipeline with a 4-channel UNet: the mask /255,
 *   binarized at 0.5 (`binarizeMask`: v ≥ 128); the masked image = init·(mask < 0.5)
 *   (`maskImageInput`, in the encoder's [−1, 1] space, so repainted pixels become 0 = mid grey);
 *   the latent mask = torch's nearest interpolation to the latent size, i.e. mask pixel (8i, 8j)
 *   for a VAE scale factor of 8 (`latentMask`).
 * - `overlayInit`: A1111's overlay after decoding (used with a blurred mask): the init image
 *   pasted back over the result through the blurred mask as alpha, so only the masked area
 *   changes and its border fades. diffusers returns the plain decode (mask blur 0).
 */

/** PIL's RGB → L: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16. */
export function toGray(pixels: Uint8Array, width: number, height: number, channels: number): Uint8Array {
  const n = width * height;
  if (pixels.length !== n * channels) throw new Error(`toGray: ${pixels.length} bytes for ${width}×${height}×${channels}`);
  const out = new Uint8Array(n);
  if (channels === 1 || channels === 2) {
    for (let i = 0; i < n; i++) out[i] = pixels[i * channels]!;
    return out;
  }
  if (channels !== 3 && channels !== 4) throw new Error(`toGray: ${channels} channels`);
  for (let i = 0; i < n; i++) {
    const p = i * channels;
    out[i] = (pixels[p]! * 19595 + pixels[p + 1]! * 38470 + pixels[p + 2]! * 7471 + 0x8000) >>> 16;
  }
  return out;
}

export function invertMask(gray: Uint8Array): Uint8Array {
  return gray.map((v) => 255 - v);
}

/** cv2.getGaussianKernel(size, sigma): normalized exp(−(i − (size−1)/2)² / (2σ²)). */
export function gaussianKernel(size: number, sigma: number): Float64Array {
  const k = new Float64Array(size);
  const c = (size - 1) / 2;
  let sum = 0;
  for (let i = 0; i < size; i++) {
    k[i] = Math.exp(-((i - c) ** 2) / (2 * sigma * sigma));
    sum += k[i]!;
  }
  for (let i = 0; i < size; i++) k[i]! /= sum;
  return k;
}

/** Reflect-101 border index (…, 2, 1 | 0, 1, 2, …, n−1 | n−2, …). */
function reflect101(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  let j = ((i % period) + period) % period;
  if (j >= n) j = period - j;
  return j;
}

/** A1111's mask blur with σ = `radius` (horizontal pass, then vertical). radius 0: a copy. */
export function blurMask(gray: Uint8Array, width: number, height: number, radius: number): Uint8Array {
  if (!(radius >= 0) || !Number.isFinite(radius)) throw new Error(`mask blur must be ≥ 0 (got ${radius})`);
  if (radius === 0) return gray.slice();
  const size = 2 * Math.floor(2.5 * radius + 0.5) + 1;
  const k = gaussianKernel(size, radius);
  const half = (size - 1) / 2;
  const pass = (src: Uint8Array, horizontal: boolean): Uint8Array => {
    const dst = new Uint8Array(src.length);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let acc = 0;
        for (let t = 0; t < size; t++) {
          const o = t - half;
          const v = horizontal ? src[y * width + reflect101(x + o, width)]! : src[reflect101(y + o, height) * width + x]!;
          acc += k[t]! * v;
        }
        dst[y * width + x] = Math.min(255, Math.max(0, Math.round(acc)));
      }
    }
    return dst;
  };
  return pass(pass(gray, true), false);
}

/** diffusers' binarized mask: 1 where gray/255 ≥ 0.5 (gray ≥ 128), else 0. */
export function binarizeMask(gray: Uint8Array): Uint8Array {
  return gray.map((v) => (v >= 128 ? 1 : 0));
}

/**
 * The latent mask [1, 1, H/scale, W/scale] (float32 0/1): torch's nearest interpolation of the
 * binarized mask, i.e. pixel (scale·i, scale·j).
 */
export function latentMask(binary: Uint8Array, width: number, height: number, scale: number): Float32Array {
  if (width % scale !== 0 || height % scale !== 0) throw new Error(`latentMask: ${width}×${height} is not a multiple of ${scale}`);
  const lw = width / scale;
  const lh = height / scale;
  const out = new Float32Array(lw * lh);
  for (let i = 0; i < lh; i++) for (let j = 0; j < lw; j++) out[i * lw + j] = binary[i * scale * width + j * scale]!;
  return out;
}

/**
 * The masked image as the encoder takes it: `input` [1, 3, H, W] in [−1, 1] times (mask < 0.5),
 * i.e. zeroed where the binarized mask repaints.
 */
export function maskImageInput(input: Float32Array, binary: Uint8Array): Float32Array {
  const plane = binary.length;
  if (input.length !== 3 * plane) throw new Error(`maskImageInput: ${input.length} values for a ${plane}-pixel mask`);
  const out = new Float32Array(input.length);
  for (let c = 0; c < 3; c++) for (let p = 0; p < plane; p++) out[c * plane + p] = binary[p] ? 0 : input[c * plane + p]!;
  return out;
}

/**
 * A1111's overlay: result = init·(1 − α) + generated·α per pixel with α = mask/255 (the blurred
 * mask), rounded to 8 bits. RGB row-major buffers of one size.
 */
export function overlayInit(generated: Uint8Array, init: Uint8Array, gray: Uint8Array): Uint8Array {
  if (generated.length !== init.length || generated.length !== gray.length * 3) throw new Error('overlayInit: sizes differ');
  const out = new Uint8Array(generated.length);
  for (let p = 0; p < gray.length; p++) {
    const a = gray[p]! / 255;
    for (let c = 0; c < 3; c++) {
      const i = p * 3 + c;
      out[i] = Math.round(init[i]! * (1 - a) + generated[i]! * a);
    }
  }
  return out;
}
