/**
 * Latent upscalers of AUTOMATIC1111's hires fix, with torch.nn.functional.interpolate's
 * semantics on NCHW float32 tensors (CPU kernels, align_corners=False):
 *
 *   Latent                       bilinear
 *   Latent (antialiased)         bilinear, antialias=True
 *   Latent (bicubic)             bicubic (A = −0.75, border samples repeated)
 *   Latent (bicubic antialiased) bicubic, antialias=True (A = −0.5, PIL's filter)
 *   Latent (nearest)             nearest (floor(dst · in/out))
 *   Latent (nearest-exact)       nearest-exact (floor((dst + ½) · in/out))
 *
 * Source coordinates: src = (dst + ½)·in/out − ½ (linear modes clamp a negative src to 0, cubic
 * does not). The antialiased modes are torch's separable filters: each output takes the input
 * samples within `support` = (taps/2)·max(in/out, 1) of its centre (dst + ½)·in/out, weighted by
 * the filter at (sample + ½ − centre)/max(in/out, 1) and normalized to sum 1; when upscaling
 * they equal the plain bilinear filter. Arithmetic in float32 as torch's float kernels. Pure.
 */
import { UsageError } from '../errors.js';

export type LatentUpscaleMode = 'bilinear' | 'bilinear-aa' | 'bicubic' | 'bicubic-aa' | 'nearest' | 'nearest-exact';

/** A1111's latent upscaler names → the interpolation they run. */
export const LATENT_UPSCALERS: Readonly<Record<string, LatentUpscaleMode>> = {
  Latent: 'bilinear',
  'Latent (antialiased)': 'bilinear-aa',
  'Latent (bicubic)': 'bicubic',
  'Latent (bicubic antialiased)': 'bicubic-aa',
  'Latent (nearest)': 'nearest',
  'Latent (nearest-exact)': 'nearest-exact',
};

/** The pixel-space upscalers (decode → resize → encode). */
export const PIXEL_UPSCALERS = ['Lanczos', 'Nearest'] as const;
export type PixelUpscaler = (typeof PIXEL_UPSCALERS)[number];

export type HiresUpscaler = { kind: 'latent'; name: string; mode: LatentUpscaleMode } | { kind: 'pixel'; name: PixelUpscaler };

/** An A1111 hires upscaler name (case-insensitive) → what it does; UsageError for others. */
export function resolveHiresUpscaler(name: string): HiresUpscaler {
  const key = name.trim().toLowerCase();
  for (const [n, mode] of Object.entries(LATENT_UPSCALERS)) if (n.toLowerCase() === key) return { kind: 'latent', name: n, mode };
  for (const n of PIXEL_UPSCALERS) if (n.toLowerCase() === key) return { kind: 'pixel', name: n };
  const all = [...Object.keys(LATENT_UPSCALERS), ...PIXEL_UPSCALERS].map((n) => `"${n}"`).join(', ');
  throw new UsageError(`unknown hires upscaler '${name}'; valid: ${all}`);
}

const f32 = Math.fround;

/** torch's area_pixel_compute_scale for align_corners=False and no scale_factor: in/out, float. */
function scaleOf(inSize: number, outSize: number): number {
  return f32(inSize / outSize);
}

/** One axis of a separable filter: per output index, the first input index and the weights. */
interface AxisWeights {
  start: Int32Array;
  size: Int32Array;
  /** taps per output, `maxTaps` apart */
  weights: Float32Array;
  maxTaps: number;
}

function bilinearAxis(inSize: number, outSize: number): AxisWeights {
  const scale = scaleOf(inSize, outSize);
  const start = new Int32Array(outSize);
  const size = new Int32Array(outSize);
  const weights = new Float32Array(outSize * 2);
  for (let i = 0; i < outSize; i++) {
    let src = f32(f32(scale * f32(i + 0.5)) - 0.5);
    if (src < 0) src = 0;
    const i0 = Math.floor(src);
    const step = i0 < inSize - 1 ? 1 : 0;
    const l1 = f32(src - i0);
    const l0 = f32(1 - l1);
    start[i] = i0;
    size[i] = step + 1;
    weights[2 * i] = l0;
    weights[2 * i + 1] = step ? l1 : 0;
    if (!step) weights[2 * i] = f32(l0 + l1); // both taps read the last sample
  }
  return { start, size, weights, maxTaps: 2 };
}

/** Cubic convolution (Keys) weights of the four taps around t ∈ [0, 1), torch's get_cubic_upsample_coefficients. */
function cubicCoefficients(t: number, A: number): [number, number, number, number] {
  const c1 = (x: number): number => f32(f32(f32(f32(f32(A + 2) * x) - f32(A + 3)) * x) * x) + 1;
  const c2 = (x: number): number => f32(f32(f32(f32(f32(f32(A * x) - f32(5 * A)) * x) + f32(8 * A)) * x) - f32(4 * A));
  const x2 = f32(1 - t);
  return [f32(c2(f32(t + 1))), f32(c1(t)), f32(c1(x2)), f32(c2(f32(x2 + 1)))];
}

function bicubicAxis(inSize: number, outSize: number): { index: Int32Array; weights: Float32Array } {
  const scale = scaleOf(inSize, outSize);
  const index = new Int32Array(outSize * 4);
  const weights = new Float32Array(outSize * 4);
  for (let i = 0; i < outSize; i++) {
    const src = f32(f32(scale * f32(i + 0.5)) - 0.5);
    const i0 = Math.floor(src);
    const t = f32(src - i0);
    const c = cubicCoefficients(t, -0.75);
    for (let k = 0; k < 4; k++) {
      index[4 * i + k] = Math.min(Math.max(i0 - 1 + k, 0), inSize - 1);
      weights[4 * i + k] = c[k]!;
    }
  }
  return { index, weights };
}

function aaFilter(mode: 'bilinear' | 'bicubic'): (x: number) => number {
  if (mode === 'bilinear') {
    return (x) => {
      const a = Math.abs(x);
      return a < 1 ? f32(1 - a) : 0;
    };
  }
  const A = -0.5;
  return (x) => {
    const a = Math.abs(x);
    if (a < 1) return f32(f32(f32(f32(f32(A + 2) * a) - f32(A + 3)) * a) * a) + 1;
    if (a < 2) return f32(f32(f32(f32(f32(f32(a - 5) * a) + 8) * a) - 4) * A);
    return 0;
  };
}

/** torch's _compute_indices_min_size_weights_aa for one axis. */
function antialiasAxis(inSize: number, outSize: number, mode: 'bilinear' | 'bicubic'): AxisWeights {
  const taps = mode === 'bilinear' ? 2 : 4;
  const scale = scaleOf(inSize, outSize);
  const support = scale >= 1 ? f32(taps * 0.5 * scale) : taps * 0.5;
  const invscale = scale >= 1 ? f32(1 / scale) : 1;
  const filter = aaFilter(mode);
  const maxTaps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const size = new Int32Array(outSize);
  const weights = new Float32Array(outSize * maxTaps);
  for (let i = 0; i < outSize; i++) {
    const center = f32(scale * f32(i + 0.5));
    // C++ casts toward zero
    const xmin = Math.max(Math.trunc(f32(f32(center - support) + 0.5)), 0);
    const xsize = Math.min(Math.trunc(f32(f32(center + support) + 0.5)), inSize) - xmin;
    let total = 0;
    for (let j = 0; j < xsize; j++) {
      const w = filter(f32(f32(f32(j + xmin - center) + 0.5) * invscale));
      weights[i * maxTaps + j] = w;
      total = f32(total + w);
    }
    if (total !== 0) for (let j = 0; j < xsize; j++) weights[i * maxTaps + j] = f32(weights[i * maxTaps + j]! / total);
    start[i] = xmin;
    size[i] = xsize;
  }
  return { start, size, weights, maxTaps };
}

function nearestAxis(inSize: number, outSize: number, exact: boolean): Int32Array {
  const scale = scaleOf(inSize, outSize);
  const idx = new Int32Array(outSize);
  for (let i = 0; i < outSize; i++) {
    if (outSize === inSize) idx[i] = i;
    else if (!exact && outSize === 2 * inSize) idx[i] = i >> 1;
    else idx[i] = Math.min(Math.floor(f32((exact ? f32(i + 0.5) : i) * scale)), inSize - 1);
  }
  return idx;
}

/**
 * torch.nn.functional.interpolate(x, size=(outH, outW), mode, align_corners=False, antialias)
 * for x of shape [N, C, inH, inW] (float32, row-major).
 */
export function interpolate(
  x: Float32Array, shape: readonly [number, number, number, number], outH: number, outW: number, mode: LatentUpscaleMode,
): Float32Array {
  const [N, C, inH, inW] = shape;
  if (x.length !== N * C * inH * inW) throw new Error(`interpolate: ${x.length} values for shape [${shape.join(', ')}]`);
  if (!(Number.isInteger(outH) && Number.isInteger(outW) && outH > 0 && outW > 0)) throw new Error(`interpolate: bad output size ${outH}×${outW}`);
  const planes = N * C;
  const out = new Float32Array(planes * outH * outW);
  const inPlane = inH * inW;
  const outPlane = outH * outW;

  if (mode === 'nearest' || mode === 'nearest-exact') {
    const ih = nearestAxis(inH, outH, mode === 'nearest-exact');
    const iw = nearestAxis(inW, outW, mode === 'nearest-exact');
    for (let p = 0; p < planes; p++) {
      for (let y = 0; y < outH; y++) {
        const row = p * inPlane + ih[y]! * inW;
        for (let xx = 0; xx < outW; xx++) out[p * outPlane + y * outW + xx] = x[row + iw[xx]!]!;
      }
    }
    return out;
  }

  if (mode === 'bicubic') {
    const H = bicubicAxis(inH, outH);
    const W = bicubicAxis(inW, outW);
    const rows = new Float32Array(4);
    for (let p = 0; p < planes; p++) {
      const base = p * inPlane;
      for (let y = 0; y < outH; y++) {
        for (let xx = 0; xx < outW; xx++) {
          // torch: interpolate each of the 4 rows along x, then those 4 values along y
          for (let k = 0; k < 4; k++) {
            const r = base + H.index[4 * y + k]! * inW;
            let acc = f32(x[r + W.index[4 * xx]!]! * W.weights[4 * xx]!);
            for (let m = 1; m < 4; m++) acc = f32(acc + f32(x[r + W.index[4 * xx + m]!]! * W.weights[4 * xx + m]!));
            rows[k] = acc;
          }
          let v = f32(rows[0]! * H.weights[4 * y]!);
          for (let k = 1; k < 4; k++) v = f32(v + f32(rows[k]! * H.weights[4 * y + k]!));
          out[p * outPlane + y * outW + xx] = v;
        }
      }
    }
    return out;
  }

  // separable: bilinear (plain) and both antialiased modes, width first, then height
  const Wa = mode === 'bilinear' ? bilinearAxis(inW, outW) : antialiasAxis(inW, outW, mode === 'bicubic-aa' ? 'bicubic' : 'bilinear');
  const Ha = mode === 'bilinear' ? bilinearAxis(inH, outH) : antialiasAxis(inH, outH, mode === 'bicubic-aa' ? 'bicubic' : 'bilinear');
  const tmp = new Float32Array(inH * outW);
  for (let p = 0; p < planes; p++) {
    const base = p * inPlane;
    for (let y = 0; y < inH; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const s = Wa.start[xx]!;
        const n = Wa.size[xx]!;
        const wo = xx * Wa.maxTaps;
        let acc = 0;
        for (let j = 0; j < n; j++) acc = f32(acc + f32(x[base + y * inW + s + j]! * Wa.weights[wo + j]!));
        tmp[y * outW + xx] = acc;
      }
    }
    for (let y = 0; y < outH; y++) {
      const s = Ha.start[y]!;
      const n = Ha.size[y]!;
      const wo = y * Ha.maxTaps;
      for (let xx = 0; xx < outW; xx++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc = f32(acc + f32(tmp[(s + j) * outW + xx]! * Ha.weights[wo + j]!));
        out[p * outPlane + y * outW + xx] = acc;
      }
    }
  }
  return out;
}
