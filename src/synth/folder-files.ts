/**
 * The JSON/text files of a diffusers ONNX pipeline folder besides the models: model_index.json,
 * scheduler/scheduler_config.json and the tokenizer files. Pure logic, no I/O.
 */
import type { ArchSpec } from './archs.js';

export function modelIndexJson(spec: ArchSpec): Record<string, unknown> {
  return {
    _class_name: 'OnnxStableDiffusionPipeline',
    _diffusers_version: '0.27.2',
    feature_extractor: [null, null],
    requires_safety_checker: false,
    safety_checker: [null, null],
    scheduler: ['diffusers', spec.predictionType === 'v_prediction' ? 'DDIMScheduler' : 'PNDMScheduler'],
    text_encoder: ['diffusers', 'OnnxRuntimeModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'OnnxRuntimeModel'],
    vae_decoder: ['diffusers', 'OnnxRuntimeModel'],
    vae_encoder: [null, null],
  };
}

/** SD 1.5's PNDM config; SD 2.1 ships a DDIM config with v_prediction. */
export function schedulerConfigJson(spec: ArchSpec): Record<string, unknown> {
  const common = {
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    beta_start: 0.00085,
    clip_sample: false,
    num_train_timesteps: 1000,
    prediction_type: spec.predictionType,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
    timestep_spacing: 'leading',
    trained_betas: null,
  };
  return spec.predictionType === 'v_prediction'
    ? { _class_name: 'DDIMScheduler', _diffusers_version: '0.27.2', ...common }
    : { _class_name: 'PNDMScheduler', _diffusers_version: '0.27.2', ...common };
}

const token = (content: string): Record<string, unknown> => ({
  content,
  lstrip: false,
  normalized: true,
  rstrip: false,
  single_word: false,
});

export function tokenizerConfigJson(spec: ArchSpec): Record<string, unknown> {
  return {
    add_prefix_space: false,
    bos_token: { __type: 'AddedToken', ...token('<|startoftext|>') },
    do_lower_case: true,
    eos_token: { __type: 'AddedToken', ...token('<|endoftext|>') },
    errors: 'replace',
    model_max_length: 77,
    name_or_path: 'sdgen-synthetic-tiny-vocab',
    pad_token: spec.padToken,
    special_tokens_map_file: './special_tokens_map.json',
    tokenizer_class: 'CLIPTokenizer',
    unk_token: { __type: 'AddedToken', ...token('<|endoftext|>') },
  };
}

export function specialTokensMapJson(spec: ArchSpec): Record<string, unknown> {
  return {
    bos_token: token('<|startoftext|>'),
    eos_token: token('<|endoftext|>'),
    pad_token: spec.padToken === '!' ? token('!') : '<|endoftext|>',
    unk_token: token('<|endoftext|>'),
  };
}

/** merges.txt in the Hugging Face layout: the `#version: 0.2` header, one merge per line. */
export function mergesText(merges: readonly string[]): string {
  return ['#version: 0.2', ...merges].join('\n') + '\n';
}

export function jsonText(obj: unknown): string {
  return JSON.stringify(obj, null, 2) + '\n';
}
