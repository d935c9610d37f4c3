/**
 * The ToMe subgraphs' node emitter: the shared NodeEmitter (src/onnx/emitter.ts) plus what the
 * merge plan needs on top — int64/float constants emitted once per graph, If nodes whose branches
 * are built by callbacks, and the opset-dependent op forms (Reduce* take `axes` as an attribute
 * before opset 18 and as an input from 18 on). Pure: builds NodeProto objects, no I/O.
 */
import { attrGraph, attrInt, attrInts, attrTensor } from '../onnx/attributes.js';
import { NodeEmitter } from '../onnx/emitter.js';
import type { NameAllocator } from '../onnx/graph.js';
import { int64Tensor, makeTensor, scalarTensor } from '../onnx/tensor.js';
import { DataType, type GraphProto, type TensorProto, type ValueInfoProto } from '../onnx/types.js';

export class ToMeEmitter extends NodeEmitter {
  /** Constants are emitted once, in the outermost graph (subgraphs see them as outer-scope values). */
  private readonly root: ToMeEmitter;
  private readonly constants = new Map<string, string>();

  constructor(
    names: NameAllocator,
    /** Node-name scope, e.g. `/tome/block3`. */
    scope: string,
    /** Default-domain opset the emitted nodes must be valid for. */
    readonly opset: number,
    root?: ToMeEmitter,
  ) {
    super(names, scope);
    this.root = root ?? this;
  }

  /** An emitter for a subgraph body (same name space and opset, its own node list). */
  child(scope: string): ToMeEmitter {
    return new ToMeEmitter(this.names, `${this.scope}/${scope}`, this.opset, this.root);
  }

  /** int64 constant: a scalar (0-d) for a number, 1-D for an array. */
  i64(v: number | readonly number[]): string {
    const key = typeof v === 'number' ? `i64:${v}` : `i64[${v.join(',')}]`;
    return this.root.constant(key, () => (typeof v === 'number' ? scalarTensor('', DataType.INT64, v) : int64Tensor('', v)));
  }

  /** Scalar constant of a floating type. */
  scalar(dataType: DataType, v: number): string {
    return this.root.constant(`${dataType}:${v}`, () => scalarTensor('', dataType, v));
  }

  private constant(key: string, make: () => TensorProto): string {
    let name = this.constants.get(key);
    if (name === undefined) {
      name = this.op('Constant', [], [attrTensor('value', make())]);
      this.constants.set(key, name);
    }
    return name;
  }

  /** Empty 1-D tensor of a type (used for the outputs of an If branch that is never read). */
  empty(dataType: DataType): string {
    const data = dataType === DataType.INT64 ? new BigInt64Array(0) : dataType === DataType.DOUBLE ? new Float64Array(0) : new Float32Array(0);
    return this.op('Constant', [], [attrTensor('value', makeTensor('', dataType, [0], data))], { label: 'Empty' });
  }

  /** ConstantOfShape with a one-element value of `dataType`. */
  filled(shape: string, dataType: DataType, v: number): string {
    return this.op('ConstantOfShape', [shape], [attrTensor('value', { ...scalarTensor('', dataType, v), dims: [1] })]);
  }

  cast(x: string, to: DataType): string {
    return this.op('Cast', [x], [attrInt('to', to)]);
  }

  unsqueeze(x: string, axes: readonly number[]): string {
    return this.op('Unsqueeze', [x, this.i64(axes)]);
  }

  /** Reduce over `axes` (ReduceSum takes axes as input from opset 13, the others from 18). */
  reduce(op: 'ReduceMax' | 'ReduceL2' | 'ReduceSum', x: string, axes: readonly number[], keepdims: boolean): string {
    const asInput = op === 'ReduceSum' ? this.opset >= 13 : this.opset >= 18;
    const kd = attrInt('keepdims', keepdims ? 1 : 0);
    if (asInput) return this.op(op, [x, this.i64(axes)], [kd]);
    return this.op(op, [x], [attrInts('axes', axes), kd]);
  }

  /** Concat of 1-D int64 shape pieces (scalars are unsqueezed first). */
  shape1d(parts: Array<{ scalar: string } | { vec: string }>): string {
    const ins = parts.map((p) => ('scalar' in p ? this.unsqueeze(p.scalar, [0]) : p.vec));
    return ins.length === 1 ? ins[0]! : this.op('Concat', ins, [attrInt('axis', 0)]);
  }

  /** Emits an If node whose branches are built by the callbacks (each returns its outputs). */
  ifNode(
    cond: string,
    outTypes: readonly DataType[],
    thenBody: (e: ToMeEmitter) => string[],
    elseBody: (e: ToMeEmitter) => string[],
    label = 'If',
  ): string[] {
    const mk = (which: string, body: (e: ToMeEmitter) => string[]): GraphProto => {
      const sub = this.child(`${label}_${which}`);
      let outs = body(sub);
      // A branch output must be produced inside the branch: wrap outer names in Identity.
      const produced = new Set(sub.nodes.flatMap((n) => n.output));
      outs = outs.map((o) => (produced.has(o) ? o : sub.op('Identity', [o])));
      if (outs.length !== outTypes.length) throw new Error(`If ${label}: ${outs.length} outputs, expected ${outTypes.length}`);
      const output: ValueInfoProto[] = outs.map((name, k) => ({ name, type: { tensorType: { elemType: outTypes[k]! } } }));
      return { name: `${this.scope}/${label}_${which}`, node: sub.nodes, initializer: [], input: [], output, valueInfo: [] };
    };
    const thenG = mk('then', thenBody);
    const elseG = mk('else', elseBody);
    return this.node('If', [cond], [attrGraph('then_branch', thenG), attrGraph('else_branch', elseG)], { outputs: outTypes.length, label });
  }
}
