/**
 * Prompt → text-encoder embeddings, A1111 style: the prompt is split into 75-token chunks
 * (tokenizeChunks; emphasis weights on or off), every chunk is encoded on its own as 77 ids
 * (start, tokens, end, padding), emphasis weights multiply the hidden states with the mean
 * restored, and the chunks are concatenated along the sequence axis. The negative prompt is
 * padded to the prompt's chunk count (and vice versa) so both have one sequence length.
 *
 * Padding: the ids of a chunk are start + tokens + end + the tokenizer's pad token. For a
 * prompt of ≤ 75 tokens without emphasis this is exactly diffusers' `encode_prompt`
 * (`padding="max_length"` with the tokenizer's pad token: `<|endoftext|>` for SD 1.x, `!` for
 * SD 2.x), and no weights are applied when every weight is 1, so the embeddings are
 * diffusers' to the bit. A1111 pads the same way (end token, then its pad id).
 *
 * Longer prompts: A1111 chunking by default; `longPrompt: 'truncate'` keeps diffusers'
 * behaviour (start + the first 75 tokens + end), which is what a diffusers reference image of a
 * long prompt was made with.
 *
 * Clip skip N > 1 (A1111: `final_layer_norm(hidden_states[-N])`) reads output
 * `hidden_states.{L+1-N}` of an export with per-layer outputs `hidden_states.0 … L`, and applies
 * the text model's final layer norm read from the graph (src/optimize/final-layer-norm.ts). For an
 * export without them, the first run that asks for clip skip opens a second session on the graph
 * rewritten to have them (src/optimize/clip-skip.ts, cached on disk), so that runs without clip
 * skip keep running the exported graph as it is (its outputs to the bit).
 */
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import type { ClipTokenizer } from '../text/clip-tokenizer.js';
import { applyEmphasis, padChunks, tokenizeChunks, type ChunkedPrompt } from '../text/chunks.js';
import type { ModelSession, SessionManager } from '../models/session.js';
import { textEncoderIO, type TextEncoderIO } from '../models/io.js';
import { findFinalLayerNorm } from '../optimize/final-layer-norm.js';
import { getClipSkipModel } from '../optimize/clip-skip.js';
import { toFloat32 } from './tensors.js';

export interface TextEncodeOptions {
  emphasis: boolean;
  /** 'chunk' (A1111, default) or 'truncate' (diffusers: first 75 tokens only) */
  longPrompt?: 'chunk' | 'truncate';
  /** 1 = last layer (default); N > 1 uses the N-th hidden state from the end */
  clipSkip: number;
}

/** One prompt's encoding: [1, chunks·77, dim] flattened. */
export interface PromptEmbedding {
  /** flattened [seqLen, dim] */
  data: Float32Array;
  seqLen: number;
  dim: number;
  /** 77 ids per chunk, as fed to the text encoder */
  ids: number[][];
  chunks: number;
  /** tokens of the prompt (without start/end), for notices */
  tokenCount: number;
}

export interface EncodedPrompts {
  cond: PromptEmbedding;
  /** null when there is no unconditional pass */
  uncond: PromptEmbedding | null;
}

interface Chunk {
  ids: number[];
  weights: number[];
}

function allOnes(w: readonly number[]): boolean {
  for (const x of w) if (x !== 1) return false;
  return true;
}

type LayerNormFn = (hidden: Float32Array, dim: number) => Float32Array;

/** Opens the text encoder with outputs `hidden_states.0 … L` (for an export without them). */
export type HiddenStatesSource = () => Promise<ModelSession>;

/**
 * The HiddenStatesSource of a pipeline: the text encoder `file` rewritten by getClipSkipModel
 * (cached under `cacheDir`), opened by `sessions` without onnxruntime's optimized-graph cache
 * (which would store another copy of the weights; the text encoder optimizes quickly).
 */
export function clipSkipSource(sessions: SessionManager, file: string, cacheDir: string): HiddenStatesSource {
  return async () => {
    const m = await getClipSkipModel(file, { cacheDir });
    return sessions.open(m.path, 'text encoder (clip skip)', { optimizedCache: false });
  };
}

/** A session whose outputs include hidden_states.0 … L, with its final layer norm. */
interface LayeredEncoder {
  model: ModelSession;
  io: TextEncoderIO;
  finalLayerNorm: LayerNormFn | null;
}

/**
 * A text encoder with per-layer hidden states, opened from its source on first use and kept for
 * later runs; a failed open is forgotten, so the next run tries again (and reports the same
 * problem). `prepare` checks the opened graph further and adds what its user needs.
 */
export class LayeredEncoderSession<T extends { model: ModelSession }> {
  private pending: Promise<T> | null = null;

  constructor(
    private readonly source: HiddenStatesSource,
    private readonly prepare: (model: ModelSession, io: TextEncoderIO) => T | Promise<T>,
  ) {}

  async get(): Promise<T> {
    this.pending ??= (async () => {
      const model = await this.source();
      try {
        const io = textEncoderIO(model.info, model.what);
        if (io.hiddenStates.length === 0) throw new SdgenError(`${model.what}: ${model.path} has no hidden_states outputs`);
        return await this.prepare(model, io);
      } catch (err) {
        await model.release();
        throw err;
      }
    })();
    try {
      return await this.pending;
    } catch (err) {
      this.pending = null;
      throw err;
    }
  }

  /** Releases the session, if it was opened. */
  async release(): Promise<void> {
    const p = this.pending;
    this.pending = null;
    if (p) await (await p.catch(() => null))?.model.release();
  }
}

export class TextEncoder {
  readonly io: TextEncoderIO;
  private readonly finalLayerNorm: LayerNormFn | null;
  /** the rewritten encoder opened from hiddenStatesSource (first clip skip > 1 run) */
  private readonly layered: LayeredEncoderSession<LayeredEncoder> | null;

  constructor(
    private readonly model: ModelSession,
    readonly tokenizer: ClipTokenizer,
    /** applies the text model's final layer norm (needed for clip skip > 1); null = not available */
    finalLayerNorm: LayerNormFn | null = null,
    /**
     * Where clip skip > 1 gets per-layer hidden states when this export has none (clipSkipSource);
     * null: clip skip > 1 needs an export with them.
     */
    hiddenStatesSource: HiddenStatesSource | null = null,
  ) {
    this.io = textEncoderIO(model.info, 'text encoder');
    this.finalLayerNorm = finalLayerNorm;
    this.layered = hiddenStatesSource
      ? new LayeredEncoderSession(hiddenStatesSource, async (m, io) => ({ model: m, io, finalLayerNorm: await findFinalLayerNorm(m.path, m.info) }))
      : null;
  }

  /** The session clip skip > 1 runs: this export when it has hidden_states outputs, else the rewrite. */
  private async layeredEncoder(clipSkip: number): Promise<LayeredEncoder> {
    if (this.io.hiddenStates.length > 0) return { model: this.model, io: this.io, finalLayerNorm: this.finalLayerNorm };
    if (!this.layered) {
      throw new SdgenError(
        `clip skip ${clipSkip} needs a text encoder exported with per-layer hidden states (outputs hidden_states.0 … hidden_states.N); this one has only ${this.io.lastHiddenState.name}`,
      );
    }
    return this.layered.get();
  }

  /** Releases the session opened for clip skip, if any (the main session is the caller's). */
  async release(): Promise<void> {
    await this.layered?.release();
  }

  /** Encode one 77-id chunk → hidden [77, dim]. */
  async encodeIds(ids: readonly number[], clipSkip = 1): Promise<{ data: Float32Array; seqLen: number; dim: number }> {
    const { inputIds } = this.io;
    if (inputIds.seqLen !== null && inputIds.seqLen !== ids.length) {
      throw new SdgenError(`text encoder: input "${inputIds.name}" takes ${inputIds.seqLen} tokens, sdgen feeds ${ids.length}`);
    }
    const data = inputIds.type === 'int64' ? BigInt64Array.from(ids, (v) => BigInt(v)) : Int32Array.from(ids);
    const feed = { [inputIds.name]: new ort.Tensor(inputIds.type, data, [1, ids.length]) };
    let outName = this.io.lastHiddenState.name;
    let model = this.model;
    let finalLayerNorm: LayerNormFn | null = null;
    if (clipSkip > 1) {
      const enc = await this.layeredEncoder(clipSkip);
      const layers = enc.io.hiddenStates.length - 1;
      if (clipSkip > layers) {
        throw new UsageError(`clip skip ${clipSkip} is not available for this text encoder: it has ${layers} layers (clip skip N needs N ≤ ${layers})`);
      }
      if (!enc.finalLayerNorm) throw new SdgenError(`clip skip ${clipSkip}: the final layer norm of the text encoder ${enc.model.path} was not found`);
      // A1111: hidden_states[-N] of the L + 1 states (embeddings, then each layer's output)
      outName = enc.io.hiddenStates[layers + 1 - clipSkip]!.name;
      model = enc.model;
      finalLayerNorm = enc.finalLayerNorm;
    }
    const out = await model.session.run(feed, [outName]);
    const t = out[outName]!;
    const dims = t.dims;
    if (dims.length !== 3 || dims[0] !== 1 || dims[1] !== ids.length) {
      throw new SdgenError(`text encoder: output "${outName}" has shape [${dims.join(', ')}]; expected [1, ${ids.length}, dim]`);
    }
    const dim = dims[2]!;
    let hidden = toFloat32(t);
    t.dispose?.();
    if (finalLayerNorm) hidden = finalLayerNorm(hidden, dim);
    return { data: hidden, seqLen: ids.length, dim };
  }

  private async encodeChunks(chunks: readonly Chunk[], tokenCount: number, opts: TextEncodeOptions): Promise<PromptEmbedding> {
    const parts: Float32Array[] = [];
    let dim = 0;
    let seqLen = 0;
    for (const c of chunks) {
      const h = await this.encodeIds(c.ids, opts.clipSkip);
      if (opts.emphasis && !allOnes(c.weights)) {
        applyEmphasis(h.data, [h.seqLen, h.dim], c.weights);
      }
      parts.push(h.data);
      dim = h.dim;
      seqLen += h.seqLen;
    }
    const data = new Float32Array(seqLen * dim);
    let off = 0;
    for (const p of parts) {
      data.set(p, off);
      off += p.length;
    }
    return { data, seqLen, dim, ids: chunks.map((c) => [...c.ids]), chunks: chunks.length, tokenCount };
  }

  /**
   * Encode prompt and (when `withUncond`) negative prompt, each padded to the larger chunk
   * count. `cache` (keyed by text and options) lets a generate call encode each distinct
   * prompt once.
   */
  async encodePair(
    prompt: string,
    negative: string,
    withUncond: boolean,
    opts: TextEncodeOptions,
    cache?: Map<string, PromptEmbedding>,
  ): Promise<EncodedPrompts> {
    const truncate = opts.longPrompt === 'truncate';
    const split = (text: string): ChunkedPrompt => {
      if (!truncate) return tokenizeChunks(this.tokenizer, text, { emphasis: opts.emphasis });
      // diffusers: start + the first 75 tokens + end (no comma backtrack, later chunks dropped)
      const r = tokenizeChunks(this.tokenizer, text, { emphasis: opts.emphasis, commaBacktrack: 0 });
      return { ...r, chunks: r.chunks.slice(0, 1) };
    };
    const tc = split(prompt);
    const tu = withUncond ? split(negative) : null;
    const n = Math.max(tc.chunks.length, tu?.chunks.length ?? 0);
    const pc = tc.chunks.length < n ? padChunks(tc, n) : tc;
    const pu = tu && tu.chunks.length < n ? padChunks(tu, n) : tu;
    const key = (text: string, chunks: number) => `${opts.emphasis ? 1 : 0}|${opts.clipSkip}|${truncate ? 't' : 'c'}|${chunks}|${text}`;
    const get = async (text: string, r: ChunkedPrompt): Promise<PromptEmbedding> => {
      const k = key(text, r.chunks.length);
      const hit = cache?.get(k);
      if (hit) return hit;
      const e = await this.encodeChunks(r.chunks, r.tokenCount, opts);
      cache?.set(k, e);
      return e;
    };
    const cond = await get(prompt, pc);
    const uncond = pu ? await get(negative, pu) : null;
    return { cond, uncond };
  }
}
