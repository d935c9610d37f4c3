/**
 * sdgen's library entry: the pipeline, model folders and sessions, the torch-compatible
 * generator, the schedulers, ToMe and the ONNX model I/O. Everything here is re-exported from
 * the module that owns it.
 */

// Errors and version
export { SdgenError, UsageError } from './errors.js';
export { SDGEN_VERSION } from './version.js';

// Pipeline
export { StableDiffusionPipeline, validateGenerationParams, randomSeed } from './pipeline/pipeline.js';
export type { GenerationInspector, GenerateOptions, PipelineLoadOptions } from './pipeline/pipeline.js';
export { generationParams, imageSeed } from './pipeline/params.js';
export { GenerationAbortedError } from './pipeline/denoise.js';
export { TextEncoder } from './pipeline/text-encoding.js';
export type { PromptEmbedding, EncodedPrompts, TextEncodeOptions } from './pipeline/text-encoding.js';
export { decodedToRgb } from './pipeline/decode.js';
export type {
  GenerationParams,
  GeneratedImage,
  ImageTimings,
  ProgressEvents,
  StepPhase,
} from './pipeline/types.js';
export type { AttentionMode } from './optimize/attention-mode.js';
export type { ConvMode } from './optimize/conv-mode.js';

// Model folders, sessions, providers
export { loadModelFolder, vaeScaleFactorOf } from './models/folder.js';
export type { ModelFolder } from './models/folder.js';
export { SessionManager, sessionInfo, defaultThreadCount } from './models/session.js';
export type { ModelSession, SessionInfo, ValueInfo, RuntimeOptions } from './models/session.js';
export { ProviderSelector, autoProviderFor } from './models/providers.js';
export type { ProviderName, DeviceName } from './models/providers.js';
export { unetIO, textEncoderIO, vaeDecoderIO } from './models/io.js';
export type { UnetIO, TextEncoderIO, VaeDecoderIO } from './models/io.js';
export { defaultCacheDir } from './models/cache-dir.js';

// Random
export { TorchGenerator } from './random/torch-generator.js';
export type { RandomSource } from './random/types.js';

// Schedulers
export { createScheduler, SAMPLERS, resolveSchedulerName, a1111Name, defaultSchedulerFor } from './schedulers/index.js';
export type { SamplerInfo } from './schedulers/index.js';
export type { Scheduler, SchedulerConfig } from './schedulers/types.js';

// Text
export { loadTokenizer } from './text/load.js';
export { tokenizeChunks, padChunks, applyEmphasis } from './text/chunks.js';
export type { Tokenizer } from './text/types.js';

// ToMe
export {
  DEFAULT_TOME,
  validateToMeOptions,
  tomeApplies,
  tomeRandShape,
  applyToMe,
  findTransformerBlocks,
  describeBlocks,
} from './tome/index.js';
export type { ToMeOptions, BlockInfo, PatchedBlockInfo } from './tome/index.js';
export { getPatchedUnet } from './models/tome-cache.js';

// ONNX model I/O
export { loadModel, saveModel } from './onnx/model-io.js';
export { decodeModel, encodeModel } from './onnx/proto.js';
export type { ModelProto, GraphProto, NodeProto, TensorProto } from './onnx/types.js';
