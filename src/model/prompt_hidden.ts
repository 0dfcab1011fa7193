/**
 * The hidden states of a whole prompt between layers, for the layer-by-layer prefill
 * (src/engine/layered_prefill.ts): f32 rows of `dim`, in device buffers of at most 64 MiB each
 * (lavapipe binds at most 128 MiB, and plain copies are all that touch them).
 *
 * f32, not f16: the chunked path carries the residual stream in f32 from layer to layer, so
 * f32 rows make the layer-by-layer prefill compute exactly what the chunked one does (same
 * kernels, same inputs, same rounding) with plain copies and no conversion kernel. It costs
 * dim·4 bytes per prompt token (16 KiB on Llama-3.1-8B, 512 MiB at 32K tokens), which is not
 * KV: the KV peak this path bounds is separate. Where that would crowd the device (a long
 * prompt on a small GPU), the rows live in host-visible memory instead ("host": system RAM on a
 * discrete GPU, read and written by the layer's copies over the bus; the same memory on UMA and
 * CPU drivers).
 */
import { HcError } from "../errors.ts";
import type { Buffer, CommandList, Device } from "../vk/mod.ts";

const SEGMENT_BYTES = 64 * 2 ** 20;

export class PromptHidden implements Disposable {
  readonly tokens: number;
  readonly rowBytes: number;
  readonly #segmentTokens: number;
  readonly #segments: Buffer[] = [];

  readonly where: "device" | "host";

  /** `segmentBytes`: at most this many bytes per buffer (tests make it small). */
  constructor(
    device: Device,
    dim: number,
    tokens: number,
    opts: { where?: "device" | "host"; segmentBytes?: number } = {},
  ) {
    const segmentBytes = opts.segmentBytes ?? SEGMENT_BYTES;
    this.where = opts.where ?? "device";
    if (!Number.isSafeInteger(tokens) || tokens < 1) {
      throw new HcError("E_BAD_REQUEST", `a prompt of ${tokens} tokens has no hidden states`);
    }
    this.tokens = tokens;
    this.rowBytes = dim * 4;
    this.#segmentTokens = Math.max(1, Math.floor(segmentBytes / this.rowBytes));
    try {
      for (let t = 0; t < tokens; t += this.#segmentTokens) {
        const n = Math.min(this.#segmentTokens, tokens - t);
        const kind = this.where === "host" ? "readback" : "device";
        this.#segments.push(device.buffer(n * this.rowBytes, kind));
      }
    } catch (e) {
      this[Symbol.dispose]();
      throw e;
    }
  }

  /** Bytes held (device or host-visible, as `where` says). */
  get bytes(): number {
    return this.#segments.reduce((s, b) => s + b.bytes, 0);
  }

  /** Records the copy of rows [start, start + count) into `x` (from its row 0). */
  recordLoad(cmd: CommandList, x: Buffer, start: number, count: number): void {
    this.#record(start, count, (seg, segByte, xByte, bytes) => {
      cmd.copy(seg, x, [[segByte, xByte, bytes]]);
    });
  }

  /** Records the copy of `count` rows of `x` (from its row 0) into rows [start, start + count). */
  recordStore(cmd: CommandList, x: Buffer, start: number, count: number): void {
    this.#record(start, count, (seg, segByte, xByte, bytes) => {
      cmd.copy(x, seg, [[xByte, segByte, bytes]]);
    });
  }

  #record(
    start: number,
    count: number,
    copy: (seg: Buffer, segByte: number, xByte: number, bytes: number) => void,
  ): void {
    if (start < 0 || count < 1 || start + count > this.tokens) {
      throw new HcError(
        "E_BAD_REQUEST",
        `rows ${start}..${start + count} outside the prompt's ${this.tokens}`,
      );
    }
    // A chunk may straddle two segments: one copy per segment it touches.
    for (let t = start; t < start + count;) {
      const s = Math.floor(t / this.#segmentTokens);
      const inSeg = t - s * this.#segmentTokens;
      const n = Math.min(start + count - t, this.#segmentTokens - inSeg);
      copy(
        this.#segments[s],
        inSeg * this.rowBytes,
        (t - start) * this.rowBytes,
        n * this.rowBytes,
      );
      t += n;
    }
  }

  [Symbol.dispose](): void {
    for (const b of this.#segments.splice(0)) b.dispose();
  }
}
