/**
 * Build context shared by the synthetic model builders: a GraphBuilder plus the float type of
 * the export (float32 or float16), the module path used for parameter names, and the rule that
 * later fills each initializer (see weights.ts). Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { GraphBuilder } from '../onnx/builder.js';

/** How an initializer's values are produced when the weights are written. */
export type InitRule =
  /** uniform in [-bound, bound] (torch's default Linear/Conv init uses 1/sqrt(fan_in)) */
  | { kind: 'uniform'; bound: number }
  /** every element equal to value */
  | { kind: 'fill'; value: number }
  /** 0, 1, 2, ... along the last axis (position ids) */
  | { kind: 'arange' };

export interface ParamEntry {
  name: string;
  dataType: DataType;
  dims: number[];
  rule: InitRule;
  /** counts as a model parameter (false for buffers such as position_ids) */
  trainable: boolean;
  /**
   * Name its values are seeded from: the state-dict key of the torch parameter it comes from
   * (for derived `onnx::…` initializers), so weights do not depend on graph numbering.
   */
  seedKey?: string;
}

export class SynthContext {
  readonly b: GraphBuilder;
  /** float element type of activations and weights (FLOAT or FLOAT16) */
  readonly ft: DataType;
  readonly params: ParamEntry[] = [];
  private readonly derived: ParamEntry[] = [];
  private readonly path: string[] = [];

  constructor(opset: number, fp16: boolean) {
    this.b = new GraphBuilder({ opset });
    this.ft = fp16 ? DataType.FLOAT16 : DataType.FLOAT;
  }

  get opset(): number {
    return this.b.opset;
  }

  /** Enters a module: one node-scope segment and (unless `paramSegment` is null) a name segment. */
  mod<T>(segment: string, fn: () => T, paramSegment: string | null = segment): T {
    if (paramSegment !== null) this.path.push(paramSegment);
    try {
      return this.b.scope(segment, fn);
    } finally {
      if (paramSegment !== null) this.path.pop();
    }
  }

  /** Parameter of the current module, named like a torch state-dict key. */
  param(leaf: string, dims: number[], rule: InitRule, dataType: DataType = this.ft): string {
    const name = [...this.path, leaf].join('.');
    this.b.initializer(name, dataType, dims);
    this.params.push({ name, dataType, dims, rule, trainable: true });
    return name;
  }

  /** Buffer (not counted as a parameter), named like a state-dict key. */
  buffer(leaf: string, dims: number[], rule: InitRule, dataType: DataType): string {
    const name = [...this.path, leaf].join('.');
    this.b.initializer(name, dataType, dims);
    this.params.push({ name, dataType, dims, rule, trainable: false });
    return name;
  }

  /**
   * An initializer torch derives from a parameter during export (transposed Linear weight,
   * unsqueezed norm affine): named `onnx::<Op>_<n>`, placed after the named parameters.
   */
  derivedParam(consumerOp: string, dims: number[], rule: InitRule, sourceLeaf: string): string {
    const name = this.b.derivedName(consumerOp);
    const seedKey = [...this.path, sourceLeaf].join('.');
    this.derived.push({ name, dataType: this.ft, dims, rule, trainable: true, seedKey });
    return name;
  }

  /** All initializers in file order: named parameters first, then derived ones (like torch). */
  finish(): ParamEntry[] {
    for (const d of this.derived) this.b.initializer(d.name, d.dataType, d.dims);
    const all = [...this.params, ...this.derived];
    this.derived.length = 0;
    return all;
  }
}

export function countOf(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}
