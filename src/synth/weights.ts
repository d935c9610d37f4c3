/**
 * Deterministic synthetic weights. Each initializer gets its own xoshiro128** stream, seeded by
 * splitmix32 from (seed, FNV-1a hash of the tensor name), so a tensor's values depend only on the
 * seed and its name — never on generation order — and the same seed gives byte-identical files.
 * Values follow the InitRule of the parameter (fan-in scaled uniform like torch's default
 * Linear/Conv init, 1 and 0 for norm affines, 0..n-1 for position ids). Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { float32ToFloat16 } from '../onnx/tensor.js';
import type { InitRule, ParamEntry } from './context.js';
import { countOf } from './context.js';

/** FNV-1a 32-bit hash of a string's UTF-16 code units. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** splitmix32 step: returns [next state, output]. */
function splitmix32(state: number): [number, number] {
  const s = (state + 0x9e3779b9) >>> 0;
  let z = s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return [s, (z ^ (z >>> 16)) >>> 0];
}

/** xoshiro128** generator producing uint32 values. */
export class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let st = seed >>> 0;
    const out: number[] = [];
    for (let i = 0; i < 4; i++) {
      const [ns, v] = splitmix32(st);
      st = ns;
      out.push(v);
    }
    [this.a, this.b, this.c, this.d] = out as [number, number, number, number];
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.b << 9) >>> 0;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** Fills `out` with uniform values in [-bound, bound) (same stream as nextU32, state in locals). */
  fillUniform(out: Float32Array, bound: number): void {
    const scale = (2 * bound) / 16777216;
    let a = this.a, b = this.b, c = this.c, d = this.d;
    for (let i = 0; i < out.length; i++) {
      const x = Math.imul(b, 5);
      const r = Math.imul((x << 7) | (x >>> 25), 9);
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      out[i] = (r >>> 8) * scale - bound;
    }
    this.a = a >>> 0;
    this.b = b >>> 0;
    this.c = c >>> 0;
    this.d = d >>> 0;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Per-tensor generator seed. */
export function tensorSeed(seed: number, name: string): number {
  const [, v] = splitmix32((seed >>> 0) ^ fnv1a(name));
  return v;
}

/** Bytes one parameter occupies on disk. */
export function paramBytes(p: ParamEntry): number {
  const n = countOf(p.dims);
  switch (p.dataType) {
    case DataType.FLOAT:
    case DataType.INT32:
      return n * 4;
    case DataType.FLOAT16:
      return n * 2;
    case DataType.INT64:
      return n * 8;
    default:
      throw new Error(`paramBytes: unsupported data type ${p.dataType}`);
  }
}

/** Elements produced per chunk by `generateChunks` (bounds memory for multi-GB models). */
export const CHUNK_ELEMENTS = 1 << 22;

/**
 * Yields the little-endian bytes of one parameter in chunks of at most CHUNK_ELEMENTS elements.
 * Each yielded buffer is fresh (safe to hand to an asynchronous writer).
 */
export function* generateChunks(seed: number, p: ParamEntry, chunkElements = CHUNK_ELEMENTS): Generator<Uint8Array> {
  const n = countOf(p.dims);
  const rng = new Xoshiro128(tensorSeed(seed, p.seedKey ?? p.name));
  const rule: InitRule = p.rule;
  if (p.dataType === DataType.INT64) {
    if (rule.kind !== 'arange' && rule.kind !== 'fill') throw new Error(`int64 parameter ${p.name} needs arange/fill`);
    const last = p.dims[p.dims.length - 1] ?? 1;
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) out[i] = BigInt(rule.kind === 'arange' ? i % last : rule.value);
    yield new Uint8Array(out.buffer);
    return;
  }
  for (let start = 0; start < n; start += chunkElements) {
    const len = Math.min(chunkElements, n - start);
    const f = new Float32Array(len);
    if (rule.kind === 'uniform') rng.fillUniform(f, rule.bound);
    else if (rule.kind === 'fill') f.fill(rule.value);
    else {
      const last = p.dims[p.dims.length - 1] ?? 1;
      for (let i = 0; i < len; i++) f[i] = (start + i) % last;
    }
    if (p.dataType === DataType.FLOAT) {
      yield new Uint8Array(f.buffer);
    } else if (p.dataType === DataType.FLOAT16) {
      const h = float32ToFloat16(f);
      yield new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    } else {
      throw new Error(`generateChunks: unsupported data type ${p.dataType} for ${p.name}`);
    }
  }
}

/** Whole parameter as one buffer (for small tensors / inline models). */
export function generateParam(seed: number, p: ParamEntry): Uint8Array {
  const parts = [...generateChunks(seed, p)];
  if (parts.length === 1) return parts[0]!;
  const total = parts.reduce((a, b) => a + b.length, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const part of parts) {
    out.set(part, o);
    o += part.length;
  }
  return out;
}
