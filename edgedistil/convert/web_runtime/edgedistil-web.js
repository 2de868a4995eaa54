// edgedistil-web.js: run an edgedistil web bundle in the browser with onnxruntime-web (wasm).
//
// The bundle holds the model (one ONNX graph for prefill and decode), tokenizer.json, manifest.json and, under
// vendor/, the pinned onnxruntime-web and @huggingface/tokenizers files, so nothing is loaded from a CDN.
//
//   import { load } from "./edgedistil-web.js";
//   const lm = await load();                        // reads manifest.json beside this file
//   const { text } = await lm.generate("In the beginning", { maxNewTokens: 32, onToken: (t) => show(t.text) });
//
// Decoding follows edgedistil/decoding.py exactly, so the browser's greedy tokens can be compared with Python's:
// the prompt runs in chunks of P tokens (the last one padded with token 0, its padded rows ignored), the first new
// token is the argmax of the last real prompt row, then one token per step. The whole KV cache goes in and comes
// back out of every step (`k_cache` -> `k_cache_out`), as the exported graph defines.

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
 *    reads this once, at the first session it creates on the page.
 */
export async function load({ base = HERE, model = null, threads = 1 } = {}) {
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
    // the cache shape comes from the model itself, so a teacher with other dimensions loads the same way
    const kv = session.inputMetadata.find((m) => m.name === "k_cache");
    this.cacheShape = kv && kv.shape.every((d) => typeof d === "number") ? kv.shape.slice() : manifest.kv_cache.shape;
    this.maxLen = this.cacheShape[3];
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

  emptyCache() {
    const size = this.cacheShape.reduce((a, b) => a * b, 1);
    return [new ort.Tensor("float32", new Float32Array(size), this.cacheShape),
      new ort.Tensor("float32", new Float32Array(size), this.cacheShape)];
  }

  // One call of the graph: `ids` (a chunk or one token) from `position`; returns logits [1, T, V] and the cache.
  async step(ids, position, cache) {
    const out = await this.session.run({
      input_ids: new ort.Tensor("int32", Int32Array.from(ids), [1, ids.length]),
      position: new ort.Tensor("int32", Int32Array.of(position), [1]),
      k_cache: cache[0],
      v_cache: cache[1],
    });
    return [out.logits, [out.k_cache_out, out.v_cache_out]];
  }

  /**
   * Greedy generation. `prompt` is text or an array of token ids. Options: maxNewTokens (default 32), stopAtEos
   * (default true; false gives exactly maxNewTokens, as edgedistil's Python reference does), onToken(event) called
   * per new token with {id, index, text (the new text since the last event), tokensPerSecond}.
   * Returns {promptIds, ids, text, timings}.
   */
  async generate(prompt, { maxNewTokens = 32, stopAtEos = true, onToken = null } = {}) {
    const promptIds = typeof prompt === "string" ? this.encode(prompt) : Array.from(prompt, Number);
    const P = this.chunk;
    if (!promptIds.length) throw new Error("edgedistil-web: the prompt is empty");
    const paddedEnd = Math.ceil(promptIds.length / P) * P;
    if (paddedEnd > this.maxLen || promptIds.length + maxNewTokens > this.maxLen) {
      throw new Error(`edgedistil-web: ${promptIds.length} prompt tokens (padded to ${paddedEnd}) + ${maxNewTokens} ` +
        `new tokens do not fit the ${this.maxLen}-position cache; shorten the prompt or generate fewer tokens`);
    }
    const ids = [];
    let text = "";
    const t0 = performance.now();
    let decodeStart = 0;
    const emit = async (id) => {
      ids.push(id);
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
      const next = argmaxRow(logits.data, 0, vocab);
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
