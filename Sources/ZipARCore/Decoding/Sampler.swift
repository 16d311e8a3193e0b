import CKernels
import Foundation

/// Sampling settings, with LlamaGen's meaning and order of operations.
public struct SamplingSettings: Equatable {
    public var cfgScale: Float = 4.0
    /// Guidance is dropped for decode iteration i (which produces token i+1) once i > cfgInterval; -1 = always.
    public var cfgInterval: Int = -1
    public var temperature: Float = 1.0
    /// 0 = off. top-k 1 is greedy decoding.
    public var topK: Int = 0
    /// 1.0 = off.
    public var topP: Float = 1.0
    /// true = argmax instead of a multinomial draw (LlamaGen's sample_logits=False).
    public var greedy = false

    public init() {}

    public func validate() throws {
        guard cfgScale.isFinite, cfgScale >= 0 else { throw ZipARError("--cfg-scale must be a finite number >= 0") }
        guard cfgInterval >= -1 else { throw ZipARError("--cfg-interval must be -1 (always) or >= 0") }
        guard temperature.isFinite, temperature >= 0 else { throw ZipARError("--temperature must be >= 0") }
        guard topK >= 0 else { throw ZipARError("--top-k must be >= 0 (0 = off)") }
        guard topP > 0, topP <= 1 else { throw ZipARError("--top-p must be in (0, 1]") }
    }

    /// CFG applies to a token when the scale is > 1 and the interval has not run out.
    /// `tokenIndex` is the raster index of the token being produced (prefill produces token 0).
    public func guides(tokenIndex: Int) -> Bool {
        guard cfgScale > 1 else { return false }
        return cfgInterval < 0 || tokenIndex - 1 <= cfgInterval
    }
}

/// Turns logits into one token: CFG, temperature, top-k, top-p, softmax, then a draw.
/// Owns its scratch buffers (one allocation per generation, none per token).
public final class Sampler {
    public let settings: SamplingSettings
    public let vocab: Int
    private var work: [Float]
    private var order: [Int32]
    private var select: [Float]
    private var counts = [Int32](repeating: 0, count: 1024)   // histogram bins of the top-k threshold

    public init(settings: SamplingSettings, vocab: Int) {
        self.settings = settings; self.vocab = vocab
        work = [Float](repeating: 0, count: vocab)
        order = [Int32](repeating: 0, count: vocab)
        select = [Float](repeating: 0, count: vocab)
    }

    /// guided = uncond + (cond - uncond) * scale, into `out`.
    public static func guide(cond: UnsafePointer<Float>, uncond: UnsafePointer<Float>, scale: Float,
                             into out: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { out[i] = uncond[i] + (cond[i] - uncond[i]) * scale }
    }

    /// The official logits -> probabilities filter: temperature, top-k (strictly below the k-th
    /// largest value goes), top-p on what is left (the first token crossing the threshold is kept),
    /// softmax. Filtered tokens get probability 0.
    public func probabilities(_ logits: UnsafePointer<Float>, into probs: UnsafeMutablePointer<Float>) {
        let n = vocab
        let invT = 1 / max(settings.temperature, 1e-5)
        for i in 0..<n { probs[i] = logits[i] * invT }
        if settings.topK > 0 && settings.topK < n {
            let kth = kthLargest(probs, n: n, k: settings.topK)
            ck_cut_below(probs, Int32(n), kth)
        }
        if settings.topP < 1 { applyTopP(probs, n: n, p: settings.topP) }
        softmax(probs, n: n)
    }

    /// Picks a token from logits (guided already) with the sampler's rule.
    public func sample(_ logits: UnsafePointer<Float>, rng: inout RNG) -> Int {
        if settings.greedy { return Ops.argmax(logits, count: vocab) }
        return work.withUnsafeMutableBufferPointer { buf in
            probabilities(logits, into: buf.baseAddress!)
            return draw(buf.baseAddress!, u: rng.nextUniform())
        }
    }

    /// One multinomial draw from unnormalised non-negative weights (in C: it visits only the
    /// nonzero ones, most of a 16k vocabulary after top-k).
    func draw(_ weights: UnsafePointer<Float>, u: Double) -> Int {
        order.withUnsafeMutableBufferPointer { Int(ck_draw(weights, Int32(vocab), u, $0.baseAddress!)) }
    }

    /// The k-th largest of x[0..<n], exactly (histogram of 1024 bins + quickselect in the winning bin, in C:
    /// a quickselect over all 16k logits in Swift mispredicted its way to ~0.2 ms per token).
    private func kthLargest(_ x: UnsafeMutablePointer<Float>, n: Int, k: Int) -> Float {
        counts.withUnsafeMutableBufferPointer { c in
            select.withUnsafeMutableBufferPointer { ck_kth_largest(x, Int32(n), Int32(k), c.baseAddress!, Int32(c.count), $0.baseAddress!) }
        }
    }

    private func applyTopP(_ x: UnsafeMutablePointer<Float>, n: Int, p: Float) {
        // Sort the surviving tokens by value (descending, stable on index), softmax, cumulative sum.
        var count = 0
        order.withUnsafeMutableBufferPointer { ord in
            for i in 0..<n where x[i] > -.infinity { ord[count] = Int32(i); count += 1 }
            var live = UnsafeMutableBufferPointer(rebasing: ord[0..<count])
            live.sort { (a: Int32, b: Int32) -> Bool in
                let va: Float = x[Int(a)], vb: Float = x[Int(b)]
                if va != vb { return va > vb }
                return a < b
            }
            guard count > 0 else { return }
            let mx = x[Int(live[0])]
            var total: Float = 0
            for i in 0..<count { total += exp(x[Int(live[i])] - mx) }
            var cum: Float = 0
            for i in 0..<count {
                let idx = Int(live[i])
                let prob = exp(x[idx] - mx) / total
                // remove when the cumulative mass BEFORE this token already exceeds p (shift by one)
                if i > 0 && cum > p { x[idx] = -.infinity }
                cum += prob
            }
        }
    }

    private func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        // Filtered (-inf) tokens stay exactly 0; at least one token always survives the filters.
        _ = ck_softmax_inplace(x, Int32(n))
    }
}

extension Sampler {
    /// Samples like `sample` and also returns the filtered distribution it drew from.
    public func sample(_ logits: UnsafePointer<Float>, rng: inout RNG, probabilities probs: inout [Float]) -> Int {
        probs.withUnsafeMutableBufferPointer { probabilities(logits, into: $0.baseAddress!) }
        if settings.greedy { return Ops.argmax(logits, count: vocab) }
        return draw(probs, rng: &rng)
    }

    /// Speculative-sampling check of a drafted token against a new prediction: accept with
    /// probability min(1, p_new(x) / p_old(x)); otherwise draw from the residual max(0, p_new - p_old)
    /// (renormalised), which makes the result an exact sample of p_new. Greedy: accept when the
    /// argmax is unchanged, else take the new argmax. `newProbs` receives p_new.
    public func recheck(draft: Int, draftProbs: [Float], logits: UnsafePointer<Float>, newProbs: inout [Float],
                        rng: inout RNG) -> (token: Int, accepted: Bool) {
        newProbs.withUnsafeMutableBufferPointer { probabilities(logits, into: $0.baseAddress!) }
        if settings.greedy {
            let best = Ops.argmax(logits, count: vocab)
            return (best, best == draft)
        }
        let pOld = Double(draftProbs[draft]), pNew = Double(newProbs[draft])
        if pOld > 0 && rng.nextUniform() < min(1, pNew / pOld) { return (draft, true) }
        var residual = [Float](repeating: 0, count: vocab)
        var mass: Float = 0
        for i in 0..<vocab { residual[i] = max(0, newProbs[i] - draftProbs[i]); mass += residual[i] }
        if mass <= 0 { return (draw(newProbs, rng: &rng), false) }
        return (draw(residual, rng: &rng), false)
    }

    func draw(_ weights: [Float], rng: inout RNG) -> Int {
        precondition(weights.count == vocab)
        return weights.withUnsafeBufferPointer { draw($0.baseAddress!, u: rng.nextUniform()) }
    }
}
