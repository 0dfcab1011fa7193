/**
 * `deno task bench:kernels`: achieved bandwidth of the matrix-vector kernels (4096x4096 and
 * 4096x14336, every weight type) and of decode attention (8 KV heads x 128, G = 4, at 4K / 32K /
 * 64K tokens), next to a plain buffer copy. Ratio = read bytes / time over the copy's
 * (read + write) / 2 / time, where the copy is submitted alternately with each shape's kernel
 * (copy, kernel, copy, kernel, ...; medians of each) so both see the same load on a shared
 * machine. Prints a table; writes bench/results/kernels.json. `--texel off` binds weights, x and
 * K/V as storage buffers only (the path of devices without texel buffers), for comparison.
 */
import { parseArgs } from "node:util";
import { Device } from "../src/vk/mod.ts";
import { benchAttention } from "./attention_bench.ts";
import { BENCH_TYPES, benchCopy, benchMatvec } from "./matvec_bench.ts";
import { dirname, fromFileUrl, join } from "./paths.ts";

const HERE = dirname(fromFileUrl(import.meta.url));

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      contexts: { type: "string", default: "4096,32768,65536" },
      types: { type: "string", default: BENCH_TYPES.join(",") },
      reps: { type: "string", default: "10" },
      submits: { type: "string", default: "7" },
      texel: { type: "string", default: "on" },
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
  console.log(
    `cores: CPU cores the kernel used on average (this machine has ${navigator.hardwareConcurrency}); ` +
      `fewer means another process took CPU time, which slows the kernels but not the one-thread copy\n`,
  );
  console.log("| kernel | shape | ms | GB/s | copy GB/s | vs copy | cores |");
  console.log("|---|---|---:|---:|---:|---:|---:|");
  for (const r of matvec) {
    console.log(
      `| matvec ${r.type} | ${r.rows}x${r.cols} | ${r.ms.toFixed(3)} | ${r.gbps.toFixed(2)} | ${
        r.copyGbps.toFixed(2)
      } | ${(100 * r.gbps / r.copyGbps).toFixed(0)}% | ${r.cores.toFixed(2)} |`,
    );
  }
  for (const r of attention) {
    console.log(
      `| decode attention | ${r.tokens} tokens | ${r.ms.toFixed(3)} | ${r.gbps.toFixed(2)} | ${
        r.copyGbps.toFixed(2)
      } | ${(100 * r.gbps / r.copyGbps).toFixed(0)}% | ${r.cores.toFixed(2)} |`,
    );
  }
  await Deno.mkdir(join(HERE, "results"), { recursive: true });
  await Deno.writeTextFile(
    join(HERE, "results", "kernels.json"),
    JSON.stringify(
      {
        date: new Date().toISOString(),
        device: device.info,
        copyGbps,
        copyBefore,
        copyAfter,
        texel,
        matvec,
        attention,
      },
      null,
      2,
    ),
  );
}
