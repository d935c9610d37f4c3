/**
 * The subset of ftfy 6.x `fix_text` (default options) that can change what CLIP sees.
 *
 * Steps, in ftfy's order, repeated per line until the text stops changing:
 *   HTML entities (only when the line — or an earlier one — has no `<`), mojibake repair,
 *   C1 controls as Windows-1252, Latin ligatures, full/half-width forms, curly quotes → straight
 *   (ftfy's default `uncurl_quotes=True`), line breaks, lone surrogates, ANSI terminal escapes,
 *   control characters, NFC.
 *
 * Mojibake repair is this project's own, deliberately conservative detector (ftfy's heuristic
 * is a large hand-tuned table): a line is re-decoded when, encoded as Latin-1 or Windows-1252,
 * all of it is valid UTF-8 with at least one multi-byte sequence; otherwise only runs that start
 * with the most common UTF-8 lead bytes (Â Ã â ð, i.e. U+0080–U+00FF, U+2000–U+2FFF and
 * emoji) and decode cleanly are repaired. Lossy mojibake (with U+FFFD or `?`), MacRoman, cp437
 * and the other single-byte code pages are not attempted.
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
/** Runs of 2-byte sequences led by Â/Ã, 3-byte by â, 4-byte by ð. */
const COMMON_MOJIBAKE_RE = new RegExp(
  `(?:[\\xc2\\xc3][${CONT_CHARS}]|\\xe2[${CONT_CHARS}]{2}|\\xf0[${CONT_CHARS}]{3})+`,
  'gu',
);

function reDecode(text: string): string | null {
  for (const enc of ['latin-1', 'windows-1252'] as const) {
    const bytes = encodeSingleByte(text, enc);
    if (bytes === null) continue;
    const decoded = decodeUtf8Strict(bytes);
    if (decoded !== null && decoded !== text) return decoded;
  }
  return null;
}

function fixEncodingOnce(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text)) return text;
  const whole = reDecode(text);
  if (whole !== null) return whole;
  return text.replace(COMMON_MOJIBAKE_RE, (run) => reDecode(run) ?? run);
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
