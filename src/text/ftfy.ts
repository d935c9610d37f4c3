/**
 * The subset of ftfy 6.x `fix_text` (default options) that can change what CLIP sees.
 *
 * Steps, in ftfy's order, repeated per line until the text stops changing:
 *   HTML entities (only when the line — or an earlier one — has no `<`), mojibake repair,
 *   C1 controls as Windows-1252, Latin ligatures, full/half-width forms, curly quotes → straight
 *   (ftfy's default `uncurl_quotes=True`), line breaks, lone surrogates, ANSI terminal escapes,
 *   control characters, NFC.
 *
 * Mojibake repair is this project's own, smaller detector written to agree with ftfy on common
 * cases (ftfy's is a large hand-tuned table). A line is suspect when, ignoring a few ambiguous
 * pairs (Â¥ Ã… ÃŒ ÃŽ Ã’ Ã¥ â„¢), it holds a strong sign of UTF-8 read as Latin-1 / Windows-1252
 * — a C1 control, `Â`/`Ã` + a continuation character, a 3- or 4-byte sequence, `Ã `/`Â ` at the
 * start or after a letter — or at least two other 2-byte sequences. A suspect line is re-encoded
 * (Latin-1, then Windows-1252, restoring 0xA0 bytes that became spaces) and decoded as UTF-8;
 * when the whole line does not decode, each run of sequences that is suspect on its own is
 * repaired alone. Checked against ftfy 6.3.1 on 3000 generated prompts mixing English, accented
 * words, mojibake (single and double), entities and curly quotes: identical output. Not
 * attempted: lossy mojibake (U+FFFD or `?` in place of bytes) and the other code pages ftfy
 * tries (Windows-1250/1251/1253/1254/1257, ISO-8859-2, MacRoman, cp437).
 */
import { ftfyUnescapeHtml } from './html-entities.js';

/** Windows-1252 bytes 0x80–0x9F; undefined bytes map to the same C1 code point ("sloppy"). */
const CP1252_HIGH: readonly number[] = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039,
  0x152, 0x8d, 0x17d, 0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc,
  0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];

/** Code point → byte for sloppy Windows-1252 (bytes 0x80–0x9F only; the rest is Latin-1). */
const CP1252_ENCODE = new Map<number, number>(CP1252_HIGH.map((cp, i) => [cp, 0x80 + i]));

type SingleByte = 'latin-1' | 'windows-1252';

function encodeSingleByte(text: string, enc: SingleByte): Uint8Array | null {
  const out = new Uint8Array(text.length);
  let n = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    if (enc === 'windows-1252') {
      const b = CP1252_ENCODE.get(cp);
      if (b !== undefined) {
        out[n++] = b;
        continue;
      }
      if (cp >= 0x80 && cp <= 0x9f) return null; // defined in cp1252 as something else
    }
    if (cp > 0xff) return null;
    out[n++] = cp;
  }
  return out.subarray(0, n);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8Strict(bytes: Uint8Array): string | null {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Continuation bytes 0x80–0xBF as they look after a Windows-1252 / Latin-1 mis-decode. */
const CONT_CHARS =
  '\\x80-\\xbf' +
  CP1252_HIGH.filter((cp) => cp > 0xff)
    .map((cp) => `\\u{${cp.toString(16)}}`)
    .join('');
/** Continuation look-alikes that rarely follow a letter in real text (not quotes, dashes, bullet,
 * ellipsis): a run right after one of these is taken as part of something else and left alone. */
const STRICT_CONT_CHARS =
  '\\x80-\\xbf' +
  CP1252_HIGH.filter((cp) => cp > 0xff && ![0x201a, 0x201e, 0x2026, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014].includes(cp))
    .map((cp) => `\\u{${cp.toString(16)}}`)
    .join('');
/** Runs of whole UTF-8 sequences as they look after the mis-decode (repaired one run at a time
 * when the line as a whole does not decode). */
const MOJIBAKE_RUN_RE = new RegExp(
  `(?<![${STRICT_CONT_CHARS}])(?:[\\xc2-\\xdf][ ${CONT_CHARS}]|[\\xe0-\\xef][${CONT_CHARS}]{2}|[\\xf0-\\xf4][${CONT_CHARS}]{3})+`,
  'gu',
);

/** Strong signs of UTF-8 read as Latin-1/Windows-1252: C1 controls, Â or Ã + continuation, 3-
 * and 4-byte sequences, and `Ã `/`Â ` at the start or after a letter (0xA0 turned into a space). */
const STRONG_RE = new RegExp(
  `[\\x80-\\x9f]|[\\xc2\\xc3][${CONT_CHARS}]|[\\xe0-\\xef][${CONT_CHARS}]{2}|[\\xf0-\\xf4][${CONT_CHARS}]{3}|(?:^|[a-z] ?)[\\xc2\\xc3] `,
  'u',
);
/** Other 2-byte sequences (Latin Extended, Greek, Cyrillic, Hebrew, Arabic leads): weak signs. */
const WEAK_RE = new RegExp(`[\\xc4-\\xdf][${CONT_CHARS}]`, 'gu');

/**
 * Pairs that read as mojibake of ¥ Å Ì Î Ò å ™ but also occur in real text (a capital with a
 * dash or quote after it, "Â¥" not after a space): not evidence on their own, as in ftfy.
 */
const AMBIGUOUS_RE = /(?<![ \t\n])\xc2\xa5|\xc3[\u2026\u0152\u017d\u2019\xa5]|\xe2\u201e\xa2/g;

function looksLikeMojibake(text: string): boolean {
  const t = text.replace(AMBIGUOUS_RE, ' ');
  return STRONG_RE.test(t) || (t.match(WEAK_RE)?.length ?? 0) >= 2;
}

/** Puts back 0xA0 bytes that became spaces after a 0xC2/0xC3 lead: before a word, `Ã ` is read
 * as `à` + space (except before the Portuguese `s`, `quele`, `quela`, `quilo`); otherwise the
 * space itself is taken as the lost 0xA0. */
function restoreByteA0(bytes: Uint8Array): Uint8Array {
  const out: number[] = [];
  const wordAt = (i: number, w: string): boolean => {
    for (let k = 0; k < w.length; k++) if (bytes[i + k] !== w.charCodeAt(k)) return false;
    return true;
  };
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i] as number;
    out.push(b);
    if ((b !== 0xc2 && b !== 0xc3) || bytes[i + 1] !== 0x20) continue;
    const aGraveWord =
      b === 0xc3 && bytes[i + 2] !== 0x20 && !['s ', 'quele', 'quela', 'quilo'].some((w) => wordAt(i + 2, w));
    out.push(0xa0);
    if (!aGraveWord) i += 1; // the space was the 0xA0
  }
  return Uint8Array.from(out);
}

function reDecode(text: string, restoreA0: boolean): string | null {
  for (const enc of ['latin-1', 'windows-1252'] as const) {
    let bytes = encodeSingleByte(text, enc);
    if (bytes === null) continue;
    if (restoreA0) bytes = restoreByteA0(bytes);
    const decoded = decodeUtf8Strict(bytes);
    if (decoded !== null && decoded !== text) return decoded;
  }
  return null;
}

function fixEncodingOnce(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text) || !looksLikeMojibake(text)) return text;
  const whole = reDecode(text, true) ?? reDecode(text, false);
  if (whole !== null) return whole;
  return text.replace(MOJIBAKE_RUN_RE, (run) =>
    looksLikeMojibake(run) ? (reDecode(run, true) ?? reDecode(run, false) ?? run) : run,
  );
}

/** Mojibake repair, repeated until stable (double-encoded text takes two rounds). */
export function fixEncoding(text: string): string {
  for (let i = 0; i < 8; i++) {
    const next = fixEncodingOnce(text);
    if (next === text) return text;
    text = next;
  }
  return text;
}

function fixC1Controls(text: string): string {
  return text.replace(/[\x80-\x9f]/g, (c) =>
    String.fromCodePoint(CP1252_HIGH[c.charCodeAt(0) - 0x80] as number),
  );
}

const LIGATURES: Readonly<Record<string, string>> = {
  '\u0132': 'IJ', '\u0133': 'ij', '\u0149': '\u02bcn', '\u01f1': 'DZ', '\u01f2': 'Dz',
  '\u01f3': 'dz', '\u01c4': 'D\u017d', '\u01c5': 'D\u017e', '\u01c6': 'd\u017e', '\u01c7': 'LJ',
  '\u01c8': 'Lj', '\u01c9': 'lj', '\u01ca': 'NJ', '\u01cb': 'Nj', '\u01cc': 'nj', '\ufb00': 'ff',
  '\ufb01': 'fi', '\ufb02': 'fl', '\ufb03': 'ffi', '\ufb04': 'ffl', '\ufb05': '\u017ft',
  '\ufb06': 'st',
};
const LIGATURE_RE = /[\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]/g;

function fixLatinLigatures(text: string): string {
  return text.replace(LIGATURE_RE, (c) => LIGATURES[c] ?? c);
}

/** U+3000 → space; U+FF01–U+FFEF → their NFKC form where that differs. */
const WIDTH_RE = /[\u3000\uff01-\uffef]/g;

function fixCharacterWidth(text: string): string {
  return text.replace(WIDTH_RE, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

function uncurlQuotes(text: string): string {
  return text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
}

function fixLineBreaks(text: string): string {
  return text.replace(/\r\n|[\r\u2028\u2029\x85]/g, '\n');
}

function fixSurrogates(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

function removeTerminalEscapes(text: string): string {
  return text.replace(/\x1b\[[\d;]*[a-zA-Z]/g, '');
}

/** C0 controls except \t \n \f \r, DEL, deprecated format chars, BOM, interlinear annotations. */
const CONTROL_RE = /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;

function removeControlChars(text: string): string {
  return text.replace(CONTROL_RE, '');
}

function fixSegment(segment: string, unescapeHtml: boolean): string {
  let text = segment;
  for (;;) {
    const before = text;
    if (unescapeHtml) text = ftfyUnescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = fixLatinLigatures(text);
    text = fixCharacterWidth(text);
    text = uncurlQuotes(text);
    text = fixLineBreaks(text);
    text = fixSurrogates(text);
    text = removeTerminalEscapes(text);
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === before) return text;
  }
}

/**
 * ftfy `fix_text` with default options (within the limits above). Lines are fixed one by one;
 * once a line contains `<`, HTML entities are left alone from there on, as ftfy does.
 */
export function fixText(text: string): string {
  // Printable ASCII (plus tab/newline) without '&' is already a fixed point.
  if (/^[\t\n\x20-\x25\x27-\x7e]*$/.test(text)) return text;
  let unescapeHtml = true;
  let out = '';
  let pos = 0;
  while (pos < text.length) {
    const nl = text.indexOf('\n', pos);
    const end = nl === -1 ? text.length : nl + 1;
    const segment = text.slice(pos, end);
    if (segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
    pos = end;
  }
  return out;
}
