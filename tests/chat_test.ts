import assert from "node:assert/strict";
import { isHcError } from "../src/errors.ts";
import { openGguf } from "../src/gguf/reader.ts";
import {
  type ChatMessage,
  chatTemplateFromMetadata,
  FALLBACK_CHAT_TEMPLATE,
  renderChat,
} from "../src/model/chat.ts";
import { tokenizerFromGguf } from "../src/model/tokenizer/mod.ts";

// Meta-Llama-3-8B-Instruct's published template.
const LLAMA3_TEMPLATE = "{% set loop_messages = messages %}{% for message in loop_messages %}" +
  "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'" +
  "+ message['content'] | trim + '<|eot_id|>' %}" +
  "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}" +
  "{{ content }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}" +
  "{% endif %}";

// Qwen2-Instruct's published ChatML template with its default system prompt.
const QWEN2_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const CHAT: ChatMessage[] = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "  Hi there!  " },
  { role: "assistant", content: "Hello." },
  { role: "user", content: "2+2?" },
];

Deno.test("Llama-3 template", () => {
  const out = renderChat(LLAMA3_TEMPLATE, CHAT, {
    bosToken: "<|begin_of_text|>",
    eosToken: "<|end_of_text|>",
    addGenerationPrompt: true,
  });
  assert.equal(
    out,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
  );
  const noGen = renderChat(LLAMA3_TEMPLATE, CHAT.slice(0, 2), {
    bosToken: "<B>",
    eosToken: "<E>",
    addGenerationPrompt: false,
  });
  assert.ok(noGen.startsWith("<B><|start_header_id|>system"));
  assert.ok(noGen.endsWith("Hi there!<|eot_id|>"));
});

Deno.test("ChatML (Qwen2) template, with and without a system message", () => {
  const opts = { bosToken: "", eosToken: "<|endoftext|>", addGenerationPrompt: true };
  assert.equal(
    renderChat(QWEN2_TEMPLATE, [{ role: "user", content: "hello" }], opts),
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
      "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
  );
  assert.equal(
    renderChat(QWEN2_TEMPLATE, CHAT.slice(0, 2), { ...opts, addGenerationPrompt: false }),
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there!  <|im_end|>\n",
  );
});

Deno.test("fallback template is ChatML and is used for null or empty templates", () => {
  const opts = { bosToken: "<s>", eosToken: "</s>", addGenerationPrompt: true };
  const expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi there!  " +
    "<|im_end|>\n<|im_start|>assistant\n";
  assert.equal(renderChat(null, CHAT.slice(0, 2), opts), expected);
  assert.equal(renderChat("", CHAT.slice(0, 2), opts), expected);
  assert.equal(renderChat(FALLBACK_CHAT_TEMPLATE, CHAT.slice(0, 2), opts), expected);
  assert.equal(renderChat(null, [], { ...opts, addGenerationPrompt: false }), "");
});

Deno.test("broken templates are E_TEMPLATE, bad messages E_BAD_REQUEST", () => {
  const opts = { bosToken: "", eosToken: "", addGenerationPrompt: false };
  assert.throws(
    () => renderChat("{% for m in messages %}{{ m.content }", CHAT, opts),
    (e) => isHcError(e, "E_TEMPLATE"),
  );
  assert.throws(
    () =>
      renderChat(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}",
        CHAT,
        opts,
      ),
    (e) => isHcError(e, "E_TEMPLATE") && e.message.includes("no system role"),
  );
  const bad = [{ role: "tool", content: "x" }] as unknown as ChatMessage[];
  assert.throws(() => renderChat(null, bad, opts), (e) => isHcError(e, "E_BAD_REQUEST"));
});

Deno.test("phi-3 GGUF: its own template renders and tokenizes into control tokens", async () => {
  const url = new URL("../../shared/models/ggml-vocab/ggml-vocab-phi-3.gguf", import.meta.url);
  try {
    await Deno.stat(url);
  } catch (e) {
    throw new Error(`test data file missing: ${url.pathname}`, { cause: e });
  }
  const f = await openGguf(url);
  let md: Map<string, unknown>;
  try {
    md = new Map(f.metadata);
  } finally {
    f.close();
  }
  const template = chatTemplateFromMetadata(md);
  assert.ok(template !== null, "phi-3 vocab ships a chat template");
  const tok = tokenizerFromGguf(md);
  const bos = tok.bos === null ? "" : tok.tokenText(tok.bos);
  const eos = tok.eos === null ? "" : tok.tokenText(tok.eos);
  const prompt = renderChat(template, [{ role: "user", content: "Hi" }], {
    bosToken: bos,
    eosToken: eos,
    addGenerationPrompt: true,
  });
  assert.equal(prompt, "<s><|user|>\nHi<|end|>\n<|assistant|>\n");
  const ids = tok.encode(prompt, { addSpecial: false, parseSpecial: true });
  const texts = ids.map((id) => tok.tokenText(id));
  for (const special of ["<s>", "<|user|>", "<|end|>", "<|assistant|>"]) {
    assert.ok(
      texts.includes(special),
      `${special} should be one token in ${JSON.stringify(texts)}`,
    );
  }
  assert.equal(ids[0], tok.bos);
  assert.ok(tok.isEog(ids[texts.indexOf("<|end|>")]), "<|end|> ends generation");
});
