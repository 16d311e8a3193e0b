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
    /// Drawn attention (AttentionVisibility.drawn): for models trained on it.
    public var drawn = false
    /// Adaptive window (ZipAR v3): the first token of row r+1 is drafted once row r holds this many
    /// tokens and re-checked by a speculative accept/reject test each time row r grows, until it is
    /// accepted or row r reaches the schedule's window. nil = the static schedule.
    public var adaptiveMinWindow: Int? = nil
    public init() {}
}

public struct GenerationResult {
    public let tokens: [Int]            // raster order, H*W
    public let forwardPasses: Int
    public let seconds: Double
    /// Adaptive window only: for each row r >= 1, how many tokens row r-1 held when row r started.
    public let rowStartLags: [Int]
    /// Seconds spent inside transformer forward passes (the rest is sampling and bookkeeping).
    public let forwardSeconds: Double
}

/// Runs a decoding schedule (raster or ZipAR) through the GPT: one forward pass per step, every
/// input of the step (both CFG halves) batched into that pass, each token sampled independently.
/// Buffers and the KV cache are allocated once and reused for every image.
public final class Generator {
    public let gpt: GPT
    public let schedule: Schedule
    private let state: ForwardState
    private let cfgCache: KVCache
    /// Made on first use: most runs use CFG, and an unused cache would still cost its memory.
    private lazy var plainCache: KVCache = gpt.makeCache(batch: 1, precision: kvKind, options: kvOptions)
    private let kvKind: KVCacheKind
    private let kvOptions: KVCacheOptions
    private let guided: Tensor

    public init(gpt: GPT, schedule: Schedule, kvPrecision: KVCacheKind = .fp32, kvOptions: KVCacheOptions = KVCacheOptions()) throws {
        let c = gpt.config
        guard schedule.height * schedule.width == c.block_size, schedule.height == c.gridSize else {
            throw ZipARError("the model generates a \(c.gridSize)x\(c.gridSize) grid, the schedule is \(schedule.height)x\(schedule.width)")
        }
        guard schedule.policy != .eol else {
            throw ZipARError("policy eol needs a model with a line-break token per row; LlamaGen models have none (use ideal or upstream)")
        }
        self.gpt = gpt
        self.schedule = schedule
        // Static steps feed at most maxInputs; the adaptive loop at most one per row + a draft check + a refresh.
        let maxInputs = max(schedule.steps.map { $0.inputs.count }.max() ?? 1, schedule.height + 2)
        state = ForwardState(config: c, maxRows: 2 * max(maxInputs, c.cls_token_num), slots: gpt.sequenceLength)
        cfgCache = gpt.makeCache(batch: 2, precision: kvPrecision, options: kvOptions)
        kvKind = kvPrecision
        self.kvOptions = kvOptions
        guided = Tensor(shape: [c.vocab_size])
    }

    /// KV cache bytes of one image (both CFG halves when `cfg`).
    public func cacheBytes(cfg: Bool) -> Int { cfg ? cfgCache.bytes : plainCache.bytes }
    /// The KV cache of one image (both CFG halves when `cfg`): its largest size so far, compressed
    /// part and recent buffer included, and what the same slots take in fp16.
    public func cache(cfg: Bool) -> KVCache { cfg ? cfgCache : plainCache }

    /// Per-image state of one generation.
    private struct Run {
        let cfg: Bool
        let cache: KVCache
        let sampler: Sampler
        var rng: RNG
        var visibility: AttentionVisibility
        var tokens: [Int]
        var passes = 0
        var forwardSeconds = 0.0
    }

    /// Generates one image's tokens. `progress(tokensDone, passesDone)` is called after every pass.
    public func generate(_ condition: Condition, options: GenerationOptions,
                         progress: ((Int, Int) -> Void)? = nil) throws -> GenerationResult {
        try options.sampling.validate()
        guard !(options.holes && options.drawn) else {
            throw ZipARError("the upstream holes mode and the drawn attention are different masks; pick one")
        }
        let start = Date()
        let cfg = options.sampling.cfgScale > 1
        var run = Run(cfg: cfg, cache: cfg ? cfgCache : plainCache,
                      sampler: Sampler(settings: options.sampling, vocab: gpt.config.vocab_size),
                      rng: RNG(seed: options.seed), visibility: AttentionVisibility(holes: options.holes, drawn: options.drawn),
                      tokens: [Int](repeating: -1, count: gpt.config.block_size))
        run.cache.reset()
        try prefill(condition, &run)
        progress?(1, 1)
        var lags: [Int] = []
        if let minWindow = options.adaptiveMinWindow {
            lags = try adaptiveLoop(&run, minWindow: minWindow, progress: progress)
        } else {
            var done = 1
            for step in schedule.steps.dropFirst() {
                let outputs = try forward(step.inputs, &run)
                for (j, cell) in outputs.enumerated() { run.tokens[cell] = pick(j, count: outputs.count, cell: cell, &run) }
                done += outputs.count
                progress?(done, run.passes)
            }
        }
        guard run.tokens.allSatisfy({ $0 >= 0 }) else { throw ZipARError("schedule left cells unsampled") }
        return GenerationResult(tokens: run.tokens, forwardPasses: run.passes, seconds: Date().timeIntervalSince(start),
                                rowStartLags: lags, forwardSeconds: run.forwardSeconds)
    }

    /// The condition prefix of each batch entry (cond first, then uncond), then token 0.
    private func prefill(_ condition: Condition, _ run: inout Run) throws {
        let c = gpt.config, cls = c.cls_token_num
        switch condition {
        case .classLabel(let label):
            guard !c.isT2I else { throw ZipARError("this t2i model needs a prompt or caption embeddings, not a class") }
            guard label >= 0, label < c.num_classes else { throw ZipARError("class \(label) is outside 0..<\(c.num_classes)") }
            try gpt.embedClass(label, into: state.input(0))
            if run.cfg { try gpt.embedClass(c.num_classes, into: state.input(1)) }
        case .caption(let features, let mask):
            guard c.isT2I else { throw ZipARError("this c2i model needs a class, not a caption") }
            guard features.shape == [cls, c.caption_dim], mask.count == cls else {
                throw ZipARError("caption embeddings must be [\(cls), \(c.caption_dim)] with a \(cls)-entry mask, got \(features.shape)")
            }
            run.visibility.captionMask = mask
            try gpt.embedCaption(features.data, into: state.input(0))
            if run.cfg, let u = gpt.uncond_embedding { try gpt.embedCaption(u.data, into: state.input(cls)) }
        }
        let B = run.cfg ? 2 : 1
        var positions: [Int] = [], batchOf: [Int] = []
        for b in 0..<B { for p in 0..<cls { positions.append(p); batchOf.append(b) } }
        gpt.forward(state: state, cache: run.cache, positions: positions, batchOf: batchOf, visibility: run.visibility,
                    logitRows: (0..<B).map { $0 * cls + cls - 1 })
        for p in 0..<cls { run.cache.markFinal(p) }
        run.cache.seal()
        run.passes = 1
        run.tokens[0] = pick(0, count: 1, cell: 0, prefill: true, &run)
    }

    /// One forward pass over `inputs` (x2 with CFG). Returns the cells whose logits were kept, in
    /// order: logits row j is the cond half, row j + count the uncond half.
    private func forward(_ inputs: [Schedule.Input], _ run: inout Run) throws -> [Int] {
        let cls = gpt.config.cls_token_num, n = inputs.count, B = run.cfg ? 2 : 1
        var positions: [Int] = [], batchOf: [Int] = [], logitRows: [Int] = [], outputs: [Int] = []
        positions.reserveCapacity(B * n); batchOf.reserveCapacity(B * n)
        for b in 0..<B {
            for (i, input) in inputs.enumerated() {
                guard let v = input.valueOf, run.tokens[v] >= 0 else { throw ZipARError("schedule feeds cell \(input.valueOf ?? -1) before it is sampled") }
                gpt.embedToken(run.tokens[v], into: state.input(b * n + i))
                positions.append(cls + input.slot); batchOf.append(b)
            }
        }
        for (i, input) in inputs.enumerated() { if let o = input.output { logitRows.append(i); outputs.append(o) } }
        if run.cfg { logitRows += logitRows.map { $0 + n } }
        run.forwardSeconds += Measure.time {
            gpt.forward(state: state, cache: run.cache, positions: positions, batchOf: batchOf, visibility: run.visibility, logitRows: logitRows)
            // A proxy's slot is overwritten by the real token later; every other input is final, and
            // complete blocks of final slots can be compressed (no-op for fp32/fp16).
            for input in inputs where input.role != .proxy { run.cache.markFinal(cls + input.slot) }
            run.cache.seal()
        }
        run.passes += 1
        return outputs
    }

    /// The logits for output j of the last pass (of `count`), guided when CFG applies to this token.
    private func logits(_ j: Int, count: Int, cell: Int, prefill: Bool = false, _ run: Run) -> UnsafeMutablePointer<Float> {
        let cond = state.logits(j)
        guard run.cfg && (prefill || run.sampler.settings.guides(tokenIndex: cell)) else { return cond }
        Sampler.guide(cond: cond, uncond: state.logits(j + count), scale: run.sampler.settings.cfgScale,
                      into: guided.data, count: run.sampler.vocab)
        return guided.data
    }

    private func pick(_ j: Int, count: Int, cell: Int, prefill: Bool = false, _ run: inout Run) -> Int {
        run.sampler.sample(logits(j, count: count, cell: cell, prefill: prefill, run), rng: &run.rng)
    }

    // MARK: adaptive window

    /// ZipAR's adaptive window: rows start as soon as a drafted first token survives a speculative
    /// accept/reject test against the prediction made with more of the row above, bounded by
    /// [minWindow, schedule.window]. Inputs follow the ideal schedule's rules (proxy = newest token of
    /// row max(r-2, 0) at the slot of (r-1, W-1); refresh of a proxied slot when its row ends).
    private func adaptiveLoop(_ run: inout Run, minWindow: Int, progress: ((Int, Int) -> Void)?) throws -> [Int] {
        let H = schedule.height, W = schedule.width, maxWindow = schedule.window, V = gpt.config.vocab_size
        guard minWindow >= 1, minWindow <= maxWindow else {
            throw ZipARError("--adaptive-window \(minWindow) must be between 1 and the window \(maxWindow)")
        }
        var done = [Int](repeating: 0, count: H)      // sampled tokens per row
        done[0] = 1
        var proxied = [Bool](repeating: false, count: H)   // slot (r, W-1) holds a proxy's K/V
        var pendingRow: Int? = nil                          // row whose first token is drafted, not yet accepted
        var draft = -1
        var draftProbs = [Float](repeating: 0, count: V), newProbs = [Float](repeating: 0, count: V)
        var lags = [Int](repeating: 0, count: H)
        var finishedLast: Int? = nil                        // row that finished in the previous pass
        var total = 1
        func cell(_ r: Int, _ c: Int) -> Int { r * W + c }

        while done[H - 1] < W {
            var inputs: [Schedule.Input] = []
            if let f = finishedLast, proxied[f] {
                inputs.append(.init(slot: cell(f, W - 1), valueOf: cell(f, W - 1), role: .refresh, output: nil))
                proxied[f] = false
            }
            finishedLast = nil
            // Rows already started advance by one token each.
            for r in 0..<H where done[r] > 0 && done[r] < W {
                inputs.append(.init(slot: cell(r, done[r] - 1), valueOf: cell(r, done[r] - 1), role: .own, output: cell(r, done[r])))
            }
            // The next row to start: drafted once the row above holds minWindow tokens.
            let next = (1..<H).first { done[$0] == 0 }
            var check: Int? = nil
            if let r = next, done[r - 1] >= min(minWindow, W) {
                if done[r - 1] == W {
                    if pendingRow == r { pendingRow = nil }     // row above complete: its real last token starts row r
                    inputs.append(.init(slot: cell(r - 1, W - 1), valueOf: cell(r - 1, W - 1), role: .rowStart, output: cell(r, 0)))
                } else {
                    let src = max(r - 2, 0)
                    inputs.append(.init(slot: cell(r - 1, W - 1), valueOf: cell(src, done[src] - 1), role: .proxy, output: cell(r, 0)))
                    proxied[r - 1] = true
                    check = r
                }
            }
            let before = done
            let outputs = try forward(inputs, &run)
            var sampled: [(row: Int, token: Int)] = []
            for (j, c) in outputs.enumerated() {
                let r = c / W
                if r == check {
                    // Draft (first time) or re-check of row r's first token.
                    let lg = logits(j, count: outputs.count, cell: c, run)
                    if pendingRow != r {
                        draft = run.sampler.sample(lg, rng: &run.rng, probabilities: &draftProbs)
                        pendingRow = r
                        if done[r - 1] >= maxWindow { sampled.append((r, draft)); pendingRow = nil }
                        continue
                    }
                    let (token, accepted) = run.sampler.recheck(draft: draft, draftProbs: draftProbs, logits: lg,
                                                                newProbs: &newProbs, rng: &run.rng)
                    if accepted || done[r - 1] >= maxWindow {
                        sampled.append((r, token)); pendingRow = nil
                    } else {
                        draft = token; swap(&draftProbs, &newProbs)   // the resample is exact for the new distribution
                    }
                } else {
                    sampled.append((r, pick(j, count: outputs.count, cell: c, &run)))
                }
            }
            for (r, t) in sampled {
                run.tokens[cell(r, done[r])] = t
                if done[r] == 0 && r > 0 { lags[r] = before[r - 1] }
                done[r] += 1
                if done[r] == W { finishedLast = r }
                total += 1
            }
            progress?(total, run.passes)
        }
        return Array(lags.dropFirst())
    }
}
