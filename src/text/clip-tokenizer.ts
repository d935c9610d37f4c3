/**
 * CLIP BPE tokenizer (OpenAI CLIP / Hugging Face CLIPTokenizer ids), built from vocabulary data;
 * no I/O here (see load.ts).
 */
import { SdgenError } from '../errors.js';
import { CHAR_TO_BYTE, toByteChars } from './byte-unicode.js';
import { cleanText, PY_SPACE_CLASS } from './clean.js';
import type { Tokenizer } from './types.js';

export const START_TOKEN = '<|startoftext|>';
export const END_TOKEN = '<|endoftext|>';
const WORD_END = '</w>';

export interface ClipTokenizerData {
  /** token → id (vocab.json). */
  vocab: Record<string, number>;
  /** Merge rules "a b", highest priority first, without the `#version` header. */
  merges: readonly string[];
  /** Token used to pad `encodePadded` (default: the end token, as SD 1.x). */
  padToken?: string;
  bosToken?: string;
  eosToken?: string;
  /** Sequence length of `encodePadded` (default 77). */
  maxLength?: number;
}

export interface ClipTokenizerOptions {
  /** Run the ftfy fixes while cleaning (default true). */
  ftfy?: boolean;
}

export interface TokenizeDetail {
  cleaned: string;
  preTokens: string[];
  bpeTokens: string[];
  ids: number[];
}

/** CLIP's split: special tokens, English contractions, letter runs, single digits, other runs. */
const PRE_TOKEN_RE = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^${PY_SPACE_CLASS}\\p{L}\\p{N}]+`,
  'giu',
);

const CACHE_LIMIT = 50_000;

/** Every occurrence of the symbol pair (a, b) merged into one symbol, left to right, without overlaps. */
export function mergePair(symbols: readonly string[], a: string, b: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < symbols.length; ) {
    if (i < symbols.length - 1 && symbols[i] === a && symbols[i + 1] === b) {
      out.push(a + b);
      i += 2;
    } else {
      out.push(symbols[i] as string);
      i += 1;
    }
  }
  return out;
}

export class ClipTokenizer implements Tokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly maxLength: number;
  readonly vocabSize: number;

  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly specials: Map<string, number>;
  private readonly cache = new Map<string, string[]>();
  private readonly ftfy: boolean;

  constructor(data: ClipTokenizerData, options: ClipTokenizerOptions = {}) {
    this.encoder = new Map(Object.entries(data.vocab));
    this.decoder = new Map();
    for (const [tok, id] of this.encoder) this.decoder.set(id, tok);
    this.vocabSize = this.encoder.size;

    this.ranks = new Map();
    let rank = 0;
    for (const raw of data.merges) {
      const line = raw.endsWith('\r') || raw.endsWith(' ') ? raw.trimEnd() : raw;
      if (line === '' || line.startsWith('#version')) continue;
      const sp = line.indexOf(' ');
      if (sp <= 0 || sp === line.length - 1 || line.indexOf(' ', sp + 1) !== -1) {
        throw new SdgenError(`invalid BPE merge rule ${rank + 1}: ${JSON.stringify(raw)}`);
      }
      if (!this.ranks.has(line)) this.ranks.set(line, rank);
      rank++;
    }

    const bos = data.bosToken ?? START_TOKEN;
    const eos = data.eosToken ?? END_TOKEN;
    this.bosId = this.idOf(bos, 'start');
    this.eosId = this.idOf(eos, 'end');
    this.padId = this.idOf(data.padToken ?? eos, 'padding');
    this.maxLength = data.maxLength ?? 77;
    if (!Number.isInteger(this.maxLength) || this.maxLength < 2) {
      throw new SdgenError(`tokenizer max length must be an integer ≥ 2, got ${this.maxLength}`);
    }
    this.specials = new Map([
      [START_TOKEN, this.encoder.get(START_TOKEN) ?? this.bosId],
      [END_TOKEN, this.encoder.get(END_TOKEN) ?? this.eosId],
    ]);
    this.ftfy = options.ftfy ?? true;
  }

  private idOf(token: string, role: string): number {
    const id = this.encoder.get(token);
    if (id === undefined) throw new SdgenError(`tokenizer ${role} token ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  }

  /** Id of a vocabulary entry (e.g. `",</w>"`), or undefined. */
  tokenId(token: string): number | undefined {
    return this.encoder.get(token);
  }

  /** Cleaned, lower-cased text (ftfy, html unescape, whitespace). */
  clean(text: string): string {
    return cleanText(text, { ftfy: this.ftfy });
  }

  /** The regex split of cleaned text. */
  preTokenize(cleaned: string): string[] {
    return cleaned.match(PRE_TOKEN_RE) ?? [];
  }

  /** BPE of one pre-token (in the byte alphabet), last symbol carrying `</w>`. */
  private bpe(byteWord: string): string[] {
    const cached = this.cache.get(byteWord);
    if (cached !== undefined) return cached;

    let word = Array.from(byteWord);
    word[word.length - 1] += WORD_END;
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      word = mergePair(word, word[best] as string, word[best + 1] as string);
    }
    if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
    this.cache.set(byteWord, word);
    return word;
  }

  private tokensOf(preToken: string): string[] {
    if (this.specials.has(preToken)) return [preToken];
    return this.bpe(toByteChars(preToken));
  }

  private idOfToken(token: string): number {
    return this.specials.get(token) ?? this.encoder.get(token) ?? this.eosId; // unknown → <|endoftext|>, as HF's unk
  }

  /** Every intermediate stage, for tests and diagnostics. */
  tokenizeDetailed(text: string): TokenizeDetail {
    const cleaned = this.clean(text);
    const preTokens = this.preTokenize(cleaned);
    const bpeTokens: string[] = [];
    for (const p of preTokens) bpeTokens.push(...this.tokensOf(p));
    return { cleaned, preTokens, bpeTokens, ids: bpeTokens.map((t) => this.idOfToken(t)) };
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const p of this.preTokenize(this.clean(text))) {
      for (const t of this.tokensOf(p)) ids.push(this.idOfToken(t));
    }
    return ids;
  }

  /** Start + ids + end, truncated to maxLength with the end token last, padded with padId. */
  encodePadded(text: string): number[] {
    return this.pad(this.encode(text), this.padId);
  }

  /** Like encodePadded with an explicit padding id (e.g. 0 for SD 2.x / open_clip). */
  pad(ids: readonly number[], padId: number = this.padId): number[] {
    const body = ids.slice(0, this.maxLength - 2);
    const out = [this.bosId, ...body, this.eosId];
    while (out.length < this.maxLength) out.push(padId);
    return out;
  }

  /** Token strings back to text: bytes re-assembled as UTF-8 (invalid → U+FFFD), `</w>` → space. */
  decode(ids: readonly number[]): string {
    let chars = '';
    for (const id of ids) chars += this.decoder.get(id) ?? '';
    const bytes: number[] = [];
    for (const ch of chars) {
      const b = CHAR_TO_BYTE.get(ch);
      if (b !== undefined) bytes.push(b);
    }
    return new TextDecoder('utf-8').decode(new Uint8Array(bytes)).replaceAll(WORD_END, ' ');
  }
}

