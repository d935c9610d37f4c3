/** Graph-level and session-level optimizations: fused attention, optimized-model caching. */
export { fuseAttention, modelFloatType, MS_DOMAIN } from './fuse-attention.js';
export type { FuseAttentionOptions, FuseAttentionResult } from './fuse-attention.js';
export { chooseAttention, providerSupportsFusedAttention } from './attention-mode.js';
export type { ResolvedAttention } from './attention-mode.js';
export {
  createCachedSession,
  planOptimizedModel,
  optimizedModelKey,
  optimizedEntryDir,
  cpuSignature,
  ortVersion,
  DEFAULT_MEMORY_OPTIONS,
  OPTIMIZED_MODEL_FILE,
  OPTIMIZED_WEIGHTS_FILE,
} from './session-cache.js';
export type { OptimizedCacheOptions, OptimizedModelPlan, CachedSession, OptimizationLevel } from './session-cache.js';
export { fuseModel, getFusedModel, getRewrittenModel, writeModelLinkingWeights, externalLocations, linkOrCopy } from './fused-model.js';
export type { FusedModel, FusedModelOptions, RewrittenModel, RewriteCount } from './fused-model.js';
export { winogradConvs, winogradTransforms, winogradU, autoTile, spatialStrides } from './winograd.js';
export type { WinogradOptions, WinogradResult, WinogradTile, WinogradFold } from './winograd.js';
export { polyphaseUpsampleConvs } from './polyphase.js';
export type { PolyphaseResult } from './polyphase.js';
export { getWinogradModel, useWinograd, winogradRewrite, writeWinogradWeights, WINOGRAD_WEIGHTS_FILE } from './conv-mode.js';
export { encoderLayerOutputs, exposeHiddenStates, getClipSkipModel } from './clip-skip.js';
export type { ClipSkipModel, EncoderLayerOutputs, ExposeHiddenStatesResult } from './clip-skip.js';
export { cacheMaxBytes, entriesToEvict, pruneCacheDir, touchEntry, DEFAULT_CACHE_MAX_GB } from './cache-prune.js';
export type { CacheEntryInfo, PruneResult } from './cache-prune.js';
