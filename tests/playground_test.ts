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

function launchChromium() {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

Deno.test({
  name: "playground: a prompt streams an answer, with live stats and the head map",
  // Chromium's pipes and the page's sockets outlive single awaits; everything is closed below.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await using model = await loadModel(sharedPath("models/stories260K.gguf"));
    let reference: string;
    {
      using s = model.session();
      reference = (await s.complete("Once upon a time", { maxTokens: 40, temperature: 0 })).text;
    }
    const running = await serve(model, { port: 0 });
    const browser = await launchChromium();
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

Deno.test({
  name:
    "playground: heads are painted by role with a legend, and the map follows the request's policy",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await using model = await loadModel(sharedPath("models/stories260K.gguf"));
    const { calibrate } = await import("../mod.ts");
    const profile = await calibrate(model, { promptTokens: 200, decodeSteps: 20 });
    const roles = profile.layers.map((l) => [...l.roles] as string[]);
    const running = await serve(model, { port: 0, profile });
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const pageErrors: string[] = [];
      const failed: string[] = [];
      page.on("pageerror", (e) => pageErrors.push(String(e)));
      page.on("response", (r) => {
        if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`);
      });
      await page.goto(running.url + "/");
      await page.waitForSelector('#status[data-state="ready"]', { timeout: 15_000 });
      await page.waitForLoadState("networkidle");
      assert.deepEqual(failed, [], "every resource of the page loads");
      // The icon a browser fetches with the page (headless Chromium skips it): the one the page
      // names, and /favicon.ico, which browsers try when a page names none.
      const icon = await page.getAttribute('link[rel="icon"]', "href");
      assert.ok(icon, "the page names its icon");
      for (const path of [icon, "/favicon.ico"]) {
        const res = await fetch(new URL(path, running.url));
        assert.equal(res.status, 200, path);
        assert.match(res.headers.get("content-type") ?? "", /^image\//);
        await res.body?.cancel();
      }

      // Browser-side code as strings: this test is type-checked without the DOM library.
      /** The map as drawn: [layer][head] roles, and the policy it belongs to. */
      const drawn = () =>
        page.evaluate<{ cache: string; roles: (string | null)[][] }>(`(() => {
          const root = document.getElementById("heads");
          const out = [];
          for (const cell of root.querySelectorAll(".cell")) {
            const l = Number(cell.dataset.layer), h = Number(cell.dataset.head);
            (out[l] ??= [])[h] = cell.dataset.role ?? null;
          }
          return { cache: root.dataset.cache, roles: out };
        })()`);
      /** Background colour of a head cell and of the legend swatch, per role on the map. */
      const colours = () =>
        page.evaluate<Record<string, { cell: string; legend: string; absent: boolean }>>(`(() => {
          const out = {};
          for (const cell of document.querySelectorAll("#heads .cell")) {
            const role = cell.dataset.role;
            const item = document.querySelector('#legend [data-role="' + role + '"]');
            out[role] = {
              cell: getComputedStyle(cell).backgroundColor,
              legend: item ? getComputedStyle(item.querySelector(".swatch")).backgroundColor : "",
              absent: item ? item.classList.contains("absent") : true,
            };
          }
          return out;
        })()`);
      const legendRoles = await page.evaluate<string[]>(
        `[...document.querySelectorAll("#legend [data-role]")].map((e) => e.dataset.role)`,
      );
      assert.deepEqual(legendRoles, [
        "full",
        "volatile",
        "pivot",
        "anchor",
        "satellite",
        "compressed",
        "refreshed",
      ]);
      assert.equal((await drawn()).cache, "full");

      // Hold the heterocache request on its way: the map must switch before any answer comes.
      const gate = Promise.withResolvers<void>();
      await page.route("**/v1/completions", async (route) => {
        await gate.promise;
        await route.continue();
      });
      await page.selectOption("#mode", "completion");
      await page.selectOption("#cache", "heterocache");
      await page.fill("#max-tokens", "20");
      await page.fill("#temperature", "0");
      await page.fill(
        "#prompt",
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
      );
      await page.click("#send");
      await page.waitForFunction(
        `document.getElementById("heads").dataset.cache === "heterocache" &&
          [...document.querySelectorAll("#heads .cell")].map((c) => c.dataset.role).join() ===
            ${JSON.stringify(roles.flat().join())}`,
        undefined,
        { timeout: 10_000 },
      );
      assert.equal(await page.getAttribute("#log", "data-done"), "false", "still waiting");
      gate.resolve();
      await page.waitForSelector('#log[data-done="true"]', { timeout: 30_000 });
      await page.unroute("**/v1/completions");
      assert.equal(await page.locator(".msg.error").count(), 0);
      assert.equal(await page.textContent('[data-stat="cache"]'), "heterocache");
      const after = await drawn();
      assert.deepEqual(after, { cache: "heterocache", roles });

      // Every role on the map has its own colour, the same as its legend swatch.
      const c = await colours();
      const present = Object.keys(c);
      assert.ok(present.length >= 2, `a calibrated profile has several roles: ${present}`);
      for (const [role, { cell, legend, absent }] of Object.entries(c)) {
        assert.equal(cell, legend, `${role}: cell ${cell}, legend ${legend}`);
        assert.equal(absent, false, `${role} is on the map, so the legend shows it`);
      }
      assert.equal(
        new Set(Object.values(c).map((x) => x.cell)).size,
        present.length,
        JSON.stringify(c),
      );
      // Compressed heads (anchor, satellite) show their budget of prompt tokens.
      const budgets = await page.evaluate<[string, string][]>(
        `[...document.querySelectorAll("#heads .cell")].map((e) => [e.dataset.role, e.textContent])`,
      );
      for (const [role, text] of budgets) {
        if (role === "anchor" || role === "satellite") assert.match(text, /^\d+$/, role);
      }

      // Another policy: the map is that request's, not the previous one's.
      for (const [cache, role] of [["snapkv", "compressed"], ["full", "full"]] as const) {
        await page.selectOption("#cache", cache);
        await page.fill("#prompt", "Once upon a time");
        await page.click("#send");
        await page.waitForSelector('#log[data-done="true"]', { timeout: 30_000 });
        const map = await drawn();
        assert.equal(map.cache, cache);
        assert.ok(map.roles.flat().every((r) => r === role), JSON.stringify(map));
        const shown = await colours();
        assert.deepEqual(Object.keys(shown), [role]);
        assert.equal(shown[role].cell, shown[role].legend);
        assert.notEqual(shown[role].cell, c.anchor?.cell ?? c.satellite?.cell);
      }
      assert.deepEqual(pageErrors, []);
      assert.deepEqual(failed, []);
    } finally {
      await browser.close();
      await running.shutdown();
    }
  },
});
