import ArgumentParser
import Foundation
import ZipARCore

/// `zipar eval`: GenEval-style prompt adherence of raster and ZipAR decoding, side by side. A fixed,
/// seeded set of shape-grammar prompts is generated in every decoding mode with the same seeds, and
/// a pixel analyser that never sees the generator checks each image clause by clause.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score prompt adherence (GenEval-style) of raster vs ZipAR decoding on the shape-grammar prompt set.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Number of prompts in the set.")
    var n: Int = PromptSet.defaultCount
    @Option(help: "Seed of the prompt set (prompts and their generation seeds).")
    var seed: UInt64 = 0
    @Option(help: "ZipAR windows to compare with raster, e.g. 16,8,4 (windows >= the grid width are raster and skipped).")
    var windows: String = "16,8,4"
    @Option(help: "Row-start policy for the windows: ideal or upstream.")
    var ziparPolicy: String = "ideal"
    @Option(help: "Also run each window w > MIN with the adaptive window MIN..w (mode 'adaptive MIN-w').")
    var adaptiveWindow: Int?
    @Option(help: "KV cache types to compare, e.g. fp32,zipcache,kivi2 (every decoding mode runs with each; fp32 is the reference). Default: --kv-cache.")
    var kvCaches: String?
    @OptionGroup var samplingOptions: SamplingOptions
    @Flag(help: "Score the procedural renderer's images instead of a model (checks the analyser; needs no model).")
    var reference = false
    @Option(help: "Canvas size of the --reference images.")
    var referenceSize: Int = 64
    @Option(help: "Also write every image as DIR/<prompt index>_<mode>.png.")
    var saveImages: String?
    @Flag(help: "Print JSON (with every prompt's verdict per mode) instead of tables.")
    var json = false
    @Flag(help: "No progress bar.")
    var quiet = false

    func validate() throws {
        guard n >= 1, n <= 100_000 else { throw ValidationError("--n must be between 1 and 100000") }
        let list = try parseIntList(windows, flag: "--windows")
        guard list.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--windows must all be >= 1") }
        guard let p = ZipARPolicy(rawValue: ziparPolicy), p != .eol else { throw ValidationError("--zipar-policy must be ideal or upstream") }
        if let a = adaptiveWindow {
            guard a >= 1 else { throw ValidationError("--adaptive-window must be >= 1") }
            guard p == .ideal else { throw ValidationError("--adaptive-window works with the ideal policy") }
        }
        if let k = kvCaches {
            _ = try parseKVCaches(k, flag: "--kv-caches")
            guard !reference else { throw ValidationError("--kv-caches needs a model, not --reference") }
        }
        try modelOptions.checkSparsity(try kvCaches.map { try parseKVCaches($0, flag: "--kv-caches") } ?? [modelOptions.kvPrecision])
        if reference {
            guard modelOptions.model == nil else { throw ValidationError("give either --model or --reference, not both") }
            guard referenceSize >= 16, referenceSize <= 4096 else { throw ValidationError("--reference-size must be between 16 and 4096") }
        }
    }

    /// One decoding mode: a schedule (raster when window = grid width) and an optional adaptive minimum.
    struct Mode {
        let name: String
        let slug: String          // for image file names
        let window: Int
        let adaptive: Int?
        var kv: KVCacheKind = .fp32
        var generator: Generator?
        var score = EvalScore()
        var passes = 0, seconds = 0.0, decodeSeconds = 0.0
    }

    func run() throws {
        if let d = saveImages {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
                throw ZipARError("--save-images: directory \(d) does not exist")
            }
            guard access(d, W_OK) == 0 else { throw ZipARError("--save-images: directory \(d) is not writable") }
        }
        let prompts = PromptSet.make(count: n, seed: seed)
        let analyser = Analyser()
        var verdicts = [[ClauseResults]](repeating: [], count: prompts.count)
        var modes: [Mode] = []
        var header: [String: Any] = ["prompts": n, "seed": seed]

        if reference {
            modelOptions.apply()
            modes = [Mode(name: "renderer", slug: "renderer", window: 0, adaptive: nil)]
            header["model"] = "reference renderer"
            header["image_size"] = [referenceSize, referenceSize]
            for (i, e) in prompts.enumerated() {
                let start = Date()
                let image = ShapeRenderer.render(e.prompt, width: referenceSize, height: referenceSize, seed: e.seed)
                modes[0].seconds += Date().timeIntervalSince(start)
                try record(image, e, &modes[0], analyser, &verdicts[i])
            }
        } else {
            let dir = try modelOptions.open()
            guard dir.gpt.isT2I else { throw ZipARError("\(dir.name) is a class-conditional model; zipar eval needs a text-to-image model with a built-in text encoder") }
            let sampling = try samplingOptions.settings(defaults: dir.samplingDefaults)
            // Encode every prompt first, so that a word missing from the model's vocabulary fails
            // before any compute.
            let encoder = try PromptEncoder.load(dir)
            let conditions: [Condition] = try prompts.map { e in
                let (features, mask) = try encoder.encode(e.prompt.text)
                return .caption(features: features, mask: mask)
            }
            let side = dir.gpt.gridSize
            let policy = ZipARPolicy(rawValue: ziparPolicy)!
            var windowList: [Int] = []
            for w in try parseIntList(windows, flag: "--windows") where !windowList.contains(w) {
                if w < side { windowList.append(w) } else if !json { eprint("note: window \(w) >= grid width \(side) is raster; skipped") }
            }
            modes.append(Mode(name: "raster", slug: "raster", window: side, adaptive: nil))
            for w in windowList { modes.append(Mode(name: "window \(w)", slug: "w\(w)", window: w, adaptive: nil)) }
            if let a = adaptiveWindow {
                for w in windowList where w > a { modes.append(Mode(name: "adaptive \(a)-\(w)", slug: "a\(a)-\(w)", window: w, adaptive: a)) }
            }
            // Every decoding mode with every KV cache type (named "<mode> <cache>" when several are compared).
            let caches = try kvCaches.map { try parseKVCaches($0, flag: "--kv-caches") } ?? [modelOptions.kvPrecision]
            modes = caches.flatMap { kv in
                modes.map { m -> Mode in
                    guard caches.count > 1 else { var c = m; c.kv = kv; return c }
                    let name = modelOptions.kvName(kv)
                    var c = Mode(name: m.name + " " + name, slug: m.slug + "_" + name.replacingOccurrences(of: "+", with: "_"), window: m.window, adaptive: m.adaptive)
                    c.kv = kv
                    return c
                }
            }
            header["kv_caches"] = caches.map { modelOptions.kvName($0) }
            let gpt = try dir.loadGPT(), vq = try dir.loadVQ()
            for i in modes.indices {
                let schedule = try Schedule.make(height: side, width: side, window: modes[i].window, policy: policy)
                modes[i].generator = try Generator(gpt: gpt, schedule: schedule, kvPrecision: modes[i].kv, kvOptions: modelOptions.kvOptions)
            }
            header["model"] = dir.name
            header["grid"] = [side, side]
            header["image_size"] = [dir.imageSize, dir.imageSize]
            header["policy"] = policy.rawValue
            header["attention"] = modelOptions.attentionMode(dir)
            // Floats printed through Double would show 0.800000011920929; round-trip them through their shortest text.
            func d(_ x: Float) -> Double { Double("\(x)") ?? Double(x) }
            header["sampling"] = ["cfg_scale": d(sampling.cfgScale), "cfg_interval": sampling.cfgInterval, "top_k": sampling.topK,
                                  "top_p": d(sampling.topP), "temperature": d(sampling.temperature)]
            let total = prompts.count * modes.count
            // Prompt by prompt, every mode in turn: machine noise hits all modes alike.
            for (i, e) in prompts.enumerated() {
                for m in modes.indices {
                    var options = GenerationOptions()
                    options.sampling = sampling
                    options.seed = e.seed
                    options.adaptiveMinWindow = modes[m].adaptive
                    options.drawn = modelOptions.drawn(dir)
                    let bar = ProgressBar(total: dir.gpt.block_size, label: "image \(i * modes.count + m + 1)/\(total)", quiet: quiet)
                    let result = try modes[m].generator!.generate(conditions[i], options: options) { bar.update(tokens: $0, passes: $1) }
                    bar.finish()
                    var image: RGBImage!
                    modes[m].decodeSeconds += try Measure.time { image = try renderImage(vq, tokens: result.tokens, height: side, width: side) }
                    modes[m].passes += result.forwardPasses
                    modes[m].seconds += result.seconds
                    try record(image, e, &modes[m], analyser, &verdicts[i])
                }
            }
        }
        header["threads"] = Parallel.threads
        report(header: header, modes: modes, prompts: prompts, verdicts: verdicts)
    }

    /// Analyses one image, tallies it, and saves it if asked.
    private func record(_ image: RGBImage, _ e: EvalPrompt, _ mode: inout Mode, _ analyser: Analyser, _ verdicts: inout [ClauseResults]) throws {
        let r = analyser.check(image, prompt: e.prompt)
        mode.score.add(r)
        verdicts.append(r)
        if let d = saveImages {
            let path = d + "/" + String(format: "%04d", e.index) + "_\(mode.slug).png"
            let text = "\(e.prompt.text)\nSeed: \(e.seed), Mode: \(mode.name), Passed: \(r.passed)" + (r.passed ? "" : ", Failed: \(r.failureSummary)")
            try ImageFile.write(image, to: path, metadata: [(key: "parameters", value: text)])
        }
    }

    private func report(header: [String: Any], modes: [Mode], prompts: [EvalPrompt], verdicts: [[ClauseResults]]) {
        let count = Double(prompts.count)
        if json {
            var out = header
            out["modes"] = modes.map { m -> [String: Any] in
                var acc: [String: Any] = [:]
                for (k, v) in m.score.accuracies { acc[k] = v ?? NSNull() }
                var byRelation: [String: Any] = [:]
                for (r, v) in m.score.relationAccuracies { byRelation[r.rawValue] = v ?? NSNull() }
                var d: [String: Any] = ["decoding": m.name, "accuracy": acc, "two_objects_by_relation": byRelation,
                                        "seconds_per_image": m.seconds / count]
                if !reference {
                    d["kv_cache"] = modelOptions.kvName(m.kv)
                    d["window"] = m.window
                    d["adaptive_min_window"] = m.adaptive ?? NSNull()
                    d["forward_passes_per_image"] = Double(m.passes) / count
                    d["vq_seconds_per_image"] = m.decodeSeconds / count
                }
                return d
            }
            out["results"] = prompts.map { e -> [String: Any] in
                let v = verdicts[e.index]
                return ["index": e.index, "prompt": e.prompt.text, "seed": e.seed, "passed": v.map(\.passed),
                        "failures": v.map(\.failureSummary)]
            }
            if let data = try? JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys]) {
                print(String(decoding: data, as: UTF8.self))
            }
            return
        }

        var title = "zipar eval: \(header["model"] ?? "?"), \(prompts.count) prompts (set seed \(seed))"
        if let g = header["grid"] as? [Int] { title += ", grid \(g[0])x\(g[1])" }
        if let s = header["image_size"] as? [Int] { title += ", \(s[0])x\(s[1]) px" }
        if let s = header["sampling"] as? [String: Any] {
            title += ", cfg \(s["cfg_scale"] ?? ""), top-k \(s["top_k"] ?? ""), top-p \(s["top_p"] ?? ""), temperature \(s["temperature"] ?? "")"
        }
        if let a = header["attention"] as? String { title += ", \(a) attention" }
        print(title + ", \(Parallel.threads) threads")
        print("\n| decoding | prompts | object | colour | shape | count | relation | background | 1 object | 2 objects | passes | s/image |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for m in modes {
            let cells = m.score.accuracies.map { $0.value.map { String(format: "%.1f%%", 100 * $0) } ?? "-" }
            let passes = reference ? "-" : String(format: "%.0f", Double(m.passes) / count)
            print("| \(m.name) | " + cells.joined(separator: " | ") + " | \(passes) | " + String(format: "%.2f", m.seconds / count) + " |")
        }
        if modes.contains(where: { $0.score.twoObjects > 0 }) {
            print("\ntwo-object prompts passed, by relation:\n")
            print("| decoding | " + Relation.allCases.map(\.rawValue).joined(separator: " | ") + " |")
            print("|---|" + String(repeating: "---|", count: Relation.allCases.count))
            for m in modes {
                let cells = m.score.relationAccuracies.map { r in
                    r.value.map { String(format: "%.1f%% (%d)", 100 * $0, m.score.byRelation[r.relation]!.prompts) } ?? "-"
                }
                print("| \(m.name) | " + cells.joined(separator: " | ") + " |")
            }
        }
        let s = modes.first?.score
        if let s {
            print("\nprompts: \(s.singleObject) single-object, \(s.twoObjects) two-object (\(s.relations) relations), \(s.backgrounds) with a background; " +
                  "object = colour and shape both right, colour/shape = some object has it, count = exactly the named objects")
        }
        if !reference, let m = modes.first {
            print(String(format: "s/image is token generation; VQ decoding adds %.2f s/image", m.decodeSeconds / count))
        }
    }
}
