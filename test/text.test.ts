import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer } from '../src/text/clip-tokenizer.js';
import { cleanText } from '../src/text/clean.js';
import { htmlUnescape } from '../src/text/html-entities.js';
import { fixText } from '../src/text/ftfy.js';
import { loadTokenizer, parseMerges } from '../src/text/load.js';
import { parsePrompt, parsePromptAttention } from '../src/text/prompt-parser.js';
import { applyEmphasis, emptyChunk, padChunks, tokenizeChunks } from '../src/text/chunks.js';
import { generateTinyVocab, tinyVocabWords } from '../src/text/tiny-vocab.js';
import { SdgenError, UsageError } from '../src/errors.js';
import { FIXTURES_URL as FIXTURES } from './helpers.js';

const CLIP_DIR = fileURLToPath(new URL('clip/', FIXTURES));
const TINY_SD1_TOKENIZER = fileURLToPath(new URL('tiny-sd1/tokenizer/', FIXTURES));

interface FixturePrompt {
  prompt: string;
  cleaned: string;
  pre_tokens: string[];
  bpe_tokens: string[];
  ids: number[];
  input_ids_77_pad_eot: number[];
  input_ids_77_pad_zero: number[];
  decoded: string;
  ids_without_ftfy?: number[];
}

const fixture = JSON.parse(readFileSync(join(CLIP_DIR, 'tokens.json'), 'utf8')) as { prompts: FixturePrompt[] };
const vocab = JSON.parse(readFileSync(join(CLIP_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
const merges = parseMerges(readFileSync(join(CLIP_DIR, 'merges.txt'), 'utf8'));
const clip = new ClipTokenizer({ vocab, merges });
const clipNoFtfy = new ClipTokenizer({ vocab, merges }, { ftfy: false });
const clipPad0 = new ClipTokenizer({ vocab, merges, padToken: '!' });

const BOS = 49406;
const EOS = 49407;
const COMMA = 267; // ",</w>"
const CAT = 2368; // "cat</w>"
const DOG = 1929; // "dog</w>"
const A = 320; // "a</w>"

// ---------------------------------------------------------------- tokenizer vs OpenAI CLIP

test('fixture vocabulary has the documented shape', () => {
  assert.equal(Object.keys(vocab).length, 49408);
  assert.equal(merges.length, 48894);
  assert.equal(clip.bosId, BOS);
  assert.equal(clip.eosId, EOS);
  assert.equal(clip.padId, EOS);
  assert.equal(clipPad0.padId, 0);
  assert.equal(clip.maxLength, 77);
});

test('the clip fixture lists its 21 prompts', () => assert.ok(fixture.prompts.length >= 21, `${fixture.prompts.length} prompts`));

for (const [i, p] of fixture.prompts.entries()) {
  test(`CLIP reference prompt #${i}: ${JSON.stringify(p.prompt).slice(0, 50)}`, () => {
    const d = clip.tokenizeDetailed(p.prompt);
    assert.equal(d.cleaned, p.cleaned, 'cleaned');
    assert.deepEqual(d.preTokens, p.pre_tokens, 'pre_tokens');
    assert.deepEqual(d.bpeTokens, p.bpe_tokens, 'bpe_tokens');
    assert.deepEqual(d.ids, p.ids, 'ids (detailed)');
    assert.deepEqual(clip.encode(p.prompt), p.ids, 'ids');
    assert.deepEqual(clip.encodePadded(p.prompt), p.input_ids_77_pad_eot, 'input_ids_77_pad_eot');
    assert.deepEqual(clipPad0.encodePadded(p.prompt), p.input_ids_77_pad_zero, 'input_ids_77_pad_zero');
    assert.deepEqual(clip.pad(p.ids, 0), p.input_ids_77_pad_zero, 'pad(ids, 0)');
    assert.equal(clip.decode(p.ids), p.decoded, 'decoded');
    assert.deepEqual(clipNoFtfy.encode(p.prompt), p.ids_without_ftfy ?? p.ids, 'ids_without_ftfy');
  });
}

test('fixture covers the ftfy-sensitive prompts (so the no-ftfy option is exercised)', () => {
  const withNoFtfy = fixture.prompts.filter((p) => p.ids_without_ftfy !== undefined);
  assert.ok(withNoFtfy.length >= 3);
  for (const p of withNoFtfy) assert.notDeepEqual(clip.encode(p.prompt), clipNoFtfy.encode(p.prompt));
});

test('encodePadded truncates to 77 with the end token last; encode does not truncate', () => {
  const long = 'cat '.repeat(100);
  assert.equal(clip.encode(long).length, 100);
  const padded = clip.encodePadded(long);
  assert.equal(padded.length, 77);
  assert.equal(padded[0], BOS);
  assert.equal(padded[76], EOS);
  assert.deepEqual(padded.slice(1, 76), new Array(75).fill(CAT));
});

test('encodePadded of an empty prompt is start, end, padding', () => {
  assert.deepEqual(clip.encodePadded(''), [BOS, ...new Array(76).fill(EOS)]);
  assert.deepEqual(clipPad0.encodePadded(''), [BOS, EOS, ...new Array(75).fill(0)]);
});

// ---------------------------------------------------------------- text cleaning

test('html.unescape semantics: named, legacy without semicolon, longest prefix, numeric', () => {
  assert.equal(htmlUnescape('&amp; &lt;b&gt; &quot;q&quot; &apos;'), '& <b> "q" \'');
  assert.equal(htmlUnescape('Tom &amp Jerry &copy2020 &hellip &hellip;'), 'Tom & Jerry ©2020 &hellip …');
  assert.equal(htmlUnescape('&ampx; &notit;'), '&x; ¬it;');
  assert.equal(htmlUnescape('&#x41;&#66;&#150;&#0;&#xD800;&#1114112;&#x7f;!'), 'AB–\ufffd\ufffd\ufffd!');
  assert.equal(htmlUnescape('&#128512; &#X1F600'), '\u{1F600} \u{1F600}');
  assert.equal(htmlUnescape('&unknownentity; & alone'), '&unknownentity; & alone');
});

test('ftfy subset: entities (looped), mojibake, quotes, ligatures, width, controls', () => {
  assert.equal(fixText('&amp;amp;amp; &lt;3'), '& <3');
  assert.equal(fixText('x < y &amp; z'), 'x < y &amp; z'); // a literal < turns entity fixing off
  assert.equal(fixText('&EACUTE;t&eacute;'), 'Été');
  assert.equal(fixText('Itâ€™s'), "It's");
  assert.equal(fixText('PokÃ©mon ﬁsh “quoted” ‘single’'), 'Pokémon fish "quoted" \'single\'');
  assert.equal(fixText('SchrÃƒÂ¶dinger'), 'Schrödinger'); // double-encoded
  assert.equal(fixText('voilÃ la'), 'voilà la');
  assert.equal(fixText('cafÃ© and café'), 'café and café'); // mixed: repaired run by run
  assert.equal(fixText('ｆｕｌｌ\u3000ｗｉｄｔｈ！'), 'full width!');
  assert.equal(fixText('a\u2028b\u0085c\ufeffd\u0007e\u001b[1mf'), 'a\nb…cdef');
  assert.equal(fixText('e\u0301'), 'é'); // NFC
  // Mixed lines: only runs that are mojibake on their own are repaired; lone ambiguous pairs
  // (Ã… could be "Å", Â¥ could be "¥") stay unless the line as a whole decodes.
  assert.equal(fixText('by Ã…ngstrÃ¶m – déjà'), 'by Ã…ngström – déjà');
  assert.equal(fixText('a cat Â¥ 100'), 'a cat ¥ 100');
  assert.equal(fixText('a cat Â¥ 100 déjà'), 'a cat Â¥ 100 déjà');
  assert.equal(fixText('1 Ã  déjà'), '1 Ã  déjà');
  assert.equal(fixText('a Ã  déjà'), 'a à  déjà');
  // Legitimate text is left alone.
  for (const s of ['naïve façade', 'El Niño', 'Ñ“ test', 'Ç’est', 'Straße', 'привет мир', '中文']) {
    assert.equal(fixText(s), s.replace(/[“”]/g, '"').replace(/’/g, "'"));
  }
});

test('cleanText: whitespace per Python (U+0085 yes, U+FEFF no), lower case, ftfy switch', () => {
  assert.equal(cleanText('  A\tB\u00a0C\u3000D\u2003E  '), 'a b c d e');
  assert.equal(cleanText('x\u0085y', { ftfy: false }), 'x y');
  assert.equal(cleanText('x\ufeffy', { ftfy: false }), 'x\ufeffy');
  assert.equal(cleanText('ΟΔΟΣ'), 'οδος'.slice(0, 3) + 'ς'); // final sigma
  assert.equal(cleanText('&amp;lt;b&amp;gt;'), '<b>');
});

// ---------------------------------------------------------------- loading

test('loadTokenizer reads a diffusers tokenizer folder (SD1: pads with <|endoftext|>)', async () => {
  const tok = await loadTokenizer(TINY_SD1_TOKENIZER);
  assert.equal(tok.bosId, BOS);
  assert.equal(tok.eosId, EOS);
  assert.equal(tok.padId, EOS);
  assert.equal(tok.maxLength, 77);
  const p = fixture.prompts[0] as FixturePrompt;
  assert.deepEqual(tok.encodePadded(p.prompt), p.input_ids_77_pad_eot);
});

async function withTokenizerDir(
  files: Record<string, string>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sdgen-tok-'));
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('loadTokenizer: SD2-style pad "!" as {content}, model_max_length, big "unset" length', async () => {
  const vocabText = JSON.stringify(vocab);
  const mergesText = '#version: 0.2\n' + merges.join('\n') + '\n';
  await withTokenizerDir(
    {
      'vocab.json': vocabText,
      'merges.txt': mergesText,
      'tokenizer_config.json': JSON.stringify({ model_max_length: 1e30, pad_token: '<|endoftext|>' }),
      'special_tokens_map.json': JSON.stringify({ pad_token: { content: '!', lstrip: false } }),
    },
    async (dir) => {
      const tok = await loadTokenizer(dir);
      assert.equal(tok.padId, 0); // special_tokens_map wins over tokenizer_config
      assert.equal(tok.maxLength, 77);
      const p = fixture.prompts[3] as FixturePrompt;
      assert.deepEqual(tok.encodePadded(p.prompt), p.input_ids_77_pad_zero);
    },
  );
  await withTokenizerDir(
    { 'vocab.json': vocabText, 'merges.txt': mergesText, 'tokenizer_config.json': '{"model_max_length": 16}' },
    async (dir) => {
      const tok = await loadTokenizer(dir);
      assert.equal(tok.maxLength, 16);
      assert.equal(tok.encodePadded('cat '.repeat(30)).length, 16);
    },
  );
});

test('loadTokenizer: clear SdgenError naming the missing or broken file', async () => {
  await withTokenizerDir({ 'merges.txt': 'a b\n' }, async (dir) => {
    await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof SdgenError && /vocab\.json.*missing/.test(e.message));
  });
  await withTokenizerDir({ 'vocab.json': '{"a": 0', 'merges.txt': 'a b\n' }, async (dir) => {
    await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof SdgenError && /vocab\.json.*not valid JSON/.test(e.message));
  });
  await withTokenizerDir({ 'vocab.json': '{"a": 0}' }, async (dir) => {
    await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof SdgenError && /merges\.txt.*missing/.test(e.message));
  });
  await withTokenizerDir(
    { 'vocab.json': JSON.stringify(vocab), 'merges.txt': 'i n\n', 'tokenizer_config.json': '[1,' },
    async (dir) => {
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof SdgenError && /tokenizer_config\.json.*not valid JSON/.test(e.message));
    },
  );
  await withTokenizerDir(
    { 'vocab.json': '{"a": 0, "b": 1}', 'merges.txt': 'a b\n' },
    async (dir) => {
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof SdgenError && /<\|startoftext\|>.*not in .*vocab\.json/.test(e.message));
    },
  );
});

// ---------------------------------------------------------------- A1111 emphasis parser

test('parsePromptAttention: A1111 documented examples', () => {
  assert.deepEqual(parsePromptAttention('normal text'), [['normal text', 1]]);
  assert.deepEqual(parsePromptAttention('an (important) word'), [['an ', 1], ['important', 1.1], [' word', 1]]);
  assert.deepEqual(parsePromptAttention('(unbalanced'), [['unbalanced', 1.1]]);
  assert.deepEqual(parsePromptAttention('\\(literal\\]'), [['(literal]', 1]]);
  assert.deepEqual(parsePromptAttention('(unnecessary)(parens)'), [['unnecessaryparens', 1.1]]);
  assert.deepEqual(parsePromptAttention('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).'), [
    ['a ', 1],
    ['house', 1.3 * 1.1 * 1.1],
    [' ', 1.1],
    ['on', 1],
    [' a ', 1.1],
    ['hill', 0.5 * 1.1],
    [', sun, ', 1.1],
    ['sky', 1.1 * 1.1 * 1.1 * 1.1],
    ['.', 1.1],
  ]);
});

test('parsePromptAttention: weights, nesting, escapes, unbalanced closers', () => {
  assert.deepEqual(parsePromptAttention('a (b:1.5) [c] ((d))'), [
    ['a ', 1], ['b', 1.5], [' ', 1], ['c', 1 / 1.1], [' ', 1], ['d', 1.1 * 1.1],
  ]);
  assert.deepEqual(parsePromptAttention('[[x]]'), [['x', (1 / 1.1) * (1 / 1.1)]]);
  assert.deepEqual(parsePromptAttention('(a [b] c:2)'), [['a ', 2], ['b', (1 / 1.1) * 2], [' c', 2]]);
  assert.deepEqual(parsePromptAttention('(x:-0.5) (y:+.5) (z:2.)'), [['x', -0.5], [' ', 1], ['y', 0.5], [' ', 1], ['z', 2]]);
  assert.deepEqual(parsePromptAttention('a\\\\b \\x'), [['a\\b x', 1]]); // \\ is one backslash; a lone \ is dropped
  assert.deepEqual(parsePromptAttention('x) y] :1.2) z:w'), [['x) y] :1.2) z:w', 1]]);
  assert.deepEqual(parsePromptAttention('[unclosed (both'), [['unclosed ', 1 / 1.1], ['both', 1.1 * (1 / 1.1)]]);
  assert.deepEqual(parsePromptAttention(''), [['', 1]]);
  assert.deepEqual(parsePromptAttention('(x:١.٥)'), [['x', 1.5]]); // Unicode digits, as Python float()
  assert.throws(() => parsePromptAttention('(x:1.2.3)'), UsageError);
});

test('parsePromptAttention: BREAK', () => {
  assert.deepEqual(parsePromptAttention('a BREAK b'), [['a', 1], ['BREAK', -1], ['b', 1]]);
  assert.deepEqual(parsePromptAttention('a BREAK BREAK b'), [['a', 1], ['BREAK', -1], ['', 1], ['BREAK', -1], ['b', 1]]);
  assert.deepEqual(parsePromptAttention('xBREAK breakfast BREAK'), [['xBREAK breakfast', 1], ['BREAK', -1], ['', 1]]);
  // The text between the brackets is " BREAK ", which splits into two empty runs.
  assert.deepEqual(parsePromptAttention('(a) BREAK (b)'), [['a', 1.1], ['', 1], ['BREAK', -1], ['', 1], ['b', 1.1]]);
  // Inside brackets the marker gets scaled and stops being a break (A1111 quirk).
  assert.deepEqual(parsePromptAttention('(a BREAK b)'), [['a', 1.1], ['BREAK', -1.1], ['b', 1.1]]);
});

test('parsePrompt with emphasis off is the literal text (A1111 "None")', () => {
  assert.deepEqual(parsePrompt('a (b:1.5) BREAK \\(c', { emphasis: false }), [['a (b:1.5) BREAK \\(c', 1]]);
  assert.deepEqual(parsePrompt('a (b:1.5)', { emphasis: true }), [['a ', 1], ['b', 1.5]]);
});

// ---------------------------------------------------------------- chunking

const endPad = (n: number): number[] => new Array(n).fill(EOS);
const ones = (n: number): number[] => new Array(n).fill(1);

test('tokenizeChunks: a 100-token prompt gives two 77-token chunks', () => {
  const r = tokenizeChunks(clip, 'cat '.repeat(100), { emphasis: true });
  assert.equal(r.chunks.length, 2);
  assert.equal(r.tokenCount, 100);
  assert.deepEqual(r.chunks[0]?.ids, [BOS, ...new Array(75).fill(CAT), EOS]);
  assert.deepEqual(r.chunks[1]?.ids, [BOS, ...new Array(25).fill(CAT), ...endPad(51)]);
  for (const c of r.chunks) {
    assert.equal(c.ids.length, 77);
    assert.deepEqual(c.weights, ones(77));
  }
});

test('tokenizeChunks: exactly 75 tokens fit one chunk', () => {
  const r = tokenizeChunks(clip, 'cat '.repeat(75), { emphasis: true });
  assert.equal(r.chunks.length, 1);
  assert.equal(r.tokenCount, 75);
  assert.deepEqual(r.chunks[0]?.ids, [BOS, ...new Array(75).fill(CAT), EOS]);
});

test('tokenizeChunks: comma backtracking moves the tail after a near comma', () => {
  // 70 cats, a comma at position 70, 10 dogs: when the 5th dog arrives the chunk is full and the
  // comma is 5 tokens back (≤ 20), so the 4 dogs after it move to the next chunk.
  const prompt = 'cat '.repeat(70) + ', ' + 'dog '.repeat(10);
  const r = tokenizeChunks(clip, prompt, { emphasis: true });
  assert.equal(r.chunks.length, 2);
  assert.deepEqual(r.chunks[0]?.ids, [BOS, ...new Array(70).fill(CAT), COMMA, ...endPad(5)]);
  assert.deepEqual(r.chunks[1]?.ids, [BOS, ...new Array(10).fill(DOG), ...endPad(66)]);
  assert.equal(r.tokenCount, 75 + 10);

  // Backtracking off: plain split at 75.
  const off = tokenizeChunks(clip, prompt, { emphasis: true, commaBacktrack: 0 });
  assert.deepEqual(off.chunks[0]?.ids, [BOS, ...new Array(70).fill(CAT), COMMA, ...new Array(4).fill(DOG), EOS]);
  assert.deepEqual(off.chunks[1]?.ids, [BOS, ...new Array(6).fill(DOG), ...endPad(70)]);
});

test('tokenizeChunks: a comma more than 20 tokens back is not used', () => {
  const prompt = 'cat '.repeat(50) + ', ' + 'dog '.repeat(30);
  const r = tokenizeChunks(clip, prompt, { emphasis: true });
  assert.deepEqual(r.chunks[0]?.ids, [BOS, ...new Array(50).fill(CAT), COMMA, ...new Array(24).fill(DOG), EOS]);
  assert.deepEqual(r.chunks[1]?.ids, [BOS, ...new Array(6).fill(DOG), ...endPad(70)]);
});

test('tokenizeChunks: BREAK starts a new chunk; emphasis off keeps it as text', () => {
  const r = tokenizeChunks(clip, 'a cat BREAK a dog', { emphasis: true });
  assert.equal(r.chunks.length, 2);
  assert.deepEqual(r.chunks[0]?.ids, [BOS, A, CAT, ...endPad(74)]);
  assert.deepEqual(r.chunks[1]?.ids, [BOS, A, DOG, ...endPad(74)]);
  assert.equal(r.tokenCount, 75 + 2);
  const literal = tokenizeChunks(clip, 'a cat BREAK a dog', { emphasis: false });
  assert.equal(literal.chunks.length, 1);
  assert.deepEqual(literal.chunks[0]?.ids.slice(0, 7), [BOS, ...clip.encode('a cat BREAK a dog'), EOS]);
});

test('tokenizeChunks: weights follow the parsed runs; start/end/padding weigh 1', () => {
  const r = tokenizeChunks(clip, 'a (cat:1.5) [dog]', { emphasis: true });
  assert.deepEqual(r.chunks[0]?.ids, [BOS, A, CAT, DOG, ...endPad(73)]);
  assert.deepEqual(r.chunks[0]?.weights, [1, 1, 1.5, 1 / 1.1, ...ones(73)]);
  const off = tokenizeChunks(clip, 'a (cat:1.5)', { emphasis: false });
  const ids = clip.encode('a (cat:1.5)');
  assert.equal(ids.length, 8); // a ( cat : 1 . 5 )
  assert.deepEqual(off.chunks[0]?.ids.slice(0, 10), [BOS, ...ids, EOS]);
  assert.deepEqual(off.chunks[0]?.weights, ones(77));
});

test('tokenizeChunks: empty prompt gives one chunk; SD2 pads after the end with 0', () => {
  const r = tokenizeChunks(clip, '', { emphasis: true });
  assert.equal(r.chunks.length, 1);
  assert.equal(r.tokenCount, 0);
  assert.deepEqual(r.chunks[0]?.ids, [BOS, ...endPad(76)]);
  const sd2 = tokenizeChunks(clipPad0, 'a cat', { emphasis: true });
  assert.deepEqual(sd2.chunks[0]?.ids, [BOS, A, CAT, EOS, ...new Array(73).fill(0)]);
  const explicit = tokenizeChunks(clip, 'a cat', { emphasis: true, padId: 0 });
  assert.deepEqual(explicit.chunks[0]?.ids, sd2.chunks[0]?.ids);
});

test('padChunks extends with empty chunks', () => {
  const r = tokenizeChunks(clip, 'a cat', { emphasis: true });
  const padded = padChunks(r, 3);
  assert.equal(padded.chunks.length, 3);
  assert.equal(r.chunks.length, 1); // input untouched
  assert.deepEqual(padded.chunks[0], r.chunks[0]);
  assert.deepEqual(padded.chunks[1], { ids: [BOS, ...endPad(76)], weights: ones(77) });
  assert.deepEqual(padded.chunks[2], emptyChunk(clip));
  assert.equal(padded.tokenCount, 2);
  assert.equal(padChunks(r, 1).chunks.length, 1);
  assert.deepEqual(emptyChunk(clipPad0).ids, [BOS, EOS, ...new Array(75).fill(0)]);
  // SD 2.x: empty chunks follow the padding of the prompt they extend.
  const sd2 = padChunks(tokenizeChunks(clipPad0, 'a cat', { emphasis: true }), 2);
  assert.deepEqual(sd2.chunks[1]?.ids, [BOS, EOS, ...new Array(75).fill(0)]);
  assert.deepEqual(sd2.specialIds, { bosId: BOS, eosId: EOS, padId: 0 });
});

test('applyEmphasis multiplies per token and restores the chunk mean', () => {
  const h = new Float32Array([1, 2, 3, 4, 5, 6]);
  applyEmphasis(h, [3, 2], [1, 2, 1]);
  // after × weights: [1,2,6,8,5,6] (sum 28); original sum 21 → scale 0.75
  assert.deepEqual(Array.from(h), [0.75, 1.5, 4.5, 6, 3.75, 4.5]);
  const same = new Float32Array([1, -2, 3, 4]);
  applyEmphasis(same, [2, 2], [1, 1]);
  assert.deepEqual(Array.from(same), [1, -2, 3, 4]);
  assert.throws(() => applyEmphasis(new Float32Array(6), [3, 2], [1, 1]), RangeError);
});

// ---------------------------------------------------------------- tiny vocabulary

test('generateTinyVocab: deterministic CLIP layout that round-trips through ClipTokenizer', () => {
  const a = generateTinyVocab();
  const b = generateTinyVocab();
  assert.deepEqual(a, b);
  const size = Object.keys(a.vocab).length;
  const ids = Object.values(a.vocab).sort((x, y) => x - y);
  assert.deepEqual(ids, Array.from({ length: size }, (_, i) => i)); // contiguous 0..n-1
  assert.equal(a.vocab['!'], 0); // CLIP byte order: printable bytes first
  assert.equal(a.vocab['!</w>'], 256);
  assert.equal(a.vocab['<|startoftext|>'], size - 2);
  assert.equal(a.vocab['<|endoftext|>'], size - 1);
  assert.ok(a.merges.length >= 200 && a.merges.length <= 2000, `${a.merges.length} merges`);
  assert.equal(size, 512 + a.merges.length + 2);

  const tok = new ClipTokenizer(a);
  assert.equal(tok.vocabSize, size);
  for (const word of tinyVocabWords()) {
    assert.deepEqual(tok.tokenizeDetailed(word).bpeTokens, [word + '</w>'], word);
  }
  const prompt = 'a red fox in the snow, highly detailed';
  const d = tok.tokenizeDetailed(prompt);
  assert.deepEqual(d.bpeTokens, ['a</w>', 'red</w>', 'fox</w>', 'in</w>', 'the</w>', 'snow</w>', ',</w>', 'highly</w>', 'detailed</w>']);
  assert.equal(tok.decode(d.ids), 'a red fox in the snow , highly detailed ');
  for (const p of [prompt, 'An astronaut riding a horse on Mars!', 'café 🐱 中文 ½']) {
    const enc = tok.encodePadded(p);
    assert.equal(enc.length, 77);
    assert.ok(enc.every((id) => id >= 0 && id < size));
    assert.equal(tok.decode(tok.encode(p)).replaceAll(' ', ''), tok.clean(p).replaceAll(' ', ''));
  }
});
