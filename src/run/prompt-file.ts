/**
 * Prompt files (`--prompts FILE`): one job per line. Pure: no I/O.
 *
 * - blank lines and lines starting with `#` are skipped;
 * - a line starting with `{` is a JSON object (`.jsonl`), keys as below;
 * - a line with options (`--key value …`, split like a shell command line) is parsed like
 *   AUTOMATIC1111's "prompts from file" script (`--prompt`, `--negative_prompt`, `--seed`,
 *   `--steps`, `--cfg_scale`, `--width`, `--height`, `--sampler_name`, `--batch_size`,
 *   `--n_iter`) and also takes sdgen's own flags (`--cfg`, `--scheduler`, `--tome`, `--sx`, …);
 * - any other line is the prompt itself.
 * A bad line becomes an error `FILE:LINE: reason`; the other lines are still returned.
 */
import { SdgenError } from '../errors.js';
import { FILE_KEY_ALIASES, SPEC_BY_KEY, coerceOption, normalizeKey, type PartialOptions } from '../config/options.js';

export interface PromptFileEntry {
  file: string;
  /** 1-based line number */
  line: number;
  /** undefined when the line sets options but no prompt */
  prompt?: string;
  options: PartialOptions;
}

export interface PromptFileError {
  file: string;
  line: number;
  message: string;
}

export interface ParsedPromptFile {
  entries: PromptFileEntry[];
  errors: PromptFileError[];
}

export function formatLineError(e: PromptFileError): string {
  return `${e.file}:${e.line}: ${e.message}`;
}

/** Splits a line like a POSIX shell would (quotes, backslash escapes), without expansions. */
export function splitShellLike(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inToken = false;
  let i = 0;
  while (i < line.length) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new SdgenError('unterminated single quote');
      cur += line.slice(i + 1, end);
      inToken = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      let closed = false;
      while (i < line.length) {
        const d = line[i]!;
        if (d === '"') {
          closed = true;
          i++;
          break;
        }
        if (d === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1]!)) {
          cur += line[i + 1];
          i += 2;
        } else {
          cur += d;
          i++;
        }
      }
      if (!closed) throw new SdgenError('unterminated double quote');
      inToken = true;
    } else if (c === '\\') {
      if (i + 1 < line.length) cur += line[i + 1];
      inToken = true;
      i += 2;
    } else if (/\s/.test(c)) {
      if (inToken) out.push(cur);
      cur = '';
      inToken = false;
      i++;
    } else {
      cur += c;
      inToken = true;
      i++;
    }
  }
  if (inToken) out.push(cur);
  return out;
}

interface Assign {
  prompt?: string;
  options: Record<string, unknown>;
}

function assign(acc: Assign, rawKey: string, value: unknown, hasValue: boolean, display: string): void {
  const target = FILE_KEY_ALIASES.get(normalizeKey(rawKey));
  if (target === undefined) throw new SdgenError(`unknown option ${display}`);
  if (target === 'prompt') {
    if (!hasValue) throw new SdgenError(`${display} needs a value`);
    if (typeof value !== 'string') throw new SdgenError(`${display}: expected a string`);
    acc.prompt = value;
    return;
  }
  const key = typeof target === 'string' ? target : target.key;
  const negate = typeof target !== 'string';
  const spec = SPEC_BY_KEY.get(key)!;
  if (spec.kind === 'bool') {
    const v = hasValue ? (coerceOption(spec, value, display) as boolean) : true;
    acc.options[key] = negate ? !v : v;
    return;
  }
  if (negate) throw new SdgenError(`unknown option ${display}`);
  if (!hasValue) throw new SdgenError(`${display} needs a value`);
  acc.options[key] = coerceOption(spec, value, display);
}

function parseOptionLine(line: string): Assign {
  const tokens = splitShellLike(line);
  const acc: Assign = { options: {} };
  let i = 0;
  while (i < tokens.length) {
    const tok = tokens[i]!;
    if (!tok.startsWith('--') || tok.length < 3) {
      throw new SdgenError(`expected an option starting with --, got ${JSON.stringify(tok)} (quote the prompt: --prompt "…")`);
    }
    const eq = tok.indexOf('=');
    if (eq > 0) {
      assign(acc, tok.slice(2, eq), tok.slice(eq + 1), true, tok.slice(0, eq));
      i++;
      continue;
    }
    const target = FILE_KEY_ALIASES.get(normalizeKey(tok));
    const isFlag =
      target !== undefined && target !== 'prompt' && (typeof target !== 'string' || SPEC_BY_KEY.get(target)!.kind === 'bool');
    if (isFlag) {
      assign(acc, tok, undefined, false, tok);
      i++;
    } else {
      const hasValue = i + 1 < tokens.length;
      assign(acc, tok, tokens[i + 1], hasValue, tok);
      i += 2;
    }
  }
  return acc;
}

function parseJsonLine(line: string): Assign {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch (e) {
    throw new SdgenError(`invalid JSON (${(e as Error).message})`);
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new SdgenError('expected a JSON object');
  const acc: Assign = { options: {} };
  for (const [k, v] of Object.entries(obj as Record<string, unknown>)) {
    if (v === null) continue;
    assign(acc, k, v, true, JSON.stringify(k));
  }
  return acc;
}

const OPTION_LINE = /(^|\s)--[A-Za-z]/;

/** Parses a whole prompt file's text; never throws for a bad line. */
export function parsePromptFile(text: string, file: string): ParsedPromptFile {
  const entries: PromptFileEntry[] = [];
  const errors: PromptFileError[] = [];
  const lines = text.split(/\r?\n/);
  if (lines.length && lines[0]!.charCodeAt(0) === 0xfeff) lines[0] = lines[0]!.slice(1);
  for (let idx = 0; idx < lines.length; idx++) {
    const line = lines[idx]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    try {
      if (line.startsWith('{')) {
        const a = parseJsonLine(line);
        entries.push({ file, line: idx + 1, prompt: a.prompt, options: a.options as PartialOptions });
      } else if (OPTION_LINE.test(line)) {
        const a = parseOptionLine(line);
        entries.push({ file, line: idx + 1, prompt: a.prompt, options: a.options as PartialOptions });
      } else {
        entries.push({ file, line: idx + 1, prompt: line, options: {} });
      }
    } catch (e) {
      if (!(e instanceof SdgenError)) throw e;
      errors.push({ file, line: idx + 1, message: e.message });
    }
  }
  return { entries, errors };
}
