/**
 * Moving float data in and out of onnxruntime tensors of the element type a model wants
 * (float32 or float16), with reusable buffers so the denoising loop allocates nothing per step.
 */
import ort from 'onnxruntime-node';
import { SdgenError } from '../errors.js';
import { fromHalfBits, toHalfBits } from '../onnx/tensor.js';
import type { FloatType } from '../models/io.js';

/** float32 → float16 bits into `out` (round to nearest even). */
export function float32ToFloat16Into(src: Float32Array, out: Uint16Array): Uint16Array {
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = toHalfBits(src[i]!);
  return out;
}

/** float16 bits → float32 into `out`. */
export function float16ToFloat32Into(src: Uint16Array, out: Float32Array): Float32Array {
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = fromHalfBits(src[i]!);
  return out;
}

/** A tensor's data as float32 (a view when it already is float32, a converted copy for float16). */
export function toFloat32(t: ort.Tensor, out?: Float32Array): Float32Array {
  if (t.type === 'float32') {
    const d = t.data as Float32Array;
    if (out) {
      out.set(d);
      return out;
    }
    return d;
  }
  if (t.type === 'float16') {
    const d = t.data as unknown as ArrayBufferView & { length: number };
    const bits = d instanceof Uint16Array ? d : new Uint16Array(d.buffer, d.byteOffset, d.length);
    return float16ToFloat32Into(bits, out ?? new Float32Array(bits.length));
  }
  throw new SdgenError(`model output has element type ${t.type}; expected float32 or float16`);
}

/**
 * A model input of fixed shape whose float32 values are written by sdgen into `data` and sent to
 * onnxruntime as `tensor` (float32: the same memory; float16: converted by `sync()`).
 */
export class FloatInput {
  readonly data: Float32Array;
  readonly tensor: ort.Tensor;
  private readonly half: Uint16Array | null;

  constructor(readonly type: FloatType, readonly dims: readonly number[]) {
    const n = dims.reduce((a, b) => a * b, 1);
    this.data = new Float32Array(n);
    if (type === 'float16') {
      this.half = new Uint16Array(n);
      this.tensor = new ort.Tensor('float16', this.half, dims);
    } else {
      this.half = null;
      this.tensor = new ort.Tensor('float32', this.data, dims);
    }
  }

  /** Call after writing `data`, before running the session. */
  sync(): ort.Tensor {
    if (this.half) float32ToFloat16Into(this.data, this.half);
    return this.tensor;
  }
}
