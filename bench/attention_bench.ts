/**
 * Decode-attention bandwidth: 8 KV heads x 128 dims, 4 query heads per KV head, every head at
 * the full context, f16 K/V. Reports the bytes each step must read (K + V) over the median GPU
 * time of several replays, next to a plain buffer copy of the same bytes measured in the same
 * run. Standalone: `deno run -A bench/attention_bench.ts [--contexts 4096,32768,65536]`.
 */
import { parseArgs } from "node:util";
import { type Buffer, type CommandList, Device } from "../src/vk/mod.ts";
import { DecodeAttention } from "../src/kernels/attention.ts";
import { KvLayerCache } from "../src/cache/kv_layer.ts";
import { CpuShare } from "./cpu_share.ts";

const KV_HEADS = 8;
const HEAD_DIM = 128;
const GROUP = 4;

export interface AttentionBenchRow {
  tokens: number;
  /** Median GPU time of one decode-attention step (split and merge in one pass), ms. */
  ms: number;
  /** K + V bytes read per step / ms. */
  gbps: number;
  /** A buffer copy of the same K + V bytes, replayed alternately with the attention: bytes
   * copied per second ((read + write) / 2). */
  copyGbps: number;
  /** Cores the attention replays used on average (see cpu_share.ts). */
  cores: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Fills a buffer with small f16 values in [-1, 1), 1 MiB at a time. */
function fillHalves(device: Device, buf: Buffer): void {
  const block = new Uint16Array(1 << 19);
  for (let i = 0; i < block.length; i++) {
    block[i] = (((i * 2654435761) >>> 0) % 0x3c00) | ((i & 1) << 15);
  }
  const bytes = new Uint8Array(block.buffer);
  for (let off = 0; off < buf.bytes; off += bytes.length) {
    device.upload(buf, bytes.subarray(0, Math.min(bytes.length, buf.bytes - off)), off);
  }
}

/** GPU ms between timestamps 0 and 1 of one replay. */
function replayMs(device: Device, cmd: CommandList): number {
  device.waitSync("compute", cmd.submit());
  return cmd.elapsedMs();
}

/**
 * Decode attention for 8 KV heads x 128 dims, 4 query heads per KV head, every head holding
 * `tokens` rows, and a plain copy of the same bytes, replayed alternately so both see the same
 * machine load; medians of `reps` replays each.
 */
export async function benchAttention(
  device: Device,
  opts: { contexts: number[]; reps?: number; variant?: "lanes" | "simd"; texel?: boolean },
): Promise<AttentionBenchRow[]> {
  const reps = opts.reps ?? 7;
  const rows: AttentionBenchRow[] = [];
  using attn = new DecodeAttention(device, {
    headDim: HEAD_DIM,
    groupSize: GROUP,
    variant: opts.variant,
    texel: opts.texel,
  });
  const nHeads = KV_HEADS * GROUP;
  using q = device.buffer(nHeads * HEAD_DIM * 4);
  using out = device.buffer(nHeads * HEAD_DIM * 4);
  device.upload(q, Float32Array.from({ length: nHeads * HEAD_DIM }, (_, i) => Math.sin(i * 0.37)));
  for (const tokens of opts.contexts) {
    using cache = KvLayerCache.create(device, {
      headDim: HEAD_DIM,
      capRows: Array(KV_HEADS).fill(tokens),
    });
    for (const b of [...cache.k, ...cache.v]) fillHalves(device, b);
    cache.setLengths(Array(KV_HEADS).fill(tokens));
    using scratch = device.buffer(attn.scratchBytes(cache));
    attn.zeroCounters(scratch, cache.nKvHeads);
    using cmd = device.commands();
    cmd.begin().timestamp(0);
    attn.record(cmd, { cache, q, out, scratch });
    cmd.timestamp(1).end();
    using dst = device.buffer(Math.max(...cache.k.map((b) => b.bytes)));
    using copy = device.commands();
    copy.begin().timestamp(0);
    for (const b of [...cache.k, ...cache.v]) copy.copy(b, dst, [[0, 0, b.bytes]]);
    copy.timestamp(1).end();
    replayMs(device, cmd); // warm-up: first-use compilation and page faults
    replayMs(device, copy);
    const attnMs: number[] = [];
    const copyMs: number[] = [];
    const share = new CpuShare();
    for (let i = 0; i < reps; i++) {
      share.start();
      attnMs.push(replayMs(device, cmd));
      share.stop();
      copyMs.push(replayMs(device, copy));
      await Promise.resolve();
    }
    const bytes = 2 * KV_HEADS * tokens * HEAD_DIM * 2;
    const ms = median(attnMs);
    rows.push({
      tokens,
      ms,
      gbps: bytes / ms / 1e6,
      copyGbps: bytes / median(copyMs) / 1e6,
      cores: share.cores,
    });
  }
  return rows;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      contexts: { type: "string", default: "4096,32768,65536" },
      reps: { type: "string", default: "9" },
      variant: { type: "string" },
    },
  });
  const contexts = values.contexts.split(",").map((s) => Number(s.trim()));
  const reps = Number(values.reps);
  if (contexts.some((c) => !Number.isInteger(c) || c < 1) || !Number.isInteger(reps) || reps < 1) {
    console.error(`--contexts: positive integers, --reps: a positive integer`);
    Deno.exit(2);
  }
  const variant = values.variant === "lanes" || values.variant === "simd"
    ? values.variant
    : undefined;
  using device = Device.open();
  console.log(`device: ${device.info.name}`);
  console.log(
    `decode attention, ${KV_HEADS} KV heads x ${HEAD_DIM} dims, G=${GROUP}, f16 K/V, median of ${reps}`,
  );
  console.log("tokens\tKV MiB\tms\tGB/s\tcopy GB/s\tvs copy\tcores");
  for (const r of await benchAttention(device, { contexts, reps, variant })) {
    const mib = (2 * KV_HEADS * r.tokens * HEAD_DIM * 2) / (1 << 20);
    console.log(
      `${r.tokens}\t${mib.toFixed(0)}\t${r.ms.toFixed(3)}\t${r.gbps.toFixed(2)}\t${
        r.copyGbps.toFixed(2)
      }\t\t${(100 * r.gbps / r.copyGbps).toFixed(0)}%\t${r.cores.toFixed(2)}`,
    );
  }
}
