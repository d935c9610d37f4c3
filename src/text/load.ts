/**
 * Loads a CLIP tokenizer from a Hugging Face `tokenizer/` folder: vocab.json, merges.txt and,
 * when present, tokenizer_config.json and special_tokens_map.json (the latter wins, as in
 * transformers). Special tokens may be plain strings or `{ "content": ... }` objects.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SdgenError } from '../errors.js';
import { ClipTokenizer, END_TOKEN, START_TOKEN } from './clip-tokenizer.js';

const DEFAULT_MAX_LENGTH = 77;
/** transformers writes int(1e30) when a tokenizer has no limit; treat anything this big as unset. */
const UNSET_MAX_LENGTH = 1_000_000;

async function readText(dir: string, name: string, required: boolean): Promise<string | undefined> {
  const path = join(dir, name);
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!required && code === 'ENOENT') return undefined;
    const why = code === 'ENOENT' ? 'is missing' : `cannot be read (${code ?? String(err)})`;
    throw new SdgenError(`tokenizer file ${path} ${why}`, { cause: err });
  }
}

function parseJson(path: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SdgenError(`tokenizer file ${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A special token entry: "text" or { content: "text", ... }. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isRecord(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

function parseVocab(path: string, text: string): Record<string, number> {
  const data = parseJson(path, text);
  if (!isRecord(data)) throw new SdgenError(`tokenizer file ${path} must hold a JSON object of token → id`);
  for (const [token, id] of Object.entries(data)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new SdgenError(`tokenizer file ${path}: token ${JSON.stringify(token)} has an invalid id ${JSON.stringify(id)}`);
    }
  }
  return data as Record<string, number>;
}

/** merges.txt lines without the `#version` header and blank lines. */
export function parseMerges(text: string): string[] {
  return text.split(/\r?\n/).filter((l) => l.trim() !== '' && !l.startsWith('#version'));
}

export async function loadTokenizer(dir: string): Promise<ClipTokenizer> {
  const vocabPath = join(dir, 'vocab.json');
  const mergesPath = join(dir, 'merges.txt');
  const configPath = join(dir, 'tokenizer_config.json');
  const specialPath = join(dir, 'special_tokens_map.json');

  const [vocabText, mergesText, configText, specialText] = await Promise.all([
    readText(dir, 'vocab.json', true),
    readText(dir, 'merges.txt', true),
    readText(dir, 'tokenizer_config.json', false),
    readText(dir, 'special_tokens_map.json', false),
  ]);

  const vocab = parseVocab(vocabPath, vocabText as string);
  const merges = parseMerges(mergesText as string);
  if (merges.length === 0) throw new SdgenError(`tokenizer file ${mergesPath} holds no merge rules`);

  const config = configText === undefined ? {} : parseJson(configPath, configText);
  const special = specialText === undefined ? {} : parseJson(specialPath, specialText);
  if (!isRecord(config)) throw new SdgenError(`tokenizer file ${configPath} must hold a JSON object`);
  if (!isRecord(special)) throw new SdgenError(`tokenizer file ${specialPath} must hold a JSON object`);

  const pick = (key: string): string | undefined => tokenContent(special[key]) ?? tokenContent(config[key]);
  const bosToken = pick('bos_token') ?? START_TOKEN;
  const eosToken = pick('eos_token') ?? END_TOKEN;
  const padToken = pick('pad_token') ?? eosToken;

  let maxLength = DEFAULT_MAX_LENGTH;
  const m = config.model_max_length;
  if (typeof m === 'number' && Number.isInteger(m) && m >= 2 && m < UNSET_MAX_LENGTH) maxLength = m;

  for (const [role, tok] of [['start', bosToken], ['end', eosToken], ['padding', padToken]] as const) {
    if (!Object.hasOwn(vocab, tok)) {
      throw new SdgenError(`tokenizer ${role} token ${JSON.stringify(tok)} (from ${specialPath} or ${configPath}) is not in ${vocabPath}`);
    }
  }

  try {
    return new ClipTokenizer({ vocab, merges, bosToken, eosToken, padToken, maxLength });
  } catch (err) {
    if (err instanceof SdgenError) {
      throw new SdgenError(`tokenizer in ${dir}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}
