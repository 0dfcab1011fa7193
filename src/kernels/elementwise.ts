/**
 * Wrappers for the per-element and per-row kernels of the forward pass: RMSNorm, RoPE (both
 * pairings), SwiGLU and the residual add / scale / copy (`axpby`). Each class owns its Kernel
 * and records dispatches into a caller's CommandList; none allocates at record time, so a
 * recorded decode step replays as is. A `record` call does not add barriers around itself: put
 * `cmd.barrier()` between it and the dispatch that produced its input and the one that reads its
 * output. All sizes are in f32 elements unless a name says bytes.
 */
import {
  type Binding,
  type Buffer,
  type CommandList,
  type Device,
  type Kernel,
  pushLayout,
} from "../vk/mod.ts";
import type { RopePairing } from "../model/config.ts";
import { SHADERS } from "../../shaders/variants.ts";
import {
  badKernelArgs,
  checkedWindow,
  checkInt,
  checkWorkgroupSize,
  grid2d,
  gridRows,
  splitRows,
  subWindow,
  windowOf,
} from "./checks.ts";

const F32 = 4;

/** shaders/rmsnorm.comp's push block. */
const RMSNORM_PUSH = pushLayout({
  n: "u32",
  rows: "u32",
  xStride: "u32",
  outStride: "u32",
  eps: "f32",
  vec4ok: "u32",
});

/** shaders/rope.comp's push block. */
const ROPE_PUSH = pushLayout({
  nTokens: "u32",
  nHeads: "u32",
  halfDim: "u32",
  xTokenStride: "u32",
  outTokenStride: "u32",
  posSlot: "u32",
  posOffset: "u32",
  flags: "u32",
});

/** shaders/swiglu.comp's push block. */
const SWIGLU_PUSH = pushLayout({
  n: "u32",
  rows: "u32",
  gateStride: "u32",
  upStride: "u32",
  outStride: "u32",
  vec4ok: "u32",
  act: "u32",
  cap: "f32",
});

/** shaders/add.comp's push block (HC_AXPBY). */
const AXPBY_PUSH = pushLayout({ n: "u32", alpha: "f32", beta: "f32", flags: "u32" });

export interface RmsNormArgs {
  /** Input rows, `rows` of `n` elements, `xStride` apart. */
  x: Binding;
  /** `n` weights, shared by every row. */
  weight: Binding;
  /** Output rows (may be the same window as `x`, for in place). */
  out: Binding;
  n: number;
  rows?: number;
  eps: number;
  xStride?: number;
  outStride?: number;
}

/** RMSNorm, one workgroup per row: out = x / sqrt(mean(x²) + eps) * weight. */
export class RmsNorm implements Disposable {
  readonly device: Device;
  readonly kernel: Kernel;

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    const wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    this.kernel = device.kernel(SHADERS.rmsnorm.variant(), {
      bindings: 3,
      push: RMSNORM_PUSH,
      spec: [wg],
    });
  }

  record(cmd: CommandList, a: RmsNormArgs): void {
    const rows = checkInt(a.rows ?? 1, "rows", 1);
    // One workgroup walks a row twice; 2^22 keeps each invocation far below lavapipe's loop cap.
    const n = checkInt(a.n, "n", 1, 1 << 22);
    const xs = checkInt(a.xStride ?? n, "xStride", n);
    const os = checkInt(a.outStride ?? n, "outStride", n);
    if (!(a.eps >= 0) || !Number.isFinite(a.eps)) {
      badKernelArgs(`eps must be finite and >= 0, got ${a.eps}`);
    }
    const x = checkedWindow(this.device, a.x, ((rows - 1) * xs + n) * F32, "rmsnorm x");
    const w = checkedWindow(this.device, a.weight, n * F32, "rmsnorm weight");
    const o = checkedWindow(this.device, a.out, ((rows - 1) * os + n) * F32, "rmsnorm out");
    for (const [r0, count] of splitRows(this.device, rows, [xs * F32, os * F32])) {
      const xb = subWindow(x, r0 * xs * F32, count * xs * F32);
      const ob = subWindow(o, r0 * os * F32, count * os * F32);
      const vec4 = n % 4 === 0 && xs % 4 === 0 && os % 4 === 0 &&
        [windowOf(xb), w, windowOf(ob)].every((v) => v.offset % 16 === 0);
      const push = RMSNORM_PUSH.pack({
        n,
        rows: count,
        xStride: xs,
        outStride: os,
        eps: a.eps,
        vec4ok: vec4 ? 1 : 0,
      });
      cmd.dispatch(
        this.kernel,
        [xb, subWindow(w, 0, n * F32), ob],
        push,
        grid2d(this.device, count),
      );
    }
  }

  [Symbol.dispose](): void {
    this.kernel.dispose();
  }
}

/**
 * Per-pair RoPE phase steps in 64-bit fixed point: for pair i, frac(invFreq[i] / 2π) · 2^64 as
 * (low word, high word). The shader multiplies by the integer position in exact integer
 * arithmetic, so the angle error does not grow with the position (see shaders/rope.comp).
 */
export function ropeTurnWords(invFreq: ArrayLike<number>): Uint32Array {
  const out = new Uint32Array(invFreq.length * 2);
  for (let i = 0; i < invFreq.length; i++) {
    const f = invFreq[i];
    if (!(f >= 0) || !Number.isFinite(f)) badKernelArgs(`RoPE frequency ${i} is ${f}`);
    const turns = f / (2 * Math.PI);
    const frac = turns - Math.floor(turns);
    // Scaling by powers of two and subtracting the integer part are exact in f64.
    const hi = Math.floor(frac * 2 ** 32);
    const lo = Math.floor((frac * 2 ** 32 - hi) * 2 ** 32);
    out[2 * i] = lo >>> 0;
    out[2 * i + 1] = hi >>> 0;
  }
  return out;
}

/** The device table of a model's RoPE frequencies (headDim / 2 pairs), built once per model. */
export class RopeTable implements Disposable {
  readonly buffer: Buffer;
  readonly pairs: number;

  private constructor(buffer: Buffer, pairs: number) {
    this.buffer = buffer;
    this.pairs = pairs;
  }

  /** From per-pair inverse frequencies θ_i / pos (model/config.ts ropeInverseFrequencies). */
  static fromInverseFrequencies(device: Device, invFreq: ArrayLike<number>): RopeTable {
    if (invFreq.length < 1 || invFreq.length > 8192) {
      badKernelArgs(`RoPE table needs 1..8192 pairs, got ${invFreq.length}`);
    }
    const words = ropeTurnWords(invFreq);
    const buffer = device.buffer(words.byteLength);
    try {
      device.upload(buffer, words);
    } catch (e) {
      buffer.dispose();
      throw e;
    }
    return new RopeTable(buffer, invFreq.length);
  }

  /** θ_i = pos · base^(−2i/headDim) / freqFactors[i] (llama.cpp's rope_freqs; 1 when absent). */
  static create(
    device: Device,
    o: { headDim: number; base: number; freqFactors?: ArrayLike<number> | null },
  ): RopeTable {
    const half = checkInt(o.headDim, "headDim", 2, 16384) / 2;
    if (!Number.isInteger(half)) badKernelArgs(`headDim ${o.headDim} is odd`);
    if (!(o.base > 0) || !Number.isFinite(o.base)) badKernelArgs(`RoPE base ${o.base}`);
    const ff = o.freqFactors ?? null;
    if (ff && ff.length !== half) badKernelArgs(`${ff.length} frequency factors for ${half} pairs`);
    const inv = new Float64Array(half);
    for (let i = 0; i < half; i++) {
      const f = ff ? ff[i] : 1;
      if (!(f > 0) || !Number.isFinite(f)) badKernelArgs(`frequency factor ${i} is ${f}`);
      inv[i] = o.base ** (-(2 * i) / o.headDim) / f;
    }
    return RopeTable.fromInverseFrequencies(device, inv);
  }

  [Symbol.dispose](): void {
    this.buffer.dispose();
  }
}

export interface RopeArgs {
  /** nTokens tokens of nHeads packed heads of headDim, `xTokenStride` elements apart. */
  x: Binding;
  /** Output (default: `x`, in place); same layout with `outTokenStride`. */
  out?: Binding;
  table: RopeTable;
  /** u32 buffer holding positions; host-visible so a replayed step can move them. */
  positions: Binding;
  /** Index in `positions` of token 0's position (default 0). */
  positionSlot?: number;
  /** Added to every position (default 0). */
  positionOffset?: number;
  /** false (default): token t is at positions[slot] + t; true: at positions[slot + t]. */
  perTokenPositions?: boolean;
  nTokens: number;
  nHeads: number;
  headDim: number;
  pairing: RopePairing;
  xTokenStride?: number;
  outTokenStride?: number;
}

/** RoPE in either pairing, one invocation per rotated pair. */
export class Rope implements Disposable {
  readonly device: Device;
  readonly kernel: Kernel;
  readonly #wg: number;

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    this.#wg = checkWorkgroupSize(device, options.workgroupSize ?? 128);
    this.kernel = device.kernel(SHADERS.rope.variant(), {
      bindings: 4,
      push: ROPE_PUSH,
      spec: [this.#wg],
    });
  }

  record(cmd: CommandList, a: RopeArgs): void {
    const tokens = checkInt(a.nTokens, "nTokens", 1);
    const heads = checkInt(a.nHeads, "nHeads", 1);
    const dim = checkInt(a.headDim, "headDim", 2);
    if (dim % 2 !== 0) badKernelArgs(`headDim ${dim} is odd`);
    if (a.table.pairs !== dim / 2) {
      badKernelArgs(`RoPE table has ${a.table.pairs} pairs, headDim ${dim} needs ${dim / 2}`);
    }
    if (a.pairing !== "adjacent" && a.pairing !== "halves") badKernelArgs(`pairing ${a.pairing}`);
    const span = heads * dim;
    const xs = checkInt(a.xTokenStride ?? span, "xTokenStride", span);
    const os = checkInt(a.outTokenStride ?? xs, "outTokenStride", span);
    const slot = checkInt(a.positionSlot ?? 0, "positionSlot");
    const offset = checkInt(a.positionOffset ?? 0, "positionOffset");
    const perToken = a.perTokenPositions ?? false;
    if (tokens * heads * (dim / 2) > 0xffff_ffff) badKernelArgs("RoPE dispatch too large");
    const x = checkedWindow(this.device, a.x, ((tokens - 1) * xs + span) * F32, "rope x");
    const o = checkedWindow(
      this.device,
      a.out ?? a.x,
      ((tokens - 1) * os + span) * F32,
      "rope out",
    );
    const pos = checkedWindow(
      this.device,
      a.positions,
      (slot + (perToken ? tokens : 1)) * 4,
      "rope positions",
    );
    const table = subWindow(windowOf(a.table.buffer), 0, a.table.pairs * 8);
    for (const [t0, count] of splitRows(this.device, tokens, [xs * F32, os * F32])) {
      const push = ROPE_PUSH.pack({
        nTokens: count,
        nHeads: heads,
        halfDim: dim / 2,
        xTokenStride: xs,
        outTokenStride: os,
        posSlot: perToken ? slot + t0 : slot,
        posOffset: perToken ? offset : (offset + t0) >>> 0,
        flags: (a.pairing === "halves" ? 1 : 0) | (perToken ? 2 : 0),
      });
      const groups = Math.ceil((count * heads * (dim / 2)) / this.#wg);
      cmd.dispatch(
        this.kernel,
        [
          subWindow(x, t0 * xs * F32, count * xs * F32),
          subWindow(o, t0 * os * F32, count * os * F32),
          table,
          pos,
        ],
        push,
        grid2d(this.device, groups),
      );
    }
  }

  [Symbol.dispose](): void {
    this.kernel.dispose();
  }
}

export interface SwigluArgs {
  gate: Binding;
  up: Binding;
  /** May be the same window as `gate` or `up`. */
  out: Binding;
  n: number;
  rows?: number;
  gateStride?: number;
  upStride?: number;
  outStride?: number;
  /** "silu" (default): SwiGLU; "gelu": GeGLU with GELU's tanh approximation (Gemma);
   * "softcap": out = cap * tanh(gate / cap), `up` unread (Gemma 2's final logits). */
  act?: "silu" | "gelu" | "softcap";
  /** The soft-capping constant for act "softcap". */
  cap?: number;
}

/** SwiGLU: out = silu(gate) · up, element-wise over `rows` rows of `n`. */
export class Swiglu implements Disposable {
  readonly device: Device;
  readonly kernel: Kernel;
  readonly #wg: number;

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    this.#wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    this.kernel = device.kernel(SHADERS.swiglu.variant(), {
      bindings: 3,
      push: SWIGLU_PUSH,
      spec: [this.#wg],
    });
  }

  record(cmd: CommandList, a: SwigluArgs): void {
    const act = a.act ?? "silu";
    if (act === "softcap" && !(a.cap! > 0)) {
      badKernelArgs(`soft-capping needs a positive cap, got ${a.cap}`);
    }
    const n = checkInt(a.n, "n", 1);
    const rows = checkInt(a.rows ?? 1, "rows", 1);
    const gs = checkInt(a.gateStride ?? n, "gateStride", n);
    const us = checkInt(a.upStride ?? n, "upStride", n);
    const os = checkInt(a.outStride ?? n, "outStride", n);
    const g = checkedWindow(this.device, a.gate, ((rows - 1) * gs + n) * F32, "swiglu gate");
    const u = checkedWindow(this.device, a.up, ((rows - 1) * us + n) * F32, "swiglu up");
    const o = checkedWindow(this.device, a.out, ((rows - 1) * os + n) * F32, "swiglu out");
    for (const [r0, count] of splitRows(this.device, rows, [gs * F32, us * F32, os * F32])) {
      const binds = [
        subWindow(g, r0 * gs * F32, count * gs * F32),
        subWindow(u, r0 * us * F32, count * us * F32),
        subWindow(o, r0 * os * F32, count * os * F32),
      ];
      const vec4 = n % 4 === 0 && gs % 4 === 0 && us % 4 === 0 && os % 4 === 0 &&
        binds.every((b) => windowOf(b).offset % 16 === 0);
      const push = SWIGLU_PUSH.pack({
        n,
        rows: count,
        gateStride: gs,
        upStride: us,
        outStride: os,
        vec4ok: vec4 ? 1 : 0,
        act: act === "gelu" ? 1 : act === "softcap" ? 2 : 0,
        cap: a.cap ?? 1,
      });
      const gx = Math.ceil((vec4 ? n / 4 : n) / this.#wg);
      cmd.dispatch(this.kernel, binds, push, gridRows(this.device, gx, count));
    }
  }

  [Symbol.dispose](): void {
    this.kernel.dispose();
  }
}

export interface AxpbyArgs {
  a: Binding;
  /** Omitted: out = alpha · a (a scale, or a copy with alpha 1). */
  b?: Binding;
  /** May be the same window as `a` or `b`. */
  out: Binding;
  n: number;
  alpha?: number;
  beta?: number;
}

/** out = alpha · a + beta · b over n elements: the residual add, a scale, or a copy. */
export class Axpby implements Disposable {
  readonly device: Device;
  readonly kernel: Kernel;
  readonly #wg: number;

  constructor(device: Device, options: { workgroupSize?: number } = {}) {
    this.device = device;
    this.#wg = checkWorkgroupSize(device, options.workgroupSize ?? 256);
    this.kernel = device.kernel(SHADERS.add.variant({ op: "axpby" }), {
      bindings: 3,
      push: AXPBY_PUSH,
      spec: [this.#wg],
    });
  }

  record(cmd: CommandList, args: AxpbyArgs): void {
    const n = checkInt(args.n, "n", 1);
    const alpha = args.alpha ?? 1;
    const beta = args.beta ?? 1;
    if (!Number.isFinite(alpha) || !Number.isFinite(beta)) {
      badKernelArgs("alpha and beta must be finite");
    }
    const a = checkedWindow(this.device, args.a, n * F32, "axpby a");
    const b = args.b ? checkedWindow(this.device, args.b, n * F32, "axpby b") : a;
    const o = checkedWindow(this.device, args.out, n * F32, "axpby out");
    // Runs of a multiple of 4 elements keep every run's windows 16-byte aligned alike.
    for (const [e0, count] of splitRows(this.device, n, [F32, F32, F32], 4)) {
      const binds = [a, b, o].map((w) => subWindow(w, e0 * F32, count * F32));
      const vec4 = count % 4 === 0 && binds.every((w) => windowOf(w).offset % 16 === 0);
      const push = AXPBY_PUSH.pack({
        n: count,
        alpha,
        beta,
        flags: (vec4 ? 1 : 0) | (args.b ? 2 : 0),
      });
      const groups = Math.ceil((vec4 ? count / 4 : count) / this.#wg);
      cmd.dispatch(this.kernel, binds, push, grid2d(this.device, groups));
    }
  }

  /** out = a + b (the residual add). */
  recordAdd(cmd: CommandList, a: { a: Binding; b: Binding; out: Binding; n: number }): void {
    this.record(cmd, { ...a, alpha: 1, beta: 1 });
  }

  /** out = scale · x (scale 1: a copy). */
  recordScale(cmd: CommandList, a: { x: Binding; out: Binding; n: number; scale: number }): void {
    this.record(cmd, { a: a.x, out: a.out, n: a.n, alpha: a.scale });
  }

  [Symbol.dispose](): void {
    this.kernel.dispose();
  }
}
