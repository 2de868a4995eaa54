"""The USAGE.md text of dist/ios/: how an app loads the package and runs prefill and decode, in Swift, for the
stateful (iOS 18) and the stateless (iOS 17) package. Filled in by convert/ios.py's `usage`."""

USAGE = """\
# {name}: iOS bundle (Core ML)

Files: `model.mlpackage` ({size_mb:.1f} MB, {variant} weights, deployment target {target}), `tokenizer.json`,
`manifest.json` (functions, I/O, state, sha256 of every file, fidelity measured on Linux with the MIL reference).
Drag `model.mlpackage` into Xcode; it compiles it into the app.

{body}
Prompts run in chunks of {prefill} tokens: pad the last chunk with any token and read the logits of its last real
token; the padded rows write cache slots that the next real token overwrites before anything reads them. The cache
holds {max_len} positions. Tokenize with any library that reads `tokenizer.json` (for example swift-transformers).
Speed was not measured on the build machine ({not_on_linux}): run `edgedistil bench --target ios --bundle .` on a Mac,
or the Swift tool in `bench/` (`cd bench && swift run -c release edgedistil-bench ../model.mlpackage all`), which
times prefill and decode per compute unit and prints JSON; its main.swift also runs inside an iOS app.
"""

STATEFUL_SWIFT = """\
Two functions share the weights and one KV-cache state: `prefill` takes `input_ids` Int32 [1, {prefill}], `decode`
takes [1, 1]; both take `position` Int32 [1] (the position of `input_ids[0]`) and return `logits` Float16
[1, T, {vocab}]. The state (`k_cache`, `v_cache`, Float16 {cache_shape}) lives in an `MLState`.

```swift
import CoreML

let url = Bundle.main.url(forResource: "model", withExtension: "mlmodelc")!
func load(_ function: String) throws -> MLModel {{
    let config = MLModelConfiguration()
    config.computeUnits = .all
    config.functionName = function          // iOS 18: pick a function of a multifunction package
    return try MLModel(contentsOf: url, configuration: config)
}}
let prefill = try load("prefill"), decode = try load("decode")
let state = prefill.makeState()             // one cache, shared by both functions

func ints(_ values: [Int]) throws -> MLMultiArray {{
    let a = try MLMultiArray(shape: [1, NSNumber(value: values.count)], dataType: .int32)
    for (i, v) in values.enumerated() {{ a[i] = NSNumber(value: v) }}
    return a
}}
func step(_ model: MLModel, _ ids: [Int], _ position: Int) throws -> MLMultiArray {{
    let pos = try MLMultiArray(shape: [1], dataType: .int32)
    pos[0] = NSNumber(value: position)
    let input = try MLDictionaryFeatureProvider(dictionary: ["input_ids": try ints(ids), "position": pos])
    return try model.prediction(from: input, using: state).featureValue(for: "logits")!.multiArrayValue!
}}
func argmax(_ logits: MLMultiArray, row: Int) -> Int {{
    let vocab = logits.shape[2].intValue
    var best = 0
    for v in 0..<vocab where logits[[0, row, v] as [NSNumber]].floatValue >
                             logits[[0, row, best] as [NSNumber]].floatValue {{ best = v }}
    return best
}}

// greedy: prefill the prompt in chunks of {prefill}, then decode one token at a time
var tokens = promptIds                      // from the tokenizer
var next = 0
for start in stride(from: 0, to: tokens.count, by: {prefill}) {{
    let chunk = Array(tokens[start..<min(start + {prefill}, tokens.count)])
    let logits = try step(prefill, chunk + Array(repeating: 0, count: {prefill} - chunk.count), start)
    next = argmax(logits, row: chunk.count - 1)
}}
for _ in 0..<32 where tokens.count < {max_len} {{
    tokens.append(next)
    next = argmax(try step(decode, [next], tokens.count - 1), row: 0)
}}
```
"""

STATELESS_SWIFT = """\
One function `main` takes `input_ids` Int32 [1, {prefill}] (prefill) or [1, 1] (decode), `position` Int32 [1] and the
cache `k_cache`, `v_cache` (Float16 {cache_shape}), and returns `logits` Float16 [1, T, {vocab}] with `k_cache_out`
and `v_cache_out`, which the next call takes as its cache (iOS 17 has no MLState).

```swift
import CoreML

let model = try MLModel(contentsOf: Bundle.main.url(forResource: "model", withExtension: "mlmodelc")!)
var k = try MLMultiArray(shape: {cache_shape}, dataType: .float16)   // zero-filled
var v = try MLMultiArray(shape: {cache_shape}, dataType: .float16)
func step(_ ids: [Int], _ position: Int) throws -> MLMultiArray {{
    let idArray = try MLMultiArray(shape: [1, NSNumber(value: ids.count)], dataType: .int32)
    for (i, t) in ids.enumerated() {{ idArray[i] = NSNumber(value: t) }}
    let pos = try MLMultiArray(shape: [1], dataType: .int32)
    pos[0] = NSNumber(value: position)
    let out = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: [
        "input_ids": idArray, "position": pos, "k_cache": k, "v_cache": v]))
    k = out.featureValue(for: "k_cache_out")!.multiArrayValue!
    v = out.featureValue(for: "v_cache_out")!.multiArrayValue!
    return out.featureValue(for: "logits")!.multiArrayValue!
}}
// greedy: prefill in chunks of {prefill} (pad the last), then step([next], position) one token at a time,
// taking the argmax of the last real row of logits each time.
```
"""
