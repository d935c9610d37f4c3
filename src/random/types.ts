/** A source of normal draws, bit-compatible with torch.Generator('cpu') where it claims to be. */
export interface RandomSource {
  /** Draw `prod(shape)` standard normal float32 values, exactly as torch.randn(shape, generator=g). */
  randn(shape: readonly number[]): Float32Array;
  /** Draw into an existing array (same values as randn of that length, no allocation). */
  randnInto?(out: Float32Array, shape?: readonly number[]): Float32Array;
  /** Integers in [0, high), exactly as torch.randint(high, shape, generator=g) (int64), where supported. */
  randint?(high: number, shape: readonly number[]): BigInt64Array | Int32Array;
}
