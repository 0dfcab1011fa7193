/**
 * The OpenAI wire format: request validation for /v1/completions and /v1/chat/completions, and
 * the response and stream-chunk shapes. Validation builds the engine's options from known fields
 * only, so nothing a client sends reaches the engine unchecked; unknown fields are ignored, as
 * most OpenAI-compatible servers do.
 */
import type { ChatMessage } from "../model/chat.ts";
import { resolveSamplingOptions, type SamplingOptions } from "../model/sampler.ts";
import { isHcError } from "../errors.ts";
import { isPolicyName, POLICY_NAMES } from "../engine/model.ts";
import { ApiError, badParam } from "./errors.ts";
import type { HcStatsJson } from "./stats.ts";

/**
 * The cache policies a request may ask for (body field `cache`). One list, so that the error
 * message, the CLI and the playground all name the same policies.
 */
export const CACHE_POLICIES = POLICY_NAMES;
export type CachePolicyName = typeof CACHE_POLICIES[number];

/** Policies for which `keep` means nothing: they hold every token on the device. */
const KEEP_ALL_POLICIES: ReadonlySet<string> = new Set(["full"]);

/** Policies that need a head profile. */
export const NEEDS_PROFILE: ReadonlySet<string> = new Set([
  "heterocache",
  "per-step",
  "fixed-interval",
]);

/** OpenAI accepts at most four stop sequences. */
const MAX_STOP_SEQUENCES = 4;
const MAX_STOP_CHARS = 1000;
const MAX_MESSAGES = 4096;

export type RequestKind = "chat" | "completion";

export interface GenerationRequest {
  kind: RequestKind;
  /** The model the client named, or null when it named none (the server's model is used). */
  model: string | null;
  prompt: string | ChatMessage[];
  /** null: the endpoint's default (16 for completions, the rest of the context for chat). */
  maxTokens: number | null;
  sampling: SamplingOptions;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** null: the server's default policy. */
  cache: CachePolicyName | null;
  /** null: the server's default budget. */
  keep: number | null;
  /** Reuse a parked session whose context starts this prompt (llama-server's `cache_prompt`,
   * default true). */
  cachePrompt: boolean;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function optNumber(
  body: Json,
  key: string,
  min: number,
  max: number,
  integer = false,
): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw badParam(key, `'${key}' must be a number, got ${typeName(v)}`, "invalid_type");
  }
  if (integer && !Number.isSafeInteger(v)) {
    throw badParam(key, `'${key}' must be an integer, got ${v}`);
  }
  if (v < min || v > max) {
    throw badParam(key, `'${key}' must be between ${min} and ${max}, got ${v}`);
  }
  return v;
}

function optBoolean(body: Json, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") {
    throw badParam(key, `'${key}' must be a boolean, got ${typeName(v)}`, "invalid_type");
  }
  return v;
}

/** Fields we do not implement: accepted only at the value that means "off". */
function rejectUnsupported(body: Json): void {
  const offValues: [string, (v: unknown) => boolean, string][] = [
    ["n", (v) => v === 1, "only n = 1 is supported"],
    ["best_of", (v) => v === 1, "only best_of = 1 is supported"],
    ["logprobs", (v) => v === false || v === 0, "logprobs are not supported"],
    ["top_logprobs", (v) => v === 0, "logprobs are not supported"],
    ["echo", (v) => v === false, "echo is not supported"],
    ["suffix", (v) => v === "", "suffix (insertion) is not supported"],
    [
      "logit_bias",
      (v) => isObject(v) && Object.keys(v).length === 0,
      "logit_bias is not supported",
    ],
    ["tools", (v) => Array.isArray(v) && v.length === 0, "tools are not supported"],
    ["functions", (v) => Array.isArray(v) && v.length === 0, "functions are not supported"],
    ["tool_choice", (v) => v === "none", "tools are not supported"],
    [
      "response_format",
      (v) => isObject(v) && v.type === "text",
      'only response_format {"type": "text"} is supported',
    ],
  ];
  for (const [key, ok, why] of offValues) {
    const v = body[key];
    if (v !== undefined && v !== null && !ok(v)) throw badParam(key, why, "unsupported_parameter");
  }
}

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
    throw badParam("stop", "'stop' must be a string or an array of strings", "invalid_type");
  }
  if (list.length > MAX_STOP_SEQUENCES) {
    throw badParam(
      "stop",
      `'stop' takes at most ${MAX_STOP_SEQUENCES} sequences, got ${list.length}`,
    );
  }
  const out = (list as string[]).filter((s) => s.length > 0);
  if (out.some((s) => s.length > MAX_STOP_CHARS)) {
    throw badParam("stop", `each stop sequence must be at most ${MAX_STOP_CHARS} characters`);
  }
  return out;
}

function parseCompletionPrompt(v: unknown): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.length === 1 && typeof v[0] === "string") return v[0];
  if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number")) {
    throw badParam(
      "prompt",
      "token-id prompts are not supported; send the prompt as text",
      "unsupported_parameter",
    );
  }
  if (Array.isArray(v) && v.length > 1) {
    throw badParam("prompt", "only one prompt per request is supported", "unsupported_parameter");
  }
  if (v === undefined) {
    throw badParam("prompt", "'prompt' is required", "missing_required_parameter");
  }
  throw badParam("prompt", `'prompt' must be a string, got ${typeName(v)}`, "invalid_type");
}

const ROLE_MAP: Record<string, ChatMessage["role"]> = {
  system: "system",
  developer: "system",
  user: "user",
  assistant: "assistant",
};

function parseContent(v: unknown, i: number): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    let text = "";
    for (const [j, part] of v.entries()) {
      if (!isObject(part) || part.type !== "text" || typeof part.text !== "string") {
        throw badParam(
          `messages[${i}].content[${j}]`,
          'only text content parts ({"type": "text", "text": ...}) are supported',
          "invalid_type",
        );
      }
      text += part.text;
    }
    return text;
  }
  throw badParam(
    `messages[${i}].content`,
    `message content must be a string, got ${typeName(v)}`,
    "invalid_type",
  );
}

function parseMessages(v: unknown): ChatMessage[] {
  if (v === undefined) {
    throw badParam("messages", "'messages' is required", "missing_required_parameter");
  }
  if (!Array.isArray(v)) {
    throw badParam("messages", `'messages' must be an array, got ${typeName(v)}`, "invalid_type");
  }
  if (v.length === 0) throw badParam("messages", "'messages' must hold at least one message");
  if (v.length > MAX_MESSAGES) {
    throw badParam("messages", `'messages' holds at most ${MAX_MESSAGES} messages`);
  }
  return v.map((m, i) => {
    if (!isObject(m)) {
      throw badParam(
        `messages[${i}]`,
        `each message must be an object, got ${typeName(m)}`,
        "invalid_type",
      );
    }
    const role = typeof m.role === "string" ? ROLE_MAP[m.role] : undefined;
    if (!role) {
      throw badParam(
        `messages[${i}].role`,
        `message role must be one of system, developer, user, assistant; got ${
          JSON.stringify(m.role ?? null)
        }`,
      );
    }
    return { role, content: parseContent(m.content, i) };
  });
}

function parseCacheChoice(body: Json): { cache: CachePolicyName | null; keep: number | null } {
  let cache: CachePolicyName | null = null;
  if (body.cache !== undefined && body.cache !== null) {
    if (!isPolicyName(body.cache)) {
      throw badParam(
        "cache",
        `unknown cache policy ${JSON.stringify(body.cache)}; this server offers: ${
          CACHE_POLICIES.join(", ")
        }`,
      );
    }
    cache = body.cache;
  }
  const keep = parseKeep(body.keep);
  return { cache, keep };
}

/**
 * `keep`: a fraction of the prompt's KV kept on the device, in (0, 1], or an integer > 1 giving an
 * absolute per-head token budget (docs/design.md, "The cache policies").
 */
export function parseKeep(v: unknown): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw badParam("keep", `'keep' must be a number, got ${typeName(v)}`, "invalid_type");
  }
  if (v <= 0) {
    throw badParam("keep", `'keep' must be > 0 (a fraction in (0, 1] or a token budget), got ${v}`);
  }
  if (v > 1 && !Number.isSafeInteger(v)) {
    throw badParam(
      "keep",
      `'keep' above 1 is a per-head token budget and must be an integer, got ${v}`,
    );
  }
  return v;
}

/** Rejects a `keep` that the chosen policy cannot honour. */
export function checkKeepForPolicy(cache: string, keep: number | null): void {
  if (keep !== null && keep !== 1 && KEEP_ALL_POLICIES.has(cache)) {
    const compressing = CACHE_POLICIES.filter((p) => !KEEP_ALL_POLICIES.has(p));
    throw badParam(
      "keep",
      `the '${cache}' cache policy keeps every token, so 'keep' must be 1 or absent; ` +
        (compressing.length > 0
          ? `policies that take a budget: ${compressing.join(", ")}`
          : "no compressing policy is available on this server yet"),
    );
  }
}

/** Validates a parsed JSON body; throws ApiError (400) naming the first bad field. */
export function parseGenerationRequest(kind: RequestKind, body: unknown): GenerationRequest {
  if (!isObject(body)) {
    throw new ApiError(400, `the request body must be a JSON object, got ${typeName(body)}`, {
      code: "invalid_body",
    });
  }
  if (body.model !== undefined && body.model !== null && typeof body.model !== "string") {
    throw badParam(
      "model",
      `'model' must be a string, got ${typeName(body.model)}`,
      "invalid_type",
    );
  }
  rejectUnsupported(body);
  const prompt = kind === "chat"
    ? parseMessages(body.messages)
    : parseCompletionPrompt(body.prompt);
  const maxKey = kind === "chat" && body.max_completion_tokens != null
    ? "max_completion_tokens"
    : "max_tokens";
  const maxTokens = optNumber(body, maxKey, 1, Number.MAX_SAFE_INTEGER, true) ?? null;
  const sampling: SamplingOptions = {
    temperature: optNumber(body, "temperature", 0, 2),
    topP: optNumber(body, "top_p", 0, 1),
    topK: optNumber(body, "top_k", 0, Number.MAX_SAFE_INTEGER, true),
    minP: optNumber(body, "min_p", 0, 1),
    presencePenalty: optNumber(body, "presence_penalty", -2, 2),
    frequencyPenalty: optNumber(body, "frequency_penalty", -2, 2),
    seed: optNumber(body, "seed", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true),
  };
  if (sampling.topP === 0) {
    throw badParam("top_p", "'top_p' must be > 0 (use temperature 0 for greedy decoding)");
  }
  for (const k of Object.keys(sampling) as (keyof SamplingOptions)[]) {
    if (sampling[k] === undefined) delete sampling[k];
  }
  try {
    // The engine's own check, run here so a bad value is a 400 before the request queues.
    resolveSamplingOptions(sampling);
  } catch (e) {
    if (isHcError(e)) throw new ApiError(400, e.message, { code: "invalid_value" });
    throw e;
  }
  const stream = optBoolean(body, "stream") ?? false;
  let includeUsage = false;
  const so = body.stream_options;
  if (so !== undefined && so !== null) {
    if (!isObject(so)) {
      throw badParam("stream_options", "'stream_options' must be an object", "invalid_type");
    }
    if (!stream) {
      throw badParam("stream_options", "'stream_options' is only allowed with stream: true");
    }
    includeUsage = optBoolean(so, "include_usage") ?? false;
  }
  const { cache, keep } = parseCacheChoice(body);
  const cachePrompt = optBoolean(body, "cache_prompt") ?? true;
  return {
    kind,
    model: (body.model as string | undefined) ?? null,
    prompt,
    maxTokens,
    sampling,
    stop: parseStop(body.stop),
    stream,
    includeUsage,
    cache,
    keep,
    cachePrompt,
  };
}

// ---- response shapes -------------------------------------------------------------------------

export type OpenAiFinishReason = "stop" | "length";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** As OpenAI reports prompt caching: prompt tokens that were not computed again. */
  prompt_tokens_details: { cached_tokens: number };
}

/** `promptTokens` counts every prompt token, `cachedTokens` of them reused. */
export function usage(promptTokens: number, completionTokens: number, cachedTokens = 0): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}

/** What every response and chunk of one request shares. */
export interface ResponseHead {
  id: string;
  created: number;
  model: string;
}

export function newResponseHead(kind: RequestKind, model: string): ResponseHead {
  const prefix = kind === "chat" ? "chatcmpl-" : "cmpl-";
  return {
    id: prefix + crypto.randomUUID().replaceAll("-", ""),
    created: Math.floor(Date.now() / 1000),
    model,
  };
}

export function completionResponse(
  kind: RequestKind,
  head: ResponseHead,
  text: string,
  finish: OpenAiFinishReason,
  u: Usage,
  hc: HcStatsJson,
): Json {
  const choice = kind === "chat"
    ? {
      index: 0,
      message: { role: "assistant", content: text },
      logprobs: null,
      finish_reason: finish,
    }
    : { index: 0, text, logprobs: null, finish_reason: finish };
  return {
    id: head.id,
    object: kind === "chat" ? "chat.completion" : "text_completion",
    created: head.created,
    model: head.model,
    system_fingerprint: null,
    choices: [choice],
    usage: u,
    hc,
  };
}

/**
 * One stream chunk. `delta` is the new text (chat: with the role on the first chunk);
 * `usage` null marks chunks before the final usage chunk when include_usage is on.
 */
export function completionChunk(
  kind: RequestKind,
  head: ResponseHead,
  delta: { role?: "assistant"; text?: string },
  finish: OpenAiFinishReason | null,
  extra: { usage?: Usage | null; hc?: Partial<HcStatsJson> } = {},
): Json {
  const choice = kind === "chat"
    ? {
      index: 0,
      delta: {
        ...(delta.role ? { role: delta.role } : {}),
        ...(delta.text !== undefined ? { content: delta.text } : {}),
      },
      logprobs: null,
      finish_reason: finish,
    }
    : { index: 0, text: delta.text ?? "", logprobs: null, finish_reason: finish };
  return {
    id: head.id,
    object: kind === "chat" ? "chat.completion.chunk" : "text_completion",
    created: head.created,
    model: head.model,
    system_fingerprint: null,
    choices: [choice],
    ...extra,
  };
}

/** The usage-only chunk that ends a stream when stream_options.include_usage is set. */
export function usageChunk(kind: RequestKind, head: ResponseHead, u: Usage, hc: HcStatsJson): Json {
  return {
    id: head.id,
    object: kind === "chat" ? "chat.completion.chunk" : "text_completion",
    created: head.created,
    model: head.model,
    system_fingerprint: null,
    choices: [],
    usage: u,
    hc,
  };
}
