// Next-token argmax of an hslm ONNX folder under onnxruntime-web (WASM) in Node.
// usage: node next_token.mjs MODEL.onnx '{"ids": [...], "layers": N, "kvHeads": H, "headDim": D}'
// Prints {"argmax": id, "logits": [first 8 logits]} as JSON.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-web";

const [modelPath, spec] = process.argv.slice(2);
const { ids, layers, kvHeads, headDim } = JSON.parse(spec);
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(modelPath));
const n = ids.length;
const int64 = (values) => new ort.Tensor("int64", BigInt64Array.from(values.map(BigInt)), [1, n]);
const feeds = {
  input_ids: int64(ids),
  attention_mask: int64(ids.map(() => 1)),
  position_ids: int64(ids.map((_, i) => i)),
};
for (let i = 0; i < layers; i++) {
  for (const kind of ["key", "value"]) {  // an empty past: the prompt is the whole input
    feeds[`past_key_values.${i}.${kind}`] = new ort.Tensor("float32", new Float32Array(0),
                                                           [1, kvHeads, 0, headDim]);
  }
}
const { logits } = await session.run(feeds, ["logits"]);
const vocab = logits.dims[2];
const last = logits.data.subarray((n - 1) * vocab, n * vocab);
let argmax = 0;
for (let i = 1; i < vocab; i++) if (last[i] > last[argmax]) argmax = i;
console.log(JSON.stringify({ argmax, logits: Array.from(last.subarray(0, 8)) }));
