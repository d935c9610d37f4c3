/** Barrel of the ONNX layer: types, codec, model I/O, tensors, attributes, graph helpers, node emitter, builder. */
export * from './types.js';
export * from './proto.js';
export * from './tensor.js';
export * from './attributes.js';
export * from './graph.js';
export * from './emitter.js';
export * from './model-io.js';
export * from './builder.js';
// tensor.ts and builder.ts both define elementSize; the explicit export picks tensor.ts's
// (same byte sizes; it also covers the 4-bit types).
export { elementSize } from './tensor.js';
