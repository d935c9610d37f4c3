/**
 * `--from IMAGE`: the LoRA options that re-apply an image's LoRAs. The `sdgen` chunk records the
 * option LoRAs in `params.loras` (path, scale, SHA-256) and the LoRA directory its prompt tags
 * were resolved in (`params.loraDir`; the tags stay in the prompt). A file that is no longer
 * where it was is looked for by name in that directory and must have the recorded SHA-256; what
 * cannot be found is listed, so the caller can say which are missing.
 */
import { existsSync } from 'node:fs';
import { extractLoraTags } from './prompt.js';
import { findLoraFile } from './resolve.js';
import { safetensorsHashes } from './hash.js';

interface RecordedLora {
  path?: unknown;
  scale?: unknown;
  unetScale?: unknown;
  name?: unknown;
  sha256?: unknown;
}

export interface LorasFromRecord {
  /** options to merge into the regenerated job's: `lora` (FILE:SCALE each) and `loraDir` */
  options: { lora?: string[]; loraDir?: string };
  /** one line per LoRA that was not found */
  missing: string[];
}

async function sameFile(path: string, sha256: unknown): Promise<boolean> {
  if (!existsSync(path)) return false;
  return typeof sha256 !== 'string' || (await safetensorsHashes(path)).sha256 === sha256;
}

/** The LoRA options of a `sdgen` record's params (see the module comment). */
export async function lorasFromRecord(params: { prompt?: unknown; loras?: unknown; loraDir?: unknown }): Promise<LorasFromRecord> {
  const out: LorasFromRecord = { options: {}, missing: [] };
  const dir = typeof params.loraDir === 'string' && existsSync(params.loraDir) ? params.loraDir : undefined;
  if (typeof params.loraDir === 'string') {
    if (dir !== undefined) out.options.loraDir = dir;
  }
  const list: string[] = [];
  for (const l of Array.isArray(params.loras) ? (params.loras as RecordedLora[]) : []) {
    if (typeof l?.path !== 'string' || typeof l.scale !== 'number') continue;
    const name = typeof l.name === 'string' ? l.name : l.path;
    let file: string | undefined = (await sameFile(l.path, l.sha256)) ? l.path : undefined;
    if (file === undefined && dir !== undefined && typeof l.name === 'string') {
      const found = await findLoraFile(dir, l.name);
      if (found !== undefined && (await sameFile(found, l.sha256))) file = found;
    }
    if (file === undefined) {
      out.missing.push(`LoRA ${name} (${l.path}) not found`);
      continue;
    }
    if (typeof l.unetScale === 'number' && l.unetScale !== l.scale) out.missing.push(`LoRA ${name}: its separate UNet scale ${l.unetScale} cannot be given as --lora; use a <lora:${name}:${l.scale}:${l.unetScale}> tag`);
    list.push(`${file}:${l.scale}`);
  }
  if (list.length > 0) out.options.lora = list;
  if (typeof params.prompt === 'string') {
    for (const t of extractLoraTags(params.prompt).tags) {
      if (dir === undefined || (await findLoraFile(dir, t.name)) === undefined) {
        out.missing.push(`LoRA ${t.name} of the prompt's ${t.text} not found${typeof params.loraDir === 'string' ? ` in ${params.loraDir}` : ' (no LoRA directory recorded)'}`);
      }
    }
  }
  return out;
}
