/**
 * Normalizes `sdgen bench` flags (strings from the command line, or typed values from code)
 * into BenchOptions: `--sizes 512,768|none`, `--ratios 0,0.5`, `--max-downsample 1|2|4|8|auto`,
 * `--attention standard,fused`,
 * `--conv direct|winograd`, `--b1-sizes 768|none`, `--steps 3`, `--rounds 2`, `--batch 2`, `--threads 2`, `--profile`, `--model DIR|FILE`,
 * `--out DIR|FILE.json`, `--image-size 512`, `--image-steps 20`, `--budget 30` (minutes),
 * `--device cpu|auto`, and the hires-fix measurement: `--hires 512:1024`, `--hires-steps 20+10`,
 * `--hires-preset tome-hires`, `--hires-upscaler Latent`, `--hires-strength 0.7`.
 */
import { UsageError } from '../errors.js';
import { parseHiresSizes, parseHiresSteps } from './hires.js';
import type { BenchAttention, BenchOptions } from './types.js';

function list(v: unknown, what: string): string[] | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (Array.isArray(v)) return v.map(String);
  if (typeof v === 'number') return [String(v)];
  if (typeof v === 'string') return v.split(/[,\s]+/).filter((s) => s !== '');
  throw new UsageError(`--${what}: expected a comma-separated list`);
}

function num(v: unknown, what: string, integer: boolean): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  const n = typeof v === 'number' ? v : Number(String(v));
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new UsageError(`--${what}: ${String(v)} is not ${integer ? 'an integer' : 'a number'}`);
  return n;
}

function sizes(v: unknown): number[] | undefined {
  const l = list(v, 'sizes');
  if (!l) return undefined;
  return l.map((s) => {
    const m = /^(\d+)(?:x(\d+))?$/i.exec(s);
    if (!m) throw new UsageError(`--sizes: ${s} is not a size (e.g. 512 or 512x512)`);
    if (m[2] !== undefined && m[2] !== m[1]) throw new UsageError(`--sizes: ${s}: the benchmark runs square images only`);
    return Number(m[1]);
  });
}

/** Bench options from command-line style values; unknown keys are ignored. */
export function parseBenchOptions(raw: Record<string, unknown>): Partial<BenchOptions> & { json?: boolean } {
  const o: Partial<BenchOptions> & { json?: boolean } = {};
  const sz = raw['sizes'] === 'none' ? [] : sizes(raw['sizes']);
  if (sz) o.sizes = sz;
  const md = raw['maxDownsample'] ?? raw['max-downsample'];
  if (md !== undefined) {
    if (md === 'auto') o.maxDownsample = 'auto';
    else {
      const n = num(md, 'max-downsample', true);
      if (n !== 1 && n !== 2 && n !== 4 && n !== 8) throw new UsageError(`--max-downsample: ${String(md)} is not 1, 2, 4, 8 or auto`);
      o.maxDownsample = n;
    }
  }
  const hires = parseHiresSizes(raw['hires']);
  if (hires) o.hires = hires;
  const hiresSteps = parseHiresSteps(raw['hiresSteps'] ?? raw['hires-steps']);
  if (hiresSteps) o.hiresSteps = hiresSteps;
  const hs = num(raw['hiresStrength'] ?? raw['hires-strength'], 'hires-strength', false);
  if (hs !== undefined) o.hiresStrength = hs;
  for (const [key, flag] of [['hiresPreset', 'hires-preset'], ['hiresUpscaler', 'hires-upscaler']] as const) {
    const v = raw[key] ?? raw[flag];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '') throw new UsageError(`--${flag} needs a name`);
    o[key] = v;
  }
  const b1 = raw['batch1Sizes'] ?? raw['b1-sizes'] ?? raw['b1Sizes'];
  if (b1 !== undefined) o.batch1Sizes = b1 === '' || b1 === 'none' ? [] : (sizes(b1) ?? []);
  const ratios = list(raw['ratios'], 'ratios')?.map((r) => num(r, 'ratios', false)!);
  if (ratios) o.ratios = ratios;
  const att = list(raw['attention'], 'attention');
  if (att) {
    const modes = new Set<BenchAttention>();
    for (const a of att) {
      if (a === 'auto' || a === 'both' || a === 'all') {
        modes.add('standard');
        modes.add('fused');
      } else if (a === 'standard' || a === 'fused') modes.add(a);
      else throw new UsageError(`--attention: ${a} is not standard, fused or auto`);
    }
    o.attention = [...modes];
  }
  const conv = raw['conv'];
  if (conv !== undefined) {
    if (conv === 'auto') o.conv = 'winograd';
    else if (conv === 'direct' || conv === 'winograd') o.conv = conv;
    else throw new UsageError(`--conv: ${String(conv)} is not direct, winograd or auto`);
  }
  const ints: [keyof BenchOptions, string][] = [
    ['steps', 'steps'], ['rounds', 'rounds'], ['batch', 'batch'], ['threads', 'threads'],
    ['imageSize', 'image-size'], ['imageSteps', 'image-steps'], ['configTimeout', 'config-timeout'],
    ['matmulSize', 'matmul-size'],
  ];
  for (const [key, flag] of ints) {
    const v = num(raw[key] ?? raw[flag], flag, true);
    if (v !== undefined) (o as Record<string, unknown>)[key] = v;
  }
  const ir = num(raw['imageRatio'] ?? raw['image-ratio'], 'image-ratio', false);
  if (ir !== undefined) o.imageRatio = ir;
  const ia = raw['imageAttention'] ?? raw['image-attention'];
  if (ia !== undefined) {
    if (ia !== 'standard' && ia !== 'fused') throw new UsageError(`--image-attention: ${String(ia)} is not standard or fused`);
    o.imageAttention = ia;
  }
  const budget = num(raw['budget'], 'budget', false);
  if (budget !== undefined) o.budget = budget;
  const mem = num(raw['memoryLimit'], 'memory-limit', false);
  if (mem !== undefined) o.memoryLimit = mem;
  if (raw['profile'] !== undefined) o.profile = raw['profile'] === true || raw['profile'] === 'true';
  if (typeof raw['model'] === 'string' && raw['model'] !== '') o.model = raw['model'];
  if (typeof raw['out'] === 'string' && raw['out'] !== '') o.out = raw['out'];
  if (typeof raw['cacheDir'] === 'string') o.cacheDir = raw['cacheDir'];
  if (typeof raw['log'] === 'function') o.log = raw['log'] as (l: string) => void;
  const device = raw['device'];
  if (device !== undefined && device !== 'cpu' && device !== 'auto') {
    throw new UsageError(`--device ${String(device)}: the benchmark measures the CPU provider only`);
  }
  if (raw['json'] === true) o.json = true;
  return o;
}
