// Greedy answers from a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU build), for bench/gguf_parity.py.
//   node bench/llama_cpp_greedy.mjs MODEL.gguf IN.json OUT.json NODE_MODULES   (the folder holding node-llama-cpp)
// IN: [{"ids": [prompt token ids], "max_new_tokens": N}, ...]; OUT: [{"answer": [ids]}, ...] (node-llama-cpp
// stops at the end-of-generation token without returning it). The prompt ids come from the source tokenizer,
// so both runtimes continue the same sequence; the answer is decoded at temperature 0 (argmax).
import fs from "node:fs";
import {createRequire} from "node:module";
import path from "node:path";

const [modelPath, inPath, outPath, modules] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), "noop.js"));
const {getLlama} = await import(require.resolve("node-llama-cpp"));
const rows = JSON.parse(fs.readFileSync(inPath, "utf8"));
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath});
const out = [];
for (const row of rows) {
  const context = await model.createContext({contextSize: 512});
  const answer = [];
  for await (const token of context.getSequence().evaluate(row.ids, {temperature: 0})) {
    answer.push(token);
    if (model.isEogToken(token) || answer.length >= row.max_new_tokens) break;
  }
  out.push({answer});
  await context.dispose();
}
fs.writeFileSync(outPath, JSON.stringify(out));
