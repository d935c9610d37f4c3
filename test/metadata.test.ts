import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as zlib from 'node:zlib';
import sharp from 'sharp';
import { formatInfotext, parseInfotext, infotextToParams, quoteValue, infotextFields } from '../src/metadata/infotext.js';
import { crc32, crc32Fallback, insertPngText, makeChunk, pngTextMap, readPngChunks, readPngText } from '../src/metadata/png-text.js';
import { addImageMetadata, encodeImagePng, encodeRgbPng, type SdgenImageRecord } from '../src/metadata/png.js';
import { metadataFromPng } from '../src/metadata/metadata.js';
import { optionsFromMetadata } from '../src/cli/from.js';
import { DEFAULT_TOME } from '../src/tome/options.js';
import type { GenerationParams } from '../src/pipeline/types.js';
import { generationParams } from './helpers.js';

function params(over: Partial<GenerationParams> = {}): GenerationParams {
  return generationParams({ prompt: 'a cat', steps: 20, seed: 965400086, ...over });
}

test('infotext: A1111 layout, key order and defaults omitted', () => {
  const text = formatInfotext(params({ negativePrompt: 'blurry' }), { samplerName: 'Euler a', modelName: 'sd15' });
  assert.equal(text, 'a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model: sd15');
  // no negative prompt line when there is none; version last
  assert.equal(
    formatInfotext(params({ cfg: 7.5, width: 768, height: 512 }), { samplerName: 'DPM++ 2M', version: 'sdgen 0.1.0' }),
    'a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 965400086, Size: 768x512, Version: sdgen 0.1.0',
  );
});

test('infotext: Clip skip only when > 1, ToMe keys only when applied', () => {
  const keys = (p: GenerationParams, applied: boolean) => infotextFields(p, { samplerName: 'Euler a', tomeApplied: applied }).map(([k]) => k);
  assert.ok(!keys(params({ clipSkip: 1 }), false).includes('Clip skip'));
  assert.ok(keys(params({ clipSkip: 2 }), false).includes('Clip skip'));
  // the pipeline records the effective max downsample ('auto' resolved from the UNet's blocks)
  const tome = { ...DEFAULT_TOME, ratio: 0.5, maxDownsample: 1 };
  assert.ok(!keys(params({ tome }), false).includes('Token merging ratio'), 'skipped ToMe writes nothing');
  const text = formatInfotext(params({ clipSkip: 2, tome }), { samplerName: 'Euler a', modelName: 'm', tomeApplied: true, version: 'sdgen 1' });
  assert.equal(
    text,
    'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model: m, Clip skip: 2, Token merging ratio: 0.5, ' +
      'ToMe sx: 2, ToMe sy: 2, ToMe max downsample: 1, ToMe rand: False, ToMe merged: attn, Version: sdgen 1',
  );
});

test('infotext: values with , : or newline are JSON-quoted, others are not', () => {
  assert.equal(quoteValue('plain value'), 'plain value');
  assert.equal(quoteValue('a,b'), '"a,b"');
  assert.equal(quoteValue('a: b'), '"a: b"');
  assert.equal(quoteValue('say "hi"\nthere'), '"say \\"hi\\"\\nthere"');
  const text = formatInfotext(params(), { samplerName: 'Euler a', modelName: 'my,model: v2' });
  assert.ok(text.endsWith('Model: "my,model: v2"'));
  assert.equal(parseInfotext(text).fields['Model'], 'my,model: v2');
});

test('parseInfotext: hand-written A1111 example', () => {
  const text =
    'masterpiece, (a castle:1.2) on a hill\nat dawn\nNegative prompt: lowres, bad anatomy\nugly\n' +
    'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 123, Size: 640x768, Model hash: 45dee52b, ' +
    'Model: "v1-5, pruned", Clip skip: 2, Token merging ratio: 0.3, Lora hashes: "a: 1, b: 2", Version: v1.9.4';
  const p = parseInfotext(text);
  assert.equal(p.prompt, 'masterpiece, (a castle:1.2) on a hill\nat dawn');
  assert.equal(p.negativePrompt, 'lowres, bad anatomy\nugly');
  assert.equal(p.fields['Steps'], '30');
  assert.equal(p.fields['Size-1'], '640');
  assert.equal(p.fields['Size-2'], '768');
  assert.equal(p.fields['Model'], 'v1-5, pruned');
  assert.equal(p.fields['Lora hashes'], 'a: 1, b: 2');
  assert.equal(p.fields['Version'], 'v1.9.4');
  const ip = infotextToParams(p);
  assert.equal(ip.samplerName, 'DPM++ 2M Karras');
  assert.equal(ip.cfg, 6.5);
  assert.equal(ip.width, 640);
  assert.equal(ip.height, 768);
  assert.equal(ip.clipSkip, 2);
  assert.equal(ip.tome.ratio, 0.3);
  assert.equal(ip.modelName, 'v1-5, pruned');
});

test('parseInfotext: a last line with fewer than 3 params is part of the prompt', () => {
  const p = parseInfotext('just a prompt\nwith style: oil');
  assert.equal(p.prompt, 'just a prompt\nwith style: oil');
  assert.deepEqual(p.fields, {});
});

test('infotext round trip', () => {
  const tome = { ...DEFAULT_TOME, ratio: 0.6, sx: 3, sy: 2, maxDownsample: 2, useRand: true, mergeCrossattn: true, mergeMlp: true };
  const src = params({ prompt: 'a "quoted", prompt: yes', negativePrompt: 'bad, worse', cfg: 4.25, seed: 7, clipSkip: 3, eta: 0.5, emphasis: false, tome });
  const ip = infotextToParams(parseInfotext(formatInfotext(src, { samplerName: 'Euler a', modelName: 'm', tomeApplied: true })));
  assert.equal(ip.prompt, src.prompt);
  assert.equal(ip.negativePrompt, src.negativePrompt);
  assert.deepEqual(
    [ip.steps, ip.samplerName, ip.cfg, ip.seed, ip.width, ip.height, ip.clipSkip, ip.eta, ip.emphasis],
    [20, 'Euler a', 4.25, 7, 512, 512, 3, 0.5, false],
  );
  assert.deepEqual(ip.tome, { ratio: 0.6, sx: 3, sy: 2, maxDownsample: 2, useRand: true, mergeAttn: true, mergeCrossattn: true, mergeMlp: true });
});

test('crc32: zlib and the fallback table agree with known values', () => {
  assert.equal(crc32Fallback(Buffer.from('123456789')), 0xcbf43926);
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  const data = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 131 + 7) & 255));
  assert.equal(crc32Fallback(data), crc32(data));
});

function rgb(w: number, h: number): Uint8Array {
  const a = new Uint8Array(w * h * 3);
  for (let i = 0; i < a.length; i++) a[i] = (i * 37) & 255;
  return a;
}

test('PNG: text chunks before the image data, valid CRCs, read back by sharp and by readPngText', async () => {
  const png = await encodeRgbPng(rgb(16, 8), 16, 8);
  const withText = insertPngText(png, [
    { keyword: 'parameters', text: 'a fox\nSteps: 4, Sampler: Euler a, CFG scale: 7' },
    { keyword: 'sdgen', text: '{"x":"ü ☃"}', international: true },
    { keyword: 'uni', text: 'snowman ☃' },
  ]);
  const chunks = readPngChunks(withText);
  assert.ok(chunks.every((c) => c.crcOk), 'every CRC valid');
  const types = chunks.map((c) => c.type);
  assert.equal(types[0], 'IHDR');
  assert.equal(types[types.length - 1], 'IEND');
  const firstIdat = types.indexOf('IDAT');
  assert.deepEqual(types.slice(firstIdat - 3, firstIdat), ['tEXt', 'iTXt', 'iTXt']);
  assert.deepEqual(pngTextMap(withText), { parameters: 'a fox\nSteps: 4, Sampler: Euler a, CFG scale: 7', sdgen: '{"x":"ü ☃"}', uni: 'snowman ☃' });
  const meta = await sharp(withText).metadata();
  const comments = Object.fromEntries((meta.comments ?? []).map((c) => [c.keyword, c.text]));
  assert.equal(comments['parameters'], 'a fox\nSteps: 4, Sampler: Euler a, CFG scale: 7');
  assert.equal(comments['sdgen'], '{"x":"ü ☃"}');
  // pixels unchanged
  const raw = await sharp(withText).raw().toBuffer();
  assert.deepEqual(new Uint8Array(raw), rgb(16, 8));
});

test('PNG: zTXt and compressed iTXt are read', async () => {
  const png = await encodeRgbPng(rgb(4, 4), 4, 4);
  const z = makeChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), zlib.deflateSync(Buffer.from('zipped text', 'latin1'))]));
  const i = makeChunk('iTXt', Buffer.concat([Buffer.from('Title\0\x01\0en\0\0', 'latin1'), zlib.deflateSync(Buffer.from('über', 'utf8'))]));
  const iend = png.length - 12; // after the image data: readPngText reads text chunks anywhere
  const buf = Buffer.concat([png.subarray(0, iend), z, i, png.subarray(iend)]);
  assert.deepEqual(readPngText(buf).map((e) => [e.keyword, e.text, e.chunk]), [
    ['Comment', 'zipped text', 'zTXt'],
    ['Title', 'über', 'iTXt'],
  ]);
});

test('PNG metadata: sdgen record and infotext, and --from options from each', async () => {
  const p = params({ prompt: 'château, ☃', negativePrompt: 'x', seed: 99, tome: { ...DEFAULT_TOME, ratio: 0.5 }, batchSize: 2, nIter: 3 });
  const rec: SdgenImageRecord = { sdgen: '0.1.0', params: p, model: 'tiny', tomeApplied: true };
  const png = await encodeImagePng(rgb(8, 8), 8, 8, rec, { samplerName: 'Euler a', version: 'sdgen 0.1.0' });
  const meta = metadataFromPng(png, 'x.png');
  assert.deepEqual(meta.sdgen, rec);
  assert.equal(meta.infotextParams?.prompt, 'château, ☃');
  assert.equal(meta.infotextParams?.tome.ratio, 0.5);
  const from = optionsFromMetadata(meta);
  assert.equal(from.prompt, 'château, ☃');
  assert.equal(from.options.seed, 99);
  assert.equal(from.options.batchSize, 1, 'regenerates the one image');
  assert.equal(from.options.nIter, 1);
  assert.equal(from.options.tome, 0.5);
  assert.equal(from.options.scheduler, 'euler_a');
  // infotext only (an A1111 image)
  const plain = insertPngText(await encodeRgbPng(rgb(8, 8), 8, 8), [
    { keyword: 'parameters', text: 'a dog\nNegative prompt: cat\nSteps: 12, Sampler: DPM++ 2M, CFG scale: 5, Seed: 3, Size: 8x16, Model: sd15' },
  ]);
  const f2 = optionsFromMetadata(metadataFromPng(plain, 'a.png'));
  assert.equal(f2.prompt, 'a dog');
  assert.deepEqual([f2.options.negativePrompt, f2.options.steps, f2.options.scheduler, f2.options.cfg, f2.options.seed, f2.options.width, f2.options.height],
    ['cat', 12, 'DPM++ 2M', 5, 3, 8, 16]);
  assert.equal(f2.options.tome, 0);
  assert.equal(f2.modelName, 'sd15');
  // added chunks keep the PNG valid
  assert.ok(readPngChunks(addImageMetadata(await encodeRgbPng(rgb(2, 2), 2, 2), rec, {})).every((c) => c.crcOk));
  assert.throws(() => metadataFromPng(Buffer.from('not a png'), 'b.png'), /not a PNG/);
});
