/**
 * The layering of src/ (docs/architecture.md): lower layers never import from higher ones,
 * type-only imports and dynamic import() included. Read from the sources themselves.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../src/', import.meta.url));

/** Rank of each top-level folder of src/: a module may import only from its rank or below. */
const RANK: Record<string, number> = {
  // building blocks: pure logic and model plumbing
  random: 0, onnx: 0, text: 0, schedulers: 0,
  tome: 1, optimize: 1, lora: 1, image: 1,
  models: 2, config: 2, synth: 2,
  // the engine: conditioning → denoising → decode/encode
  pipeline: 3,
  // what sits on the engine: PNG files and their metadata, the batch run, the CLI, the bench
  metadata: 4,
  run: 5,
  bench: 6, cli: 6,
};

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = path.join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** The top-level src/ folder of a file ('' for src/*.ts). */
function layerOf(file: string): string {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 ? rel[0]! : '';
}

test('no module imports from a higher layer (static, type-only and dynamic imports)', () => {
  const files = sources(SRC);
  assert.ok(files.length >= 100, `sources found: ${files.length}`);
  const specifier = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
  const violations: string[] = [];
  let checked = 0;
  for (const file of files) {
    const from = layerOf(file);
    if (from === '') continue; // src/index.ts (the library entry) and the shared roots
    assert.ok(from in RANK, `${from}/ has no rank in this test: add it to RANK and docs/architecture.md`);
    for (const m of readFileSync(file, 'utf8').matchAll(specifier)) {
      const target = path.resolve(path.dirname(file), m[1]!);
      const to = layerOf(target);
      checked++;
      if (to === '' || to === from) continue;
      assert.ok(to in RANK, `${to}/ has no rank in this test`);
      if (RANK[to]! > RANK[from]!) violations.push(`${path.relative(SRC, file)} imports ${m[1]} (${from} → ${to})`);
    }
  }
  assert.ok(checked >= 300, `imports checked: ${checked}`);
  assert.deepEqual(violations, []);
});
