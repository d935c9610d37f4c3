/**
 * Init images and masks for img2img and inpainting, read with sharp (PNG, JPEG, WebP), and the
 * pixel-space resizes of hires fix.
 *
 * Resizing to the target size: sdgen resizes an init image (and a mask) whose size differs from
 * `--width`×`--height` with Pillow's Lanczos straight to that size, ignoring the aspect ratio —
 * A1111's img2img "Just resize" mode (PIL's Image.resize(LANCZOS)), which is also the filter
 * diffusers' VaeImageProcessor resizes with (`resample="lanczos"`) when a size is passed.
 * The resize is Pillow's own arithmetic (src/image/pil-resize.ts), so a resized picture is the
 * one those tools make, byte for byte; a picture of the target size is used as is.
 * Alpha is dropped (PIL's convert('RGB'), as diffusers does) and an EXIF orientation is applied
 * (diffusers' load_image and A1111 both transpose by EXIF).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import { toGray } from './mask.js';
import { a1111UpscaleSteps, resizeU8 } from './pil-resize.js';

export interface RgbImage {
  /** RGB, row-major, width·height·3 */
  rgb: Uint8Array;
  width: number;
  height: number;
}

export interface LoadedInitImage extends RgbImage {
  /** the file's own size (before resizing) */
  sourceWidth: number;
  sourceHeight: number;
  resized: boolean;
  /** hex SHA-256 of the file's bytes (recorded in the image's metadata) */
  sha256: string;
}

export interface LoadedMask {
  /** one 8-bit channel, row-major, width·height (white = repaint) */
  gray: Uint8Array;
  width: number;
  height: number;
  sourceWidth: number;
  sourceHeight: number;
  resized: boolean;
  sha256: string;
}

const FORMATS = new Set(['png', 'jpeg', 'webp']);

type Sharp = typeof import('sharp');

async function sharpModule(): Promise<Sharp> {
  const { default: sharp } = await import('sharp');
  return sharp as unknown as Sharp;
}

async function readImageFile(file: string, what: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a folder' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new UsageError(`${what} ${file}: cannot read it (${why})`);
  }
}

/**
 * Checks that `file` is a picture sdgen can read (PNG, JPEG or WebP), from its header only: a
 * UsageError (one line) otherwise, so a run can refuse it before any model loads.
 */
export async function checkImageFile(file: string, what: string): Promise<void> {
  const bytes = await readImageFile(file, what);
  const sharp = await sharpModule();
  let format: string | undefined;
  try {
    format = (await sharp(bytes).metadata()).format;
  } catch {
    throw new UsageError(`${what} ${file}: not a readable PNG, JPEG or WebP image`);
  }
  if (!format || !FORMATS.has(format)) throw new UsageError(`${what} ${file}: ${format ?? 'unknown'} images are not supported; use PNG, JPEG or WebP`);
}

/** Decoded pixels of `bytes` (orientation applied), resized to width×height when given and different. */
async function decode(
  bytes: Buffer, file: string, what: string, target: { width: number; height: number } | null, keepChannels: boolean,
): Promise<{ data: Uint8Array; width: number; height: number; channels: number; sourceWidth: number; sourceHeight: number; resized: boolean }> {
  const sharp = await sharpModule();
  let meta;
  try {
    meta = await sharp(bytes).metadata();
  } catch {
    throw new UsageError(`${what} ${file}: not a readable PNG, JPEG or WebP image`);
  }
  if (!meta.format || !FORMATS.has(meta.format)) {
    throw new UsageError(`${what} ${file}: ${meta.format ?? 'unknown'} images are not supported; use PNG, JPEG or WebP`);
  }
  // EXIF orientations 5–8 swap the sides
  const swap = (meta.orientation ?? 1) >= 5;
  const sourceWidth = swap ? meta.height! : meta.width!;
  const sourceHeight = swap ? meta.width! : meta.height!;
  let img = sharp(bytes).rotate();
  if (!keepChannels) img = img.removeAlpha().toColourspace('srgb');
  const resized = target !== null && (target.width !== sourceWidth || target.height !== sourceHeight);
  try {
    const { data, info } = await img.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    let pixels = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (resized) pixels = resizeU8(pixels, info.width, info.height, info.channels, target.width, target.height, 'lanczos');
    return {
      data: pixels,
      width: resized ? target.width : info.width,
      height: resized ? target.height : info.height,
      channels: info.channels,
      sourceWidth,
      sourceHeight,
      resized,
    };
  } catch (err) {
    throw new UsageError(`${what} ${file}: cannot decode it (${(err as Error).message.split('\n')[0]})`);
  }
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/**
 * An init image as RGB u8 of width×height (resized with Lanczos when its size differs, see
 * the header). UsageError for a missing, unreadable or unsupported file.
 */
export async function loadInitImage(file: string, width: number, height: number): Promise<LoadedInitImage> {
  const bytes = await readImageFile(file, 'init image');
  const d = await decode(bytes, file, 'init image', { width, height }, false);
  if (d.channels !== 3) throw new UsageError(`init image ${file}: decoded to ${d.channels} channels; expected RGB`);
  return { rgb: d.data, width: d.width, height: d.height, sourceWidth: d.sourceWidth, sourceHeight: d.sourceHeight, resized: d.resized, sha256: sha256(bytes) };
}

/**
 * A mask as one 8-bit channel of width×height (resized first, then made grayscale with PIL's
 * luma, as diffusers' mask processor orders it). UsageError for a missing or unreadable file.
 */
export async function loadMask(file: string, width: number, height: number): Promise<LoadedMask> {
  const bytes = await readImageFile(file, 'mask');
  const d = await decode(bytes, file, 'mask', { width, height }, true);
  const gray = toGray(d.data, d.width, d.height, d.channels);
  return { gray, width: d.width, height: d.height, sourceWidth: d.sourceWidth, sourceHeight: d.sourceHeight, resized: d.resized, sha256: sha256(bytes) };
}

/**
 * A hires pixel-space upscaler's resize, as A1111's hires fix runs "Lanczos" and "Nearest"
 * (`images.resize_image(0, …)`): the upscaler's own Pillow filter to the scaled size, then
 * Pillow Lanczos to the size asked for where they differ (a1111UpscaleSteps). For a plain ×N
 * that is one Pillow resize — also what diffusers-based hires scripts do with PIL.
 */
export function resizeRgb(img: RgbImage, width: number, height: number, upscaler: 'Lanczos' | 'Nearest'): RgbImage {
  let rgb = img.rgb;
  let [w, h] = [img.width, img.height];
  for (const step of a1111UpscaleSteps({ width: w, height: h }, { width, height }, upscaler)) {
    rgb = resizeU8(rgb, w, h, 3, step.width, step.height, step.filter);
    [w, h] = [step.width, step.height];
  }
  return { rgb: rgb === img.rgb ? rgb.slice() : rgb, width: w, height: h };
}

/**
 * RGB u8 → the VAE encoder's input [1, 3, H, W] float32 in [−1, 1], diffusers' conversion:
 * x = 2·(u8/255) − 1 in float32.
 */
export function rgbToEncoderInput(img: RgbImage): Float32Array {
  const plane = img.width * img.height;
  if (img.rgb.length !== plane * 3) throw new Error(`rgbToEncoderInput: ${img.rgb.length} bytes for ${img.width}×${img.height}`);
  const out = new Float32Array(plane * 3);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = Math.fround(Math.fround(2 * Math.fround(img.rgb[p * 3 + c]! / 255)) - 1);
  }
  return out;
}
