/**
 * SDXL's conditioning stage (diffusers 0.27.2 `StableDiffusionXLPipeline.encode_prompt` and
 * `_get_add_time_ids`; AUTOMATIC1111's SDXL conditioner for long prompts and emphasis):
 *
 * - prompt embeddings: `hidden_states[-2]` (the penultimate layer's output, no final layer norm)
 *   of `text_encoder` (CLIP ViT-L) and of `text_encoder_2` (OpenCLIP ViT-bigG), concatenated on
 *   the last axis (768 + 1280 = 2048 channels for SDXL base);
 * - pooled embeddings: the `text_embeds` output (projected pooled output) of `text_encoder_2`;
 * - the negative prompt: an empty negative prompt gives zeros for both (the prompt embeddings
 *   and the pooled ones) when the folder's model_index.json says `force_zeros_for_empty_prompt`
 *   (diffusers with no negative prompt; A1111 zeroes an empty negative prompt the same way);
 *   `encodeEmptyNegative` encodes "" instead (diffusers given `negative_prompt=""`);
 * - `time_ids` = (original height, width, crop top, crop left, target height, width), by default
 *   (H, W, 0, 0, H, W); the unconditional rows get the same values (diffusers' defaults for the
 *   `negative_*` sizes).
 *
 * Each tokenizer pads its own way (tokenizer: `<|endoftext|>`, tokenizer_2: `!` = id 0, from its
 * config), exactly diffusers' `padding="max_length"` ids for prompts of ≤ 75 tokens.
 *
 * Long prompts: 'chunk' (default; A1111) splits the prompt into 75-token chunks for both encoders
 * (BREAK and emphasis as for SD 1.x/2.x, emphasis applied per encoder and chunk with the mean
 * restored, as A1111's two SDXL embedders each do), encodes each chunk and concatenates them on
 * the sequence axis; the pooled embedding comes from the FIRST chunk of text_encoder_2, as A1111
 * does (`zs[0].pooled`). The negative prompt is padded to the prompt's chunk count and vice versa.
 * 'truncate' is diffusers: start + the first 75 tokens + end, one chunk.
 *
 * Clip skip: A1111 applies none to SDXL (both embedders read the penultimate layer whatever the
 * setting, unless its `sdxl_clip_l_skip` option is on), and sdgen follows it: the pipeline says so
 * in one line when a run asks for clip skip > 1.
 */
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import type { ClipTokenizer } from '../text/clip-tokenizer.js';
import { applyEmphasis, padChunks, tokenizeChunks, type ChunkedPrompt } from '../text/chunks.js';
import type { ModelSession } from '../models/session.js';
import { textEncoderIO, type TextEncoderIO } from '../models/io.js';
import { toFloat32 } from './tensors.js';
import { LayeredEncoderSession, type HiddenStatesSource, type PromptEmbedding } from './text-encoding.js';

/** SDXL's size and crop conditioning (pixels), diffusers' `original_size`, `crops_coords_top_left`, `target_size`. */
export interface SdxlMicroConditioning {
  /** default: the image size */
  originalSize?: { width: number; height: number };
  /** default: (0, 0) */
  cropTopLeft?: { top: number; left: number };
  /** default: the image size */
  targetSize?: { width: number; height: number };
}

/** `time_ids` [6] = (orig H, orig W, crop top, crop left, target H, target W) as float32 (diffusers' `_get_add_time_ids`). */
export function sdxlTimeIds(width: number, height: number, m: SdxlMicroConditioning = {}): Float32Array {
  const o = m.originalSize ?? { width, height };
  const c = m.cropTopLeft ?? { top: 0, left: 0 };
  const t = m.targetSize ?? { width, height };
  const check = (what: string, v: number, min: number): void => {
    if (!Number.isInteger(v) || v < min || v > 16384) throw new UsageError(`SDXL ${what} must be an integer from ${min} to 16384 (got ${v})`);
  };
  check('original width', o.width, 1);
  check('original height', o.height, 1);
  check('crop left', c.left, 0);
  check('crop top', c.top, 0);
  check('target width', t.width, 1);
  check('target height', t.height, 1);
  return Float32Array.from([o.height, o.width, c.top, c.left, t.height, t.width]);
}

export interface SdxlEncodeOptions {
  emphasis: boolean;
  /** 'chunk' (A1111, default) or 'truncate' (diffusers) */
  longPrompt?: 'chunk' | 'truncate';
  /** encode an empty negative prompt instead of zeroing it (diffusers with `negative_prompt=""`) */
  encodeEmptyNegative?: boolean;
}

/** One prompt's SDXL conditioning. */
export interface SdxlPromptEmbedding {
  /** [chunks·77, dim1 + dim2]; `ids` are text_encoder's (tokenizer's) ids */
  embedding: PromptEmbedding;
  /** 77 ids per chunk as fed to text_encoder_2 */
  ids2: number[][];
  /** text_encoder_2's `text_embeds` of the first chunk */
  pooled: Float32Array;
}

export interface SdxlConditioning {
  cond: SdxlPromptEmbedding;
  /** null: no unconditional pass */
  uncond: SdxlPromptEmbedding | null;
  /** whether `uncond` is the zeros of force_zeros_for_empty_prompt */
  zeroUncond: boolean;
  /** `time_ids` of every row (cond and uncond alike) */
  timeIds: Float32Array;
}

/** One of SDXL's CLIP text encoders: its session, tokenizer and the outputs sdgen reads. */
class SdxlTextEncoder {
  private io: TextEncoderIO;
  private readonly layered: LayeredEncoderSession<{ model: ModelSession; io: TextEncoderIO }> | null;

  constructor(
    private readonly model: ModelSession,
    readonly tokenizer: ClipTokenizer,
    private readonly what: string,
    /** where hidden_states.0…L come from when this export has none (clipSkipSource) */
    hiddenStatesSource: HiddenStatesSource | null,
    private readonly needPooled: boolean,
  ) {
    this.io = textEncoderIO(model.info, what);
    if (needPooled && !this.io.textEmbeds) {
      throw new SdgenError(`${what}: no "text_embeds" output (SDXL's pooled embeddings come from text_encoder_2's projection)`);
    }
    this.layered = hiddenStatesSource
      ? new LayeredEncoderSession(hiddenStatesSource, (m, io) => {
          if (needPooled && !io.textEmbeds) throw new SdgenError(`${m.what}: ${m.path} has no text_embeds output`);
          return { model: m, io };
        })
      : null;
  }

  /** The session and I/O with per-layer hidden states (this export, else its rewrite). */
  private async layeredEncoder(): Promise<{ model: ModelSession; io: TextEncoderIO }> {
    if (this.io.hiddenStates.length > 0) return { model: this.model, io: this.io };
    if (!this.layered) throw new SdgenError(`${this.what}: SDXL needs per-layer hidden states (outputs hidden_states.0 … hidden_states.N)`);
    return this.layered.get();
  }

  async release(): Promise<void> {
    await this.layered?.release();
  }

  /** One 77-id chunk → hidden_states[-2] [77, dim] and, for text_encoder_2, text_embeds. */
  async encodeIds(ids: readonly number[]): Promise<{ hidden: Float32Array; dim: number; pooled: Float32Array | null }> {
    const { model, io } = await this.layeredEncoder();
    const { inputIds } = io;
    if (inputIds.seqLen !== null && inputIds.seqLen !== ids.length) {
      throw new SdgenError(`${this.what}: input "${inputIds.name}" takes ${inputIds.seqLen} tokens, sdgen feeds ${ids.length}`);
    }
    const layers = io.hiddenStates.length - 1;
    if (layers < 1) throw new SdgenError(`${this.what}: has ${layers} layers; SDXL reads the penultimate one`);
    const hsName = io.hiddenStates[layers - 1]!.name; // hidden_states[-2]
    const pooledName = this.needPooled ? io.textEmbeds!.name : null;
    const data = inputIds.type === 'int64' ? BigInt64Array.from(ids, (v) => BigInt(v)) : Int32Array.from(ids);
    const feed = { [inputIds.name]: new ort.Tensor(inputIds.type, data, [1, ids.length]) };
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await model.session.run(feed, pooledName ? [hsName, pooledName] : [hsName]);
    } catch (err) {
      throw new SdgenError(`${this.what} failed: ${(err as Error).message.split('\n')[0]}`, { cause: err });
    }
    const h = out[hsName]!;
    if (h.dims.length !== 3 || h.dims[0] !== 1 || h.dims[1] !== ids.length) {
      throw new SdgenError(`${this.what}: output "${hsName}" has shape [${h.dims.join(', ')}]; expected [1, ${ids.length}, dim]`);
    }
    const hidden = toFloat32(h).slice();
    let pooled: Float32Array | null = null;
    if (pooledName) {
      const p = out[pooledName]!;
      if (p.dims.length !== 2 || p.dims[0] !== 1) throw new SdgenError(`${this.what}: output "${pooledName}" has shape [${p.dims.join(', ')}]; expected [1, dim]`);
      pooled = toFloat32(p).slice();
    }
    return { hidden, dim: h.dims[2]!, pooled };
  }
}

export interface SdxlEncoderParts {
  model: ModelSession;
  tokenizer: ClipTokenizer;
  hiddenStatesSource?: HiddenStatesSource | null;
}

/** SDXL's two text encoders as one conditioning stage (see the header). */
export class SdxlConditioner {
  private readonly enc1: SdxlTextEncoder;
  private readonly enc2: SdxlTextEncoder;

  constructor(first: SdxlEncoderParts, second: SdxlEncoderParts, private readonly forceZerosForEmptyPrompt: boolean) {
    this.enc1 = new SdxlTextEncoder(first.model, first.tokenizer, 'text encoder', first.hiddenStatesSource ?? null, false);
    this.enc2 = new SdxlTextEncoder(second.model, second.tokenizer, 'text encoder 2', second.hiddenStatesSource ?? null, true);
  }

  /** Releases the sessions opened for encoders without hidden_states outputs (the main sessions are the caller's). */
  async release(): Promise<void> {
    await Promise.all([this.enc1.release(), this.enc2.release()]);
  }

  private split(tok: ClipTokenizer, text: string, opts: SdxlEncodeOptions): ChunkedPrompt {
    if (opts.longPrompt !== 'truncate') return tokenizeChunks(tok, text, { emphasis: opts.emphasis });
    // diffusers: start + the first 75 tokens + end (no comma backtrack, later chunks dropped)
    const r = tokenizeChunks(tok, text, { emphasis: opts.emphasis, commaBacktrack: 0 });
    return { ...r, chunks: r.chunks.slice(0, 1) };
  }

  private async encodeOne(c1: ChunkedPrompt, c2: ChunkedPrompt, opts: SdxlEncodeOptions): Promise<SdxlPromptEmbedding> {
    const n = c1.chunks.length;
    let dim1 = 0;
    let dim2 = 0;
    const parts: { h1: Float32Array; h2: Float32Array }[] = [];
    let pooled: Float32Array | null = null;
    for (let k = 0; k < n; k++) {
      const a = c1.chunks[k]!;
      const b = c2.chunks[k]!;
      const e1 = await this.enc1.encodeIds(a.ids);
      const e2 = await this.enc2.encodeIds(b.ids);
      if (opts.emphasis) {
        applyEmphasis(e1.hidden, [a.ids.length, e1.dim], a.weights);
        applyEmphasis(e2.hidden, [b.ids.length, e2.dim], b.weights);
      }
      if (a.ids.length !== b.ids.length) throw new SdgenError('SDXL text encoders: chunk lengths differ');
      dim1 = e1.dim;
      dim2 = e2.dim;
      parts.push({ h1: e1.hidden, h2: e2.hidden });
      pooled ??= e2.pooled; // A1111: the pooled embedding of the first chunk
    }
    const seqPer = c1.chunks[0]!.ids.length;
    const dim = dim1 + dim2;
    const data = new Float32Array(n * seqPer * dim);
    parts.forEach((p, k) => {
      for (let s = 0; s < seqPer; s++) {
        const row = (k * seqPer + s) * dim;
        data.set(p.h1.subarray(s * dim1, (s + 1) * dim1), row);
        data.set(p.h2.subarray(s * dim2, (s + 1) * dim2), row + dim1);
      }
    });
    return {
      embedding: { data, seqLen: n * seqPer, dim, ids: c1.chunks.map((c) => [...c.ids]), chunks: n, tokenCount: c1.tokenCount },
      ids2: c2.chunks.map((c) => [...c.ids]),
      pooled: pooled!,
    };
  }

  /**
   * The conditioning of one prompt pair at an image size: prompt embeddings, pooled embeddings
   * and time ids, for the conditional pass and (when `withUncond`) the unconditional one.
   */
  async encode(
    prompt: string,
    negative: string,
    withUncond: boolean,
    width: number,
    height: number,
    opts: SdxlEncodeOptions,
    micro: SdxlMicroConditioning = {},
  ): Promise<SdxlConditioning> {
    const zeroUncond = withUncond && negative === '' && this.forceZerosForEmptyPrompt && !opts.encodeEmptyNegative;
    const p1 = this.split(this.enc1.tokenizer, prompt, opts);
    const p2 = this.split(this.enc2.tokenizer, prompt, opts);
    const n1 = withUncond && !zeroUncond ? this.split(this.enc1.tokenizer, negative, opts) : null;
    const n2 = withUncond && !zeroUncond ? this.split(this.enc2.tokenizer, negative, opts) : null;
    // one chunk count for both encoders and both prompts (A1111 pads cond and uncond alike)
    const n = Math.max(p1.chunks.length, p2.chunks.length, n1?.chunks.length ?? 0, n2?.chunks.length ?? 0);
    const pad = (r: ChunkedPrompt): ChunkedPrompt => (r.chunks.length < n ? padChunks(r, n) : r);
    const cond = await this.encodeOne(pad(p1), pad(p2), opts);
    let uncond: SdxlPromptEmbedding | null = null;
    if (zeroUncond) {
      const e = cond.embedding;
      uncond = {
        embedding: { data: new Float32Array(e.data.length), seqLen: e.seqLen, dim: e.dim, ids: [], chunks: e.chunks, tokenCount: 0 },
        ids2: [],
        pooled: new Float32Array(cond.pooled.length),
      };
    } else if (n1 && n2) {
      uncond = await this.encodeOne(pad(n1), pad(n2), opts);
    }
    return { cond, uncond, zeroUncond, timeIds: sdxlTimeIds(width, height, micro) };
  }
}
