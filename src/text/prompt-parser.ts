/**
 * AUTOMATIC1111's prompt emphasis syntax, with the same results as its `parse_prompt_attention`:
 *
 *   (text)      weight × 1.1          ((text)) × 1.21, and so on
 *   (text:1.3)  weight × 1.3          the number: optional sign, digits and dots
 *   [text]      weight × (1 / 1.1)
 *   \( \) \[ \] literal brackets; `\\` a literal backslash; any other lone backslash is dropped
 *   BREAK       (a whole word, outside brackets) → a separate ["BREAK", -1] entry
 *
 * Unclosed brackets apply to the end of the prompt; unmatched closers are plain text. Runs with
 * equal weights are merged. Quirk kept on purpose: a BREAK inside brackets has its -1 scaled
 * (e.g. -1.1), so it no longer counts as a break and is tokenized as the word "break".
 */
import { UsageError } from '../errors.js';
import { PY_SPACE_CLASS } from './clean.js';

export type WeightedText = [text: string, weight: number];

/** Marker entry for a BREAK keyword. */
export const BREAK_WEIGHT = -1;

const ROUND_MULTIPLIER = 1.1;
const SQUARE_MULTIPLIER = 1 / 1.1;

/** Tokens of the emphasis syntax, tried in this order at each position. */
const ATTENTION_RE = /\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.\p{Nd}]+)\)|\)|\]|[^\\()[\]:]+|:/gu;

/** A whole-word BREAK with the white space around it (Python's Unicode \b and \s). */
const BREAK_RE = new RegExp(`[${PY_SPACE_CLASS}]*(?<![\\p{L}\\p{N}_])BREAK(?![\\p{L}\\p{N}_])[${PY_SPACE_CLASS}]*`, 'u');

const ND_RE = /\p{Nd}/u;

/** Python float() of [+-]?[.\d]+ where \d may be any Unicode decimal digit. */
function parseWeight(raw: string): number {
  let ascii = '';
  for (const ch of raw) {
    if (ch === '.' || ch === '+' || ch === '-' || (ch >= '0' && ch <= '9')) {
      ascii += ch;
      continue;
    }
    // Decimal digits come in runs of ten, zero first.
    let cp = ch.codePointAt(0) as number;
    let k = 0;
    while (ND_RE.test(String.fromCodePoint(cp - 1))) {
      cp--;
      k++;
    }
    ascii += String(k % 10);
  }
  const value = /^[+-]?(\d+\.?\d*|\.\d+)$/.test(ascii) ? Number(ascii) : NaN;
  if (Number.isNaN(value)) throw new UsageError(`invalid emphasis weight "${raw}" in prompt`);
  return value;
}

/** A1111 `parse_prompt_attention`. */
export function parsePromptAttention(text: string): WeightedText[] {
  const res: WeightedText[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, m: number): void => {
    for (let p = start; p < res.length; p++) (res[p] as WeightedText)[1] *= m;
  };

  for (const match of text.matchAll(ATTENTION_RE)) {
    const tok = match[0];
    const weight = match[1];
    if (tok.startsWith('\\')) {
      res.push([tok.slice(1), 1.0]);
    } else if (tok === '(') {
      round.push(res.length);
    } else if (tok === '[') {
      square.push(res.length);
    } else if (weight !== undefined && round.length > 0) {
      multiplyRange(round.pop() as number, parseWeight(weight));
    } else if (tok === ')' && round.length > 0) {
      multiplyRange(round.pop() as number, ROUND_MULTIPLIER);
    } else if (tok === ']' && square.length > 0) {
      multiplyRange(square.pop() as number, SQUARE_MULTIPLIER);
    } else {
      tok.split(BREAK_RE).forEach((part, i) => {
        if (i > 0) res.push(['BREAK', BREAK_WEIGHT]);
        res.push([part, 1.0]);
      });
    }
  }

  for (const pos of round) multiplyRange(pos, ROUND_MULTIPLIER);
  for (const pos of square) multiplyRange(pos, SQUARE_MULTIPLIER);

  if (res.length === 0) return [['', 1.0]];

  const merged: WeightedText[] = [res[0] as WeightedText];
  for (let i = 1; i < res.length; i++) {
    const last = merged[merged.length - 1] as WeightedText;
    const cur = res[i] as WeightedText;
    if (last[1] === cur[1]) last[0] += cur[0];
    else merged.push(cur);
  }
  return merged;
}

export interface ParseOptions {
  /**
   * false = A1111's "None" emphasis mode: the prompt is one run of weight 1, taken literally —
   * brackets, backslashes and BREAK are ordinary text.
   */
  emphasis: boolean;
}

/** The weighted runs of a prompt under the chosen emphasis mode. */
export function parsePrompt(text: string, options: ParseOptions): WeightedText[] {
  return options.emphasis ? parsePromptAttention(text) : [[text, 1.0]];
}

/** True for the marker entry that starts a new chunk. */
export function isBreak(entry: WeightedText): boolean {
  return entry[0] === 'BREAK' && entry[1] === BREAK_WEIGHT;
}
