/**
 * Graph helpers shared by the builders and the graph rewrites (ToMe, fused attention): an index of
 * producers/consumers, unique names, stable topological sort, structural checks, opset imports,
 * node insertion/replacement, tensor renaming and dead-code removal. Pure logic, no I/O.
 *
 * Subgraphs (If/Loop/Scan bodies) may use tensors of enclosing graphs by name; such outer-scope
 * uses count as uses by the node holding the subgraph ("implicit inputs").
 */
import { SdgenError } from '../errors.js';
import { subgraphsOf } from './attributes.js';
import type {
  GraphProto, Int64, ModelProto, NodeProto, TensorProto, ValueInfoProto,
} from './types.js';

const isDefaultDomain = (d: string | undefined): boolean => d === undefined || d === '' || d === 'ai.onnx';

const nodeLabel = (n: NodeProto): string => (n.name ? `${n.name} (${n.opType})` : n.opType);

/** Names a graph defines itself: inputs, initializers, sparse initializers, node outputs. */
function definedNames(g: GraphProto): Set<string> {
  const s = new Set<string>();
  for (const i of g.input) s.add(i.name);
  for (const t of g.initializer) if (t.name) s.add(t.name);
  for (const st of g.sparseInitializer ?? []) if (st.values?.name) s.add(st.values.name);
  for (const n of g.node) for (const o of n.output) if (o !== '') s.add(o);
  return s;
}

/** Names a subgraph uses (node inputs, graph outputs, nested) that it does not define itself. */
export function outerScopeUses(g: GraphProto): Set<string> {
  const defined = definedNames(g);
  const out = new Set<string>();
  for (const n of g.node) {
    for (const i of n.input) if (i !== '' && !defined.has(i)) out.add(i);
    for (const sg of subgraphsOf(n)) for (const u of outerScopeUses(sg)) if (!defined.has(u)) out.add(u);
  }
  for (const o of g.output) if (!defined.has(o.name)) out.add(o.name);
  return out;
}

/** Explicit inputs (non-empty) plus the outer-scope names its subgraphs use. */
export function nodeUses(n: NodeProto): string[] {
  const uses = n.input.filter((i) => i !== '');
  const subs = subgraphsOf(n);
  if (subs.length === 0) return uses;
  const set = new Set(uses);
  for (const sg of subs) for (const u of outerScopeUses(sg)) set.add(u);
  return [...set];
}

/** Lookup tables over one graph. Call `refresh()` after editing the graph. */
export class GraphIndex {
  private producers = new Map<string, NodeProto>();
  private users = new Map<string, NodeProto[]>();
  private names = new Map<string, NodeProto>();
  private inits = new Map<string, TensorProto>();
  private inputs = new Set<string>();
  private outputs = new Set<string>();
  private byOp = new Map<string, NodeProto[]>();

  constructor(readonly graph: GraphProto) {
    this.refresh();
  }

  refresh(): this {
    const g = this.graph;
    this.producers.clear();
    this.users.clear();
    this.names.clear();
    this.inits.clear();
    this.inputs.clear();
    this.outputs.clear();
    this.byOp.clear();
    for (const n of g.node) {
      for (const o of n.output) if (o !== '' && !this.producers.has(o)) this.producers.set(o, n);
      for (const i of nodeUses(n)) {
        const list = this.users.get(i);
        if (list === undefined) this.users.set(i, [n]);
        else if (list[list.length - 1] !== n) list.push(n);
      }
      if (n.name && !this.names.has(n.name)) this.names.set(n.name, n);
      const key = `${isDefaultDomain(n.domain) ? '' : n.domain}\u0000${n.opType}`;
      const l = this.byOp.get(key);
      if (l === undefined) this.byOp.set(key, [n]);
      else l.push(n);
    }
    for (const t of g.initializer) if (t.name) this.inits.set(t.name, t);
    for (const i of g.input) this.inputs.add(i.name);
    for (const o of g.output) this.outputs.add(o.name);
    return this;
  }

  /** The node producing `tensor` (the first one if several do). */
  producer(tensor: string): NodeProto | undefined {
    return this.producers.get(tensor);
  }

  /** Nodes using `tensor` (each once, in graph order), including through subgraphs. */
  consumers(tensor: string): NodeProto[] {
    return this.users.get(tensor) ?? [];
  }

  /** Nodes of an op type; domain '' (default) also matches 'ai.onnx'. */
  nodesByOp(opType: string, domain = ''): NodeProto[] {
    return this.byOp.get(`${isDefaultDomain(domain) ? '' : domain}\u0000${opType}`) ?? [];
  }

  nodeByName(name: string): NodeProto | undefined {
    return this.names.get(name);
  }

  initializer(name: string): TensorProto | undefined {
    return this.inits.get(name);
  }

  isGraphInput(name: string): boolean {
    return this.inputs.has(name);
  }

  isGraphOutput(name: string): boolean {
    return this.outputs.has(name);
  }
}

// ---------------------------------------------------------------------------------------------
// Names

/** Every name in use in a graph and its subgraphs: tensors, value infos and node names. */
function collectNames(g: GraphProto, into: Set<string>): void {
  for (const i of g.input) into.add(i.name);
  for (const o of g.output) into.add(o.name);
  for (const v of g.valueInfo) into.add(v.name);
  for (const t of g.initializer) if (t.name) into.add(t.name);
  for (const st of g.sparseInitializer ?? []) if (st.values?.name) into.add(st.values.name);
  for (const n of g.node) {
    if (n.name) into.add(n.name);
    for (const o of n.output) into.add(o);
    for (const i of n.input) into.add(i);
    for (const sg of subgraphsOf(n)) collectNames(sg, into);
  }
}

/** Hands out names not used anywhere in a graph (tensor names and node names alike). */
export class NameAllocator {
  private used = new Set<string>();
  private counters = new Map<string, number>();

  constructor(graph?: GraphProto) {
    if (graph) collectNames(graph, this.used);
  }

  has(name: string): boolean {
    return this.used.has(name);
  }

  /** Marks a name as taken. */
  reserve(name: string): void {
    this.used.add(name);
  }

  /** `base` if free, else `base_1`, `base_2`, …; the name returned is reserved. */
  alloc(base: string): string {
    let name = base;
    if (this.used.has(name)) {
      let k = this.counters.get(base) ?? 1;
      while (this.used.has(`${base}_${k}`)) k++;
      this.counters.set(base, k + 1);
      name = `${base}_${k}`;
    }
    this.used.add(name);
    return name;
  }
}

/** A name unused in `graph` (one-off; use NameAllocator for many). */
export function uniqueName(graph: GraphProto, base: string): string {
  return new NameAllocator(graph).alloc(base);
}

// ---------------------------------------------------------------------------------------------
// Ordering

/** Min-heap of node indices. */
class IndexHeap {
  private a: number[] = [];
  get size(): number {
    return this.a.length;
  }
  push(v: number): void {
    const a = this.a;
    a.push(v);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= v) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = v;
  }
  pop(): number {
    const a = this.a;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const r = l + 1;
        const c = r < a.length && a[r]! < a[l]! ? r : l;
        if (a[c]! >= last) break;
        a[i] = a[c]!;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}

/**
 * Orders nodes so that every node comes after the producers of what it uses. Stable: the result
 * is the topological order closest to the current one (unchanged when already valid). Names that
 * no node produces (graph inputs, initializers, outer scope, dangling) impose no constraint.
 * Throws SdgenError on a cycle. Sorts in place and returns the graph.
 */
export function topologicalSort(graph: GraphProto): GraphProto {
  const nodes = graph.node;
  const n = nodes.length;
  const producers = new Map<string, number[]>();
  nodes.forEach((node, i) => {
    for (const o of node.output) {
      if (o === '') continue;
      const l = producers.get(o);
      if (l === undefined) producers.set(o, [i]);
      else l.push(i);
    }
  });
  const indeg = new Int32Array(n);
  const dependents: number[][] = Array.from({ length: n }, () => []);
  nodes.forEach((node, i) => {
    const deps = new Set<number>();
    for (const u of nodeUses(node)) for (const p of producers.get(u) ?? []) deps.add(p);
    for (const p of deps) {
      dependents[p]!.push(i);
      indeg[i]!++;
    }
  });
  const heap = new IndexHeap();
  for (let i = 0; i < n; i++) if (indeg[i] === 0) heap.push(i);
  const order: number[] = [];
  while (heap.size > 0) {
    const i = heap.pop();
    order.push(i);
    for (const d of dependents[i]!) if (--indeg[d]! === 0) heap.push(d);
  }
  if (order.length !== n) {
    const stuck = nodes.filter((_, i) => indeg[i]! > 0).slice(0, 5).map(nodeLabel);
    throw new SdgenError(`graph ${graph.name ?? ''} has a cycle (involving ${stuck.join(', ')}${n - order.length > 5 ? ', …' : ''})`);
  }
  graph.node = order.map((i) => nodes[i]!);
  return graph;
}

/** True when every node comes after the in-graph producers of what it uses. */
export function isTopologicallySorted(graph: GraphProto): boolean {
  const produced = new Map<string, number>();
  graph.node.forEach((node, i) => {
    for (const o of node.output) if (o !== '' && !produced.has(o)) produced.set(o, i);
  });
  for (let i = 0; i < graph.node.length; i++) {
    for (const u of nodeUses(graph.node[i]!)) {
      const p = produced.get(u);
      if (p !== undefined && p >= i) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Checks

function checkGraphInto(g: GraphProto, outer: ReadonlySet<string>, where: string, problems: string[]): void {
  const available = new Set<string>(outer);
  const definedBy = new Map<string, string>();
  const define = (name: string, by: string): void => {
    const prev = definedBy.get(name);
    if (prev !== undefined) problems.push(`${where}: '${name}' is defined twice (${prev} and ${by})`);
    else definedBy.set(name, by);
    available.add(name);
  };
  for (const i of g.input) define(i.name, 'graph input');
  for (const t of g.initializer) {
    // an initializer that is also a graph input (IR < 4 style) is one definition
    if (t.name && !(definedBy.get(t.name) === 'graph input')) define(t.name, 'initializer');
  }
  for (const st of g.sparseInitializer ?? []) if (st.values?.name) define(st.values.name, 'sparse initializer');

  const producedLater = new Set<string>();
  for (const n of g.node) for (const o of n.output) if (o !== '') producedLater.add(o);

  for (const n of g.node) {
    for (const i of n.input) {
      if (i === '' || available.has(i)) continue;
      if (producedLater.has(i)) problems.push(`${where}: node ${nodeLabel(n)} uses '${i}' before it is produced`);
      else problems.push(`${where}: node ${nodeLabel(n)} input '${i}' is not produced by any node nor a graph input or initializer`);
    }
    for (const sg of subgraphsOf(n)) {
      checkGraphInto(sg, new Set([...available, ...producedLater]), `${where} > ${nodeLabel(n)} subgraph ${sg.name ?? ''}`, problems);
    }
    for (const o of n.output) if (o !== '') define(o, `node ${nodeLabel(n)}`);
  }
  for (const o of g.output) {
    if (!available.has(o.name)) problems.push(`${where}: graph output '${o.name}' is not produced`);
  }
  try {
    topologicalSort({ ...g, node: [...g.node] });
  } catch (e) {
    if (e instanceof SdgenError) problems.push(`${where}: ${e.message}`);
    else throw e;
  }
}

/**
 * Structural problems of a model (empty when none): inputs neither produced nor a graph
 * input/initializer/outer-scope value (empty names are optional inputs and fine), use before
 * production, names defined twice, cycles, unproduced graph outputs. Recurses into subgraphs
 * (with the enclosing scope visible) and function bodies.
 */
export function checkGraph(model: ModelProto): string[] {
  const problems: string[] = [];
  if (model.graph) checkGraphInto(model.graph, new Set(), `graph ${model.graph.name ?? ''}`.trim(), problems);
  for (const f of model.functions ?? []) {
    const g: GraphProto = {
      node: f.node,
      name: f.name,
      initializer: [],
      input: f.input.map((name) => ({ name })),
      output: f.output.map((name) => ({ name })),
      valueInfo: [],
    };
    checkGraphInto(g, new Set(), `function ${f.domain ?? ''}.${f.name}`, problems);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Opsets

/**
 * Makes the model import `domain` at `version` or higher: adds the import, or raises a lower
 * one; never lowers. Returns the version now imported.
 */
export function ensureOpset(model: ModelProto, domain: string, version: number): number {
  const want = isDefaultDomain(domain) ? '' : domain;
  for (const op of model.opsetImport) {
    if ((isDefaultDomain(op.domain) ? '' : op.domain) === want) {
      if (Number(op.version) < version) op.version = version;
      return Number(op.version);
    }
  }
  model.opsetImport.push({ domain: want, version });
  return version;
}

/** The imported version of a domain ('' = default domain), or undefined. */
export function opsetVersion(model: ModelProto, domain = ''): number | undefined {
  const want = isDefaultDomain(domain) ? '' : domain;
  for (const op of model.opsetImport) if ((isDefaultDomain(op.domain) ? '' : op.domain) === want) return Number(op.version);
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Editing

function indexOfNode(graph: GraphProto, anchor: NodeProto): number {
  const i = graph.node.indexOf(anchor);
  if (i < 0) throw new Error(`node ${nodeLabel(anchor)} is not in graph ${graph.name ?? ''}`);
  return i;
}

export function insertNodesBefore(graph: GraphProto, anchor: NodeProto, nodes: NodeProto[]): void {
  graph.node.splice(indexOfNode(graph, anchor), 0, ...nodes);
}

/**
 * Removes `oldNodes` and puts `newNodes` where the first of them was. If that breaks the
 * topological order (e.g. a new node uses a tensor produced between the old ones), the graph is
 * re-sorted stably. Throws if an old node is not in the graph.
 */
export function replaceNodes(graph: GraphProto, oldNodes: readonly NodeProto[], newNodes: readonly NodeProto[]): void {
  const remove = new Set(oldNodes);
  let first = -1;
  let found = 0;
  graph.node.forEach((n, i) => {
    if (remove.has(n)) {
      if (first < 0) first = i;
      found++;
    }
  });
  if (found !== remove.size) throw new Error('replaceNodes: some old nodes are not in the graph');
  if (first < 0) first = graph.node.length;
  const kept: NodeProto[] = [];
  graph.node.forEach((n, i) => {
    if (i === first) kept.push(...newNodes);
    if (!remove.has(n)) kept.push(n);
  });
  if (first === graph.node.length) kept.push(...newNodes);
  graph.node = kept;
  if (!isTopologicallySorted(graph)) topologicalSort(graph);
}

function renameInSubgraph(g: GraphProto, from: string, to: string): number {
  if (definedNames(g).has(from)) return 0; // shadowed (invalid ONNX, but don't touch it)
  let count = 0;
  for (const n of g.node) {
    for (let k = 0; k < n.input.length; k++) {
      if (n.input[k] === from) {
        n.input[k] = to;
        count++;
      }
    }
    for (const sg of subgraphsOf(n)) count += renameInSubgraph(sg, from, to);
  }
  for (const o of g.output) {
    if (o.name === from) {
      o.name = to;
      count++;
    }
  }
  return count;
}

/**
 * Makes every node that uses tensor `from` use `to` instead (also outer-scope uses inside
 * subgraphs), except the nodes in `exceptNodes`. Graph outputs keep their names. Returns the
 * number of uses rewritten.
 */
export function renameTensorUses(
  graph: GraphProto,
  from: string,
  to: string,
  exceptNodes?: Iterable<NodeProto>,
): number {
  const except = new Set(exceptNodes ?? []);
  let count = 0;
  for (const n of graph.node) {
    if (except.has(n)) continue;
    for (let k = 0; k < n.input.length; k++) {
      if (n.input[k] === from) {
        n.input[k] = to;
        count++;
      }
    }
    for (const sg of subgraphsOf(n)) count += renameInSubgraph(sg, from, to);
  }
  return count;
}

/**
 * Removes nodes none of whose outputs is used (by a node, a subgraph or a graph output) —
 * repeatedly, so whole dead chains go — then initializers and value infos nothing refers to.
 * Graph inputs are kept. Returns how many nodes and initializers were removed.
 */
export function removeUnused(graph: GraphProto): { nodes: number; initializers: number } {
  const useCount = new Map<string, number>();
  const uses = graph.node.map((n) => nodeUses(n));
  const bump = (name: string, d: number): void => {
    useCount.set(name, (useCount.get(name) ?? 0) + d);
  };
  for (const u of uses) for (const name of u) bump(name, 1);
  const outputs = new Set(graph.output.map((o) => o.name));
  const alive = graph.node.map(() => true);
  const isDead = (n: NodeProto): boolean =>
    n.output.length > 0 && n.output.every((o) => o === '' || (!outputs.has(o) && (useCount.get(o) ?? 0) === 0));
  let removedNodes = 0;
  // reverse sweeps until stable (one sweep suffices for a topologically sorted graph)
  for (let changed = true; changed;) {
    changed = false;
    for (let i = graph.node.length - 1; i >= 0; i--) {
      if (!alive[i] || !isDead(graph.node[i]!)) continue;
      alive[i] = false;
      removedNodes++;
      changed = true;
      for (const name of uses[i]!) bump(name, -1);
    }
  }
  graph.node = graph.node.filter((_, i) => alive[i]);
  const used = (name: string): boolean => outputs.has(name) || (useCount.get(name) ?? 0) > 0;
  const before = graph.initializer.length;
  graph.initializer = graph.initializer.filter((t) => t.name === undefined || used(t.name));
  if (graph.sparseInitializer) {
    graph.sparseInitializer = graph.sparseInitializer.filter((s) => s.values?.name === undefined || used(s.values.name));
  }
  const live = definedNames(graph);
  graph.valueInfo = graph.valueInfo.filter((v) => live.has(v.name));
  return { nodes: removedNodes, initializers: before - graph.initializer.length };
}

// ---------------------------------------------------------------------------------------------
// Value infos

export function getValueInfo(graph: GraphProto, name: string): ValueInfoProto | undefined {
  return (
    graph.input.find((v) => v.name === name) ??
    graph.output.find((v) => v.name === name) ??
    graph.valueInfo.find((v) => v.name === name)
  );
}

/**
 * The declared shape of a tensor from the graph's inputs/outputs/value infos: a number per
 * fixed dim, the symbol for a symbolic dim, undefined for an unknown dim; undefined when the
 * tensor has no declared (tensor) shape.
 */
export function getValueInfoShape(graph: GraphProto, name: string): (number | string | undefined)[] | undefined {
  const shape = getValueInfo(graph, name)?.type?.tensorType?.shape;
  if (shape === undefined) return undefined;
  return shape.dim.map((d) => (d.dimValue !== undefined ? Number(d.dimValue as Int64) : d.dimParam));
}
