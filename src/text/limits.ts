/**
 * Prompt length limits (pure). A1111 has no hard limit: its CLIP conditioning splits a long
 * prompt into 75-token chunks, encodes each, and concatenates them, so the text encoder's cost
 * and the UNet's cross-attention context (77 tokens per chunk, at every step) grow linearly with
 * the prompt, without bound — a 10 MB prompt line took minutes and gigabytes for one 64×64
 * image. sdgen caps a prompt at 64 chunks (4,800 tokens; a cross-attention context 64× the usual
 * 77) and 20,000 characters, which is about that many tokens of ordinary English (CLIP's BPE
 * averages 4 or more characters per word-piece). Far beyond what any model attends to
 * usefully, far below what costs minutes: text longer than that is a wrong file or a pasted
 * document, not a prompt. See README "Limits".
 */
import { UsageError } from '../errors.js';

/** Most characters (Unicode code points) in a prompt or negative prompt. */
export const MAX_PROMPT_CHARS = 20_000;
/** CLIP tokens per chunk in A1111's long-prompt conditioning (77 with the start and end tokens). */
export const PROMPT_CHUNK_TOKENS = 75;
/** Most 75-token chunks in a prompt. */
export const MAX_PROMPT_CHUNKS = 64;
/** Most CLIP tokens in a prompt (emphasis syntax and padding not counted). */
export const MAX_PROMPT_TOKENS = PROMPT_CHUNK_TOKENS * MAX_PROMPT_CHUNKS;

/** Code points in `text`; stops counting past `stop` (the answer is then > stop). */
function codePoints(text: string, stop: number): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // a low surrogate that follows a high one is the second half of one code point
    if (c >= 0xdc00 && c <= 0xdfff && i > 0) {
      const p = text.charCodeAt(i - 1);
      if (p >= 0xd800 && p <= 0xdbff) continue;
    }
    if (++n > stop) return n;
  }
  return n;
}

const fmt = (n: number): string => n.toLocaleString('en-US');

/**
 * Throws a one-line UsageError when `text` is longer than MAX_PROMPT_CHARS code points or, when
 * its CLIP token count is given, more than MAX_PROMPT_TOKENS tokens. `what` names the text in
 * the message ("prompt", "negative prompt", "prompts.txt:12: prompt").
 */
export function checkPromptLength(text: string, what: string, tokens?: number): void {
  // UTF-16 length ≥ code points: most prompts need no counting
  if (text.length > MAX_PROMPT_CHARS) {
    const n = codePoints(text, MAX_PROMPT_CHARS);
    if (n > MAX_PROMPT_CHARS) {
      throw new UsageError(`${what}: ${fmt(codePoints(text, Infinity))} characters, over the limit of ${fmt(MAX_PROMPT_CHARS)} (see README "Limits")`);
    }
  }
  if (tokens !== undefined && tokens > MAX_PROMPT_TOKENS) {
    throw new UsageError(
      `${what}: ${fmt(tokens)} tokens (${Math.ceil(tokens / PROMPT_CHUNK_TOKENS)} chunks of ${PROMPT_CHUNK_TOKENS}), ` +
        `over the limit of ${fmt(MAX_PROMPT_TOKENS)} (${MAX_PROMPT_CHUNKS} chunks; see README "Limits")`,
    );
  }
}
