/**
 * Chat prompts: render a model's `tokenizer.chat_template` (Jinja, as Hugging Face defines it)
 * with @huggingface/jinja, or a fixed ChatML fallback when the model ships none.
 */
import { Template } from "../deps.ts";
import { HcError } from "../errors.ts";

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  readonly role: ChatRole;
  readonly content: string;
}

export interface RenderChatOptions {
  readonly bosToken: string;
  readonly eosToken: string;
  /** Append the opening of an assistant turn so the model answers next. */
  readonly addGenerationPrompt: boolean;
}

/**
 * The template used when a model has no `tokenizer.chat_template`: ChatML, i.e.
 *
 *     <|im_start|>system\n{content}<|im_end|>\n
 *     <|im_start|>user\n{content}<|im_end|>\n
 *     <|im_start|>assistant\n            (only with addGenerationPrompt)
 *
 * ChatML is what most instruction-tuned small models that lack a template were trained on, and it
 * tokenizes as plain text on models that have no <|im_start|> token. No BOS is written: the
 * tokenizer's add-BOS rule supplies it.
 */
export const FALLBACK_CHAT_TEMPLATE: string = "{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const ROLES: ReadonlySet<string> = new Set<ChatRole>(["system", "user", "assistant"]);

/** Parsed templates by source; a server renders the same one for every request. */
const CACHE_LIMIT = 16;
const cache = new Map<string, Template>();

function compile(source: string): Template {
  const hit = cache.get(source);
  if (hit) return hit;
  let t: Template;
  try {
    t = new Template(source);
  } catch (e) {
    throw new HcError("E_TEMPLATE", `chat template does not parse: ${errorText(e)}`, { cause: e });
  }
  if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value as string);
  cache.set(source, t);
  return t;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The model's chat template from GGUF metadata, or null when it has none. */
export function chatTemplateFromMetadata(metadata: ReadonlyMap<string, unknown>): string | null {
  const v = metadata.get("tokenizer.chat_template");
  return typeof v === "string" && v.length > 0 ? v : null;
}

/**
 * Renders `messages` into the prompt text the model expects. `template` null (or empty) uses
 * FALLBACK_CHAT_TEMPLATE. A template that fails to parse or render (including its own
 * `raise_exception`, e.g. for an unsupported role order) is HcError E_TEMPLATE.
 */
export function renderChat(
  template: string | null,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions,
): string {
  for (const [i, m] of messages.entries()) {
    if (!m || !ROLES.has(m.role) || typeof m.content !== "string") {
      throw new HcError(
        "E_BAD_REQUEST",
        `chat message ${i} needs a role of system/user/assistant and string content`,
      );
    }
  }
  const source = template !== null && template.length > 0 ? template : FALLBACK_CHAT_TEMPLATE;
  const compiled = compile(source);
  try {
    return compiled.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      bos_token: opts.bosToken,
      eos_token: opts.eosToken,
      add_generation_prompt: opts.addGenerationPrompt,
    });
  } catch (e) {
    throw new HcError("E_TEMPLATE", `chat template failed to render: ${errorText(e)}`, {
      cause: e,
    });
  }
}
