/**
 * CLIP's text cleaning, as OpenAI's tokenizer does it before the regex split:
 * ftfy fix_text → html unescape twice → strip → collapse whitespace runs to one space → strip →
 * lower case. Python's notions of whitespace are used (they differ from JavaScript's `\s`).
 */
import { fixText } from './ftfy.js';
import { htmlUnescape } from './html-entities.js';

/**
 * Characters Python's `str.isspace()` accepts (also what `\s` matches in Python's Unicode
 * regexes): the Unicode White_Space set plus the C0 separators U+001C–U+001F. Unlike
 * JavaScript's `\s` it includes U+0085 and excludes U+FEFF.
 */
export const PY_SPACE_CLASS =
  '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

const SPACE_RUN_RE = new RegExp(`[${PY_SPACE_CLASS}]+`, 'g');
const STRIP_RE = new RegExp(`^[${PY_SPACE_CLASS}]+|[${PY_SPACE_CLASS}]+$`, 'g');

/** Python `str.strip()` with no arguments. */
export function pyStrip(text: string): string {
  return text.replace(STRIP_RE, '');
}

export interface CleanOptions {
  /** Apply the ftfy fixes (default true; `false` reproduces CLIP without ftfy installed). */
  ftfy?: boolean;
}

/** `basic_clean` + `whitespace_clean` + lower case. */
export function cleanText(text: string, options: CleanOptions = {}): string {
  let t = options.ftfy === false ? text : fixText(text);
  t = htmlUnescape(htmlUnescape(t));
  t = pyStrip(t);
  t = pyStrip(t.replace(SPACE_RUN_RE, ' '));
  return t.toLowerCase();
}
