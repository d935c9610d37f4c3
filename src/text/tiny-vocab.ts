/**
 * A small, deterministic CLIP-format BPE vocabulary for the synthetic `tiny` model.
 *
 * Layout (the same as CLIP's): the 256 byte characters in CLIP's byte-alphabet order, the same
 * 256 with `</w>`, one entry per merge (its joined result, unless that string already exists),
 * then `<|startoftext|>` and `<|endoftext|>` as the last two ids. The merges come from a tiny BPE
 * training run over the built-in word list below until each word is a single token, so common
 * prompt words encode as whole words; anything else falls back to smaller pieces and bytes.
 */
import { BYTE_TO_CHAR } from './byte-unicode.js';
import { END_TOKEN, START_TOKEN, mergePair } from './clip-tokenizer.js';

const WORD_END = '</w>';

/** Everyday English and image-prompt words (lower case, ASCII letters). */
const WORDS = `
a an the of in on at to and or with by for from as is are was be it its this that his her their
my your our who what which where when how up down out over under into near behind above below
between through across around after before while very more most many much some no not one two
three four five six seven eight nine ten first new old young big small large tiny huge little
long short tall high low full empty open dark light bright soft hard warm cold hot wet dry clean
red orange yellow green blue purple pink brown black white gray grey gold golden silver colorful
cat cats dog dogs fox bird birds horse fish lion tiger bear wolf deer rabbit owl dragon animal
man woman men women boy girl child children people person face eyes hair hand hands smile portrait
house city street road bridge tower castle village room window door garden park forest tree trees
flower flowers grass leaf leaves mountain mountains hill river lake sea ocean beach island sky
cloud clouds sun moon star stars night day morning evening sunset sunrise rain snow fog storm wind
water fire ice stone rock sand wood glass metal paper space planet earth world nature landscape
photo photograph picture painting drawing sketch illustration art artwork style render image
highly detailed detail details realistic photorealistic hyperrealistic quality best masterpiece
beautiful pretty cute lovely epic dramatic cinematic moody vibrant vivid sharp focus blurry
lighting light shadow shadows color colors background foreground scene view wide angle close
lens camera shot depth field studio digital oil watercolor concept fantasy science fiction
futuristic ancient medieval modern vintage retro abstract surreal magic magical mystical dream
trending artstation octane unreal engine resolution volumetric global illumination reflection
standing sitting walking running flying looking holding wearing eating sleeping playing
dress shirt hat coat car cars boat ship train plane robot machine building buildings church
food apple cake coffee tea table chair bed book books music
`;

export interface TinyVocab {
  vocab: Record<string, number>;
  /** Merge rules "a b" in priority order (merges.txt without the header). */
  merges: string[];
}

/** The byte characters in CLIP's vocabulary order: printable bytes first, then the rest. */
function byteAlphabet(): string[] {
  const printable: string[] = [];
  const rest: string[] = [];
  for (let b = 0; b < 256; b++) {
    const ch = BYTE_TO_CHAR[b] as string;
    ((ch.codePointAt(0) as number) === b ? printable : rest).push(ch);
  }
  return [...printable, ...rest];
}

/** Learn merges until every word is one symbol; ties go to the lexicographically smallest pair. */
function trainMerges(words: readonly string[]): string[][] {
  const seqs: string[][] = words.map((w) => {
    const s = Array.from(w);
    s[s.length - 1] += WORD_END;
    return s;
  });
  const merges: string[][] = [];
  for (;;) {
    const counts = new Map<string, number>();
    for (const s of seqs) {
      for (let i = 0; i < s.length - 1; i++) {
        const key = `${s[i]} ${s[i + 1]}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, n] of counts) {
      if (n > bestCount || (n === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = n;
      }
    }
    if (best === undefined) return merges;
    const [a, b] = best.split(' ') as [string, string];
    merges.push([a, b]);
    for (let w = 0; w < seqs.length; w++) seqs[w] = mergePair(seqs[w] as string[], a, b);
  }
}

/** The built-in word list (deduplicated, in order). */
export function tinyVocabWords(): string[] {
  return [...new Set(WORDS.split(/\s+/).filter((w) => w.length > 0))];
}

export function generateTinyVocab(): TinyVocab {
  const vocab: Record<string, number> = {};
  let next = 0;
  const add = (tok: string): void => {
    if (!Object.hasOwn(vocab, tok)) vocab[tok] = next++;
  };
  const alphabet = byteAlphabet();
  for (const ch of alphabet) add(ch);
  for (const ch of alphabet) add(ch + WORD_END);
  const pairs = trainMerges(tinyVocabWords());
  for (const [a, b] of pairs) add(a + b);
  add(START_TOKEN);
  add(END_TOKEN);
  return { vocab, merges: pairs.map(([a, b]) => `${a} ${b}`) };
}
