import Foundation

/// The record of how an image was made, written into every PNG as an A1111-style `parameters`
/// text chunk (first line: the prompt; second line: "Key: value, ..."), so any image can be remade.
public struct ImageParameters {
    public var prompt: String
    public var sampling: SamplingSettings
    public var seed: UInt64
    public var imageSize: Int
    public var model: String
    public var window: Int
    public var gridWidth: Int
    public var policy: ZipARPolicy
    public var holes: Bool
    public var forwardPasses: Int
    public var version: String
    public var adaptiveMinWindow: Int?
    /// Attention of the ZipAR passes: "zipar" or "drawn" (AttentionVisibility.drawn).
    public var attention: String

    public init(prompt: String, sampling: SamplingSettings, seed: UInt64, imageSize: Int, model: String, window: Int,
                gridWidth: Int, policy: ZipARPolicy, holes: Bool, forwardPasses: Int, version: String, adaptiveMinWindow: Int? = nil,
                attention: String = "zipar") {
        self.prompt = prompt; self.sampling = sampling; self.seed = seed; self.imageSize = imageSize; self.model = model
        self.window = window; self.gridWidth = gridWidth; self.policy = policy; self.holes = holes
        self.forwardPasses = forwardPasses; self.version = version; self.adaptiveMinWindow = adaptiveMinWindow
        self.attention = attention
    }

    /// "raster" or "zipar window 8 (ideal)".
    public var decodingName: String {
        if window >= gridWidth { return "raster" }
        if let a = adaptiveMinWindow { return "zipar adaptive window \(a)-\(window) (\(policy.rawValue))" }
        return "zipar window \(window) (\(policy.rawValue)\(holes ? ", holes" : ""))"
    }

    public var a1111: String {
        let s = sampling
        let fields: [(String, String)] = [
            ("Steps", "\(forwardPasses)"), ("Sampler", decodingName), ("CFG scale", fmt(s.cfgScale)),
            ("CFG interval", "\(s.cfgInterval)"), ("Top-k", "\(s.topK)"), ("Top-p", fmt(s.topP)),
            ("Temperature", fmt(s.temperature)), ("Seed", "\(seed)"), ("Size", "\(imageSize)x\(imageSize)"),
            ("Model", model), ("Window", window >= gridWidth ? "raster" : adaptiveMinWindow.map { "adaptive \($0)-\(window)" } ?? "\(window)"), ("Policy", policy.rawValue),
            ("Holes", holes ? "true" : "false"), ("Attention", attention), ("Forward passes", "\(forwardPasses)"), ("Version", "zipar \(version)"),
        ]
        return prompt + "\n" + fields.map { "\($0.0): \($0.1)" }.joined(separator: ", ")
    }

    private func fmt(_ x: Float) -> String {
        x == x.rounded() ? String(format: "%.1f", x) : String(format: "%g", x)
    }
}
