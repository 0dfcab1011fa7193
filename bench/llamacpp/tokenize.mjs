// llama.cpp as the oracle for the tokenizers: loads each vocab-only GGUF and tokenizes every
// text with add_special=false, parse_special=false (llama.cpp's test-tokenizer-0 convention).
// Runs node-llama-cpp's prebuilt CPU build. Usage: node tokenize.mjs JOB.json
// (JOB: { texts: [string], models: [{ name, path }] }). Prints one JSON object:
// { llamaCpp, answers: { name: [[ids] per text] } }.
import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const answers = {};
for (const { name, path } of job.models) {
  const model = await llama.loadModel({ modelPath: path, vocabOnly: true });
  answers[name] = job.texts.map((t) => Array.from(model.tokenize(t, false)));
  await model.dispose();
}
const pkg = JSON.parse(
  readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url), "utf8"),
);
console.log(JSON.stringify({ llamaCpp: `node-llama-cpp ${pkg.version}, CPU backend`, answers }));
await llama.dispose();
