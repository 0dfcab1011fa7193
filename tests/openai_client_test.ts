/** The official openai npm client against the server: plain and streamed answers, and errors. */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { loadModel } from "../mod.ts";
import { serve } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const model = await loadModel(sharedPath("models/stories260K.gguf"));

async function engineText(
  prompt: string | { role: "user"; content: string }[],
  maxTokens: number,
): Promise<string> {
  using s = model.session();
  return (await s.complete(prompt, { maxTokens, temperature: 0 })).text;
}

async function withClient(fn: (client: OpenAI) => Promise<void>): Promise<void> {
  const running = await serve(model, { port: 0 });
  try {
    await running.server.whenReady();
    await fn(new OpenAI({ baseURL: `${running.url}/v1`, apiKey: "unused", maxRetries: 0 }));
  } finally {
    await running.shutdown();
  }
}

const messages = [{ role: "user" as const, content: "Once upon a time" }];

Deno.test("openai client: chat completion, plain and streamed", async () => {
  const reference = await engineText(messages, 32);
  assert.ok(reference.length > 0);
  await withClient(async (client) => {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["stories260K"]);

    const plain = await client.chat.completions.create({
      model: "stories260K",
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    assert.equal(plain.choices[0].message.content, reference);
    assert.equal(plain.choices[0].finish_reason, "length");
    assert.equal(plain.usage?.completion_tokens, 32);

    const stream = await client.chat.completions.create({
      model: "stories260K",
      messages,
      max_tokens: 32,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let pieces = 0;
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) {
        text += choice.delta.content;
        pieces++;
      }
      finish = choice.finish_reason ?? finish;
    }
    assert.equal(text, reference);
    assert.ok(pieces > 3, "the answer should arrive in pieces");
    assert.equal(finish, "length");
    assert.equal(usage?.completion_tokens, 32);
    assert.equal(usage?.total_tokens, plain.usage!.total_tokens);

    // The client's streaming helper assembles the same message.
    const runner = client.chat.completions.stream({
      model: "stories260K",
      messages,
      max_tokens: 32,
      temperature: 0,
    });
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, reference);
  });
});

Deno.test("openai client: legacy completions, plain and streamed", async () => {
  const reference = await engineText("Once upon a time", 40);
  await withClient(async (client) => {
    const plain = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 40,
      temperature: 0,
    });
    assert.equal(plain.choices[0].text, reference);
    assert.equal(plain.usage?.completion_tokens, 40);
    const stream = await client.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 40,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    assert.equal(text, reference);
  });
});

Deno.test("openai client: errors arrive as the client's typed errors", async () => {
  await withClient(async (client) => {
    await assert.rejects(
      client.chat.completions.create({ model: "gpt-4o", messages }),
      (e: unknown) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
    );
    await assert.rejects(
      client.chat.completions.create({ model: "stories260K", messages, temperature: 9 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === "temperature",
    );
    await assert.rejects(
      client.completions.create({ model: "stories260K", prompt: "x ".repeat(3000), max_tokens: 5 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.code === "context_length_exceeded",
    );
    // Extra body fields (the cache policy) pass through the client.
    await assert.rejects(
      client.completions.create(
        {
          model: "stories260K",
          prompt: "x",
          cache: "lru",
        } as OpenAI.CompletionCreateParamsNonStreaming,
      ),
      (e: unknown) => e instanceof OpenAI.BadRequestError && /full/.test(e.message),
    );
  });
});
