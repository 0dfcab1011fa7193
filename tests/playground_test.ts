/**
 * The playground page in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core)
 * against a running server: it streams an answer and draws the head map.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { loadModel } from "../mod.ts";
import { serve } from "../src/server/mod.ts";
import { sharedPath } from "./helpers.ts";

const CHROMIUM = Deno.env.get("HC_CHROMIUM") ?? "/usr/bin/chromium";

function chromiumPath(): string {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `the playground test needs Chromium at ${CHROMIUM} (Debian: apt-get install chromium; ` +
        "or set HC_CHROMIUM to another Chromium binary)",
    );
  }
  return CHROMIUM;
}

Deno.test({
  name: "playground: a prompt streams an answer, with live stats and the head map",
  // Chromium's pipes and the page's sockets outlive single awaits; everything is closed below.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const executablePath = chromiumPath();
    await using model = await loadModel(sharedPath("models/stories260K.gguf"));
    let reference: string;
    {
      using s = model.session();
      reference = (await s.complete("Once upon a time", { maxTokens: 40, temperature: 0 })).text;
    }
    const running = await serve(model, { port: 0 });
    const browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    try {
      const page = await browser.newPage();
      const pageErrors: string[] = [];
      page.on("pageerror", (e) => pageErrors.push(String(e)));
      await page.goto(running.url + "/");
      await page.waitForSelector('#status[data-state="ready"]', { timeout: 15_000 });
      assert.equal(await page.textContent("#model"), "stories260K");

      // The head map before any request: 5 layers x 4 KV heads, all full under the full policy.
      assert.equal(await page.locator("#heads .cell").count(), 5 * 4);
      assert.equal(await page.locator('#heads .cell[data-role="full"]').count(), 20);
      assert.equal(await page.getAttribute("#heads", "data-layers"), "5");
      assert.equal(await page.getAttribute("#heads", "data-kv-heads"), "4");

      // A completion, greedy, so the page must show exactly the engine's text.
      await page.selectOption("#mode", "completion");
      await page.fill("#max-tokens", "40");
      await page.fill("#temperature", "0");
      await page.fill("#prompt", "Once upon a time");
      await page.click("#send");
      await page.waitForSelector('#log[data-done="true"]', { timeout: 30_000 });
      const shown = await page.locator(".msg.assistant .text").last().textContent();
      assert.equal(shown, reference);
      const chunks = Number(await page.getAttribute("#log", "data-chunks"));
      assert.ok(chunks > 5, `the answer should stream in pieces, got ${chunks}`);
      assert.equal(await page.textContent('[data-stat="completion_tokens"]'), "40");
      assert.equal(await page.textContent('[data-stat="cache"]'), "full");
      assert.match(
        (await page.textContent('[data-stat="device_kv_bytes"]')) ?? "",
        /\d+(\.\d+)? (B|KiB|MiB)/,
      );
      assert.equal(await page.textContent('[data-stat="drift_checks"]'), "0");
      // The map was redrawn from the request's own hc.heads.
      assert.equal(await page.locator('#heads .cell[data-role="full"]').count(), 20);

      // Chat mode: the conversation gets an assistant turn, and no error shows.
      await page.selectOption("#mode", "chat");
      await page.fill("#max-tokens", "16");
      await page.fill("#prompt", "Tell me about a cat.");
      await page.press("#prompt", "Enter");
      await page.locator(".msg.assistant").nth(1).waitFor({ timeout: 15_000 });
      await page.waitForSelector('#log[data-done="true"]', { timeout: 30_000 });
      assert.equal(await page.locator(".msg.error").count(), 0);
      assert.equal(await page.locator(".msg.user").count(), 1);
      assert.equal(await page.textContent('[data-stat="completion_tokens"]'), "16");
      assert.deepEqual(pageErrors, []);
    } finally {
      await browser.close();
      await running.shutdown();
    }
  },
});
