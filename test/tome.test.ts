import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { NameAllocator } from '../src/onnx/graph.js';
import { encodeModel } from '../src/onnx/proto.js';
import { buildMergeModel } from '../src/tome/merge-graph.js';

const FIX = new URL('../../shared/fixtures/', import.meta.url);

interface TensorMeta { dtype: 'float32' | 'int64' | 'float64' | 'uint8'; shape: number[]; offset: number; nbytes: number }

function readTensor(file: URL, m: TensorMeta): { data: Float32Array | BigInt64Array; shape: number[] } {
  const buf = readFileSync(file).subarray(m.offset, m.offset + m.nbytes);
  const copy = new Uint8Array(buf).buffer;
  if (m.dtype === 'float32') return { data: new Float32Array(copy), shape: m.shape };
  if (m.dtype === 'int64') return { data: new BigInt64Array(copy), shape: m.shape };
  throw new Error(`dtype ${m.dtype}`);
}

const f32 = (t: { data: Float32Array | BigInt64Array; shape: number[] }): ort.Tensor => new ort.Tensor('float32', t.data as Float32Array, t.shape);
const nums = (t: ort.Tensor | { data: unknown }): number[] => Array.from(t.data as ArrayLike<number | bigint>, Number);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// -------------------------------------------------------------------------------------------
// The merge/unmerge subgraph against tomesd's bipartite_soft_matching_random2d vectors.

interface MergeCase {
  name: string;
  file: string;
  params: { w: number; h: number; sx: number; sy: number; ratio: number; batch: number; channels: number; N: number; r_requested: number; r_effective: number; num_dst: number | null; no_rand: boolean };
  identity: boolean;
  order_is_well_conditioned?: boolean;
  tensors: Record<string, TensorMeta>;
}

describe('merge subgraph vs tomesd reference vectors', () => {
  const dir = new URL('tome-merge/', FIX);
  const manifest = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8')) as { cases: MergeCase[] };
  assert.ok(manifest.cases.length >= 35);
  const sessions = new Map<string, Promise<ort.InferenceSession>>();
  const session = (p: MergeCase['params']): Promise<ort.InferenceSession> => {
    const key = `${p.sx},${p.sy},${p.ratio},${p.no_rand}`;
    let s = sessions.get(key);
    if (!s) {
      const model = buildMergeModel(new NameAllocator(), {
        ratio: p.ratio, sx: p.sx, sy: p.sy, maxDownsample: 1, useRand: !p.no_rand, oddBatchDisablesRand: false,
      });
      s = ort.InferenceSession.create(encodeModel(model));
      sessions.set(key, s);
    }
    return s;
  };

  for (const c of manifest.cases) {
    test(c.name, async () => {
      const file = new URL(c.file, dir);
      const T = (k: string) => readTensor(file, c.tensors[k]!);
      const p = c.params;
      const feeds: Record<string, ort.Tensor> = {
        metric: f32(T('metric')),
        x: f32(T('x')),
        grid: new ort.Tensor('int64', BigInt64Array.from([BigInt(p.h), BigInt(p.w)]), [2]),
      };
      if (!p.no_rand) {
        const ri = T('rand_idx');
        feeds.tome_rand_0 = new ort.Tensor('int64', ri.data as BigInt64Array, ri.shape);
      }
      const out = await (await session(p)).run(feeds);
      const C = p.channels;
      const x = nums(T('x'));
      if (c.identity) {
        assert.equal(nums(out.apply!)[0], 0);
        assert.deepEqual(nums(out.merged!), x);
        assert.deepEqual(nums(out.unmerged!), x);
        return;
      }
      assert.equal(nums(out.apply!)[0], 1);
      const r = p.r_effective;
      const nd = p.num_dst!;
      const ns = p.N - nd;
      const B = p.batch;
      assert.deepEqual(out.merged!.dims, [B, p.N - r, C]);
      // Unmerged does not depend on the order of the token lists.
      assert.ok(maxAbsDiff(nums(out.unmerged!), nums(T('unmerged'))) < 1e-5, 'unmerged');

      // Index sets: same destinations and sources as tomesd (ascending here; tomesd's order
      // comes from a non-stable argsort of ties).
      const aRef = nums(T('a_idx')), bRef = nums(T('b_idx'));
      const aMine = nums(out.a_idx!), bMine = nums(out.b_idx!);
      assert.deepEqual(aMine, [...aRef].sort((u, v) => u - v));
      assert.deepEqual(bMine, [...bRef].sort((u, v) => u - v));

      const mergedRef = nums(T('merged'));
      const mergedMine = nums(out.merged!);
      const nodeMaxRef = nums(T('node_max' in c.tensors ? 'node_max' : 'x'));
      for (let bi = 0; bi < B; bi++) {
        // Destination rows, matched by token.
        for (let j = 0; j < nd; j++) {
          const tok = bRef[j]!;
          const jm = bMine.indexOf(tok);
          const refRow = mergedRef.slice(((bi * (p.N - r)) + ns - r + j) * C, ((bi * (p.N - r)) + ns - r + j + 1) * C);
          const mineRow = mergedMine.slice(((bi * (p.N - r)) + ns - r + jm) * C, ((bi * (p.N - r)) + ns - r + jm + 1) * C);
          assert.ok(maxAbsDiff(refRow, mineRow) < 1e-5, `dst row of token ${tok}`);
        }
        // Unmerged-source rows: in tomesd's order (descending similarity) when that order is
        // well conditioned, else as a set.
        const unmRef: number[][] = [], unmMine: number[][] = [];
        for (let i = 0; i < ns - r; i++) {
          unmRef.push(mergedRef.slice((bi * (p.N - r) + i) * C, (bi * (p.N - r) + i + 1) * C));
          unmMine.push(mergedMine.slice((bi * (p.N - r) + i) * C, (bi * (p.N - r) + i + 1) * C));
        }
        if (c.order_is_well_conditioned === false) {
          unmRef.sort((u, v) => u[0]! - v[0]!);
          unmMine.sort((u, v) => u[0]! - v[0]!);
        }
        assert.ok(maxAbsDiff(unmRef.flat(), unmMine.flat()) < 1e-5, 'unmerged-source rows');
      }
      if ('src_idx' in c.tensors) {
        // Exposed internals, compared as tokens.
        const srcRef = nums(T('src_idx')), unmIdxRef = nums(T('unm_idx')), dstRef = nums(T('dst_idx'));
        const nodeIdxRef = nums(T('node_idx'));
        const srcMine = nums(out.src_idx!), unmIdxMine = nums(out.unm_idx!), dstMine = nums(out.dst_idx!);
        const nodeIdxMine = nums(out.node_idx!), nodeMaxMine = nums(out.node_max!);
        for (let bi = 0; bi < B; bi++) {
          for (let k = 0; k < r; k++) {
            assert.equal(aMine[srcMine[bi * r + k]!], aRef[srcRef[bi * r + k]!], 'merged source token');
            assert.equal(bMine[dstMine[bi * r + k]!], bRef[dstRef[bi * r + k]!], 'its destination token');
          }
          for (let k = 0; k < ns - r; k++) assert.equal(aMine[unmIdxMine[bi * (ns - r) + k]!], aRef[unmIdxRef[bi * (ns - r) + k]!]);
          for (let i = 0; i < ns; i++) {
            const im = aMine.indexOf(aRef[i]!);
            assert.ok(Math.abs(nodeMaxMine[bi * ns + im]! - nodeMaxRef[bi * ns + i]!) < 1e-5, 'node_max');
            assert.equal(bMine[nodeIdxMine[bi * ns + im]!], bRef[nodeIdxRef[bi * ns + i]!], 'node_idx');
          }
        }
      }
    });
  }
});
