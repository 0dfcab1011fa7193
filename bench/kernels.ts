/**
 * `deno task bench:kernels`: achieved bandwidth of the matrix-vector kernels (4096x4096 and
 * 4096x14336, every weight type; in GGUF order and, side by side, in the layout the loader
 * writes for this device where that is another: lanes on CPU drivers, split Q8_0 and Q6_K on
 * GPUs) and of decode attention (8 KV heads x 128, G = 4, at 4K / 32K /
 * 64K tokens), next to a plain buffer copy. Ratio = read bytes / time over the copy's
 * (read + write) / 2 / time, where the copy is submitted alternately with each shape's kernel
 * (copy, kernel, copy, kernel, ...; medians of each) so both see the same load on a shared
 * machine. Prints a table; `--write` also writes bench/results/kernels.json. `--texel off` binds weights, x and
 * K/V as storage buffers only (the path of devices without texel buffers), for comparison.
 * It ends with the dispatches, barriers, transfers and submissions per decode token of the
 * Llama-3-8B structure under both kernel variant sets (bench/step_counts.ts; `--steps off`
 * skips them).
 */
import { parseArgs } from "node:util";
import { Device } from "../src/vk/mod.ts";
import { type AttentionBenchRow, benchAttention } from "./attention_bench.ts";
import { BENCH_TYPES, benchCopy, benchMatvec, type MatvecBenchRow } from "./matvec_bench.ts";
import { writeResult } from "./paths.ts";
import { stepCounts, stepCountsTable } from "./step_counts.ts";

/** The rows of bench/results/kernels.json that the table shows. */
export interface KernelsResult {
  matvec: MatvecBenchRow[];
  attention: AttentionBenchRow[];
}

/** Markdown: each kernel's bandwidth against the copy interleaved with it, and the cores used. */
export function kernelsTable(r: KernelsResult): string {
  const row = (kernel: string, shape: string, x: MatvecBenchRow | AttentionBenchRow) =>
    `| ${kernel} | ${shape} | ${x.ms.toFixed(3)} | ${x.gbps.toFixed(2)} | ${
      x.copyGbps.toFixed(2)
    } | ${(100 * x.gbps / x.copyGbps).toFixed(0)}% | ${x.cores.toFixed(2)} |`;
  return [
    "cores: CPU cores the kernel used on average (on a CPU driver; fewer means another process " +
    "took CPU time, which slows the kernels but not the one-thread copy)",
    "",
    "| kernel | shape | ms | GB/s | copy GB/s | vs copy | cores |",
    "|---|---|---:|---:|---:|---:|---:|",
    // Rows of runs from before the layouts were recorded have none: GGUF order.
    ...r.matvec.map((x) =>
      row(
        `matvec ${x.type}${(x.layout ?? "ggml") === "ggml" ? "" : ` (${x.layout})`}`,
        `${x.rows}x${x.cols}`,
        x,
      )
    ),
    ...r.attention.map((x) => row("decode attention", `${x.tokens} tokens`, x)),
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      contexts: { type: "string", default: "4096,32768,65536" },
      types: { type: "string", default: BENCH_TYPES.join(",") },
      reps: { type: "string", default: "10" },
      submits: { type: "string", default: "7" },
      texel: { type: "string", default: "on" },
      steps: { type: "string", default: "on" },
      write: { type: "boolean", default: false },
    },
  });
  const texel = values.texel !== "off";
  using device = Device.open();
  const copyBefore = await benchCopy(device);
  const matvec = await benchMatvec(device, {
    reps: Number(values.reps),
    submits: Number(values.submits),
    types: values.types.split(","),
    texel,
    layout: "both",
  });
  const attention = await benchAttention(device, {
    contexts: values.contexts.split(",").map(Number),
    reps: Number(values.submits),
    texel,
  });
  const copyAfter = await benchCopy(device);
  const copyGbps = (copyBefore.gbps + copyAfter.gbps) / 2;
  console.log(
    `\nkernel bandwidth on ${device.info.name} (${device.info.type}); plain copy ${
      copyGbps.toFixed(2)
    } GB/s ` +
      `(before ${copyBefore.gbps.toFixed(2)}, after ${copyAfter.gbps.toFixed(2)})\n`,
  );
  console.log(kernelsTable({ matvec, attention }));
  const steps = values.steps === "off" ? null : await stepCounts(["gpu", "cpu"]);
  if (steps) {
    console.log("\nper decode token, Llama-3-8B structure (widths shrunk, see step_counts.ts):\n");
    console.log(stepCountsTable(steps));
  }
  if (values.write) {
    await writeResult("kernels.json", {
      date: new Date().toISOString(),
      device: device.info,
      copyGbps,
      copyBefore,
      copyAfter,
      texel,
      matvec,
      attention,
      steps,
    });
  }
}
