/** Graph-level and session-level optimizations: fused attention, optimized-model caching. */
export { fuseAttention, isFloat16Model, modelFloatType, MS_DOMAIN } from './fuse-attention.js';
export type { FuseAttentionOptions, FuseAttentionResult } from './fuse-attention.js';
export { chooseAttention, providerSupportsFusedAttention } from './attention-mode.js';
export type { ResolvedAttention } from './attention-mode.js';
