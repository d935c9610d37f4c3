/**
 * Protobuf codec for the ONNX schema (onnx.proto, IR version ≤ 10 / ONNX 1.16–1.17), driven by a
 * table of field descriptors per message.
 *
 * - Decoding is zero-copy for bytes: `rawData`, attribute `s`/`strings` and `stringData` are
 *   `subarray` views into the input buffer.
 * - Nothing is dropped: fields this schema does not know are kept as raw wire bytes (tag included)
 *   in `unknownFields` and re-emitted verbatim (after the known fields) on encode.
 * - Repeated scalars are read both packed and unpacked; they are written the way onnx.proto
 *   declares them (only the `[packed = true]` TensorProto data fields are written packed), so a
 *   model serialized by the reference C++ implementation re-encodes byte for byte.
 * - int64 → JS number when safe, else bigint; negative values are 10-byte varints.
 * - Encoding computes every message size first, then writes into one preallocated Buffer.
 *
 * Presence: fields typed optional in types.ts are written when not `undefined` (so an explicit 0
 * survives); fields typed as always-present scalars (e.g. `NodeProto.opType`) are written when
 * they differ from the proto default ('' / 0), which is what proto3-style writers do.
 */
import { SdgenError } from '../errors.js';
import type { Int64, ModelProto, TensorProto } from './types.js';

// ---------------------------------------------------------------------------------------------
// Schema tables

/** Scalar / composite kinds of a field. */
const K_INT64 = 0;
const K_UINT64 = 1;
const K_INT32 = 2;
const K_FLOAT = 3;
const K_DOUBLE = 4;
const K_STRING = 5;
const K_BYTES = 6;
const K_MSG = 7;
type Kind = typeof K_INT64 | typeof K_UINT64 | typeof K_INT32 | typeof K_FLOAT | typeof K_DOUBLE
  | typeof K_STRING | typeof K_BYTES | typeof K_MSG;

const WT_VARINT = 0;
const WT_I64 = 1;
const WT_LEN = 2;
const WT_SGROUP = 3;
const WT_EGROUP = 4;
const WT_I32 = 5;

const NATIVE_WIRE: readonly number[] = [WT_VARINT, WT_VARINT, WT_VARINT, WT_I32, WT_I64, WT_LEN, WT_LEN, WT_LEN];

interface FieldSpec {
  no: number;
  key: string;
  kind: Kind;
  /** repeated field */
  rep: boolean;
  /** written packed (repeated scalars only) */
  packed: boolean;
  /** repeated: the array always exists on decoded objects; scalar: written only when non-default */
  always: boolean;
  /** message type name for K_MSG */
  msg?: MessageName;
  /** precomputed tag bytes (native wire type, or LEN when packed) */
  tag: number;
  tagSize: number;
}

export type MessageName =
  | 'ModelProto' | 'GraphProto' | 'NodeProto' | 'AttributeProto' | 'TensorProto' | 'TensorSegment'
  | 'SparseTensorProto' | 'ValueInfoProto' | 'TypeProto' | 'TypeProtoTensor' | 'TypeProtoSequence'
  | 'TypeProtoMap' | 'TypeProtoOptional' | 'TypeProtoSparseTensor' | 'TensorShapeProto' | 'Dimension'
  | 'StringStringEntryProto' | 'TensorAnnotation' | 'OperatorSetIdProto' | 'TrainingInfoProto'
  | 'FunctionProto';

interface MessageSpec {
  name: MessageName;
  /** sorted by field number */
  fields: FieldSpec[];
  /** field number → spec (sparse array) */
  byNo: (FieldSpec | undefined)[];
  /** repeated fields whose array always exists */
  alwaysArrays: string[];
}

type FieldDef = [no: number, key: string, kind: Kind, flags?: string, msg?: MessageName];

function spec(name: MessageName, defs: FieldDef[]): MessageSpec {
  const fields: FieldSpec[] = defs.map(([no, key, kind, flags = '', msg]) => {
    const rep = flags.includes('r');
    const packed = flags.includes('p');
    const wt = packed ? WT_LEN : NATIVE_WIRE[kind]!;
    const tag = no * 8 + wt;
    return { no, key, kind, rep, packed, always: flags.includes('a'), msg, tag, tagSize: varintSize(tag) };
  });
  fields.sort((a, b) => a.no - b.no);
  const byNo: (FieldSpec | undefined)[] = [];
  for (const f of fields) byNo[f.no] = f;
  return { name, fields, byNo, alwaysArrays: fields.filter((f) => f.rep && f.always).map((f) => f.key) };
}

// Flags: r = repeated, p = packed, a = always (arrays always exist / scalars written if non-default)
const SPECS: Record<MessageName, MessageSpec> = {
  StringStringEntryProto: spec('StringStringEntryProto', [
    [1, 'key', K_STRING, 'a'], [2, 'value', K_STRING, 'a'],
  ]),
  TensorAnnotation: spec('TensorAnnotation', [
    [1, 'tensorName', K_STRING], [2, 'quantParameterTensorNames', K_MSG, 'ra', 'StringStringEntryProto'],
  ]),
  OperatorSetIdProto: spec('OperatorSetIdProto', [
    [1, 'domain', K_STRING, 'a'], [2, 'version', K_INT64, 'a'],
  ]),
  TensorSegment: spec('TensorSegment', [[1, 'begin', K_INT64], [2, 'end', K_INT64]]),
  TensorProto: spec('TensorProto', [
    [1, 'dims', K_INT64, 'ra'],
    [2, 'dataType', K_INT32, 'a'],
    [3, 'segment', K_MSG, '', 'TensorSegment'],
    [4, 'floatData', K_FLOAT, 'rp'],
    [5, 'int32Data', K_INT32, 'rp'],
    [6, 'stringData', K_BYTES, 'r'],
    [7, 'int64Data', K_INT64, 'rp'],
    [8, 'name', K_STRING],
    [9, 'rawData', K_BYTES],
    [10, 'doubleData', K_DOUBLE, 'rp'],
    [11, 'uint64Data', K_UINT64, 'rp'],
    [12, 'docString', K_STRING],
    [13, 'externalData', K_MSG, 'r', 'StringStringEntryProto'],
    [14, 'dataLocation', K_INT32],
    [16, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  SparseTensorProto: spec('SparseTensorProto', [
    [1, 'values', K_MSG, '', 'TensorProto'], [2, 'indices', K_MSG, '', 'TensorProto'], [3, 'dims', K_INT64, 'ra'],
  ]),
  Dimension: spec('Dimension', [[1, 'dimValue', K_INT64], [2, 'dimParam', K_STRING], [3, 'denotation', K_STRING]]),
  TensorShapeProto: spec('TensorShapeProto', [[1, 'dim', K_MSG, 'ra', 'Dimension']]),
  TypeProtoTensor: spec('TypeProtoTensor', [[1, 'elemType', K_INT32], [2, 'shape', K_MSG, '', 'TensorShapeProto']]),
  TypeProtoSparseTensor: spec('TypeProtoSparseTensor', [
    [1, 'elemType', K_INT32], [2, 'shape', K_MSG, '', 'TensorShapeProto'],
  ]),
  TypeProtoSequence: spec('TypeProtoSequence', [[1, 'elemType', K_MSG, '', 'TypeProto']]),
  TypeProtoOptional: spec('TypeProtoOptional', [[1, 'elemType', K_MSG, '', 'TypeProto']]),
  TypeProtoMap: spec('TypeProtoMap', [[1, 'keyType', K_INT32], [2, 'valueType', K_MSG, '', 'TypeProto']]),
  // opaque_type (7) is not in types.ts: it is kept as an unknown field.
  TypeProto: spec('TypeProto', [
    [1, 'tensorType', K_MSG, '', 'TypeProtoTensor'],
    [4, 'sequenceType', K_MSG, '', 'TypeProtoSequence'],
    [5, 'mapType', K_MSG, '', 'TypeProtoMap'],
    [6, 'denotation', K_STRING],
    [8, 'sparseTensorType', K_MSG, '', 'TypeProtoSparseTensor'],
    [9, 'optionalType', K_MSG, '', 'TypeProtoOptional'],
  ]),
  ValueInfoProto: spec('ValueInfoProto', [
    [1, 'name', K_STRING, 'a'], [2, 'type', K_MSG, '', 'TypeProto'], [3, 'docString', K_STRING],
    [4, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  AttributeProto: spec('AttributeProto', [
    [1, 'name', K_STRING, 'a'],
    [2, 'f', K_FLOAT],
    [3, 'i', K_INT64],
    [4, 's', K_BYTES],
    [5, 't', K_MSG, '', 'TensorProto'],
    [6, 'g', K_MSG, '', 'GraphProto'],
    [7, 'floats', K_FLOAT, 'r'],
    [8, 'ints', K_INT64, 'r'],
    [9, 'strings', K_BYTES, 'r'],
    [10, 'tensors', K_MSG, 'r', 'TensorProto'],
    [11, 'graphs', K_MSG, 'r', 'GraphProto'],
    [13, 'docString', K_STRING],
    [14, 'tp', K_MSG, '', 'TypeProto'],
    [15, 'typeProtos', K_MSG, 'r', 'TypeProto'],
    [20, 'type', K_INT32],
    [21, 'refAttrName', K_STRING],
    [22, 'sparseTensor', K_MSG, '', 'SparseTensorProto'],
    [23, 'sparseTensors', K_MSG, 'r', 'SparseTensorProto'],
  ]),
  NodeProto: spec('NodeProto', [
    [1, 'input', K_STRING, 'ra'],
    [2, 'output', K_STRING, 'ra'],
    [3, 'name', K_STRING],
    [4, 'opType', K_STRING, 'a'],
    [5, 'attribute', K_MSG, 'ra', 'AttributeProto'],
    [6, 'docString', K_STRING],
    [7, 'domain', K_STRING],
    [8, 'overload', K_STRING],
    [9, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  GraphProto: spec('GraphProto', [
    [1, 'node', K_MSG, 'ra', 'NodeProto'],
    [2, 'name', K_STRING],
    [5, 'initializer', K_MSG, 'ra', 'TensorProto'],
    [10, 'docString', K_STRING],
    [11, 'input', K_MSG, 'ra', 'ValueInfoProto'],
    [12, 'output', K_MSG, 'ra', 'ValueInfoProto'],
    [13, 'valueInfo', K_MSG, 'ra', 'ValueInfoProto'],
    [14, 'quantizationAnnotation', K_MSG, 'r', 'TensorAnnotation'],
    [15, 'sparseInitializer', K_MSG, 'r', 'SparseTensorProto'],
    [16, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  TrainingInfoProto: spec('TrainingInfoProto', [
    [1, 'initialization', K_MSG, '', 'GraphProto'],
    [2, 'algorithm', K_MSG, '', 'GraphProto'],
    [3, 'initializationBinding', K_MSG, 'r', 'StringStringEntryProto'],
    [4, 'updateBinding', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  FunctionProto: spec('FunctionProto', [
    [1, 'name', K_STRING, 'a'],
    [4, 'input', K_STRING, 'ra'],
    [5, 'output', K_STRING, 'ra'],
    [6, 'attribute', K_STRING, 'ra'],
    [7, 'node', K_MSG, 'ra', 'NodeProto'],
    [8, 'docString', K_STRING],
    [9, 'opsetImport', K_MSG, 'ra', 'OperatorSetIdProto'],
    [10, 'domain', K_STRING],
    [11, 'attributeProto', K_MSG, 'r', 'AttributeProto'],
    [12, 'valueInfo', K_MSG, 'r', 'ValueInfoProto'],
    [13, 'overload', K_STRING],
    [14, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
  ]),
  ModelProto: spec('ModelProto', [
    [1, 'irVersion', K_INT64],
    [2, 'producerName', K_STRING],
    [3, 'producerVersion', K_STRING],
    [4, 'domain', K_STRING],
    [5, 'modelVersion', K_INT64],
    [6, 'docString', K_STRING],
    [7, 'graph', K_MSG, '', 'GraphProto'],
    [8, 'opsetImport', K_MSG, 'ra', 'OperatorSetIdProto'],
    [14, 'metadataProps', K_MSG, 'r', 'StringStringEntryProto'],
    [20, 'trainingInfo', K_MSG, 'r', 'TrainingInfoProto'],
    [25, 'functions', K_MSG, 'r', 'FunctionProto'],
  ]),
};

/** Defaults of always-present scalar fields, by kind. */
function scalarDefault(kind: Kind): unknown {
  return kind === K_STRING ? '' : 0;
}

// ---------------------------------------------------------------------------------------------
// Varint helpers

/** Bytes needed by the varint of a non-negative safe integer. */
export function varintSize(v: number): number {
  if (v < 0x80) return 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  let n = 4;
  v = Math.floor(v / 0x10000000);
  while (v > 0) {
    n++;
    v = Math.floor(v / 128);
  }
  return n;
}

function varint64Size(v: Int64): number {
  if (typeof v === 'number') {
    if (v >= 0) return varintSize(v);
    return 10;
  }
  let u = BigInt.asUintN(64, v);
  let n = 1;
  while (u >= 0x80n) {
    u >>= 7n;
    n++;
  }
  return n;
}

function int32Size(v: number): number {
  return v < 0 ? 10 : varintSize(v);
}

// ---------------------------------------------------------------------------------------------
// Decoding

class DecodeError extends Error {}

class Reader {
  readonly buf: Uint8Array;
  readonly view: DataView;
  pos: number;
  readonly textDecoder: (start: number, end: number) => string;

  constructor(buf: Uint8Array) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = 0;
    const nodeBuf = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    this.textDecoder = (s, e) => nodeBuf.toString('utf8', s, e);
  }

  /** Unsigned varint as a number (tags, lengths); at most 2^53. */
  uvarint(): number {
    const buf = this.buf;
    let b = buf[this.pos++];
    if (b === undefined) throw new DecodeError('truncated varint');
    if (b < 0x80) return b;
    let v = b & 0x7f;
    let mul = 128;
    for (let i = 1; i < 8; i++) {
      b = buf[this.pos++];
      if (b === undefined) throw new DecodeError('truncated varint');
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
    throw new DecodeError('varint too long for a length or tag');
  }

  /** A 64-bit varint: number when it fits in 49 bits, else re-read as bigint. */
  private varintBig(signed: boolean): Int64 {
    const start = this.pos;
    const buf = this.buf;
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 7; i++) {
      const b = buf[this.pos++];
      if (b === undefined) throw new DecodeError('truncated varint');
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
    this.pos = start;
    let big = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      const b = buf[this.pos++];
      if (b === undefined) throw new DecodeError('truncated varint');
      big |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) {
        const r = signed ? BigInt.asIntN(64, big) : BigInt.asUintN(64, big);
        return r >= -0x1fffffffffffffn && r <= 0x1fffffffffffffn ? Number(r) : r;
      }
      shift += 7n;
    }
    throw new DecodeError('malformed varint (more than 10 bytes)');
  }

  int64(): Int64 {
    return this.varintBig(true);
  }

  uint64(): Int64 {
    return this.varintBig(false);
  }

  int32(): number {
    const v = this.varintBig(true);
    return typeof v === 'number' ? v | 0 : Number(BigInt.asIntN(32, v));
  }

  float(): number {
    if (this.pos + 4 > this.buf.length) throw new DecodeError('truncated float');
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  double(): number {
    if (this.pos + 8 > this.buf.length) throw new DecodeError('truncated double');
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** Reads a length prefix and returns the end offset of the payload. */
  lenEnd(limit: number): number {
    const len = this.uvarint();
    const end = this.pos + len;
    if (end > limit) throw new DecodeError(`length ${len} at offset ${this.pos} runs past the end of its message`);
    return end;
  }

  /** Skips one field's payload of the given wire type (tag already read). */
  skip(wt: number, fieldNo: number, limit: number): void {
    switch (wt) {
      case WT_VARINT:
        this.uvarintSkip();
        break;
      case WT_I64:
        this.pos += 8;
        break;
      case WT_LEN:
        this.pos = this.lenEnd(limit);
        break;
      case WT_I32:
        this.pos += 4;
        break;
      case WT_SGROUP: {
        for (;;) {
          if (this.pos >= limit) throw new DecodeError('unterminated group');
          const tag = this.uvarint();
          const w = tag & 7;
          const no = Math.floor(tag / 8);
          if (no === 0) throw new DecodeError('field number 0');
          if (w === WT_EGROUP) {
            if (no !== fieldNo) throw new DecodeError('mismatched end group');
            break;
          }
          this.skip(w, no, limit);
        }
        break;
      }
      default:
        throw new DecodeError(`invalid wire type ${wt} at offset ${this.pos}`);
    }
    if (this.pos > limit) throw new DecodeError('field runs past the end of its message');
  }

  private uvarintSkip(): void {
    const buf = this.buf;
    for (let i = 0; i < 10; i++) {
      const b = buf[this.pos++];
      if (b === undefined) throw new DecodeError('truncated varint');
      if (b < 0x80) return;
    }
    throw new DecodeError('malformed varint (more than 10 bytes)');
  }
}

function readScalar(r: Reader, kind: Kind, end: number): unknown {
  switch (kind) {
    case K_INT64:
      return r.int64();
    case K_UINT64:
      return r.uint64();
    case K_INT32:
      return r.int32();
    case K_FLOAT:
      return r.float();
    case K_DOUBLE:
      return r.double();
    case K_STRING: {
      const e = r.lenEnd(end);
      const s = r.textDecoder(r.pos, e);
      r.pos = e;
      return s;
    }
    case K_BYTES: {
      const e = r.lenEnd(end);
      const b = r.buf.subarray(r.pos, e);
      r.pos = e;
      return b;
    }
    default:
      throw new Error('unreachable');
  }
}

function decodeMsg(r: Reader, spec: MessageSpec, end: number, depth: number): Record<string, unknown> {
  if (depth > 100) throw new DecodeError('messages nested more than 100 deep');
  const obj: Record<string, unknown> = {};
  for (const k of spec.alwaysArrays) obj[k] = [];
  for (const f of spec.fields) {
    if (!f.rep && f.always) obj[f.key] = scalarDefault(f.kind);
  }
  const byNo = spec.byNo;
  while (r.pos < end) {
    const start = r.pos;
    const tag = r.uvarint();
    const wt = tag & 7;
    const no = Math.floor(tag / 8);
    if (no === 0) throw new DecodeError(`field number 0 at offset ${start}`);
    const f = byNo[no];
    if (f !== undefined) {
      if (f.kind === K_MSG && wt === WT_LEN) {
        const e = r.lenEnd(end);
        const child = decodeMsg(r, SPECS[f.msg!], e, depth + 1);
        if (r.pos !== e) throw new DecodeError('sub-message length mismatch');
        if (f.rep) {
          let arr = obj[f.key] as unknown[] | undefined;
          if (arr === undefined) obj[f.key] = arr = [];
          arr.push(child);
        } else {
          // proto semantics: a repeated occurrence of a singular message merges; last one wins here
          obj[f.key] = child;
        }
        continue;
      }
      const native = NATIVE_WIRE[f.kind]!;
      if (wt === native) {
        const v = readScalar(r, f.kind, end);
        if (r.pos > end) throw new DecodeError('field runs past the end of its message');
        if (f.rep) {
          let arr = obj[f.key] as unknown[] | undefined;
          if (arr === undefined) obj[f.key] = arr = [];
          arr.push(v);
        } else {
          obj[f.key] = v;
        }
        continue;
      }
      if (f.rep && wt === WT_LEN && native !== WT_LEN) {
        // packed repeated scalars
        const e = r.lenEnd(end);
        let arr = obj[f.key] as unknown[] | undefined;
        if (arr === undefined) obj[f.key] = arr = [];
        while (r.pos < e) arr.push(readScalar(r, f.kind, e));
        if (r.pos !== e) throw new DecodeError('packed field length mismatch');
        continue;
      }
      // wrong wire type for a known field: keep it as an unknown field
    }
    if (wt === WT_EGROUP) throw new DecodeError(`unexpected end-group at offset ${start}`);
    r.skip(wt, no, end);
    let unk = obj.unknownFields as Uint8Array[] | undefined;
    if (unk === undefined) obj.unknownFields = unk = [];
    unk.push(r.buf.subarray(start, r.pos));
  }
  if (r.pos !== end) throw new DecodeError('message runs past its end');
  return obj;
}

/** Decodes any message of the schema (zero-copy for bytes fields). Throws SdgenError on bad input. */
export function decodeMessage<T>(type: MessageName, buf: Uint8Array, what: string = type): T {
  const r = new Reader(buf);
  try {
    return decodeMsg(r, SPECS[type], buf.length, 0) as T;
  } catch (e) {
    if (e instanceof DecodeError || e instanceof RangeError) {
      throw new SdgenError(`not a valid ${what}: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/**
 * Decodes an ONNX model. `rawData` and other bytes fields are views into `buf` (keep `buf`
 * alive and unmodified while the model is used).
 */
export function decodeModel(buf: Uint8Array): ModelProto {
  if (buf.length === 0) throw new SdgenError('not an ONNX model: empty input');
  let model: ModelProto;
  try {
    model = decodeMsg(new Reader(buf), SPECS.ModelProto, buf.length, 0) as unknown as ModelProto;
  } catch (e) {
    if (e instanceof DecodeError || e instanceof RangeError) {
      throw new SdgenError(`not an ONNX model: ${e.message}`, { cause: e });
    }
    throw e;
  }
  if (model.graph === undefined && (model.functions === undefined || model.functions.length === 0)) {
    throw new SdgenError('not an ONNX model: no graph found');
  }
  return model;
}

export function decodeTensor(buf: Uint8Array): TensorProto {
  return decodeMessage<TensorProto>('TensorProto', buf, 'ONNX TensorProto');
}

// ---------------------------------------------------------------------------------------------
// Encoding

function notInteger(spec: MessageSpec, f: FieldSpec, v: unknown): never {
  throw new TypeError(`cannot encode ${spec.name}.${f.key}: ${String(v)} is not an integer`);
}

/** Size of one scalar value (payload only, no tag). Integers are validated here. */
function scalarSize(kind: Kind, v: unknown, spec: MessageSpec, f: FieldSpec): number {
  switch (kind) {
    case K_INT64:
    case K_UINT64:
      if (typeof v !== 'bigint' && !Number.isSafeInteger(v)) notInteger(spec, f, v);
      return varint64Size(v as Int64);
    case K_INT32:
      if (!Number.isSafeInteger(v)) notInteger(spec, f, v);
      return int32Size(v as number);
    case K_FLOAT:
      return 4;
    case K_DOUBLE:
      return 8;
    case K_STRING: {
      const n = Buffer.byteLength(v as string, 'utf8');
      return varintSize(n) + n;
    }
    case K_BYTES: {
      const n = (v as Uint8Array).length;
      return varintSize(n) + n;
    }
    default:
      throw new Error('unreachable');
  }
}

function isDefault(kind: Kind, v: unknown): boolean {
  if (kind === K_STRING) return v === '';
  if (kind === K_MSG || kind === K_BYTES) return false;
  return v === 0 || v === 0n;
}

/** Payload size of a packed repeated scalar field (no tag, no length prefix). */
function packedSize(spec: MessageSpec, f: FieldSpec, arr: unknown[]): number {
  const n = arr.length;
  if (f.kind === K_FLOAT) return 4 * n;
  if (f.kind === K_DOUBLE) return 8 * n;
  let payload = 0;
  for (let i = 0; i < n; i++) payload += scalarSize(f.kind, arr[i], spec, f);
  return payload;
}

/**
 * Size pass: returns the encoded size of `obj` and records it (pre-order) in `sizes`, so that the
 * write pass can read each message's length without recomputing it.
 */
function sizeMsg(spec: MessageSpec, obj: Record<string, unknown>, sizes: number[]): number {
  const slot = sizes.length;
  sizes.push(0);
  let total = 0;
  for (const f of spec.fields) {
    const v = obj[f.key];
    if (v === undefined || v === null) continue;
    if (f.rep) {
      const arr = v as unknown[];
      const n = arr.length;
      if (n === 0) continue;
      if (f.kind === K_MSG) {
        const sub = SPECS[f.msg!];
        for (let i = 0; i < n; i++) {
          const s = sizeMsg(sub, arr[i] as Record<string, unknown>, sizes);
          total += f.tagSize + varintSize(s) + s;
        }
      } else if (f.packed) {
        const payload = packedSize(spec, f, arr);
        total += f.tagSize + varintSize(payload) + payload;
      } else {
        for (let i = 0; i < n; i++) total += f.tagSize + scalarSize(f.kind, arr[i], spec, f);
      }
    } else {
      if (f.always && isDefault(f.kind, v)) continue;
      if (f.kind === K_MSG) {
        const s = sizeMsg(SPECS[f.msg!], v as Record<string, unknown>, sizes);
        total += f.tagSize + varintSize(s) + s;
      } else {
        total += f.tagSize + scalarSize(f.kind, v, spec, f);
      }
    }
  }
  const unk = obj.unknownFields as Uint8Array[] | undefined;
  if (unk !== undefined) for (const u of unk) total += u.length;
  sizes[slot] = total;
  return total;
}

class Writer {
  readonly buf: Buffer;
  pos = 0;
  sizeIdx = 0;
  constructor(buf: Buffer, readonly sizes: number[]) {
    this.buf = buf;
  }

  varint(v: number): void {
    const buf = this.buf;
    while (v >= 0x80) {
      buf[this.pos++] = (v & 0x7f) | 0x80;
      v = v < 0x80000000 ? v >>> 7 : Math.floor(v / 128);
    }
    buf[this.pos++] = v;
  }

  varintBig(u: bigint): void {
    const buf = this.buf;
    while (u >= 0x80n) {
      buf[this.pos++] = Number(u & 0x7fn) | 0x80;
      u >>= 7n;
    }
    buf[this.pos++] = Number(u);
  }

  int64(v: Int64): void {
    if (typeof v === 'number') {
      if (v >= 0) this.varint(v);
      else this.varintBig(BigInt.asUintN(64, BigInt(v)));
    } else {
      this.varintBig(BigInt.asUintN(64, v));
    }
  }

  scalar(kind: Kind, v: unknown): void {
    switch (kind) {
      case K_INT64:
      case K_UINT64:
        this.int64(v as Int64);
        return;
      case K_INT32:
        this.int64(v as number);
        return;
      case K_FLOAT:
        this.buf.writeFloatLE(v as number, this.pos);
        this.pos += 4;
        return;
      case K_DOUBLE:
        this.buf.writeDoubleLE(v as number, this.pos);
        this.pos += 8;
        return;
      case K_STRING: {
        const s = v as string;
        const n = Buffer.byteLength(s, 'utf8');
        this.varint(n);
        if (n > 0) this.buf.write(s, this.pos, n, 'utf8');
        this.pos += n;
        return;
      }
      case K_BYTES: {
        const b = v as Uint8Array;
        this.varint(b.length);
        this.buf.set(b, this.pos);
        this.pos += b.length;
        return;
      }
      default:
        throw new Error('unreachable');
    }
  }

  msg(spec: MessageSpec, obj: Record<string, unknown>): void {
    this.sizeIdx++; // own slot, already consumed by the caller for the length prefix
    for (const f of spec.fields) {
      const v = obj[f.key];
      if (v === undefined || v === null) continue;
      if (f.rep) {
        const arr = v as unknown[];
        const n = arr.length;
        if (n === 0) continue;
        if (f.kind === K_MSG) {
          const sub = SPECS[f.msg!];
          for (let i = 0; i < n; i++) {
            this.varint(f.tag);
            this.varint(this.sizes[this.sizeIdx]!);
            this.msg(sub, arr[i] as Record<string, unknown>);
          }
        } else if (f.packed) {
          this.varint(f.tag);
          this.varint(packedSize(spec, f, arr));
          for (let i = 0; i < n; i++) this.scalar(f.kind, arr[i]);
        } else {
          for (let i = 0; i < n; i++) {
            this.varint(f.tag);
            this.scalar(f.kind, arr[i]);
          }
        }
      } else {
        if (f.always && isDefault(f.kind, v)) continue;
        this.varint(f.tag);
        if (f.kind === K_MSG) {
          this.varint(this.sizes[this.sizeIdx]!);
          this.msg(SPECS[f.msg!], v as Record<string, unknown>);
        } else {
          this.scalar(f.kind, v);
        }
      }
    }
    const unk = obj.unknownFields as Uint8Array[] | undefined;
    if (unk !== undefined) {
      for (const u of unk) {
        this.buf.set(u, this.pos);
        this.pos += u.length;
      }
    }
  }
}

/** protobuf's hard limit for one serialized message. */
export const PROTOBUF_MAX_BYTES = 0x7fffffff;

/** Encoded size in bytes of any schema message. */
export function encodedSize(type: MessageName, obj: object): number {
  return sizeMsg(SPECS[type], obj as Record<string, unknown>, []);
}

/**
 * Encodes any schema message into one freshly allocated Buffer (sizes first, then one write
 * pass). `what` names the message in the size-limit error.
 */
export function encodeMessage(type: MessageName, obj: object, what = 'message'): Buffer {
  const sizes: number[] = [];
  const total = sizeMsg(SPECS[type], obj as Record<string, unknown>, sizes);
  if (total > PROTOBUF_MAX_BYTES) {
    throw new SdgenError(
      `the ${what} would be ${total} bytes, over protobuf's 2 GiB limit: save it with external data`,
    );
  }
  const w = new Writer(Buffer.allocUnsafe(total), sizes);
  w.msg(SPECS[type], obj as Record<string, unknown>);
  if (w.pos !== total) throw new Error(`internal encoder error: wrote ${w.pos} of ${total} bytes`);
  return w.buf;
}

/** Encodes a model into one Buffer. Throws SdgenError when it would exceed 2 GiB − 1 bytes. */
export function encodeModel(model: ModelProto): Buffer {
  return encodeMessage('ModelProto', model, 'ONNX model');
}

export function encodeTensor(t: TensorProto): Buffer {
  return encodeMessage('TensorProto', t, `tensor ${t.name ?? ''}`);
}

/** Field numbers used by the streaming writer (model-io.ts). */
export const FIELD = {
  MODEL_GRAPH: 7,
  GRAPH_INITIALIZER: 5,
  TENSOR_RAW_DATA: 9,
} as const;

/** Bytes of a length-delimited field header: tag (wire type 2) + length varint. */
export function lenFieldHeader(fieldNo: number, length: number): Buffer {
  const tag = fieldNo * 8 + WT_LEN;
  const b = Buffer.allocUnsafe(varintSize(tag) + varintSize(length));
  const w = new Writer(b, []);
  w.varint(tag);
  w.varint(length);
  return b;
}

/** Size of a length-delimited field with a payload of `length` bytes (header included). */
export function lenFieldSize(fieldNo: number, length: number): number {
  return varintSize(fieldNo * 8 + WT_LEN) + varintSize(length) + length;
}

/**
 * Splits a message around one field: `[before, after]` hold the known fields numbered below and
 * above `fieldNo` (shallow, sharing values), `after` also the unknown fields. Since encoding
 * writes fields in number order, `encode(before) + <field fieldNo> + encode(after)` is exactly
 * `encode(obj)`: the streaming writer uses this to put large parts (graph, initializers, raw
 * data) in their usual place without building them in memory.
 */
export function splitFields(type: MessageName, obj: object, fieldNo: number): [before: object, after: object] {
  const src = obj as Record<string, unknown>;
  const before: Record<string, unknown> = {};
  const after: Record<string, unknown> = {};
  for (const f of SPECS[type].fields) {
    if (f.no === fieldNo) continue;
    const v = src[f.key];
    if (v === undefined) continue;
    (f.no < fieldNo ? before : after)[f.key] = v;
  }
  if (src.unknownFields !== undefined) after.unknownFields = src.unknownFields;
  return [before, after];
}
