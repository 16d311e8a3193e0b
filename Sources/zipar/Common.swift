import ArgumentParser
import Foundation
import ZipARCore

func eprint(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// Options every model-using command shares.
struct ModelOptions: ParsableArguments {
    @Option(name: [.short, .long], help: "Model directory (config.json, gpt.safetensors, vq.safetensors). Default: $ZIPAR_MODEL, then models/default.")
    var model: String?

    @Option(help: "Worker threads for the kernels and OpenBLAS (default: all cores).")
    var threads: Int?

    @Option(help: "KV cache storage: fp32 (default), fp16, int8, kivi2, kivi4 or zipcache (see README, KV cache compression).")
    var kvCache: String = "fp32"

    @Option(help: "ZipCache saliency: exact (every query's attention, default) or probe (every 10th query, the official approximation).")
    var zipcacheScore: String = "exact"

    @Option(help: "ZipCache block: slots quantized together once final (each block has its own key parameters per channel; larger = fewer parameter bits, a larger fp16 recent buffer). Default: whole image rows near 128 slots.")
    var zipcacheBlock: Int?

    @Option(help: "KV token sparsity: zipvl (per layer and sealed block, keep the fewest tokens covering --zipvl-tau of the normalised attention, evict the rest; needs a quantized cache).")
    var kvSparsity: String?

    @Option(help: "KV cross-layer merging: minicache (from half depth, adjacent layers share SLERP-merged K/V; needs a quantized cache).")
    var kvMerge: String?

    @Option(help: "ZipVL attention coverage tau in (0, 1].")
    var zipvlTau: Double = KVCacheOptions.defaultZipvlTau

    @Option(help: "Attention of ZipAR passes: zipar (ZipAR's mask, causal in slot order) or drawn (every token drawn so far, the lower rows' too; for models trained on it). Default: the model's (config.json \"attention\"), else zipar.")
    var attention: String?

    func validate() throws {
        if let t = threads, t < 1 || t > 256 { throw ValidationError("--threads must be between 1 and 256") }
        _ = try parseKVCaches(kvCache, flag: "--kv-cache")
        if let s = kvSparsity, s != "zipvl" { throw ValidationError("--kv-sparsity takes zipvl, got '\(s)'") }
        if let m = kvMerge, m != "minicache" { throw ValidationError("--kv-merge takes minicache, got '\(m)'") }
        guard zipvlTau > 0, zipvlTau <= 1 else { throw ValidationError("--zipvl-tau must be in (0, 1]") }
        if let b = zipcacheBlock, b < 8 || b > 4096 { throw ValidationError("--zipcache-block must be between 8 and 4096") }
        guard ZipCacheScore(rawValue: zipcacheScore) != nil else { throw ValidationError("--zipcache-score must be exact or probe") }
        if let a = attention {
            do { _ = try ModelDirectory.attentionMode(a, where: "--attention") } catch let e as ZipARError { throw ValidationError(e.message) }
        }
    }

    /// The attention of ZipAR passes ("zipar" or "drawn"): --attention, else the model's own.
    func attentionMode(_ dir: ModelDirectory?) -> String { attention ?? dir?.attention ?? "zipar" }
    func drawn(_ dir: ModelDirectory?) -> Bool { attentionMode(dir) == "drawn" }

    var kvPrecision: KVCacheKind { KVCacheKind(rawValue: kvCache) ?? .fp32 }

    /// ZipVL evicts tokens from sealed blocks, which only the quantized caches have. With a list
    /// (bench, eval) it applies to the quantized caches, the others are the reference.
    func checkSparsity(_ kinds: [KVCacheKind]) throws {
        for (flag, on) in [("--kv-sparsity zipvl", kvSparsity != nil), ("--kv-merge minicache", kvMerge != nil)] where on {
            guard kinds.contains(where: { $0.isQuantized }) else {
                throw ValidationError("\(flag) needs a quantized cache (int8, kivi2, kivi4, zipcache), not \(kinds.map(\.rawValue).joined(separator: ","))")
            }
        }
    }

    /// The name of a cache kind as run (with "+minicache", "+zipvl" where they apply).
    func kvName(_ kind: KVCacheKind) -> String {
        guard kind.isQuantized else { return kind.rawValue }
        return kind.rawValue + (kvMerge != nil ? "+minicache" : "") + (kvSparsity != nil ? "+zipvl" : "")
    }

    var kvOptions: KVCacheOptions {
        var o = KVCacheOptions()
        o.zipScore = ZipCacheScore(rawValue: zipcacheScore) ?? .exact
        o.zipBlock = zipcacheBlock
        if kvSparsity == "zipvl" { o.zipvlTau = zipvlTau }
        o.miniCache = kvMerge == "minicache"
        return o
    }

    func apply() {
        Parallel.threads = threads ?? ProcessInfo.processInfo.activeProcessorCount
    }

    func open() throws -> ModelDirectory {
        apply()
        return try ModelDirectory.open(model)
    }
}

/// Sampling flags shared by generate, bench and grid. Unset flags take the model's defaults
/// ("sampling" in config.json), else LlamaGen's c2i sample-script defaults.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Classifier-free guidance scale (1 = off). Default 4.0 or the model's.")
    var cfgScale: Float?
    @Option(help: "Guide only tokens 0...N+1 (LlamaGen's cfg_interval); -1 = always.")
    var cfgInterval: Int = -1
    @Option(help: "Keep the K most likely tokens (0 = off, 1 = greedy). Default 2000 or the model's.")
    var topK: Int?
    @Option(help: "Nucleus sampling mass in (0, 1]. Default 1.0 (off) or the model's.")
    var topP: Float?
    @Option(help: "Softmax temperature. Default 1.0 or the model's.")
    var temperature: Float?

    func validate() throws {
        do { try settings(defaults: [:]).validate() } catch let e as ZipARError { throw ValidationError(e.message) }
    }

    func settings(defaults: [String: Any]) throws -> SamplingSettings {
        var s = SamplingSettings()
        func d(_ k: String) -> Double? { (defaults[k] as? NSNumber)?.doubleValue }
        s.cfgScale = cfgScale ?? Float(d("cfg_scale") ?? 4.0)
        s.cfgInterval = cfgInterval
        s.topK = topK ?? Int(d("top_k") ?? 2000)
        s.topP = topP ?? Float(d("top_p") ?? 1.0)
        s.temperature = temperature ?? Float(d("temperature") ?? 1.0)
        try s.validate()
        return s
    }
}

/// ZipAR flags shared by generate and grid.
struct ZipAROptions: ParsableArguments {
    @Option(help: "ZipAR window s: row r+1 starts once row r is s tokens ahead (1 = diagonal wavefront). Omit for raster order.")
    var window: Int?
    @Option(help: "Row-start policy: ideal (paper rule, default) or upstream (LlamaGen-ZipAR code: row 0 first).")
    var ziparPolicy: String = "ideal"
    @Flag(help: "Reproduce the released ZipAR code: unwritten cache slots stay visible as zero keys/values.")
    var ziparHoles = false
    @Option(help: "Adaptive window (ZipAR v3): draft each row's first token once the row above holds MIN tokens and re-check it (speculative accept/reject) until accepted or --window is reached.")
    var adaptiveWindow: Int?

    func validate() throws {
        if let w = window, w < 1 { throw ValidationError("--window must be >= 1") }
        if let a = adaptiveWindow {
            guard let w = window else { throw ValidationError("--adaptive-window needs --window (the largest window)") }
            guard a >= 1, a <= w else { throw ValidationError("--adaptive-window must be between 1 and --window") }
            guard policy == .ideal else { throw ValidationError("--adaptive-window works with the ideal policy") }
        }
        guard ZipARPolicy(rawValue: ziparPolicy) != nil else {
            throw ValidationError("--zipar-policy must be one of \(ZipARPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    var policy: ZipARPolicy { ZipARPolicy(rawValue: ziparPolicy) ?? .ideal }

    func schedule(grid: Int) throws -> Schedule {
        if let w = window, w > grid { throw ZipARError("--window \(w) is larger than the grid width \(grid)") }
        return try Schedule.make(height: grid, width: grid, window: window ?? grid, policy: policy)
    }
}

/// Output file names for image i of a batch: out.png, out_2.png, out_3.png, ... (stable-diffusion.cpp style).
func numberedPath(_ path: String, _ i: Int) -> String {
    guard i > 0 else { return path }
    let url = URL(fileURLWithPath: path)
    let ext = url.pathExtension
    let stem = ext.isEmpty ? path : String(path.dropLast(ext.count + 1))
    return stem + "_\(i + 1)" + (ext.isEmpty ? "" : "." + ext)
}

/// Fails early, before any compute, if an output file cannot be created there.
func checkWritable(_ path: String) throws {
    let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw ZipARError("cannot write \(path): directory \(dir) does not exist")
    }
    guard access(dir, W_OK) == 0 else { throw ZipARError("cannot write \(path): directory \(dir) is not writable") }
    var isDirTarget: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirTarget), isDirTarget.boolValue {
        throw ZipARError("cannot write \(path): it is a directory")
    }
}

/// "fp32,zipcache" -> cache kinds, with a clear message for an unknown name.
func parseKVCaches(_ text: String, flag: String) throws -> [KVCacheKind] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    let kinds = parts.compactMap { KVCacheKind(rawValue: $0) }
    guard !parts.isEmpty, kinds.count == parts.count else {
        throw ValidationError("\(flag) takes \(KVCacheKind.allCases.map(\.rawValue).joined(separator: ", "))\(flag.hasSuffix("s") ? " (comma-separated)" : ""), got '\(text)'")
    }
    return kinds
}

/// "a,b,c" -> [Int] with a clear message.
func parseIntList(_ text: String, flag: String) throws -> [Int] {
    let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let values = parts.compactMap { Int($0) }
    guard !parts.isEmpty, values.count == parts.count else { throw ValidationError("\(flag) must be a comma-separated list of integers, got '\(text)'") }
    return values
}

/// A one-line progress bar on stderr, shown only on a terminal and without --quiet.
final class ProgressBar {
    let total: Int
    let enabled: Bool
    let start = Date()
    let label: String

    init(total: Int, label: String, quiet: Bool) {
        self.total = total; self.label = label
        enabled = !quiet && isatty(STDERR_FILENO) != 0
    }

    func update(tokens: Int, passes: Int) {
        guard enabled else { return }
        let width = 30, filled = total > 0 ? width * tokens / total : width
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        let line = String(format: "\r%@ [%@] %d/%d tokens, %d passes, %.1fs", label, bar, tokens, total, passes, Date().timeIntervalSince(start))
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

/// The condition for one of --class / --prompt / --caption-embeddings, and the text that names it
/// in the image metadata.
func makeCondition(_ dir: ModelDirectory, classLabel: String?, prompt: String?, captionEmbeddings: String?) throws -> (Condition, String) {
    if let c = classLabel {
        let id = try dir.classID(c)
        return (.classLabel(id), "class \(id)" + (dir.className(id).map { " (\($0))" } ?? ""))
    }
    if let file = captionEmbeddings {
        guard dir.gpt.isT2I else { throw ZipARError("\(dir.name) is a class-conditional model: use --class") }
        let (features, mask) = try CaptionEmbeddings.load(file, config: dir.gpt)
        return (.caption(features: features, mask: mask), "caption embeddings \(URL(fileURLWithPath: file).lastPathComponent)")
    }
    let text = prompt ?? ""
    let (features, mask) = try PromptEncoder.load(dir).encode(text)
    return (.caption(features: features, mask: mask), text)
}

/// Decodes tokens to an RGB image with the VQ decoder.
func renderImage(_ vq: VQDecoder, tokens: [Int], height: Int, width: Int) throws -> RGBImage {
    let pixels = try vq.decode(codes: tokens, height: height, width: width)    // [3, H*16, W*16]
    return RGBImage(width: pixels.shape[2], height: pixels.shape[1], pixels: VQDecoder.toRGB8(pixels))
}
