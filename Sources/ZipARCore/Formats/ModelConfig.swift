import Foundation

/// LlamaGen GPT hyper-parameters, named after LlamaGen's ModelArgs fields (defaults are LlamaGen's).
public struct GPTConfig: Equatable, Sendable {
    public var dim = 4096
    public var n_layer = 32
    public var n_head = 32
    public var n_kv_head: Int? = nil
    public var multiple_of = 256
    public var ffn_dim_multiplier: Double? = nil
    public var rope_base: Double = 10000
    public var norm_eps: Float = 1e-5
    public var vocab_size = 16384
    public var block_size = 256
    public var num_classes = 1000
    public var class_dropout_prob: Double = 0.1
    public var cls_token_num = 1
    public var model_type = "c2i"
    public var caption_dim = 2048
    /// "softmax" (LlamaGen), or "sab": BiViT's softmax-aware attention binarization (probabilities
    /// >= 0.25 x the row's largest become 1, the rest 0), for models trained with it
    /// (tools/train/binarize.py --sab). Not a LlamaGen field; absent = softmax.
    public var attention_binarization = "softmax"
    public var usesSAB: Bool { attention_binarization == "sab" }

    public init() {}

    public var headDim: Int { dim / n_head }
    public var kvHeads: Int { n_kv_head ?? n_head }
    public var isT2I: Bool { model_type == "t2i" }
    /// Token grid side; block_size must be a perfect square.
    public var gridSize: Int { Int(Double(block_size).squareRoot().rounded()) }
    /// Rows of the class table: one extra "null class" row when class dropout was used in training.
    public var labelRows: Int { class_dropout_prob > 0 ? num_classes + 1 : num_classes }

    /// SwiGLU hidden size with LlamaGen's truncating casts, rounded up to multiple_of.
    public var ffnHidden: Int {
        var hidden = 4 * dim
        hidden = Int(2 * hidden / 3)
        if let m = ffn_dim_multiplier { hidden = Int(m * Double(hidden)) }
        return multiple_of * ((hidden + multiple_of - 1) / multiple_of)
    }

    public func validate() throws {
        func bad(_ s: String) -> ZipARError { ZipARError("invalid gpt config: \(s)") }
        guard dim > 0, n_layer > 0, n_head > 0 else { throw bad("dim, n_layer and n_head must be positive") }
        guard dim % n_head == 0 else { throw bad("dim \(dim) is not divisible by n_head \(n_head)") }
        guard headDim % 4 == 0 else { throw bad("head_dim \(headDim) must be a multiple of 4 for 2D RoPE") }
        guard kvHeads > 0, n_head % kvHeads == 0 else { throw bad("n_head \(n_head) is not a multiple of n_kv_head \(kvHeads)") }
        guard multiple_of > 0 else { throw bad("multiple_of must be positive") }
        if let m = ffn_dim_multiplier { guard m > 0, m.isFinite else { throw bad("ffn_dim_multiplier must be positive") } }
        guard rope_base > 0, rope_base.isFinite else { throw bad("rope_base must be positive") }
        guard norm_eps > 0, norm_eps.isFinite else { throw bad("norm_eps must be positive") }
        guard vocab_size > 0 else { throw bad("vocab_size must be positive") }
        guard block_size > 0, gridSize * gridSize == block_size else { throw bad("block_size \(block_size) is not a perfect square") }
        guard model_type == "c2i" || model_type == "t2i" else { throw bad("model_type must be c2i or t2i, got \(model_type)") }
        guard cls_token_num > 0 else { throw bad("cls_token_num must be positive") }
        if model_type == "c2i" {
            guard num_classes > 0 else { throw bad("num_classes must be positive") }
            guard cls_token_num == 1 else { throw bad("c2i models need cls_token_num 1") }
        } else {
            guard caption_dim > 0 else { throw bad("caption_dim must be positive") }
        }
        guard ffnHidden > 0 else { throw bad("FFN hidden size must be positive") }
        guard attention_binarization == "softmax" || attention_binarization == "sab" else {
            throw bad("attention_binarization must be softmax or sab, got \(attention_binarization)")
        }
    }
}

/// VQ decoder hyper-parameters, named after LlamaGen's VQ ModelArgs (plus ch and num_res_blocks).
public struct VQConfig: Equatable, Sendable {
    public var codebook_size = 16384
    public var codebook_embed_dim = 8
    public var codebook_l2_norm = true
    public var decoder_ch_mult = [1, 1, 2, 2, 4]
    public var z_channels = 256
    public var ch = 128
    public var num_res_blocks = 2

    public init() {}

    /// Pixels per token side: one x2 upsample per level but the last.
    public var downsample: Int { 1 << (decoder_ch_mult.count - 1) }

    public func validate() throws {
        func bad(_ s: String) -> ZipARError { ZipARError("invalid vq config: \(s)") }
        guard codebook_size > 0, codebook_embed_dim > 0, z_channels > 0, ch > 0 else {
            throw bad("codebook_size, codebook_embed_dim, z_channels and ch must be positive")
        }
        guard !decoder_ch_mult.isEmpty, decoder_ch_mult.allSatisfy({ $0 > 0 }), decoder_ch_mult.count <= 8 else {
            throw bad("decoder_ch_mult must be 1 to 8 positive integers")
        }
        guard num_res_blocks >= 0 else { throw bad("num_res_blocks must be >= 0") }
        for m in decoder_ch_mult where (ch * m) % 32 != 0 { throw bad("ch*ch_mult \(ch * m) must be a multiple of 32 (GroupNorm groups)") }
    }
}

/// Reads config fields from a JSON object, with LlamaGen's defaults, ignoring unknown keys,
/// and rejecting wrong types with a message that names the field.
struct ConfigReader {
    let dict: [String: Any]
    let section: String

    func value(_ key: String) -> Any? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        return v
    }
    func int(_ key: String, _ def: Int) throws -> Int {
        guard let v = value(key) else { return def }
        guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e12 else {
            throw ZipARError("invalid \(section) config: \(key) must be an integer, got \(v)")
        }
        return n.intValue
    }
    func optInt(_ key: String) throws -> Int? { value(key) == nil ? nil : try int(key, 0) }
    func double(_ key: String, _ def: Double) throws -> Double {
        guard let v = value(key) else { return def }
        guard let n = v as? NSNumber, !isJSONBool(v) else { throw ZipARError("invalid \(section) config: \(key) must be a number, got \(v)") }
        return n.doubleValue
    }
    func optDouble(_ key: String) throws -> Double? { value(key) == nil ? nil : try double(key, 0) }
    func string(_ key: String, _ def: String) throws -> String {
        guard let v = value(key) else { return def }
        guard let s = v as? String else { throw ZipARError("invalid \(section) config: \(key) must be a string") }
        return s
    }
    func bool(_ key: String, _ def: Bool) throws -> Bool {
        guard let v = value(key) else { return def }
        guard isJSONBool(v), let b = v as? Bool else { throw ZipARError("invalid \(section) config: \(key) must be true or false") }
        return b
    }
    func intArray(_ key: String, _ def: [Int]) throws -> [Int] {
        guard let v = value(key) else { return def }
        guard let a = v as? [NSNumber] else { throw ZipARError("invalid \(section) config: \(key) must be a list of integers") }
        return a.map { $0.intValue }
    }
}

extension GPTConfig {
    public init(json dict: [String: Any]) throws {
        let r = ConfigReader(dict: dict, section: "gpt")
        self.init()
        dim = try r.int("dim", dim)
        n_layer = try r.int("n_layer", n_layer)
        n_head = try r.int("n_head", n_head)
        n_kv_head = try r.optInt("n_kv_head")
        multiple_of = try r.int("multiple_of", multiple_of)
        ffn_dim_multiplier = try r.optDouble("ffn_dim_multiplier")
        rope_base = try r.double("rope_base", rope_base)
        norm_eps = Float(try r.double("norm_eps", Double(norm_eps)))
        vocab_size = try r.int("vocab_size", vocab_size)
        block_size = try r.int("block_size", block_size)
        num_classes = try r.int("num_classes", num_classes)
        class_dropout_prob = try r.double("class_dropout_prob", class_dropout_prob)
        cls_token_num = try r.int("cls_token_num", cls_token_num)
        model_type = try r.string("model_type", model_type)
        caption_dim = try r.int("caption_dim", caption_dim)
        attention_binarization = try r.string("attention_binarization", attention_binarization)
        try validate()
    }

    public var json: [String: Any] {
        var d: [String: Any] = ["dim": dim, "n_layer": n_layer, "n_head": n_head, "multiple_of": multiple_of,
                                "rope_base": rope_base, "norm_eps": Double(norm_eps), "vocab_size": vocab_size,
                                "block_size": block_size, "num_classes": num_classes, "class_dropout_prob": class_dropout_prob,
                                "cls_token_num": cls_token_num, "model_type": model_type, "caption_dim": caption_dim]
        d["n_kv_head"] = n_kv_head ?? NSNull()
        d["ffn_dim_multiplier"] = ffn_dim_multiplier ?? NSNull()
        if attention_binarization != "softmax" { d["attention_binarization"] = attention_binarization }
        return d
    }
}

extension VQConfig {
    public init(json dict: [String: Any]) throws {
        let r = ConfigReader(dict: dict, section: "vq")
        self.init()
        codebook_size = try r.int("codebook_size", codebook_size)
        codebook_embed_dim = try r.int("codebook_embed_dim", codebook_embed_dim)
        codebook_l2_norm = try r.bool("codebook_l2_norm", codebook_l2_norm)
        decoder_ch_mult = try r.intArray("decoder_ch_mult", decoder_ch_mult)
        z_channels = try r.int("z_channels", z_channels)
        ch = try r.int("ch", ch)
        num_res_blocks = try r.int("num_res_blocks", num_res_blocks)
        try validate()
    }

    public var json: [String: Any] {
        ["codebook_size": codebook_size, "codebook_embed_dim": codebook_embed_dim, "codebook_l2_norm": codebook_l2_norm,
         "decoder_ch_mult": decoder_ch_mult, "z_channels": z_channels, "ch": ch, "num_res_blocks": num_res_blocks]
    }
}

/// Reads a JSON file as an object, with a clear error for a missing or malformed file.
public func readJSONObject(_ path: String) throws -> [String: Any] {
    guard let data = FileManager.default.contents(atPath: path) else { throw ZipARError("cannot read \(path)") }
    guard let obj = try? JSONSerialization.jsonObject(with: data), let dict = obj as? [String: Any] else {
        throw ZipARError("\(path) is not a JSON object")
    }
    return dict
}

extension GPTConfig {
    /// LlamaGen's named sizes (n_layer, n_head, dim); everything else at the defaults.
    public static let namedSizes: [(name: String, layers: Int, heads: Int, dim: Int)] = [
        ("gpt-b", 12, 12, 768), ("gpt-l", 24, 16, 1024), ("gpt-xl", 36, 20, 1280),
        ("gpt-xxl", 48, 24, 1536), ("gpt-3b", 24, 32, 3200),
    ]

    /// A named LlamaGen c2i config for a grid of side `grid` (16 for 256 px, 24 for 384 px).
    public static func named(_ name: String, grid: Int = 16) throws -> GPTConfig {
        guard let s = namedSizes.first(where: { $0.name == name.lowercased() }) else {
            throw ZipARError("unknown model size '\(name)'; choose one of \(namedSizes.map { $0.name }.joined(separator: ", "))")
        }
        var c = GPTConfig()
        c.n_layer = s.layers; c.n_head = s.heads; c.dim = s.dim
        c.block_size = grid * grid
        try c.validate()
        return c
    }
}
