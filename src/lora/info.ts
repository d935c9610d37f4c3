/**
 * What a LoRA file is (`sdgen lora-info FILE [--model DIR]`): key format, tensor types, ranks,
 * alphas, the modules it touches per model, its hashes and training metadata, and, given a model
 * folder, how many of its modules map onto that model's UNet and text encoder.
 */
import { SdgenError } from '../errors.js';
import { loadModel } from '../onnx/model-io.js';
import { a1111LoraShortHash, safetensorsHashes } from './hash.js';
import type { LoraTarget } from './keys.js';
import { mapLoraModules, WeightSites } from './map.js';
import { openLora } from './merge.js';
import { deltaShapeText } from './options.js';
import { unetLayoutBeside } from './variant.js';

export interface LoraModelFit {
  target: LoraTarget;
  total: number;
  matched: number;
  unmatched: string[];
  /** why the LoRA does not fit (a shape mismatch), when it does not */
  error?: string;
}

export interface LoraInfo {
  file: string;
  format: string;
  dtypes: string[];
  ranks: number[];
  /** distinct alphas; `rank` stands for modules without one (alpha = rank) */
  alphas: (number | 'rank')[];
  modules: Record<LoraTarget, number>;
  kinds: Record<'linear' | 'conv', number>;
  /** module paths, as the file names them */
  touched: string[];
  sha256: string;
  shortHash: string;
  metadata: Record<string, string>;
  ignored: string[];
  fit?: LoraModelFit[];
}

/** Reads a LoRA's header (and alphas), and maps it onto a model's graphs when given their files. */
export async function loraInfo(file: string, models?: Partial<Record<LoraTarget, string>>): Promise<LoraInfo> {
  const lora = await openLora(file, file);
  try {
    const mods = lora.parsed.modules;
    const dtypes = new Set<string>();
    for (const m of mods) for (const k of [m.down, m.up]) dtypes.add(lora.file.entry(k).dtype);
    const alphas = new Set<number | 'rank'>();
    for (const m of mods) alphas.add(m.alpha === undefined ? 'rank' : (await lora.file.readFloats(m.alpha))[0]!);
    const count = (t: LoraTarget): number => mods.filter((m) => m.target === t).length;
    const h = await safetensorsHashes(file);
    const info: LoraInfo = {
      file,
      format: lora.parsed.format,
      dtypes: [...dtypes].sort(),
      ranks: [...new Set(mods.map((m) => m.rank))].sort((a, b) => a - b),
      alphas: [...alphas],
      modules: { unet: count('unet'), text_encoder: count('text_encoder'), text_encoder_2: count('text_encoder_2') },
      kinds: { linear: mods.filter((m) => m.kind === 'linear').length, conv: mods.filter((m) => m.kind === 'conv').length },
      touched: mods.map((m) => `${m.target}: ${m.path} ${deltaShapeText(m)}`),
      sha256: h.sha256,
      shortHash: a1111LoraShortHash(h),
      metadata: lora.file.metadata,
      ignored: lora.parsed.ignored,
    };
    if (models) {
      info.fit = [];
      for (const [target, path] of Object.entries(models) as [LoraTarget, string][]) {
        const model = await loadModel(path, { externalData: 'lazy' });
        if (model.graph === undefined) throw new SdgenError(`${path}: the model has no graph`);
        const total = count(target);
        try {
          const layout = target === 'unet' ? await unetLayoutBeside(path) : undefined;
          const r = mapLoraModules(model.graph, mods, [target], file, new WeightSites(model.graph, layout));
          info.fit.push({ target, total, matched: r.matched.length, unmatched: r.unmatched.map((m) => m.id) });
        } catch (e) {
          info.fit.push({ target, total, matched: 0, unmatched: [], error: (e as Error).message });
        }
      }
    }
    return info;
  } finally {
    await lora.file.close();
  }
}

/** The human-readable report of loraInfo. */
export function formatLoraInfo(i: LoraInfo): string {
  const lines: string[] = [];
  lines.push(`file: ${i.file}`);
  lines.push(`format: LoRA, ${i.format} keys; ${i.dtypes.join('/')}; rank ${i.ranks.join('/')}; alpha ${i.alphas.join('/')}`);
  lines.push(`modules: ${i.modules.unet} UNet, ${i.modules.text_encoder} text encoder${i.modules.text_encoder_2 ? `, ${i.modules.text_encoder_2} second text encoder` : ''} (${i.kinds.linear} linear, ${i.kinds.conv} convolution)`);
  lines.push(`sha256: ${i.sha256}  (A1111 short hash ${i.shortHash})`);
  const base = i.metadata['ss_base_model_version'] ?? i.metadata['modelspec.architecture'];
  if (base) lines.push(`trained for: ${base}`);
  for (const f of i.fit ?? []) {
    const what = f.target === 'unet' ? 'UNet' : f.target === 'text_encoder' ? 'text encoder' : 'second text encoder';
    if (f.error) lines.push(`${what}: does not fit: ${f.error}`);
    else lines.push(`${what}: ${f.matched} of ${f.total} modules map onto the model${f.unmatched.length ? ` (not found: ${f.unmatched.slice(0, 3).join(', ')}${f.unmatched.length > 3 ? ', …' : ''})` : ''}`);
  }
  for (const g of i.ignored) lines.push(`ignored: ${g}`);
  lines.push('touched:');
  for (const t of i.touched) lines.push(`  ${t}`);
  return lines.join('\n') + '\n';
}
