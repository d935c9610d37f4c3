/**
 * Which initializer of an exported graph each LoRA module changes, found structurally (pure).
 *
 * torch.onnx.export names every node after the module that produced it: a diffusers
 * `Linear` at `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` becomes the node
 * `/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`, the text encoder's
 * `text_model.encoder.layers.3.self_attn.q_proj` becomes `/text_model/encoder/layers.3/self_attn/q_proj/MatMul`
 * (ModuleList indices stay attached to their list's name). So the module path of a node is its
 * name without the leading `/` and the op's own last component, with `/` read as `.`. The weight
 * is the initializer the module's weight op consumes:
 * - MatMul (a Linear without its bias): input 1, stored transposed, [in, out];
 * - Gemm: input 1, [out, in] with transB = 1 (what the exporter writes), else [in, out];
 * - Conv: input 1, [out, in, kh, kw].
 * The exporter's constant folding gives MatMul weights names like `onnx::MatMul_3661`, which
 * say nothing; they are never used to find a weight. A graph whose nodes carry no names still
 * maps its convolutions and Gemms through initializers named `<module path>.weight`.
 *
 * kohya's module paths are underscore-joined and so ambiguous (`transformer_blocks_0` could be
 * `transformer.blocks.0` or `transformer_blocks.0`); they are resolved against the set of module
 * paths present in the graph. kohya's SDXL LoRAs mostly name UNet modules the way Stability's
 * original code does (`input_blocks_4_1_…`); those are first renamed to diffusers' modules by the
 * UNet's layout (sgm.ts).
 */
import { UsageError } from '../errors.js';
import { getInt } from '../onnx/attributes.js';
import type { GraphProto, NodeProto, TensorProto } from '../onnx/types.js';
import type { LoraModule, LoraTarget } from './keys.js';
import { isSgmPath, sgmToDiffusers, unetLayoutFromPaths, type UnetLayout } from './sgm.js';

export type WeightLayout = 'in_out' | 'out_in' | 'conv';

export interface WeightSite {
  /** dotted module path, e.g. `down_blocks.0.attentions.0.proj_in` */
  modulePath: string;
  node: NodeProto;
  op: 'MatMul' | 'Gemm' | 'Conv';
  initializer: TensorProto;
  layout: WeightLayout;
  /** the initializer also feeds other nodes (changing it must not change them) */
  shared: boolean;
}

export interface MappedModule {
  module: LoraModule;
  site: WeightSite;
}

export interface LoraMapping {
  matched: MappedModule[];
  unmatched: LoraModule[];
}

/** The module path a node name encodes (undefined for unnamed or unstructured names). */
export function modulePathOfNode(name: string | undefined): string | undefined {
  if (name === undefined || !name.startsWith('/')) return undefined;
  const parts = name.slice(1).split('/');
  if (parts.length < 2 || parts.some((p) => p === '')) return undefined;
  return parts.slice(0, -1).join('.');
}

/** kohya's form of a dotted module path. */
export function underscored(path: string): string {
  return path.replaceAll('.', '_');
}

/** The weight-bearing sites of a graph, by module path. */
export class WeightSites {
  readonly byPath = new Map<string, WeightSite>();
  /** kohya form → dotted paths having that form */
  readonly byUnderscored = new Map<string, string[]>();
  /** module paths with more than one weight op (not mapped: which one a LoRA means is unclear) */
  readonly ambiguous = new Set<string>();

  /**
   * The UNet's topology for kohya's SGM names (sgm.ts): from its config.json when the caller has
   * one, else read off this graph's module paths at the first SGM key.
   */
  private layout: UnetLayout | undefined;
  private layoutKnown: boolean;

  constructor(graph: GraphProto, layout?: UnetLayout) {
    this.layout = layout;
    this.layoutKnown = layout !== undefined;
    const inits = new Map<string, TensorProto>();
    for (const t of graph.initializer) if (t.name !== undefined) inits.set(t.name, t);
    const uses = new Map<string, number>();
    for (const n of graph.node) for (const i of n.input) if (inits.has(i)) uses.set(i, (uses.get(i) ?? 0) + 1);
    for (const o of graph.output) if (inits.has(o.name)) uses.set(o.name, (uses.get(o.name) ?? 0) + 1);
    for (const node of graph.node) {
      if (node.domain !== undefined && node.domain !== '' && node.domain !== 'ai.onnx') continue;
      const op = node.opType;
      if (op !== 'MatMul' && op !== 'Gemm' && op !== 'Conv') continue;
      const w = node.input[1];
      const t = w === undefined ? undefined : inits.get(w);
      if (t === undefined) continue;
      let layout: WeightLayout;
      if (op === 'Conv') {
        if (t.dims.length < 3) continue;
        layout = 'conv';
      } else {
        if (t.dims.length !== 2) continue;
        layout = op === 'Gemm' && Number(getInt(node, 'transB', 0)) === 1 ? 'out_in' : 'in_out';
      }
      let path = modulePathOfNode(node.name);
      if (path === undefined && (op === 'Conv' || op === 'Gemm') && w!.endsWith('.weight') && !w!.startsWith('onnx::')) path = w!.slice(0, -'.weight'.length);
      if (path === undefined) continue;
      if (this.byPath.has(path) || this.ambiguous.has(path)) {
        this.byPath.delete(path);
        this.ambiguous.add(path);
        continue;
      }
      this.byPath.set(path, { modulePath: path, node, op, initializer: t, layout, shared: (uses.get(w!) ?? 0) > 1 });
    }
    for (const p of this.byPath.keys()) {
      const u = underscored(p);
      const l = this.byUnderscored.get(u);
      if (l === undefined) this.byUnderscored.set(u, [p]);
      else l.push(p);
    }
  }

  /** The site of a LoRA module's path (kohya or dotted); text encoders tolerate a missing `text_model` prefix. */
  find(m: LoraModule): WeightSite | undefined {
    if (m.target === 'unet' && m.underscored && isSgmPath(m.path)) {
      if (!this.layoutKnown) {
        this.layout = unetLayoutFromPaths(this.byPath.keys());
        this.layoutKnown = true;
      }
      const p = this.layout === undefined ? undefined : sgmToDiffusers(m.path, this.layout);
      const paths = p === undefined ? undefined : this.byUnderscored.get(p);
      return paths !== undefined && paths.length === 1 ? this.byPath.get(paths[0]!) : undefined;
    }
    const candidates = [m.path];
    if (m.target !== 'unet') {
      const prefix = m.underscored ? 'text_model_' : 'text_model.';
      candidates.push(m.path.startsWith(prefix) ? m.path.slice(prefix.length) : prefix + m.path);
    }
    for (const c of candidates) {
      if (m.underscored) {
        const paths = this.byUnderscored.get(c);
        if (paths !== undefined && paths.length === 1) return this.byPath.get(paths[0]!);
      } else {
        const s = this.byPath.get(c);
        if (s !== undefined) return s;
      }
    }
    return undefined;
  }
}

function dimsText(d: readonly (number | bigint)[]): string {
  return `[${d.map(Number).join(', ')}]`;
}

/**
 * Checks that a module's delta fits its site's weight; throws UsageError (one line) when not.
 * A linear LoRA on a 1×1 convolution (or the reverse) fits: the product is the same matrix.
 */
export function checkShapes(m: LoraModule, site: WeightSite, label: string): void {
  const d = site.initializer.dims.map(Number);
  const inFlat = m.inShape.reduce((a, b) => a * b, 1);
  let ok: boolean;
  if (site.layout === 'conv') {
    const kernel = d.slice(2);
    const loraKernel = m.kind === 'conv' ? m.inShape.slice(1) : kernel.map(() => 1);
    ok = d[0] === m.out && d[1] === (m.kind === 'conv' ? m.inShape[0] : inFlat) && kernel.length === loraKernel.length && kernel.every((k, i) => k === loraKernel[i]);
  } else {
    const loraKernelOk = m.kind === 'linear' || m.inShape.slice(1).every((k) => k === 1);
    const [wIn, wOut] = site.layout === 'in_out' ? [d[0], d[1]] : [d[1], d[0]];
    ok = loraKernelOk && wIn === inFlat && wOut === m.out;
  }
  if (!ok) {
    throw new UsageError(
      `${label}: module ${m.path} does not fit the model: its LoRA is ${dimsText([m.out, ...m.inShape])} but ${site.node.name ?? site.modulePath} (${site.op}) has a weight of ${dimsText(d)}${site.layout === 'in_out' ? ' (stored [in, out])' : ''} — a LoRA for another model?`,
    );
  }
}

/** Maps the modules of `targets` onto a graph; modules of other targets are left out. Pure. */
export function mapLoraModules(graph: GraphProto, modules: readonly LoraModule[], targets: readonly LoraTarget[], label: string, sites = new WeightSites(graph)): LoraMapping {
  const matched: MappedModule[] = [];
  const unmatched: LoraModule[] = [];
  const seen = new Map<TensorProto, LoraModule>();
  for (const m of modules) {
    if (!targets.includes(m.target)) continue;
    const site = sites.find(m);
    if (site === undefined) {
      unmatched.push(m);
      continue;
    }
    checkShapes(m, site, label);
    const prev = seen.get(site.initializer);
    if (prev !== undefined) throw new UsageError(`${label}: modules ${prev.path} and ${m.path} both map onto ${site.node.name ?? site.modulePath}`);
    seen.set(site.initializer, m);
    matched.push({ module: m, site });
  }
  return { matched, unmatched };
}

/**
 * Throws when most of a LoRA's modules for this model match nothing: the LoRA is for another
 * architecture (an SDXL LoRA on SD 1.5, ...). `what` names the model (`the UNet`).
 */
export function requireMostMatched(mapping: LoraMapping, label: string, what: string): void {
  const total = mapping.matched.length + mapping.unmatched.length;
  if (total === 0 || mapping.matched.length * 2 > total) return;
  const example = mapping.unmatched[0]!.id;
  throw new UsageError(
    `${label}: only ${mapping.matched.length} of its ${total} modules for ${what} exist in this model (e.g. ${example} does not) — the LoRA is for another architecture`,
  );
}
