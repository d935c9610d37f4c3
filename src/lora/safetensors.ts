/**
 * A small reader of the safetensors format (the file format of LoRAs and textual-inversion
 * embeddings): an 8-byte little-endian header length N, N bytes of JSON header mapping tensor
 * names to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the first byte after
 * the header) plus an optional `__metadata__` string map, then the raw little-endian tensor bytes.
 *
 * The file is read lazily: the header first (parseSafetensorsHeader, pure), then each tensor's
 * bytes by offset, so a LoRA of hundreds of MB is never held whole in memory. Every field of a
 * hostile file is checked before it is used (header length within the file and a sane bound,
 * JSON shape, known dtype, non-negative integer shape, offsets inside the data area, byte count
 * = elements × element size); each failure is one line naming the file. Bad input is the user's
 * file, so the errors are UsageError (exit 2).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { UsageError } from '../errors.js';
import { fromHalfBits } from '../onnx/tensor.js';

/** Largest JSON header accepted (the reference implementation's own bound is 100 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Bytes per element of each safetensors dtype. */
const DTYPE_SIZES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
};

/** The float dtypes readFloats converts. */
export const FLOAT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16', 'F64'];

export interface SafetensorsEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** absolute byte range of the tensor in the file */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** bytes of the JSON header (N) */
  headerBytes: number;
  /** absolute offset of the data area (8 + N) */
  dataStart: number;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsEntry>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The 8-byte header length, checked against the file's size. Pure. */
export function headerLength(first8: Uint8Array, fileSize: number, label: string): number {
  if (fileSize < 8 || first8.length < 8) throw new UsageError(`${label}: not a safetensors file (${fileSize} bytes, shorter than its 8-byte header length)`);
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n < 2n || n > BigInt(MAX_HEADER_BYTES)) throw new UsageError(`${label}: not a safetensors file (header length ${n} is out of range)`);
  const len = Number(n);
  if (8 + len > fileSize) throw new UsageError(`${label}: truncated safetensors file (header of ${len} bytes, but the file has ${fileSize - 8} after the length)`);
  return len;
}

/**
 * Parses and validates the JSON header (`json` = the N header bytes) of a file of `fileSize`
 * bytes. Pure.
 */
export function parseSafetensorsHeader(json: Uint8Array, fileSize: number, label: string): SafetensorsHeader {
  const headerBytes = json.length;
  const dataStart = 8 + headerBytes;
  const dataSize = fileSize - dataStart;
  if (dataSize < 0) throw new UsageError(`${label}: truncated safetensors file (header runs past the end)`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (e) {
    throw new UsageError(`${label}: not a safetensors file (header is not valid JSON: ${(e as Error).message})`);
  }
  if (!isRecord(parsed)) throw new UsageError(`${label}: not a safetensors file (header is not a JSON object)`);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [name, v] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (!isRecord(v)) throw new UsageError(`${label}: __metadata__ must be an object of strings`);
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw new UsageError(`${label}: __metadata__ entry "${k}" is not a string`);
        metadata[k] = s;
      }
      continue;
    }
    const what = `${label}: tensor "${name}"`;
    if (!isRecord(v)) throw new UsageError(`${what} has no {dtype, shape, data_offsets} entry`);
    const { dtype, shape, data_offsets: offsets } = v;
    if (typeof dtype !== 'string' || !(dtype in DTYPE_SIZES)) throw new UsageError(`${what} has an unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new UsageError(`${what} has an invalid shape ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new UsageError(`${what} has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [b, e] = offsets as [number, number];
    if (b > e || e > dataSize) {
      throw new UsageError(`${what}: data [${b}, ${e}) lies outside the file's ${dataSize} data bytes (truncated file?)`);
    }
    let elements = 1;
    for (const d of shape as number[]) elements *= d;
    const expected = elements * DTYPE_SIZES[dtype]!;
    if (expected !== e - b) {
      throw new UsageError(`${what}: ${dtype} [${(shape as number[]).join(', ')}] needs ${expected} bytes but has ${e - b}`);
    }
    tensors.set(name, { name, dtype, shape: [...(shape as number[])], begin: dataStart + b, end: dataStart + e });
  }
  return { headerBytes, dataStart, metadata, tensors };
}

/** float32 of every float16 bit pattern (built at first use: a lookup beats decoding per value). */
let halfLookup: Float32Array | undefined;
function halfTable(): Float32Array {
  if (halfLookup === undefined) {
    halfLookup = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfLookup[h] = fromHalfBits(h);
  }
  return halfLookup;
}

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/** The 16-bit little-endian words of `bytes` (a view when aligned on a little-endian host). */
function halfBits(bytes: Uint8Array): Uint16Array {
  const n = bytes.length >> 1;
  if (LITTLE_ENDIAN) {
    if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    const copy = new Uint16Array(n);
    new Uint8Array(copy.buffer).set(bytes.subarray(0, 2 * n));
    return copy;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Uint16Array.from({ length: n }, (_, i) => view.getUint16(2 * i, true));
}

/** float32 values of a tensor's little-endian bytes (F32, F16 and BF16 exact; F64 rounded). Pure. */
export function decodeFloats(bytes: Uint8Array, dtype: string, label: string): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(bytes.length / 4);
      new Uint8Array(out.buffer).set(bytes); // copy: offsets in the file need not be aligned
      return out;
    }
    case 'F16': {
      const out = new Float32Array(bytes.length / 2);
      const table = halfTable();
      const bits = halfBits(bytes);
      for (let i = 0; i < out.length; i++) out[i] = table[bits[i]!]!;
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(bytes.length / 2);
      const bits = new Uint32Array(out.buffer);
      const src = halfBits(bytes);
      for (let i = 0; i < out.length; i++) bits[i] = src[i]! << 16;
      return out;
    }
    case 'F64': {
      const out = new Float32Array(bytes.length / 8);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat64(8 * i, true);
      return out;
    }
    default:
      throw new UsageError(`${label}: dtype ${dtype} is not a float type (expected ${FLOAT_DTYPES.join(', ')})`);
  }
}

async function readExactly(fh: FileHandle, offset: number, length: number, label: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, Math.min(length - done, 1 << 30), offset + done);
    if (bytesRead === 0) throw new UsageError(`${label}: truncated safetensors file (ends inside a tensor)`);
    done += bytesRead;
  }
  return buf;
}

function openError(e: unknown, path: string): UsageError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new UsageError(`safetensors file not found: ${path}`, { cause: e });
  if (code === 'EISDIR') return new UsageError(`${path} is a directory, not a safetensors file`, { cause: e });
  return new UsageError(`cannot read ${path}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

/** An open safetensors file: header parsed, tensors read on demand. Close it when done. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    readonly header: SafetensorsHeader,
    private fh: FileHandle | undefined,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw openError(e, path);
    }
    try {
      const size = (await fh.stat()).size;
      if (size < 8) throw new UsageError(`${path}: not a safetensors file (${size} bytes, shorter than its 8-byte header length)`);
      const n = headerLength(await readExactly(fh, 0, 8, path), size, path);
      const header = parseSafetensorsHeader(await readExactly(fh, 8, n, path), size, path);
      return new SafetensorsFile(path, size, header, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get metadata(): Record<string, string> {
    return this.header.metadata;
  }

  get tensors(): Map<string, SafetensorsEntry> {
    return this.header.tensors;
  }

  entry(name: string): SafetensorsEntry {
    const e = this.header.tensors.get(name);
    if (e === undefined) throw new UsageError(`${this.path}: no tensor "${name}"`);
    return e;
  }

  /** the whole file, once preload() has read it */
  private whole: Buffer | undefined;

  /**
   * Reads the whole file into memory at once (up to `maxBytes`), so that later tensor reads are
   * copies from it instead of one read each: what a merge touching every tensor wants.
   */
  async preload(maxBytes = 1 << 30): Promise<void> {
    if (this.whole !== undefined || this.size > maxBytes) return;
    if (this.fh === undefined) throw new Error(`safetensors file ${this.path} is closed`);
    this.whole = await readExactly(this.fh, 0, this.size, this.path);
  }

  /** The raw bytes of one tensor. */
  async readBytes(name: string): Promise<Buffer> {
    const e = this.entry(name);
    if (this.fh === undefined) throw new Error(`safetensors file ${this.path} is closed`);
    if (this.whole !== undefined) return Buffer.from(this.whole.subarray(e.begin, e.end));
    return readExactly(this.fh, e.begin, e.end - e.begin, this.path);
  }

  /** One tensor's values as float32 (F32, F16, BF16, F64). */
  async readFloats(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    if (!FLOAT_DTYPES.includes(e.dtype)) {
      throw new UsageError(`${this.path}: tensor "${name}" is ${e.dtype}, not a float type (expected ${FLOAT_DTYPES.join(', ')})`);
    }
    return decodeFloats(await this.readBytes(name), e.dtype, `${this.path}: tensor "${name}"`);
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    this.whole = undefined;
    await fh?.close();
  }
}

/** Opens `path`, runs `fn` on it and closes it. */
export async function withSafetensors<T>(path: string, fn: (f: SafetensorsFile) => Promise<T>): Promise<T> {
  const f = await SafetensorsFile.open(path);
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}
