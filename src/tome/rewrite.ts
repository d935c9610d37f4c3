/**
 * applyToMe: rewrites a UNet graph in place so that every transformer block at a level ≤ max
 * downsample merges tokens before the selected sub-layers (attn1 / attn2 / ff) and unmerges
 * their outputs before the residual add, as tomesd does. Pure graph rewrite, no I/O.
 */
import { setAttr, attrString, getAttr } from '../onnx/attributes.js';
import { NameAllocator, checkGraph, ensureOpset, opsetVersion, renameTensorUses, topologicalSort } from '../onnx/graph.js';
import { DataType, type ModelProto, type ValueInfoProto } from '../onnx/types.js';
import { ToMeEmitter } from './emitter.js';
import { findBlocks, findSampleInput, type FoundBlock, type SubLayer } from './find-blocks.js';
import { emitBlockPlan, emitLatentGrid, emitMerge, emitUnmerge } from './merge-graph.js';
import { autoMaxDownsample, resolveMaxDownsample, validateToMeOptions } from './options.js';
import type { BlockInfo, PatchedBlockInfo, ToMeOptions } from './types.js';

/** Metadata key recording the options a graph was patched with (and that it was). */
export const TOME_METADATA_KEY = 'sdgen.tome';

/** ScatterElements with reduction='add' (the merge sums) needs opset 16. */
export const TOME_MIN_OPSET = 16;

export interface ApplyResult {
  patched: boolean;
  /** Why the graph was left unpatched (one line). */
  reason?: string;
  blocks: PatchedBlockInfo[];
  /** Names of the added `tome_rand_<k>` inputs, in run order (empty without useRand). */
  randInputs: string[];
}

/**
 * The blocks applyToMe would patch under `o` (level ≤ max downsample, 'auto' resolved from these
 * blocks' levels; unknown level: patched, decided at runtime).
 */
export function selectedBlocks<T extends { info: BlockInfo } | BlockInfo>(blocks: T[], o: ToMeOptions): T[] {
  const levels = blocks.map((b) => ('info' in b ? b.info.level : b.level));
  const max = resolveMaxDownsample(o, levels);
  return blocks.filter((_, i) => {
    const level = levels[i]!;
    return level === null || level <= max;
  });
}

/** Which sub-layers of a block get merge/unmerge under `o`. */
export function mergedSublayers(b: BlockInfo, o: ToMeOptions, selected: boolean): PatchedBlockInfo['merged'] {
  return {
    attn: selected && o.mergeAttn && b.sublayers.attn,
    crossattn: selected && o.mergeCrossattn && b.sublayers.crossattn,
    mlp: selected && o.mergeMlp && b.sublayers.mlp,
  };
}

/** One line for a max downsample below every block (SDXL at 1: its first level has no transformer blocks). */
function noBlockReason(max: number, levels: readonly (number | null)[]): string {
  const known = [...new Set(levels.filter((l): l is number => l !== null))].sort((a, b) => a - b);
  if (known.length === 0) return `no transformer block at downsample ≤ ${max}`;
  return `max downsample ${max} merges nothing on this model: its transformer blocks are at downsample ${known.join(', ')} (auto: ${autoMaxDownsample(known)})`;
}

/**
 * Rewrites `model` in place; invalid options are a UsageError. With ratio 0 (or nothing to merge) the model is not touched and
 * `patched` is false; a graph that is not understood is not touched either (`reason` says why).
 */
export function applyToMe(model: ModelProto, o: ToMeOptions): ApplyResult {
  validateToMeOptions(o);
  if (model.metadataProps?.some((e) => e.key === TOME_METADATA_KEY)) {
    return { patched: false, reason: 'the model is already ToMe-patched', blocks: [], randInputs: [] };
  }
  const found = findBlocks(model);
  if ('error' in found) return { patched: false, reason: found.error, blocks: [], randInputs: [] };
  const levels = found.blocks.map((b) => b.info.level);
  const maxDownsample = resolveMaxDownsample(o, levels);
  const selected = new Set(selectedBlocks(found.blocks, o));
  const infos: PatchedBlockInfo[] = found.blocks.map((b) => ({ ...b.info, merged: mergedSublayers(b.info, o, selected.has(b)) }));
  const nothing = (reason: string): ApplyResult => ({
    patched: false, reason, blocks: infos.map((b) => ({ ...b, merged: { attn: false, crossattn: false, mlp: false } })), randInputs: [],
  });
  if (!(o.ratio > 0)) return nothing('ToMe ratio is 0');
  if (!infos.some((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp)) {
    return nothing(selected.size === 0
      ? noBlockReason(maxDownsample, levels)
      : 'no sub-layer selected for merging');
  }

  const graph = model.graph!;
  const current = opsetVersion(model, '') ?? 1;
  // Raising the opset to 16 changes no op used by SD UNets; the one default that changed
  // (RoiAlign's coordinate mode) is pinned to its old meaning.
  for (const n of graph.node) {
    if ((n.domain ?? '') === '' && n.opType === 'RoiAlign' && current < 16 && !getAttr(n, 'coordinate_transformation_mode')) {
      setAttr(n, attrString('coordinate_transformation_mode', 'output_half_pixel'));
    }
  }
  const opset = ensureOpset(model, '', Math.max(current, TOME_MIN_OPSET));
  if (model.irVersion === undefined || Number(model.irVersion) < 8) model.irVersion = 8;

  const names = new NameAllocator(graph);
  const sample = findSampleInput(graph)!;
  const top = new ToMeEmitter(names, '/tome', opset);
  const grid = emitLatentGrid(top, sample);
  const added = [...top.nodes];
  const randInputs: string[] = [];
  const dropValueInfo = new Set<string>();

  found.blocks.forEach((b: FoundBlock, k) => {
    const info = infos[k]!;
    const m = info.merged;
    if (!m.attn && !m.crossattn && !m.mlp) return;
    let randInput: string | undefined;
    if (o.useRand) {
      randInput = names.alloc(`tome_rand_${randInputs.length}`);
      randInputs.push(randInput);
      info.randInput = randInput;
      const vi: ValueInfoProto = {
        name: randInput,
        type: { tensorType: { elemType: DataType.INT64, shape: { dim: [{ dimParam: `${randInput}_h` }, { dimParam: `${randInput}_w` }, { dimValue: 1 }] } } },
      };
      graph.input.push(vi);
    }
    const e = new ToMeEmitter(names, `/tome/block${k}`, opset);
    const plan = emitBlockPlan(e, b.metric, b.elemType, grid, { ...o, maxDownsample, randInput });
    const patch = (sub: SubLayer, label: string): void => {
      const merged = emitMerge(e, sub.normOutput, b.elemType, plan, `${label}_merge`);
      const mergeNode = e.nodes[e.nodes.length - 1]!;
      renameTensorUses({ ...graph, node: sub.region }, sub.normOutput, merged, [mergeNode]);
      const unmerged = emitUnmerge(e, sub.output, b.elemType, plan, `${label}_unmerge`);
      sub.residual.input[sub.residualSlot] = unmerged;
      for (const n of sub.region) for (const out of n.output) dropValueInfo.add(out);
    };
    if (m.attn) patch(b.attn, 'attn1');
    if (m.crossattn && b.crossattn) patch(b.crossattn, 'attn2');
    if (m.mlp) patch(b.mlp, 'ff');
    added.push(...e.nodes);
  });

  graph.node.push(...added);
  // Shapes recorded for tensors inside merged sub-layers no longer hold (fewer tokens).
  graph.valueInfo = graph.valueInfo.filter((v) => !dropValueInfo.has(v.name));
  topologicalSort(graph);
  model.metadataProps = [
    ...(model.metadataProps ?? []),
    { key: TOME_METADATA_KEY, value: JSON.stringify({ ratio: o.ratio, sx: o.sx, sy: o.sy, maxDownsample, useRand: o.useRand, mergeAttn: o.mergeAttn, mergeCrossattn: o.mergeCrossattn, mergeMlp: o.mergeMlp }) },
  ];
  const problems = checkGraph(model);
  if (problems.length > 0) throw new Error(`ToMe rewrite produced an invalid graph: ${problems[0]}`);
  return { patched: true, blocks: infos, randInputs };
}
