/**
 * `deno task bench:async`: does a refresh in flight slow decoding down? A synthetic model with 8
 * KV heads per layer decodes after a long prompt with HeteroCache's machinery refreshing every
 * few steps (`fixed-interval`, so refreshes are regular); each step is timed and classed by what
 * it carried: a refresh selection (the synchronous drift-check/selection work), a refresh in
 * flight (host gather and device copy running beside it), or nothing. Prints the medians and
 * ratios; with `--write`, also writes bench/results/async.json.
 */
import { parseArgs } from "node:util";
import { loadModel } from "../mod.ts";
import type { HeteroCache } from "../src/cache/heterocache/heterocache.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import type { HeadRole } from "../src/cache/profile/profile.ts";
import { writeSyntheticModel } from "../testing/synthetic_model.ts";
import { join, writeResult } from "./paths.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      context: { type: "string", default: "16384" },
      "head-dim": { type: "string", default: "16" },
      steps: { type: "string", default: "64" },
      interval: { type: "string", default: "4" },
      keep: { type: "string", default: "0.25" },
      write: { type: "boolean", default: false },
    },
  });
  const L = Number(values.context);
  const headDim = Number(values["head-dim"]);
  const steps = Number(values.steps);
  const interval = Number(values.interval);
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "m.gguf");
    const dim = 8 * headDim;
    await writeSyntheticModel(path, {
      dim,
      nLayers: 2,
      nHeads: 8,
      nKvHeads: 8,
      headDim,
      ffnDim: 2 * dim,
      contextLength: L + steps + 8,
      seed: 21,
    });
    const roles: HeadRole[] = [
      "pivot",
      "satellite",
      "satellite",
      "satellite",
      "satellite",
      "satellite",
      "satellite",
      "anchor",
    ];
    const mult = [-1, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.0];
    const profile = uniformProfile(2, roles, mult);
    await using model = await loadModel(path);
    using s = model.session({
      cache: "fixed-interval",
      interval,
      keep: Number(values.keep),
      profile,
      contextTokens: L + steps + 1,
    });
    const policy = s.policy as HeteroCache;
    const prompt = Array.from({ length: L }, (_, i) => 3 + ((i * 7919) % 300));
    const forced = Array.from({ length: steps }, (_, i) => 3 + ((i * 104729) % 300));
    const t0 = performance.now();
    let last = 0;
    let inFlight = false;
    const rows: { step: number; ms: number; kind: "selection" | "in-flight" | "plain" }[] = [];
    await s.teacherForce(prompt, forced, (i) => {
      const now = performance.now();
      if (i === 0) {
        console.error(`prefill of ${L} tokens: ${((now - t0) / 1000).toFixed(1)} s`);
      } else {
        // Step i-1 ran afterStep; with fixed-interval, steps that are multiples of the interval
        // did the selection work; a refresh started before it ran beside it.
        const kind = i % interval === 0 ? "selection" : inFlight ? "in-flight" : "plain";
        rows.push({ step: i, ms: now - last, kind });
      }
      inFlight = policy.refreshInFlight;
      last = performance.now();
    });
    const st = s.cacheStats();
    const by = (k: string) => rows.filter((r) => r.kind === k).map((r) => r.ms);
    const plain = median(by("plain"));
    const flight = median(by("in-flight"));
    const sel = median(by("selection"));
    const bytesPerRefresh = st.triggers ? st.bytesMoved / st.triggers : 0;
    console.log(
      `\nrefresh asynchrony on ${model.info().device}: ${L}-token prompt, 2 layers x 8 KV heads x ${headDim}, keep ${values.keep}, refresh every ${interval} steps\n`,
    );
    console.log("| steps | count | median ms | vs plain |");
    console.log("|---|---:|---:|---:|");
    console.log(
      `| plain (nothing in flight) | ${by("plain").length} | ${plain.toFixed(2)} | 1.00 |`,
    );
    console.log(
      `| refresh in flight | ${by("in-flight").length} | ${flight.toFixed(2)} | ${
        (flight / plain).toFixed(2)
      } |`,
    );
    console.log(
      `| selection step (scores + top-k, synchronous) | ${by("selection").length} | ${
        sel.toFixed(2)
      } | ${(sel / plain).toFixed(2)} |`,
    );
    console.log(
      `\n${st.triggers} refreshes, ${(bytesPerRefresh / 1e6).toFixed(2)} MB each; transfer wait ${
        st.transferWaitMs.toFixed(1)
      } ms in all; step retrieval rate ${st.stepRetrievalRate.toFixed(2)}`,
    );
    if (values.write) {
      await writeResult("async.json", {
        date: new Date().toISOString(),
        device: model.info().device,
        L,
        headDim,
        interval,
        keep: Number(values.keep),
        plainMs: plain,
        inFlightMs: flight,
        selectionMs: sel,
        ratio: flight / plain,
        stats: st,
        rows,
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
