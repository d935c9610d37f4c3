/**
 * sdgen's option schema: one table shared by the command line, `.sdgenrc`, presets and prompt
 * files. Config keys are the long flag names in camelCase (`--negative-prompt` → negativePrompt,
 * `--no-emphasis` → `emphasis: false`). Pure: no I/O.
 */
import path from 'node:path';
import { UsageError } from '../errors.js';
import type { AttentionMode } from '../optimize/attention-mode.js';
import type { ConvMode } from '../optimize/conv-mode.js';
import type { DeviceName } from '../models/providers.js';
import { DEFAULT_TOME, tomeToFlat, type ToMeFlatOptions } from '../tome/options.js';

/** Every option; the ToMe keys are ToMeFlatOptions (src/tome/options.ts owns them). */
export interface SdgenOptions extends ToMeFlatOptions {
  model?: string;
  out: string;
  name: string;
  overwrite: boolean;
  negativePrompt: string;
  /** undefined: the model folder's default size, else 512 */
  width?: number;
  height?: number;
  steps: number;
  cfg: number;
  seed: number;
  /** sdgen or A1111 sampler name; undefined: the model folder's scheduler */
  scheduler?: string;
  eta: number;
  batchSize: number;
  nIter: number;
  clipSkip: number;
  emphasis: boolean;
  attention: AttentionMode;
  conv: ConvMode;
  device: DeviceName;
  threads?: number;
  cacheDir?: string;
  /** LoRAs, `FILE[:SCALE]` each (--lora, repeatable; src/lora) */
  lora?: string[];
  /** where `<lora:NAME:SCALE>` prompt tags find NAME.safetensors */
  loraDir?: string;
  /** textual-inversion embeddings (`*.safetensors`), used by file name in prompts */
  embeddingsDir?: string;
  /** prompts over 75 tokens: 'chunk' (A1111) or 'truncate' (diffusers); undefined: the engine's default, chunk */
  longPrompt?: 'chunk' | 'truncate';
  /** SDXL size conditioning, `WIDTHxHEIGHT` (parseSizeOption); undefined: the image size */
  originalSize?: string;
  /** SDXL crop conditioning, `X,Y` = left, top (parseCropOption); undefined: 0,0 */
  cropTopLeft?: string;
  targetSize?: string;
  /** SDXL: encode an empty negative prompt instead of the zeros of force_zeros_for_empty_prompt */
  encodeEmptyNegative?: boolean;
  /** img2img: the picture to start from (PNG/JPEG/WebP) */
  initImage?: string;
  /** img2img strength, (0, 1]; undefined: 0.75 */
  strength?: number;
  /** inpainting mask (white = repaint; needs initImage) */
  mask?: string;
  /** A1111's mask blur σ in pixels; undefined: 0 (none, as diffusers) */
  maskBlur?: number;
  /** repaint the black part of the mask */
  invertMask?: boolean;
  /** hires fix (A1111's two-pass txt2img) */
  hires?: boolean;
  /** hires size: the job's size × scale (undefined: 2), or hiresWidth/hiresHeight */
  hiresScale?: number;
  hiresWidth?: number;
  hiresHeight?: number;
  /** A1111's upscaler name (undefined: 'Latent') */
  hiresUpscaler?: string;
  /** hires pass 2's denoising strength, (0, 1]; undefined: 0.7 */
  denoisingStrength?: number;
  /** the steps pass 2 runs; undefined or 0: --steps */
  hiresSteps?: number;
  hiresPrompt?: string;
  hiresNegativePrompt?: string;
  hiresScheduler?: string;
  /** pass 2's ToMe ratio (A1111 "Token merging ratio hr"); undefined: the ToMe settings */
  hiresTome?: number;
  /** tiled VAE decode/encode; undefined: auto */
  vaeTiling?: 'auto' | 'on' | 'off';
}

export type OptionKey = keyof SdgenOptions;
export type PartialOptions = Partial<SdgenOptions>;

export const DEFAULT_OPTIONS: Readonly<SdgenOptions> = Object.freeze({
  out: './outputs',
  name: '{index:05}-{seed}',
  overwrite: false,
  negativePrompt: '',
  steps: 20,
  cfg: 7,
  seed: -1,
  eta: 0,
  batchSize: 1,
  nIter: 1,
  clipSkip: 1,
  emphasis: true,
  attention: 'auto',
  conv: 'auto',
  device: 'auto',
  ...tomeToFlat(DEFAULT_TOME),
} satisfies SdgenOptions);

/** 'list': strings, a flag given once per value (--lora a --lora b) */
type Kind = 'int' | 'float' | 'string' | 'bool' | 'enum' | 'list';

export interface OptionSpec {
  key: OptionKey;
  /** long flag without dashes */
  flag: string;
  kind: Kind;
  min?: number;
  max?: number;
  multipleOf?: number;
  choices?: readonly string[];
  /** a string option's form, checked wherever it enters, and its description for the error */
  pattern?: RegExp;
  patternHelp?: string;
  /** value kind is numeric enum (e.g. max downsample) */
  numericChoices?: boolean;
  /** may be set per job in a prompt file line */
  perJob: boolean;
  /** whether it is part of ToMe */
  tome?: boolean;
  help: string;
}

export const DEVICES: readonly DeviceName[] = ['auto', 'cpu', 'cuda', 'dml', 'coreml', 'webgpu'];
export const ATTENTION_MODES: readonly AttentionMode[] = ['auto', 'standard', 'fused'];
export const CONV_MODES: readonly ConvMode[] = ['auto', 'direct', 'winograd'];
export const MAX_SEED = Number.MAX_SAFE_INTEGER;
/** `WIDTHxHEIGHT`, each 1…16384 (SDXL size conditioning) */
const SIZE_RE = /^(?:[1-9]\d{0,3}|1[0-5]\d{3}|16[0-2]\d{2}|163[0-7]\d|1638[0-4])x(?:[1-9]\d{0,3}|1[0-5]\d{3}|16[0-2]\d{2}|163[0-7]\d|1638[0-4])$/;
/** `X,Y`, each 0…16384 (SDXL crop conditioning) */
const CROP_RE = /^(?:0|[1-9]\d{0,3}|1[0-5]\d{3}|16[0-2]\d{2}|163[0-7]\d|1638[0-4]),(?:0|[1-9]\d{0,3}|1[0-5]\d{3}|16[0-2]\d{2}|163[0-7]\d|1638[0-4])$/;

/** A checked `WIDTHxHEIGHT` option value as numbers. */
export function parseSizeOption(s: string): { width: number; height: number } {
  const [w, h] = s.split('x').map(Number);
  return { width: w!, height: h! };
}

/** A checked `X,Y` crop option value (X = left, Y = top) as diffusers' (top, left). */
export function parseCropOption(s: string): { top: number; left: number } {
  const [x, y] = s.split(',').map(Number);
  return { top: y!, left: x! };
}

export const OPTION_SPECS: readonly OptionSpec[] = [
  { key: 'model', flag: 'model', kind: 'string', perJob: true, help: 'model folder (diffusers/Optimum ONNX layout)' },
  { key: 'out', flag: 'out', kind: 'string', perJob: false, help: 'output directory' },
  { key: 'name', flag: 'name', kind: 'string', perJob: false, help: 'file name template' },
  { key: 'overwrite', flag: 'overwrite', kind: 'bool', perJob: false, help: 'replace existing files of the same name' },
  { key: 'negativePrompt', flag: 'negative-prompt', kind: 'string', perJob: true, help: 'negative prompt' },
  { key: 'width', flag: 'width', kind: 'int', min: 8, max: 16384, multipleOf: 8, perJob: true, help: 'image width' },
  { key: 'height', flag: 'height', kind: 'int', min: 8, max: 16384, multipleOf: 8, perJob: true, help: 'image height' },
  { key: 'steps', flag: 'steps', kind: 'int', min: 1, max: 1000, perJob: true, help: 'denoising steps' },
  { key: 'cfg', flag: 'cfg', kind: 'float', min: 0, max: 100, perJob: true, help: 'guidance scale' },
  { key: 'seed', flag: 'seed', kind: 'int', min: -1, max: MAX_SEED, perJob: true, help: 'seed (-1 = random)' },
  { key: 'scheduler', flag: 'scheduler', kind: 'string', perJob: true, help: 'sampler' },
  { key: 'eta', flag: 'eta', kind: 'float', min: 0, max: 1, perJob: true, help: 'DDIM eta' },
  { key: 'batchSize', flag: 'batch-size', kind: 'int', min: 1, max: 64, perJob: true, help: 'images per UNet call' },
  { key: 'nIter', flag: 'n-iter', kind: 'int', min: 1, max: 100000, perJob: true, help: 'batches per prompt' },
  { key: 'clipSkip', flag: 'clip-skip', kind: 'int', min: 1, max: 12, perJob: true, help: 'CLIP skip' },
  { key: 'emphasis', flag: 'emphasis', kind: 'bool', perJob: true, help: 'emphasis syntax' },
  { key: 'attention', flag: 'attention', kind: 'enum', choices: ATTENTION_MODES, perJob: false, help: 'attention kernel' },
  { key: 'conv', flag: 'conv', kind: 'enum', choices: CONV_MODES, perJob: false, help: 'convolution algorithm' },
  { key: 'device', flag: 'device', kind: 'enum', choices: DEVICES, perJob: false, help: 'execution provider' },
  { key: 'threads', flag: 'threads', kind: 'int', min: 1, max: 1024, perJob: false, help: 'CPU threads' },
  { key: 'cacheDir', flag: 'cache-dir', kind: 'string', perJob: false, help: 'patched-model cache directory' },
  { key: 'lora', flag: 'lora', kind: 'list', perJob: true, help: 'LoRA FILE[:SCALE] (repeatable)' },
  { key: 'loraDir', flag: 'lora-dir', kind: 'string', perJob: false, help: 'directory of LoRAs for <lora:NAME:SCALE> prompt tags' },
  { key: 'embeddingsDir', flag: 'embeddings-dir', kind: 'string', perJob: false, help: 'directory of textual-inversion embeddings' },
  { key: 'longPrompt', flag: 'long-prompt', kind: 'enum', choices: ['chunk', 'truncate'], perJob: true, help: 'prompts over 75 tokens: chunk (A1111) or truncate (diffusers)' },
  {
    key: 'originalSize', flag: 'original-size', kind: 'string', pattern: SIZE_RE, patternHelp: 'WIDTHxHEIGHT from 1x1 to 16384x16384, e.g. 1024x1024',
    perJob: true, help: 'SDXL original-size conditioning (default: the image size)',
  },
  {
    key: 'cropTopLeft', flag: 'crop-top-left', kind: 'string', pattern: CROP_RE, patternHelp: 'X,Y (left, top) from 0 to 16384, e.g. 0,0',
    perJob: true, help: 'SDXL crop conditioning (default: 0,0)',
  },
  {
    key: 'targetSize', flag: 'target-size', kind: 'string', pattern: SIZE_RE, patternHelp: 'WIDTHxHEIGHT from 1x1 to 16384x16384, e.g. 1024x1024',
    perJob: true, help: 'SDXL target-size conditioning (default: the image size)',
  },
  { key: 'encodeEmptyNegative', flag: 'encode-empty-negative', kind: 'bool', perJob: true, help: 'SDXL: encode an empty negative prompt instead of zeros' },
  { key: 'initImage', flag: 'init-image', kind: 'string', perJob: true, help: 'img2img: start from this picture (PNG/JPEG/WebP, resized to the image size)' },
  { key: 'strength', flag: 'strength', kind: 'float', min: 0, max: 1, perJob: true, help: 'img2img strength in (0, 1]: the part of --steps run (default 0.75)' },
  { key: 'mask', flag: 'mask', kind: 'string', perJob: true, help: 'inpainting mask (white = repaint; needs --init-image)' },
  { key: 'maskBlur', flag: 'mask-blur', kind: 'float', min: 0, max: 256, perJob: true, help: "A1111's mask blur in pixels (default 0: none, as diffusers)" },
  { key: 'invertMask', flag: 'invert-mask', kind: 'bool', perJob: true, help: 'repaint the black part of the mask' },
  { key: 'hires', flag: 'hires', kind: 'bool', perJob: true, help: 'hires fix: txt2img, then img2img at a larger size' },
  { key: 'hiresScale', flag: 'hires-scale', kind: 'float', min: 0.125, max: 8, perJob: true, help: 'hires size = image size × this (default 2)' },
  { key: 'hiresWidth', flag: 'hires-width', kind: 'int', min: 8, max: 16384, multipleOf: 8, perJob: true, help: 'hires width (instead of --hires-scale)' },
  { key: 'hiresHeight', flag: 'hires-height', kind: 'int', min: 8, max: 16384, multipleOf: 8, perJob: true, help: 'hires height (instead of --hires-scale)' },
  {
    key: 'hiresUpscaler', flag: 'hires-upscaler', kind: 'enum',
    choices: ['Latent', 'Latent (antialiased)', 'Latent (bicubic)', 'Latent (bicubic antialiased)', 'Latent (nearest)', 'Latent (nearest-exact)', 'Lanczos', 'Nearest'],
    perJob: true, help: "hires upscaler, A1111's names (default Latent)",
  },
  { key: 'denoisingStrength', flag: 'denoising-strength', kind: 'float', min: 0, max: 1, perJob: true, help: 'hires pass 2 strength in (0, 1] (default 0.7)' },
  { key: 'hiresSteps', flag: 'hires-steps', kind: 'int', min: 0, max: 1000, perJob: true, help: 'steps hires pass 2 runs (0 = --steps)' },
  { key: 'hiresPrompt', flag: 'hires-prompt', kind: 'string', perJob: true, help: 'hires pass 2 prompt (default: the prompt)' },
  { key: 'hiresNegativePrompt', flag: 'hires-negative-prompt', kind: 'string', perJob: true, help: 'hires pass 2 negative prompt' },
  { key: 'hiresScheduler', flag: 'hires-scheduler', kind: 'string', perJob: true, help: 'hires pass 2 sampler (default: --scheduler)' },
  { key: 'hiresTome', flag: 'hires-tome', kind: 'float', min: 0, max: 1, perJob: true, help: 'hires pass 2 ToMe ratio (default: the ToMe settings)' },
  { key: 'vaeTiling', flag: 'vae-tiling', kind: 'enum', choices: ['auto', 'on', 'off'], perJob: true, help: 'tiled VAE decode/encode (auto: when the image would not fit in memory)' },
  { key: 'tome', flag: 'tome', kind: 'float', min: 0, max: 1, perJob: true, tome: true, help: 'ToMe ratio' },
  { key: 'sx', flag: 'sx', kind: 'int', min: 1, max: 64, perJob: true, tome: true, help: 'ToMe stride x' },
  { key: 'sy', flag: 'sy', kind: 'int', min: 1, max: 64, perJob: true, tome: true, help: 'ToMe stride y' },
  {
    key: 'maxDownsample', flag: 'max-downsample', kind: 'enum', choices: ['1', '2', '4', '8', 'auto'], numericChoices: true,
    perJob: true, tome: true, help: 'ToMe max downsample (auto: the highest-resolution level with transformer blocks)',
  },
  { key: 'tomeRand', flag: 'tome-rand', kind: 'bool', perJob: true, tome: true, help: 'ToMe random destinations' },
  { key: 'mergeAttn', flag: 'merge-attn', kind: 'bool', perJob: true, tome: true, help: 'merge around self-attention' },
  { key: 'mergeCrossattn', flag: 'merge-crossattn', kind: 'bool', perJob: true, tome: true, help: 'merge around cross-attention' },
  { key: 'mergeMlp', flag: 'merge-mlp', kind: 'bool', perJob: true, tome: true, help: 'merge around the MLP' },
  { key: 'tomeMinWidth', flag: 'tome-min-width', kind: 'int', min: 0, max: 1 << 20, perJob: true, tome: true, help: 'ToMe minimum width' },
  { key: 'tomeMinHeight', flag: 'tome-min-height', kind: 'int', min: 0, max: 1 << 20, perJob: true, tome: true, help: 'ToMe minimum height' },
];

export const SPEC_BY_KEY: ReadonlyMap<string, OptionSpec> = new Map(OPTION_SPECS.map((s) => [s.key, s]));

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

function rangeText(s: OptionSpec): string {
  const lo = s.min, hi = s.max;
  const what = s.kind === 'int' ? 'an integer' : 'a number';
  let r: string;
  if (lo !== undefined && hi !== undefined) r = `${what} from ${lo} to ${hi === MAX_SEED ? '2^53-1' : hi}`;
  else if (lo !== undefined) r = `${what} ≥ ${lo}`;
  else r = what;
  if (s.multipleOf) r += `, a multiple of ${s.multipleOf}`;
  return r;
}

/**
 * Converts a raw value (a string from a command line or prompt file, or a JSON value from a
 * config file) to the option's type; throws a one-line UsageError prefixed with `where`.
 */
export function coerceOption(spec: OptionSpec, raw: unknown, where: string): unknown {
  const bad = (expected: string): never => {
    throw new UsageError(`${where}: expected ${expected}, got ${show(raw)}`);
  };
  switch (spec.kind) {
    case 'string':
      if (typeof raw !== 'string') bad('a string');
      if (spec.pattern && !spec.pattern.test(raw as string)) bad(spec.patternHelp ?? 'another form');
      return raw;
    case 'list':
      if (typeof raw === 'string') return [raw];
      if (!Array.isArray(raw) || !raw.every((x) => typeof x === 'string')) bad('a string or a list of strings');
      return [...(raw as string[])];
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === 'True' || raw === '1') return true;
      if (raw === 'false' || raw === 'False' || raw === '0') return false;
      return bad('true or false');
    case 'enum': {
      const s = typeof raw === 'number' ? String(raw) : raw;
      if (typeof s !== 'string' || !spec.choices!.includes(s)) bad(`one of ${spec.choices!.join(', ')}`);
      // numeric choices become numbers; a word among them ('auto') stays a word
      return spec.numericChoices && /^\d+$/.test(s as string) ? Number(s) : s;
    }
    case 'int':
    case 'float': {
      let n: number;
      if (typeof raw === 'number') n = raw;
      else if (typeof raw === 'string' && raw.trim() !== '' && /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw.trim())) n = Number(raw);
      else return bad(rangeText(spec));
      if (!Number.isFinite(n)) bad(rangeText(spec));
      if (spec.kind === 'int' && !Number.isInteger(n)) bad(rangeText(spec));
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) bad(rangeText(spec));
      if (spec.multipleOf && n % spec.multipleOf !== 0) bad(rangeText(spec));
      return n;
    }
  }
}

/**
 * Validates an object of config keys (rc file, preset): every key must be a known option
 * (camelCase long flag name); throws naming the key and the file.
 */
export function validateConfigObject(
  obj: unknown,
  source: string,
  allowed?: (key: string) => boolean,
  baseDir?: string,
): PartialOptions {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new UsageError(`${source}: expected an object of options`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj as Record<string, unknown>)) {
    if (allowed && allowed(k)) continue;
    const spec = SPEC_BY_KEY.get(k);
    if (!spec) throw new UsageError(`${source}: unknown key "${k}"${suggest(k)}`);
    let value = coerceOption(spec, v, `${source}: ${k}`);
    // Paths in a config file are relative to the file's directory.
    if (baseDir !== undefined && PATH_KEYS.has(k) && typeof value === 'string' && value !== '') value = path.resolve(baseDir, value);
    out[k] = value;
  }
  return out as PartialOptions;
}

/** Option keys holding a path. */
export const PATH_KEYS: ReadonlySet<string> = new Set(['model', 'out', 'cacheDir', 'loraDir', 'embeddingsDir']);


function suggest(k: string): string {
  const norm = normalizeKey(k);
  const hit = FILE_KEY_ALIASES.get(norm);
  if (hit && typeof hit === 'string' && hit !== k) return ` (did you mean "${hit}"?)`;
  return '';
}

/** `--batch-size`, `batchSize`, `batch_size` → `batch_size`. */
export function normalizeKey(k: string): string {
  return k
    .replace(/^-+/, '')
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/-/g, '_')
    .toLowerCase();
}

/** A prompt-file key resolved: an option (possibly negated boolean), or the prompt itself. */
export type FileKeyTarget = OptionKey | 'prompt' | { key: OptionKey; negate: true };

/** Keys accepted in prompt-file lines and .jsonl objects (normalized to snake_case). */
export const FILE_KEY_ALIASES: ReadonlyMap<string, FileKeyTarget> = (() => {
  const m = new Map<string, FileKeyTarget>();
  for (const s of OPTION_SPECS) {
    if (!s.perJob) continue;
    m.set(normalizeKey(s.key), s.key);
    m.set(normalizeKey(s.flag), s.key);
    if (s.kind === 'bool') m.set(`no_${normalizeKey(s.flag)}`, { key: s.key, negate: true });
  }
  // AUTOMATIC1111 "prompts from file" names
  m.set('prompt', 'prompt');
  m.set('cfg_scale', 'cfg');
  m.set('sampler_name', 'scheduler');
  m.set('sampler', 'scheduler');
  m.set('sampler_index', 'scheduler');
  m.set('tome_ratio', 'tome');
  m.set('token_merging_ratio', 'tome');
  return m;
})();

/** Merges option layers, later layers winning; undefined values never override. */
export function mergeOptions(...layers: Array<PartialOptions | undefined>): PartialOptions {
  const out: Record<string, unknown> = {};
  for (const layer of layers) {
    if (!layer) continue;
    for (const [k, v] of Object.entries(layer)) if (v !== undefined) out[k] = v;
  }
  return out as PartialOptions;
}

/** Defaults < rc < preset < … < flags: the complete resolved options. */
export function resolveOptions(...layers: Array<PartialOptions | undefined>): SdgenOptions {
  return mergeOptions(DEFAULT_OPTIONS, ...layers) as SdgenOptions;
}
