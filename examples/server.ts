/**
 * Serves a model over the OpenAI HTTP API, with the playground at /.
 *
 *   deno run -A examples/server.ts [model.gguf]
 *
 * The model is the first argument, else HC_MODEL, else the default model (downloaded once).
 * PORT picks the port (default 8000). Ctrl-C stops it.
 */
import { loadModel, resolveModelPath, serve } from "../mod.ts";

const path = await resolveModelPath({ model: Deno.args[0] });
const stop = new AbortController();
Deno.addSignalListener("SIGINT", () => stop.abort());

const running = await serve(loadModel(path), {
  port: Number(Deno.env.get("PORT") ?? 8000),
  ownsModel: true,
  signal: stop.signal,
});
console.log(`serving ${path} on ${running.url} (the model loads in the background: GET /health)`);
const served = await running.server.whenReady();
console.log(`model "${served.id}" ready; try:
  curl ${running.url}/v1/completions -H 'content-type: application/json' \\
    -d '{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}'`);
await running.finished;
