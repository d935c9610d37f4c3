/**
 * Polyphase upsampling convolutions: a 3×3 convolution of a 2× nearest-neighbour upsampled map,
 * y = Conv3×3(Resize(x, 2×, nearest)), computed from x itself. Pure graph rewrite, no I/O.
 *
 * Output pixel (2i + a, 2j + b) reads upsampled rows 2i + a − 1 … 2i + a + 1, which are source
 * rows i − 1, i, i for a = 0 and i, i, i + 1 for a = 1 (columns alike). Taps that land on the
 * same source pixel add up, so each of the four phases (a, b) is a 2×2 convolution of x:
 *
 *   rows of phase a = 0: x[i − 1] · w₀ + x[i] · (w₁ + w₂)      (pad 1 above)
 *   rows of phase a = 1: x[i] · (w₀ + w₁) + x[i + 1] · w₂      (pad 1 below)
 *
 *   k_ab = R_a · w · R_bᵀ,  R₀ = [[1, 0, 0], [0, 1, 1]],  R₁ = [[1, 1, 0], [0, 0, 1]]
 *   y    = DepthToSpace(Concat(Conv(x, k₀₀), Conv(x, k₀₁), Conv(x, k₁₀), Conv(x, k₁₁)), 2)
 *
 * DepthToSpace's DCR order puts channel (2a + b)·K + k at (k, 2i + a, 2j + b). That is 16·K·C
 * multiply-adds per source pixel instead of 36 (2.25× fewer), and the upsampled map is never
 * made. The kernels k_ab are computed in the graph from the convolution's weight (onnxruntime
 * folds them when it loads the model; they are 16/9 of the weight). The result equals the
 * original up to float rounding (the summed taps).
 *
 * sdgen applies it to the convolutions the Winograd rewrite leaves direct because their map is
 * too large (a VAE decoder's image-resolution upsampler, src/optimize/winograd.ts autoTile):
 * where Winograd applies it does better (9·K·C per source pixel at m = 4).
 */
import { attrInt, attrInts, getFloats, getString } from '../onnx/attributes.js';
import { NodeEmitter, sharedInitializers } from '../onnx/emitter.js';
import { GraphIndex, NameAllocator, replaceNodes } from '../onnx/graph.js';
import { floatTensor } from '../onnx/tensor.js';
import type { ModelProto, NodeProto } from '../onnx/types.js';
import { constFloats, ineligible } from './winograd.js';

export interface PolyphaseResult {
  /** upsample + convolution pairs rewritten */
  count: number;
  /** the rewritten convolutions' names (or output names, for unnamed ones) */
  convs: string[];
  /** bytes the 2×2 kernels add once onnxruntime has folded them (16/9 of each 3×3 weight) */
  extraWeightBytes: number;
}

/**
 * Whether `n` upsamples 2× by nearest neighbour, each output pixel (y, x) taking source pixel
 * (⌊y/2⌋, ⌊x/2⌋): Upsample, or a Resize whose coordinates and rounding give that (torch's
 * `interpolate(scale_factor=2, mode='nearest')` exports as Resize asymmetric/floor).
 * - asymmetric: the source coordinate is y/2, i or i + ½; floor and round_prefer_floor give i.
 * - half_pixel (the default from opset 11) and pytorch_half_pixel: (y + ½)/2 − ½ is i ∓ ¼, so
 *   any rounding to nearest gives i, but floor and ceil do not.
 */
function isNearest2x(idx: GraphIndex, n: NodeProto, opset: number): boolean {
  if (n.opType !== 'Resize' && n.opType !== 'Upsample') return false;
  if (getString(n, 'mode', 'nearest') !== 'nearest') return false;
  if (n.opType === 'Resize') {
    if (n.input.length > 3 && n.input[3]) return false; // sizes: the scale is not a constant here
    // opset 10 has neither attribute: asymmetric, rounding as round_prefer_floor
    const ctm = getString(n, 'coordinate_transformation_mode', opset >= 11 ? 'half_pixel' : 'asymmetric');
    const mode = getString(n, 'nearest_mode', 'round_prefer_floor');
    const ok = ctm === 'asymmetric'
      ? mode === 'floor' || mode === 'round_prefer_floor'
      : (ctm === 'half_pixel' || ctm === 'pytorch_half_pixel') && (mode === 'round_prefer_floor' || mode === 'round_prefer_ceil');
    if (!ok) return false;
  }
  const at = n.opType === 'Resize' && n.input.length > 2 ? 2 : 1;
  // Upsample-7 has its scales as an attribute
  const scales = n.input[at] ? constFloats(idx, n.input[at]!) : getFloats(n, 'scales', []);
  return scales?.length === 4 && scales[0] === 1 && scales[1] === 1 && scales[2] === 2 && scales[3] === 2;
}

/**
 * Rewrites (in place) the 3×3 convolutions of `model` for which `select` holds (default: all)
 * whose input is a 2× nearest upsample used by nothing else, into their polyphase form (file
 * comment). The upsample goes with them.
 */
export function polyphaseUpsampleConvs(model: ModelProto, select: (conv: NodeProto) => boolean = () => true): PolyphaseResult {
  const result: PolyphaseResult = { count: 0, convs: [], extraWeightBytes: 0 };
  const graph = model.graph;
  if (!graph) return result;
  const idx = new GraphIndex(graph);
  const opset = Number(model.opsetImport?.find((o) => o.domain === '' || o.domain === 'ai.onnx')?.version ?? 1);
  const names = new NameAllocator(graph);
  const shared = sharedInitializers(graph, names, 'polyphase/');
  for (const conv of idx.nodesByOp('Conv')) {
    const e = ineligible(idx, conv, 1);
    if (!select(conv) || e.reason !== undefined) continue;
    const up = idx.producer(conv.input[0]!);
    if (!up || !isNearest2x(idx, up, opset) || idx.isGraphOutput(up.output[0]!) || idx.consumers(up.output[0]!).length !== 1) continue;
    // R_a ([2, 3]) and R_bᵀ ([3, 2]), shared by every rewritten convolution
    const r = [shared('R0', (n) => floatTensor(n, [1, 0, 0, 0, 1, 1], [2, 3])), shared('R1', (n) => floatTensor(n, [1, 1, 0, 0, 0, 1], [2, 3]))];
    const rt = [shared('R0T', (n) => floatTensor(n, [1, 0, 0, 1, 0, 1], [3, 2])), shared('R1T', (n) => floatTensor(n, [1, 0, 1, 0, 0, 1], [3, 2]))];
    const em = new NodeEmitter(names, conv.name ? `${conv.name}/polyphase` : names.alloc('polyphase'));
    const x = up.input[0]!;
    const w = conv.input[1]!;
    const bias = conv.input[2] ? [conv.input[2]] : [];
    const phases: string[] = [];
    for (const a of [0, 1]) {
      const wa = em.op('MatMul', [r[a]!, w]);
      for (const b of [0, 1]) {
        const k = em.op('MatMul', [wa, rt[b]!]);
        phases.push(em.op('Conv', [x, k, ...bias], [attrInts('kernel_shape', [2, 2]), attrInts('pads', [1 - a, 1 - b, a, b])]));
      }
    }
    const cat = em.op('Concat', phases, [attrInt('axis', 1)]);
    em.op('DepthToSpace', [cat], [attrInt('blocksize', 2)], { output: conv.output[0]! });
    replaceNodes(graph, [up, conv], em.nodes);
    result.count++;
    result.convs.push(conv.name || conv.output[0]!);
    result.extraWeightBytes += e.K * e.C * 7 * 4;
  }
  return result;
}
