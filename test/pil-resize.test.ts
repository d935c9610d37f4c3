/**
 * src/image/pil-resize.ts against Pillow itself (test/fixtures/pil-resize, written by
 * tools/pil-resize-refs.py with Pillow 9.4.0): every filter, up- and downscaling, mixed axes, L,
 * RGB and RGBA (premultiplied) pictures must match byte for byte. Plus the size steps of
 * A1111's pixel upscalers, derived by hand from its Upscaler.upscale / resize_image.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { FIXTURES_DIR } from './helpers.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import sharp from 'sharp';
import { loadInitImage, loadMask } from '../src/image/init-image.js';
import { toGray } from '../src/image/mask.js';
import { a1111UpscaleSteps, axisCoefficients, nearestIndices, resizeU8, type PilFilter } from '../src/image/pil-resize.js';

const DIR = path.join(FIXTURES_DIR, 'pil-resize');
interface Case { mode: string; channels: number; width: number; height: number; out_width: number; out_height: number; filter: PilFilter; source: string; file: string }
const manifest = JSON.parse(readFileSync(path.join(DIR, 'manifest.json'), 'utf8')) as { cases: Case[] };
const u8 = (f: string) => new Uint8Array(readFileSync(path.join(DIR, f)));

describe('Pillow Image.resize, byte for byte', () => {
  test('case count: 24 RGB (6 sizes × 4 filters), 2 L, 4 RGBA', () => {
    assert.equal(manifest.cases.length, 30);
    assert.deepEqual(['RGB', 'L', 'RGBA'].map((m) => manifest.cases.filter((c) => c.mode === m).length), [24, 2, 4]);
  });
  for (const c of manifest.cases) {
    test(`${c.mode} ${c.width}×${c.height} → ${c.out_width}×${c.out_height} ${c.filter}`, () => {
      const got = resizeU8(u8(c.source), c.width, c.height, c.channels, c.out_width, c.out_height, c.filter);
      const want = u8(c.file);
      assert.equal(got.length, want.length);
      let diff = 0;
      for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) diff++;
      assert.equal(diff, 0, `${diff} of ${got.length} bytes differ`);
    });
  }
});

describe('Pillow resize pieces, by hand', () => {
  test('Lanczos ×2 upscale: 6 taps per output, fixed-point weights summing to 2^22', () => {
    const c = axisCoefficients(10, 20, 'lanczos');
    // output 5: centre 2.75, taps x in [trunc(0.25), trunc(6.25)) = 0…5
    assert.equal(c.first[5], 0);
    assert.equal(c.count[5], 6);
    let sum = 0;
    for (let x = 0; x < c.count[5]!; x++) sum += c.weights[5 * c.ksize + x]!;
    assert.ok(Math.abs(sum - 2 ** 22) <= 3, `${sum}`);
    // output 0 (centre 0.25) is clamped at the border: taps 0…3
    assert.deepEqual([c.first[0], c.count[0]], [0, 3]);
  });
  test('nearest reads trunc((i + ½)·in/out)', () => {
    assert.deepEqual(Array.from(nearestIndices(3, 6)), [0, 0, 1, 1, 2, 2]);
    assert.deepEqual(Array.from(nearestIndices(3, 5)), [0, 0, 1, 2, 2]);
    assert.deepEqual(Array.from(nearestIndices(6, 3)), [1, 3, 5]);
  });
  test('the same size is a copy', () => {
    const src = Uint8Array.from([1, 2, 3, 4, 5, 6]);
    const out = resizeU8(src, 2, 1, 3, 2, 1, 'lanczos');
    assert.deepEqual(out, src);
    assert.notEqual(out, src);
  });
});

describe("A1111's pixel upscaler size steps", () => {
  test('×2: one resize with the upscaler\'s own filter', () => {
    assert.deepEqual(a1111UpscaleSteps({ width: 512, height: 512 }, { width: 1024, height: 1024 }, 'Nearest'), [{ width: 1024, height: 1024, filter: 'nearest' }]);
    assert.deepEqual(a1111UpscaleSteps({ width: 512, height: 768 }, { width: 1024, height: 1536 }, 'Lanczos'), [{ width: 1024, height: 1536, filter: 'lanczos' }]);
  });
  test('another aspect: scale = max of the two, then Lanczos to the asked size', () => {
    // 512×512 → 1024×768: s = 2, nearest to 1024×1024 (a multiple of 8), then Lanczos to 1024×768
    assert.deepEqual(a1111UpscaleSteps({ width: 512, height: 512 }, { width: 1024, height: 768 }, 'Nearest'), [
      { width: 1024, height: 1024, filter: 'nearest' },
      { width: 1024, height: 768, filter: 'lanczos' },
    ]);
  });
  test('a size that is not a multiple of 8 after scaling: Lanczos to the multiple of 8 first', () => {
    // 100×60 → 152×88: s = max(1.52, 1.4667) = 1.52; nearest to 152×91; dest 152×(91.2//8·8 = 88)
    assert.deepEqual(a1111UpscaleSteps({ width: 100, height: 60 }, { width: 152, height: 88 }, 'Nearest'), [
      { width: 152, height: 91, filter: 'nearest' },
      { width: 152, height: 88, filter: 'lanczos' },
    ]);
  });
  test('no upscale (s ≤ 1): one Lanczos resize', () => {
    assert.deepEqual(a1111UpscaleSteps({ width: 512, height: 512 }, { width: 256, height: 512 }, 'Nearest'), [{ width: 256, height: 512, filter: 'lanczos' }]);
  });
});

describe('init pictures and masks of another size are resized as Pillow resizes them', () => {
  const find = (mode: string, ow: number, oh: number, filter: PilFilter) => {
    const c = manifest.cases.find((k) => k.mode === mode && k.out_width === ow && k.out_height === oh && k.filter === filter);
    assert.ok(c, `${mode} ${ow}x${oh} ${filter}`);
    return c;
  };
  test('an RGB init picture (PNG) → the Lanczos output; an RGBA mask → grayscale of the premultiplied Lanczos output', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-pil-'));
    try {
      const rgb = find('RGB', 74, 58, 'lanczos');
      const initFile = path.join(tmp, 'init.png');
      writeFileSync(initFile, await sharp(Buffer.from(u8(rgb.source)), { raw: { width: rgb.width, height: rgb.height, channels: 3 } }).png().toBuffer());
      const init = await loadInitImage(initFile, 74, 58);
      assert.equal(init.resized, true);
      assert.deepEqual(init.rgb, u8(rgb.file));
      const rgba = find('RGBA', 64, 64, 'lanczos');
      const maskFile = path.join(tmp, 'mask.png');
      writeFileSync(maskFile, await sharp(Buffer.from(u8(rgba.source)), { raw: { width: 32, height: 32, channels: 4 } }).png().toBuffer());
      const mask = await loadMask(maskFile, 64, 64);
      assert.deepEqual(mask.gray, toGray(u8(rgba.file), 64, 64, 4));
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
