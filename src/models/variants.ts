/**
 * Which graph file a session loads: the one place that decides it. A model's exported graph goes
 * through a chain of rewrites, each on the previous step's file and each cached on disk
 * (src/optimize/fused-model.ts getRewrittenModel):
 *
 *   exported → LoRA'd (when the run has LoRAs) → ToMe (UNet, when the run merges) → fused
 *   attention → Winograd convolutions
 *
 * and the session then loads the result through onnxruntime's optimized-graph cache (CPU) or
 * plainly. A new rewrite (e.g. a LoRA'd base graph) is a new step here, placed where what it
 * changes must be seen by the steps after it.
 *
 * A step that does not apply (nothing to fuse, a graph ToMe does not understand) is skipped and
 * says why; a step whose rewrite fails unexpectedly is skipped the same way, so a run still
 * works on the graph before it. A broken model file is not a skipped step: its error propagates.
 */
import { SdgenError } from '../errors.js';
import { getFusedModel, getWinogradModel, useWinograd, type ResolvedAttention } from '../optimize/index.js';
import type { ConvMode } from '../optimize/conv-mode.js';
import type { PatchedBlockInfo, ToMeOptions } from '../tome/types.js';
import { errorReason, type ProviderName } from './providers.js';
import { getPatchedUnet, type PatchProgress } from './tome-cache.js';
import { resolveMaxDownsample } from '../tome/options.js';
import { getLoraVariant, type LoraRef, type LoraVariant } from '../lora/variant.js';
import type { LoraTarget } from '../lora/keys.js';

export interface GraphRequest {
  /** the exported graph */
  file: string;
  /** the model's name in messages ('unet', 'vae decoder', …) */
  what: string;
  cacheDir: string;
  /** the provider the session will run on (settled by the first session of the run) */
  provider: ProviderName;
  /** ToMe options when this run merges tokens (UNet only); validated by the caller's entry point */
  tome?: ToMeOptions | null;
  /** the attention the run asks for, resolved for this provider (resolveAttention) */
  attention: ResolvedAttention;
  conv?: ConvMode;
  /** load through onnxruntime's optimized-graph cache when the provider is the CPU */
  optimizedCache: boolean;
  onProgress?: PatchProgress;
  /** LoRAs to merge into the exported graph first (src/lora), with the modules they apply to */
  lora?: { target: LoraTarget; loras: readonly LoraRef[] };
}

export interface ResolvedGraph {
  /** the file the session loads */
  file: string;
  /** the graph before the attention and convolution rewrites (exported or ToMe-patched) */
  baseFile: string;
  /**
   * ToMe as applied: the merging blocks, their rand inputs and the effective max downsample
   * (max downsample 'auto' resolved: the smallest level among the merging blocks, which are
   * exactly the blocks of the highest-resolution level that has any); null when the run does not merge
   */
  tome: { blocks: PatchedBlockInfo[]; randInputs: string[]; maxDownsample: number } | null;
  /** why requested ToMe is not applied */
  tomeSkipped?: string;
  /** the attention the loaded graph runs */
  attention: ResolvedAttention;
  /** why requested fused attention is not used; `failed` when the rewrite itself failed */
  attentionFallback?: { reason: string; failed: boolean };
  winograd: boolean;
  /** why requested Winograd convolutions are not used (the rewrite failed) */
  winogradFailed?: string;
  optimizedCache: boolean;
  /** the LoRA variant the chain started from (absent: the exported graph) */
  lora?: LoraVariant;
}

/** Resolves the chain of rewrites for one session (see the header). */
export async function resolveGraph(req: GraphRequest): Promise<ResolvedGraph> {
  let file = req.file;
  // LoRAs first: ToMe, fused attention and Winograd then derive from the merged weights; a bad
  // LoRA file is the user's error (UsageError) and propagates
  let lora: LoraVariant | undefined;
  if (req.lora && req.lora.loras.length > 0) {
    lora = await getLoraVariant(file, { cacheDir: req.cacheDir, target: req.lora.target, loras: req.lora.loras });
    file = lora.path;
  }
  let tome: ResolvedGraph['tome'] = null;
  let tomeSkipped: string | undefined;
  if (req.tome && req.tome.ratio > 0) {
    const p = await getPatchedUnet(file, req.tome, { cacheDir: req.cacheDir, onProgress: req.onProgress });
    if (p.patched) {
      file = p.path;
      tome = { blocks: p.blocks, randInputs: p.randInputs, maxDownsample: resolveMaxDownsample(req.tome, p.blocks.map((b) => b.level)) };
    } else tomeSkipped = p.reason ?? 'the UNet graph could not be patched';
  }
  const baseFile = file;

  let attention: ResolvedAttention = 'standard';
  let attentionFallback: ResolvedGraph['attentionFallback'];
  if (req.attention === 'fused') {
    try {
      const r = await getFusedModel(file, { cacheDir: req.cacheDir, allowFloat16: req.provider !== 'cpu' });
      if (r.fused) {
        file = r.path;
        attention = 'fused';
      } else attentionFallback = { reason: r.reason, failed: false };
    } catch (err) {
      if (err instanceof SdgenError) throw err;
      attentionFallback = { reason: `the fused ${req.what} failed (${errorReason(err)})`, failed: true };
    }
  }

  let winograd = false;
  let winogradFailed: string | undefined;
  if (useWinograd(req.conv, req.provider)) {
    try {
      const r = await getWinogradModel(file, req.cacheDir);
      if (r.rewritten) {
        file = r.path;
        winograd = true;
      }
    } catch (err) {
      if (err instanceof SdgenError) throw err;
      winogradFailed = errorReason(err);
    }
  }
  return {
    file,
    baseFile,
    tome,
    ...(tomeSkipped !== undefined ? { tomeSkipped } : {}),
    attention,
    ...(attentionFallback ? { attentionFallback } : {}),
    winograd,
    ...(winogradFailed !== undefined ? { winogradFailed } : {}),
    optimizedCache: req.optimizedCache && req.provider === 'cpu',
    ...(lora ? { lora } : {}),
  };
}
