/**
 * img2img and inpainting around the ordinary denoising loop, as diffusers 0.27.2's
 * StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline do them, per image with the
 * image's own generator:
 *
 * - img2img: the init picture's encoder sample (draw 1) × scaling factor, then the start noise
 *   (draw 2), start latents = add_noise(init latents, noise, first timestep run), then the
 *   tail of the schedule (src/schedulers/img2img.ts). Hires fix's second pass is the same with
 *   the upscaled latents given directly (no encoder, no draw 1).
 * - inpainting: the init picture's sample (draw 1; skipped by a 9-channel UNet at strength 1,
 *   which does not need it), the start noise (draw 2) — at strength 1 the start latents are that
 *   noise × init_noise_sigma, else add_noise as img2img —, then the masked picture's sample
 *   (draw 3, made even by a 4-channel UNet, which does not use it: the sampler's draws come
 *   after it). A 4-channel UNet's latents are blended after every scheduler step:
 *   (1 − m)·add_noise(init latents, start noise, next timestep) + m·latents (the clean init
 *   latents after the last step), m the latent mask; a 9-channel UNet takes [latents, mask,
 *   masked-picture latents] on its input channels instead.
 *
 * The loop itself is denoiseBatch's: TailScheduler is the Scheduler it is given, which runs
 * the schedule's tail from diffusers' begin index and applies the blend after each step.
 */
import { UsageError } from '../errors.js';
import type { Scheduler } from '../schedulers/types.js';
import type { RandomSource } from '../random/types.js';
import { addNoise, startMidSchedule, truncatedSchedule, type TruncatedSchedule } from '../schedulers/img2img.js';
import type { VaeEncoder } from './encode.js';
import { rgbToEncoderInput, type RgbImage } from '../image/init-image.js';
import { binarizeMask, blurMask, invertMask, latentMask, maskImageInput } from '../image/mask.js';
import { loadInitImage, loadMask } from '../image/init-image.js';

/** The inpainting blend of a 4-channel UNet (see the header). */
export interface InpaintBlend {
  /** the clean init latents (scaled), [1, 4, h, w] */
  initLatents: Float32Array;
  /** the start noise, [1, 4, h, w] */
  noise: Float32Array;
  /** latent mask, [h·w] (1 = repaint) */
  mask: Float32Array;
}

/**
 * A scheduler set up for N steps that runs only the tail an img2img run of some strength takes
 * (its `timesteps` are the tail; the wrapped scheduler keeps all N and starts at the tail's
 * begin index), with the inpainting blend after each step when given.
 */
export class TailScheduler implements Scheduler {
  readonly timesteps: number[];
  private calls = 0;
  private proper: Float32Array | null = null;

  constructor(
    readonly inner: Scheduler,
    readonly tail: TruncatedSchedule,
    /** the inpainting blend after each step (set once the start latents are known) */
    public blend: InpaintBlend | null = null,
  ) {
    this.timesteps = tail.timesteps;
    startMidSchedule(inner, tail.beginIndex);
  }

  /** Set up `steps` steps of `inner` and take the tail of `strength`. */
  static create(inner: Scheduler, steps: number, strength: number, blend: InpaintBlend | null = null): TailScheduler {
    inner.setTimesteps(steps);
    return new TailScheduler(inner, truncatedSchedule(inner, steps, strength), blend);
  }

  get name(): string {
    return this.inner.name;
  }

  get initNoiseSigma(): number {
    return this.inner.initNoiseSigma;
  }

  /** Position in the inner scheduler's timesteps of the tail's k-th timestep. */
  indexOf(k: number): number {
    return this.tail.beginIndex + k;
  }

  setTimesteps(): void {
    throw new Error('TailScheduler: the schedule is set when it is made');
  }

  scaleModelInput(x: Float32Array, t: number, out?: Float32Array): Float32Array {
    return this.inner.scaleModelInput(x, t, out);
  }

  step(modelOutput: Float32Array, t: number, x: Float32Array, generator?: RandomSource, out?: Float32Array): Float32Array {
    const o = this.inner.step(modelOutput, t, x, generator, out);
    const i = this.calls++;
    const b = this.blend;
    if (b) {
      const n = o.length;
      const plane = b.mask.length;
      // the init latents noised to the next timestep run, the clean ones after the last step
      let proper = b.initLatents;
      if (i < this.timesteps.length - 1) {
        proper = addNoise(this.inner, b.initLatents, b.noise, this.indexOf(i + 1), (this.proper ??= new Float32Array(n)));
      }
      for (let k = 0; k < n; k++) {
        const m = b.mask[k % plane]!;
        o[k] = Math.fround(Math.fround(Math.fround(1 - m) * proper[k]!) + Math.fround(m * o[k]!));
      }
    }
    return o;
  }
}

/** Start latents of img2img from clean (scaled) init latents: draw the noise, add it at the tail's first timestep. */
export function noisedStart(scheduler: TailScheduler, initLatents: Float32Array, generator: RandomSource): { latents: Float32Array; noise: Float32Array } {
  const noise = new Float32Array(initLatents.length);
  if (generator.randnInto) generator.randnInto(noise);
  else noise.set(generator.randn([initLatents.length]));
  return { latents: addNoise(scheduler.inner, initLatents, noise, scheduler.indexOf(0)), noise };
}

/** img2img start latents for one image: encoder sample (draw 1), noise (draw 2), add_noise. */
export async function img2imgStart(
  encoder: VaeEncoder, image: RgbImage, scheduler: TailScheduler, generator: RandomSource,
): Promise<{ latents: Float32Array; initLatents: Float32Array; noise: Float32Array }> {
  const initLatents = await encoder.encode(image, generator);
  return { ...noisedStart(scheduler, initLatents, generator), initLatents };
}

export interface InpaintStart {
  latents: Float32Array;
  /** the 4-channel blend (null for a 9-channel UNet) */
  blend: InpaintBlend | null;
  /** the 9-channel UNet's extra input channels [mask (1), masked-picture latents (4)] per latent pixel, planar */
  extraChannels: Float32Array | null;
}

/**
 * Inpainting start for one image, in diffusers' draw order (see the header). `binary`: the
 * binarized pixel mask; `latentMask`: its latent-size version.
 */
export async function inpaintStart(
  encoder: VaeEncoder,
  image: RgbImage,
  binary: Uint8Array,
  latentMaskValues: Float32Array,
  scheduler: TailScheduler,
  strength: number,
  generator: RandomSource,
  unetChannels: 4 | 9,
): Promise<InpaintStart> {
  const input = rgbToEncoderInput(image);
  const strengthMax = strength === 1;
  // diffusers encodes the init picture for a 4-channel UNet (the blend needs it) or when the start is noised from it
  const initLatents = unetChannels === 4 || !strengthMax ? await encoder.encodeInput(input, image.width, image.height, generator) : null;
  const n = latentMaskValues.length * 4;
  const noise = new Float32Array(n);
  if (generator.randnInto) generator.randnInto(noise);
  else noise.set(generator.randn([n]));
  let latents: Float32Array;
  if (strengthMax) {
    const s = Math.fround(scheduler.initNoiseSigma);
    latents = noise.map((v) => Math.fround(v * s));
  } else {
    latents = addNoise(scheduler.inner, initLatents!, noise, scheduler.indexOf(0));
  }
  const masked = maskImageInput(input, binary);
  if (unetChannels === 4) {
    // drawn as diffusers draws it, unused by a 4-channel UNet: the sample's noise alone
    generator.randn([1, 4, image.height / encoder.scale, image.width / encoder.scale]);
    return { latents, blend: { initLatents: initLatents!, noise, mask: latentMaskValues }, extraChannels: null };
  }
  const maskedLatents = await encoder.encodeInput(masked, image.width, image.height, generator);
  const plane = latentMaskValues.length;
  const extra = new Float32Array(plane * 5);
  extra.set(latentMaskValues, 0);
  extra.set(maskedLatents, plane);
  return { latents, blend: null, extraChannels: extra };
}

/** What a batch of img2img / inpainting images starts from. */
export interface InitSource {
  /** the init picture at the run's size (img2img, inpainting) */
  image: RgbImage | null;
  /** per image (by index in the job): its own picture (hires pass 2 with a pixel-space upscaler) */
  images?: ((index: number) => RgbImage) | null;
  /** per image (by index in the job): latents to start from instead of an encoded picture (hires pass 2, latent upscalers) */
  latents: ((index: number) => Float32Array) | null;
  strength: number;
  mask: LoadedInpaintMask | null;
  /** SHA-256 of the init picture's and the mask's files (recorded in the images' metadata) */
  sha256?: string;
  maskSha256?: string | null;
}

export interface LoadedInpaintMask {
  /** the mask after --invert-mask and --mask-blur (8-bit, white = repaint): A1111's overlay uses it */
  gray: Uint8Array;
  /** diffusers' binarized mask (1 = repaint) */
  binary: Uint8Array;
  /** the latent mask (nearest), [h·w] */
  latent: Float32Array;
  /** σ of the blur applied (0: none); > 0 pastes the init picture back through `gray` after decoding */
  blur: number;
}

/**
 * Reads an init picture (and mask) for a run of width×height: the picture resized as
 * init-image.ts says, the mask inverted (`invert`), blurred (`blur`, A1111), binarized and
 * reduced to the latent size (diffusers). UsageError for a missing or unreadable file.
 */
export async function loadInitSource(
  init: { path: string; strength: number },
  mask: { path: string; blur: number; invert: boolean } | null,
  width: number,
  height: number,
  scale: number,
): Promise<InitSource & { sha256: string; maskSha256: string | null; image: RgbImage }> {
  const image = await loadInitImage(init.path, width, height);
  let m: LoadedInpaintMask | null = null;
  let maskSha256: string | null = null;
  if (mask) {
    const raw = await loadMask(mask.path, width, height);
    maskSha256 = raw.sha256;
    let gray = mask.invert ? invertMask(raw.gray) : raw.gray;
    if (mask.blur > 0) gray = blurMask(gray, width, height, mask.blur);
    const binary = binarizeMask(gray);
    m = { gray, binary, latent: latentMask(binary, width, height, scale), blur: mask.blur };
  }
  return { image, latents: null, strength: init.strength, mask: m, sha256: image.sha256, maskSha256 };
}

/** One batch's schedulers (tails), start latents and 9-channel extra inputs. */
export interface PreparedBatch {
  schedulers: TailScheduler[];
  latents: Float32Array[];
  /** per image [mask, masked-picture latents] channels for a 9-channel UNet, else null */
  extraChannels: Float32Array[] | null;
}

/**
 * The start of a batch of img2img / inpainting images: per image, its scheduler's tail (each
 * `inner` set up for `steps` here) and its start latents drawn from its own generator in
 * diffusers' order. `indices`: the images' indices in the job (for `src.latents`).
 */
export async function prepareBatch(
  src: InitSource,
  encoder: VaeEncoder | null,
  inner: Scheduler[],
  generators: RandomSource[],
  steps: number,
  indices: readonly number[],
  unetChannels: 4 | 9,
): Promise<PreparedBatch> {
  if (unetChannels === 9 && !src.mask) {
    throw new UsageError('this UNet is an inpainting UNet (9 input channels): it needs --init-image and --mask');
  }
  const schedulers = inner.map((s) => TailScheduler.create(s, steps, src.strength));
  const latents: Float32Array[] = [];
  const extra: Float32Array[] = [];
  for (let j = 0; j < inner.length; j++) {
    const sched = schedulers[j]!;
    const g = generators[j]!;
    if (src.latents) {
      latents.push(noisedStart(sched, src.latents(indices[j]!), g).latents);
      continue;
    }
    if (!encoder) throw new Error('prepareBatch: an init picture needs the VAE encoder');
    const image = src.images ? src.images(indices[j]!) : src.image;
    if (!image) throw new Error('prepareBatch: no init picture');
    if (src.mask) {
      const st = await inpaintStart(encoder, image, src.mask.binary, src.mask.latent, sched, src.strength, g, unetChannels);
      sched.blend = st.blend;
      latents.push(st.latents);
      if (st.extraChannels) extra.push(st.extraChannels);
    } else {
      latents.push((await img2imgStart(encoder, image, sched, g)).latents);
    }
  }
  return { schedulers, latents, extraChannels: extra.length > 0 ? extra : null };
}
