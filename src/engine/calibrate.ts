/**
 * `calibrate()`: profiles a model once for HeteroCache (docs/algorithm.md §1b-1f, §10.5). The model
 * runs over calibration text with the full cache; at the last prompt token and at every greedy
 * decode step, each KV head's attention over the prompt keys (softmax per query head, mean over
 * its query group) is computed on the device and reduced at once to top-k sets by the
 * CalibrationRecorder, so no attention matrix is ever stored. Sliding-window layers are not
 * observed (their rings hold no whole prompt, and no policy compresses them): the profile marks
 * them, every head volatile.
 */
import { HcError } from "../errors.ts";
import { CalibrationRecorder } from "../cache/profile/analysis.ts";
import { FullCache } from "../cache/full.ts";
import { type HeadProfile, markWindowLayers } from "../cache/profile/profile.ts";
import { layerWindow } from "../model/arch.ts";
import type { LoadedModel } from "./model.ts";
import { CALIBRATION_TEXT } from "./calibration_text.ts";
import { MAX_BATCH_TOKENS } from "../model/forward.ts";

export interface CalibrateOptions {
  /** Calibration text (default: a bundled passage of plain English prose). */
  text?: string;
  /** Prompt tokens used (default: as many as the text and the context allow, at most 5000). */
  promptTokens?: number;
  /** Greedy decode steps observed (default 100, fewer when the context is short). */
  decodeSteps?: number;
  /** Top-k set size (default min(1024, L/4)). */
  topk?: number;
  stableThreshold?: number;
  simThreshold?: number;
  /** (done, total) work units: prompt chunks then decode steps. */
  onProgress?: (done: number, total: number) => void;
}

export async function calibrate(
  model: LoadedModel,
  opts: CalibrateOptions = {},
): Promise<HeadProfile> {
  const c = model.config;
  const context = c.contextLength;
  const ids = model.tokenizer.encode(opts.text ?? CALIBRATION_TEXT, { addSpecial: true });
  const steps = opts.decodeSteps ?? Math.min(100, Math.floor(context / 5));
  const L = Math.min(opts.promptTokens ?? 5000, ids.length, context - steps);
  if (!Number.isInteger(steps) || steps < 1) {
    throw new HcError("E_BAD_REQUEST", `decodeSteps must be a positive integer, got ${steps}`);
  }
  if (L < 16) {
    throw new HcError(
      "E_BAD_REQUEST",
      `calibration needs at least 16 prompt tokens; the text gives ${ids.length} and the context allows ${
        context - steps
      }`,
    );
  }
  const tokens = ids.slice(0, L);
  const device = model.device;
  const recorder = new CalibrationRecorder({
    model: {
      arch: c.arch,
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
      attnHash: model.llama.attnHash,
    },
    promptTokens: L,
    topk: opts.topk,
    stableThreshold: opts.stableThreshold,
    simThreshold: opts.simThreshold,
  });
  const kernels = model.cacheKernels();
  const qDim = c.nHeads * c.headDim;
  const chunks = Math.ceil(L / MAX_BATCH_TOKENS);
  const total = chunks + steps;
  let done = 0;
  return await model.queue.run(async () => {
    using state = model.llama.createState({ contextTokens: L + steps });
    using cache = new FullCache(device, c, L + steps);
    cache.begin(L, steps);
    state.reservePrefillCapture(1);
    using rows = device.buffer(c.nKvHeads * L * 4);
    using back = device.buffer(c.nKvHeads * L * 4, "readback");
    using scratch = device.buffer(
      kernels.scores.scratchBytes({ headCount: c.nKvHeads, n: L, window: 1 }),
    );
    using queries = device.buffer(c.nLayers * qDim * 4, "upload");
    using cmd = device.commands();
    const flat = new Float32Array(L).fill(1 / L);
    /** Group-mean attention rows of every KV head of every layer, fed to `record`. */
    const observe = async (
      q: typeof queries,
      qOffsetOf: (layer: number) => number,
      record: (layer: number, head: number, row: Float32Array) => void,
    ) => {
      for (let l = 0; l < c.nLayers; l++) {
        if (layerWindow(c, l) > 0) {
          // A flat row keeps the recorder's bookkeeping whole; markWindowLayers overrides it.
          for (let h = 0; h < c.nKvHeads; h++) record(l, h, flat);
          continue;
        }
        cmd.begin();
        kernels.scores.record(cmd, {
          cache: cache.caches[l],
          headStart: 0,
          headCount: c.nKvHeads,
          n: L,
          q,
          qOffset: qOffsetOf(l),
          window: 1,
          groupReduce: "mean",
          windowMode: "separate",
          poolFirst: false,
          poolKernel: 1,
          out: rows,
          scratch,
        });
        cmd.barrier();
        cmd.copy(rows, back, [[0, 0, rows.bytes]]);
        cmd.end();
        await device.wait("compute", cmd.submit());
        const m = back.mapped();
        const all = new Float32Array(m.buffer, m.byteOffset, c.nKvHeads * L);
        for (let h = 0; h < c.nKvHeads; h++) record(l, h, all.subarray(h * L, (h + 1) * L));
      }
    };
    let next = 0;
    for (let i = 0; i < L; i += MAX_BATCH_TOKENS) {
      const chunk = tokens.slice(i, i + MAX_BATCH_TOKENS);
      cache.advance(chunk.length);
      const last = i + MAX_BATCH_TOKENS >= L;
      const opts1 = { caches: cache.caches, captureQueriesFrom: L - 1 };
      if (last) next = await state.eval(chunk, "argmax", opts1);
      else await state.eval(chunk, "none", opts1);
      opts.onProgress?.(++done, total);
    }
    await observe(
      state.captures.prefillQ!,
      (l) => l * qDim,
      (l, h, row) => recorder.recordPrefill(l, h, row),
    );
    const qView = new Float32Array(
      queries.mapped().buffer,
      queries.mapped().byteOffset,
      c.nLayers * qDim,
    );
    const per = qDim + 2 * c.nKvHeads * c.headDim;
    for (let t = 0; t < steps; t++) {
      cache.advance(1);
      next = await state.eval([next], "argmax", { caches: cache.caches, captureStep: true });
      const step = state.captures.step;
      for (let l = 0; l < c.nLayers; l++) {
        qView.set(step.subarray(l * per, l * per + qDim), l * qDim);
      }
      await observe(queries, (l) => l * qDim, (l, h, row) => recorder.recordDecode(t, l, h, row));
      opts.onProgress?.(++done, total);
    }
    return markWindowLayers(recorder.finish(), c.layerWindows);
  });
}
