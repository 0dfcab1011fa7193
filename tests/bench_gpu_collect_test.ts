/**
 * bench/gpu/collect.ts: a device run's files land in bench/results/gpu/ and docs/results-gpu.md
 * with the device, the "gpu"-variant whole-model tests' summary, every kernel row, the prefill
 * table and the sweep's table; a folder that is not a run's output is an error naming the
 * missing file, and nothing is written.
 */
import assert from "node:assert/strict";
import { collect, wholeModelSummary } from "../bench/gpu/collect.ts";
import type { SpeedResult } from "../bench/decode.ts";
import type { PrefillResult } from "../bench/prefill.ts";

const prefill: PrefillResult = {
  date: "2026-11-28T12:03:00.000Z",
  device: "NVIDIA H200",
  fmaGflops: 60000,
  kernels: [],
  rows: [],
  long: null,
  attention: [],
  table: "| F16 | 512 | prefill table row |",
};

const LOG = [
  "kernel tests ...",
  "== whole-model tests, HC_VK_VARIANTS=gpu",
  "synthetic llama, Q4_K weights: device matches reference ... ok (1s)",
  "greedy continuation equals the reference ... FAILED (2s)",
  "FAILED | 40 passed | 1 failed (1m2s)",
  "kernel bandwidth on ...",
].join("\n");

const kernels = {
  date: "2026-11-28T12:00:00.000Z",
  device: { name: "NVIDIA H200", type: "discrete", apiVersion: "1.3.280" },
  copyGbps: 3800,
  matvec: [{
    type: "Q4_K",
    rows: 4096,
    cols: 14336,
    ms: 0.021,
    gbps: 1580,
    copyGbps: 3790,
    cores: 1,
    kernel: "matvec_run_q4_k",
  }],
  attention: [{ tokens: 32768, ms: 0.05, gbps: 1340, copyGbps: 3810, cores: 1 }],
};

const speed: SpeedResult = {
  date: "2026-11-28T12:05:00.000Z",
  device: "NVIDIA H200",
  cores: 16,
  quick: false,
  keep: 0.25,
  steps: 32,
  llamaSteps: 32,
  copyGbps: 3800,
  shapes: [{ id: "llama8b", label: "8B", profile: "official", weightBytes: 2 ** 28 }],
  cells: [
    {
      shape: "llama8b",
      engine: "full",
      context: 65536,
      stepMs: 2.5,
      meanMs: 2.6,
      kvBytes: 2 ** 30,
    },
    {
      shape: "llama8b",
      engine: "heterocache",
      context: 65536,
      stepMs: 1.0,
      meanMs: 1.3,
      kvBytes: 2 ** 28,
      stepRetrievalRate: 0.125,
    },
    {
      shape: "llama8b",
      engine: "llama.cpp",
      context: 65536,
      stepMs: null,
      kvBytes: null,
      note: "not run (--llamacpp-max 0)",
    },
  ],
  table: "",
};

Deno.test("collect: a run's files and report land beside the lavapipe results", async () => {
  const out = await Deno.makeTempDir();
  const root = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${out}/kernels.json`, JSON.stringify(kernels));
    await Deno.writeTextFile(`${out}/prefill.json`, JSON.stringify(prefill));
    await Deno.writeTextFile(`${out}/speed.json`, JSON.stringify(speed));
    await Deno.writeTextFile(`${out}/gpu.log`, LOG);
    const page = await collect(out, root);
    assert.equal(page, `${root}/docs/results-gpu.md`);
    const md = await Deno.readTextFile(page);
    assert.match(md, /Device `NVIDIA H200` \(discrete, Vulkan 1\.3\.280\)/);
    assert.match(md, /\| matvec Q4_K \| 4096x14336 \| 0\.021 \| 1580\.00 \| 3790\.00 \| 42% \|/);
    assert.match(md, /\| decode attention \| 32768 tokens \|.*\| 35% \|/);
    // The sweep's row: hc 2.50x full, llama.cpp not run.
    assert.match(
      md,
      /\| 64K \| heterocache \| 1\.3 \| 1\.0 \| 2\.00x \| - \| - \| 13% \| 256 MiB \|/,
    );
    assert.match(md, /llama\.cpp: not run \(--llamacpp-max 0\)\./);
    assert.match(md, /`FAILED \| 40 passed \| 1 failed \(1m2s\)`\n- greedy continuation equals/);
    assert.match(md, /\| F16 \| 512 \| prefill table row \|/);
    assert.equal(await Deno.readTextFile(`${root}/bench/results/gpu/gpu.log`), LOG);
    assert.deepEqual(
      JSON.parse(await Deno.readTextFile(`${root}/bench/results/gpu/speed.json`)),
      speed,
    );
  } finally {
    await Deno.remove(out, { recursive: true });
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("collect: a folder without a run's files is an error, and nothing is written", async () => {
  const out = await Deno.makeTempDir();
  const root = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${out}/kernels.json`, JSON.stringify(kernels));
    await assert.rejects(collect(out, root), /prefill\.json: .*is this a run\.sh \$OUT/);
    assert.deepEqual([...Deno.readDirSync(root)], []);
  } finally {
    await Deno.remove(out, { recursive: true });
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("collect: a whole-model section cut short says so", () => {
  assert.equal(wholeModelSummary("no such section"), "(not in this run's log)");
  assert.match(
    wholeModelSummary("== whole-model tests, HC_VK_VARIANTS=gpu\nsome test ... ok\n"),
    /did not finish/,
  );
});
