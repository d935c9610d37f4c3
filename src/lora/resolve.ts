/**
 * The LoRAs of one run: those given as options (`--lora FILE[:SCALE]`, GenerationParams.loras)
 * followed by the prompt's `<lora:NAME:SCALE>` tags resolved in the LoRA directory (A1111 finds
 * NAME.safetensors anywhere below its Lora folder), each with the hashes its metadata records.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { a1111LoraShortHash, safetensorsHashes } from './hash.js';
import { extractLoraTags } from './prompt.js';
import type { LoraRef } from './variant.js';

/** A LoRA as a run applied it (what the image's metadata records). */
export interface AppliedLora extends LoraRef {
  name: string;
  /** SHA-256 of the file */
  sha256: string;
  /** A1111's short hash (`Lora hashes`) */
  shortHash: string;
  /** where it came from: an option, or a prompt tag */
  from: 'option' | 'prompt';
}

async function listSafetensors(dir: string, depth = 0): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (depth === 0) throw new UsageError(`LoRA directory not found or unreadable: ${dir}`, { cause: e });
    return [];
  }
  const out: string[] = [];
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() && depth < 8) out.push(...(await listSafetensors(p, depth + 1)));
    else if (e.name.toLowerCase().endsWith('.safetensors')) out.push(p);
  }
  return out;
}

/** NAME.safetensors below `dir` (exact name first, then ignoring case). */
export async function findLoraFile(dir: string, name: string): Promise<string | undefined> {
  const files = await listSafetensors(dir);
  const stem = (f: string): string => path.basename(f).slice(0, -'.safetensors'.length);
  return files.find((f) => stem(f) === name) ?? files.find((f) => stem(f).toLowerCase() === name.toLowerCase());
}

/**
 * The run's LoRAs and its prompt without the tags. Throws UsageError for a tag whose file is not
 * found, or a tag when no LoRA directory is set.
 */
export async function resolveRunLoras(prompt: string, loras: readonly LoraRef[] = [], loraDir?: string): Promise<{ prompt: string; loras: AppliedLora[] }> {
  const { prompt: text, tags } = extractLoraTags(prompt);
  const out: AppliedLora[] = [];
  const add = async (ref: LoraRef, name: string, from: AppliedLora['from']): Promise<void> => {
    const h = await safetensorsHashes(ref.path);
    out.push({ ...ref, name, sha256: h.sha256, shortHash: a1111LoraShortHash(h), from });
  };
  for (const l of loras) await add(l, l.name ?? path.basename(l.path).replace(/\.safetensors$/i, ''), 'option');
  for (const t of tags) {
    if (loraDir === undefined) throw new UsageError(`the prompt uses ${t.text} but no LoRA directory is set (--lora-dir)`);
    const file = await findLoraFile(loraDir, t.name);
    if (file === undefined) throw new UsageError(`LoRA "${t.name}" of ${t.text} not found in ${loraDir}`);
    await add({ path: file, scale: t.scale, ...(t.unetScale !== undefined ? { unetScale: t.unetScale } : {}) }, t.name, 'prompt');
  }
  return { prompt: text, loras: out };
}

/** A signature of the LoRAs that change a target's weights (equal signatures: same graph). */
export function loraSignature(loras: readonly LoraRef[], scaleOf: (l: LoraRef) => number): string {
  return JSON.stringify(loras.map((l) => [path.resolve(l.path), scaleOf(l)]).filter(([, s]) => s !== 0));
}
