/**
 * In-memory representation of the ONNX protobuf schema (onnx.proto, IR version 10 / ONNX 1.16+).
 *
 * This is the contract shared by the codec (src/onnx/proto.ts), the graph helpers, the builders
 * (src/synth) and the graph rewrites (src/tome). Field names are the proto field names in
 * camelCase. Every message may carry `unknownFields`: raw wire bytes of fields this schema does
 * not know, re-emitted verbatim on encode so that nothing is ever dropped silently.
 *
 * int64 fields are `Int64`: a JS number when the value is a safe integer, else a bigint, so that
 * decode → encode is lossless (e.g. INT64_MAX in old Slice attributes).
 */
export type Int64 = number | bigint;

/** TensorProto.DataType */
export enum DataType {
  UNDEFINED = 0,
  FLOAT = 1,
  UINT8 = 2,
  INT8 = 3,
  UINT16 = 4,
  INT16 = 5,
  INT32 = 6,
  INT64 = 7,
  STRING = 8,
  BOOL = 9,
  FLOAT16 = 10,
  DOUBLE = 11,
  UINT32 = 12,
  UINT64 = 13,
  COMPLEX64 = 14,
  COMPLEX128 = 15,
  BFLOAT16 = 16,
  FLOAT8E4M3FN = 17,
  FLOAT8E4M3FNUZ = 18,
  FLOAT8E5M2 = 19,
  FLOAT8E5M2FNUZ = 20,
  UINT4 = 21,
  INT4 = 22,
  FLOAT4E2M1 = 23,
}

/** AttributeProto.AttributeType */
export enum AttributeType {
  UNDEFINED = 0,
  FLOAT = 1,
  INT = 2,
  STRING = 3,
  TENSOR = 4,
  GRAPH = 5,
  SPARSE_TENSOR = 11,
  TYPE_PROTO = 13,
  FLOATS = 6,
  INTS = 7,
  STRINGS = 8,
  TENSORS = 9,
  GRAPHS = 10,
  SPARSE_TENSORS = 12,
  TYPE_PROTOS = 14,
}

/** TensorProto.DataLocation */
export enum DataLocation {
  DEFAULT = 0,
  EXTERNAL = 1,
}

export interface UnknownFields {
  /** Raw wire bytes (tag + payload) of fields not in this schema, in the order met. */
  unknownFields?: Uint8Array[];
}

export interface StringStringEntryProto extends UnknownFields {
  key: string;
  value: string;
}

export interface TensorAnnotation extends UnknownFields {
  tensorName?: string;
  quantParameterTensorNames: StringStringEntryProto[];
}

export interface OperatorSetIdProto extends UnknownFields {
  /** '' or 'ai.onnx' is the default domain. */
  domain: string;
  version: Int64;
}

export interface TensorSegment extends UnknownFields {
  begin?: Int64;
  end?: Int64;
}

export interface TensorProto extends UnknownFields {
  dims: Int64[];
  dataType: DataType | number;
  segment?: TensorSegment;
  floatData?: number[];
  int32Data?: number[];
  /** bytes per element */
  stringData?: Uint8Array[];
  int64Data?: Int64[];
  name?: string;
  docString?: string;
  /**
   * Raw little-endian bytes. On decode this is a view (subarray) into the source buffer, never
   * a copy. For external tensors this stays undefined until external data is resolved.
   */
  rawData?: Uint8Array;
  externalData?: StringStringEntryProto[];
  dataLocation?: DataLocation | number;
  doubleData?: number[];
  uint64Data?: Int64[];
  metadataProps?: StringStringEntryProto[];
}

export interface SparseTensorProto extends UnknownFields {
  values?: TensorProto;
  indices?: TensorProto;
  dims: Int64[];
}

export interface Dimension extends UnknownFields {
  dimValue?: Int64;
  dimParam?: string;
  denotation?: string;
}

export interface TensorShapeProto extends UnknownFields {
  dim: Dimension[];
}

export interface TypeProto extends UnknownFields {
  tensorType?: { elemType?: number; shape?: TensorShapeProto } & UnknownFields;
  sequenceType?: { elemType?: TypeProto } & UnknownFields;
  mapType?: { keyType?: number; valueType?: TypeProto } & UnknownFields;
  optionalType?: { elemType?: TypeProto } & UnknownFields;
  sparseTensorType?: { elemType?: number; shape?: TensorShapeProto } & UnknownFields;
  denotation?: string;
}

export interface ValueInfoProto extends UnknownFields {
  name: string;
  type?: TypeProto;
  docString?: string;
  metadataProps?: StringStringEntryProto[];
}

export interface AttributeProto extends UnknownFields {
  name: string;
  refAttrName?: string;
  docString?: string;
  type?: AttributeType | number;
  f?: number;
  i?: Int64;
  /** bytes; use the helpers in attributes.ts to read/write as UTF-8 */
  s?: Uint8Array;
  t?: TensorProto;
  g?: GraphProto;
  sparseTensor?: SparseTensorProto;
  tp?: TypeProto;
  floats?: number[];
  ints?: Int64[];
  strings?: Uint8Array[];
  tensors?: TensorProto[];
  graphs?: GraphProto[];
  sparseTensors?: SparseTensorProto[];
  typeProtos?: TypeProto[];
}

export interface NodeProto extends UnknownFields {
  input: string[];
  output: string[];
  name?: string;
  opType: string;
  domain?: string;
  overload?: string;
  attribute: AttributeProto[];
  docString?: string;
  metadataProps?: StringStringEntryProto[];
}

export interface GraphProto extends UnknownFields {
  node: NodeProto[];
  name?: string;
  initializer: TensorProto[];
  sparseInitializer?: SparseTensorProto[];
  docString?: string;
  input: ValueInfoProto[];
  output: ValueInfoProto[];
  valueInfo: ValueInfoProto[];
  quantizationAnnotation?: TensorAnnotation[];
  metadataProps?: StringStringEntryProto[];
}

export interface TrainingInfoProto extends UnknownFields {
  initialization?: GraphProto;
  algorithm?: GraphProto;
  initializationBinding?: StringStringEntryProto[];
  updateBinding?: StringStringEntryProto[];
}

export interface FunctionProto extends UnknownFields {
  name: string;
  input: string[];
  output: string[];
  attribute: string[];
  attributeProto?: AttributeProto[];
  node: NodeProto[];
  docString?: string;
  opsetImport: OperatorSetIdProto[];
  domain?: string;
  overload?: string;
  valueInfo?: ValueInfoProto[];
  metadataProps?: StringStringEntryProto[];
}

export interface ModelProto extends UnknownFields {
  irVersion?: Int64;
  opsetImport: OperatorSetIdProto[];
  producerName?: string;
  producerVersion?: string;
  domain?: string;
  modelVersion?: Int64;
  docString?: string;
  graph?: GraphProto;
  metadataProps?: StringStringEntryProto[];
  trainingInfo?: TrainingInfoProto[];
  functions?: FunctionProto[];
}
