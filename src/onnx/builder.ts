/**
 * GraphBuilder: assembles an ONNX graph (the in-memory `ModelProto` of ./types.ts) with the
 * naming conventions of `torch.onnx.export` (PyTorch 1.13+):
 *
 * - nodes are named after the module scope they come from and their op type, numbered per scope
 *   and op type: `/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`, then
 *   `.../MatMul_1`, ...; the first output of a node is `<node name>_output_0`;
 * - module parameters are initializers named by their state-dict key
 *   (`down_blocks.0.resnets.0.conv1.weight`), while tensors torch derives from parameters during
 *   export (a transposed Linear weight, an unsqueezed GroupNorm affine) get value names such as
 *   `onnx::MatMul_1234`, numbered from one counter;
 * - scalar/shape constants are `Constant` nodes inside the current scope
 *   (`/attn1/Constant_3` → `/attn1/Constant_3_output_0`), or anonymous ones (`Constant_99` →
 *   `onnx::Unsqueeze_421`) for the axes torch inserts when it unsqueezes shape scalars.
 *
 * Pure logic: no I/O. Initializer data may be left out (`data: undefined`) and filled in later by
 * whoever writes the weights (see src/synth/weights.ts), so a multi-GB model can be described
 * without holding its weights.
 */
import {
  AttributeType,
  DataType,
  type AttributeProto,
  type Dimension,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from './types.js';
import { toHalfBits } from './tensor.js';

/** An attribute value with its ONNX type made explicit (numbers alone are ambiguous). */
export type AttrValue =
  | { int: number | bigint }
  | { float: number }
  | { ints: readonly (number | bigint)[] }
  | { floats: readonly number[] }
  | { string: string }
  | { tensor: TensorProto };

export type Attrs = Record<string, AttrValue>;

/** Attribute value helpers: `{ axis: int(0), epsilon: float(1e-5), perm: ints([0, 2, 1]) }`. */
export const int = (v: number | bigint): AttrValue => ({ int: v });
export const float = (v: number): AttrValue => ({ float: v });
export const ints = (v: readonly (number | bigint)[]): AttrValue => ({ ints: v });
export const str = (v: string): AttrValue => ({ string: v });
export const tensorAttr = (v: TensorProto): AttrValue => ({ tensor: v });

export function toAttributeProto(name: string, v: AttrValue): AttributeProto {
  if ('int' in v) return { name, type: AttributeType.INT, i: v.int };
  if ('float' in v) return { name, type: AttributeType.FLOAT, f: v.float };
  if ('ints' in v) return { name, type: AttributeType.INTS, ints: [...v.ints] };
  if ('floats' in v) return { name, type: AttributeType.FLOATS, floats: [...v.floats] };
  if ('string' in v) return { name, type: AttributeType.STRING, s: new TextEncoder().encode(v.string) };
  return { name, type: AttributeType.TENSOR, t: v.tensor };
}

/** Raw little-endian bytes of a typed array (a view, not a copy). */
function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A tensor with raw data built from plain numbers (for small constants). */
export function constTensor(
  dataType: DataType,
  dims: readonly number[],
  values: readonly (number | bigint)[],
  name?: string,
): TensorProto {
  const count = dims.reduce((a, b) => a * b, 1);
  if (values.length !== count) {
    throw new Error(`constTensor: ${values.length} values for dims [${dims.join(',')}]`);
  }
  let raw: Uint8Array;
  switch (dataType) {
    case DataType.FLOAT:
      raw = bytesOf(Float32Array.from(values, Number));
      break;
    case DataType.FLOAT16:
      raw = bytesOf(Uint16Array.from(values, (v) => toHalfBits(Number(v))));
      break;
    case DataType.INT64:
      raw = bytesOf(BigInt64Array.from(values, (v) => BigInt(v)));
      break;
    case DataType.INT32:
      raw = bytesOf(Int32Array.from(values, Number));
      break;
    case DataType.DOUBLE:
      raw = bytesOf(Float64Array.from(values, Number));
      break;
    case DataType.BOOL:
    case DataType.UINT8:
      raw = Uint8Array.from(values, Number);
      break;
    default:
      throw new Error(`constTensor: unsupported data type ${dataType}`);
  }
  const t: TensorProto = { dims: [...dims], dataType, rawData: raw };
  if (name !== undefined) t.name = name;
  return t;
}

export type DimSpec = number | string;

export interface NodeOptions {
  /** Full node name; default `/<scope>/<OpType>[_k]`. */
  name?: string;
  /** Output names, or a count of outputs named `<node>_output_<i>`. */
  outputs?: readonly string[] | number;
  domain?: string;
}

export interface BuilderOptions {
  opset: number;
  irVersion?: number;
  producerName?: string;
  producerVersion?: string;
  graphName?: string;
}

export class GraphBuilder {
  readonly opset: number;
  private readonly opts: BuilderOptions;
  private readonly nodes: NodeProto[] = [];
  private readonly inits: TensorProto[] = [];
  private readonly initNames = new Set<string>();
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly scopeStack: string[] = [];
  private readonly nameCounts = new Map<string, number>();
  private readonly usedNodeNames = new Set<string>();
  /** torch's value counter, used for `onnx::<Op>_<n>` names and anonymous constants. */
  private valueCounter: number;

  constructor(opts: BuilderOptions) {
    this.opts = opts;
    this.opset = opts.opset;
    this.valueCounter = 1;
  }

  /** Current scope prefix, e.g. `/down_blocks.0/resnets.0` ('' at top level). */
  get scopePath(): string {
    return this.scopeStack.length === 0 ? '' : '/' + this.scopeStack.join('/');
  }

  /** Runs `fn` inside a module scope (one path segment, e.g. `attn1` or `act_1`). */
  scope<T>(segment: string, fn: () => T): T {
    this.scopeStack.push(segment);
    try {
      return fn();
    } finally {
      this.scopeStack.pop();
    }
  }

  /** Next free torch-style node name for `opType` in the current scope. */
  nextName(opType: string): string {
    const base = `${this.scopePath}/${opType}`;
    for (;;) {
      const k = this.nameCounts.get(base) ?? 0;
      this.nameCounts.set(base, k + 1);
      const name = k === 0 ? base : `${base}_${k}`;
      if (!this.usedNodeNames.has(name)) return name;
    }
  }

  /**
   * Adds a node; returns its output names. Attributes: a record of typed values
   * (`{ axis: int(0) }`) or ready AttributeProtos (e.g. from ./attributes.ts).
   */
  node(opType: string, inputs: readonly string[], attrs?: Attrs | AttributeProto[], options?: NodeOptions): string[] {
    const name = options?.name ?? this.nextName(opType);
    if (this.usedNodeNames.has(name)) throw new Error(`GraphBuilder: duplicate node name ${name}`);
    this.usedNodeNames.add(name);
    const outSpec = options?.outputs ?? 1;
    const output =
      typeof outSpec === 'number'
        ? Array.from({ length: outSpec }, (_, i) => `${name}_output_${i}`)
        : [...outSpec];
    const attribute = !attrs
      ? []
      : Array.isArray(attrs)
        ? [...attrs]
        : Object.entries(attrs).map(([k, v]) => toAttributeProto(k, v));
    const n: NodeProto = { input: [...inputs], output, name, opType, attribute };
    if (options?.domain) n.domain = options.domain;
    this.nodes.push(n);
    this.valueCounter += output.length;
    return output;
  }

  /** Single-output convenience form of `node`. */
  op(opType: string, inputs: readonly string[], attrs?: Attrs | AttributeProto[], options?: NodeOptions): string {
    return this.node(opType, inputs, attrs, options)[0]!;
  }

  /** A scoped `Constant` node holding `value`; returns its output name. */
  constant(value: TensorProto, options?: NodeOptions): string {
    return this.op('Constant', [], { value: tensorAttr(value) }, options);
  }

  /** Scalar or 1-D int64 constant (`[]` dims when `scalar`). */
  constInt64(values: number | readonly (number | bigint)[]): string {
    if (typeof values === 'number') return this.constant(constTensor(DataType.INT64, [], [values]));
    return this.constant(constTensor(DataType.INT64, [values.length], values));
  }

  /** Scalar float constant of the given float type. */
  constScalar(value: number, dataType: DataType = DataType.FLOAT): string {
    return this.constant(constTensor(dataType, [], [value]));
  }

  /**
   * An unscoped constant as torch emits for unsqueeze axes of shape values: node `Constant_<k>`,
   * output `onnx::<consumerOp>_<n>`.
   */
  anonConstant(value: TensorProto, consumerOp: string): string {
    const k = this.nodes.length;
    const out = `onnx::${consumerOp}_${this.valueCounter}`;
    let name = `Constant_${k}`;
    while (this.usedNodeNames.has(name)) name = `${name}_`;
    this.node('Constant', [], { value: tensorAttr(value) }, { name, outputs: [out] });
    return out;
  }

  /** A fresh `onnx::<Op>_<n>` value name (for initializers torch derives during export). */
  derivedName(consumerOp: string): string {
    const name = `onnx::${consumerOp}_${this.valueCounter}`;
    this.valueCounter += 1;
    return name;
  }

  /** Declares an initializer; `data` may be omitted and supplied when the weights are written. */
  initializer(name: string, dataType: DataType, dims: readonly number[], data?: Uint8Array): string {
    if (this.initNames.has(name)) throw new Error(`GraphBuilder: duplicate initializer ${name}`);
    this.initNames.add(name);
    const t: TensorProto = { name, dims: [...dims], dataType };
    if (data !== undefined) t.rawData = data;
    this.inits.push(t);
    return name;
  }

  /** Adds a ready TensorProto (it must carry a unique name) as an initializer. */
  addInitializer(t: TensorProto): string {
    const name = t.name;
    if (!name) throw new Error('GraphBuilder: initializer without a name');
    if (this.initNames.has(name)) throw new Error(`GraphBuilder: duplicate initializer ${name}`);
    this.initNames.add(name);
    this.inits.push(t);
    return name;
  }

  hasInitializer(name: string): boolean {
    return this.initNames.has(name);
  }

  input(name: string, elemType: DataType, dims: readonly DimSpec[]): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, elemType: DataType, dims: readonly DimSpec[]): string {
    this.outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  get nodeCount(): number {
    return this.nodes.length;
  }

  get initializers(): readonly TensorProto[] {
    return this.inits;
  }

  build(): ModelProto {
    return {
      irVersion: this.opts.irVersion ?? (this.opset >= 17 ? 8 : 7),
      producerName: this.opts.producerName ?? 'pytorch',
      producerVersion: this.opts.producerVersion ?? (this.opset >= 17 ? '2.1.0' : '1.13.0'),
      opsetImport: [{ domain: '', version: this.opset }],
      graph: {
        name: this.opts.graphName ?? (this.opset >= 17 ? 'main_graph' : 'torch_jit'),
        node: this.nodes,
        initializer: this.inits,
        input: this.inputs,
        output: this.outputs,
        valueInfo: [],
      },
    };
  }
}

export function valueInfo(name: string, elemType: DataType, dims: readonly DimSpec[]): ValueInfoProto {
  const dim: Dimension[] = dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return { name, type: { tensorType: { elemType, shape: { dim } } } };
}
