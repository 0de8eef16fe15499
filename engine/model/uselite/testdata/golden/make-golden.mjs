// Writes ../golden.json: token ids and 512-d USE-Lite vectors computed by an
// independent runtime, for the Go tests to compare against.
//
// Tokenization and input layout come from @energetic-ai/embeddings itself
// (EmbeddingsModel.embed: its SentencePiece tokenizer and sparse
// indices/values inputs); the graph runs on @tensorflow/tfjs's pure-JS CPU
// backend, loaded from the same model.json and shards the Go code reads.
//
//   npm ci && node make-golden.mjs [model-dir]   (default: <repo>/models/use-lite)
import { readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs";
import core from "@energetic-ai/core";
import embeddings from "@energetic-ai/embeddings";

const here = dirname(fileURLToPath(import.meta.url));
const modelDir = resolve(process.argv[2] ?? join(here, "../../../../../models/use-lite"));

// Fixed sentences: paraphrase pairs, unrelated ones, and tokenizer edge
// cases (short, whitespace only, punctuation, NFKC, unknown and astral
// characters, control whitespace, the vocabulary's null/odd scores, and one
// longer than the model's 128-token limit).
const sentences = [
  "The quick brown fox jumps over the lazy dog.",
  "A fast brown fox leaps over a lazy dog.",
  "How do I reset my password?",
  "I forgot my password, how can I change it?",
  "What is the capital of France?",
  "Which city is the capital of France?",
  "The stock market fell sharply on Monday.",
  "I love playing football with my friends on weekends.",
  "hi",
  "   ",
  "!!!???...,,,;;",
  "Café naïve résumé — ｆｕｌｌｗｉｄｔｈ ＡＢＣ ① ﬁne",
  "日本語のテキスト and emoji 😀🎉 mixed in",
  "tab\there and\nnew line",
  "It's 12:30 now, not 10:00 :) or :-( right:",
  Array.from({ length: 40 }, (_, i) => `sentence number ${i} keeps the encoder busy;`).join(" "),
];

async function loadModel() {
  const modelJSON = JSON.parse(await readFile(join(modelDir, "model.json"), "utf8"));
  const paths = modelJSON.weightsManifest.flatMap((g) => g.paths);
  const shards = await Promise.all(paths.map((p) => readFile(join(modelDir, p))));
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = {
    load: async () => ({
      modelTopology: modelJSON.modelTopology,
      weightSpecs: modelJSON.weightsManifest.flatMap((g) => g.weights),
      weightData,
      format: modelJSON.format,
      generatedBy: modelJSON.generatedBy,
      convertedBy: modelJSON.convertedBy,
    }),
  };
  return tf.loadGraphModel(handler);
}

async function main() {
  // Both tfjs copies share one global engine: let @energetic-ai/core
  // initialise, then pin the pure-JS CPU backend before any weight loads.
  await core.ready();
  await tf.setBackend("cpu");
  const graph = await loadModel();
  const vocabulary = JSON.parse(await readFile(join(modelDir, "vocab.json"), "utf8"));

  // EmbeddingsModel builds its inputs with @energetic-ai/core's own tfjs;
  // this shim records them and runs the graph on @tensorflow/tfjs's CPU
  // backend instead.
  let lastIds = null;
  const shim = {
    async executeAsync(inputs) {
      const indices = await inputs.indices.array();
      const values = Array.from(await inputs.values.data());
      lastIds = values;
      return graph.executeAsync({
        indices: tf.tensor2d(indices.length ? indices : [], [indices.length, 2], "int32"),
        values: tf.tensor1d(values, "int32"),
      });
    },
  };
  const encoder = new embeddings.EmbeddingsModel({ model: shim, vocabulary });

  const cases = [];
  for (const text of sentences) {
    const [vector] = await encoder.embed([text]);
    cases.push({ text, ids: lastIds, vector: Array.from(Float32Array.from(vector)) });
  }
  const out = {
    generator: "make-golden.mjs: @energetic-ai/embeddings 0.2.0 tokenizer + @tensorflow/tfjs 4.22.0 cpu backend",
    tfjs: tf.version.tfjs,
    backend: tf.getBackend(),
    cases,
  };
  await writeFile(join(here, "..", "golden.json"), JSON.stringify(out, null, 1) + "\n");
  console.log(`wrote ${cases.length} cases to golden.json`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
