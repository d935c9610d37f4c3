import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { SdgenError } from '../src/errors.js';
import {
  AttributeType, DataLocation, DataType, type ModelProto, type NodeProto, type TensorProto,
  decodeModel, encodeModel, decodeTensor, encodeTensor,
  makeTensor, tensorValues, float32ToFloat16, float16ToFloat32, elementSize, numElements, int64Tensor,
  attrInt, attrInts, attrFloat, attrString, attrTensor, getInt, getInts, getFloat, getString, getTensor, getAttr,
  GraphIndex, NameAllocator, uniqueName, topologicalSort, checkGraph, ensureOpset, replaceNodes,
  renameTensorUses, removeUnused, getValueInfoShape, insertNodesBefore,
  loadModel, saveModel, modelFileIdentity, externalSource, loadTensorData,
} from '../src/onnx/index.js';
import { FIXTURES_DIR as FIX, unetFeeds } from './helpers.js';

const TINY_UNET = join(FIX, 'tiny-unet/model.onnx');
const SD1 = join(FIX, 'tiny-sd1');

const tmp = mkdtempSync(join(tmpdir(), 'sdgen-onnx-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// ------------------------------------------------------------------------------------------------
// helpers

/** Deterministic pseudo-random floats in [-1, 1). */
function lcgFloats(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

async function runModel(path: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, Uint8Array>> {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  try {
    const out = await session.run(feeds);
    const bytes: Record<string, Uint8Array> = {};
    for (const [k, v] of Object.entries(out)) {
      const d = v.data as Float32Array;
      bytes[k] = new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice();
    }
    return bytes;
  } finally {
    await session.release();
  }
}

function initializerBytes(m: ModelProto): Map<string, Buffer> {
  const map = new Map<string, Buffer>();
  for (const t of m.graph!.initializer) {
    assert.ok(t.rawData, `initializer ${t.name} has raw data`);
    map.set(t.name!, Buffer.from(t.rawData.buffer, t.rawData.byteOffset, t.rawData.byteLength));
  }
  return map;
}

function assertSameInitializers(a: ModelProto, b: ModelProto): void {
  const ia = initializerBytes(a);
  const ib = initializerBytes(b);
  assert.equal(ib.size, ia.size);
  for (const [name, bytes] of ia) {
    const other = ib.get(name);
    assert.ok(other, `initializer ${name} present`);
    assert.ok(bytes.equals(other), `initializer ${name} bytes identical`);
  }
}

// ------------------------------------------------------------------------------------------------

describe('proto codec', () => {
  test('tiny-unet decodes and re-encodes byte for byte, raw data as views', () => {
    const buf = readFileSync(TINY_UNET);
    const m = decodeModel(buf);
    assert.equal(m.irVersion, 7);
    assert.deepEqual(m.opsetImport.map((o) => [o.domain, o.version]), [['', 14]]);
    assert.deepEqual(m.graph!.input.map((i) => i.name), ['sample', 'timestep', 'encoder_hidden_states']);
    assert.deepEqual(m.graph!.output.map((o) => o.name), ['out_sample']);
    const w = m.graph!.initializer.find((t) => t.name === 'conv_in.weight')!;
    assert.deepEqual(w.dims, [32, 4, 3, 3]);
    assert.equal(w.rawData!.buffer, buf.buffer, 'rawData is a view of the input');
    assert.equal(w.rawData!.length, 32 * 4 * 3 * 3 * 4);
    const out = encodeModel(m);
    assert.ok(out.equals(buf), 're-encoded bytes identical');
  });

  test('unknown fields of every wire type pass through', () => {
    // NodeProto: input "x", unknown 99 varint 300, output "y", op_type "Relu", unknown 100 fixed64, unknown 101 fixed32
    const node = Buffer.from([
      0x0a, 1, 0x78, // input = "x"
      0x98, 0x06, 0xac, 0x02, // field 99, varint 300
      0x12, 1, 0x79, // output = "y"
      0x22, 4, 0x52, 0x65, 0x6c, 0x75, // op_type = "Relu"
      0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, // field 100, fixed64
      0xad, 0x06, 9, 8, 7, 6, // field 101, fixed32
      0xb3, 0x06, 0x08, 0x01, 0xb4, 0x06, // field 102 group containing field 1 varint 1
    ]);
    const graph = Buffer.concat([Buffer.from([0x0a, node.length]), node, Buffer.from([0xfa, 0x07, 2, 0x68, 0x69])]); // + field 127 "hi"
    const model = Buffer.concat([Buffer.from([0x08, 0x07, 0x3a, graph.length]), graph]);
    const m = decodeModel(model);
    const n = m.graph!.node[0]!;
    assert.deepEqual([n.input, n.output, n.opType], [['x'], ['y'], 'Relu']);
    assert.equal(n.unknownFields!.length, 4);
    assert.deepEqual([...n.unknownFields![0]!], [0x98, 0x06, 0xac, 0x02]);
    assert.deepEqual([...m.graph!.unknownFields![0]!], [0xfa, 0x07, 2, 0x68, 0x69]);
    const re = encodeModel(m);
    // known fields first in field order, then the unknown ones in the order met
    const expectNode = Buffer.from([
      0x0a, 1, 0x78, 0x12, 1, 0x79, 0x22, 4, 0x52, 0x65, 0x6c, 0x75,
      0x98, 0x06, 0xac, 0x02, 0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, 0xad, 0x06, 9, 8, 7, 6, 0xb3, 0x06, 0x08, 0x01, 0xb4, 0x06,
    ]);
    const expectGraph = Buffer.concat([Buffer.from([0x0a, expectNode.length]), expectNode, Buffer.from([0xfa, 0x07, 2, 0x68, 0x69])]);
    assert.deepEqual([...re], [...Buffer.concat([Buffer.from([0x08, 0x07, 0x3a, expectGraph.length]), expectGraph])]);
  });

  test('int64: negative and beyond-2^53 values are exact (bigint), 10-byte varints', () => {
    const INT64_MAX = 2n ** 63n - 1n;
    const node: NodeProto = {
      input: ['x'], output: ['y'], opType: 'Slice',
      attribute: [attrInt('ends', INT64_MAX), attrInt('neg', -1), attrInts('mix', [-(2n ** 63n), 2 ** 53 - 1, 2n ** 53n, 0])],
    };
    const m: ModelProto = {
      irVersion: 8, opsetImport: [{ domain: '', version: 9 }],
      graph: { node: [node], initializer: [], input: [], output: [], valueInfo: [] },
    };
    const buf = encodeModel(m);
    const back = decodeModel(buf);
    const n = back.graph!.node[0]!;
    assert.equal(getInt(n, 'ends'), INT64_MAX);
    assert.equal(getInt(n, 'neg'), -1);
    assert.deepEqual(getInts(n, 'mix'), [-(2n ** 63n), 2 ** 53 - 1, 2n ** 53n, 0]);
    // attribute 'neg': name(1) "neg", i(3) = -1 as ten bytes, type(20) = INT(2)
    const attrNeg = Buffer.from([0x0a, 3, 0x6e, 0x65, 0x67, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0xa0, 0x01, 0x02]);
    assert.ok(buf.includes(attrNeg), 'negative int64 written as a 10-byte varint');
    assert.ok(encodeModel(back).equals(buf));
    assert.throws(() => encodeTensor({ dims: [2.5], dataType: DataType.FLOAT }), /TensorProto\.dims: 2\.5 is not an integer/);
  });

  test('repeated scalars decode packed and unpacked', () => {
    // TensorProto dims=[2,3] unpacked, data_type=FLOAT, float_data packed [1.5, -2]
    const unpacked = Buffer.from([0x08, 2, 0x08, 3, 0x10, 1, 0x22, 8, 0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0]);
    // same with dims packed and float_data unpacked
    const packed = Buffer.from([0x0a, 2, 2, 3, 0x10, 1, 0x25, 0, 0, 0xc0, 0x3f, 0x25, 0, 0, 0, 0xc0]);
    for (const b of [unpacked, packed]) {
      const t = decodeTensor(b);
      assert.deepEqual(t.dims, [2, 3]);
      assert.equal(t.dataType, DataType.FLOAT);
      assert.deepEqual(t.floatData, [1.5, -2]);
      assert.deepEqual([...encodeTensor(t)], [...unpacked], 'written the way onnx.proto declares');
    }
  });

  test('sparse initializers, functions, metadata props, training info and opset 21 survive', () => {
    const m: ModelProto = {
      irVersion: 10,
      opsetImport: [{ domain: '', version: 21 }, { domain: 'custom', version: 1 }],
      producerName: 'sdgen-test',
      modelVersion: 3,
      metadataProps: [{ key: 'k', value: 'v — ünïcode' }],
      graph: {
        name: 'g',
        node: [{
          input: ['x', 'sp'], output: ['y'], opType: 'MyFn', domain: 'custom', name: 'call', overload: 'o1',
          attribute: [attrFloat('alpha', 0.25), attrString('mode', 'ü'), attrTensor('t', int64Tensor('c', [1, -2]))],
          metadataProps: [{ key: 'nk', value: 'nv' }],
        }],
        initializer: [],
        sparseInitializer: [{
          values: makeTensor('sp', DataType.FLOAT, [2], Float32Array.of(1, 2)),
          indices: int64Tensor('sp_idx', [0, 5]),
          dims: [8],
        }],
        input: [{
          name: 'x',
          type: { tensorType: { elemType: DataType.FLOAT, shape: { dim: [{ dimParam: 'B', denotation: 'DATA_BATCH' }, { dimValue: 8 }] } } },
        }],
        output: [{ name: 'y', type: { sequenceType: { elemType: { tensorType: { elemType: DataType.FLOAT } } } }, metadataProps: [{ key: 'a', value: 'b' }] }],
        valueInfo: [{ name: 'z', type: { optionalType: { elemType: { mapType: { keyType: DataType.INT64, valueType: { tensorType: { elemType: 1 } } } } } } }],
        quantizationAnnotation: [{ tensorName: 'x', quantParameterTensorNames: [{ key: 'SCALE_TENSOR', value: 's' }] }],
        metadataProps: [{ key: 'gk', value: 'gv' }],
      },
      functions: [{
        name: 'MyFn', domain: 'custom', overload: 'o1', input: ['a', 'b'], output: ['c'], attribute: ['mode'],
        attributeProto: [{ name: 'alpha', type: AttributeType.FLOAT, f: 0.5 }],
        node: [{ input: ['a', 'b'], output: ['c'], opType: 'Add', attribute: [] }],
        opsetImport: [{ domain: '', version: 21 }],
        valueInfo: [{ name: 'c', type: { sparseTensorType: { elemType: 1 } } }],
        metadataProps: [{ key: 'fk', value: 'fv' }],
      }],
      trainingInfo: [{ updateBinding: [{ key: 'w', value: 'w2' }] }],
    };
    const back = decodeModel(encodeModel(m));
    const spBack = back.graph!.sparseInitializer![0]!;
    assert.deepEqual([...tensorValues(spBack.values!)], [1, 2]);
    assert.deepEqual([...tensorValues(spBack.indices!)], [0n, 5n]);
    assert.deepEqual(spBack.dims, [8]);
    assert.deepEqual(back.opsetImport, m.opsetImport);
    assert.deepEqual(back.metadataProps, m.metadataProps);
    assert.deepEqual(back.functions, m.functions);
    assert.deepEqual(back.trainingInfo, m.trainingInfo);
    assert.deepEqual(back.graph!.input, m.graph!.input);
    assert.deepEqual(back.graph!.output, m.graph!.output);
    assert.deepEqual(back.graph!.valueInfo, m.graph!.valueInfo);
    assert.deepEqual(back.graph!.quantizationAnnotation, m.graph!.quantizationAnnotation);
    assert.deepEqual(back.graph!.metadataProps, m.graph!.metadataProps);
    const n = back.graph!.node[0]!;
    assert.equal(n.overload, 'o1');
    assert.deepEqual(n.metadataProps, [{ key: 'nk', value: 'nv' }]);
    assert.equal(getString(n, 'mode'), 'ü');
    assert.equal(getFloat(n, 'alpha'), 0.25);
    assert.deepEqual([...tensorValues(getTensor(n, 't'))], [1n, -2n]);
    assert.equal(getValueInfoShape(back.graph!, 'x')!.join(','), 'B,8');
    assert.ok(encodeModel(back).equals(encodeModel(m)));
  });

  test('garbage is rejected with SdgenError, not RangeError', () => {
    const cases = [
      Buffer.from('\x89PNG\r\n\x1a\n0000000000000000'),
      Buffer.from('{"this": "is json"}'),
      Buffer.from([0x3a, 0x80]), // graph field with a truncated length
      Buffer.from([0x3a, 0x10, 0x0a]), // graph longer than the input
      Buffer.from([]),
      Buffer.from([0x08, 0x07]), // valid protobuf, but no graph
      lcgFloats(1000, 7),
    ];
    for (const c of cases) {
      const bytes = c instanceof Float32Array ? new Uint8Array(c.buffer) : c;
      assert.throws(() => decodeModel(bytes), (e: unknown) => e instanceof SdgenError && /not an ONNX model/.test((e as Error).message));
    }
  });
});

describe('tensors and attributes', () => {
  test('makeTensor views the data; tensorValues views aligned data and copies unaligned data', () => {
    const data = Float32Array.of(1, -2.5, 3);
    const t = makeTensor('w', DataType.FLOAT, [3], data);
    assert.equal(t.rawData!.buffer, data.buffer);
    const v = tensorValues(t) as Float32Array;
    assert.equal(v.buffer, data.buffer);
    const shifted = new Uint8Array(13);
    shifted.set(t.rawData!, 1);
    const u = tensorValues({ ...t, rawData: shifted.subarray(1) }) as Float32Array;
    assert.deepEqual([...u], [1, -2.5, 3]);
    assert.throws(() => makeTensor('bad', DataType.FLOAT, [4], data));
    assert.deepEqual([...tensorValues({ dims: [2], dataType: DataType.INT64, int64Data: [5, -(2n ** 62n)] })], [5n, -(2n ** 62n)]);
    assert.equal(elementSize(DataType.FLOAT16), 2);
    assert.equal(elementSize(DataType.INT4), 0.5);
    assert.equal(numElements([2, 3, 4]), 24);
    assert.equal(numElements([]), 1);
    assert.throws(() => tensorValues({ dims: [1], dataType: 1, dataLocation: DataLocation.EXTERNAL }), SdgenError);
  });

  test('float16 conversion: rounding to nearest even, subnormals, inf, nan', () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [0.5, 0x3800], [65504, 0x7bff],
      [65519.99, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-Infinity, 0xfc00], [Infinity, 0x7c00],
      [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -14 - 2 ** -24, 0x03ff],
      [2 ** -25, 0x0000], [1.5 * 2 ** -24, 0x0002], [2.5 * 2 ** -24, 0x0002], [1.0000001 * 2 ** -25, 0x0001],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -10, 0x3c01], [-0, 0x8000], [0, 0],
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up from the largest subnormal into the smallest normal
    ];
    const h = float32ToFloat16(Float32Array.from(cases, (c) => c[0]));
    assert.deepEqual([...h].map((x) => x.toString(16)), cases.map((c) => c[1].toString(16)));
    const nan = float32ToFloat16(Float32Array.of(NaN));
    assert.equal(nan[0]! & 0x7c00, 0x7c00);
    assert.notEqual(nan[0]! & 0x3ff, 0);
    assert.ok(Number.isNaN(float16ToFloat32(Uint16Array.of(0x7e00))[0]));
    assert.deepEqual([...float16ToFloat32(Uint16Array.of(0x0001, 0x8400, 0x7bff, 0xfc00))], [2 ** -24, -(2 ** -14), 65504, -Infinity]);
    // every non-NaN half survives half → float → half
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = float32ToFloat16(float16ToFloat32(all));
    for (let i = 0; i < 65536; i++) {
      if ((i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0) continue;
      if (back[i] !== i) assert.fail(`half 0x${i.toString(16)} came back as 0x${back[i]!.toString(16)}`);
    }
  });

  test('attribute readers: defaults, types, UTF-8', () => {
    const n: NodeProto = { input: [], output: [], opType: 'X', attribute: [attrInt('axis', 1), attrString('s', 'héllo')] };
    assert.equal(getInt(n, 'axis'), 1);
    assert.equal(getInt(n, 'missing', 7), 7);
    assert.throws(() => getInt(n, 'missing'), SdgenError);
    assert.throws(() => getFloat(n, 'axis'), SdgenError);
    assert.equal(getString(n, 's'), 'héllo');
    assert.deepEqual([...getAttr(n, 's')!.s!], [...Buffer.from('héllo', 'utf8')]);
  });
});

describe('graph helpers', () => {
  const small = (): ModelProto => ({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 14 }],
    graph: {
      node: [
        { name: 'a', input: ['x', 'w'], output: ['t1'], opType: 'Add', attribute: [] },
        { name: 'b', input: ['t1'], output: ['t2'], opType: 'Relu', attribute: [] },
        { name: 'c', input: ['t2', ''], output: ['y'], opType: 'Clip', attribute: [] },
        { name: 'dead', input: ['t1'], output: ['unused'], opType: 'Neg', attribute: [] },
      ],
      initializer: [makeTensor('w', DataType.FLOAT, [1], Float32Array.of(1)), makeTensor('w_unused', DataType.FLOAT, [1], Float32Array.of(2))],
      input: [{ name: 'x' }],
      output: [{ name: 'y' }],
      valueInfo: [{ name: 'unused' }, { name: 't2' }],
    },
  });

  test('checkGraph passes a valid graph and the fixture, flags a dangling input and a cycle', () => {
    assert.deepEqual(checkGraph(small()), []);
    const unet = decodeModel(readFileSync(TINY_UNET));
    assert.deepEqual(checkGraph(unet), []);
    assert.deepEqual(getValueInfoShape(unet.graph!, 'encoder_hidden_states'), ['batch', 'sequence', 32]);
    assert.equal(getValueInfoShape(unet.graph!, 'nothing'), undefined);
    const dangling = small();
    dangling.graph!.node[1]!.input[0] = 'nowhere';
    const p1 = checkGraph(dangling);
    assert.equal(p1.length, 1);
    assert.match(p1[0]!, /input 'nowhere' is not produced/);
    const cyclic = small();
    cyclic.graph!.node[0]!.input[1] = 't2'; // a uses t2, produced by b which uses a's output
    const p2 = checkGraph(cyclic);
    assert.ok(p2.some((p) => /cycle/.test(p)), p2.join('\n'));
    assert.throws(() => topologicalSort(cyclic.graph!), /cycle/);
  });

  test('checkGraph sees outer-scope values in subgraphs', () => {
    const m = small();
    const body = { node: [{ input: ['t1'], output: ['z'], opType: 'Identity', attribute: [] }], initializer: [], input: [], output: [{ name: 'z' }], valueInfo: [] };
    m.graph!.node.push({ name: 'if', input: ['cond'], output: ['r'], opType: 'If', attribute: [{ name: 'then_branch', type: AttributeType.GRAPH, g: body }] });
    m.graph!.input.push({ name: 'cond' });
    assert.deepEqual(checkGraph(m), []);
    assert.deepEqual(new GraphIndex(m.graph!).consumers('t1').map((n) => n.name), ['b', 'dead', 'if'], 'If uses t1 through its subgraph');
    body.node[0]!.input[0] = 'ghost';
    assert.equal(checkGraph(m).length, 1);
  });

  test('topologicalSort repairs a shuffled UNet and keeps a valid order unchanged', () => {
    const m = decodeModel(readFileSync(TINY_UNET));
    const original = [...m.graph!.node];
    topologicalSort(m.graph!);
    assert.ok(m.graph!.node.every((n, i) => n === original[i]));
    const shuffled = [...original];
    let s = 12345;
    for (let i = shuffled.length - 1; i > 0; i--) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const j = s % (i + 1);
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    m.graph!.node = shuffled;
    assert.ok(checkGraph(m).length > 0);
    topologicalSort(m.graph!);
    assert.deepEqual(checkGraph(m), []);
    assert.equal(new Set(m.graph!.node).size, original.length);
  });

  test('index, names, opsets, edits, dead code', () => {
    const m = small();
    const g = m.graph!;
    const ix = new GraphIndex(g);
    assert.equal(ix.producer('t1')!.name, 'a');
    assert.deepEqual(ix.consumers('t1').map((n) => n.name), ['b', 'dead']);
    assert.equal(ix.nodesByOp('Relu', 'ai.onnx').length, 1);
    assert.equal(ix.nodeByName('c')!.opType, 'Clip');
    assert.ok(ix.initializer('w'));
    assert.ok(ix.isGraphInput('x') && !ix.isGraphInput('w'));
    assert.equal(uniqueName(g, 't1'), 't1_1');
    assert.equal(uniqueName(g, 'fresh'), 'fresh');
    const alloc = new NameAllocator(g);
    assert.deepEqual([alloc.alloc('a'), alloc.alloc('a'), alloc.alloc('q')], ['a_1', 'a_2', 'q']);

    assert.equal(ensureOpset(m, 'ai.onnx', 17), 17);
    assert.equal(ensureOpset(m, '', 13), 17, 'never lowers');
    assert.equal(ensureOpset(m, 'com.microsoft', 1), 1);
    assert.deepEqual(m.opsetImport, [{ domain: '', version: 17 }, { domain: 'com.microsoft', version: 1 }]);

    // replace Relu by Sigmoid → Mul (swish), consuming t1
    const relu = ix.nodeByName('b')!;
    const sig: NodeProto = { name: 'sig', input: ['t1'], output: ['s'], opType: 'Sigmoid', attribute: [] };
    const mul: NodeProto = { name: 'mul', input: ['t1', 's'], output: ['t2'], opType: 'Mul', attribute: [] };
    replaceNodes(g, [relu], [mul, sig]); // given out of order: gets re-sorted
    assert.deepEqual(g.node.map((n) => n.name), ['a', 'sig', 'mul', 'c', 'dead']);
    assert.deepEqual(checkGraph(m), []);

    insertNodesBefore(g, g.node[3]!, [{ name: 'id', input: ['t2'], output: ['t2b'], opType: 'Identity', attribute: [] }]);
    const idNode = g.node[3]!;
    assert.equal(renameTensorUses(g, 't2', 't2b', [idNode]), 1);
    assert.deepEqual(g.node.find((n) => n.name === 'c')!.input, ['t2b', '']);

    const removed = removeUnused(g);
    assert.deepEqual(removed, { nodes: 1, initializers: 1 });
    assert.deepEqual(g.node.map((n) => n.name), ['a', 'sig', 'mul', 'id', 'c']);
    assert.deepEqual(g.initializer.map((t) => t.name), ['w']);
    assert.deepEqual(g.valueInfo.map((v) => v.name), ['t2']);
    assert.deepEqual(checkGraph(m), []);
  });
});

describe('model files', () => {
  test('tiny-sd1 unet: load (external) → save inline and external → identical bytes and identical onnxruntime outputs', async () => {
    const src = join(SD1, 'unet/model.onnx');
    const m = await loadModel(src);
    assert.ok(m.graph!.initializer.every((t) => t.rawData && t.dataLocation === undefined && t.externalData === undefined));
    const inlinePath = join(tmp, 'unet-inline/model.onnx');
    const extPath = join(tmp, 'unet-ext/model.onnx');
    cpSync(join(SD1, 'unet/config.json'), join(tmp, 'unet-inline/config.json'));
    cpSync(join(SD1, 'unet/config.json'), join(tmp, 'unet-ext/config.json'));
    await saveModel(m, inlinePath, { externalData: false });
    let lastProgress: [number, number] = [0, 0];
    await saveModel(m, extPath, { externalData: true, weightsFile: 'weights.pb', onProgress: (d, t) => (lastProgress = [d, t]) });
    assert.equal(lastProgress[0], lastProgress[1]);
    assert.ok(readFileSync(inlinePath).equals(readFileSync(TINY_UNET)), 'inline save is byte-identical to tiny-unet/model.onnx');
    assert.deepEqual(readdirSync(join(tmp, 'unet-ext')).sort(), ['config.json', 'model.onnx', 'weights.pb'], 'no temp files left');
    const reExt = await loadModel(extPath);
    assertSameInitializers(m, reExt);
    const extTensors = (await loadModel(extPath, { externalData: 'lazy' })).graph!.initializer.filter((t) => t.dataLocation === DataLocation.EXTERNAL);
    assert.ok(extTensors.length > 100);
    for (const t of extTensors) {
      const off = Number(t.externalData!.find((e) => e.key === 'offset')!.value);
      const len = Number(t.externalData!.find((e) => e.key === 'length')!.value);
      assert.equal(off % (len >= 65536 ? 4096 : 64), 0);
      assert.ok(len >= 1024);
    }

    const feeds = unetFeeds(2, 16, 16, { seq: 7 });
    const ref = await runModel(src, feeds);
    for (const p of [inlinePath, extPath]) {
      const out = await runModel(p, feeds);
      assert.ok(Buffer.from(out.out_sample!).equals(Buffer.from(ref.out_sample!)), `${p}: bit-identical outputs`);
    }
  });

  test('text_encoder and vae_decoder round trip with identical outputs', async () => {
    const ids = new Int32Array(77).fill(49407);
    ids.set([49406, 320, 2368, 530, 49407]);
    const cases: [string, Record<string, ort.Tensor>][] = [
      ['text_encoder', { input_ids: new ort.Tensor('int32', ids, [1, 77]) }],
      ['vae_decoder', { latent_sample: new ort.Tensor('float32', lcgFloats(4 * 8 * 8, 3), [1, 4, 8, 8]) }],
    ];
    for (const [name, feeds] of cases) {
      const src = join(SD1, name, 'model.onnx');
      const m = await loadModel(src);
      const inl = join(tmp, `${name}-inline.onnx`);
      const ext = join(tmp, `${name}-ext.onnx`);
      await saveModel(m, inl);
      await saveModel(m, ext, { externalData: true });
      assert.ok(readFileSync(inl).equals(readFileSync(src)), `${name}: 'auto' keeps an inline model inline, byte-identical`);
      assert.ok(existsSync(`${ext}_data`));
      assertSameInitializers(m, await loadModel(ext));
      const ref = await runModel(src, feeds);
      for (const p of [inl, ext]) {
        const out = await runModel(p, feeds);
        for (const k of Object.keys(ref)) assert.ok(Buffer.from(out[k]!).equals(Buffer.from(ref[k]!)), `${name} ${k} identical`);
      }
    }
  });

  test('lazy external data streams from the source, also when saving over it', async () => {
    const dir = join(tmp, 'lazy');
    cpSync(join(SD1, 'unet'), dir, { recursive: true });
    const path = join(dir, 'model.onnx');
    const loaded = await loadModel(path);
    const lazy = await loadModel(path, { externalData: 'lazy' });
    const t = lazy.graph!.initializer.find((x) => x.name === 'conv_in.weight')!;
    assert.equal(t.rawData, undefined);
    assert.equal(t.dataLocation, DataLocation.EXTERNAL);
    assert.deepEqual(externalSource(t), { path: join(dir, 'weights.pb'), offset: 0, length: 4608 });
    assert.deepEqual(externalSource({ ...t, name: 'renamed' }), externalSource(t), 'spread keeps the source');
    assert.throws(() => tensorValues(t), SdgenError);

    await saveModel(lazy, join(tmp, 'lazy-inline.onnx'), { externalData: false });
    assert.ok(readFileSync(join(tmp, 'lazy-inline.onnx')).equals(readFileSync(TINY_UNET)));

    await saveModel(lazy, path, { weightsFile: 'weights.pb' }); // 'auto' → external, in place
    assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'model.onnx', 'weights.pb']);
    assertSameInitializers(loaded, await loadModel(path));
    const lazyAgain = await loadModel(path, { externalData: 'lazy' });
    const w = lazyAgain.graph!.initializer.find((x) => x.name === 'time_embedding.linear_2.weight')!;
    const bytes = await loadTensorData(w);
    assert.equal(w.dataLocation, undefined);
    assert.ok(Buffer.from(bytes).equals(Buffer.from(loaded.graph!.initializer.find((x) => x.name === w.name)!.rawData!)));
    // the in-memory lazy model follows the new file
    await saveModel(lazy, join(tmp, 'lazy-inline2.onnx'), { externalData: false });
    assert.ok(readFileSync(join(tmp, 'lazy-inline2.onnx')).equals(readFileSync(TINY_UNET)));
  });

  test('load errors: missing file, not ONNX, missing or short external data', async () => {
    await assert.rejects(loadModel(join(tmp, 'nope.onnx')), (e: unknown) => e instanceof SdgenError && /not found/.test((e as Error).message));
    writeFileSync(join(tmp, 'garbage.onnx'), 'hello, I am not a model');
    await assert.rejects(loadModel(join(tmp, 'garbage.onnx')), (e: unknown) => e instanceof SdgenError && /not an ONNX model/.test((e as Error).message));
    const dir = join(tmp, 'broken');
    cpSync(join(SD1, 'unet/model.onnx'), join(dir, 'model.onnx'));
    await assert.rejects(loadModel(join(dir, 'model.onnx')), (e: unknown) => e instanceof SdgenError && /weights\.pb/.test((e as Error).message));
    writeFileSync(join(dir, 'weights.pb'), Buffer.alloc(100));
    await assert.rejects(loadModel(join(dir, 'model.onnx')), (e: unknown) => e instanceof SdgenError && /past the end/.test((e as Error).message));
  });

  test('over 2 GiB inline is refused before anything is written', async () => {
    const huge = { length: 2 ** 31 } as unknown as Uint8Array; // only the length is looked at
    const m: ModelProto = {
      irVersion: 8, opsetImport: [{ domain: '', version: 14 }],
      graph: { node: [], initializer: [{ name: 'big', dims: [2 ** 31], dataType: DataType.UINT8, rawData: huge }], input: [], output: [], valueInfo: [] },
    };
    assert.throws(() => encodeModel(m), (e: unknown) => e instanceof SdgenError && /external data/.test((e as Error).message));
    const dir = join(tmp, 'huge');
    cpSync(join(SD1, 'unet/config.json'), join(dir, 'config.json'));
    await assert.rejects(saveModel(m, join(dir, 'model.onnx'), { externalData: false }), (e: unknown) => e instanceof SdgenError && /2 GiB/.test((e as Error).message));
    assert.deepEqual(readdirSync(dir), ['config.json']);
  });

  test('modelFileIdentity: stable, and changes with the external data', async () => {
    const dir = join(tmp, 'ident');
    cpSync(join(SD1, 'unet'), dir, { recursive: true });
    const a = await modelFileIdentity(join(dir, 'model.onnx'));
    assert.match(a, /^[0-9a-f]{64}$/);
    assert.equal(await modelFileIdentity(join(dir, 'model.onnx')), a);
    const w = readFileSync(join(dir, 'weights.pb'));
    w[10] = w[10]! ^ 0xff;
    writeFileSync(join(dir, 'weights.pb'), w);
    assert.notEqual(await modelFileIdentity(join(dir, 'model.onnx')), a);
    assert.notEqual(await modelFileIdentity(TINY_UNET), a);
    await assert.rejects(modelFileIdentity(join(tmp, 'missing.onnx')), SdgenError);
  });
});

// keep the tensor type import used for documentation of helpers
export type { TensorProto };
