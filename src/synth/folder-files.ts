/**
 * The JSON/text files of a diffusers ONNX pipeline folder besides the models: model_index.json,
 * scheduler/scheduler_config.json and the tokenizer files. Pure logic, no I/O.
 */
import type { ArchSpec } from './archs.js';

/** An LCM-distilled model (its UNet takes `timestep_cond`). */
function isLcm(spec: ArchSpec): boolean {
  return spec.unet.timeCondProjDim != null;
}

export function modelIndexJson(spec: ArchSpec): Record<string, unknown> {
  if (spec.textEncoder2) return sdxlModelIndexJson();
  const scheduler = isLcm(spec) ? 'LCMScheduler' : spec.predictionType === 'v_prediction' ? 'DDIMScheduler' : 'PNDMScheduler';
  return {
    // LCM checkpoints (SimianLuo/LCM_Dreamshaper_v7) name their diffusers pipeline class
    _class_name: isLcm(spec) ? 'LatentConsistencyModelPipeline' : 'OnnxStableDiffusionPipeline',
    _diffusers_version: '0.27.2',
    feature_extractor: [null, null],
    requires_safety_checker: false,
    safety_checker: [null, null],
    scheduler: ['diffusers', scheduler],
    text_encoder: ['diffusers', 'OnnxRuntimeModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'OnnxRuntimeModel'],
    vae_decoder: ['diffusers', 'OnnxRuntimeModel'],
    vae_encoder: ['diffusers', 'OnnxRuntimeModel'],
  };
}

/** model_index.json of Optimum's SDXL export (the tiny-sdxl fixture's keys and values). */
function sdxlModelIndexJson(): Record<string, unknown> {
  return {
    _class_name: 'StableDiffusionXLPipeline',
    _diffusers_version: '0.27.2',
    feature_extractor: [null, null],
    // an empty negative prompt is zeros, not the encoded "" (SDXL base ships true)
    force_zeros_for_empty_prompt: true,
    image_encoder: [null, null],
    scheduler: ['diffusers', 'EulerDiscreteScheduler'],
    text_encoder: ['transformers', 'CLIPTextModel'],
    text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    tokenizer_2: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'UNet2DConditionModel'],
    vae: ['diffusers', 'AutoencoderKL'],
  };
}

/**
 * SD 1.5's PNDM config; SD 2.1 ships a DDIM config with v_prediction; an LCM model (UNet with
 * time_cond_proj_dim) diffusers' LCMScheduler config with that class's defaults, which are also
 * sdgen's `lcm` defaults (original_inference_steps 50, set_alpha_to_one, timestep_scaling 10).
 */
export function schedulerConfigJson(spec: ArchSpec): Record<string, unknown> {
  if (spec.textEncoder2) {
    // SDXL base 1.0's EulerDiscreteScheduler config with diffusers 0.27.2's other defaults
    return {
      _class_name: 'EulerDiscreteScheduler',
      _diffusers_version: '0.27.2',
      beta_end: 0.012,
      beta_schedule: 'scaled_linear',
      beta_start: 0.00085,
      clip_sample: false,
      interpolation_type: 'linear',
      num_train_timesteps: 1000,
      prediction_type: spec.predictionType,
      rescale_betas_zero_snr: false,
      sample_max_value: 1.0,
      set_alpha_to_one: false,
      sigma_max: null,
      sigma_min: null,
      skip_prk_steps: true,
      steps_offset: 1,
      timestep_spacing: 'leading',
      timestep_type: 'discrete',
      trained_betas: null,
      use_karras_sigmas: false,
    };
  }
  if (isLcm(spec)) {
    return {
      _class_name: 'LCMScheduler',
      _diffusers_version: '0.27.2',
      beta_end: 0.012,
      beta_schedule: 'scaled_linear',
      beta_start: 0.00085,
      clip_sample: false,
      clip_sample_range: 1.0,
      dynamic_thresholding_ratio: 0.995,
      num_train_timesteps: 1000,
      original_inference_steps: 50,
      prediction_type: spec.predictionType,
      rescale_betas_zero_snr: false,
      sample_max_value: 1.0,
      set_alpha_to_one: true,
      steps_offset: 0,
      thresholding: false,
      timestep_scaling: 10.0,
      timestep_spacing: 'leading',
      trained_betas: null,
    };
  }
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

/** `padToken`: the tokenizer's pad token (default the spec's first tokenizer's; SDXL's tokenizer_2 pads with "!"). */
export function tokenizerConfigJson(spec: ArchSpec, padToken: ArchSpec['padToken'] = spec.padToken): Record<string, unknown> {
  return {
    add_prefix_space: false,
    bos_token: { __type: 'AddedToken', ...token('<|startoftext|>') },
    do_lower_case: true,
    eos_token: { __type: 'AddedToken', ...token('<|endoftext|>') },
    errors: 'replace',
    model_max_length: 77,
    name_or_path: 'sdgen-synthetic-tiny-vocab',
    pad_token: padToken,
    special_tokens_map_file: './special_tokens_map.json',
    tokenizer_class: 'CLIPTokenizer',
    unk_token: { __type: 'AddedToken', ...token('<|endoftext|>') },
  };
}

export function specialTokensMapJson(spec: ArchSpec, padToken: ArchSpec['padToken'] = spec.padToken): Record<string, unknown> {
  return {
    bos_token: token('<|startoftext|>'),
    eos_token: token('<|endoftext|>'),
    pad_token: padToken === '!' ? token('!') : '<|endoftext|>',
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
