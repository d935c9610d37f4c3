/**
 * `.sdgenrc` discovery with cosmiconfig 9: `.sdgenrc` (JSON or YAML), `.sdgenrc.json`,
 * `.sdgenrc.yaml`/`.yml`, `.sdgenrc.js`/`.cjs`/`.mjs`, `.config/sdgenrc*`, `sdgen.config.js`/`.cjs`/`.mjs`,
 * or an `sdgen` key in package.json — searched from the working directory up to the home
 * directory (searchStrategy 'global'; cosmiconfig 9 searches only the start directory by
 * default), then the global config directory ($XDG_CONFIG_HOME/sdgen/config.*).
 */
import path from 'node:path';
import { UsageError } from '../errors.js';
import { validateConfigObject, type PartialOptions } from './options.js';

export interface RcConfig {
  /** the file the config came from; undefined when none was found */
  file?: string;
  options: PartialOptions;
  /** presets defined in the rc file under `presets` */
  presets: Record<string, PresetDefinition>;
}

export interface PresetDefinition {
  options: PartialOptions;
  description?: string;
  source: string;
}

export interface LoadRcOptions {
  cwd?: string;
  /** an explicit config file (`--config FILE`): no search */
  configFile?: string;
  /** where the upward search stops (default: the home directory) */
  stopDir?: string;
}

/** Validates a parsed rc object (pure). */
export function rcFromObject(raw: unknown, file: string): RcConfig {
  const where = path.basename(file) === 'package.json' ? `${file} (sdgen key)` : file;
  if (raw === null || raw === undefined) return { file, options: {}, presets: {} };
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new UsageError(`${where}: expected an object of options`);
  const obj = raw as Record<string, unknown>;
  const dir = path.dirname(path.resolve(file));
  const options = validateConfigObject(obj, where, (k) => k === 'presets', dir);
  const presets: Record<string, PresetDefinition> = {};
  if (obj.presets !== undefined) {
    if (obj.presets === null || typeof obj.presets !== 'object' || Array.isArray(obj.presets)) {
      throw new UsageError(`${where}: presets: expected an object of name → options`);
    }
    for (const [name, def] of Object.entries(obj.presets as Record<string, unknown>)) {
      presets[name] = presetFromObject(def, `${where}: presets.${name}`, where, dir);
    }
  }
  return { file, options, presets };
}

/** A preset object: option keys plus an optional `description`; paths relative to `baseDir`. */
export function presetFromObject(raw: unknown, where: string, source: string, baseDir?: string): PresetDefinition {
  const options = validateConfigObject(raw, where, (k) => k === 'description', baseDir);
  const desc = (raw as Record<string, unknown>).description;
  if (desc !== undefined && typeof desc !== 'string') throw new UsageError(`${where}: description: expected a string`);
  return { options, description: desc as string | undefined, source };
}

export async function loadRc(opts: LoadRcOptions = {}): Promise<RcConfig> {
  const { cosmiconfig } = await import('cosmiconfig');
  const explorer = cosmiconfig('sdgen', { searchStrategy: 'global', stopDir: opts.stopDir, cache: false });
  let result: { config: unknown; filepath: string; isEmpty?: boolean } | null;
  try {
    if (opts.configFile) {
      const file = path.resolve(opts.cwd ?? process.cwd(), opts.configFile);
      result = await explorer.load(file);
    } else {
      result = await explorer.search(opts.cwd ?? process.cwd());
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { filepath?: string; mark?: { line: number } };
    if (err.code === 'ENOENT' || err.code === 'EISDIR') throw new UsageError(`--config: cannot read ${opts.configFile}`);
    const file = err.filepath ?? opts.configFile ?? 'config';
    const msg = String(err.message ?? e).split('\n')[0];
    throw new UsageError(`${file}: ${msg}`);
  }
  if (!result) return { options: {}, presets: {} };
  return rcFromObject(result.isEmpty ? {} : result.config, result.filepath);
}
