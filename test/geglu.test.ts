/**
 * GEGLU projection split (src/optimize/geglu.ts): a feed-forward's [C, 2h] projection and the
 * two copies of its halves become two [C, h] projections. Hand-built graphs in torch's export
 * forms (Slice pair with the Shape → Gather → Add → Div → Mul bounds, Split with sizes, Split by
 * num_outputs), the cases left alone, and the real torch export of a tiny UNet, each against
 * onnxruntime running the original graph.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { xorshiftFill } from '../src/bench/inputs.js';
import { decodeModel, encodeModel } from '../src/onnx/proto.js';
import { checkGraph } from '../src/onnx/graph.js';
import { attrInt } from '../src/onnx/attributes.js';
import { floatTensor, int64Tensor } from '../src/onnx/tensor.js';
import type { ModelProto, NodeProto, TensorProto } from '../src/onnx/types.js';
import { fuseModel } from '../src/optimize/index.js';
import { splitGeglu } from '../src/optimize/geglu.js';
import { maxAbsDiff, runFeeds as run, fx } from './helpers.js';


const C = 8;
const H = 6;

type Halves = 'slices' | 'slices-swapped' | 'split' | 'split-n' | 'off-by-one' | 'extra-use' | 'bounds-used' | 'no-bias';

/** x [B, N, C] → GEGLU (proj, halves, erf GELU of the gate, product) → out [B, N, C]. */
function gegluModel(halves: Halves): ModelProto {
  const nodes: NodeProto[] = [];
  const init: TensorProto[] = [
    floatTensor('W', xorshiftFill(C * 2 * H, 3).map((v) => v * 0.5), [C, 2 * H]),
    floatTensor('b', xorshiftFill(2 * H, 4), [2 * H]),
    floatTensor('W2', xorshiftFill(H * C, 5).map((v) => v * 0.5), [H, C]),
  ];
  const n = (opType: string, input: string[], output: string, attribute = [] as NodeProto['attribute']): void => {
    nodes.push({ name: `/ff/${output}`, opType, domain: '', input, output: [output], attribute });
  };
  const k = (name: string, v: number[]): void => {
    nodes.push({ name: `/ff/${name}`, opType: 'Constant', domain: '', input: [], output: [name], attribute: [{ name: 'value', type: 4, t: int64Tensor('', v) }] });
  };
  const f = (name: string, v: number): void => {
    nodes.push({ name: `/ff/${name}`, opType: 'Constant', domain: '', input: [], output: [name], attribute: [{ name: 'value', type: 4, t: floatTensor('', [v], []) }] });
  };
  n('MatMul', ['x', 'W'], 'p');
  let y = 'p';
  if (halves !== 'no-bias') {
    n('Add', ['b', 'p'], 'y');
    y = 'y';
  }
  const outputs = ['out'];
  if (halves === 'split') {
    init.push(int64Tensor('sizes', [H, H]));
    nodes.push({ name: '/ff/Split', opType: 'Split', domain: '', input: [y, 'sizes'], output: ['hid', 'gate'], attribute: [attrInt('axis', -1)] });
  } else if (halves === 'split-n') {
    nodes.push({ name: '/ff/Split', opType: 'Split', domain: '', input: [y], output: ['hid', 'gate'], attribute: [attrInt('axis', 2), attrInt('num_outputs', 2)] });
  } else {
    // torch's chunk(2, -1): bounds from the product's shape
    n('Shape', [y], 'shape');
    k('last', [-1]);
    k('zero', [0]);
    k('one', [1]);
    k('two', [2]);
    n('Gather', ['shape', 'last'], 'dim', [attrInt('axis', 0)]);
    n('Add', ['dim', 'one'], 'dim1');
    n('Div', ['dim1', 'two'], 'half');
    n('Mul', ['half', 'one'], 'end0');
    n('Mul', ['half', 'two'], 'end1');
    let start1 = 'end0';
    if (halves === 'off-by-one') {
      n('Sub', ['end0', 'one'], 'end0m');
      start1 = 'end0m';
    }
    const first = (): void => n('Slice', [y, 'zero', halves === 'off-by-one' ? 'end0m' : 'end0', 'last'], 'hid');
    const second = (): void => n('Slice', [y, start1, 'end1', 'last'], 'gate');
    if (halves === 'slices-swapped') {
      second();
      first();
    } else {
      first();
      second();
    }
    if (halves === 'extra-use') {
      n('Relu', [y], 'extra');
      outputs.push('extra');
    }
    if (halves === 'bounds-used') outputs.push('half');
  }
  f('sqrt2', Math.SQRT2);
  f('onef', 1);
  f('halff', 0.5);
  n('Div', ['gate', 'sqrt2'], 'g1');
  n('Erf', ['g1'], 'g2');
  n('Add', ['g2', 'onef'], 'g3');
  n('Mul', ['gate', 'g3'], 'g4');
  n('Mul', ['g4', 'halff'], 'gelu');
  n('Mul', ['hid', 'gelu'], 'prod');
  n('MatMul', ['prod', 'W2'], 'out');
  const t = (name: string, dims: ({ dimParam: string } | { dimValue: number })[]) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: dims } } } });
  const opset = halves === 'split-n' ? 18 : 17;
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: opset }],
    producerName: 'test',
    graph: {
      name: 'geglu',
      node: nodes,
      initializer: init,
      input: [t('x', [{ dimParam: 'B' }, { dimParam: 'N' }, { dimValue: C }])],
      output: outputs.map((o) => (o === 'half' ? { name: o, type: { tensorType: { elemType: 7, shape: { dim: [{ dimValue: 1 }] } } } } : t(o, [{ dimParam: 'B' }, { dimParam: 'N' }, { dimValue: o === 'extra' ? 2 * H : C }]))),
      valueInfo: [],
    },
  };
}

const feeds = (b: number, tokens: number) => ({ x: new ort.Tensor('float32', xorshiftFill(b * tokens * C, 7 + tokens), [b, tokens, C]) });

test('GEGLU: the [C, 2h] projection and its halves become two [C, h] projections, same output', async () => {
  for (const form of ['slices', 'slices-swapped', 'split', 'split-n', 'no-bias'] as const) {
    const original = gegluModel(form);
    const bytes = encodeModel(original);
    const m = decodeModel(bytes);
    const r = splitGeglu(m);
    assert.equal(r.count, 1, form);
    assert.deepEqual(checkGraph(m), [], form);
    const g = m.graph!;
    const ops = g.node.map((x) => x.opType);
    assert.equal(ops.filter((o) => o === 'MatMul').length, 3, `${form}: two half projections + the output projection`);
    assert.ok(!ops.includes('Split') && !ops.includes('Shape') && !ops.includes('Gather'), `${form}: halves and bound arithmetic gone: ${ops.join(',')}`);
    assert.equal(ops.filter((o) => o === 'Constant').length, 3, `${form}: only the GELU's constants are left`);
    // each half projection reads the input and a Slice of W: width h
    const halves = g.node.filter((x) => x.opType === 'MatMul' && x.input[0] === 'x');
    assert.equal(halves.length, 2);
    for (const hm of halves) {
      const ws = g.node.find((x) => x.output[0] === hm.input[1])!;
      assert.equal(ws.opType, 'Slice');
      assert.equal(ws.input[0], 'W');
    }
    for (const [b, tokens] of [[1, 5], [2, 13]] as const) {
      const d = maxAbsDiff(await run(bytes, feeds(b, tokens)), await run(m, feeds(b, tokens)));
      assert.ok(d <= 1e-6, `${form} B${b} N${tokens}: max abs ${d}`);
    }
  }
});

test('GEGLU: left alone when the halves are not halves or the product is used elsewhere', () => {
  for (const form of ['off-by-one', 'extra-use', 'bounds-used'] as const) {
    const m = gegluModel(form);
    const before = encodeModel(m);
    assert.equal(splitGeglu(m).count, 0, form);
    assert.deepEqual(encodeModel(m), before, `${form}: graph unchanged`);
  }
});

test('tiny-unet (torch export): every GEGLU split, output unchanged; fuseModel does both rewrites', async () => {
  const buf = readFileSync(fx('tiny-unet/model.onnx'));
  const m = decodeModel(buf);
  const projections = m.graph!.node.filter((n) => n.opType === 'MatMul' && /\/ff\/net\.0\/proj\//.test(n.name ?? '')).length;
  assert.equal(projections, 6, 'fixture: 6 transformer blocks');
  const r = fuseModel(m);
  assert.equal(r.count, 12, 'attention fused first');
  assert.equal(r.geglu, projections);
  assert.deepEqual(checkGraph(m), []);
  assert.equal(m.graph!.node.filter((n) => n.opType === 'Slice' && /\/ff\/net\.0\/Slice/.test(n.name ?? '')).length, 0, 'the halves are not copied any more');
  const f = {
    sample: new ort.Tensor('float32', xorshiftFill(2 * 4 * 8 * 10, 3), [2, 4, 8, 10]),
    timestep: new ort.Tensor('float32', Float32Array.from([981, 731]), [2]),
    encoder_hidden_states: new ort.Tensor('float32', xorshiftFill(2 * 77 * 32, 4), [2, 77, 32]),
  };
  const d = maxAbsDiff(await run(buf, f), await run(m, f));
  assert.ok(d <= 1e-4, `max abs ${d}`);
  // nothing left to split
  assert.equal(splitGeglu(m).count, 0);
});
