/**
 * Pillow's `Image.resize` for 8-bit images, reproduced exactly: the resize diffusers'
 * VaeImageProcessor applies to init images and masks (`resample="lanczos"`) and the one
 * AUTOMATIC1111's "Lanczos" and "Nearest" upscalers and its img2img "Just resize" run.
 *
 * Lanczos (and the other convolution filters) follow Pillow's separable resampler:
 * - per output index `i` of an axis, centre c = (i + ½)·in/out; when shrinking the filter is
 *   stretched by in/out (its support grows and its argument shrinks by the same factor);
 * - the taps are the inputs x in [trunc(c − support + ½), trunc(c + support + ½)) clamped to the
 *   axis, weighted by filter((x − c + ½)·min(out/in, 1)) and normalized to sum 1 in double;
 * - the weights become fixed point with 22 fractional bits (rounded half away from zero), each
 *   output sums u8·weight from ½ (2^21) and keeps bits 22 and up, clamped to 0…255;
 * - the horizontal pass runs first (only on the rows the vertical pass reads) into an 8-bit
 *   picture, then the vertical pass; a pass whose size does not change is skipped.
 * Nearest is Pillow's affine scale: output i reads input trunc(x) where x starts at ½·in/out and
 * grows by in/out per output (accumulated in double, as Pillow does).
 *
 * Pillow resizes RGBA/LA through premultiplied alpha; `resizeU8` does that for 2 and 4 channels.
 * Pure: no I/O.
 */

export type PilFilter = 'nearest' | 'bilinear' | 'bicubic' | 'lanczos';

interface Filter {
  support: number;
  at(x: number): number;
}

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

const FILTERS: Readonly<Record<Exclude<PilFilter, 'nearest'>, Filter>> = {
  bilinear: { support: 1, at: (x) => (x < 0 ? (x > -1 ? 1 + x : 0) : x < 1 ? 1 - x : 0) },
  bicubic: {
    support: 2,
    at: (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
      return 0;
    },
  },
  lanczos: { support: 3, at: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
};

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

/** One axis: per output index the first input, the tap count and `ksize` fixed-point weights. */
export interface AxisCoefficients {
  first: Int32Array;
  count: Int32Array;
  ksize: number;
  weights: Int32Array;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for an axis of `inSize` → `outSize`. */
export function axisCoefficients(inSize: number, outSize: number, filter: Exclude<PilFilter, 'nearest'>): AxisCoefficients {
  const f = FILTERS[filter];
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = f.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1 / filterScale;
  for (let i = 0; i < outSize; i++) {
    const centre = (i + 0.5) * scale;
    const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
    const n = Math.min(Math.trunc(centre + support + 0.5), inSize) - lo;
    let sum = 0;
    for (let x = 0; x < n; x++) {
      const w = f.at((x + lo - centre + 0.5) * ss);
      k[x] = w;
      sum += w;
    }
    for (let x = 0; x < n; x++) {
      const w = sum !== 0 ? k[x]! / sum : k[x]!;
      weights[i * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    first[i] = lo;
    count[i] = n;
  }
  return { first, count, ksize, weights };
}

function clip8(acc: number): number {
  const v = Math.floor(acc / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's ImagingResampleHorizontal_8bpc over rows [y0, y0 + rows) of `src`. */
function horizontal(src: Uint8Array, w: number, ch: number, y0: number, rows: number, outW: number, c: AxisCoefficients): Uint8Array {
  const out = new Uint8Array(outW * rows * ch);
  for (let y = 0; y < rows; y++) {
    const row = (y0 + y) * w * ch;
    for (let i = 0; i < outW; i++) {
      const lo = c.first[i]!;
      const n = c.count[i]!;
      const kb = i * c.ksize;
      for (let q = 0; q < ch; q++) {
        let acc = ONE / 2;
        for (let x = 0; x < n; x++) acc += src[row + (lo + x) * ch + q]! * c.weights[kb + x]!;
        out[(y * outW + i) * ch + q] = clip8(acc);
      }
    }
  }
  return out;
}

/** Pillow's ImagingResampleVertical_8bpc; `c.first` is relative to `src`'s first row. */
function vertical(src: Uint8Array, w: number, ch: number, outH: number, c: AxisCoefficients, rowOffset: number): Uint8Array {
  const out = new Uint8Array(w * outH * ch);
  const stride = w * ch;
  for (let j = 0; j < outH; j++) {
    const lo = c.first[j]! - rowOffset;
    const n = c.count[j]!;
    const kb = j * c.ksize;
    for (let p = 0; p < stride; p++) {
      let acc = ONE / 2;
      for (let y = 0; y < n; y++) acc += src[(lo + y) * stride + p]! * c.weights[kb + y]!;
      out[j * stride + p] = clip8(acc);
    }
  }
  return out;
}

/** Pillow's affine nearest scale (ImagingScaleAffine): the input index read per output index. */
export function nearestIndices(inSize: number, outSize: number): Int32Array {
  const a = inSize / outSize;
  const idx = new Int32Array(outSize);
  let x = a * 0.5;
  for (let i = 0; i < outSize; i++) {
    idx[i] = Math.min(Math.trunc(x), inSize - 1);
    x += a;
  }
  return idx;
}

function resizeStraight(src: Uint8Array, w: number, h: number, ch: number, outW: number, outH: number, filter: PilFilter): Uint8Array {
  if (filter === 'nearest') {
    const xs = nearestIndices(w, outW);
    const ys = nearestIndices(h, outH);
    const out = new Uint8Array(outW * outH * ch);
    for (let j = 0; j < outH; j++) {
      const row = ys[j]! * w;
      for (let i = 0; i < outW; i++) {
        const s = (row + xs[i]!) * ch;
        const d = (j * outW + i) * ch;
        for (let q = 0; q < ch; q++) out[d + q] = src[s + q]!;
      }
    }
    return out;
  }
  const needH = outW !== w;
  const needV = outH !== h;
  if (!needH && !needV) return src.slice();
  const cv = axisCoefficients(h, outH, filter);
  if (!needH) return vertical(src, w, ch, outH, cv, 0);
  const cx = axisCoefficients(w, outW, filter);
  // the horizontal pass covers only the rows the vertical pass reads
  const y0 = needV ? cv.first[0]! : 0;
  const y1 = needV ? cv.first[outH - 1]! + cv.count[outH - 1]! : h;
  const tmp = horizontal(src, w, ch, y0, y1 - y0, outW, cx);
  return needV ? vertical(tmp, outW, ch, outH, cv, y0) : tmp;
}

/** Pillow's RGBA → RGBa (premultiply by alpha with its rounding MULDIV255), in place on a copy. */
function premultiply(src: Uint8Array, ch: number): Uint8Array {
  const out = src.slice();
  for (let p = 0; p < out.length; p += ch) {
    const a = out[p + ch - 1]!;
    for (let q = 0; q < ch - 1; q++) {
      const t = out[p + q]! * a + 128;
      out[p + q] = ((t >> 8) + t) >> 8;
    }
  }
  return out;
}

/** Pillow's RGBa → RGBA: colour·255/alpha (integer division, clamped); alpha 0 and 255 unchanged. */
function unpremultiply(buf: Uint8Array, ch: number): void {
  for (let p = 0; p < buf.length; p += ch) {
    const a = buf[p + ch - 1]!;
    if (a === 0 || a === 255) continue;
    for (let q = 0; q < ch - 1; q++) buf[p + q] = Math.min(255, Math.floor((255 * buf[p + q]!) / a));
  }
}

/**
 * `Image.resize((outW, outH), filter)` of an 8-bit picture with `ch` interleaved channels (1 = L,
 * 2 = LA, 3 = RGB, 4 = RGBA). The same size returns a copy.
 */
export function resizeU8(src: Uint8Array, w: number, h: number, ch: number, outW: number, outH: number, filter: PilFilter): Uint8Array {
  if (src.length !== w * h * ch) throw new Error(`resizeU8: ${src.length} bytes for ${w}×${h}×${ch}`);
  if (!(Number.isInteger(outW) && Number.isInteger(outH) && outW > 0 && outH > 0)) throw new Error(`resizeU8: bad size ${outW}×${outH}`);
  if (w === outW && h === outH) return src.slice();
  if ((ch === 2 || ch === 4) && filter !== 'nearest') {
    const out = resizeStraight(premultiply(src, ch), w, h, ch, outW, outH, filter);
    unpremultiply(out, ch);
    return out;
  }
  return resizeStraight(src, w, h, ch, outW, outH, filter);
}

/**
 * The size steps of AUTOMATIC1111's pixel upscalers ("Lanczos", "Nearest") in hires fix, which
 * resizes with `images.resize_image(0, img, w, h, upscaler)`: scale s = max(w/W, h/H); when s > 1
 * the upscaler resizes to (int(W·s), int(H·s)) with its own filter, then Lanczos takes it to
 * int(W·s)//8·8 × int(H·s)//8·8 when that differs, and to w × h when that still differs.
 * Returns the (size, filter) steps to apply in order.
 */
export function a1111UpscaleSteps(
  from: { width: number; height: number }, to: { width: number; height: number }, upscaler: 'Lanczos' | 'Nearest',
): { width: number; height: number; filter: PilFilter }[] {
  const steps: { width: number; height: number; filter: PilFilter }[] = [];
  let w = from.width;
  let h = from.height;
  const s = Math.max(to.width / w, to.height / h);
  if (s > 1) {
    // Python's (W·s) // 8 · 8 on floats
    const destW = Math.floor((w * s) / 8) * 8;
    const destH = Math.floor((h * s) / 8) * 8;
    if (!(w >= destW && h >= destH)) {
      const nw = Math.trunc(w * s);
      const nh = Math.trunc(h * s);
      if (nw !== w || nh !== h) {
        steps.push({ width: nw, height: nh, filter: upscaler === 'Lanczos' ? 'lanczos' : 'nearest' });
        w = nw;
        h = nh;
      }
    }
    // (a picture under 8 pixels a side has no multiple of 8 to go to; A1111 never makes one)
    if (destW > 0 && destH > 0 && (w !== destW || h !== destH)) {
      steps.push({ width: destW, height: destH, filter: 'lanczos' });
      w = destW;
      h = destH;
    }
  }
  if (w !== to.width || h !== to.height) steps.push({ width: to.width, height: to.height, filter: 'lanczos' });
  return steps;
}
