/**
 * Float32 emulation of the Cephes-style vector log/sincos that torch's CPU `randn` uses for its
 * Box–Muller transform on AVX2 builds, including the multiply-add contractions the compiler
 * applies (each contracted pair is rounded once, like a hardware FMA). Pure logic.
 */
const f = Math.fround;

/** Float32 fused multiply-add: round-to-nearest-even of the exact a*b + c (a, b, c float32). */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b; // exact in float64: two 24-bit significands
  const s = p + c;
  // Two-sum error term: s + e == p + c exactly.
  const bv = s - p;
  const e = (p - (s - bv)) + (c - bv);
  const r = f(s);
  if (e === 0 || r === s) return r;
  // s is a float64; only when it lies exactly halfway between two float32 values can e change
  // the result. Then the other neighbour is r + 2(s − r) (exact), itself a float32; otherwise
  // r + 2(s − r) falls strictly between r and its neighbour.
  const other = r + 2 * (s - r);
  if (f(other) !== other) return r;
  return e > 0 === other > r ? other : r;
}

const cvtF = new Float32Array(1);
const cvtU = new Uint32Array(cvtF.buffer);
function bitsOf(x: number): number {
  cvtF[0] = x;
  return cvtU[0]!;
}
function fromBits(b: number): number {
  cvtU[0] = b >>> 0;
  return cvtF[0]!;
}

// Cephes logf coefficients (float32).
const LOG_P = [
  7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
  -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f);
const LOG_Q1 = f(-2.12194440e-4);
const LOG_Q2 = f(0.693359375);
const SQRTHF = f(0.707106781186547524);

/** Cephes float32 natural log for x in (0, 1] (the range randn feeds it). */
export function cephesLogf(x: number): number {
  if (x <= 0) return NaN;
  if (x < 1.1754943508222875e-38) x = 1.1754943508222875e-38;
  const bits = bitsOf(x);
  let e = f(((bits >>> 23) - 0x7f) + 1);
  // Mantissa scaled into [0.5, 1).
  let m = fromBits((bits & ~0x7f800000) | 0x3f000000);
  if (m < SQRTHF) {
    e = f(e - 1);
    m = f(f(m - 1) + m);
  } else {
    m = f(m - 1);
  }
  const z = f(m * m);
  let y = LOG_P[0]!;
  for (let k = 1; k < 9; k++) y = fmaf(y, m, LOG_P[k]!);
  y = f(y * m);
  y = fmaf(y, z, f(e * LOG_Q1));
  y = f(y - f(z * 0.5));
  return fmaf(e, LOG_Q2, f(m + y));
}

const FOPI = f(1.27323954473516);
const DP1 = f(-0.78515625);
const DP2 = f(-2.4187564849853515625e-4);
const DP3 = f(-3.77489497744594108e-8);
const SIN_P0 = f(-1.9515295891e-4);
const SIN_P1 = f(8.3321608736e-3);
const SIN_P2 = f(-1.6666654611e-1);
const COS_P0 = f(2.443315711809948e-5);
const COS_P1 = f(-1.388731625493765e-3);
const COS_P2 = f(4.166664568298827e-2);

/** Cephes float32 sine and cosine of x (|x| < 8192), written to out[0] = sin, out[1] = cos. */
export function cephesSincosf(xIn: number, out: Float64Array | number[]): void {
  const negative = xIn < 0;
  let x = Math.abs(xIn);
  const yScaled = f(x * FOPI);
  let j = Math.trunc(yScaled);
  j = (j + 1) & ~1;
  const y = f(j);
  const sinSwap = (j & 4) !== 0;
  const usePolyCosForSin = (j & 2) !== 0; // polynomial selection
  const cosSwap = ((j - 2) & 4) === 0;

  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);

  const z = f(x * x);
  let yc = fmaf(COS_P0, z, COS_P1);
  yc = fmaf(yc, z, COS_P2);
  yc = f(yc * z);
  yc = fmaf(yc, z, -f(z * 0.5));
  yc = f(yc + 1);

  let ys = fmaf(SIN_P0, z, SIN_P1);
  ys = fmaf(ys, z, SIN_P2);
  ys = f(ys * z);
  ys = fmaf(ys, x, x);

  let s = usePolyCosForSin ? yc : ys;
  let c = usePolyCosForSin ? ys : yc;
  if (sinSwap !== negative) s = -s;
  if (cosSwap) c = -c;
  out[0] = s;
  out[1] = c;
}
