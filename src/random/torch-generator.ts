/**
 * A random source bit-compatible with `torch.Generator('cpu').manual_seed(seed)` for
 * `torch.randn(..., dtype=float32)` and `torch.randint(high, ...)` (torch 1.13–2.x CPU kernels,
 * AVX2 build). Pure logic, no I/O.
 *
 * How torch draws (as reimplemented here):
 * - uniform float32 = (next32 & (2^24 - 1)) * 2^-24; uniform float64 = (next64 & (2^53 - 1)) * 2^-53
 *   where next64 = (first32 << 32) | second32.
 * - randn with numel >= 16: fill every slot with a float32 uniform, then Box–Muller in blocks of
 *   16 (slot j pairs with j + 8, u1 = 1 − data[j], radius = sqrt(−2·log u1), θ = 2π·data[j+8],
 *   cos into slot j, sin into slot j+8). When numel is not a multiple of 16 the last 16 slots
 *   get 16 fresh uniforms and are transformed again. log/sin/cos are the float32 Cephes
 *   polynomials of the vectorised kernel (see float32-math.ts).
 * - randn with numel < 16: per element a float64 Box–Muller (u1, u2 from the float64 uniform,
 *   r = sqrt(−2·log(1 − u2)), θ = 2π·u1), returning r·cos θ and caching r·sin θ in the generator
 *   for the next scalar draw. manual_seed clears the cache.
 */
import type { RandomSource } from './types.js';
import { MT19937 } from './mt19937.js';
import { cephesLogf, cephesSincosf } from './float32-math.js';

const TWO_PI_F32 = Math.fround(2 * Math.PI);
const INV_2_24 = 1 / 16777216;
const INV_2_53 = 1 / 9007199254740992;
const TWO_32 = 4294967296;

export class TorchGenerator implements RandomSource {
  private readonly engine: MT19937;
  private cachedNormal: number | null = null;
  private readonly sc = new Float64Array(2);
  /** The seed given to the constructor or the last manualSeed (64-bit). */
  initialSeed: bigint;

  constructor(seed: number | bigint) {
    this.initialSeed = toSeed(seed);
    this.engine = new MT19937(this.initialSeed);
  }

  /** Re-seed, exactly like `g.manual_seed(seed)`. */
  manualSeed(seed: number | bigint): this {
    this.initialSeed = toSeed(seed);
    this.engine.seed(this.initialSeed);
    this.cachedNormal = null;
    return this;
  }

  /** One float32 uniform in [0, 1) (24-bit). */
  private uniformF32(): number {
    return (this.engine.nextUint32() & 0xffffff) * INV_2_24;
  }

  /** One float64 uniform in [0, 1) (53-bit, from two 32-bit outputs, first is high). */
  private uniformF64(): number {
    const hi = this.engine.nextUint32();
    const lo = this.engine.nextUint32();
    // (hi << 32 | lo) & (2^53 - 1) = (hi & 0x1fffff) * 2^32 + lo
    return ((hi & 0x1fffff) * TWO_32 + lo) * INV_2_53;
  }

  randn(shape: readonly number[]): Float32Array {
    return this.randnInto(new Float32Array(numelOf(shape)));
  }

  randnInto(out: Float32Array, _shape?: readonly number[]): Float32Array {
    const n = out.length;
    if (n >= 16) this.normalFill(out);
    else for (let i = 0; i < n; i++) out[i] = this.scalarNormal();
    return out;
  }

  private normalFill(data: Float32Array): void {
    const n = data.length;
    for (let i = 0; i < n; i++) data[i] = this.uniformF32();
    for (let i = 0; i + 16 <= n; i += 16) this.boxMuller16(data, i);
    if (n % 16 !== 0) {
      const start = n - 16;
      for (let i = 0; i < 16; i++) data[start + i] = this.uniformF32();
      this.boxMuller16(data, start);
    }
  }

  private boxMuller16(data: Float32Array, base: number): void {
    const f = Math.fround;
    const sc = this.sc;
    for (let j = 0; j < 8; j++) {
      const u1 = f(1 - data[base + j]!);
      const u2 = data[base + j + 8]!;
      const radius = f(Math.sqrt(f(-2 * cephesLogf(u1))));
      cephesSincosf(f(TWO_PI_F32 * u2), sc);
      data[base + j] = radius * sc[1]!;
      data[base + j + 8] = radius * sc[0]!;
    }
  }

  private scalarNormal(): number {
    if (this.cachedNormal !== null) {
      const v = this.cachedNormal;
      this.cachedNormal = null;
      return v;
    }
    const u1 = this.uniformF64();
    const u2 = this.uniformF64();
    const r = Math.sqrt(-2 * Math.log(1 - u2));
    const theta = 2 * Math.PI * u1;
    this.cachedNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /**
   * `torch.randint(high, shape, generator=g)` (int64): each element is next32 % high
   * (next64 % high when high >= 2^32), drawn in C order.
   */
  randint(high: number, shape: readonly number[]): BigInt64Array {
    if (!Number.isInteger(high) || high <= 0) throw new RangeError(`randint: high must be a positive integer, got ${high}`);
    const n = numelOf(shape);
    const out = new BigInt64Array(n);
    if (high < TWO_32) {
      for (let i = 0; i < n; i++) out[i] = BigInt(this.engine.nextUint32() % high);
    } else {
      const h = BigInt(high);
      for (let i = 0; i < n; i++) {
        const hi = BigInt(this.engine.nextUint32());
        const lo = BigInt(this.engine.nextUint32());
        out[i] = ((hi << 32n) | lo) % h;
      }
    }
    return out;
  }
}

function toSeed(seed: number | bigint): bigint {
  if (typeof seed === 'number') {
    if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
    return BigInt.asUintN(64, BigInt(seed));
  }
  return BigInt.asUintN(64, seed);
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
