/**
 * Time to apply a LoRA (src/lora/variant.ts), first (merge + write the cached variant) and
 * cached, to a model's UNet and text encoder:
 *   node --import tsx bench/lora-apply.ts [MODEL_DIR] [--rank R] [--conv] [--keep]
 * MODEL_DIR defaults to /tmp/sd15 (`sdgen synth --arch sd15 --out /tmp/sd15`). The LoRA is made
 * here like a typical kohya character LoRA: float16, rank R (default 16, alpha R/2) on every
 * attention projection, feed-forward and proj_in/proj_out layer of the UNet and every attention
 * and MLP layer of the text encoder; `--conv` adds LoCon on every 3×3 ResNet convolution.
 * Each application runs in a fresh cache directory (removed unless --keep). Each line is followed
 * by the merge's own breakdown (merge.ts loraProfile: key, graph, reads, products, writes).
 */
import { mkdtempSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { getLoraVariant, LORA_WEIGHTS_FILE } from '../src/lora/variant.js';
import { WeightSites } from '../src/lora/map.js';
import { loadModel } from '../src/onnx/model-io.js';
import { float32ToFloat16 } from '../src/onnx/tensor.js';
import { loraProfile, resetLoraProfile } from '../src/lora/merge.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : d;
};
const modelDir = args.find((a) => !a.startsWith('--') && !/^\d+$/.test(a)) ?? '/tmp/sd15';
const rank = opt('--rank', 16);
const conv = args.includes('--conv');
const keep = args.includes('--keep');
const work = mkdtempSync(path.join(os.tmpdir(), 'sdgen-lora-bench-'));

const UNET_RE = /(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out)$/;
const CONV_RE = /resnets\.\d+\.conv[12]$/;
const TE_RE = /(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])$/;

let seed = 12345;
function rnd(n: number, amp: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    out[i] = (seed / 2 ** 31 - 1) * amp;
  }
  return out;
}

/** kohya keys for every site of `file` whose path matches `re`. */
async function modulesOf(file: string, prefix: string, re: RegExp, tensors: Map<string, { shape: number[]; data: Uint8Array; dtype: string }>): Promise<number> {
  const model = await loadModel(file, { externalData: 'lazy' });
  const sites = new WeightSites(model.graph!);
  let n = 0;
  for (const [p, s] of sites.byPath) {
    const isConv = s.layout === 'conv' && CONV_RE.test(p);
    if (!re.test(p) && !(conv && isConv)) continue;
    const d = s.initializer.dims.map(Number);
    const key = `${prefix}_${p.replaceAll('.', '_')}`;
    let downShape: number[];
    let upShape: number[];
    if (s.layout === 'conv') {
      downShape = [rank, d[1]!, ...d.slice(2)];
      upShape = [d[0]!, rank, 1, 1];
    } else {
      const [i, o] = s.layout === 'in_out' ? [d[0]!, d[1]!] : [d[1]!, d[0]!];
      downShape = [rank, i];
      upShape = [o, rank];
    }
    const f16 = (shape: number[], amp: number) => ({ dtype: 'F16', shape, data: new Uint8Array(float32ToFloat16(rnd(shape.reduce((a, b) => a * b, 1), amp)).buffer) });
    tensors.set(`${key}.lora_down.weight`, f16(downShape, 0.05));
    tensors.set(`${key}.lora_up.weight`, f16(upShape, 0.02));
    tensors.set(`${key}.alpha`, { dtype: 'F32', shape: [], data: new Uint8Array(Float32Array.of(rank / 2).buffer) });
    n++;
  }
  return n;
}

function writeSafetensors(file: string, tensors: Map<string, { shape: number[]; data: Uint8Array; dtype: string }>): void {
  const header: Record<string, unknown> = { __metadata__: { ss_network_dim: String(rank), ss_network_alpha: String(rank / 2) } };
  let off = 0;
  for (const [k, t] of tensors) {
    header[k] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, ...[...tensors.values()].map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.length))]));
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (f.isFile() && f.name === LORA_WEIGHTS_FILE) n += statSync(path.join(f.parentPath, f.name)).size;
  }
  return n;
}

const unet = path.join(modelDir, 'unet', 'model.onnx');
const te = path.join(modelDir, 'text_encoder', 'model.onnx');
const tensors = new Map<string, { shape: number[]; data: Uint8Array; dtype: string }>();
const nu = await modulesOf(unet, 'lora_unet', UNET_RE, tensors);
const nt = await modulesOf(te, 'lora_te', TE_RE, tensors);
const loraFile = path.join(work, 'bench-lora.safetensors');
writeSafetensors(loraFile, tensors);
console.log(`LoRA: rank ${rank}, ${nu} UNet + ${nt} text encoder modules${conv ? ' (with LoCon)' : ''}, ${(statSync(loraFile).size / 1e6).toFixed(1)} MB`);

for (const [what, file, target] of [['UNet', unet, 'unet'], ['text encoder', te, 'text_encoder']] as const) {
  const cacheDir = path.join(work, `cache-${target}`);
  resetLoraProfile();
  let t0 = performance.now();
  const v = await getLoraVariant(file, { cacheDir, target, loras: [{ path: loraFile, scale: 0.8 }] });
  const first = (performance.now() - t0) / 1000;
  const prof = loraProfile();
  t0 = performance.now();
  const c = await getLoraVariant(file, { cacheDir, target, loras: [{ path: loraFile, scale: 0.8 }] });
  const cached = (performance.now() - t0) / 1000;
  if (!c.cached || c.path !== v.path) throw new Error('second application was not served from the cache');
  console.log(`${what}: ${v.changed} weights changed; first ${first.toFixed(2)} s, cached ${cached.toFixed(3)} s; ${(dirBytes(cacheDir) / 1e6).toFixed(0)} MB of changed weights`);
  console.log(`  breakdown (s): ${Object.entries(prof).map(([k, s]) => `${k} ${s.toFixed(2)}`).join(', ')}`);
}
if (!keep) rmSync(work, { recursive: true, force: true });
else console.log(`kept ${work}`);
