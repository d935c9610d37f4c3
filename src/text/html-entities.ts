/**
 * HTML character references with the semantics of Python's `html.unescape` (which CLIP's text
 * cleaning applies twice) and of ftfy's stricter entity fixer.
 *
 * Named references: a subset of the WHATWG table — every HTML 4 entity, the 106 "legacy" names
 * that are also recognised without a trailing semicolon, and a few common HTML5 additions.
 * Names outside this subset are left as they are (documented limitation).
 */

/** Named references (without `&` and `;`) → replacement text. */
const NAMED: Readonly<Record<string, string>> = {
  nbsp: '\u{a0}', iexcl: '\u{a1}', cent: '\u{a2}', pound: '\u{a3}', curren: '\u{a4}',
  yen: '\u{a5}', brvbar: '\u{a6}', sect: '\u{a7}', uml: '\u{a8}', copy: '\u{a9}', ordf: '\u{aa}',
  laquo: '\u{ab}', not: '\u{ac}', shy: '\u{ad}', reg: '\u{ae}', macr: '\u{af}', deg: '\u{b0}',
  plusmn: '\u{b1}', sup2: '\u{b2}', sup3: '\u{b3}', acute: '\u{b4}', micro: '\u{b5}',
  para: '\u{b6}', middot: '\u{b7}', cedil: '\u{b8}', sup1: '\u{b9}', ordm: '\u{ba}',
  raquo: '\u{bb}', frac14: '\u{bc}', frac12: '\u{bd}', frac34: '\u{be}', iquest: '\u{bf}',
  Agrave: '\u{c0}', Aacute: '\u{c1}', Acirc: '\u{c2}', Atilde: '\u{c3}', Auml: '\u{c4}',
  Aring: '\u{c5}', AElig: '\u{c6}', Ccedil: '\u{c7}', Egrave: '\u{c8}', Eacute: '\u{c9}',
  Ecirc: '\u{ca}', Euml: '\u{cb}', Igrave: '\u{cc}', Iacute: '\u{cd}', Icirc: '\u{ce}',
  Iuml: '\u{cf}', ETH: '\u{d0}', Ntilde: '\u{d1}', Ograve: '\u{d2}', Oacute: '\u{d3}',
  Ocirc: '\u{d4}', Otilde: '\u{d5}', Ouml: '\u{d6}', times: '\u{d7}', Oslash: '\u{d8}',
  Ugrave: '\u{d9}', Uacute: '\u{da}', Ucirc: '\u{db}', Uuml: '\u{dc}', Yacute: '\u{dd}',
  THORN: '\u{de}', szlig: '\u{df}', agrave: '\u{e0}', aacute: '\u{e1}', acirc: '\u{e2}',
  atilde: '\u{e3}', auml: '\u{e4}', aring: '\u{e5}', aelig: '\u{e6}', ccedil: '\u{e7}',
  egrave: '\u{e8}', eacute: '\u{e9}', ecirc: '\u{ea}', euml: '\u{eb}', igrave: '\u{ec}',
  iacute: '\u{ed}', icirc: '\u{ee}', iuml: '\u{ef}', eth: '\u{f0}', ntilde: '\u{f1}',
  ograve: '\u{f2}', oacute: '\u{f3}', ocirc: '\u{f4}', otilde: '\u{f5}', ouml: '\u{f6}',
  divide: '\u{f7}', oslash: '\u{f8}', ugrave: '\u{f9}', uacute: '\u{fa}', ucirc: '\u{fb}',
  uuml: '\u{fc}', yacute: '\u{fd}', thorn: '\u{fe}', yuml: '\u{ff}', fnof: '\u{192}',
  Alpha: '\u{391}', Beta: '\u{392}', Gamma: '\u{393}', Delta: '\u{394}', Epsilon: '\u{395}',
  Zeta: '\u{396}', Eta: '\u{397}', Theta: '\u{398}', Iota: '\u{399}', Kappa: '\u{39a}',
  Lambda: '\u{39b}', Mu: '\u{39c}', Nu: '\u{39d}', Xi: '\u{39e}', Omicron: '\u{39f}',
  Pi: '\u{3a0}', Rho: '\u{3a1}', Sigma: '\u{3a3}', Tau: '\u{3a4}', Upsilon: '\u{3a5}',
  Phi: '\u{3a6}', Chi: '\u{3a7}', Psi: '\u{3a8}', Omega: '\u{3a9}', alpha: '\u{3b1}',
  beta: '\u{3b2}', gamma: '\u{3b3}', delta: '\u{3b4}', epsilon: '\u{3b5}', zeta: '\u{3b6}',
  eta: '\u{3b7}', theta: '\u{3b8}', iota: '\u{3b9}', kappa: '\u{3ba}', lambda: '\u{3bb}',
  mu: '\u{3bc}', nu: '\u{3bd}', xi: '\u{3be}', omicron: '\u{3bf}', pi: '\u{3c0}', rho: '\u{3c1}',
  sigmaf: '\u{3c2}', sigma: '\u{3c3}', tau: '\u{3c4}', upsilon: '\u{3c5}', phi: '\u{3c6}',
  chi: '\u{3c7}', psi: '\u{3c8}', omega: '\u{3c9}', thetasym: '\u{3d1}', upsih: '\u{3d2}',
  piv: '\u{3d6}', bull: '\u{2022}', hellip: '\u{2026}', prime: '\u{2032}', Prime: '\u{2033}',
  oline: '\u{203e}', frasl: '\u{2044}', weierp: '\u{2118}', image: '\u{2111}', real: '\u{211c}',
  trade: '\u{2122}', alefsym: '\u{2135}', larr: '\u{2190}', uarr: '\u{2191}', rarr: '\u{2192}',
  darr: '\u{2193}', harr: '\u{2194}', crarr: '\u{21b5}', lArr: '\u{21d0}', uArr: '\u{21d1}',
  rArr: '\u{21d2}', dArr: '\u{21d3}', hArr: '\u{21d4}', forall: '\u{2200}', part: '\u{2202}',
  exist: '\u{2203}', empty: '\u{2205}', nabla: '\u{2207}', isin: '\u{2208}', notin: '\u{2209}',
  ni: '\u{220b}', prod: '\u{220f}', sum: '\u{2211}', minus: '\u{2212}', lowast: '\u{2217}',
  radic: '\u{221a}', prop: '\u{221d}', infin: '\u{221e}', ang: '\u{2220}', and: '\u{2227}',
  or: '\u{2228}', cap: '\u{2229}', cup: '\u{222a}', int: '\u{222b}', there4: '\u{2234}',
  sim: '\u{223c}', cong: '\u{2245}', asymp: '\u{2248}', ne: '\u{2260}', equiv: '\u{2261}',
  le: '\u{2264}', ge: '\u{2265}', sub: '\u{2282}', sup: '\u{2283}', nsub: '\u{2284}',
  sube: '\u{2286}', supe: '\u{2287}', oplus: '\u{2295}', otimes: '\u{2297}', perp: '\u{22a5}',
  sdot: '\u{22c5}', lceil: '\u{2308}', rceil: '\u{2309}', lfloor: '\u{230a}', rfloor: '\u{230b}',
  lang: '\u{27e8}', rang: '\u{27e9}', loz: '\u{25ca}', spades: '\u{2660}', clubs: '\u{2663}',
  hearts: '\u{2665}', diams: '\u{2666}', quot: '"', amp: '&', lt: '<', gt: '>', OElig: '\u{152}',
  oelig: '\u{153}', Scaron: '\u{160}', scaron: '\u{161}', Yuml: '\u{178}', circ: '\u{2c6}',
  tilde: '\u{2dc}', ensp: '\u{2002}', emsp: '\u{2003}', thinsp: '\u{2009}', zwnj: '\u{200c}',
  zwj: '\u{200d}', lrm: '\u{200e}', rlm: '\u{200f}', ndash: '\u{2013}', mdash: '\u{2014}',
  lsquo: '\u{2018}', rsquo: '\u{2019}', sbquo: '\u{201a}', ldquo: '\u{201c}', rdquo: '\u{201d}',
  bdquo: '\u{201e}', dagger: '\u{2020}', Dagger: '\u{2021}', permil: '\u{2030}',
  lsaquo: '\u{2039}', rsaquo: '\u{203a}', euro: '\u{20ac}', apos: '\u{27}', AMP: '&', LT: '<',
  GT: '>', QUOT: '"', COPY: '\u{a9}', REG: '\u{ae}', Tab: '\u{9}', NewLine: '\u{a}', excl: '!',
  num: '#', dollar: '$', percnt: '%', lpar: '(', rpar: ')', ast: '*', plus: '+', comma: ',',
  period: '.', sol: '/', colon: ':', semi: ';', equals: '=', quest: '?', commat: '@', lsqb: '[',
  rsqb: ']', lowbar: '_', grave: '`', lcub: '{', rcub: '}', verbar: '|', vert: '|',
  star: '\u{2606}', starf: '\u{2605}', check: '\u{2713}', cross: '\u{2717}', male: '\u{2642}',
  female: '\u{2640}', sharp: '\u{266f}', flat: '\u{266d}', natural: '\u{266e}',
  hyphen: '\u{2010}', dash: '\u{2010}',
};

/** Names that HTML5 also recognises without the trailing semicolon (e.g. `&amp`, `&copy2020`). */
const LEGACY = new Set(
  'AElig AMP Aacute Acirc Agrave Aring Atilde Auml COPY Ccedil ETH Eacute Ecirc Egrave Euml GT Iacute Icirc Igrave Iuml LT Ntilde Oacute Ocirc Ograve Oslash Otilde Ouml QUOT REG THORN Uacute Ucirc Ugrave Uuml Yacute aacute acirc acute aelig agrave amp aring atilde auml brvbar ccedil cedil cent copy curren deg divide eacute ecirc egrave eth euml frac12 frac14 frac34 gt iacute icirc iexcl igrave iquest iuml laquo lt macr micro middot nbsp not ntilde oacute ocirc ograve ordf ordm oslash otilde ouml para plusmn pound quot raquo reg sect shy sup1 sup2 sup3 szlig thorn times uacute ucirc ugrave uml uuml yacute yen yuml'.split(' '),
);

const namedMap = new Map<string, string>(Object.entries(NAMED));

/** Numeric references that the HTML5 spec remaps (0x80–0x9F as Windows-1252, NUL, CR). */
const REMAPPED_NUMERIC = new Map<number, string>([
  [0x00, '\ufffd'], [0x0d, '\r'], [0x80, '\u20ac'], [0x81, '\x81'], [0x82, '\u201a'],
  [0x83, '\u0192'], [0x84, '\u201e'], [0x85, '\u2026'], [0x86, '\u2020'], [0x87, '\u2021'],
  [0x88, '\u02c6'], [0x89, '\u2030'], [0x8a, '\u0160'], [0x8b, '\u2039'], [0x8c, '\u0152'],
  [0x8d, '\x8d'], [0x8e, '\u017d'], [0x8f, '\x8f'], [0x90, '\x90'], [0x91, '\u2018'],
  [0x92, '\u2019'], [0x93, '\u201c'], [0x94, '\u201d'], [0x95, '\u2022'], [0x96, '\u2013'],
  [0x97, '\u2014'], [0x98, '\u02dc'], [0x99, '\u2122'], [0x9a, '\u0161'], [0x9b, '\u203a'],
  [0x9c, '\u0153'], [0x9d, '\x9d'], [0x9e, '\u017e'], [0x9f, '\u0178'],
]);

/** Code points that a numeric reference may not produce: they are dropped. */
function isDroppedCodePoint(cp: number): boolean {
  return (
    (cp >= 0x01 && cp <= 0x08) ||
    cp === 0x0b ||
    (cp >= 0x0e && cp <= 0x1f) ||
    (cp >= 0x7f && cp <= 0x9f) ||
    (cp >= 0xfdd0 && cp <= 0xfdef) ||
    (cp & 0xfffe) === 0xfffe // U+xFFFE and U+xFFFF in every plane
  );
}

const MAX_CP = 0x10ffff;

function parseNumber(digits: string, radix: 10 | 16): number {
  // Python's int() has no overflow; anything past U+10FFFF is out of range all the same.
  const trimmed = digits.replace(/^0+/, '');
  if (trimmed.length > 8) return MAX_CP + 1;
  return trimmed === '' ? 0 : parseInt(trimmed, radix);
}

function numericReference(body: string): string {
  const hex = body[1] === 'x' || body[1] === 'X';
  const digits = body.slice(hex ? 2 : 1).replace(/;$/, '');
  const cp = parseNumber(digits, hex ? 16 : 10);
  const remapped = REMAPPED_NUMERIC.get(cp);
  if (remapped !== undefined) return remapped;
  if ((cp >= 0xd800 && cp <= 0xdfff) || cp > MAX_CP) return '\ufffd';
  if (isDroppedCodePoint(cp)) return '';
  return String.fromCodePoint(cp);
}

function namedReference(body: string): string {
  if (body.endsWith(';')) {
    const full = namedMap.get(body.slice(0, -1));
    if (full !== undefined) return full;
  } else if (LEGACY.has(body)) {
    return namedMap.get(body) as string;
  }
  // Longest legacy name that is a prefix (at least 2 characters), the rest kept as text.
  for (let len = body.length - 1; len > 1; len--) {
    const prefix = body.slice(0, len);
    if (LEGACY.has(prefix)) return (namedMap.get(prefix) as string) + body.slice(len);
  }
  return '&' + body;
}

const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g;

/** Python `html.unescape` semantics (for the entities in the table above). */
export function htmlUnescape(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(CHARREF_RE, (_m, body: string) =>
    body[0] === '#' ? numericReference(body) : namedReference(body),
  );
}

const FTFY_ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;

/**
 * ftfy's entity fixer: only complete `&name;` / `&#...;` references; an all-caps spelling of a
 * lower-case entity (`&EACUTE;`) gives the upper-cased character when it is not itself an entity.
 */
export function ftfyUnescapeHtml(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(FTFY_ENTITY_RE, (ref) => {
    const name = ref.slice(1, -1);
    if (name[0] === '#') {
      const out = htmlUnescape(ref);
      return out.includes(';') ? ref : out;
    }
    const direct = namedMap.get(name);
    if (direct !== undefined) return direct;
    const lower = name.toLowerCase();
    if (name === name.toUpperCase() && lower !== name) {
      const base = namedMap.get(lower);
      if (base !== undefined && htmlUnescape(ref) === ref) return base.toUpperCase();
    }
    return ref;
  });
}
