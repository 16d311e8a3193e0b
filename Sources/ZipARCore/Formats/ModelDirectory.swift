import Foundation

/// A model directory (the user-facing format, see README "Model directory"):
///   config.json       {"gpt": {LlamaGen ModelArgs}, "vq": {VQ ModelArgs + ch, num_res_blocks}, optional extras}
///   gpt.safetensors   official GPT state-dict keys (F32, F16 or BF16)
///   vq.safetensors    official VQ keys (decoder path; encoder keys ignored)
///   classes.txt       optional, one class name per line (line i = class i)
public final class ModelDirectory {
    public let path: String
    public let name: String
    public let gpt: GPTConfig
    public let vq: VQConfig
    public let classes: [String]?
    /// Default sampling settings the model ships with ("sampling" in config.json), if any.
    public let samplingDefaults: [String: Any]
    /// The attention the GPT was trained to decode ZipAR schedules with ("attention" in config.json):
    /// "zipar" (ZipAR's mask, the default) or "drawn" (AttentionVisibility.drawn).
    public let attention: String
    public let raw: [String: Any]

    public var gptPath: String { path + "/gpt.safetensors" }
    public var vqPath: String { path + "/vq.safetensors" }

    public init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ZipARError("model directory \(path) does not exist")
        }
        self.path = path
        let cfgPath = path + "/config.json"
        guard FileManager.default.fileExists(atPath: cfgPath) else { throw ZipARError("\(path) has no config.json: not a zipar model directory") }
        let dict = try readJSONObject(cfgPath)
        raw = dict
        guard let g = dict["gpt"] as? [String: Any] else { throw ZipARError("\(cfgPath): missing the \"gpt\" section") }
        guard let v = dict["vq"] as? [String: Any] else { throw ZipARError("\(cfgPath): missing the \"vq\" section") }
        gpt = try GPTConfig(json: g)
        vq = try VQConfig(json: v)
        guard gpt.vocab_size == vq.codebook_size else {
            throw ZipARError("\(cfgPath): gpt vocab_size \(gpt.vocab_size) != vq codebook_size \(vq.codebook_size)")
        }
        name = (dict["name"] as? String) ?? URL(fileURLWithPath: path).standardizedFileURL.lastPathComponent
        samplingDefaults = (dict["sampling"] as? [String: Any]) ?? [:]
        attention = try Self.attentionMode(dict["attention"] ?? "zipar", where: cfgPath + ": \"attention\"")
        for f in ["gpt.safetensors", "vq.safetensors"] where !FileManager.default.fileExists(atPath: path + "/" + f) {
            throw ZipARError("\(path) has no \(f)")
        }
        if let text = try? String(contentsOfFile: path + "/classes.txt", encoding: .utf8) {
            var lines = text.components(separatedBy: "\n")
            if lines.last == "" { lines.removeLast() }
            classes = lines
        } else {
            classes = nil
        }
    }

    /// "zipar" or "drawn", else a clear error naming `place`.
    public static func attentionMode(_ value: Any, where place: String) throws -> String {
        guard let s = value as? String, ["zipar", "drawn"].contains(s) else {
            throw ZipARError("\(place) must be \"zipar\" or \"drawn\", got \(value)")
        }
        return s
    }

    public func loadGPT() throws -> GPT { try GPT(config: gpt, weights: try SafeTensorsFile(path: gptPath)) }
    public func loadVQ() throws -> VQDecoder { try VQDecoder(config: vq, weights: try SafeTensorsFile(path: vqPath)) }

    /// Image side in pixels.
    public var imageSize: Int { gpt.gridSize * vq.downsample }

    /// A class given as a number or as a name from classes.txt (case-insensitive; an ImageNet line
    /// "tench, Tinca tinca" matches "tench" too).
    public func classID(_ s: String) throws -> Int {
        guard !gpt.isT2I else { throw ZipARError("\(name) is a text-to-image model: use --prompt or --caption-embeddings, not --class") }
        if let n = Int(s) {
            guard n >= 0, n < gpt.num_classes else { throw ZipARError("class \(n) is outside 0..<\(gpt.num_classes)") }
            return n
        }
        guard let classes else { throw ZipARError("\(name) has no classes.txt: give --class as a number in 0..<\(gpt.num_classes)") }
        let want = s.lowercased().trimmingCharacters(in: .whitespaces)
        func names(_ line: String) -> [String] {
            [line.lowercased()] + line.lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        if let i = classes.firstIndex(where: { names($0).contains(want) }), i < gpt.num_classes { return i }
        let close = classes.enumerated().filter { $0.element.lowercased().contains(want) }.prefix(5)
        let hint = close.isEmpty ? "" : "; did you mean " + close.map { "\($0.offset) (\($0.element))" }.joined(separator: ", ") + "?"
        throw ZipARError("unknown class '\(s)'\(hint)")
    }

    public func className(_ id: Int) -> String? { classes.flatMap { id < $0.count ? $0[id] : nil } }

    /// Where the default model is looked for, in order: $ZIPAR_MODEL, models/default under the
    /// current directory, then models/default next to the executable's package (../../models/default
    /// from .build/<config>/zipar, and ../share/zipar/models/default for an installed binary).
    public static func defaultPath() -> String? {
        if let env = ProcessInfo.processInfo.environment["ZIPAR_MODEL"], !env.isEmpty { return env }
        var candidates = [FileManager.default.currentDirectoryPath + "/models/default"]
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let bin = exe.deletingLastPathComponent()
        candidates.append(bin.appendingPathComponent("../../../models/default").standardizedFileURL.path)  // .build/x86_64-.../release
        candidates.append(bin.appendingPathComponent("../../models/default").standardizedFileURL.path)     // .build/release
        candidates.append(bin.appendingPathComponent("../share/zipar/models/default").standardizedFileURL.path)
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/config.json") }
    }

    public static func open(_ path: String?) throws -> ModelDirectory {
        if let path { return try ModelDirectory(path: path) }
        guard let p = defaultPath() else {
            throw ZipARError("no model given and no default model found: pass --model DIR or set ZIPAR_MODEL")
        }
        return try ModelDirectory(path: p)
    }
}
