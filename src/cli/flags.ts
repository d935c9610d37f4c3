/** Declares sdgen's option flags on commander commands and reads back the explicitly given ones. */
import { Command, Option } from 'commander';
import { OPTION_SPECS, SPEC_BY_KEY, coerceOption, DEFAULT_OPTIONS, type OptionKey, type OptionSpec, type PartialOptions } from '../config/options.js';

const SHORT: Partial<Record<OptionKey, string>> = { negativePrompt: 'n', width: 'W', height: 'H' };

const HELP: Partial<Record<OptionKey, string>> = {
  model: 'model folder (diffusers / Optimum ONNX layout)',
  out: `output directory (default: ${DEFAULT_OPTIONS.out})`,
  name: `file name template, fields {index} {seed} {prompt} {negative} {steps} {cfg} {sampler} {width} {height} {job} {model} {date} {time}, e.g. {prompt:40} (default: ${DEFAULT_OPTIONS.name})`,
  overwrite: 'replace existing files with the same name (default: never overwrite)',
  negativePrompt: 'negative prompt',
  width: "image width, a multiple of 8 (default: the model's, else 512)",
  height: "image height, a multiple of 8 (default: the model's, else 512)",
  steps: `denoising steps (default: ${DEFAULT_OPTIONS.steps})`,
  cfg: `classifier-free guidance scale; 1 skips the unconditional pass (default: ${DEFAULT_OPTIONS.cfg})`,
  seed: 'seed of the first image, image i gets seed+i; -1 = random, recorded (default: -1)',
  scheduler: "sampler, sdgen or A1111 name (see: sdgen samplers; default: the model's scheduler)",
  eta: 'DDIM eta (default: 0)',
  batchSize: 'images per UNet call (default: 1)',
  nIter: 'number of batches per prompt, A1111 batch count (default: 1)',
  clipSkip: 'CLIP skip: 1 = last layer (default: 1)',
  emphasis: 'treat (word:1.2) [word] literally, no emphasis weights',
  attention: 'attention kernel auto|standard|fused (default: auto)',
  conv: 'convolution algorithm auto|direct|winograd; auto = Winograd on the CPU (default: auto)',
  device: 'execution provider auto|cpu|cuda|dml|coreml|webgpu (default: auto)',
  threads: 'CPU threads for onnxruntime (default: onnxruntime picks)',
  cacheDir: 'cache directory for ToMe-patched models',
  tome: 'ToMe ratio: fraction of tokens merged, 0 ≤ R ≤ 1 − 1/(sx·sy) (default: 0 = off)',
  sx: 'ToMe destination stride x (default: 2)',
  sy: 'ToMe destination stride y (default: 2)',
  maxDownsample: 'ToMe only in blocks downsampled at most this much: 1|2|4|8|auto (default: auto = the highest-resolution level with transformer blocks: 1 on SD 1.x/2.x, 2 on SDXL)',
  tomeRand: 'ToMe random destination in each cell (default: off, as A1111)',
  mergeAttn: 'ToMe merges around self-attention (default: on)',
  mergeCrossattn: 'ToMe merges around cross-attention (default: off)',
  mergeMlp: 'ToMe merges around the feed-forward (default: off)',
  tomeMinWidth: 'ToMe only when the image is at least this wide (default: 0)',
  tomeMinHeight: 'ToMe only when the image is at least this high (default: 0)',
  lora: 'apply a LoRA (.safetensors) at SCALE (default 1); repeatable, the deltas add; also <lora:NAME:SCALE> in the prompt with --lora-dir',
  loraDir: 'directory searched for the NAME.safetensors of <lora:NAME:SCALE> prompt tags (default: none)',
  embeddingsDir: 'directory of textual-inversion embeddings (.safetensors); a file name used as a word in a prompt stands for its vectors',
};

function valueName(s: OptionSpec): string {
  if (s.kind === 'int') return 'n';
  if (s.kind === 'float') return 'x';
  if (s.kind === 'enum') return 'value';
  if (s.kind === 'list') return s.key === 'lora' ? 'file[:scale]' : 'value';
  if (s.key === 'loraDir' || s.key === 'embeddingsDir') return 'dir';
  if (s.key === 'originalSize' || s.key === 'targetSize') return 'WxH';
  if (s.key === 'cropTopLeft') return 'x,y';
  if (s.key === 'model' || s.key === 'out' || s.key === 'cacheDir') return 'dir';
  return 'text';
}

/** Adds the flags of the given option specs to a command. */
export function addOptionFlags(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const s of specs) {
    const help = HELP[s.key] ?? s.help;
    const short = SHORT[s.key] ? `-${SHORT[s.key]}, ` : '';
    if (s.kind === 'bool') {
      if (s.key === 'emphasis') {
        cmd.addOption(new Option('--no-emphasis', help));
      } else if (s.key === 'overwrite') {
        cmd.addOption(new Option('--overwrite', help));
      } else {
        cmd.addOption(new Option(`--${s.flag}`, help));
        cmd.addOption(new Option(`--no-${s.flag}`, `turn --${s.flag} off`).hideHelp(s.key !== 'mergeAttn'));
      }
    } else if (s.kind === 'list') {
      // repeatable: each occurrence adds a value
      cmd.addOption(new Option(`${short}--${s.flag} <${valueName(s)}>`, help).argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]));
    } else {
      cmd.addOption(new Option(`${short}--${s.flag} <${valueName(s)}>`, help));
    }
  }
  return cmd;
}

export const GENERATION_SPECS = OPTION_SPECS;
export const TOME_SPECS = OPTION_SPECS.filter((s) => s.tome);

/**
 * The options given explicitly on the command line (commander's value source 'cli'), validated
 * and typed; a bad value is a one-line UsageError naming the flag.
 */
export function explicitOptions(cmd: Command, specs: readonly OptionSpec[]): PartialOptions {
  const raw = cmd.opts();
  const out: Record<string, unknown> = {};
  for (const s of specs) {
    if (cmd.getOptionValueSource(s.key) !== 'cli') continue;
    const v = raw[s.key];
    if (v === undefined) continue;
    const flag = s.kind === 'bool' && v === false && s.key !== 'overwrite' ? `--no-${s.flag}` : `--${s.flag}`;
    out[s.key] = coerceOption(SPEC_BY_KEY.get(s.key)!, v, flag);
  }
  return out as PartialOptions;
}
