/** Benchmark inputs: deterministic values, and the feeds of one UNet call. */
import ort from 'onnxruntime-node';

/** Deterministic values in [-1, 1) from a 32-bit xorshift stream (benchmark and test inputs). */
export function xorshiftFill(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    a[i] = (x / 4294967296) * 2 - 1;
  }
  return a;
}

/**
 * Inputs for one UNet call, shaped from the session's own metadata: `sample`, the timestep,
 * `encoder_hidden_states` and, for SDXL, `text_embeds` [B, pooled width] (1280 when the graph
 * leaves it open) and `time_ids` [B, 6]: the size conditioning of an uncropped image of this
 * size (original size, crop top-left 0, 0, target size; diffusers' `_get_add_time_ids`).
 */
export function unetFeeds(session: ort.InferenceSession, batch: number, latentH: number, latentW: number, seqLen: number, vaeScale = 8): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  const meta = session.inputMetadata;
  for (const m of meta) {
    if (!m.isTensor) throw new Error(`input ${m.name} is not a tensor`);
    const name = m.name;
    const dims = m.shape;
    if (name === 'sample' || (dims.length === 4 && !('sample' in feeds) && name.includes('sample'))) {
      const ch = typeof dims[1] === 'number' ? dims[1] : 4;
      feeds[name] = makeFloat(m.type, xorshiftFill(batch * ch * latentH * latentW, 1), [batch, ch, latentH, latentW]);
    } else if (name === 'timestep' || name === 'timesteps' || name === 't') {
      const shape = dims.length === 0 ? [] : [batch];
      const count = dims.length === 0 ? 1 : batch;
      if (m.type === 'int64') feeds[name] = new ort.Tensor('int64', BigInt64Array.from({ length: count }, () => 500n), shape);
      else feeds[name] = makeFloat(m.type, new Float32Array(count).fill(500), shape);
    } else if (name === 'encoder_hidden_states') {
      const d = typeof dims[2] === 'number' ? dims[2] : 768;
      feeds[name] = makeFloat(m.type, xorshiftFill(batch * seqLen * d, 2).map((v) => v * 0.5), [batch, seqLen, d]);
    } else if (name === 'text_embeds') {
      const d = typeof dims[1] === 'number' ? dims[1] : 1280;
      feeds[name] = makeFloat(m.type, xorshiftFill(batch * d, 3).map((v) => v * 0.5), [batch, d]);
    } else if (name === 'time_ids') {
      const d = typeof dims[1] === 'number' ? dims[1] : 6;
      if (d !== 6) throw new Error(`UNet input time_ids has width ${d}; SDXL's time ids have 6`);
      const h = latentH * vaeScale;
      const w = latentW * vaeScale;
      const row = [h, w, 0, 0, h, w];
      feeds[name] = makeFloat(m.type, Float32Array.from({ length: batch * 6 }, (_, i) => row[i % 6]!), [batch, 6]);
    } else {
      throw new Error(`UNet input ${name} is not one the benchmark knows how to feed`);
    }
  }
  return feeds;
}

function makeFloat(type: string, data: Float32Array, dims: number[]): ort.Tensor {
  if (type === 'float16') {
    const h = new Uint16Array(data.length);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < data.length; i++) {
      f[0] = data[i]!;
      const x = u[0]!;
      const e = ((x >>> 23) & 0xff) - 112;
      h[i] = ((x >>> 16) & 0x8000) | (e <= 0 ? 0 : e >= 31 ? 0x7c00 : (e << 10) | ((x >>> 13) & 0x3ff));
    }
    return new ort.Tensor('float16', h, dims);
  }
  return new ort.Tensor('float32', data, dims);
}

