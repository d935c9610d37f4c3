/**
 * Session load time with and without the optimized-graph cache (src/optimize/session-cache.ts),
 * each load in a fresh process:
 *   node --import tsx bench/session-load.ts [model.onnx] [--runs N] [--run-size PX] [--prepacked]
 * Default model: the tiny-sd1 UNet fixture. Prints: plain load (optimizations at 'all'),
 * first load through the cache (optimizes + writes the entry), cached loads.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runInChild } from '../src/bench/child.js';
import { availableMemory, fmtGB } from '../src/bench/memory.js';
import { defaultThreadCount } from '../src/models/session.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : d;
};
const model = args.find((a) => a.endsWith('.onnx')) ?? new URL('../test/fixtures/tiny-sd1/unet/model.onnx', import.meta.url).pathname;
const runs = opt('--runs', 3);
const runSize = opt('--run-size', 0);
const savePrepacked = args.includes('--prepacked');
const threads = defaultThreadCount();
const limit = availableMemory() - 1e9;
const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-load-'));

async function one(label: string, job: Parameters<typeof runInChild>[0]): Promise<number> {
  const r = await runInChild(job, { memoryLimit: limit });
  if (!r.ok || r.result.kind !== 'load') throw new Error(`${label}: ${r.ok ? 'unexpected result' : r.error}`);
  const first = r.result.firstRunMs === undefined ? '' : `, first call ${(r.result.firstRunMs / 1000).toFixed(2)} s`;
  console.log(`${label.padEnd(28)} ${(r.result.loadMs / 1000).toFixed(2)} s${first}, peak ${fmtGB(r.peakRss)} GB${r.result.cached ? ' (cached)' : ''}`);
  return r.result.loadMs;
}

try {
  console.log(`model ${model}, ${threads} threads`);
  const plain: number[] = [];
  const cached: number[] = [];
  const base = { kind: 'load' as const, modelPath: model, threads, ...(runSize ? { runSize } : {}) };
  for (let i = 0; i < runs; i++) plain.push(await one(`plain load #${i + 1}`, base));
  const firstCache = await one('first load via cache', { ...base, cacheDir, savePrepacked });
  for (let i = 0; i < runs; i++) cached.push(await one(`cached load #${i + 1}`, { ...base, cacheDir, savePrepacked }));
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  console.log(
    `median plain ${(med(plain) / 1000).toFixed(2)} s, first via cache ${(firstCache / 1000).toFixed(2)} s, ` +
      `median cached ${(med(cached) / 1000).toFixed(2)} s → ${(med(plain) / med(cached)).toFixed(2)}× faster`,
  );
} finally {
  rmSync(cacheDir, { recursive: true, force: true });
}
