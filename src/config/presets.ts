/**
 * Presets: shipped `presets/*.json`, user presets (`$XDG_CONFIG_HOME/sdgen/presets/*.json`, else
 * `~/.config/sdgen/presets/*.json`) and `.sdgenrc` `presets: {name: {...}}`. A later source
 * replaces an earlier preset of the same name: shipped < user directory < rc.
 */
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../errors.js';
import { presetFromObject, type PresetDefinition, type RcConfig } from './rc.js';

/** The shipped presets folder (works from src/ under tsx and from dist/). */
export const BUILTIN_PRESETS_DIR = fileURLToPath(new URL('../../presets/', import.meta.url));

export function userPresetsDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(os.homedir(), '.config');
  return path.join(base, 'sdgen', 'presets');
}

export interface NamedPreset extends PresetDefinition {
  name: string;
  kind: 'builtin' | 'user' | 'rc';
}

function readPresetDir(dir: string, kind: 'builtin' | 'user'): NamedPreset[] {
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort((a, b) => (a.slice(0, -5) < b.slice(0, -5) ? -1 : a.slice(0, -5) > b.slice(0, -5) ? 1 : 0));
  } catch {
    return [];
  }
  return names.map((f) => {
    const file = path.join(dir, f);
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new UsageError(`${file}: ${(e as Error).message.split('\n')[0]}`);
    }
    return { ...presetFromObject(raw, file, file, dir), name: f.slice(0, -'.json'.length), kind };
  });
}

export interface PresetSources {
  builtinDir?: string;
  userDir?: string;
  rc?: RcConfig;
}

/** Every preset by name, later sources replacing earlier ones. */
export function listPresets(src: PresetSources = {}): Map<string, NamedPreset> {
  const map = new Map<string, NamedPreset>();
  for (const p of readPresetDir(src.builtinDir ?? BUILTIN_PRESETS_DIR, 'builtin')) map.set(p.name, p);
  for (const p of readPresetDir(src.userDir ?? userPresetsDir(), 'user')) map.set(p.name, p);
  for (const [name, def] of Object.entries(src.rc?.presets ?? {})) map.set(name, { ...def, name, kind: 'rc' });
  return map;
}

export function findPreset(name: string, src: PresetSources = {}): NamedPreset {
  const all = listPresets(src);
  const p = all.get(name);
  if (!p) throw new UsageError(`--preset: unknown preset "${name}" (available: ${[...all.keys()].join(', ') || 'none'})`);
  return p;
}
