/**
 * NodeProto attribute makers and readers. Strings are UTF-8 bytes in the proto (`s`, `strings`);
 * these helpers convert from/to JS strings.
 */
import { SdgenError } from '../errors.js';
import {
  AttributeType, type AttributeProto, type GraphProto, type Int64, type NodeProto, type TensorProto,
} from './types.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function attrInt(name: string, v: Int64): AttributeProto {
  return { name, type: AttributeType.INT, i: v };
}

export function attrFloat(name: string, v: number): AttributeProto {
  return { name, type: AttributeType.FLOAT, f: v };
}

export function attrInts(name: string, v: readonly Int64[]): AttributeProto {
  return { name, type: AttributeType.INTS, ints: [...v] };
}

export function attrString(name: string, v: string): AttributeProto {
  return { name, type: AttributeType.STRING, s: encoder.encode(v) };
}

export function attrTensor(name: string, t: TensorProto): AttributeProto {
  return { name, type: AttributeType.TENSOR, t };
}

export function attrGraph(name: string, g: GraphProto): AttributeProto {
  return { name, type: AttributeType.GRAPH, g };
}

export function getAttr(node: NodeProto, name: string): AttributeProto | undefined {
  for (const a of node.attribute) if (a.name === name) return a;
  return undefined;
}

/** Sets (replaces or appends) an attribute on a node. */
export function setAttr(node: NodeProto, attr: AttributeProto): void {
  const i = node.attribute.findIndex((a) => a.name === attr.name);
  if (i >= 0) node.attribute[i] = attr;
  else node.attribute.push(attr);
}

function missing(node: NodeProto, name: string): never {
  throw new SdgenError(`node ${node.name ?? node.opType} (${node.opType}) has no attribute '${name}'`);
}

function wrongType(node: NodeProto, a: AttributeProto, want: string): never {
  throw new SdgenError(
    `attribute '${a.name}' of node ${node.name ?? node.opType} is ${AttributeType[a.type ?? 0] ?? a.type}, expected ${want}`,
  );
}

/** Checks the attribute kind, tolerating a missing `type` when the value field is present (IR < 2). */
function is(a: AttributeProto, t: AttributeType, present: boolean): boolean {
  return a.type === t || ((a.type === undefined || a.type === AttributeType.UNDEFINED) && present);
}

/** An INT attribute as a number (bigint when it does not fit a safe integer, e.g. INT64_MAX). */
export function getInt(node: NodeProto, name: string, dflt?: Int64): Int64 {
  const a = getAttr(node, name);
  if (a === undefined) return dflt ?? missing(node, name);
  if (!is(a, AttributeType.INT, a.i !== undefined)) wrongType(node, a, 'INT');
  return a.i ?? 0;
}

export function getInts(node: NodeProto, name: string, dflt?: Int64[]): Int64[] {
  const a = getAttr(node, name);
  if (a === undefined) return dflt ?? missing(node, name);
  if (!is(a, AttributeType.INTS, a.ints !== undefined)) wrongType(node, a, 'INTS');
  return a.ints ?? [];
}

export function getFloat(node: NodeProto, name: string, dflt?: number): number {
  const a = getAttr(node, name);
  if (a === undefined) return dflt ?? missing(node, name);
  if (!is(a, AttributeType.FLOAT, a.f !== undefined)) wrongType(node, a, 'FLOAT');
  return a.f ?? 0;
}

export function getFloats(node: NodeProto, name: string, dflt?: number[]): number[] {
  const a = getAttr(node, name);
  if (a === undefined) return dflt ?? missing(node, name);
  if (!is(a, AttributeType.FLOATS, a.floats !== undefined)) wrongType(node, a, 'FLOATS');
  return a.floats ?? [];
}

export function getString(node: NodeProto, name: string, dflt?: string): string {
  const a = getAttr(node, name);
  if (a === undefined) return dflt ?? missing(node, name);
  if (!is(a, AttributeType.STRING, a.s !== undefined)) wrongType(node, a, 'STRING');
  return a.s ? decoder.decode(a.s) : '';
}

export function getTensor(node: NodeProto, name: string): TensorProto {
  const a = getAttr(node, name);
  if (a === undefined) return missing(node, name);
  if (!is(a, AttributeType.TENSOR, a.t !== undefined) || a.t === undefined) wrongType(node, a, 'TENSOR');
  return a.t;
}

/** Every subgraph held by a node's attributes (If branches, Loop/Scan bodies). */
export function subgraphsOf(node: NodeProto): GraphProto[] {
  const out: GraphProto[] = [];
  for (const a of node.attribute) {
    if (a.g !== undefined) out.push(a.g);
    if (a.graphs !== undefined) out.push(...a.graphs);
  }
  return out;
}
