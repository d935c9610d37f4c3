/**
 * LoRA and textual-inversion support (src/lora): the safetensors reader against hand-made and
 * hostile files, key parsing and structural mapping against the fixture manifest
 * (test/fixtures/lora: kohya files for tiny-sd1 with diffusers 0.27.2's merged outputs), merged
 * weights against an independent computation here, and the cached variants run by onnxruntime
 * against diffusers' merged UNet output and prompt embeddings.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import ort from 'onnxruntime-node';
import { UsageError } from '../src/errors.js';
import { embeddingsUsed, findTokenEmbedding, loadEmbedding, replaceIdRuns, withEmbeddings } from '../src/lora/embeddings.js';
import { a1111LoraShortHash, safetensorsHashes } from '../src/lora/hash.js';
import { parseLoraKeys, type TensorInfo } from '../src/lora/keys.js';
import { mapLoraModules, modulePathOfNode } from '../src/lora/map.js';
import { mergeLoras, openLora } from '../src/lora/merge.js';
import { SafetensorsFile } from '../src/lora/safetensors.js';
import { getLoraVariant, LORA_WEIGHTS_FILE } from '../src/lora/variant.js';
import { loadModel, readTensorBytes } from '../src/onnx/model-io.js';
import { encodeModel } from '../src/onnx/proto.js';
import { DataType, type ModelProto, type TensorProto } from '../src/onnx/types.js';
import { loadTokenizer } from '../src/text/load.js';
import { fx, maxAbsDiff, diffusersRunParams, type DiffusersRunArgs, writeSafetensors, f32, type WTensor } from './helpers.js';

// ---------------------------------------------------------------------------------------------
// Fixture access and an independent safetensors reader/writer (not the code under test)

interface ManifestModule {
  kohya: string;
  module_type: string;
  target: 'unet' | 'text_encoder';
  module: string;
  diffusers_key_down: string;
  diffusers_key_up: string;
  peft_key_down: string;
  peft_key_up: string;
  alpha: number | null;
  rank: number;
  weight_shape: number[];
  onnx: { model: string; node: string; op: string; initializer: string; initializer_dims: number[] };
}
interface ManifestLora {
  id: string;
  file: string;
  sha256: string;
  header_json_bytes: number;
  dtype: string;
  rank: number;
  metadata: Record<string, string>;
  num_modules: number;
  num_modules_unet: number;
  num_modules_text_encoder: number;
  num_tensors: number;
  num_alpha_keys: number;
  modules: ManifestModule[];
}
interface TensorRef { dtype: string; shape: number[]; offset: number; nbytes: number }
interface ManifestCase {
  id: string;
  bin: string;
  loras: { id: string; file: string; scale: number }[];
  do_classifier_free_guidance: boolean;
  tensors: Record<string, TensorRef>;
}
const manifest = JSON.parse(readFileSync(fx('lora/manifest.json'), 'utf8')) as { loras: ManifestLora[]; cases: ManifestCase[] };
const UNET = fx('tiny-sd1/unet/model.onnx');
const TEXT = fx('tiny-sd1/text_encoder/model.onnx');

function caseTensor(c: ManifestCase, name: string): Float32Array | BigInt64Array | Float64Array {
  const buf = readFileSync(fx(`lora/${c.bin}`));
  const t = c.tensors[name]!;
  const bytes = new Uint8Array(buf.subarray(t.offset, t.offset + t.nbytes));
  if (t.dtype === 'float32') return new Float32Array(bytes.buffer, bytes.byteOffset, t.nbytes / 4);
  if (t.dtype === 'float64') return new Float64Array(bytes.buffer, bytes.byteOffset, t.nbytes / 8);
  if (t.dtype === 'int64') return new BigInt64Array(bytes.buffer, bytes.byteOffset, t.nbytes / 8);
  throw new Error(t.dtype);
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Independent read of a safetensors file: header and float64 values of each tensor. */
function readAll(file: string): { header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; values: (k: string) => Float64Array } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  delete header.__metadata__;
  return {
    header,
    values: (k) => {
      const e = header[k];
      const [b, en] = e.data_offsets;
      const data = buf.subarray(8 + n + b, 8 + n + en);
      if (e.dtype === 'F32') return Float64Array.from({ length: data.length / 4 }, (_, i) => data.readFloatLE(4 * i));
      if (e.dtype === 'F16') return Float64Array.from({ length: data.length / 2 }, (_, i) => halfToFloat(data.readUInt16LE(2 * i)));
      throw new Error(e.dtype);
    },
  };
}


/** Deterministic pseudo-random values in [-1, 1). */
function rand(n: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'sdgen-lora-test-'));
}

/** Asserts a promise rejects with a one-line UsageError matching `re`. */
async function rejectsOneLine(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof UsageError, `UsageError expected, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

function tensorsOf(file: SafetensorsFile): Map<string, TensorInfo> {
  return file.tensors as Map<string, TensorInfo>;
}

// ---------------------------------------------------------------------------------------------

describe('safetensors reader', () => {
  test('the fixture LoRAs: header size, tensor count, metadata and values as written', async () => {
    assert.equal(manifest.loras.length, 2);
    for (const l of manifest.loras) {
      const f = await SafetensorsFile.open(fx(`lora/${l.file}`));
      try {
        assert.equal(f.header.headerBytes, l.header_json_bytes);
        assert.equal(f.tensors.size, l.num_tensors);
        assert.deepEqual(f.metadata, l.metadata);
        const ref = readAll(fx(`lora/${l.file}`));
        let checked = 0;
        for (const [k, e] of f.tensors) {
          assert.equal(e.dtype, l.dtype);
          assert.deepEqual(e.shape, ref.header[k]!.shape);
          assert.deepEqual(Array.from(await f.readFloats(k)), Array.from(ref.values(k)));
          checked++;
        }
        assert.equal(checked, l.num_tensors);
      } finally {
        await f.close();
      }
    }
  });

  test('F16, BF16 and F32 decode exactly', async () => {
    const dir = tmp();
    const file = path.join(dir, 'x.safetensors');
    // 1.5 = 0x3e00 (half) = 0x3fc0 (bfloat16); -2 = 0xc000 / 0xc000; 2^-24 = half subnormal 0x0001
    writeSafetensors(file, {
      h: { dtype: 'F16', shape: [3], data: new Uint8Array(Uint16Array.of(0x3e00, 0xc000, 0x0001).buffer) },
      b: { dtype: 'BF16', shape: [2], data: new Uint8Array(Uint16Array.of(0x3fc0, 0xc000).buffer) },
      f: f32([1], [0.1]),
    });
    const f = await SafetensorsFile.open(file);
    assert.deepEqual(Array.from(await f.readFloats('h')), [1.5, -2, 2 ** -24]);
    assert.deepEqual(Array.from(await f.readFloats('b')), [1.5, -2]);
    assert.deepEqual(Array.from(await f.readFloats('f')), [Math.fround(0.1)]);
    await f.close();
  });

  test('hostile files fail with one line each', async () => {
    const dir = tmp();
    const good = readFileSync(fx('lora/unet-attn_r4_a2_f32.safetensors'));
    const cases: [string, Buffer | (() => void), RegExp][] = [
      ['short', Buffer.from([1, 2, 3]), /shorter than its 8-byte header length/],
      ['truncated-header', good.subarray(0, 1000), /truncated safetensors file \(header of 20592 bytes/],
      ['truncated-data', good.subarray(0, good.length - 100), /lies outside the file's .* data bytes \(truncated file\?\)/],
      ['huge-length', Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), Buffer.alloc(16)]), /header length .* is out of range/],
      ['not-json', Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{{{{')]), /header is not valid JSON/],
    ];
    let n = 0;
    for (const [name, content, re] of cases) {
      const file = path.join(dir, `${name}.safetensors`);
      writeFileSync(file, content as Buffer);
      await rejectsOneLine(SafetensorsFile.open(file), re);
      n++;
    }
    const file = path.join(dir, 'bad.safetensors');
    writeSafetensors(file, { w: { dtype: 'F33', shape: [1], data: new Uint8Array(4) } });
    await rejectsOneLine(SafetensorsFile.open(file), /tensor "w" has an unknown dtype "F33"/);
    writeSafetensors(file, { w: { dtype: 'F32', shape: [2, 3], data: new Uint8Array(20) } });
    await rejectsOneLine(SafetensorsFile.open(file), /F32 \[2, 3\] needs 24 bytes but has 20/);
    writeSafetensors(file, { w: { dtype: 'F32', shape: [-1], data: new Uint8Array(4) } });
    await rejectsOneLine(SafetensorsFile.open(file), /invalid shape \[-1\]/);
    writeSafetensors(file, { w: { dtype: 'I32', shape: [1], data: new Uint8Array(4) } });
    const f = await SafetensorsFile.open(file);
    await rejectsOneLine(f.readFloats('w'), /is I32, not a float type/);
    await f.close();
    await rejectsOneLine(SafetensorsFile.open(path.join(dir, 'missing.safetensors')), /not found/);
    assert.equal(n, 5);
  });
});

describe('LoRA keys', () => {
  test('kohya fixture files group into the manifest modules (alpha absent where the manifest says)', async () => {
    for (const l of manifest.loras) {
      const f = await SafetensorsFile.open(fx(`lora/${l.file}`));
      const p = parseLoraKeys(tensorsOf(f), l.file);
      await f.close();
      assert.equal(p.format, 'kohya');
      assert.equal(p.modules.length, l.num_modules);
      assert.equal(p.modules.filter((m) => m.target === 'unet').length, l.num_modules_unet);
      assert.equal(p.modules.filter((m) => m.target === 'text_encoder').length, l.num_modules_text_encoder);
      assert.equal(p.modules.filter((m) => m.alpha !== undefined).length, l.num_alpha_keys);
      const byPath = new Map(p.modules.map((m) => [m.path, m]));
      for (const mm of l.modules) {
        const m = byPath.get(mm.kohya.replace(/^lora_(unet|te)_/, ''))!;
        assert.ok(m, mm.kohya);
        assert.equal(m.rank, mm.rank);
        assert.equal(m.alpha !== undefined, mm.alpha !== null, mm.kohya);
        assert.equal(m.kind, mm.module_type === 'conv1x1' ? 'conv' : 'linear');
      }
    }
  });

  test('the same modules under diffusers and PEFT names parse to the dotted module paths', () => {
    const l = manifest.loras.find((x) => x.id === 'full')!;
    for (const style of ['diffusers', 'peft'] as const) {
      const tensors = new Map<string, TensorInfo>();
      for (const m of l.modules) {
        const [down, up] = style === 'diffusers' ? [m.diffusers_key_down, m.diffusers_key_up] : [(m.target === 'unet' ? '' : 'text_encoder.') + m.peft_key_down, (m.target === 'unet' ? '' : 'text_encoder.') + m.peft_key_up];
        const isConv = m.module_type === 'conv1x1';
        tensors.set(down, { dtype: 'F16', shape: isConv ? [m.rank, m.weight_shape[1]!, 1, 1] : [m.rank, m.weight_shape[1]!] });
        tensors.set(up, { dtype: 'F16', shape: isConv ? [m.weight_shape[0]!, m.rank, 1, 1] : [m.weight_shape[0]!, m.rank] });
      }
      const p = parseLoraKeys(tensors, style);
      assert.equal(p.format, style);
      assert.equal(p.modules.length, l.num_modules);
      const got = new Set(p.modules.map((m) => `${m.target}:${m.path}`));
      for (const m of l.modules) assert.ok(got.has(`${m.target}:${m.module}`), `${style}: ${m.module}`);
    }
  });

  test('other network types and unknown keys are refused by name', () => {
    const t = (keys: string[]): Map<string, TensorInfo> => new Map(keys.map((k) => [k, { dtype: 'F32', shape: [4, 4] }]));
    const cases: [string[], RegExp][] = [
      [['lora_unet_mid_block_attentions_0_proj_in.hada_w1_a', 'lora_unet_mid_block_attentions_0_proj_in.hada_w1_b'], /LoHa/],
      [['lora_unet_mid_block_attentions_0_proj_in.lokr_w1', 'lora_unet_mid_block_attentions_0_proj_in.lokr_w2'], /LoKr/],
      [['lora_unet_x.lora_down.weight', 'lora_unet_x.lora_up.weight', 'lora_unet_x.dora_scale'], /DoRA/],
      [['lora_unet_x.diff'], /full weight difference/],
      [['model.diffusion_model.input_blocks.0.0.weight'], /unrecognized key "model\.diffusion_model/],
      [['lora_unet_x.lora_down.weight'], /has a down weight but no up weight/],
    ];
    for (const [keys, re] of cases) {
      assert.throws(() => parseLoraKeys(t(keys), 'f'), (e: unknown) => e instanceof UsageError && re.test(e.message) && !e.message.includes('\n'));
    }
    assert.equal(cases.length, 6);
  });

  test('a LoCon 3×3 convolution module: down [r, in, 3, 3], up [out, r, 1, 1]', () => {
    const p = parseLoraKeys(new Map<string, TensorInfo>([
      ['lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight', { dtype: 'F32', shape: [2, 3, 3, 3] }],
      ['lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight', { dtype: 'F32', shape: [5, 2, 1, 1] }],
    ]), 'f');
    assert.equal(p.modules.length, 1);
    assert.deepEqual({ kind: p.modules[0]!.kind, rank: p.modules[0]!.rank, inShape: p.modules[0]!.inShape, out: p.modules[0]!.out }, { kind: 'conv', rank: 2, inShape: [3, 3, 3], out: 5 });
  });
});

describe('LoRA mapping onto the graphs', () => {
  test('node names give module paths', () => {
    assert.equal(modulePathOfNode('/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_out.0/MatMul'), 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0');
    assert.equal(modulePathOfNode('/text_model/encoder/layers.2/mlp/fc1/MatMul'), 'text_model.encoder.layers.2.mlp.fc1');
    assert.equal(modulePathOfNode('MatMul_12'), undefined);
  });

  test('every fixture module maps onto the node, op and initializer the manifest names', async () => {
    const models = { unet: await loadModel(UNET, { externalData: 'lazy' }), text_encoder: await loadModel(TEXT, { externalData: 'lazy' }) };
    let mapped = 0;
    for (const l of manifest.loras) {
      const f = await SafetensorsFile.open(fx(`lora/${l.file}`));
      const p = parseLoraKeys(tensorsOf(f), l.file);
      await f.close();
      for (const target of ['unet', 'text_encoder'] as const) {
        const r = mapLoraModules(models[target].graph!, p.modules, [target], l.file);
        const expected = l.modules.filter((m) => m.target === target);
        assert.equal(r.unmatched.length, 0);
        assert.equal(r.matched.length, expected.length);
        const byKohya = new Map(r.matched.map((x) => [x.module.id, x.site]));
        for (const m of expected) {
          const site = byKohya.get(m.kohya.replace(/^lora_(unet|te)_/, ''))!;
          assert.equal(site.node.name, m.onnx.node);
          assert.equal(site.op, m.onnx.op);
          assert.equal(site.initializer.name, m.onnx.initializer);
          assert.deepEqual(site.initializer.dims.map(Number), m.onnx.initializer_dims);
          mapped++;
        }
      }
    }
    assert.equal(mapped, 48 + 90);
  });

  test('a LoRA for another architecture, and a module of the wrong shape, are errors', async () => {
    const dir = tmp();
    const other = path.join(dir, 'sdxl-like.safetensors');
    const tensors: Record<string, WTensor> = {};
    // SDXL's deep transformers (SGM names): tiny-sd1 has one transformer block per attention
    for (let i = 0; i < 4; i++) {
      const base = `lora_unet_input_blocks_${i}_1_transformer_blocks_9_attn1_to_q`;
      tensors[`${base}.lora_down.weight`] = f32([2, 32], rand(64, i));
      tensors[`${base}.lora_up.weight`] = f32([32, 2], rand(64, i + 9));
    }
    tensors['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight'] = f32([2, 32], rand(64, 1));
    tensors['lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight'] = f32([32, 2], rand(64, 2));
    writeSafetensors(other, tensors);
    const unet = await loadModel(UNET, { externalData: 'lazy' });
    const lo = await openLora(other, 'sdxl-like');
    await rejectsOneLine(mergeLoras(unet, [{ lora: lo, scale: 1 }], ['unet'], 'the UNet'), /only 1 of its 5 modules for the UNet exist in this model .* the LoRA is for another architecture/);
    await lo.file.close();

    const wrong = path.join(dir, 'wrong-shape.safetensors');
    writeSafetensors(wrong, {
      'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight': f32([2, 64], rand(128, 1)),
      'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight': f32([32, 2], rand(64, 2)),
    });
    const lw = await openLora(wrong, 'wrong');
    await rejectsOneLine(mergeLoras(unet, [{ lora: lw, scale: 1 }], ['unet'], 'the UNet'), /does not fit the model: its LoRA is \[32, 64\] but .*attn1\/to_q\/MatMul \(MatMul\) has a weight of \[32, 32\]/);
    await lw.file.close();
  });
});

/** W + Σ scale·alpha/rank·(up@down) in float64 from the file, in the graph's layout. */
function expectedWeight(base: Float64Array, file: string, kohya: string, layout: 'in_out' | 'out_in', out: number, inFlat: number, scale: number, alpha: number | null, rank: number): Float64Array {
  const r = readAll(file);
  const up = r.values(`${kohya}.lora_up.weight`);
  const down = r.values(`${kohya}.lora_down.weight`);
  const ratio = (alpha ?? rank) / rank;
  const w = Float64Array.from(base);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inFlat; i++) {
      let s = 0;
      for (let k = 0; k < rank; k++) s += up[o * rank + k]! * down[k * inFlat + i]!;
      const idx = layout === 'in_out' ? i * out + o : o * inFlat + i;
      w[idx] = w[idx]! + scale * ratio * s;
    }
  }
  return w;
}

async function floatsOf(t: TensorProto): Promise<Float32Array> {
  const b = await readTensorBytes(t);
  const c = new Uint8Array(b!);
  return new Float32Array(c.buffer, 0, c.length / 4);
}

describe('merging', () => {
  test('merged weights equal W + scale·alpha/rank·up·down computed independently (both fixtures, both models)', async () => {
    let checked = 0;
    for (const [id, scale] of [['unet-attn', 1], ['full', 0.7]] as const) {
      const l = manifest.loras.find((x) => x.id === id)!;
      const file = fx(`lora/${l.file}`);
      for (const [target, modelPath] of [['unet', UNET], ['text_encoder', TEXT]] as const) {
        const base = await loadModel(modelPath, { externalData: 'lazy' });
        const baseW = new Map<string, Float32Array>();
        for (const t of base.graph!.initializer) if (t.dataType === DataType.FLOAT) baseW.set(t.name!, Float32Array.from(await floatsOf(t)));
        const lora = await openLora(file, id);
        const r = await mergeLoras(base, [{ lora, scale }], [target], target);
        await lora.file.close();
        const mods = l.modules.filter((m) => m.target === target);
        assert.equal(r.changed.length, mods.length);
        const byName = new Map(base.graph!.initializer.map((t) => [t.name!, t]));
        for (const m of mods) {
          const t = byName.get(m.onnx.initializer)!;
          const out = m.weight_shape[0]!;
          const inFlat = m.weight_shape[1]!;
          const exp = expectedWeight(Float64Array.from(baseW.get(m.onnx.initializer)!), file, m.kohya, m.onnx.op === 'MatMul' ? 'in_out' : 'out_in', out, inFlat, scale, m.alpha, m.rank);
          const got = await floatsOf(t);
          const d = maxAbsDiff(got, exp);
          assert.ok(d < 2e-6, `${m.kohya}: ${d}`);
          checked++;
        }
      }
    }
    assert.equal(checked, 48 + 90);
  });

  test('scale 0 changes nothing; a weight shared by two nodes is copied for the LoRA\'d one; float16 stays float16', async () => {
    // MatMul X·W twice on one shared fp16 W [4, 3] (= to_q's [in, out]); conv LoCon on a 3×3 Conv
    const W = rand(12, 5);
    const C = rand(3 * 2 * 9, 6);
    const half = (a: number[]): Uint8Array => new Uint8Array(Uint16Array.from(a, (x) => {
      // float16 bits by search over the exactly representable values near x (test-side, slow but independent)
      const f = new Float32Array([x]);
      const b = new Uint32Array(f.buffer)[0]!;
      const e = ((b >>> 23) & 0xff) - 127 + 15;
      const m = Math.round((Math.abs(x) / 2 ** (e - 15) - 1) * 1024);
      return (x < 0 ? 0x8000 : 0) | ((m === 1024 ? e + 1 : e) << 10) | (m === 1024 ? 0 : m);
    }).buffer);
    const model: ModelProto = {
      irVersion: 8, opsetImport: [{ domain: '', version: 14 }],
      graph: {
        name: 'g',
        node: [
          { name: '/attn1/to_q/MatMul', opType: 'MatMul', input: ['x', 'W'], output: ['q'], attribute: [] },
          { name: '/attn1/to_k/MatMul', opType: 'MatMul', input: ['x', 'W'], output: ['k'], attribute: [] },
          { name: '/resnets.0/conv1/Conv', opType: 'Conv', input: ['img', 'resnets.0.conv1.weight'], output: ['c'], attribute: [] },
        ],
        initializer: [
          { name: 'W', dataType: DataType.FLOAT16, dims: [4, 3], rawData: half(W) },
          { name: 'resnets.0.conv1.weight', dataType: DataType.FLOAT, dims: [3, 2, 3, 3], rawData: new Uint8Array(Float32Array.from(C).buffer) },
        ],
        input: [], output: [], valueInfo: [],
      },
    };
    const dir = tmp();
    const file = path.join(dir, 'l.safetensors');
    const qDown = rand(8, 7);
    const qUp = rand(6, 8);
    const cDown = rand(2 * 2 * 9, 9);
    const cUp = rand(3 * 2, 10);
    writeSafetensors(file, {
      'lora_unet_attn1_to_q.lora_down.weight': f32([2, 4], qDown),
      'lora_unet_attn1_to_q.lora_up.weight': f32([3, 2], qUp),
      'lora_unet_attn1_to_q.alpha': f32([], [1]),
      'lora_unet_resnets_0_conv1.lora_down.weight': f32([2, 2, 3, 3], cDown),
      'lora_unet_resnets_0_conv1.lora_up.weight': f32([3, 2, 1, 1], cUp),
    });
    const lora = await openLora(file, 'l');
    const copy = structuredClone(model);
    const zero = await mergeLoras(copy, [{ lora, scale: 0 }], ['unet'], 'm');
    assert.equal(zero.changed.length, 0);
    assert.deepEqual(encodeModel(copy), encodeModel(model));

    const r = await mergeLoras(model, [{ lora, scale: 2 }], ['unet'], 'm');
    await lora.file.close();
    assert.equal(r.changed.length, 2);
    const g = model.graph!;
    assert.equal(g.node[1]!.input[1], 'W', 'to_k keeps the base weight');
    const qName = g.node[0]!.input[1]!;
    assert.notEqual(qName, 'W');
    const q = g.initializer.find((t) => t.name === qName)!;
    assert.equal(q.dataType, DataType.FLOAT16);
    const qBits = new Uint16Array(new Uint8Array(q.rawData!).buffer);
    const wBase = Array.from(new Uint16Array(half(W).buffer), halfToFloat);
    for (let i = 0; i < 4; i++) {
      for (let o = 0; o < 3; o++) {
        const delta = 2 * 0.5 * (qUp[o * 2]! * Math.fround(qDown[i]!) + qUp[o * 2 + 1]! * Math.fround(qDown[4 + i]!));
        const exact = wBase[i * 3 + o]! + delta;
        const got = halfToFloat(qBits[i * 3 + o]!);
        // nearest float16: within half an ulp (2^-11 relative) plus float32 rounding
        assert.ok(Math.abs(got - exact) <= Math.abs(exact) * 2 ** -11 + 1e-6, `q[${i},${o}] ${got} vs ${exact}`);
      }
    }
    const conv = await floatsOf(g.initializer.find((t) => t.name === 'resnets.0.conv1.weight')!);
    for (let o = 0; o < 3; o++) {
      for (let j = 0; j < 18; j++) {
        const exact = Math.fround(C[o * 18 + j]!) + 2 * (Math.fround(cUp[o * 2]!) * Math.fround(cDown[j]!) + Math.fround(cUp[o * 2 + 1]!) * Math.fround(cDown[18 + j]!));
        assert.ok(Math.abs(conv[o * 18 + j]! - exact) < 1e-6, `conv ${o},${j}`);
      }
    }
  });
});

/** Runs a model file on the given feeds; returns the named output. */
async function runFile(file: string, feeds: Record<string, ort.Tensor>, output: string): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
  try {
    return (await s.run(feeds))[output]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

describe('cached variants against diffusers', () => {
  test('UNet variants reproduce diffusers\' merged UNet output; text encoder variants its prompt embeddings', async () => {
    const cacheDir = tmp();
    assert.equal(manifest.cases.length, 2);
    let n = 0;
    for (const c of manifest.cases) {
      const loras = c.loras.map((l) => ({ path: fx(`lora/${l.file}`), scale: l.scale, name: l.id }));
      const v = await getLoraVariant(UNET, { cacheDir, target: 'unet', loras });
      const lm = manifest.loras.find((x) => x.id === c.loras[0]!.id)!;
      assert.equal(v.changed, lm.num_modules_unet);
      assert.equal(v.cached, false);
      assert.deepEqual(v.reports.map((r) => [r.matched, r.total]), [[lm.num_modules_unet, lm.num_modules_unet]]);
      // only the changed weights are new bytes: the base data file is linked
      const entry = path.dirname(v.path);
      const weightsBytes = lm.modules.filter((m) => m.target === 'unet').reduce((s, m) => s + m.weight_shape.reduce((a, b) => a * b, 1) * 4, 0);
      assert.ok(statSync(path.join(entry, LORA_WEIGHTS_FILE)).size < weightsBytes + 64 * lm.num_modules_unet);
      assert.equal(statSync(path.join(entry, 'weights.pb')).ino, statSync(fx('tiny-sd1/unet/weights.pb')).ino);

      const sample = caseTensor(c, 'unet_step0_sample') as Float32Array;
      const t = (caseTensor(c, 'unet_step0_timestep') as Float64Array)[0]!;
      const condE = caseTensor(c, 'prompt_embeds_cond') as Float32Array;
      const emb = c.do_classifier_free_guidance ? Float32Array.from([...caseTensor(c, 'prompt_embeds_uncond') as Float32Array, ...condE]) : condE;
      const b = c.tensors['unet_step0_sample']!.shape[0]!;
      const [, , h, w] = c.tensors['unet_step0_sample']!.shape as [number, number, number, number];
      const out = await runFile(v.path, {
        sample: new ort.Tensor('float32', sample, [b, 4, h, w]),
        timestep: new ort.Tensor('float32', new Float32Array(b).fill(t), [b]),
        encoder_hidden_states: new ort.Tensor('float32', emb, [b, 77, 32]),
      }, 'out_sample');
      const ref = caseTensor(c, 'unet_step0_out') as Float32Array;
      const d = maxAbsDiff(out, ref);
      assert.ok(d < 2e-4, `${c.id}: UNet output differs by ${d}`);
      const again = await getLoraVariant(UNET, { cacheDir, target: 'unet', loras });
      assert.deepEqual([again.cached, again.path, again.changed], [true, v.path, v.changed]);

      const te = await getLoraVariant(TEXT, { cacheDir, target: 'text_encoder', loras });
      assert.equal(te.changed, lm.num_modules_text_encoder);
      const ids = Int32Array.from(caseTensor(c, 'input_ids_cond') as BigInt64Array, Number);
      const teOut = await runFile(te.path, { input_ids: new ort.Tensor('int32', ids, [1, 77]) }, 'last_hidden_state');
      const de = maxAbsDiff(teOut, condE);
      assert.ok(de < 1e-4, `${c.id}: prompt embeddings differ by ${de}`);
      if (te.changed > 0) {
        // an inline text encoder: the variant links the base file rather than copying it
        assert.ok(statSync(te.path).size < 200_000, `variant graph ${statSync(te.path).size} bytes`);
      } else {
        assert.equal(te.path, TEXT);
      }
      n++;
    }
    assert.equal(n, 2);
  });

  test('scale 0 is the base model itself; a bad LoRA leaves nothing in the cache', async () => {
    const cacheDir = tmp();
    const zero = await getLoraVariant(UNET, { cacheDir, target: 'unet', loras: [{ path: fx('lora/full_r8_a8_f16.safetensors'), scale: 0 }] });
    assert.equal(zero.path, UNET);
    const dir = tmp();
    const wrong = path.join(dir, 'wrong.safetensors');
    writeSafetensors(wrong, {
      'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight': f32([2, 32], rand(64, 1)),
      'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight': f32([64, 2], rand(128, 2)),
    });
    await rejectsOneLine(getLoraVariant(UNET, { cacheDir, target: 'unet', loras: [{ path: wrong, scale: 1 }] }), /does not fit the model/);
    assert.deepEqual(existsSync(path.join(cacheDir, 'lora')) ? readdirSync(path.join(cacheDir, 'lora')) : [], []);
    const trunc = path.join(dir, 'trunc.safetensors');
    writeFileSync(trunc, readFileSync(fx('lora/unet-attn_r4_a2_f32.safetensors')).subarray(0, 5000));
    await rejectsOneLine(getLoraVariant(UNET, { cacheDir, target: 'unet', loras: [{ path: trunc, scale: 1 }] }), /truncated safetensors file/);
    assert.deepEqual(existsSync(path.join(cacheDir, 'lora')) ? readdirSync(path.join(cacheDir, 'lora')) : [], []);
  });
});

describe('textual inversion', () => {
  test('an embedding used as a word gives the same embeddings as the tokens whose vectors it holds', async () => {
    const tok = await loadTokenizer(fx('tiny-sd1/tokenizer'));
    const te = await loadModel(TEXT, { externalData: 'lazy' });
    const table = findTokenEmbedding(te.graph!)!;
    assert.equal(table.name, 'text_model.embeddings.token_embedding.weight');
    const rows = await floatsOf(table);
    const [catId, dogId] = [tok.encode('cat')[0]!, tok.encode('dog')[0]!];
    const dir = tmp();
    const embDir = path.join(dir, 'emb');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(embDir);
    writeSafetensors(path.join(embDir, 'catdog.safetensors'), { emb_params: f32([2, 32], [...rows.subarray(catId * 32, catId * 32 + 32), ...rows.subarray(dogId * 32, dogId * 32 + 32)]) });
    writeSafetensors(path.join(embDir, 'wide.safetensors'), { emb_params: f32([1, 768], rand(768, 3)) });
    const embs = [await loadEmbedding(path.join(embDir, 'catdog.safetensors')), await loadEmbedding(path.join(embDir, 'wide.safetensors'))];
    const v = await getLoraVariant(TEXT, { cacheDir: path.join(dir, 'cache'), target: 'text_encoder', loras: [], embeddings: embs });
    assert.deepEqual(v.placed, [{ name: 'catdog', firstId: 49408, count: 2 }]);
    assert.equal(v.skipped.length, 1);
    assert.match(v.skipped[0]!, /wide: width 768 does not fit this text encoder \(32\)/);
    const etok = withEmbeddings(tok, v.placed);
    const ids = etok.encodePadded('a photo of catdog, at night');
    assert.deepEqual(ids.slice(0, 7), [49406, ...tok.encode('a photo of'), 49408, 49409, tok.encode(',')[0]!]);
    const same = tok.encodePadded('a photo of cat dog, at night');
    const run = (f: string, x: number[]): Promise<Float32Array> => runFile(f, { input_ids: new ort.Tensor('int32', Int32Array.from(x), [1, 77]) }, 'last_hidden_state');
    const a = await run(v.path, ids);
    const b = await run(TEXT, same);
    assert.ok(maxAbsDiff(a, b) < 1e-5);
    assert.deepEqual(embeddingsUsed(tok, v.placed, 'a catdog'), ['catdog']);
    assert.deepEqual(embeddingsUsed(tok, v.placed, 'a cat'), []);
  });

  test('id-run replacement is longest first and non-overlapping', () => {
    assert.deepEqual(replaceIdRuns([1, 2, 3, 1, 2, 9], [{ pattern: [1, 2], replacement: [7] }, { pattern: [1, 2, 3], replacement: [8, 8] }]), [8, 8, 7, 9]);
  });
});

test('A1111 short hash of a LoRA is the SHA-256 of its tensor data, 12 hex digits', async () => {
  const l = manifest.loras[0]!;
  const h = await safetensorsHashes(fx(`lora/${l.file}`));
  assert.equal(h.sha256, l.sha256);
  const buf = readFileSync(fx(`lora/${l.file}`));
  const { createHash } = await import('node:crypto');
  assert.equal(a1111LoraShortHash(h), createHash('sha256').update(buf.subarray(8 + l.header_json_bytes)).digest('hex').slice(0, 12));
  assert.ok(existsSync(fx(`lora/${l.file}`)));
});

// ---------------------------------------------------------------------------------------------
// Through the library: StableDiffusionPipeline with LoRAs (option and prompt tag) vs diffusers

describe('StableDiffusionPipeline with LoRAs vs diffusers (tiny-sd1)', () => {
  test('both fixture cases: prompt embeddings, final latents and the image within 2/255', async () => {
    const { StableDiffusionPipeline } = await import('../src/pipeline/pipeline.js');
    const cacheDir = tmp();
    const notices: string[] = [];
    const pipe = await StableDiffusionPipeline.load(fx('tiny-sd1'), { device: 'cpu', cacheDir }, { onNotice: (m) => notices.push(m) });
    let n = 0;
    try {
      for (const c of manifest.cases as (ManifestCase & { args: Record<string, unknown>; scheduler_config: Record<string, unknown> })[]) {
        const a = c.args as unknown as DiffusersRunArgs;
        const l = c.loras[0]!;
        // the first case passes its LoRA as an option, the second as an A1111 prompt tag
        const viaTag = n === 1;
        const p = {
          ...diffusersRunParams(a, c.scheduler_config),
          ...(viaTag
            ? { prompt: `${a.prompt} <lora:${l.file.replace('.safetensors', '')}:${l.scale}>`, loraDir: fx('lora') }
            : { loras: [{ path: fx(`lora/${l.file}`), scale: l.scale }] }),
        };
        const seen: { cond?: Float32Array; final?: Float32Array } = {};
        const images = [];
        for await (const img of pipe.generate(p, { onPrompts: (cond) => (seen.cond = cond.data), onFinalLatents: (_s, x) => (seen.final = x[0]) })) images.push(img);
        assert.equal(images.length, 1);
        const img = images[0]!;
        const de = maxAbsDiff(seen.cond!, caseTensor(c, 'prompt_embeds_cond') as Float32Array);
        assert.ok(de <= 1e-4, `${c.id}: prompt embeddings ${de}`);
        const ref = caseTensor(c, 'final_latents') as Float32Array;
        let absmax = 0;
        for (const v of ref) absmax = Math.max(absmax, Math.abs(v));
        const dl = maxAbsDiff(seen.final!, ref);
        assert.ok(dl <= 1e-4 * Math.max(1, absmax), `${c.id}: final latents ${dl} (absmax ${absmax})`);
        const buf = readFileSync(fx(`lora/${c.bin}`));
        const t = c.tensors['image_u8']!;
        const dImg = maxAbsDiff(img.rgb, buf.subarray(t.offset, t.offset + t.nbytes));
        assert.ok(dImg <= 2, `${c.id}: image differs by ${dImg}/255`);
        const lm = manifest.loras.find((x) => x.id === l.id)!;
        assert.equal(img.loras?.length, 1);
        assert.deepEqual([img.loras![0]!.sha256, img.loras![0]!.scale, img.loras![0]!.from], [lm.sha256, l.scale, viaTag ? 'prompt' : 'option']);
        assert.equal(img.params.prompt, p.prompt, 'the image keeps the prompt as written, tags included');
        n++;
      }
    } finally {
      await pipe.dispose();
    }
    assert.equal(n, 2);
    assert.deepEqual(notices.filter((m) => /LoRA/.test(m)), []);
  });
});

// ---------------------------------------------------------------------------------------------
// Prompt tags, flags, options, metadata and lora-info

describe('LoRA prompt tags, flags and metadata', () => {
  test('A1111 tags are parsed and removed; other extra networks stay', async () => {
    const { extractLoraTags } = await import('../src/lora/prompt.js');
    const r = extractLoraTags('a <lora:foo:0.5> cat, <LORA:bar> <lyco:baz:0.3:0.8> <lora:q:te=0.2:unet=0> <hypernet:x:1>');
    assert.equal(r.prompt, 'a  cat,    <hypernet:x:1>');
    assert.deepEqual(r.tags.map(({ name, scale, unetScale }) => ({ name, scale, unetScale })), [
      { name: 'foo', scale: 0.5, unetScale: undefined },
      { name: 'bar', scale: 1, unetScale: undefined },
      { name: 'baz', scale: 0.3, unetScale: 0.8 },
      { name: 'q', scale: 0.2, unetScale: 0 },
    ]);
    assert.throws(() => extractLoraTags('x <lora:foo:strong>'), (e: unknown) => e instanceof UsageError && /"strong" is not a number/.test(e.message));
  });

  test('--lora FILE[:SCALE]: the scale is optional, a drive letter is no scale; options take a list', async () => {
    const { parseLoraFlag } = await import('../src/lora/prompt.js');
    const { loraParams } = await import('../src/lora/options.js');
    const { coerceOption, SPEC_BY_KEY } = await import('../src/config/options.js');
    assert.deepEqual(parseLoraFlag('styles/ink.safetensors:0.7'), { path: 'styles/ink.safetensors', scale: 0.7 });
    assert.deepEqual(parseLoraFlag('ink.safetensors'), { path: 'ink.safetensors', scale: 1 });
    assert.deepEqual(parseLoraFlag('ink.safetensors:-1.5e-1'), { path: 'ink.safetensors', scale: -0.15 });
    assert.deepEqual(parseLoraFlag('C:\\loras\\ink.safetensors'), { path: 'C:\\loras\\ink.safetensors', scale: 1 });
    assert.deepEqual(parseLoraFlag('C:\\loras\\ink.safetensors:0.5'), { path: 'C:\\loras\\ink.safetensors', scale: 0.5 });
    const spec = SPEC_BY_KEY.get('lora')!;
    assert.deepEqual(coerceOption(spec, 'a.safetensors:0.5', '--lora'), ['a.safetensors:0.5']);
    assert.deepEqual(coerceOption(spec, ['a', 'b:2'], 'preset: lora'), ['a', 'b:2']);
    assert.throws(() => coerceOption(spec, 3, 'preset: lora'), UsageError);
    assert.deepEqual(loraParams({ lora: ['x/ink.safetensors:0.5', 'y.safetensors'], loraDir: '/l' }), {
      loras: [{ path: 'x/ink.safetensors', scale: 0.5, name: 'ink' }, { path: 'y.safetensors', scale: 1, name: 'y' }],
      loraDir: '/l',
    });
    assert.deepEqual(loraParams({}), {});
  });

  test('tags resolve in the LoRA directory (case-insensitively, in subfolders) or fail with one line', async () => {
    const { resolveRunLoras } = await import('../src/lora/resolve.js');
    const dir = tmp();
    const { mkdirSync, copyFileSync } = await import('node:fs');
    mkdirSync(path.join(dir, 'styles'));
    copyFileSync(fx('lora/unet-attn_r4_a2_f32.safetensors'), path.join(dir, 'styles', 'Ink.safetensors'));
    const r = await resolveRunLoras('a cat <lora:ink:0.6>', [{ path: fx('lora/full_r8_a8_f16.safetensors'), scale: 1 }], dir);
    assert.equal(r.prompt, 'a cat ');
    assert.deepEqual(r.loras.map((l) => [l.name, l.scale, l.from, l.sha256]), [
      ['full_r8_a8_f16', 1, 'option', manifest.loras[1]!.sha256],
      ['ink', 0.6, 'prompt', manifest.loras[0]!.sha256],
    ]);
    await rejectsOneLine(resolveRunLoras('a <lora:nope:1>', [], dir), /LoRA "nope" of <lora:nope:1> not found in/);
    await rejectsOneLine(resolveRunLoras('a <lora:ink:1>'), /no LoRA directory is set \(--lora-dir\)/);
  });

  test('infotext: Lora hashes and TI hashes as A1111 writes them', async () => {
    const { formatInfotext, parseInfotext } = await import('../src/metadata/infotext.js');
    const { generationParams } = await import('../src/pipeline/params.js');
    const p = generationParams({ prompt: 'a cat <lora:ink:0.6>', steps: 4 });
    const text = formatInfotext(p, { loras: [{ name: 'ink', shortHash: 'fd50bf6365e6' }, { name: 'full', shortHash: '0123456789ab' }], embeddings: [{ name: 'catdog', shortHash: 'aaaabbbbcccc' }] });
    assert.match(text, /, Lora hashes: "ink: fd50bf6365e6, full: 0123456789ab", TI hashes: "catdog: aaaabbbbcccc"/);
    const back = parseInfotext(text);
    assert.equal(back.fields['Lora hashes'], 'ink: fd50bf6365e6, full: 0123456789ab');
    assert.equal(back.prompt, 'a cat <lora:ink:0.6>');
    // without extras, the option LoRAs a pipeline image carries in its params give the key
    const h = await safetensorsHashes(fx('lora/unet-attn_r4_a2_f32.safetensors'));
    const withParams = formatInfotext({ ...p, loras: [{ path: 'x', scale: 1, name: 'unet-attn', shortHash: a1111LoraShortHash(h) } as never] });
    assert.match(withParams, new RegExp(`Lora hashes: "unet-attn: ${a1111LoraShortHash(h)}"`));
    assert.doesNotMatch(formatInfotext(p), /Lora hashes|TI hashes/);
  });

  test('lora-info: format, rank, alpha and how the modules map onto the model', async () => {
    const { cmdLoraInfo } = await import('../src/cli/lora-info.js');
    let text = '';
    await cmdLoraInfo(fx('lora/full_r8_a8_f16.safetensors'), fx('tiny-sd1'), { json: false }, { write: (s: string) => (text += s) });
    assert.match(text, /format: LoRA, kohya keys; F16; rank 8; alpha 8\/rank/);
    assert.match(text, /modules: 72 UNet, 18 text encoder \(78 linear, 12 convolution\)/);
    assert.match(text, /UNet: 72 of 72 modules map onto the model/);
    assert.match(text, /text encoder: 18 of 18 modules map onto the model/);
    assert.equal(text.split('\n').filter((l) => l.startsWith('  ')).length, 90);
    let json = '';
    await cmdLoraInfo(fx('lora/unet-attn_r4_a2_f32.safetensors'), undefined, { json: true }, { write: (s: string) => (json += s) });
    const o = JSON.parse(json) as { ranks: number[]; alphas: unknown[]; modules: Record<string, number>; shortHash: string };
    assert.deepEqual([o.ranks, o.alphas, o.modules.unet, o.modules.text_encoder], [[4], [2], 48, 0]);
  });

  test('a separate UNet scale (A1111 <lora:NAME:TE:UNET>) applies to the UNet only', async () => {
    const { scaleFor } = await import('../src/lora/variant.js');
    const ref = { path: 'x', scale: 0.3, unetScale: 0 };
    assert.deepEqual([scaleFor(ref, 'unet'), scaleFor(ref, 'text_encoder')], [0, 0.3]);
    const cacheDir = tmp();
    const v = await getLoraVariant(UNET, { cacheDir, target: 'unet', loras: [{ path: fx('lora/full_r8_a8_f16.safetensors'), scale: 0.7, unetScale: 0 }] });
    assert.equal(v.path, UNET);
  });
});

test('--from: the recorded LoRAs are re-applied when found (by path, else by name with the same SHA-256), else listed as missing', async () => {
  const { lorasFromRecord } = await import('../src/lora/from.js');
  const dir = tmp();
  const { copyFileSync } = await import('node:fs');
  copyFileSync(fx('lora/full_r8_a8_f16.safetensors'), path.join(dir, 'full.safetensors'));
  const r = await lorasFromRecord({
    prompt: 'a cat <lora:full:0.5> <lora:gone:1>',
    loraDir: dir,
    loras: [
      { path: fx('lora/unet-attn_r4_a2_f32.safetensors'), scale: 0.8, name: 'unet-attn', sha256: manifest.loras[0]!.sha256 },
      { path: '/moved/full.safetensors', scale: 0.3, name: 'full', sha256: manifest.loras[1]!.sha256 },
      { path: '/moved/other.safetensors', scale: 1, name: 'other', sha256: 'x' },
      { path: fx('lora/unet-attn_r4_a2_f32.safetensors'), scale: 1, name: 'changed', sha256: '0'.repeat(64) },
    ],
  });
  assert.deepEqual(r.options, { loraDir: dir, lora: [`${fx('lora/unet-attn_r4_a2_f32.safetensors')}:0.8`, `${path.join(dir, 'full.safetensors')}:0.3`] });
  assert.deepEqual(r.missing, [
    'LoRA other (/moved/other.safetensors) not found',
    `LoRA changed (${fx('lora/unet-attn_r4_a2_f32.safetensors')}) not found`,
    `LoRA gone of the prompt's <lora:gone:1> not found in ${dir}`,
  ]);
});
