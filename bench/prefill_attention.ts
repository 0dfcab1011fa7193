/**
 * Prefill attention alone, for bench/prefill.ts: the last 256-token chunk of an N-token prompt
 * (the chunk that attends to the most keys, so the longest attention dispatch of a prefill) on
 * one layer of the Llama-3.1-8B attention shape (8 KV heads x 4 query heads x 128 dims, f16 K/V),
 * timed with device timestamps. On CPU devices with texel buffers the split kernel reads K/V as
 * texels (the default) or as storage buffers; both are timed, alternating, in the same run.
 * `variant` picks the kernel (default: the device's; "tiled" is the GPU kernel, which a GPU
 * takes anyway and lavapipe only when asked).
 */
import { KvLayerCache } from "../src/cache/kv_layer.ts";
import { PrefillAttention, type PrefillVariant } from "../src/kernels/attention.ts";
import type { CommandList, Device } from "../src/vk/mod.ts";

const HEAD_DIM = 128;
const GROUP = 4;
const KV_HEADS = 8;
const CHUNK = 256;

export interface AttentionRow {
  /** Prompt length: the chunk's queries sit at positions tokens - 256 .. tokens - 1. */
  tokens: number;
  /** The default path (texel K/V on CPU devices that have them): median ms of one dispatch. */
  ms: number;
  /** The storage-buffer K/V path, where it differs from the default; else null. */
  storageMs: number | null;
  /** Multiply-adds of the chunk (q.k and p.v), as GFLOPS of the default path. */
  gflops: number;
  /** The kernel timed: its variant, and for "tiled" the tile shape the device took. */
  kernel?: string;
}

function kernelName(attn: PrefillAttention): string {
  const t = attn.tileShape;
  if (!t) return attn.variant;
  return `tiled, ${t.rows} query rows x ${t.keys} keys, ${t.workgroupSize} lanes, ` +
    (t.subgroup ? "subgroup shuffles" : "shared-memory reductions");
}

function timedMs(device: Device, cmd: CommandList): number {
  device.waitSync("compute", cmd.submit());
  return cmd.elapsedMs();
}

/** One row per prompt length, each path's median over `reps` alternating submissions. */
export function prefillAttentionRows(
  device: Device,
  lengths: readonly number[],
  reps = 3,
  variant?: PrefillVariant,
): AttentionRow[] {
  if (lengths.length === 0) return [];
  const maxRows = Math.max(...lengths);
  const cache = KvLayerCache.create(device, {
    headDim: HEAD_DIM,
    capRows: Array(KV_HEADS).fill(maxRows),
  });
  try {
    // Small f16 values of both signs (no denormals, no infinities).
    for (const b of [...cache.k, ...cache.v]) {
      const h = new Uint16Array(b.bytes / 2);
      for (let i = 0; i < h.length; i++) {
        h[i] = (((i * 2654435761) >>> 0) % 0x3800) | ((i & 1) << 15);
      }
      device.upload(b, h);
    }
    const n = CHUNK * KV_HEADS * GROUP * HEAD_DIM;
    using q = device.buffer(n * 4);
    device.upload(q, new Float32Array(n).map((_, i) => Math.sin(i * 0.618) * 0.5));
    using out = device.buffer(n * 4);
    const opts = { headDim: HEAD_DIM, groupSize: GROUP, variant };
    using main = new PrefillAttention(device, opts);
    const storage = main.variant === "split" && device.info.texelBuffer
      ? new PrefillAttention(device, { ...opts, texel: false })
      : null;
    using _storage = storage;
    using scratch = device.buffer(main.scratchBytes(cache, CHUNK));
    const rows: AttentionRow[] = [];
    for (const tokens of lengths) {
      const position = Math.max(0, tokens - CHUNK);
      const chunk = tokens - position;
      const paths = [main, ...(storage ? [storage] : [])];
      const cmds = paths.map((attn) => {
        const cmd = device.commands();
        cmd.begin().timestamp(0);
        attn.record(cmd, { cache, q, tokens: chunk, position, out, scratch });
        cmd.timestamp(1).end();
        return cmd;
      });
      try {
        // The first submission compiles nothing (kernels exist) but warms the caches.
        for (const c of cmds) timedMs(device, c);
        const ms: number[][] = paths.map(() => []);
        for (let r = 0; r < reps; r++) cmds.forEach((c, i) => ms[i].push(timedMs(device, c)));
        const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
        // Query t sees position + t + 1 keys: q.k and p.v are 2 multiply-adds per dim each.
        const pairs = chunk * position + chunk * (chunk + 1) / 2;
        const flops = 4 * HEAD_DIM * KV_HEADS * GROUP * pairs;
        const m = med(ms[0]);
        rows.push({
          tokens,
          ms: m,
          storageMs: storage ? med(ms[1]) : null,
          gflops: flops / m / 1e6,
          kernel: kernelName(main),
        });
      } finally {
        for (const c of cmds) c.dispose();
      }
    }
    return rows;
  } finally {
    cache.dispose();
  }
}

/** Markdown table lines for the rows. */
export function attentionTable(rows: readonly AttentionRow[], device: string): string[] {
  if (rows.length === 0) return [];
  return [
    `Prefill attention alone: the last ${CHUNK}-token chunk of the prompt (the longest attention ` +
    `dispatch of a prefill), one layer, ${KV_HEADS} KV heads x ${GROUP} query heads x ` +
    `${HEAD_DIM} dims, f16 K/V, on ${device}` +
    (rows[0].kernel ? ` (kernel: ${rows[0].kernel}).` : "."),
    "",
    "| prompt tokens | attention, one layer's chunk | GFLOPS | K/V as storage buffers | texel vs storage |",
    "|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.tokens} | ${r.ms.toFixed(0)} ms | ${r.gflops.toFixed(1)} | ${
        r.storageMs === null ? "-" : `${r.storageMs.toFixed(0)} ms`
      } | ${r.storageMs === null ? "-" : `${(r.storageMs / r.ms).toFixed(2)}x`} |`
    ),
  ];
}
