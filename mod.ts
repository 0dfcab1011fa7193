/**
 * HeteroCache-VK: Llama-family inference on any Vulkan device, with per-head KV-cache
 * compression. Data flows one way: server → engine → model + cache policy → vk → shim.
 *
 * ```ts
 * import { loadModel } from "./mod.ts";
 * await using model = await loadModel("model.gguf");
 * using session = model.session();
 * for await (const piece of session.generate("Once upon a time", { maxTokens: 64 })) {
 *   console.log(piece.text);
 * }
 * ```
 */
export { HcError, type HcErrorCode, isHcError } from "./src/errors.ts";
export {
  DeviceQueue,
  LoadedModel,
  loadModel,
  type LoadOptions,
  type ModelInfo,
  type Prompt,
  type SessionOptions,
} from "./src/engine/model.ts";
export { calibrate, type CalibrateOptions } from "./src/engine/calibrate.ts";
export {
  type HeadProfile,
  POLICY_NAMES,
  type PolicyName,
  readProfile,
  serializeProfile,
} from "./src/engine/model.ts";
export {
  type Budget,
  type CacheOptions,
  cacheOptions,
  type CacheRequest,
  type CacheStats,
} from "./src/cache/mod.ts";
export {
  type FinishReason,
  type GenerateOptions,
  type GenerationSummary,
  type Piece,
  Session,
  type SessionStats,
} from "./src/engine/session.ts";
export type { ChatMessage, ChatRole } from "./src/model/chat.ts";
export type { SamplingOptions } from "./src/model/sampler.ts";
export type { ModelConfig } from "./src/model/config.ts";
export {
  Device,
  type DeviceInfo,
  listDevices,
  type VariantChoice,
  type VariantSet,
} from "./src/vk/mod.ts";
export { resolveModelPath } from "./src/download.ts";
export { type RunningServer, serve, type ServeOptions } from "./src/server/mod.ts";
