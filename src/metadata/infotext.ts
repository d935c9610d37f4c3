/**
 * AUTOMATIC1111 "infotext" (the PNG `parameters` text): format and parse. Pure, no I/O.
 *
 * Format: prompt, then `\nNegative prompt: …` when there is one, then `\n` + `Key: value` pairs
 * joined by `, `. A value containing `,`, `:` or a newline is written JSON-quoted.
 */
import type { GenerationParams } from '../pipeline/types.js';
import type { ToMeOptions } from '../tome/types.js';

export interface InfotextExtras {
  /** A1111 sampler name ("Euler a"); defaults to the canonical scheduler name */
  samplerName?: string;
  /** model folder name (A1111 "Model") */
  modelName?: string;
  /** whether the ToMe-patched UNet was used: ToMe keys are written only then */
  tomeApplied?: boolean;
  /** sdgen version for the `Version` key; omitted when absent */
  version?: string;
  /** LoRAs applied (`Lora hashes`); default: those of params.loras that carry a short hash */
  loras?: readonly { name: string; shortHash: string }[];
  /** textual-inversion embeddings the prompts used (`TI hashes`) */
  embeddings?: readonly { name: string; shortHash: string }[];
}

/** A1111's `name: hash, name: hash` list of its `Lora hashes` / `TI hashes` keys. */
export function hashList(items: readonly { name: string; shortHash: string }[]): string {
  return items.map((i) => `${i.name}: ${i.shortHash}`).join(', ');
}

/** A1111's quoting: JSON-quote a value that contains `,`, `:` or a newline. */
export function quoteValue(value: string): string {
  return /[,:\n]/.test(value) ? JSON.stringify(value) : value;
}

function num(n: number): string {
  return Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(12)));
}

/** `attn+crossattn+mlp`-style list of the sub-layers ToMe merges around. */
export function tomeMergedLabel(t: ToMeOptions): string {
  const parts: string[] = [];
  if (t.mergeAttn) parts.push('attn');
  if (t.mergeCrossattn) parts.push('crossattn');
  if (t.mergeMlp) parts.push('mlp');
  return parts.length ? parts.join('+') : 'none';
}

/** The ordered `Key: value` fields of an image's infotext. */
export function infotextFields(params: GenerationParams, extras: InfotextExtras = {}): Array<[string, string]> {
  const f: Array<[string, string]> = [];
  f.push(['Steps', num(params.steps)]);
  f.push(['Sampler', extras.samplerName ?? params.scheduler]);
  f.push(['CFG scale', num(params.cfg)]);
  f.push(['Seed', num(params.seed)]);
  f.push(['Size', `${params.width}x${params.height}`]);
  if (extras.modelName) f.push(['Model', extras.modelName]);
  if (params.clipSkip > 1) f.push(['Clip skip', num(params.clipSkip)]);
  const tome = extras.tomeApplied && params.tome.ratio > 0 ? params.tome : null;
  if (tome) f.push(['Token merging ratio', num(tome.ratio)]);
  if (params.eta !== 0) f.push(['Eta', num(params.eta)]);
  if (!params.emphasis) f.push(['Emphasis', 'None']);
  if (tome) {
    f.push(['ToMe sx', num(tome.sx)]);
    f.push(['ToMe sy', num(tome.sy)]);
    f.push(['ToMe max downsample', typeof tome.maxDownsample === 'number' ? num(tome.maxDownsample) : tome.maxDownsample]);
    f.push(['ToMe rand', tome.useRand ? 'True' : 'False']);
    f.push(['ToMe merged', tomeMergedLabel(tome)]);
  }
  // img2img, inpainting, hires fix (A1111's keys)
  if (params.init) f.push(['Denoising strength', num(params.init.strength)]);
  if (params.mask && params.mask.blur > 0) f.push(['Mask blur', num(params.mask.blur)]);
  if (params.mask?.invert) f.push(['Mask mode', 'Inpaint not masked']);
  if (params.hires) {
    const h = params.hires;
    f.push(['Denoising strength', num(h.strength)]);
    if (h.scale !== undefined) f.push(['Hires upscale', num(h.scale)]);
    else f.push(['Hires resize', `${h.width}x${h.height}`]);
    if (h.steps > 0) f.push(['Hires steps', num(h.steps)]);
    f.push(['Hires upscaler', h.upscaler]);
    if (h.prompt !== undefined && h.prompt !== params.prompt) f.push(['Hires prompt', h.prompt]);
    if (h.negativePrompt !== undefined && h.negativePrompt !== params.negativePrompt) f.push(['Hires negative prompt', h.negativePrompt]);
    if (h.scheduler) f.push(['Hires sampler', h.scheduler]);
    if (extras.tomeApplied && h.tome && h.tome.ratio > 0) f.push(['Token merging ratio hr', num(h.tome.ratio)]);
  }
  const loras = extras.loras ?? (params.loras ?? []).filter((l): l is typeof l & { name: string; shortHash: string } => typeof (l as { shortHash?: unknown }).shortHash === 'string' && typeof l.name === 'string');
  if (loras.length > 0) f.push(['Lora hashes', hashList(loras)]);
  if (extras.embeddings && extras.embeddings.length > 0) f.push(['TI hashes', hashList(extras.embeddings)]);
  if (extras.version) f.push(['Version', extras.version]);
  return f;
}

/** The complete infotext, exactly as A1111 lays it out. */
export function formatInfotext(params: GenerationParams, extras: InfotextExtras = {}): string {
  let text = params.prompt;
  if (params.negativePrompt) text += `\nNegative prompt: ${params.negativePrompt}`;
  const fields = infotextFields(params, extras)
    .map(([k, v]) => `${k}: ${quoteValue(v)}`)
    .join(', ');
  return `${text}\n${fields}`;
}

export interface ParsedInfotext {
  prompt: string;
  negativePrompt: string;
  /** every `Key: value` of the last line, unquoted; `Size` also split into `Size-1`/`Size-2` */
  fields: Record<string, string>;
}

// A key: a word character then word characters, spaces, '-' or '/'; a value: a JSON string or
// anything up to the next comma.
const PARAM_RE = /\s*([\p{L}\p{N}_][\p{L}\p{N}_ \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/gu;
const SIZE_RE = /^(\d+)x(\d+)$/;

function unquote(v: string): string {
  try {
    const r: unknown = JSON.parse(v);
    return typeof r === 'string' ? r : v;
  } catch {
    return v;
  }
}

function paramMatches(line: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const m of line.matchAll(PARAM_RE)) {
    if (m[0].length === 0) continue;
    out.push([m[1]!, m[2]!]);
  }
  return out;
}

/**
 * Inverse of formatInfotext with A1111's parser semantics: the last line is the parameter line
 * when it holds at least 3 `Key: value` pairs; lines before it are the prompt (each line
 * trimmed) until one starting with `Negative prompt:`, which starts the negative prompt.
 */
export function parseInfotext(text: string): ParsedInfotext {
  const lines = text.trim().split('\n');
  let last = lines.pop() ?? '';
  if (paramMatches(last).length < 3) {
    lines.push(last);
    last = '';
  }
  let prompt = '';
  let negative = '';
  let inNegative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith('Negative prompt:')) {
      inNegative = true;
      line = line.slice('Negative prompt:'.length).trim();
    }
    if (inNegative) negative += (negative === '' ? '' : '\n') + line;
    else prompt += (prompt === '' ? '' : '\n') + line;
  }
  const fields: Record<string, string> = {};
  for (const [k, raw] of paramMatches(last)) {
    let v = raw;
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = unquote(v);
    const size = SIZE_RE.exec(v);
    if (size) {
      fields[`${k}-1`] = size[1]!;
      fields[`${k}-2`] = size[2]!;
    }
    fields[k] = v;
  }
  return { prompt, negativePrompt: negative, fields };
}

/** What an infotext says about generation parameters (only what it records). */
export interface InfotextParams {
  prompt: string;
  negativePrompt: string;
  steps?: number;
  /** A1111 sampler name, with `Schedule type` appended when present (e.g. "DPM++ 2M Karras") */
  samplerName?: string;
  cfg?: number;
  seed?: number;
  width?: number;
  height?: number;
  clipSkip?: number;
  eta?: number;
  emphasis?: boolean;
  modelName?: string;
  /** ToMe as recorded; ratio 0 when the infotext records no token merging */
  tome: Partial<ToMeOptions> & { ratio: number };
}

function toNum(v: string | undefined): number | undefined {
  if (v === undefined || v.trim() === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

export function infotextToParams(parsed: ParsedInfotext): InfotextParams {
  const f = parsed.fields;
  const out: InfotextParams = { prompt: parsed.prompt, negativePrompt: parsed.negativePrompt, tome: { ratio: 0 } };
  out.steps = toNum(f['Steps']);
  if (f['Sampler']) {
    const type = f['Schedule type'];
    out.samplerName = type && type !== 'Automatic' ? `${f['Sampler']} ${type}` : f['Sampler'];
  }
  out.cfg = toNum(f['CFG scale']);
  out.seed = toNum(f['Seed']);
  out.width = toNum(f['Size-1']);
  out.height = toNum(f['Size-2']);
  out.clipSkip = toNum(f['Clip skip']);
  out.eta = toNum(f['Eta'] ?? f['Eta DDIM']);
  if (f['Emphasis'] !== undefined) out.emphasis = !(f['Emphasis'] === 'None' || f['Emphasis'] === 'Ignore');
  if (f['Model']) out.modelName = f['Model'];
  const ratio = toNum(f['Token merging ratio']);
  if (ratio !== undefined) {
    out.tome.ratio = ratio;
    const sx = toNum(f['ToMe sx']);
    const sy = toNum(f['ToMe sy']);
    const md = toNum(f['ToMe max downsample']);
    if (sx !== undefined) out.tome.sx = sx;
    if (sy !== undefined) out.tome.sy = sy;
    if (md !== undefined) out.tome.maxDownsample = md;
    if (f['ToMe rand'] !== undefined) out.tome.useRand = f['ToMe rand'] === 'True';
    const merged = f['ToMe merged'];
    if (merged !== undefined) {
      const parts = merged.split('+');
      out.tome.mergeAttn = parts.includes('attn');
      out.tome.mergeCrossattn = parts.includes('crossattn');
      out.tome.mergeMlp = parts.includes('mlp');
    }
  }
  for (const k of Object.keys(out) as Array<keyof InfotextParams>) if (out[k] === undefined) delete out[k];
  return out;
}
