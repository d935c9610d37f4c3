/** Options and results of `sdgen bench` (runBench). */
import type { ProfileSummary } from './profile.js';
import type { ConvRate, MatMulRate } from './matmul-rate.js';

export type BenchAttention = 'standard' | 'fused';
export type BenchConv = 'direct' | 'winograd';

export interface BenchOptions {
  /** image sides in pixels (square images); default [512, 768, 1024] */
  sizes: number[];
  /** ToMe ratios; default [0, 0.3, 0.5, 0.6] (sx = sy = 2, max downsample 1, no rand) */
  ratios: number[];
  /** attention modes; default ['standard', 'fused'] */
  attention: BenchAttention[];
  /**
   * convolutions of the 'fused' configurations (sdgen's optimized graph) and of the whole image;
   * 'standard' rows run the exported convolutions. Default winograd (sdgen's CPU default).
   */
  conv: BenchConv;
  /** timed UNet calls per configuration (median reported); default 2 */
  steps: number;
  /**
   * processes per configuration: the timed calls are split over this many rounds, each round
   * visiting every configuration (order reversed every other round) so machine drift cancels;
   * default 2 (1 when steps is 1)
   */
  rounds: number;
  /** UNet batch; default 2 (classifier-free guidance) */
  batch: number;
  /**
   * of the sizes, those also timed at batch 1 (no classifier-free guidance, as the 768²
   * target), with ToMe 0 and 0.5 (those of the ratios) under every attention mode; default [768]
   */
  batch1Sizes: number[];
  /** summarize onnxruntime's profile per op type for every configuration */
  profile: boolean;
  /** model folder (diffusers layout) or UNet .onnx; default: the synthetic sd15 model in the cache */
  model?: string;
  /** results directory; default bench/results */
  out: string;
  /** cache directory (synthetic model, bench variants); default sdgen's cache dir */
  cacheDir?: string;
  /** intra-op threads; default physical cores */
  threads?: number;
  /** time one whole image (text encoder, steps, VAE, PNG) at this size; 0 = skip; default 512 */
  imageSize: number;
  /** denoising steps of the whole-image run; default 20 */
  imageSteps: number;
  /** ToMe ratio of the whole-image run; default 0.5 */
  imageRatio?: number;
  /** attention of the whole-image run; default fused */
  imageAttention?: BenchAttention;
  /**
   * minutes the run may take (0 = no limit; default 30): work not expected to end in time is not
   * started (see ./budget.ts) and the table says what was dropped
   */
  budget: number;
  /** give up on a configuration's process after this many seconds (0 = no limit; default 0) */
  configTimeout?: number;
  /** side of the square float32 MatMul that measures the machine's rate; default 2048 */
  matmulSize?: number;
  /** memory available to one configuration (bytes); default: MemAvailable now, less a margin */
  memoryLimit?: number;
  /** progress lines (default: console.log) */
  log?: (line: string) => void;
}

export type BenchStatus = 'ok' | 'skipped' | 'failed';

export interface ConfigResult {
  size: number;
  batch: number;
  ratio: number;
  attention: BenchAttention;
  status: BenchStatus;
  /** why skipped / failed */
  note?: string;
  /** every timed call (ms) */
  samplesMs: number[];
  medianMs?: number;
  /** max RSS over this configuration's processes (bytes) */
  peakRss?: number;
  /** memory the estimate predicted (bytes) */
  predictedPeak: number;
  /** session creation time (ms), first process */
  loadMs?: number;
  /** first (warm-up) call (ms) */
  warmupMs?: number;
  /** FLOPs of one UNet call, counted from onnxruntime's profile */
  flops?: number;
  /** floor time: each kernel class's counted FLOPs ÷ its measured rate (ms) */
  floorMs?: number;
  /** floorMs / medianMs */
  efficiency?: number;
  /** vs the same attention mode at ratio 0 */
  speedup?: number;
  memRatio?: number;
  /** vs standard attention at ratio 0 */
  speedupVsBaseline?: number;
  /** per op type summary of one steady-state call (--profile) */
  profile?: ProfileSummary;
  /** per op type summary of the warm-up call (always; first call, so one-time costs included) */
  warmupProfile?: ProfileSummary;
}

export interface ImageResult {
  size: number;
  steps: number;
  ratio: number;
  attention: BenchAttention;
  status: BenchStatus;
  note?: string;
  loadMs?: number;
  textEncoderMs?: number;
  unetMs?: number;
  vaeMs?: number;
  pngMs?: number;
  totalMs?: number;
  peakRss?: number;
}

export interface MachineInfo {
  cpuModel: string;
  logicalCpus: number;
  threads: number;
  totalMem: number;
  availableMemAtStart: number;
  loadAverage: number[];
  node: string;
  ort: string;
  sdgen: string;
  platform: string;
}

export interface BenchReport {
  started: string;
  finished: string;
  machine: MachineInfo;
  model: string;
  options: Omit<BenchOptions, 'log'>;
  matmul?: MatMulRate;
  /** onnxruntime's 3×3 convolution rate on this machine */
  conv?: ConvRate;
  /** the rate the floor divides by: the faster of the MatMul and convolution rates (GFLOP/s) */
  floorGflops?: number;
  configs: ConfigResult[];
  image?: ImageResult;
  /** files written */
  files: string[];
}
