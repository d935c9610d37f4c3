/**
 * Clip skip on a text encoder exported without per-layer hidden states.
 *
 * A1111's clip skip N encodes a prompt with the output of the N-th encoder layer from the end,
 * normalized by the text model's final layer norm (`final_layer_norm(hidden_states[-N])`;
 * diffusers' `clip_skip` does the same with N − 1). An export with outputs
 * `hidden_states.0 … hidden_states.L` (Optimum's, with `output_hidden_states`) serves that
 * directly; the standard exports (diffusers' conversion script, Optimum by default) have only
 * `last_hidden_state` and `pooler_output`. exposeHiddenStates adds the missing outputs to such a
 * graph: `hidden_states.0` is the embeddings (the input of layer 0), `hidden_states.K` the output
 * of layer K − 1 (the residual Add that ends it), `hidden_states.L` the input of the final layer
 * norm — the layout of an Optimum export — so that the text encoder's hidden-states path reads
 * them unchanged. Nothing else in the graph changes.
 *
 * Finding the layers: by name first (`torch.onnx.export` scopes nodes as
 * `/text_model/encoder/layers.K/…`): the Add of layer K whose output leaves the layer is its
 * output. Without such names (a renamed or re-exported graph), structurally: the final layer
 * norm's input is the last layer's output, and a CLIP layer is pre-LN with two residual Adds,
 * `mid = x + attn(ln1(x))`, `out = mid + mlp(ln2(mid))`; in `Add(a, b)` the residual operand is
 * the one the other operand is computed from, so the chain of residual Adds leads from the last
 * layer back to the embeddings (whose Add — token + position embedding — has no residual operand).
 *
 * The rewritten graph is cached on disk like sdgen's other rewrites (getRewrittenModel): written
 * once per source model, weights linked from the source where they are external. Pure logic
 * except getClipSkipModel.
 */
import { SdgenError } from '../errors.js';
import { finalLayerNormNode } from './final-layer-norm.js';
import { attrInt } from '../onnx/attributes.js';
import { uniqueName } from '../onnx/graph.js';
import { DataType, type GraphProto, type ModelProto, type NodeProto, type ValueInfoProto } from '../onnx/types.js';
import { getRewrittenModel, type RewriteCount } from './fused-model.js';

/** `hidden_states.0 … hidden_states.L` of a text encoder graph, and how they were found. */
export type EncoderLayerOutputs = { states: string[]; method: 'names' | 'structure' } | { reason: string };

/** What exposeHiddenStates did: count = encoder layers L (outputs hidden_states.0 … L added). */
export interface ExposeHiddenStatesResult extends RewriteCount {
  layers: number;
  method?: 'names' | 'structure';
}

const HIDDEN_STATE_OUTPUT = /^hidden_states[._]\d+$/;
const LAYER_SCOPE = /(?:^|\/)encoder\/layers\.(\d+)\//;

interface GraphIndex {
  producer: Map<string, NodeProto>;
  consumers: Map<string, NodeProto[]>;
  outputs: Set<string>;
}

function indexGraph(graph: GraphProto): GraphIndex {
  const producer = new Map<string, NodeProto>();
  const consumers = new Map<string, NodeProto[]>();
  for (const n of graph.node) {
    for (const o of n.output) if (o) producer.set(o, n);
    for (const i of n.input) {
      if (!i) continue;
      const l = consumers.get(i);
      if (l) l.push(n);
      else consumers.set(i, [n]);
    }
  }
  return { producer, consumers, outputs: new Set(graph.output.map((o) => o.name)) };
}

/** Whether tensor `from` is computed from tensor `target` (walks producers back from `from`). */
function dependsOn(ix: GraphIndex, from: string, target: string): boolean {
  const seen = new Set<string>();
  const stack = [from];
  while (stack.length > 0) {
    const t = stack.pop()!;
    if (t === target) return true;
    if (seen.has(t)) continue;
    seen.add(t);
    const p = ix.producer.get(t);
    if (p) for (const i of p.input) if (i && !seen.has(i)) stack.push(i);
  }
  return false;
}

/**
 * The residual operand of a residual Add node (`x + f(x)`: the operand the other one is computed
 * from); null for any other Add (or a non-Add).
 */
function residualOperand(ix: GraphIndex, add: NodeProto | undefined): string | null {
  if (add?.opType !== 'Add' || add.input.length !== 2) return null;
  const [a, b] = add.input as [string, string];
  if (!a || !b || a === b) return null;
  if (dependsOn(ix, b, a)) return a;
  if (dependsOn(ix, a, b)) return b;
  return null;
}

/** The layers found by their scope names; a reason when the names do not describe them. */
function byNames(graph: GraphProto, ix: GraphIndex, last: string): EncoderLayerOutputs {
  const layerOf = new Map<NodeProto, number>();
  let count = 0;
  for (const n of graph.node) {
    const m = LAYER_SCOPE.exec(n.name ?? '');
    if (!m) continue;
    const k = Number(m[1]);
    layerOf.set(n, k);
    count = Math.max(count, k + 1);
  }
  if (count === 0) return { reason: 'no nodes named after encoder layers' };
  const outs: string[] = [];
  for (let k = 0; k < count; k++) {
    // the layer's output: what an Add of the layer gives to nodes outside it
    const leaving = new Set<string>();
    for (const [n, kn] of layerOf) {
      if (kn !== k || n.opType !== 'Add') continue;
      for (const o of n.output) {
        if (!o) continue;
        const used = ix.consumers.get(o) ?? [];
        if (ix.outputs.has(o) || used.some((c) => layerOf.get(c) !== k)) leaving.add(o);
      }
    }
    if (leaving.size !== 1) return { reason: `encoder layer ${k}: ${leaving.size === 0 ? 'no' : leaving.size} output Adds found by name` };
    outs.push([...leaving][0]!);
  }
  // the input of layer 0 through its two residual Adds; each layer's input is the previous output
  const inputOf = (k: number): string | null => {
    const mid = residualOperand(ix, ix.producer.get(outs[k]!));
    const midAdd = mid ? ix.producer.get(mid) : undefined;
    if (!midAdd || layerOf.get(midAdd) !== k) return null;
    return residualOperand(ix, midAdd);
  };
  const states = [inputOf(0)];
  if (states[0] === null) return { reason: 'encoder layer 0: residual Adds not found' };
  for (let k = 1; k < count; k++) {
    if (inputOf(k) !== outs[k - 1]) return { reason: `encoder layer ${k}: its input is not layer ${k - 1}'s output` };
  }
  if (outs[count - 1] !== last) return { reason: `the final layer norm does not normalize encoder layer ${count - 1}'s output` };
  return { states: [states[0]!, ...outs], method: 'names' };
}

/** The layers found by the chain of residual Adds from the final layer norm's input back. */
function byStructure(ix: GraphIndex, last: string): EncoderLayerOutputs {
  const states = [last];
  for (;;) {
    const mid = residualOperand(ix, ix.producer.get(states[0]!));
    if (mid === null) break;
    const input = residualOperand(ix, ix.producer.get(mid));
    if (input === null) return { reason: `the residual Add producing ${mid} is not preceded by another one (not a CLIP encoder layer)` };
    states.unshift(input);
  }
  if (states.length < 2) return { reason: 'no residual encoder layers before the final layer norm' };
  return { states, method: 'structure' };
}

/**
 * The tensors `hidden_states.0 … hidden_states.L` of a CLIP text encoder graph whose output
 * `lastOutput` is the final layer norm's: by node names, else by structure (see the file comment).
 */
export function encoderLayerOutputs(graph: GraphProto, lastOutput = 'last_hidden_state'): EncoderLayerOutputs {
  const ln = finalLayerNormNode(graph, lastOutput);
  if (!ln) return { reason: `final layer norm producing ${lastOutput} not found` };
  const ix = indexGraph(graph);
  const named = byNames(graph, ix, ln.input);
  if ('states' in named) return named;
  const structural = byStructure(ix, ln.input);
  if ('states' in structural) return structural;
  return { reason: `${structural.reason}; by name: ${named.reason}` };
}

/**
 * Adds outputs `hidden_states.0 … hidden_states.L` to a text encoder graph without them (in
 * place). Each is a Cast of the layer's tensor to `last_hidden_state`'s element type (an exact
 * copy: the residual stream has that type in the exports sdgen reads, and a graph output must
 * state its type), named so unless the tensor already bears the name. count = 0 with the reason
 * in `skipped` when the layers are not found or the graph has such outputs already.
 */
export function exposeHiddenStates(model: ModelProto): ExposeHiddenStatesResult {
  const graph = model.graph;
  if (!graph) return { count: 0, layers: 0, skipped: ['model has no graph'] };
  if (graph.output.some((o) => HIDDEN_STATE_OUTPUT.test(o.name))) {
    return { count: 0, layers: 0, skipped: ['the text encoder has hidden_states outputs already'] };
  }
  const last = graph.output.find((o) => o.name === 'last_hidden_state') ?? graph.output[0];
  if (!last) return { count: 0, layers: 0, skipped: ['model has no outputs'] };
  const found = encoderLayerOutputs(graph, last.name);
  if ('reason' in found) return { count: 0, layers: 0, skipped: [found.reason] };
  const elemType = last.type?.tensorType?.elemType ?? DataType.FLOAT;
  const dims = last.type?.tensorType?.shape?.dim;
  const produced = new Set(graph.node.flatMap((n) => n.output));
  for (const i of graph.input) produced.add(i.name);
  for (const t of graph.initializer) if (t.name) produced.add(t.name);
  const outputs: ValueInfoProto[] = [];
  const nodes: NodeProto[] = [];
  for (const [k, src] of found.states.entries()) {
    const name = `hidden_states.${k}`;
    if (src !== name) {
      if (produced.has(name)) return { count: 0, layers: 0, skipped: [`a tensor named ${name} exists already`] };
      nodes.push({ opType: 'Cast', name: uniqueName(graph, `/clip_skip/hidden_states.${k}/Cast`), input: [src], output: [name], attribute: [attrInt('to', elemType)] });
    }
    outputs.push({ name, type: { tensorType: { elemType, ...(dims ? { shape: { dim: dims.map((d) => ({ ...d })) } } : {}) } } });
  }
  // appended after every producer: the node order stays topological
  graph.node.push(...nodes);
  graph.output.push(...outputs);
  const layers = found.states.length - 1;
  return { count: layers, layers, skipped: [], method: found.method };
}

/** A text encoder with hidden_states outputs: the rewritten file and its layer count. */
export interface ClipSkipModel {
  path: string;
  layers: number;
  cached: boolean;
}

/**
 * The text encoder `file` with outputs `hidden_states.0 … L` (exposeHiddenStates), cached under
 * `<cacheDir>/clip-skip/`. SdgenError when its encoder layers are not found.
 */
export async function getClipSkipModel(file: string, opts: { cacheDir: string }): Promise<ClipSkipModel> {
  const r = await getRewrittenModel(file, opts.cacheDir, 'clip-skip', { v: 1 }, (m) => exposeHiddenStates(m));
  if (!r.rewritten) throw new SdgenError(`clip skip: cannot find the encoder layers of ${file} (${r.skipped[0] ?? 'unknown graph'})`);
  return { path: r.path, layers: r.count, cached: r.cached };
}
