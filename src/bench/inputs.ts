/** Deterministic values in [-1, 1) from a 32-bit xorshift stream (benchmark and test inputs). */
export function xorshiftFill(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    a[i] = (x / 4294967296) * 2 - 1;
  }
  return a;
}
