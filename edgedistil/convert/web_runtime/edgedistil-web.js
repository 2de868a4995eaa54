// edgedistil-web.js: run an edgedistil web bundle in the browser with onnxruntime-web (wasm).
//
// The bundle is a Hugging Face ONNX folder (onnx/model_quantized.onnx: one graph for prefill and decode, the file
// Transformers.js' q8 loads), plus manifest.json and, under vendor/, the pinned onnxruntime-web and
// @huggingface/tokenizers files, so nothing is loaded from a CDN.
//
//   import { load } from "./edgedistil-web.js";
//   const lm = await load();                        // reads manifest.json beside this file
//   const { text } = await lm.generate("In the beginning", { maxNewTokens: 32, onToken: (t) => show(t.text) });
//
// Decoding follows edgedistil/decoding.py exactly, so the browser's greedy tokens can be compared with Python's:
// the prompt runs in chunks of P tokens (the last one padded with token 0, its padded rows ignored), the first new
// token is the argmax of the last real prompt row, then one token per step. The graph speaks the Hugging Face
// convention: int64 input_ids and attention_mask (ones, past + T long), per-layer past_key_values.{i}.key|value in
// and present.{i}.key|value (past + T rows) out; after the padded last chunk the padded rows are dropped, so the
// cache holds exactly the prompt (Python writes them into its buffer and never attends to them: the same logits).

import * as ort from "./vendor/ort.wasm.bundle.min.mjs";
import { Tokenizer } from "./vendor/tokenizers.min.mjs";

export { ort };

const HERE = new URL(".", import.meta.url);

async function fetchJson(url, optional = false) {
  const res = await fetch(url);
  if (!res.ok) {
    if (optional) return null;
    throw new Error(`edgedistil-web: cannot fetch ${url} (HTTP ${res.status}); serve the whole bundle folder`);
  }
  return res.json();
}

// A macrotask yield (no 4 ms timer clamping) so the page can paint streamed tokens between decode steps.
function nextTask() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(0);
  });
}

function argmaxRow(data, row, vocab) {
  let best = row * vocab;
  const end = best + vocab;
  for (let i = best + 1; i < end; i++) if (data[i] > data[best]) best = i;
  return best - row * vocab;
}

// Argmax after CTRL's repetition penalty on the answer's own tokens (`seen`), as edgedistil.decoding.penalized_argmax:
// a positive logit divided by the penalty, a negative one multiplied. Not the prompt's tokens: the chat template
// puts the end-of-turn token in the prompt, and penalizing it there stops answers from ending.
function penalizedArgmaxRow(data, row, vocab, seen, penalty) {
  if (penalty === 1 || seen.size === 0) return argmaxRow(data, row, vocab);
  const base = row * vocab;
  const p = Math.fround(penalty);  // float32 arithmetic throughout, as numpy's on float32 logits
  const value = (i) => {
    const v = data[base + i];
    return seen.has(i) ? Math.fround(v > 0 ? v / p : v * p) : v;
  };
  let best = 0;
  let bestValue = value(0);
  for (let i = 1; i < vocab; i++) {
    const v = value(i);
    if (v > bestValue) { best = i; bestValue = v; }
  }
  return best;
}

// What the browser gives wasm: threads need SharedArrayBuffer, which needs cross-origin isolation (COOP/COEP).
export function wasmFeatures() {
  // the smallest module using a v128 value type: validates only where wasm SIMD is supported
  const simdProbe = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8,
    0, 65, 0, 253, 15, 253, 98, 11]);
  return {
    crossOriginIsolated: self.crossOriginIsolated === true,
    sharedArrayBuffer: typeof SharedArrayBuffer !== "undefined",
    wasmSimd: WebAssembly.validate(simdProbe),
    hardwareConcurrency: navigator.hardwareConcurrency,
  };
}

/**
 * Load the bundle. Options:
 *  - base: URL of the bundle folder (default: the folder of this file);
 *  - model: the ONNX file to load (default: the manifest's graph file);
 *  - threads: wasm threads (default 1; more than 1 needs cross-origin isolation, see USAGE.md). onnxruntime-web
 *    reads this once, at the first session it creates on the page;
 *  - sessionOptions: onnxruntime-web session options, over this module's (wasm, graph optimization "all").
 */
export async function load({ base = HERE, model = null, threads = 1, sessionOptions = {} } = {}) {
  const url = (path) => new URL(path, base).href;
  const manifest = await fetchJson(url("manifest.json"));
  // only the .wasm path: a prefix would make onnxruntime-web fetch its glue .mjs, which the bundled build inlines
  ort.env.wasm.wasmPaths = { wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href };
  ort.env.wasm.numThreads = threads;
  const tokenizerConfig = (await fetchJson(url("tokenizer_config.json"), true)) || {};
  const tokenizer = new Tokenizer(await fetchJson(url(manifest.tokenizer)), tokenizerConfig);
  const t0 = performance.now();
  const file = model || manifest.graphs[0].file;
  const session = await ort.InferenceSession.create(url(file), {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
    ...sessionOptions,
  });
  const loadMs = performance.now() - t0;
  return new EdgeLM({ manifest, session, tokenizer, tokenizerConfig, file, loadMs, threads });
}

export class EdgeLM {
  constructor({ manifest, session, tokenizer, tokenizerConfig, file, loadMs, threads }) {
    this.manifest = manifest;
    this.session = session;
    this.tokenizer = tokenizer;
    this.file = file;
    this.loadMs = loadMs;
    this.threads = threads;
    // layers, kv heads and head dim come from the model itself, so a teacher with other dimensions loads the same way
    this.layers = session.inputNames.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
    const kv = session.inputMetadata.find((m) => m.name === "past_key_values.0.key");
    const [kvHeads, headDim] = kv && typeof kv.shape[1] === "number" ? [kv.shape[1], kv.shape[3]]
      : [manifest.kv_cache.kv_heads, manifest.kv_cache.head_dim];
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.maxLen = manifest.kv_cache.max_len;  // the positions the graph's RoPE tables serve
    this.chunk = manifest.graphs.find((g) => g.name === "prefill").tokens_per_call;
    const eos = tokenizerConfig.eos_token;
    this.eosId = eos == null ? null : tokenizer.token_to_id(typeof eos === "string" ? eos : eos.content) ?? null;
  }

  encode(text) {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: true });
  }

  // the past before the first token: per layer a key and a value of 0 rows
  emptyCache() {
    const empty = () => new ort.Tensor("float32", new Float32Array(0), [1, this.kvHeads, 0, this.headDim]);
    return Array.from({ length: 2 * this.layers }, empty);
  }

  // The first `rows` positions of each cache tensor [1, KV, S, D]: drops the padded rows of a prefill chunk.
  trimCache(cache, rows) {
    const D = this.headDim;
    return cache.map((t) => {
      const S = t.dims[2];
      if (S === rows) return t;
      const out = new Float32Array(this.kvHeads * rows * D);
      for (let h = 0; h < this.kvHeads; h++) out.set(t.data.subarray(h * S * D, h * S * D + rows * D), h * rows * D);
      return new ort.Tensor("float32", out, [1, this.kvHeads, rows, D]);
    });
  }

  // One call of the graph: `ids` (a chunk or one token) from `position` (the cache holds `position` rows);
  // returns logits [1, T, V] and the cache grown by T rows.
  async step(ids, position, cache) {
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(position + ids.length).fill(1n),
        [1, position + ids.length]),
    };
    for (let i = 0; i < this.layers; i++) {
      feeds[`past_key_values.${i}.key`] = cache[2 * i];
      feeds[`past_key_values.${i}.value`] = cache[2 * i + 1];
    }
    const out = await this.session.run(feeds);
    const grown = [];
    for (let i = 0; i < this.layers; i++) grown.push(out[`present.${i}.key`], out[`present.${i}.value`]);
    return [out.logits, grown];
  }

  /**
   * Greedy generation. `prompt` is text or an array of token ids. Options: maxNewTokens (default 32), stopAtEos
   * (default true; false gives exactly maxNewTokens, as edgedistil's Python reference does), repetitionPenalty
   * (default 1: plain greedy; > 1 penalizes the tokens already generated, not the prompt's), onToken(event) called
   * per new token with {id, index, text (the new text since the last event), tokensPerSecond}.
   * Returns {promptIds, ids, text, timings}.
   */
  async generate(prompt, { maxNewTokens = 32, stopAtEos = true, repetitionPenalty = 1, onToken = null } = {}) {
    const promptIds = typeof prompt === "string" ? this.encode(prompt) : Array.from(prompt, Number);
    const P = this.chunk;
    if (!promptIds.length) throw new Error("edgedistil-web: the prompt is empty");
    if (!(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0)) {
      throw new Error(`edgedistil-web: repetitionPenalty ${repetitionPenalty} is not a number > 0; pass 1 for plain ` +
        "greedy decoding, or about 1.2 against loops");
    }
    const paddedEnd = Math.ceil(promptIds.length / P) * P;
    if (paddedEnd > this.maxLen || promptIds.length + maxNewTokens > this.maxLen) {
      throw new Error(`edgedistil-web: ${promptIds.length} prompt tokens (padded to ${paddedEnd}) + ${maxNewTokens} ` +
        `new tokens do not fit the ${this.maxLen}-position cache; shorten the prompt or generate fewer tokens`);
    }
    const ids = [];
    const seen = new Set();
    let text = "";
    const t0 = performance.now();
    let decodeStart = 0;
    const emit = async (id) => {
      ids.push(id);
      seen.add(id);
      if (!onToken) return;
      const full = this.decode(ids);
      // a byte-level token may end inside a multi-byte character: hold it back until the character is complete
      const stable = full.endsWith("\uFFFD") ? text : full;
      const steps = ids.length - 1;
      const tokensPerSecond = steps > 0 ? (steps * 1000) / (performance.now() - decodeStart) : null;
      onToken({ id, index: ids.length - 1, text: stable.slice(text.length), tokensPerSecond });
      text = stable;
      await nextTask();
    };

    // chunked prefill, as edgedistil.decoding.prefill
    let cache = this.emptyCache();
    let logits = null;
    let lastRow = 0;
    for (let i = 0; i < promptIds.length; i += P) {
      const piece = promptIds.slice(i, i + P);
      lastRow = piece.length - 1;
      const padded = piece.concat(new Array(P - piece.length).fill(0));
      [logits, cache] = await this.step(padded, i, cache);
    }
    cache = this.trimCache(cache, promptIds.length);
    const vocab = logits.dims[logits.dims.length - 1];
    const first = argmaxRow(logits.data, lastRow, vocab);
    const ttftMs = performance.now() - t0;
    decodeStart = performance.now();
    await emit(first);

    // greedy decode, as edgedistil.decoding.greedy
    let pos = promptIds.length;
    let decodeMs = 0;
    let steps = 0;
    while (ids.length < maxNewTokens && !(stopAtEos && ids[ids.length - 1] === this.eosId)) {
      const s0 = performance.now();
      [logits, cache] = await this.step([ids[ids.length - 1]], pos, cache);
      const next = penalizedArgmaxRow(logits.data, 0, vocab, seen, repetitionPenalty);
      decodeMs += performance.now() - s0;
      steps += 1;
      pos += 1;
      await emit(next);
    }
    const totalMs = performance.now() - t0;
    return {
      promptIds,
      ids,
      text: this.decode(ids),
      timings: {
        prompt_tokens: promptIds.length,
        new_tokens: ids.length,
        ttft_ms: ttftMs,
        prefill_tokens_per_s: (promptIds.length * 1000) / ttftMs,
        // model steps only; the wall time, callbacks and paints included, is in total_ms
        decode_steps: steps,
        decode_ms: decodeMs,
        decode_tokens_per_s: steps ? (steps * 1000) / decodeMs : null,
        total_ms: totalMs,
      },
    };
  }
}
