import Foundation

/// One calibration input: a condition and the image tokens (raster) to teacher-force after it.
public struct CalibrationSample {
    public var condition: Condition
    public var tokens: [Int]
    public init(condition: Condition, tokens: [Int]) { self.condition = condition; self.tokens = tokens }
}

public struct QuantizeSettings {
    public var scheme: WeightScheme
    /// DGQ group size (input columns per integer scale/zero); falls back to a divisor of k (DGQ.groupSize).
    public var groupSize = 128
    /// DGQ: static per-tensor activation scales from calibration (the official default, `--act_fun static`);
    /// false = dynamic per-token scales at run time.
    public var staticActivations = true
    /// DGQ: percentile-clipping smoothing of norm -> qkv, norm -> w1/w3 and w3 -> w2.
    public var smoothing = true
    /// At most this many tokens of the last sample feed the grid search (nil = all, as the official code).
    public var maxSearchTokens: Int? = nil
    /// Also quantize the output head (vocab x dim) to W8A8 per channel. DGQ keeps the head in 16 bits, but
    /// here it is a large share of a pass (50 MB of GPT-B's 94 MB at W4), and INT8 per channel is near lossless.
    public var quantizeHead = true
    public init(scheme: WeightScheme) { self.scheme = scheme }
}

/// Quantizes the transformer blocks' Linear layers of a GPT in place (wqkv, wo, w1, w3, w2), and the
/// output head to W8A8 unless `quantizeHead` is off. Embeddings, norms and the t2i caption projection
/// (prefill only) stay fp32.
///
/// DGQ follows `quant_sequence.PTQ` block by block: the calibration samples run through the model with
/// the blocks before the current one already quantized; (1) abs-max statistics of the current block's
/// norm outputs and w2 input, (2) smoothing, (3) a capture pass recording each Linear's per-sample
/// per-channel abs-max (running minimum over samples -> static clip) and the inputs of the last sample
/// (the only ones `add_batch` keeps), (4) the two-phase search per Linear.
public enum ModelQuantizer {
    public static func quantize(_ gpt: GPT, settings: QuantizeSettings, samples: [CalibrationSample],
                                log: ((String) -> Void)? = nil) throws {
        switch settings.scheme {
        case .fp32: return
        case .w8a8:
            for l in gpt.layers { for lin in [l.wqkv, l.wo, l.w1, l.w3, l.w2] { try quantizeW8(lin) } }
        case .w1:
            for l in gpt.layers { for lin in [l.wqkv, l.wo, l.w1, l.w3, l.w2] { try quantizeW1(lin) } }
        case .w4a8dgq:
            guard !samples.isEmpty else { throw ZipARError("DGQ needs at least one calibration sample") }
            for (i, layer) in gpt.layers.enumerated() {
                let t = try quantizeBlockDGQ(gpt, layer, settings: settings, samples: samples)
                log?(String(format: "block %d/%d quantized (calibration passes %.1f s, search %.1f s)", i + 1, gpt.layers.count, t.passes, t.search))
            }
        }
        if settings.quantizeHead { try quantizeW8(gpt.output) }
    }

    static func quantizeW8(_ lin: Linear) throws {
        guard let w = lin.weight else { throw ZipARError("layer is already quantized") }
        guard lin.inFeatures % 4 == 0 else { throw ZipARError("W8A8 needs input widths that are multiples of 4, got \(lin.inFeatures)") }
        lin.quantize(QuantizedLinear.w8a8(weight: w.data, rows: lin.outFeatures, cols: lin.inFeatures))
    }

    /// Post-training binarization (QuantizedLinear.w1). It keeps the sign pattern and the mean magnitude
    /// only: on a float-trained model the outputs lose most of their quality; a usable W1 model is
    /// trained for it (binarization-aware) and exported in the same format.
    static func quantizeW1(_ lin: Linear) throws {
        guard let w = lin.weight else { throw ZipARError("layer is already quantized") }
        guard lin.inFeatures % 64 == 0 else { throw ZipARError("W1 needs input widths that are multiples of 64, got \(lin.inFeatures)") }
        lin.quantize(QuantizedLinear.w1(weight: w.data, rows: lin.outFeatures, cols: lin.inFeatures))
    }

    /// Runs every sample through the model (teacher-forced, both CFG halves) with `observe` seeing the
    /// inputs of every fp32 Linear; called once per sample index.
    static func runSamples(_ gpt: GPT, _ samples: [CalibrationSample],
                           observe: @escaping (_ sample: Int, Linear, UnsafePointer<Float>, Int) -> Void) throws {
        let c = gpt.config, cls = c.cls_token_num
        let L = cls + c.block_size - 1            // prefix + every image token but the last is an input
        let state = ForwardState(config: c, maxRows: 2 * L, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: 2)
        var current = 0
        Linear.inputObserver = { lin, x, m in observe(current, lin, x, m) }
        defer { Linear.inputObserver = nil }
        for (si, s) in samples.enumerated() {
            current = si
            guard s.tokens.count == c.block_size else { throw ZipARError("calibration sample has \(s.tokens.count) tokens, the model needs \(c.block_size)") }
            var visibility = AttentionVisibility()
            switch s.condition {
            case .classLabel(let label):
                try gpt.embedClass(label, into: state.input(0))
                try gpt.embedClass(c.num_classes, into: state.input(L))
            case .caption(let features, let mask):
                visibility.captionMask = mask
                try gpt.embedCaption(features.data, into: state.input(0))
                try gpt.embedCaption(gpt.uncond_embedding!.data, into: state.input(L))
            }
            for b in 0..<2 { for i in 0..<(c.block_size - 1) { gpt.embedToken(s.tokens[i], into: state.input(b * L + cls + i)) } }
            cache.reset()
            let positions = (0..<2).flatMap { _ in Array(0..<L) }
            let batchOf = (0..<2).flatMap { b in [Int](repeating: b, count: L) }
            gpt.forward(state: state, cache: cache, positions: positions, batchOf: batchOf, visibility: visibility, logitRows: [])
        }
    }

    static func columnAbsMax(_ x: UnsafePointer<Float>, rows m: Int, cols k: Int, into a: inout [Float]) {
        for i in 0..<m { for j in 0..<k { a[j] = max(a[j], abs(x[i * k + j])) } }
    }

    static func quantizeBlockDGQ(_ gpt: GPT, _ layer: TransformerBlock, settings: QuantizeSettings, samples: [CalibrationSample]) throws
        -> (passes: Double, search: Double) {
        let t0 = Date()
        let linears = [layer.wqkv, layer.wo, layer.w1, layer.w3, layer.w2]
        for lin in linears where lin.weight == nil { throw ZipARError("layer is already quantized") }

        // (1) + (2) smoothing statistics (running max over samples) and smoothing.
        if settings.smoothing {
            var attn = [Float](repeating: 0, count: layer.wqkv.inFeatures), ffn = [Float](repeating: 0, count: layer.w1.inFeatures)
            var down = [Float](repeating: 0, count: layer.w2.inFeatures)
            try runSamples(gpt, samples) { _, lin, x, m in
                if lin === layer.wqkv { columnAbsMax(x, rows: m, cols: lin.inFeatures, into: &attn) }
                else if lin === layer.w1 { columnAbsMax(x, rows: m, cols: lin.inFeatures, into: &ffn) }
                else if lin === layer.w2 { columnAbsMax(x, rows: m, cols: lin.inFeatures, into: &down) }
            }
            if let s = DGQ.smoothingFactors(absMax: attn) {
                for j in 0..<s.count { layer.attention_norm.data[j] /= s[j] }
                scaleColumns(layer.wqkv, s)
            }
            if let s = DGQ.smoothingFactors(absMax: ffn) {
                for j in 0..<s.count { layer.ffn_norm.data[j] /= s[j] }
                scaleColumns(layer.w1, s); scaleColumns(layer.w3, s)
            }
            if let s = DGQ.smoothingFactors(absMax: down) {
                // smooth_llama_mlp: up_proj output rows / s (the SwiGLU product scales with them), down_proj columns * s.
                let w3 = layer.w3.weight!, k = layer.w3.inFeatures
                for r in 0..<s.count { for p in 0..<k { w3.data[r * k + p] /= s[r] } }
                scaleColumns(layer.w2, s)
            }
        }

        // (3) capture: per-sample per-channel abs-max and the last sample's inputs.
        var perSample: [[[Float]]] = linears.map { lin in samples.map { _ in [Float](repeating: 0, count: lin.inFeatures) } }
        var lastInputs: [[Float]] = linears.map { _ in [] }
        try runSamples(gpt, samples) { si, lin, x, m in
            guard let li = linears.firstIndex(where: { $0 === lin }) else { return }
            columnAbsMax(x, rows: m, cols: lin.inFeatures, into: &perSample[li][si])
            if si == samples.count - 1 { lastInputs[li] = Array(UnsafeBufferPointer(start: x, count: m * lin.inFeatures)) }
        }

        // (4) the search, per Linear.
        let t1 = Date()
        for (li, lin) in linears.enumerated() {
            let k = lin.inFeatures, n = lin.outFeatures
            guard k % 8 == 0, let G = DGQ.groupSize(cols: k, requested: settings.groupSize) else {
                throw ZipARError("DGQ needs input widths that are multiples of 8, got \(k)")
            }
            var x = lastInputs[li]
            var T = x.count / k
            if let cap = settings.maxSearchTokens, T > cap {
                // An even spread over the sample (both CFG halves), not just its start.
                let idx = (0..<cap).map { $0 * T / cap }
                x = idx.flatMap { Array(x[($0 * k)..<(($0 + 1) * k)]) }
                T = cap
            }
            let w = Array(UnsafeBufferPointer(start: lin.weight!.data, count: n * k))
            let r = DGQ.search(weight: w, rows: n, cols: k, groupSize: G, inputs: x, tokens: T)
            let amax = DGQ.staticClip(perSampleAbsMax: perSample[li])
            let sx: Float? = settings.staticActivations ? (amax > 0 ? amax / 127 : 1) : nil
            lin.quantize(QuantizedLinear(dgq: r.weight, inputScale: sx))
        }
        return (t1.timeIntervalSince(t0), Date().timeIntervalSince(t1))
    }

    static func scaleColumns(_ lin: Linear, _ s: [Float]) {
        let w = lin.weight!, k = lin.inFeatures
        for r in 0..<lin.outFeatures { for j in 0..<k { w.data[r * k + j] *= s[j] } }
    }
}

extension GPT {
    /// The weight scheme of the transformer blocks: the first quantized scheme among their Linears
    /// (a trained W1 export may keep some of them float), fp32 if none is quantized.
    public var weightScheme: WeightScheme {
        for l in layers { for lin in [l.wqkv, l.wo, l.w1, l.w3, l.w2] where lin.scheme != .fp32 { return lin.scheme } }
        return .fp32
    }
}

/// How closely a quantized model follows its fp32 original: next-token predictions along the same
/// teacher-forced sequences (condition branch), so one differing sample cannot derail the comparison.
public struct QuantizationQuality {
    /// Fraction of positions whose most likely token is the same.
    public var top1Agreement: Double
    /// Mean KL(p_fp32 || p_quantized) per position, in nats.
    public var meanKL: Double
    /// ||logits_q - logits_fp32|| / ||logits_fp32|| over all positions.
    public var relativeLogitError: Double
    public var positions: Int

    public static func measure(reference: GPT, quantized: GPT, samples: [CalibrationSample]) throws -> QuantizationQuality {
        var agree = 0, n = 0
        var kl = 0.0, num = 0.0, den = 0.0
        let V = reference.config.vocab_size
        for s in samples {
            let a = try teacherForcedLogits(reference, s), b = try teacherForcedLogits(quantized, s)
            for r in 0..<(a.count / V) {
                let pa = Array(a[(r * V)..<((r + 1) * V)]), pb = Array(b[(r * V)..<((r + 1) * V)])
                if pa.indices.max(by: { pa[$0] < pa[$1] }) == pb.indices.max(by: { pb[$0] < pb[$1] }) { agree += 1 }
                let la = logSoftmax(pa), lb = logSoftmax(pb)
                for i in 0..<V { kl += exp(la[i]) * (la[i] - lb[i]) }
                for i in 0..<V { num += Double(pa[i] - pb[i]) * Double(pa[i] - pb[i]); den += Double(pa[i]) * Double(pa[i]) }
                n += 1
            }
        }
        return QuantizationQuality(top1Agreement: Double(agree) / Double(max(n, 1)), meanKL: kl / Double(max(n, 1)),
                                   relativeLogitError: (num / max(den, 1e-30)).squareRoot(), positions: n)
    }

    static func logSoftmax(_ x: [Float]) -> [Double] {
        let m = Double(x.max() ?? 0)
        let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
        return x.map { Double($0) - lse }
    }

    /// Logits of every image position of one sequence, condition branch only.
    public static func teacherForcedLogits(_ gpt: GPT, _ s: CalibrationSample) throws -> [Float] {
        let c = gpt.config, cls = c.cls_token_num, L = cls + c.block_size - 1
        let state = ForwardState(config: c, maxRows: L, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: 1)
        var visibility = AttentionVisibility()
        switch s.condition {
        case .classLabel(let label): try gpt.embedClass(label, into: state.input(0))
        case .caption(let features, let mask):
            visibility.captionMask = mask
            try gpt.embedCaption(features.data, into: state.input(0))
        }
        for i in 0..<(c.block_size - 1) { gpt.embedToken(s.tokens[i], into: state.input(cls + i)) }
        // Rows cls-1 ... L-1 predict the image tokens 0 ... block_size-1.
        let rows = Array((cls - 1)..<L)
        gpt.forward(state: state, cache: cache, positions: Array(0..<L), batchOf: [Int](repeating: 0, count: L),
                    visibility: visibility, logitRows: rows)
        return Array(UnsafeBufferPointer(start: state.logits(0), count: rows.count * c.vocab_size))
    }
}
