import assert from "node:assert/strict";
import { isHcError, loadModel } from "../mod.ts";
import type { CacheOptions } from "../src/cache/mod.ts";
import { uniformProfile } from "../src/cache/profile/profile_io.ts";
import { sharedPath } from "./helpers.ts";

const TURN1 =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
const TURN2 = " One day, she saw a big red ball.";
const GREEDY = { temperature: 0, ignoreEos: true, maxTokens: 8 } as const;

const MODEL = sharedPath("models/stories260K.gguf");
const model = await loadModel(MODEL);
const profile = uniformProfile(
  model.config.nLayers,
  ["satellite", "pivot", "satellite", "anchor"],
  [1.2, -1, 0.8, 1],
);

Deno.test("save / restore: the restored session continues as the saved one, for every policy", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const variants: CacheOptions[] = [
      { cache: "full" },
      { cache: "snapkv", keep: 0.5 },
      { cache: "streaming", keep: 0.5 },
      // Refreshes land at fixed steps in every mode, so two runs refresh alike.
      { cache: "heterocache", keep: 0.5, profile, compat: true },
      { cache: "heterocache", keep: 0.5, profile, compat: true, trigger: "coverage" },
      { cache: "heterocache", keep: 0.5, profile },
      { cache: "per-step", keep: 0.5, profile },
    ];
    for (const v of variants) {
      const label = `${v.cache}${"trigger" in v ? ` ${v.trigger}` : ""}${
        "compat" in v ? " compat" : ""
      }`;
      const path = `${dir}/s.hcsession`;
      using a = model.session({ ...v, contextTokens: 200 });
      await a.complete(TURN1, GREEDY);
      await a.save(path);
      const context = a.context();
      const next = await a.complete(TURN2, { ...GREEDY, continue: true });
      using b = await model.restore(path, { profile });
      assert.deepEqual(b.context(), context, label);
      const again = await b.complete(TURN2, { ...GREEDY, continue: true });
      assert.equal(again.text, next.text, label);
      assert.equal(again.cachedTokens, next.cachedTokens, label);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("save / restore: a fuzzed, truncated, newer or foreign file is a clear error and leaves nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/s.hcsession`;
    {
      using s = model.session({ cache: "heterocache", keep: 0.5, profile, contextTokens: 200 });
      await s.complete(TURN1, GREEDY);
      await s.save(path);
    }
    const good = await Deno.readFile(path);
    const before = model.sessionCount;
    const fails = async (bytes: Uint8Array, codes: string[], what: string) => {
      const p = `${dir}/bad.hcsession`;
      await Deno.writeFile(p, bytes);
      await assert.rejects(
        model.restore(p, { profile }),
        (e) => codes.some((c) => isHcError(e, c as never)),
        what,
      );
      assert.equal(model.sessionCount, before, `${what}: no session left`);
    };
    const n = good.byteLength;
    for (const len of [0, 7, 12, 16, 40, n >> 1, n - 33, n - 1]) {
      await fails(good.slice(0, len), ["E_SESSION_FILE"], `truncated to ${len}`);
    }
    for (const at of [0, 5, 8, 13, 20, 64, n >> 2, n >> 1, n - 40, n - 1]) {
      const bad = good.slice();
      bad[at] ^= 0x5a;
      await fails(bad, ["E_SESSION_FILE", "E_SESSION_VERSION"], `byte ${at} flipped`);
    }
    // A newer version, even with a valid checksum.
    const newer = good.slice();
    new DataView(newer.buffer).setUint32(8, 2, true);
    await fails(newer, ["E_SESSION_VERSION"], "version 2");
    // Another profile, no profile, another model.
    await assert.rejects(
      model.restore(path, {
        profile: uniformProfile(
          model.config.nLayers,
          ["pivot", "satellite", "satellite", "anchor"],
          [
            -1,
            1,
            1,
            1,
          ],
        ),
      }),
      (e) => isHcError(e, "E_SESSION_MISMATCH"),
    );
    await assert.rejects(model.restore(path), (e) => isHcError(e, "E_SESSION_MISMATCH"));
    await using other = await loadModel(sharedPath("models/babyllama-tok105/model5000.bin"), {
      tokenizerPath: sharedPath("models/babyllama-tok105/tok105.bin"),
    });
    await assert.rejects(
      other.restore(path, { profile }),
      (e) => isHcError(e, "E_SESSION_MISMATCH"),
    );
    assert.equal(other.sessionCount, 0);
    // The good file still restores.
    using ok = await model.restore(path, { profile });
    assert.ok(ok.context().length > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

globalThis.addEventListener("unload", () => void model[Symbol.asyncDispose]());

Deno.test("hc generate --save, then --load continues with the next turn as the library does", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const hc = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "src/cli.ts", "generate", "--model", MODEL, "-n", "6", ...args],
        cwd: new URL("..", import.meta.url).pathname,
        env: { NO_COLOR: "1", HC_MODEL: "" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      assert.equal(out.code, 0, dec.decode(out.stderr));
      return dec.decode(out.stdout).replace(/\n$/, "");
    };
    const path = `${dir}/s.hcsession`;
    const first = await hc("--save", path, TURN1);
    const second = await hc("--load", path, TURN2);
    using s = model.session({ contextTokens: 200 });
    const a = await s.complete(TURN1, { temperature: 0, maxTokens: 6 });
    const b = await s.complete(TURN2, { temperature: 0, maxTokens: 6, continue: true });
    assert.equal(first, a.text);
    assert.equal(second, b.text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
