import Foundation

/// What the image is conditioned on.
public enum Condition {
    /// c2i: a class id in 0..<num_classes.
    case classLabel(Int)
    /// t2i: caption features [cls_token_num, caption_dim] (left-padded, pads zero) and the valid mask.
    case caption(features: Tensor, mask: [Bool])
}

/// Everything that fixes one image besides the model: the same values give the same tokens, bit for bit.
public struct GenerationOptions {
    public var sampling = SamplingSettings()
    public var seed: UInt64 = 0
    /// Upstream ZipAR attention: unwritten slots visible as zero keys/values (for comparison only).
    public var holes = false
    public init() {}
}

public struct GenerationResult {
    public let tokens: [Int]            // raster order, H*W
    public let forwardPasses: Int
    public let seconds: Double
}

/// Runs a decoding schedule (raster or ZipAR) through the GPT: one forward pass per step, every
/// input of the step (both CFG halves) batched into that pass, each token sampled independently.
/// Buffers and the KV cache are allocated once and reused for every image.
public final class Generator {
    public let gpt: GPT
    public let schedule: Schedule
    private let state: ForwardState
    private let cfgCache: KVCache
    private let plainCache: KVCache

    public init(gpt: GPT, schedule: Schedule) throws {
        let c = gpt.config
        guard schedule.height * schedule.width == c.block_size, schedule.height == c.gridSize else {
            throw ZipARError("the model generates a \(c.gridSize)x\(c.gridSize) grid, the schedule is \(schedule.height)x\(schedule.width)")
        }
        guard schedule.policy != .eol else {
            throw ZipARError("policy eol needs a model with a line-break token per row; LlamaGen models have none (use ideal or upstream)")
        }
        self.gpt = gpt
        self.schedule = schedule
        let maxInputs = schedule.steps.map { $0.inputs.count }.max() ?? 1
        state = ForwardState(config: c, maxRows: 2 * max(maxInputs, c.cls_token_num), slots: gpt.sequenceLength)
        cfgCache = gpt.makeCache(batch: 2)
        plainCache = gpt.makeCache(batch: 1)
    }

    public var cacheBytes: Int { cfgCache.bytes }

    /// Generates one image's tokens. `progress(tokensDone, passesDone)` is called after every pass.
    public func generate(_ condition: Condition, options: GenerationOptions,
                         progress: ((Int, Int) -> Void)? = nil) throws -> GenerationResult {
        try options.sampling.validate()
        let start = Date()
        let c = gpt.config, cls = c.cls_token_num
        let cfg = options.sampling.cfgScale > 1
        let B = cfg ? 2 : 1
        let cache = cfg ? cfgCache : plainCache
        cache.reset()
        let sampler = Sampler(settings: options.sampling, vocab: c.vocab_size)
        var rng = RNG(seed: options.seed)
        var tokens = [Int](repeating: -1, count: c.block_size)
        var visibility = AttentionVisibility(holes: options.holes)
        let guided = Tensor(shape: [c.vocab_size])

        // Prefill: the condition prefix of each batch entry (cond first, then uncond).
        switch condition {
        case .classLabel(let label):
            guard !c.isT2I else { throw ZipARError("this t2i model needs a prompt or caption embeddings, not a class") }
            guard label >= 0, label < c.num_classes else { throw ZipARError("class \(label) is outside 0..<\(c.num_classes)") }
            try gpt.embedClass(label, into: state.input(0))
            if cfg { try gpt.embedClass(c.num_classes, into: state.input(1)) }
        case .caption(let features, let mask):
            guard c.isT2I else { throw ZipARError("this c2i model needs a class, not a caption") }
            guard features.shape == [cls, c.caption_dim], mask.count == cls else {
                throw ZipARError("caption embeddings must be [\(cls), \(c.caption_dim)] with a \(cls)-entry mask, got \(features.shape)")
            }
            visibility.captionMask = mask
            try gpt.embedCaption(features.data, into: state.input(0))
            if cfg, let u = gpt.uncond_embedding { try gpt.embedCaption(u.data, into: state.input(cls)) }
        }
        var positions: [Int] = [], batchOf: [Int] = []
        for b in 0..<B { for p in 0..<cls { positions.append(p); batchOf.append(b) } }
        gpt.forward(state: state, cache: cache, positions: positions, batchOf: batchOf, visibility: visibility,
                    logitRows: (0..<B).map { $0 * cls + cls - 1 })
        tokens[0] = pick(0, cfgRowOffset: 1, cfg: cfg, sampler: sampler, guided: guided, rng: &rng, prefill: true)
        progress?(1, 1)

        var done = 1
        var logitRows: [Int] = [], outputs: [Int] = []
        for (passIndex, step) in schedule.steps.enumerated().dropFirst() {
            positions.removeAll(keepingCapacity: true); batchOf.removeAll(keepingCapacity: true)
            logitRows.removeAll(keepingCapacity: true); outputs.removeAll(keepingCapacity: true)
            let n = step.inputs.count
            for b in 0..<B {
                for (i, input) in step.inputs.enumerated() {
                    guard let v = input.valueOf, tokens[v] >= 0 else { throw ZipARError("schedule feeds cell \(input.valueOf ?? -1) before it is sampled") }
                    gpt.embedToken(tokens[v], into: state.input(b * n + i))
                    positions.append(cls + input.slot); batchOf.append(b)
                }
            }
            for (i, input) in step.inputs.enumerated() { if let o = input.output { logitRows.append(i); outputs.append(o) } }
            let k = logitRows.count
            if cfg { logitRows += logitRows.map { $0 + n } }
            gpt.forward(state: state, cache: cache, positions: positions, batchOf: batchOf, visibility: visibility, logitRows: logitRows)
            for (j, cell) in outputs.enumerated() {
                tokens[cell] = pick(j, cfgRowOffset: k, cfg: cfg, sampler: sampler, guided: guided, rng: &rng, prefill: false, cell: cell)
            }
            done += outputs.count
            progress?(done, passIndex + 1)
        }
        guard tokens.allSatisfy({ $0 >= 0 }) else { throw ZipARError("schedule left cells unsampled") }
        return GenerationResult(tokens: tokens, forwardPasses: schedule.forwardPasses, seconds: Date().timeIntervalSince(start))
    }

    /// Samples from logits row j (cond) and j + offset (uncond), applying CFG when it is on for this token.
    private func pick(_ j: Int, cfgRowOffset: Int, cfg: Bool, sampler: Sampler, guided: Tensor, rng: inout RNG,
                      prefill: Bool, cell: Int = 0) -> Int {
        let cond = state.logits(j)
        if cfg && (prefill || sampler.settings.guides(tokenIndex: cell)) {
            Sampler.guide(cond: cond, uncond: state.logits(j + cfgRowOffset), scale: sampler.settings.cfgScale,
                          into: guided.data, count: sampler.vocab)
            return sampler.sample(guided.data, rng: &rng)
        }
        return sampler.sample(cond, rng: &rng)
    }
}
