/** The device kernels cache policies use, created once per model and shared by its sessions. */
import { AttentionScores, TopK } from "../kernels/scores.ts";
import { RowGather } from "../kernels/gather.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Device } from "../vk/mod.ts";

export class CacheKernels implements Disposable {
  readonly scores: AttentionScores;
  readonly topk: TopK;
  readonly gather: RowGather;

  constructor(device: Device, config: ModelConfig) {
    const made: Disposable[] = [];
    try {
      this.scores = new AttentionScores(device, {
        headDim: config.headDim,
        groupSize: config.nHeads / config.nKvHeads,
      });
      made.push(this.scores);
      this.topk = new TopK(device);
      made.push(this.topk);
      this.gather = new RowGather(device);
    } catch (e) {
      for (const m of made) m[Symbol.dispose]();
      throw e;
    }
  }

  [Symbol.dispose](): void {
    this.scores.dispose();
    this.topk.dispose();
    this.gather[Symbol.dispose]();
  }
}
