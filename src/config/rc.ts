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
    const err = e as NodeJS.ErrnoException & { filepath?: string; reason?: string; mark?: { line: number; column: number } };
    if (err.code === 'ENOENT' || err.code === 'EISDIR') throw new UsageError(`--config: cannot read ${opts.configFile}`);
    const file = err.filepath ?? opts.configFile ?? 'config';
    throw new UsageError(configErrorLine(file, err));
  }
  if (!result) return { options: {}, presets: {} };
  return rcFromObject(result.isEmpty ? {} : result.config, result.filepath);
}

/**
 * A config file's parse error as one line that keeps the parser's reason (pure). cosmiconfig 9
 * prefixes js-yaml's and parse-json's messages with "YAML Error in FILE:\n" / "JSON Error in
 * FILE:\n" and js-yaml appends a code snippet after a blank line; js-yaml's own `reason` and
 * `mark` (0-based line and column) give "FILE:3:1: invalid YAML: unexpected end of the stream
 * within a flow collection".
 */
export function configErrorLine(file: string, err: { message?: string; reason?: string; mark?: { line: number; column: number } }): string {
  const raw = String(err.message ?? err);
  const kind = /^(YAML|JSON) Error in /.exec(raw)?.[1];
  if (err.reason && err.mark && typeof err.mark.line === 'number') {
    return `${file}:${err.mark.line + 1}:${err.mark.column + 1}: invalid ${kind ?? 'YAML'}: ${err.reason}`;
  }
  // drop cosmiconfig's "… Error in FILE:" line and any snippet after a blank line; join the rest
  const body = raw.replace(/^(YAML|JSON) Error in [^\n]*:\n/, '').split(/\n\s*\n/)[0]!;
  const reason = body.replace(/\s*\n\s*/g, ' ').trim() || raw.replace(/\s+/g, ' ').trim();
  return `${file}: ${kind ? `invalid ${kind}: ` : ''}${reason}`;
}
