/**
 * ToMe (token merging for Stable Diffusion, tomesd 0.1.3 semantics) as a rewrite of the UNet's
 * ONNX graph. Public API of src/tome; pure logic (file handling lives in src/models/tome-cache.ts).
 */
import type { ModelProto } from '../onnx/types.js';
import { findBlocks } from './find-blocks.js';
import { mergedSublayers, selectedBlocks } from './rewrite.js';
import type { BlockInfo, ToMeOptions } from './types.js';
import { resolveMaxDownsample } from './options.js';

export type { BlockInfo, PatchedBlockInfo, ToMeOptions } from './types.js';
export {
  DEFAULT_TOME,
  validateToMeOptions,
  toMeOptionsProblem,
  tomeFromFlat,
  tomeToFlat,
  tomeGraphKey,
  tomeGraphOptions,
  tomeApplies,
  tomeRandShape,
  blockMergeParams,
  autoMaxDownsample,
  resolveMaxDownsample,
} from './options.js';
export type { ToMeFlatOptions } from './options.js';
export { applyToMe, TOME_METADATA_KEY, TOME_MIN_OPSET, type ApplyResult } from './rewrite.js';
export { buildMergeModel } from './merge-graph.js';

/** The transformer blocks of a UNet graph, in run order, or a one-line reason. */
export function findTransformerBlocks(model: ModelProto): { blocks: BlockInfo[] } | { error: string } {
  const r = findBlocks(model);
  if ('error' in r) return r;
  return { blocks: r.blocks.map((b) => b.info) };
}

/**
 * Lines for `sdgen info`: each block, its level and which sub-layers would be merged under `o`
 * (e.g. `block 0  level 1  down_blocks.0/attentions.0/transformer_blocks.0  merge: attn`).
 */
export function describeBlocks(blocks: BlockInfo[], o: ToMeOptions): string[] {
  const selected = new Set(selectedBlocks(blocks, o));
  const distinct = [...new Set(blocks.map((b) => b.level))];
  const levels = distinct.map((l) => (l === null ? '?' : String(l))).join(', ');
  // blocks per level, and the max downsample that applies ('auto' resolved: SDXL's first level has no blocks)
  const perLevel = distinct.map((l) => `level ${l ?? '?'} ×${blocks.filter((b) => b.level === l).length}`).join(', ');
  const max = resolveMaxDownsample(o, blocks.map((b) => b.level));
  const maxText = o.maxDownsample === 'auto' ? `auto = ${max}` : `${max}${blocks.some((b) => b.level !== null && b.level <= max) ? '' : ' (merges nothing here)'}`;
  const lines = [`${blocks.length} transformer block${blocks.length === 1 ? '' : 's'} (levels ${levels}): ${perLevel}; max downsample ${maxText}`];
  for (const b of blocks) {
    const m = mergedSublayers(b, o, selected.has(b) && o.ratio > 0);
    const what = [m.attn && 'attn', m.crossattn && 'crossattn', m.mlp && 'mlp'].filter(Boolean).join('+') || '-';
    const subs = [b.sublayers.attn && 'attn1', b.sublayers.crossattn && 'attn2', b.sublayers.mlp && 'ff'].filter(Boolean).join(',');
    lines.push(`  block ${String(b.index).padStart(2)}  level ${b.level ?? '?'}  ${b.name || '(unnamed)'}  [${subs}]  merge: ${what}`);
  }
  return lines;
}
