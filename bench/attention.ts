/**
 * One attention as the SD 1.5 UNet runs it at full resolution (C = 320, 8 heads, N tokens,
 * self-attention), decomposed as torch exports it vs fused by src/optimize/fuse-attention.ts,
 * each in its own process (time per call, peak RSS):
 *   node --import tsx bench/attention.ts [--tokens 1024,4096] [--batch 2] [--calls 3]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { attrInt, attrInts } from '../src/onnx/attributes.js';
import { encodeModel } from '../src/onnx/proto.js';
import { floatTensor, int64Tensor } from '../src/onnx/tensor.js';
import type { ModelProto, NodeProto, TensorProto } from '../src/onnx/types.js';
import { fuseAttention } from '../src/optimize/fuse-attention.js';
import { defaultThreadCount } from '../src/models/session.js';
import { maxRssBytes } from '../src/bench/memory.js';

const C = 320;
const H = 8;
const D = C / H;

/** x [B, N, C] → q/k/v projections → heads [B·H, N, d] → softmax(QKᵀ·s)·V → [B, N, C]. */
export function attentionModel(): ModelProto {
  const nodes: NodeProto[] = [];
  const inits: TensorProto[] = [];
  let k = 0;
  const op = (opType: string, input: string[], attribute: NodeProto['attribute'] = []): string => {
    const name = `/attn/${opType}_${k++}`;
    nodes.push({ name, opType, input, output: [`${name}_o`], attribute });
    return `${name}_o`;
  };
  const ci = (vals: number[], scalar = false): string => {
    const name = `c${k++}`;
    inits.push(int64Tensor(name, vals, scalar ? [] : [vals.length]));
    return name;
  };
  const w = (seed: number): string => {
    const name = `w${seed}`;
    const a = new Float32Array(C * C);
    for (let i = 0; i < a.length; i++) a[i] = (((i + seed) * 2654435761) % 1000) / 1000 / Math.sqrt(C) - 0.5 / Math.sqrt(C);
    inits.push(floatTensor(name, a, [C, C]));
    return name;
  };
  const axes = ci([0]);
  const dim = (t: string, a: number): string => op('Gather', [op('Shape', [t]), ci([a], true)], [attrInt('axis', 0)]);
  const un = (t: string): string => op('Unsqueeze', [t, axes]);
  const heads = (t: string): string => {
    const s4 = op('Concat', [un(dim(t, 0)), un(dim(t, 1)), ci([H]), ci([D])], [attrInt('axis', 0)]);
    const tr = op('Transpose', [op('Reshape', [t, s4])], [attrInts('perm', [0, 2, 1, 3])]);
    const s3 = op('Concat', [un(op('Mul', [dim(t, 0), ci([H], true)])), un(dim(t, 1)), ci([D])], [attrInt('axis', 0)]);
    return op('Reshape', [tr, s3]);
  };
  const q = op('MatMul', ['x', w(1)]);
  const kk = op('MatMul', ['x', w(2)]);
  const v = op('MatMul', ['x', w(3)]);
  const sc = `s${k++}`;
  inits.push(floatTensor(sc, [1 / Math.sqrt(D)], []));
  const scores = op('Mul', [op('MatMul', [heads(q), op('Transpose', [heads(kk)], [attrInts('perm', [0, 2, 1])])]), sc]);
  const ctx = op('MatMul', [op('Softmax', [scores], [attrInt('axis', -1)]), heads(v)]);
  const back = op('Reshape', [ctx, op('Concat', [ci([-1]), ci([H]), un(dim(ctx, 1)), ci([D])], [attrInt('axis', 0)])]);
  const tr = op('Transpose', [back], [attrInts('perm', [0, 2, 1, 3])]);
  const y = op('Reshape', [tr, op('Concat', [un(dim(q, 0)), ci([-1]), ci([C])], [attrInt('axis', 0)])]);
  nodes.push({ name: 'out', opType: 'Identity', input: [y], output: ['y'], attribute: [] });
  const vi = (name: string) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'B' }, { dimParam: 'N' }, { dimValue: C }] } } } });
  return { irVersion: 8, opsetImport: [{ domain: '', version: 17 }], graph: { name: 'attn', node: nodes, initializer: inits, input: [vi('x')], output: [vi('y')], valueInfo: [] } };
}

async function child(): Promise<void> {
  process.once('message', async (m: { file: string; batch: number; tokens: number; calls: number; threads: number }) => {
    const s = await ort.InferenceSession.create(m.file, { intraOpNumThreads: m.threads, graphOptimizationLevel: 'all' });
    const x = new ort.Tensor('float32', new Float32Array(m.batch * m.tokens * C).map((_, i) => Math.sin(i)), [m.batch, m.tokens, C]);
    await s.run({ x });
    const ms: number[] = [];
    for (let i = 0; i < m.calls; i++) {
      const t = performance.now();
      await s.run({ x });
      ms.push(performance.now() - t);
    }
    process.send!({ ms, rss: maxRssBytes() }, () => process.exit(0));
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const get = (n: string, d: string): string => (args.includes(n) ? args[args.indexOf(n) + 1]! : d);
  const tokens = get('--tokens', '1024,4096').split(',').map(Number);
  const batch = Number(get('--batch', '2'));
  const calls = Number(get('--calls', '3'));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-attn-'));
  try {
    const std = attentionModel();
    const fused = attentionModel();
    const r = fuseAttention(fused);
    if (r.count !== 1) throw new Error(`fusion failed: ${r.skipped.join('; ')}`);
    const files = { standard: path.join(dir, 'std.onnx'), fused: path.join(dir, 'fused.onnx') };
    writeFileSync(files.standard, encodeModel(std));
    writeFileSync(files.fused, encodeModel(fused));
    console.log(`| tokens | batch | attention | s/call (median of ${calls}) | peak RSS MB |\n|---:|---:|---|---:|---:|`);
    for (const n of tokens) {
      for (const mode of ['standard', 'fused'] as const) {
        const out = await new Promise<{ ms: number[]; rss: number }>((resolve, reject) => {
          const c = fork(fileURLToPath(import.meta.url), ['--child'], { execArgv: process.execArgv });
          c.once('message', (m) => resolve(m as { ms: number[]; rss: number }));
          c.once('exit', (code) => (code ? reject(new Error(`child exited ${code}`)) : undefined));
          c.send({ file: files[mode], batch, tokens: n, calls, threads: defaultThreadCount() });
        });
        const med = [...out.ms].sort((a, b) => a - b)[out.ms.length >> 1]!;
        console.log(`| ${n} | ${batch} | ${mode} | ${(med / 1000).toFixed(3)} | ${(out.rss / 2 ** 20).toFixed(0)} |`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--child')) void child();
else void main();
