import CKernels
import Foundation

/// Timing helpers shared by `zipar bench`. Every figure is a median of repeated runs and is
/// meant to be read as a ratio against something measured in the same run.
public enum Measure {
    public static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }

    public static func time(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// Read bandwidth in GB/s of streaming a buffer much larger than the caches with all workers
    /// (the limit a decode pass runs into). Best of `runs`.
    public static func readBandwidth(megabytes: Int = 512, runs: Int = 5) -> Double {
        let n = megabytes * 1024 * 1024 / 4
        let buf = Tensor(shape: [n])
        for i in stride(from: 0, to: n, by: 1024) { buf.data[i] = 1 }   // touch every page
        var best = 0.0
        var sink: Float = 0
        for _ in 0..<runs {
            let parts = Parallel.threads
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: parts)
            let t = time {
                Parallel.run(chunks: parts) { part, parts, _ in
                    let r = Parallel.range(part, of: parts, n: n, align: 1024)
                    sums[part] = ck_stream_sum(buf.data + r.lowerBound, r.count)
                }
            }
            sink += sums[0]
            sums.deallocate()
            best = max(best, Double(n * 4) / t / 1e9)
        }
        if sink == .infinity { print("") }  // keeps the sums alive
        return best
    }

    /// Median seconds of one GPT forward pass with `inputs` new tokens per batch entry (x2 with CFG),
    /// attending over a cache that is `filled` (fraction of the sequence already written).
    public static func forwardPass(gpt: GPT, inputs: Int, cfg: Bool, filled: Double = 0.5, runs: Int = 10,
                                   kvPrecision: KVCacheKind = .fp32, kvOptions: KVCacheOptions = KVCacheOptions()) -> Double {
        let B = cfg ? 2 : 1
        let c = gpt.config
        let state = ForwardState(config: c, maxRows: B * inputs, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: B, precision: kvPrecision, options: kvOptions)
        let upTo = c.cls_token_num + Int(Double(c.block_size) * filled)
        if kvPrecision.isQuantized {
            // A compressed cache attends to what it stores: fill it with random keys/values and seal
            // every complete block, as a generation would have by then.
            var rng = RNG(seed: 7)
            let k = Tensor(shape: [c.headDim]), v = Tensor(shape: [c.headDim])
            for s in 0..<upTo {
                for b in 0..<B { for l in 0..<c.n_layer { for h in 0..<c.kvHeads {
                    for i in 0..<c.headDim { k.data[i] = rng.nextNormal(); v.data[i] = rng.nextNormal() }
                    cache.store(b, l, h, slot: s, key: k.data, value: v.data)
                } } }
                cache.markFinal(s)
                cache.seal()           // complete blocks leave the recent buffer as they would in a generation
            }
        }
        for s in 0..<upTo { cache.markWritten(s) }
        var positions: [Int] = [], batchOf: [Int] = []
        for b in 0..<B { for i in 0..<inputs { positions.append(min(upTo + i, gpt.sequenceLength - 1)); batchOf.append(b) } }
        for r in 0..<(B * inputs) { gpt.embedToken(r % c.vocab_size, into: state.input(r)) }
        let logitRows = Array(0..<(B * inputs))
        var times: [Double] = []
        for _ in 0..<(runs + 1) {
            times.append(time {
                gpt.forward(state: state, cache: cache, positions: positions, batchOf: batchOf,
                            visibility: AttentionVisibility(), logitRows: logitRows)
            })
        }
        return median(Array(times.dropFirst()))   // first run warms caches and page tables
    }
}

extension Measure {
    /// x[M, k] · W[n, k]ᵀ for a weight far larger than the caches, three ways, in ms (median of `runs`):
    /// the streaming kernel (what decode passes use), one OpenBLAS sgemm, and M sgemv calls.
    public static func skinnyProducts(n: Int = 65536, k: Int = 768, rows: [Int] = [1, 2, 4, 6, 8, 16, 32, 64], runs: Int = 5)
        -> [(rows: Int, kernel: Double, sgemm: Double, sgemv: Double, w8: Double, w4: Double, w1: Double, w1Portable: Double)] {
        var rng = RNG(seed: 3)
        let w = Tensor(shape: [n, k])
        for i in 0..<w.count { w.data[i] = rng.nextNormal() * 0.02 }
        let maxM = rows.max() ?? 1
        let x = Tensor(shape: [maxM, k]), y = Tensor(shape: [maxM, n])
        for i in 0..<x.count { x.data[i] = rng.nextNormal() }
        let saved = Linear.sgemmMinRows
        defer { Linear.sgemmMinRows = saved }
        Linear.sgemmMinRows = Int.max
        let linear = Linear(weight: w)
        // The same product with integer weights: W8A8 per channel, W4 codes with DGQ-style group scales
        // (random codes and scales: only the kernel's speed is measured here), and W1 sign bits.
        let w8 = QuantizedLinear.w8a8(weight: w.data, rows: n, cols: k)
        let G = 128, ng = k / G
        var codes = [UInt8](repeating: 0, count: n * k)
        for i in 0..<codes.count { codes[i] = UInt8(truncatingIfNeeded: rng.next() % 16) }
        let w4 = QuantizedLinear(dgq: DGQWeight(rows: n, cols: k, groupSize: G, codes: codes, scales: [Int8](repeating: 8, count: n * ng),
                                                zeros: [Int8](repeating: 8, count: n * ng), rowScales: [Float](repeating: 1e-3, count: n)),
                                 inputScale: nil)
        let w1 = QuantizedLinear.w1(weight: w.data, rows: n, cols: k)
        func ms(_ body: () -> Void) -> Double {
            body()
            return median((0..<runs).map { _ in time(body) }) * 1e3
        }
        return rows.map { m in
            (m, ms { linear.apply(x.data, rows: m, into: y.data) },
             ms { BLAS.matmulNT(x.data, w.data, y.data, m: m, k: k, n: n) },
             ms { for i in 0..<m { BLAS.matvec(w.data, x.data + i * k, y.data + i * n, n: n, k: k) } },
             ms { w8.apply(x.data, rows: m, into: y.data) },
             ms { w4.apply(x.data, rows: m, into: y.data) },
             ms { w1.apply(x.data, rows: m, into: y.data) },
             // The portable W1 path on the same machine: what the vector path gains.
             { let level = ck_qkernel_level(); ck_qkernel_force(0); defer { ck_qkernel_force(level) }
               return ms { w1.apply(x.data, rows: m, into: y.data) } }())
        }
    }
}

extension Measure {
    /// One attention group (ck_attend_group: scores, softmax, values) of 1...maxQueries queries over `heads`
    /// separate fp32 key/value blocks of `slots` x 64 (together far larger than the caches, like a pass over
    /// every layer and head of GPT-B at 24x24), on one thread, in ms (median of `runs`).
    public static func attentionGroups(heads: Int = 288, slots: Int = 400, maxQueries: Int = 4, runs: Int = 9) -> [(queries: Int, ms: Double)] {
        let d = 64
        var rng = RNG(seed: 5)
        let k = Tensor(shape: [heads * slots * d]), v = Tensor(shape: [heads * slots * d])
        for i in 0..<k.count { k.data[i] = rng.nextNormal(); v.data[i] = rng.nextNormal() }
        let q = (0..<(maxQueries * d)).map { _ in rng.nextNormal() * 0.125 }
        let masks = [UInt8](repeating: 1, count: maxQueries * slots)
        let offsets = (0..<maxQueries).map { Int32($0 * slots) }
        var scores = [Float](repeating: 0, count: maxQueries * slots), out = [Float](repeating: 0, count: maxQueries * d)
        return (1...maxQueries).map { nq in
            let times = (0..<(runs + 1)).map { _ in
                time {
                    for h in 0..<heads {
                        ck_attend_group(q, Int32(d), k.data + h * slots * d, v.data + h * slots * d, masks, offsets, Int32(nq), Int32(slots),
                                        Int32(d), 0.125, 0, &scores, &out, Int32(d))
                    }
                } * 1e3
            }
            return (nq, median(Array(times.dropFirst())))
        }
    }
}

/// Optional per-component timing of forward passes (`zipar bench --profile`). Off (nil) by default;
/// when on, each pass adds a clock read per component.
public final class PassProfiler {
    public static var current: PassProfiler? = nil
    public private(set) var totals: [String: Double] = [:]
    public var passes = 0
    private var last: UInt64 = 0

    public init() {}
    func start() { last = DispatchTime.now().uptimeNanoseconds }
    func lap(_ name: String) {
        let now = DispatchTime.now().uptimeNanoseconds
        totals[name, default: 0] += Double(now - last) / 1e9
        last = now
    }

    /// "wqkv 5.8, attention 3.1, ..." in ms per pass.
    public var summary: String {
        totals.sorted { $0.value > $1.value }.map { String(format: "%@ %.1f", $0.key, $0.value / Double(max(passes, 1)) * 1e3) }
            .joined(separator: ", ")
    }
}
