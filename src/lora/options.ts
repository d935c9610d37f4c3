/**
 * From sdgen's options to the pipeline's LoRA parameters (pure): `--lora FILE[:SCALE]` values
 * (config and preset paths are already absolute) and `--lora-dir`.
 */
import path from 'node:path';
import type { LoraRef } from './variant.js';
import type { LoraModule } from './keys.js';
import { parseLoraFlag } from './prompt.js';

/** A job's LoRA settings as GenerationParams carries them (`loras`, `loraDir`). */
export interface LoraParams {
  loras?: LoraRef[];
  loraDir?: string;
}

/** GenerationParams' `loras` and `loraDir` for a job's options (nothing when unset). */
export function loraParams(o: { lora?: readonly string[]; loraDir?: string }): LoraParams {
  const out: LoraParams = {};
  if (o.lora && o.lora.length > 0) {
    out.loras = o.lora.map((v) => {
      const { path: file, scale } = parseLoraFlag(v);
      return { path: file, scale, name: path.basename(file).replace(/\.safetensors$/i, '') };
    });
  }
  if (o.loraDir !== undefined && o.loraDir !== '') out.loraDir = o.loraDir;
  return out;
}

/** `[out, in]` / `[out, in, kh, kw]` of a module's delta. */
export function deltaShapeText(m: LoraModule): string {
  return `[${[m.out, ...m.inShape].join(', ')}]`;
}
