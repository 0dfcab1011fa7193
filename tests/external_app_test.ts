/**
 * mod.ts as another Deno app uses it: an app in a temporary folder with no deno.json (so no
 * import map) imports mod.ts by absolute path, loads stories260K and generates.
 */
import assert from "node:assert/strict";
import { sharedPath } from "./helpers.ts";

const MOD = new URL("../mod.ts", import.meta.url).href;
const MODEL = sharedPath("models/stories260K.gguf");

Deno.test("an app with no configuration imports mod.ts by path and generates", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hc-app-" });
  try {
    await Deno.writeTextFile(
      `${dir}/main.ts`,
      `import { loadModel } from ${JSON.stringify(MOD)};
await using model = await loadModel(${JSON.stringify(MODEL)});
using session = model.session();
let text = "";
for await (const piece of session.generate("Once upon a time", { maxTokens: 8 })) {
  text += piece.text;
}
console.log(JSON.stringify({ text, tokens: session.stats().completionTokens }));
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.doesNotMatch(stderr, /not a dependency|import map|warning/i);
    const { text, tokens } = JSON.parse(stdout.trim().split("\n").pop()!);
    assert.ok(tokens >= 1 && tokens <= 8, `generated ${tokens} tokens`);
    assert.ok(typeof text === "string" && text.length > 0, "the app generated no text");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
