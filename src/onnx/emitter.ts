/**
 * NodeEmitter: how the graph rewrites (ToMe, the GEGLU split, Winograd, polyphase, fused
 * attention) write the nodes they add. Every node gets a name no other node or tensor of the
 * graph has (`<scope>/<label>`, numbered `_1`, `_2`, … on collision, as NameAllocator does), and
 * its outputs default to torch's convention `<node name>_output_<k>`, so a rewritten graph reads
 * like an exported one and its additions can be traced back to the module they belong to.
 *
 * The emitter only collects nodes; where they go is the caller's choice (appended, or put in
 * place of the nodes they replace with `replaceNodes`, or made the body of an If branch).
 * Pure logic, no I/O.
 */
import type { NameAllocator } from './graph.js';
import type { AttributeProto, GraphProto, NodeProto, TensorProto } from './types.js';

export interface EmitOptions {
  /** Last segment of the node's name (default: its op type). */
  label?: string;
  /** Output names, or how many outputs to name `<node>_output_<k>` (default 1). */
  outputs?: number | readonly string[];
  /** Operator domain (default '', the standard one). */
  domain?: string;
}

export class NodeEmitter {
  readonly nodes: NodeProto[] = [];

  constructor(
    /** The graph's names: every name the emitter hands out is reserved here. */
    readonly names: NameAllocator,
    /** Node-name prefix, e.g. `/down_blocks.0/resnets.0/conv1/Conv/winograd` ('' for none). */
    readonly scope: string,
  ) {}

  /** Emits one node and returns its output names. */
  node(opType: string, inputs: readonly string[], attrs: readonly AttributeProto[] = [], o: EmitOptions = {}): string[] {
    const label = o.label ?? opType;
    const name = this.names.alloc(this.scope ? `${this.scope}/${label}` : label);
    const spec = o.outputs ?? 1;
    let output: string[];
    if (typeof spec === 'number') {
      output = Array.from({ length: spec }, (_, k) => this.names.alloc(`${name}_output_${k}`));
    } else {
      output = [...spec];
      for (const out of output) if (out !== '') this.names.reserve(out);
    }
    this.nodes.push({ name, opType, domain: o.domain ?? '', input: [...inputs], output, attribute: [...attrs] });
    return output;
  }

  /** Emits one single-output node and returns its output name (`output` to name it). */
  op(opType: string, inputs: readonly string[], attrs: readonly AttributeProto[] = [], o: Omit<EmitOptions, 'outputs'> & { output?: string } = {}): string {
    const { output, ...rest } = o;
    return this.node(opType, inputs, attrs, { ...rest, outputs: output === undefined ? 1 : [output] })[0]!;
  }
}

/**
 * Initializers a rewrite adds once per key and shares between the nodes it writes: the returned
 * function adds `make(name)` to `graph` under a fresh name derived from `prefix + key` the first
 * time a key is asked for, and returns that name every time.
 */
export function sharedInitializers(graph: GraphProto, names: NameAllocator, prefix: string): (key: string, make: (name: string) => TensorProto) => string {
  const added = new Map<string, string>();
  return (key, make) => {
    let name = added.get(key);
    if (name === undefined) {
      name = names.alloc(`${prefix}${key}`);
      graph.initializer.push(make(name));
      added.set(key, name);
    }
    return name;
  };
}
