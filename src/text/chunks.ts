/**
 * AUTOMATIC1111's long-prompt chunking (`tokenize_line` in sd_hijack_clip.py) and its
 * "Original" emphasis normalisation.
 *
 * A prompt is parsed into weighted runs, each run tokenized on its own, and the tokens laid out in
 * chunks of 75 — each becoming start + 75 + end = 77 ids:
 *  - a BREAK entry closes the current chunk;
 *  - when a chunk is full and the last comma is at most `commaBacktrack` (A1111 default 20)
 *    tokens back, the tokens after that comma move to the next chunk;
 *  - a short chunk is filled with the end token (A1111 pads with `id_end`), then everything after
 *    the first end token is replaced by `padId` (A1111's process_tokens: a no-op for SD 1.x, where
 *    id_pad = id_end; 0 = `!` for SD 2.x / OpenCLIP). `padId` defaults to the tokenizer's pad id,
 *    which follows the same convention (SD1 `<|endoftext|>`, SD2 `!`);
 *  - an empty prompt still gives one chunk.
 * Weights are the run weights per token and 1.0 for start, end and padding.
 */
import type { ClipTokenizer } from './clip-tokenizer.js';
import { isBreak, parsePrompt } from './prompt-parser.js';

export const CHUNK_LENGTH = 75;
export const DEFAULT_COMMA_BACKTRACK = 20;

export interface PromptChunk {
  /** chunkLength + 2 ids (77). */
  ids: number[];
  /** One multiplier per id (77). */
  weights: number[];
}

/** The ids an empty chunk is made of. */
export interface ChunkSpecialIds {
  bosId: number;
  eosId: number;
  /** Written after the first end token. */
  padId: number;
}

export interface ChunkedPrompt {
  chunks: PromptChunk[];
  /** A1111's token count: 75 per full chunk plus the tokens of the last one. */
  tokenCount: number;
  /** Start/end/padding ids used, so padChunks can build matching empty chunks. */
  specialIds: ChunkSpecialIds;
}

export interface ChunkOptions {
  /** false = A1111 emphasis "None": no (), [], escapes or BREAK. */
  emphasis: boolean;
  /** Tokens a full chunk may hand back to its last comma (A1111 `comma_padding_backtrack`); 0 = off. */
  commaBacktrack?: number;
  /** Id written after the first end token of each chunk (default: the tokenizer's pad id). */
  padId?: number;
}

/** Ids and multipliers being collected for one chunk (without start/end). */
interface Pending {
  ids: number[];
  weights: number[];
}

type ChunkTokenizer = Pick<ClipTokenizer, 'encode' | 'bosId' | 'eosId' | 'padId' | 'tokenId'>;

function finishChunk(tok: ChunkTokenizer, pending: Pending, padId: number): PromptChunk {
  const ids = [tok.bosId, ...pending.ids];
  const weights = [1.0, ...pending.weights];
  while (ids.length < CHUNK_LENGTH + 1) {
    ids.push(tok.eosId);
    weights.push(1.0);
  }
  ids.push(tok.eosId);
  weights.push(1.0);
  const firstEnd = ids.indexOf(tok.eosId);
  for (let i = firstEnd + 1; i < ids.length; i++) ids[i] = padId;
  return { ids, weights };
}

/** Split a prompt into 77-token chunks with per-token weights, as A1111 does. */
export function tokenizeChunks(tok: ChunkTokenizer, prompt: string, options: ChunkOptions): ChunkedPrompt {
  const backtrack = options.commaBacktrack ?? DEFAULT_COMMA_BACKTRACK;
  const padId = options.padId ?? tok.padId;
  const comma = tok.tokenId(',</w>');
  const parsed = parsePrompt(prompt, { emphasis: options.emphasis });

  const chunks: PromptChunk[] = [];
  let pending: Pending = { ids: [], weights: [] };
  let tokenCount = 0;
  let lastComma = -1;

  const nextChunk = (isLast = false): void => {
    tokenCount += isLast ? pending.ids.length : CHUNK_LENGTH;
    chunks.push(finishChunk(tok, pending, padId));
    pending = { ids: [], weights: [] };
    lastComma = -1;
  };

  for (const entry of parsed) {
    if (isBreak(entry)) {
      nextChunk();
      continue;
    }
    const [text, weight] = entry;
    for (const id of tok.encode(text)) {
      if (id === comma) {
        lastComma = pending.ids.length;
      } else if (
        backtrack !== 0 &&
        pending.ids.length === CHUNK_LENGTH &&
        lastComma !== -1 &&
        pending.ids.length - lastComma <= backtrack
      ) {
        const cut = lastComma + 1;
        const moved: Pending = { ids: pending.ids.slice(cut), weights: pending.weights.slice(cut) };
        pending.ids.length = cut;
        pending.weights.length = cut;
        nextChunk();
        pending = moved;
      }
      if (pending.ids.length === CHUNK_LENGTH) nextChunk();
      pending.ids.push(id);
      pending.weights.push(weight);
    }
  }
  if (pending.ids.length > 0 || chunks.length === 0) nextChunk(true);
  return { chunks, tokenCount, specialIds: { bosId: tok.bosId, eosId: tok.eosId, padId } };
}

/** A1111's empty chunk: start, then end tokens — after the first end, `padId` (SD 2.x: 0). */
export function emptyChunk(ids: ChunkSpecialIds): PromptChunk {
  const tok = { bosId: ids.bosId, eosId: ids.eosId, padId: ids.padId, encode: () => [], tokenId: () => undefined };
  return finishChunk(tok, { ids: [], weights: [] }, ids.padId);
}

/**
 * Extend a prompt to `n` chunks with empty chunks (what A1111 appends when prompts of a batch, or
 * with pad_cond_uncond the cond/uncond pair, need the same length). Returns a new result;
 * `tokenCount` is unchanged.
 */
export function padChunks(result: ChunkedPrompt, n: number): ChunkedPrompt {
  const chunks = result.chunks.slice();
  while (chunks.length < n) chunks.push(emptyChunk(result.specialIds));
  return { ...result, chunks };
}

/**
 * A1111 "Original" emphasis on one encoded chunk, in place: multiply each token's vector by its
 * weight, then rescale everything so the mean over the chunk equals the mean before.
 * `hidden` is [seq, dim] row-major; `weights` has `seq` entries.
 */
export function applyEmphasis(hidden: Float32Array, dims: readonly [number, number], weights: readonly number[]): void {
  const [seq, dim] = dims;
  if (hidden.length !== seq * dim) throw new RangeError(`applyEmphasis: ${hidden.length} values for [${seq}, ${dim}]`);
  if (weights.length !== seq) throw new RangeError(`applyEmphasis: ${weights.length} weights for ${seq} tokens`);
  if (weights.every((w) => w === 1)) return;
  let before = 0;
  for (let i = 0; i < hidden.length; i++) before += hidden[i] as number;
  let after = 0;
  for (let s = 0; s < seq; s++) {
    const w = weights[s] as number;
    for (let i = s * dim; i < (s + 1) * dim; i++) {
      hidden[i] = (hidden[i] as number) * w;
      after += hidden[i] as number;
    }
  }
  // Means over the same count: their ratio is the ratio of the sums.
  const scale = before / after;
  for (let i = 0; i < hidden.length; i++) hidden[i] = (hidden[i] as number) * scale;
}
