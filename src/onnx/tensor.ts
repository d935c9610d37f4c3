/**
 * TensorProto helpers: element sizes, construction from typed arrays (zero-copy), typed views of
 * tensor data, and float16 ⇄ float32 conversion (round to nearest even).
 *
 * Raw data is little-endian, like the host (x64 / arm64) — typed-array views rely on that.
 */
import { SdgenError } from '../errors.js';
import { DataLocation, DataType, type Int64, type TensorProto } from './types.js';

/** Bytes per element; 0.5 for the 4-bit types. Throws for STRING / UNDEFINED. */
export function elementSize(dataType: DataType | number): number {
  switch (dataType) {
    case DataType.UINT8:
    case DataType.INT8:
    case DataType.BOOL:
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ:
      return 1;
    case DataType.UINT16:
    case DataType.INT16:
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
      return 2;
    case DataType.FLOAT:
    case DataType.INT32:
    case DataType.UINT32:
      return 4;
    case DataType.INT64:
    case DataType.DOUBLE:
    case DataType.UINT64:
    case DataType.COMPLEX64:
      return 8;
    case DataType.COMPLEX128:
      return 16;
    case DataType.UINT4:
    case DataType.INT4:
    case DataType.FLOAT4E2M1:
      return 0.5;
    default:
      throw new SdgenError(`tensor element type ${dataTypeName(dataType)} has no fixed size`);
  }
}

export function dataTypeName(dataType: DataType | number): string {
  return DataType[dataType] ?? `#${dataType}`;
}

/** Product of the dims (1 for a scalar). */
export function numElements(dims: readonly Int64[]): number {
  let n = 1;
  for (const d of dims) n *= Number(d);
  return n;
}

/** Bytes of the raw data of a tensor of this type and shape. */
export function byteLength(dataType: DataType | number, dims: readonly Int64[]): number {
  return Math.ceil(numElements(dims) * elementSize(dataType));
}

export type TensorData =
  | Float32Array | Float64Array | Int32Array | Uint16Array | Int16Array | Uint8Array | Int8Array
  | Uint32Array | BigInt64Array | BigUint64Array;

/** Little-endian bytes of a typed array, as a view (no copy). */
export function bytesOf(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Builds a tensor whose `rawData` views the bytes of `data` (no copy). The byte length of `data`
 * must match dims × element size, e.g. a Uint16Array of half bits for FLOAT16.
 */
export function makeTensor(
  name: string,
  dataType: DataType | number,
  dims: readonly Int64[],
  data: TensorData,
): TensorProto {
  const expected = byteLength(dataType, dims);
  if (data.byteLength !== expected) {
    throw new Error(
      `makeTensor ${name}: ${data.byteLength} data bytes for ${dataTypeName(dataType)} [${dims.join(',')}] (expected ${expected})`,
    );
  }
  return { name, dataType, dims: [...dims], rawData: bytesOf(data) };
}

/** A rank-0 or rank-1 float32 tensor. */
export function floatTensor(name: string, values: ArrayLike<number>, dims: readonly Int64[] = [values.length]): TensorProto {
  return makeTensor(name, DataType.FLOAT, dims, Float32Array.from(values));
}

/** An int64 tensor (1-D unless dims given), e.g. a Reshape shape or Slice starts. */
export function int64Tensor(name: string, values: readonly Int64[], dims: readonly Int64[] = [values.length]): TensorProto {
  return makeTensor(name, DataType.INT64, dims, BigInt64Array.from(values, (v) => BigInt(v)));
}

/** A rank-0 tensor holding one value of the given numeric type. */
export function scalarTensor(name: string, dataType: DataType | number, value: number | bigint): TensorProto {
  switch (dataType) {
    case DataType.FLOAT:
      return makeTensor(name, dataType, [], Float32Array.of(Number(value)));
    case DataType.DOUBLE:
      return makeTensor(name, dataType, [], Float64Array.of(Number(value)));
    case DataType.FLOAT16:
      return makeTensor(name, dataType, [], float32ToFloat16(Float32Array.of(Number(value))));
    case DataType.INT32:
      return makeTensor(name, dataType, [], Int32Array.of(Number(value)));
    case DataType.INT64:
      return makeTensor(name, dataType, [], BigInt64Array.of(BigInt(value)));
    case DataType.UINT8:
    case DataType.BOOL:
      return makeTensor(name, dataType, [], Uint8Array.of(Number(value)));
    case DataType.INT8:
      return makeTensor(name, dataType, [], Int8Array.of(Number(value)));
    default:
      throw new Error(`scalarTensor: unsupported type ${dataTypeName(dataType)}`);
  }
}

type Ctor<T> = { new (buffer: ArrayBufferLike, byteOffset: number, length: number): T; new (length: number): T; BYTES_PER_ELEMENT: number };

/** Typed view of raw bytes; copies when the bytes are not aligned for the element size. */
function viewRaw<T extends TensorData>(C: Ctor<T>, raw: Uint8Array): T {
  const size = C.BYTES_PER_ELEMENT;
  if (raw.byteLength % size !== 0) {
    throw new SdgenError(`raw data of ${raw.byteLength} bytes is not a whole number of ${size}-byte elements`);
  }
  const n = raw.byteLength / size;
  if (raw.byteOffset % size === 0) return new C(raw.buffer, raw.byteOffset, n);
  const out = new C(n);
  new Uint8Array(out.buffer as ArrayBuffer).set(raw);
  return out;
}

/** True when the tensor's data lives in an external file that has not been loaded. */
export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === DataLocation.EXTERNAL && t.rawData === undefined;
}

/**
 * The tensor's values as a typed array: a view of `rawData` when aligned (else a copy), or built
 * from the typed `*_data` fields. Half/bfloat16 come back as Uint16Array bits; BOOL, UINT8 and
 * the float8 types as Uint8Array. Throws SdgenError for unloaded external data and strings.
 */
export function tensorValues(t: TensorProto): TensorData {
  const name = t.name ?? '';
  if (isExternal(t)) {
    throw new SdgenError(`tensor ${name}: its data is external and was not loaded (load the model with externalData: 'load')`);
  }
  const dt = t.dataType;
  const raw = t.rawData;
  switch (dt) {
    case DataType.FLOAT:
      return raw ? viewRaw(Float32Array, raw) : Float32Array.from(t.floatData ?? []);
    case DataType.DOUBLE:
      return raw ? viewRaw(Float64Array, raw) : Float64Array.from(t.doubleData ?? []);
    case DataType.INT32:
      return raw ? viewRaw(Int32Array, raw) : Int32Array.from(t.int32Data ?? []);
    case DataType.INT64:
      return raw ? viewRaw(BigInt64Array, raw) : BigInt64Array.from(t.int64Data ?? [], (v) => BigInt(v));
    case DataType.UINT64:
      return raw
        ? viewRaw(BigUint64Array, raw)
        : BigUint64Array.from(t.uint64Data ?? [], (v) => BigInt.asUintN(64, BigInt(v)));
    case DataType.UINT32:
      return raw ? viewRaw(Uint32Array, raw) : Uint32Array.from(t.uint64Data ?? [], (v) => Number(v));
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
    case DataType.UINT16:
      return raw ? viewRaw(Uint16Array, raw) : Uint16Array.from(t.int32Data ?? []);
    case DataType.INT16:
      return raw ? viewRaw(Int16Array, raw) : Int16Array.from(t.int32Data ?? []);
    case DataType.INT8:
      return raw ? viewRaw(Int8Array, raw) : Int8Array.from(t.int32Data ?? []);
    case DataType.UINT8:
    case DataType.BOOL:
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ:
      return raw ? raw : Uint8Array.from(t.int32Data ?? []);
    default:
      throw new SdgenError(`tensor ${name}: reading ${dataTypeName(dt)} values is not supported`);
  }
}

/** Values of a float tensor (FLOAT, FLOAT16, DOUBLE, BFLOAT16) converted to Float32Array. */
export function tensorFloats(t: TensorProto): Float32Array {
  const v = tensorValues(t);
  switch (t.dataType) {
    case DataType.FLOAT:
      return v as Float32Array;
    case DataType.FLOAT16:
      return float16ToFloat32(v as Uint16Array);
    case DataType.BFLOAT16: {
      const src = v as Uint16Array;
      const out = new Float32Array(src.length);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
      return out;
    }
    case DataType.DOUBLE:
      return Float32Array.from(v as Float64Array);
    default:
      throw new SdgenError(`tensor ${t.name ?? ''}: ${dataTypeName(t.dataType)} is not a float type`);
  }
}

/** Integer values of an INT64/INT32/UINT8/... tensor as JS numbers (e.g. shape constants). */
export function tensorInts(t: TensorProto): number[] {
  const v = tensorValues(t);
  const out: number[] = new Array<number>(v.length);
  for (let i = 0; i < v.length; i++) out[i] = Number(v[i]!);
  return out;
}

// ---------------------------------------------------------------------------------------------
// float16

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half bits of one float32, rounded to nearest even (overflow → ±inf, NaN stays NaN). */
export function toHalfBits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return mant !== 0 ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 112; // rebias 127 → 15
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: ±0
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // may carry into the exponent / to inf
  return sign | h;
}

/** float32 of IEEE half bits (exact). */
export function fromHalfBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) {
    u32[0] = sign | 0x7f800000 | (mant << 13);
  } else if (exp !== 0) {
    u32[0] = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant === 0) {
    u32[0] = sign;
  } else {
    // subnormal: normalize
    let e = 113;
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      e--;
    }
    u32[0] = sign | (e << 23) | ((mant & 0x3ff) << 13);
  }
  return f32[0]!;
}

export function float32ToFloat16(a: Float32Array | ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = toHalfBits(a[i]!);
  return out;
}

export function float16ToFloat32(a: Uint16Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = fromHalfBits(a[i]!);
  return out;
}
