/**
 * LoadedModel: weights on a device, the tokenizer and chat template, and the one queue through
 * which every session's device work is serialised.
 */
import { HcError } from "../errors.ts";
import { type ChatMessage, chatTemplateFromMetadata, renderChat } from "../model/chat.ts";
import type { ModelConfig } from "../model/config.ts";
import { LlamaModel } from "../model/llama.ts";
import { openModelSource } from "../model/source.ts";
import { type Tokenizer, tokenizerFromGguf, tokenizerFromLlama2c } from "../model/tokenizer/mod.ts";
import { Device, type VariantChoice } from "../vk/mod.ts";
import { Session } from "./session.ts";
import { decodeSessionFile, profileHash } from "./session_file.ts";
import { CacheKernels, type CacheOptions, createPolicy } from "../cache/mod.ts";
import type { HeadProfile, ModelIdentity } from "../cache/profile/profile.ts";

export interface LoadOptions {
  /** A device to use (the caller keeps ownership), or a selector (index or name substring). */
  device?: Device | string;
  /** Kernel variant set of a device this call opens: "auto" (default: HC_VK_VARIANTS, else
   * by device type), "gpu" or "cpu" (see VariantChoice). With a `device` given, it must agree
   * with that device's set. */
  variants?: VariantChoice;
  /** A separate tokenizer: llama2.c tokenizer.bin for llama2.c checkpoints, or a GGUF. */
  tokenizerPath?: string;
  /** Weight upload progress in bytes. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export type SessionOptions = CacheOptions & {
  /** Most tokens (prompt + generated) the session holds. Default: the model's context length,
   * at most DEFAULT_CONTEXT_TOKENS. */
  contextTokens?: number;
};

/** Default session size: a full KV cache of a long-context model would not fit most devices. */
export const DEFAULT_CONTEXT_TOKENS = 8192;
export { isPolicyName, POLICY_NAMES, type PolicyName } from "../cache/policy.ts";
export { cacheOptions, type CacheRequest } from "../cache/options.ts";
export type { HeadProfile } from "../cache/profile/profile.ts";
export { profileFromText, readProfile } from "../cache/profile/profile_io.ts";
export { parseProfile, serializeProfile } from "../cache/profile/profile.ts";
export { DEFAULT_KEEP } from "../cache/mod.ts";

export interface ModelInfo {
  path: string;
  format: "gguf" | "llama2c";
  arch: string;
  config: Omit<ModelConfig, "ropeFreqFactors"> & { ropeScaled: boolean };
  parameters: number;
  weightBytes: number;
  device: string;
  deviceType: string;
  /** The kernel variant set the device runs ("gpu" or "cpu"). */
  variants: string;
  vocabSize: number;
  hasChatTemplate: boolean;
}

/** A prompt: text, chat messages, or token ids. */
export type Prompt = string | readonly ChatMessage[] | readonly number[];

function isTokenIds(p: Prompt): p is readonly number[] {
  return typeof p !== "string" && (p.length === 0 || typeof p[0] === "number");
}

/** FIFO mutual exclusion over the device: one step of one session at a time. */
export class DeviceQueue {
  #tail: Promise<unknown> = Promise.resolve();
  #depth = 0;

  /** Steps waiting or running. */
  get depth(): number {
    return this.#depth;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.#depth++;
    const result = this.#tail.then(fn);
    this.#tail = result.catch(() => {}).finally(() => this.#depth--);
    return result;
  }
}

export class LoadedModel implements AsyncDisposable {
  readonly path: string;
  readonly format: "gguf" | "llama2c";
  readonly device: Device;
  readonly llama: LlamaModel;
  readonly tokenizer: Tokenizer;
  readonly chatTemplate: string | null;
  readonly queue = new DeviceQueue();
  readonly #ownsDevice: boolean;
  readonly #sessions = new Set<Session>();
  #cacheKernels: CacheKernels | null = null;
  #disposed = false;

  constructor(init: {
    path: string;
    format: "gguf" | "llama2c";
    device: Device;
    ownsDevice: boolean;
    llama: LlamaModel;
    tokenizer: Tokenizer;
    chatTemplate: string | null;
  }) {
    this.path = init.path;
    this.format = init.format;
    this.device = init.device;
    this.#ownsDevice = init.ownsDevice;
    this.llama = init.llama;
    this.tokenizer = init.tokenizer;
    this.chatTemplate = init.chatTemplate;
  }

  get config(): ModelConfig {
    return this.llama.config;
  }

  info(): ModelInfo {
    const { ropeFreqFactors, ...rest } = this.config;
    return {
      path: this.path,
      format: this.format,
      arch: this.config.arch,
      config: { ...rest, ropeScaled: ropeFreqFactors !== null },
      parameters: this.llama.parameters,
      weightBytes: this.llama.weightBytes,
      device: this.device.info.name,
      deviceType: this.device.info.type,
      variants: this.device.variants,
      vocabSize: this.tokenizer.vocabSize,
      hasChatTemplate: this.chatTemplate !== null,
    };
  }

  /** A new session with its own KV cache on the device. */
  session(opts: SessionOptions = {}): Session {
    if (this.#disposed) throw new HcError("E_BAD_REQUEST", "the model was disposed");
    const contextTokens = opts.contextTokens ??
      Math.min(this.config.contextLength, DEFAULT_CONTEXT_TOKENS);
    if (
      !Number.isSafeInteger(contextTokens) || contextTokens < 1 ||
      contextTokens > this.config.contextLength
    ) {
      throw new HcError(
        "E_BAD_REQUEST",
        `contextTokens must be between 1 and the model's context length ${this.config.contextLength}, got ${contextTokens}`,
      );
    }
    const state = this.llama.createState({ contextTokens });
    let policy;
    try {
      policy = createPolicy(opts, {
        device: this.device,
        config: this.config,
        contextTokens,
        kernels: () => this.cacheKernels(),
        identity: this.identity(),
      });
    } catch (e) {
      state[Symbol.dispose]();
      throw e;
    }
    const s = new Session(this, state, policy, opts);
    this.#sessions.add(s);
    return s;
  }

  /**
   * A session from a file `session.save` wrote: it continues exactly as the saved one would.
   * HeteroCache's policies need the profile they were saved with. A damaged or truncated file
   * is E_SESSION_FILE, a newer format E_SESSION_VERSION, another model or profile
   * E_SESSION_MISMATCH; nothing of a failed restore stays on the device.
   */
  async restore(path: string, opts: { profile?: HeadProfile } = {}): Promise<Session> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      throw new HcError("E_IO", `cannot read the session file ${path}: ${(e as Error).message}`);
    }
    const { header, blobs } = await decodeSessionFile(bytes);
    const want = { ...this.identity(), vocabSize: this.config.vocabSize };
    const got = (header.model ?? {}) as Record<string, unknown>;
    const differs = (Object.keys(want) as (keyof typeof want)[]).filter((k) => got[k] !== want[k]);
    if (differs.length) {
      throw new HcError(
        "E_SESSION_MISMATCH",
        `the session file was saved with another model (${
          differs.map((k) => `${k} ${JSON.stringify(got[k])} here ${JSON.stringify(want[k])}`)
            .join(", ")
        }); restore it with the model it was saved with`,
      );
    }
    if (typeof header.options !== "object" || header.options === null) {
      throw new HcError("E_SESSION_FILE", "the session file has no session options");
    }
    const options = header.options as SessionOptions;
    let profile: HeadProfile | undefined;
    if (["heterocache", "per-step", "fixed-interval"].includes(options.cache ?? "full")) {
      if (!opts.profile) {
        throw new HcError(
          "E_SESSION_MISMATCH",
          `the session was saved with the '${options.cache}' cache; pass the profile it used`,
        );
      }
      if (await profileHash(opts.profile) !== header.profileHash) {
        throw new HcError(
          "E_SESSION_MISMATCH",
          "the session was saved with another head profile; pass the profile it used",
        );
      }
      profile = opts.profile;
    }
    let session: Session;
    try {
      session = this.session({ ...options, profile } as SessionOptions);
    } catch (e) {
      throw new HcError("E_SESSION_FILE", `the session file's options: ${(e as Error).message}`);
    }
    try {
      await session.loadSaved(header, blobs);
      return session;
    } catch (e) {
      session[Symbol.dispose]();
      if (e instanceof HcError) throw e;
      throw new HcError("E_SESSION_FILE", `the session file's state: ${(e as Error).message}`);
    }
  }

  /** What head profiles made for this model record, and are checked against. */
  identity(): ModelIdentity {
    const c = this.config;
    return {
      arch: c.arch,
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
      attnHash: this.llama.attnHash,
    };
  }

  /** The cache policies' kernels, made on first use and shared by every session. */
  cacheKernels(): CacheKernels {
    return (this.#cacheKernels ??= new CacheKernels(this.device, this.config));
  }

  /** @internal called by Session on dispose. */
  forgetSession(s: Session): void {
    this.#sessions.delete(s);
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Tokens of a prompt as a session will see it (chat messages rendered with the template;
   * token ids are taken as they are, after a range check). */
  tokenize(prompt: Prompt): number[] {
    const t = this.tokenizer;
    if (isTokenIds(prompt)) {
      for (const id of prompt) {
        if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
          throw new HcError(
            "E_BAD_REQUEST",
            `prompt token id ${id} outside the vocabulary (0..${this.config.vocabSize - 1})`,
          );
        }
      }
      return [...prompt];
    }
    if (typeof prompt === "string") return t.encode(prompt, { addSpecial: true });
    let text = this.renderChat(prompt);
    // Templates that write {{ bos_token }} themselves would otherwise get a second BOS.
    const bosText = t.bos !== null && t.addBos ? t.tokenText(t.bos) : "";
    if (bosText && text.startsWith(bosText)) text = text.slice(bosText.length);
    return t.encode(text, { addSpecial: true, parseSpecial: true });
  }

  renderChat(messages: readonly ChatMessage[]): string {
    const t = this.tokenizer;
    return renderChat(this.chatTemplate, messages, {
      bosToken: t.bos !== null ? t.tokenText(t.bos) : "",
      eosToken: t.eos !== null ? t.tokenText(t.eos) : "",
      addGenerationPrompt: true,
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.queue.run(() => Promise.resolve());
    for (const s of [...this.#sessions]) s[Symbol.dispose]();
    await this.device.settled();
    this.#cacheKernels?.[Symbol.dispose]();
    this.llama[Symbol.dispose]();
    if (this.#ownsDevice) this.device.close();
  }
}

/** Loads a GGUF (or a llama2.c checkpoint with `tokenizerPath`) onto a Vulkan device. */
export async function loadModel(path: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  using source = await openModelSource(path, { tokenizerPath: opts.tokenizerPath });
  let tokenizer: Tokenizer;
  if (source.llama2cTokenizer) {
    tokenizer = tokenizerFromLlama2c(source.llama2cTokenizer, source.config.vocabSize);
  } else if (source.tokenizerMetadata) {
    tokenizer = tokenizerFromGguf(source.tokenizerMetadata);
  } else {
    throw new HcError(
      "E_TOKENIZER",
      `${path} has no tokenizer; pass tokenizerPath (a tokenizer.bin or a GGUF)`,
    );
  }
  if (tokenizer.vocabSize !== source.config.vocabSize) {
    throw new HcError(
      "E_TOKENIZER",
      `the tokenizer has ${tokenizer.vocabSize} tokens but the model's embedding has ${source.config.vocabSize}`,
    );
  }
  const chatTemplate = source.tokenizerMetadata
    ? chatTemplateFromMetadata(source.tokenizerMetadata)
    : null;
  const ownsDevice = !(opts.device instanceof Device);
  if (
    opts.device instanceof Device && opts.variants !== undefined && opts.variants !== "auto" &&
    opts.variants !== opts.device.variants
  ) {
    throw new HcError(
      "E_BAD_REQUEST",
      `variants "${opts.variants}" asked for a device opened with the "${opts.device.variants}" set`,
    );
  }
  const device = opts.device instanceof Device
    ? opts.device
    : Device.open(opts.device, { variants: opts.variants });
  try {
    const llama = await LlamaModel.load(device, source, { onProgress: opts.onProgress });
    return new LoadedModel({
      path,
      format: source.format,
      device,
      ownsDevice,
      llama,
      tokenizer,
      chatTemplate,
    });
  } catch (e) {
    if (ownsDevice) device.close();
    throw e;
  }
}
