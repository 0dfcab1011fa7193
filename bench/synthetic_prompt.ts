/**
 * Decode steps after a synthetic prompt. The prompt's K/V rows, and the prompt queries a
 * compressing policy scores them with, are random values written straight into the caches
 * (Session.prefillWritten) instead of computed by a prefill: a 64K-token prefill is quadratic and
 * takes hours on a CPU Vulkan driver, while the decode steps after it read exactly the bytes real
 * ones would. The policy then compresses as after a real prefill (selection, host store, drift
 * checks).
 */
import { type Device, HcError, type Session } from "../mod.ts";
import type { Buffer } from "../src/vk/mod.ts";
import { f32ToF16Array } from "../src/model/quant/f16.ts";

export class SyntheticDecode {
  readonly session: Session;
  #next: number;
  #left: number;

  private constructor(session: Session, steps: number) {
    this.session = session;
    this.#next = session.model.tokenizer.bos ?? 1;
    this.#left = steps;
  }

  /** A synthetic prompt of `promptTokens` positions in `session`, with room for `steps`
   * decode steps (each `step()`). */
  static async start(
    session: Session,
    promptTokens: number,
    steps: number,
    seed = 1,
  ): Promise<SyntheticDecode> {
    const c = session.model.config;
    const device = session.model.device;
    await session.prefillWritten(promptTokens, steps, (caches, captures) => {
      const pool = randomHalfs(1 << 20, seed);
      const rowBytes = c.headDim * 2;
      let turn = 0;
      for (const cache of caches) {
        for (let h = 0; h < cache.nKvHeads; h++) {
          const at = cache.location(h, 0);
          for (const side of [at.k, at.v]) {
            // Rows cycle through the pool from a different start for every head and side.
            const start = ((turn++ * 7919) % (pool.length / c.headDim)) * rowBytes;
            writeCycled(device, side, at.byteOffset, promptTokens * rowBytes, pool, start);
          }
        }
      }
      if (captures.prefillQ) {
        const q = new Float32Array(captures.prefillQ.bytes / 4);
        const r = lcg(seed + 1);
        for (let i = 0; i < q.length; i++) q[i] = r() * 2 - 1;
        device.upload(captures.prefillQ, q);
      }
    });
    return new SyntheticDecode(session, steps);
  }

  /** One greedy decode step; its wall time, ms. Steps of several sessions can be interleaved,
   * so that a noisy machine slows them alike. */
  async step(): Promise<number> {
    if (this.#left < 1) {
      throw new HcError("E_CONTEXT_FULL", "no benchmark step left: start a new synthetic prompt");
    }
    const t0 = performance.now();
    this.#next = await this.session.decodeStep(this.#next);
    this.#left--;
    return performance.now() - t0;
  }
}

/** A small deterministic generator in [0, 1): benchmark data, not statistics. */
function lcg(seed: number): () => number {
  let x = (seed >>> 0) || 1;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

/** `n` roughly normal f16 values (sum of three uniforms), as raw bytes. */
function randomHalfs(n: number, seed: number): Uint8Array {
  const r = lcg(seed);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = r() + r() + r() - 1.5;
  const h = f32ToF16Array(f);
  return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
}

/** Fills `bytes` of `dst` from `offset` with `pool` repeated, starting at pool byte `start`. */
function writeCycled(
  device: Device,
  dst: Buffer,
  offset: number,
  bytes: number,
  pool: Uint8Array,
  start: number,
): void {
  const block = new Uint8Array(Math.min(bytes, 8 * pool.length));
  for (let i = 0; i < block.length;) {
    const from = (start + i) % pool.length;
    const n = Math.min(block.length - i, pool.length - from);
    block.set(pool.subarray(from, from + n), i);
    i += n;
  }
  for (let done = 0; done < bytes; done += block.length) {
    device.upload(dst, block.subarray(0, Math.min(block.length, bytes - done)), offset + done);
  }
}
