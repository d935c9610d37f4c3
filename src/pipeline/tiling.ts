/**
 * Tiled VAE decode and encode for large images (`--vae-tiling auto|on|off`), diffusers 0.27.2's
 * AutoencoderKL.tiled_decode / tiled_encode:
 *
 * - decode: latent tiles of T = sample_size / 8 (64 for SD 1.x) every ¾·T, each decoded alone
 *   (8T pixels); each tile blended into the one above it and the one to its left over
 *   E = ¼·sample_size pixels (linear ramp: row y of the overlap takes (1 − y/E) of the
 *   neighbour's last rows and y/E of its own), then cropped to its first sample_size − E rows and
 *   columns and the crops concatenated. Blends are made in place and in diffusers' order (a
 *   tile's vertical blend before its horizontal one, against neighbours already blended), so the
 *   result is diffusers' tiled result, not merely a similar one.
 * - encode: the same on the picture with pixel tiles of sample_size every ¾·sample_size, the
 *   blend over ¼·T latent rows on the encoder's output (the distribution's parameters).
 *
 * Each tile goes through the VAE alone, and the VAE's group norms then see the tile's statistics
 * rather than the picture's: a tiled result is close to the untiled one, not equal (the ramps
 * hide the seams). Memory: one tile's activations instead of the whole picture's.
 */
import os from 'node:os';
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import type { VaeDecoderIO } from '../models/io.js';
import { decodedToRgb } from './decode.js';
import { FloatInput, toFloat32 } from './tensors.js';

export type VaeTilingMode = 'auto' | 'on' | 'off';

export function parseVaeTiling(v: string): VaeTilingMode {
  if (v === 'auto' || v === 'on' || v === 'off') return v;
  throw new UsageError(`--vae-tiling must be auto, on or off (got '${v}')`);
}

/** Tiling of one axis pair, in the input's units (latent pixels to decode, image pixels to encode). */
export interface TileSpec {
  /** input tile side */
  tile: number;
  /** distance between tile starts (¾ of the tile) */
  stride: number;
  /** output pixels per input pixel (8 to decode, ⅛ to encode) */
  scale: number;
  /** output rows/columns blended with the neighbour */
  blend: number;
  /** output rows/columns kept per tile */
  limit: number;
}

/** diffusers' tiling for a VAE of `sampleSize` (its config's sample_size) and scale factor `factor`. */
export function decodeTileSpec(sampleSize: number, factor = 8): TileSpec {
  const tile = Math.floor(sampleSize / factor);
  const blend = Math.floor(sampleSize * 0.25);
  return { tile, stride: Math.floor(tile * 0.75), scale: factor, blend, limit: sampleSize - blend };
}

export function encodeTileSpec(sampleSize: number, factor = 8): TileSpec {
  const latentTile = Math.floor(sampleSize / factor);
  const blend = Math.floor(latentTile * 0.25);
  return { tile: sampleSize, stride: Math.floor(sampleSize * 0.75), scale: 1 / factor, blend, limit: latentTile - blend };
}

/** Whether a pass over an input of h×w needs tiles at all (diffusers: a side larger than the tile). */
export function exceedsTile(spec: TileSpec, h: number, w: number): boolean {
  return h > spec.tile || w > spec.tile;
}

/**
 * Peak memory of an untiled SD VAE pass per output image pixel (decoder; the encoder's is of
 * the same order): measured 7.4–14.7 GB for a 1024² decode (docs/performance.md), so about 10 KB.
 */
export const VAE_BYTES_PER_PIXEL = 10 * 1024;

/**
 * `auto`: tile when the untiled pass over `pixels` image pixels would take more than half of the
 * machine's memory (a 2048² image on a 24 GB machine; not a 1024² one).
 */
export function shouldTile(mode: VaeTilingMode, pixels: number, totalMemory: number = os.totalmem()): boolean {
  if (mode === 'on') return true;
  if (mode === 'off') return false;
  return pixels * VAE_BYTES_PER_PIXEL > totalMemory * 0.5;
}

/** A [C, h, w] float tensor (one image). */
export interface Planes {
  data: Float32Array;
  c: number;
  h: number;
  w: number;
}

function crop(x: Planes, y0: number, x0: number, h: number, w: number): Planes {
  const out = new Float32Array(x.c * h * w);
  for (let c = 0; c < x.c; c++) {
    for (let y = 0; y < h; y++) {
      const src = c * x.h * x.w + (y0 + y) * x.w + x0;
      out.set(x.data.subarray(src, src + w), c * h * w + y * w);
    }
  }
  return { data: out, c: x.c, h, w };
}

/** diffusers' blend_v: the first rows of `b` ramp in from the last rows of `a` (in place on b). */
export function blendV(a: Planes, b: Planes, extent: number): void {
  const e = Math.min(a.h, b.h, extent);
  const w = Math.min(a.w, b.w);
  for (let y = 0; y < e; y++) {
    const wa = Math.fround(1 - y / e);
    const wb = Math.fround(y / e);
    for (let c = 0; c < b.c; c++) {
      const ra = c * a.h * a.w + (a.h - e + y) * a.w;
      const rb = c * b.h * b.w + y * b.w;
      for (let x = 0; x < w; x++) b.data[rb + x] = Math.fround(Math.fround(a.data[ra + x]! * wa) + Math.fround(b.data[rb + x]! * wb));
    }
  }
}

/** diffusers' blend_h: the first columns of `b` ramp in from the last columns of `a` (in place on b). */
export function blendH(a: Planes, b: Planes, extent: number): void {
  const e = Math.min(a.w, b.w, extent);
  const h = Math.min(a.h, b.h);
  for (let x = 0; x < e; x++) {
    const wa = Math.fround(1 - x / e);
    const wb = Math.fround(x / e);
    for (let c = 0; c < b.c; c++) {
      for (let y = 0; y < h; y++) {
        const ia = c * a.h * a.w + y * a.w + (a.w - e + x);
        const ib = c * b.h * b.w + y * b.w + x;
        b.data[ib] = Math.fround(Math.fround(a.data[ia]! * wa) + Math.fround(b.data[ib]! * wb));
      }
    }
  }
}

/**
 * Runs `run` on overlapping tiles of `x` and assembles the outputs as diffusers does (see the
 * header). `run` gets a [C, th, tw] tile and returns its output planes.
 */
export async function tiledApply(x: Planes, spec: TileSpec, run: (tile: Planes) => Promise<Planes>): Promise<Planes> {
  const rows: Planes[][] = [];
  for (let i = 0; i < x.h; i += spec.stride) {
    const row: Planes[] = [];
    for (let j = 0; j < x.w; j += spec.stride) {
      row.push(await run(crop(x, i, j, Math.min(spec.tile, x.h - i), Math.min(spec.tile, x.w - j))));
    }
    rows.push(row);
  }
  const kept: Planes[][] = rows.map((row, i) =>
    row.map((tile, j) => {
      if (i > 0) blendV(rows[i - 1]![j]!, tile, spec.blend);
      if (j > 0) blendH(row[j - 1]!, tile, spec.blend);
      return crop(tile, 0, 0, Math.min(spec.limit, tile.h), Math.min(spec.limit, tile.w));
    }),
  );
  const c = kept[0]![0]!.c;
  const H = kept.reduce((s, row) => s + row[0]!.h, 0);
  const W = kept[0]!.reduce((s, t) => s + t.w, 0);
  const out = new Float32Array(c * H * W);
  let y0 = 0;
  for (const row of kept) {
    let x0 = 0;
    for (const t of row) {
      if (t.h !== row[0]!.h) throw new Error('tiledApply: tiles of one row differ in height');
      for (let ch = 0; ch < c; ch++) {
        for (let y = 0; y < t.h; y++) out.set(t.data.subarray(ch * t.h * t.w + y * t.w, ch * t.h * t.w + (y + 1) * t.w), ch * H * W + (y0 + y) * W + x0);
      }
      x0 += t.w;
    }
    y0 += row[0]!.h;
  }
  return { data: out, c, h: H, w: W };
}

/**
 * A VAE decoder run tile by tile (diffusers' tiled_decode): latents [1, 4, h, w] → RGB u8 of
 * 8h×8w, with diffusers' conversion (see decode.ts).
 */
export class TiledVaeDecoder {
  constructor(
    private readonly session: ort.InferenceSession,
    readonly io: VaeDecoderIO,
    readonly scalingFactor: number,
    readonly spec: TileSpec,
  ) {}

  private async runTile(tile: Planes): Promise<Planes> {
    const input = new FloatInput(this.io.latent.type, [1, tile.c, tile.h, tile.w]);
    input.data.set(tile.data);
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.session.run({ [this.io.latent.name]: input.sync() }, [this.io.output.name]);
    } catch (err) {
      throw new SdgenError(`vae decoder failed on a tile: ${(err as Error).message.split('\n')[0]}`, { cause: err });
    }
    const t = out[this.io.output.name] as ort.Tensor;
    const d = t.dims;
    const data = toFloat32(t).slice();
    t.dispose?.();
    return { data, c: d[1]!, h: d[2]!, w: d[3]! };
  }

  async decode(latents: Float32Array, latentHeight: number, latentWidth: number): Promise<{ rgb: Uint8Array; width: number; height: number }> {
    const sf = Math.fround(this.scalingFactor);
    const z: Planes = { data: latents.map((v) => Math.fround(v / sf)), c: latents.length / (latentHeight * latentWidth), h: latentHeight, w: latentWidth };
    const img = exceedsTile(this.spec, latentHeight, latentWidth) ? await tiledApply(z, this.spec, (t) => this.runTile(t)) : await this.runTile(z);
    return { rgb: decodedToRgb(img.data, img.w, img.h), width: img.w, height: img.h };
  }
}
