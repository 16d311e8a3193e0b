import CKernels
import Foundation
import XCTest
@testable import ZipARCore

/// The GPT against golden tensors from the official LlamaGen code (../shared/fixtures/llamagen).
final class GPTTests: XCTestCase {
    func load(_ name: String) throws -> (GPT, SafeTensorsFile) {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/\(name).config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/\(name).weights.safetensors"))
        return (gpt, try Fixtures.safetensors("llamagen/\(name).io.safetensors"))
    }

    func assertClose(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int, tol: Float = 1e-4, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        let e = maxAbsDiff(a, b, count: n)
        XCTAssertLessThan(e, tol, "\(what): max abs diff \(e)", file: file, line: line)
    }

    func testRoPETableMatchesFixture() throws {
        for name in ["gpt_c2i_tiny", "gpt_t2i_tiny"] {
            let (gpt, io) = try load(name)
            let ref = try io.tensor("freqs_cis")          // [P, pairs, 2]
            XCTAssertEqual(ref.shape, [gpt.rope.positions, gpt.rope.pairs, 2])
            var e: Float = 0
            for i in 0..<(gpt.rope.positions * gpt.rope.pairs) {
                e = max(e, abs(ref[2 * i] - gpt.rope.cos[i]), abs(ref[2 * i + 1] - gpt.rope.sin[i]))
            }
            XCTAssertLessThan(e, 1e-5, name)
        }
    }

    /// Teacher-forced forward over the whole sequence in one pass (the sgemm path).
    func teacherForced(_ gpt: GPT, label: Int, tokens: [Int]) throws -> Tensor {
        let n = 1 + tokens.count, V = gpt.config.vocab_size
        let state = ForwardState(config: gpt.config, maxRows: n, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: 1)
        try gpt.embedClass(label, into: state.input(0))
        for (i, t) in tokens.enumerated() { gpt.embedToken(t, into: state.input(i + 1)) }
        gpt.forward(state: state, cache: cache, positions: Array(0..<n), batchOf: Array(repeating: 0, count: n),
                    visibility: AttentionVisibility(), logitRows: Array(0..<n))
        let out = Tensor(shape: [n, V])
        out.data.update(from: state.logits(0), count: n * V)
        return out
    }

    func testC2ITeacherForcedLogits() throws {
        for name in ["gpt_c2i_tiny", "gpt_c2i_tiny_gqa"] {
            let (gpt, io) = try load(name)
            let tokens = try io.ints("input.tokens")
            // Keep references alive while their pointers are used.
            let cond = try teacherForced(gpt, label: 3, tokens: tokens), condRef = try io.tensor("out.logits_full")
            assertClose(cond.data, condRef.data, cond.count, "\(name) cond")
            let uncond = try teacherForced(gpt, label: 10, tokens: tokens), uncondRef = try io.tensor("out.logits_full_uncond")
            assertClose(uncond.data, uncondRef.data, uncond.count, "\(name) uncond")
        }
    }

    /// Step-by-step KV-cache decoding (the streaming-kernel path), batch 1 and the CFG batch of 2.
    func testC2IKVCacheStepsAndCFG() throws {
        for name in ["gpt_c2i_tiny", "gpt_c2i_tiny_gqa"] {
            let (gpt, io) = try load(name)
            let tokens = try io.ints("input.tokens"), V = gpt.config.vocab_size
            let single = try io.tensor("out.logits_kv_steps"), raw = try io.tensor("out.cfg_raw_logits")
            let guidedRef = try io.tensor("out.cfg_guided_logits")
            for B in [1, 2] {
                let state = ForwardState(config: gpt.config, maxRows: 2, slots: gpt.sequenceLength)
                let cache = gpt.makeCache(batch: B)
                for step in 0..<5 {
                    for b in 0..<B {
                        if step == 0 { try gpt.embedClass(b == 0 ? 3 : 10, into: state.input(b)) }
                        else { gpt.embedToken(tokens[step - 1], into: state.input(b)) }
                    }
                    gpt.forward(state: state, cache: cache, positions: Array(repeating: step, count: B), batchOf: Array(0..<B),
                                visibility: AttentionVisibility(), logitRows: Array(0..<B))
                    if B == 1 {
                        assertClose(state.logits(0), single.data + step * V, V, "\(name) kv step \(step)")
                    } else {
                        assertClose(state.logits(0), raw.data + step * V, V, "\(name) cfg cond step \(step)")
                        assertClose(state.logits(1), raw.data + (5 + step) * V, V, "\(name) cfg uncond step \(step)")
                        let g = Tensor(shape: [V])
                        Sampler.guide(cond: state.logits(0), uncond: state.logits(1), scale: 4, into: g.data, count: V)
                        assertClose(g.data, guidedRef.data + step * V, V, "\(name) guided step \(step)")
                    }
                }
            }
        }
    }

    func testSamplerFilterMatchesOfficial() throws {
        for name in ["gpt_c2i_tiny", "gpt_c2i_tiny_gqa"] {
            let (gpt, io) = try load(name)
            let V = gpt.config.vocab_size
            let guided = try io.tensor("out.cfg_guided_logits")
            let probs = Tensor(shape: [V])
            func check(_ t: Float, _ k: Int, _ p: Float, _ ref: Tensor, steps: Int) {
                var s = SamplingSettings(); s.temperature = t; s.topK = k; s.topP = p
                let sampler = Sampler(settings: s, vocab: V)
                for step in 0..<steps {
                    sampler.probabilities(guided.data + step * V, into: probs.data)
                    assertClose(probs.data, ref.data + step * V, V, "\(name) probs t=\(t) k=\(k) p=\(p) step \(step)")
                    // filtered tokens are exactly zero in both
                    for i in 0..<V { XCTAssertEqual(probs[i] == 0, ref[step * V + i] == 0) }
                }
            }
            check(0.9, 50, 0.9, try io.tensor("out.filtered_probs"), steps: 5)
            check(1.0, 50, 1.0, try io.tensor("out.filtered_probs_topk_only"), steps: 1)
            check(1.0, 0, 0.8, try io.tensor("out.filtered_probs_topp_only"), steps: 1)
        }
    }

    func testGreedyGenerationMatchesOfficial() throws {
        let (gpt, io) = try load("gpt_c2i_tiny")
        let schedule = try Schedule.make(height: 8, width: 8, window: 8)
        let gen = try Generator(gpt: gpt, schedule: schedule)
        for (interval, key) in [(-1, "out.greedy_tokens_cfg4"), (10, "out.greedy_tokens_cfg4_interval10")] {
            var o = GenerationOptions(); o.sampling.cfgScale = 4; o.sampling.cfgInterval = interval; o.sampling.greedy = true
            let r = try gen.generate(.classLabel(3), options: o)
            XCTAssertEqual(r.tokens, try io.ints(key), key)
            XCTAssertEqual(r.forwardPasses, 64)
        }
        // top-k 1 through the sampling path is greedy too.
        var o = GenerationOptions(); o.sampling.cfgScale = 4; o.sampling.topK = 1; o.seed = 99
        XCTAssertEqual(try gen.generate(.classLabel(3), options: o).tokens, try io.ints("out.greedy_tokens_cfg4"))
    }

    func t2iCaption(_ io: SafeTensorsFile) throws -> (Tensor, [Bool]) {
        let caption = try io.tensor("input.caption_embs")
        let mask = try io.tensor("input.emb_mask").array.map { $0 > 0.5 }
        return (caption.reshaped([120, caption.shape[2]]), mask)
    }

    func testT2IPrefillCacheStepsAndGreedy() throws {
        let (gpt, io) = try load("gpt_t2i_tiny")
        let (caption, mask) = try t2iCaption(io)
        let tokens = try io.ints("input.tokens"), V = gpt.config.vocab_size, cls = 120
        let state = ForwardState(config: gpt.config, maxRows: 2 * cls, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: 2)
        try gpt.embedCaption(caption.data, into: state.input(0))
        try gpt.embedCaption(gpt.uncond_embedding!.data, into: state.input(cls))
        let vis = AttentionVisibility(captionMask: mask)
        gpt.forward(state: state, cache: cache, positions: Array(0..<cls) + Array(0..<cls),
                    batchOf: Array(repeating: 0, count: cls) + Array(repeating: 1, count: cls), visibility: vis,
                    logitRows: Array(0..<(2 * cls)))
        let prefillRef = try io.tensor("out.prefill_logits_all_positions")
        assertClose(state.logits(0), prefillRef.data, 2 * cls * V, "t2i prefill logits (all positions, both halves)")
        let raw = try io.tensor("out.cfg_raw_logits")
        assertClose(state.logits(cls - 1), raw.data, V, "t2i step 0 cond")
        assertClose(state.logits(2 * cls - 1), raw.data + 5 * V, V, "t2i step 0 uncond")
        for step in 1..<5 {
            gpt.embedToken(tokens[step - 1], into: state.input(0)); gpt.embedToken(tokens[step - 1], into: state.input(1))
            gpt.forward(state: state, cache: cache, positions: [cls + step - 1, cls + step - 1], batchOf: [0, 1],
                        visibility: vis, logitRows: [0, 1])
            assertClose(state.logits(0), raw.data + step * V, V, "t2i step \(step) cond")
            assertClose(state.logits(1), raw.data + (5 + step) * V, V, "t2i step \(step) uncond")
        }
        let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: 8))
        var o = GenerationOptions(); o.sampling.cfgScale = 7.5; o.sampling.greedy = true
        XCTAssertEqual(try gen.generate(.caption(features: caption, mask: mask), options: o).tokens, try io.ints("out.greedy_tokens_cfg7.5"))
    }

    /// Every kernel path the CPU has (AVX-512, AVX2, portable C), against a double-precision reference.
    func testStreamingKernelMatchesNaive() throws {
        try forEachKernelPath { _ in
            try checkStreamingKernel()
        }
    }

    /// The attention kernel (scores, masked softmax, weighted values; fp32 and fp16 storage; AVX-512,
    /// AVX2 and tails) against a Double reference, with random masks that include fully masked rows.
    func testAttentionKernelMatchesNaive() {
        var rng = RNG(seed: 21)
        forEachKernelPath { path in
            for (nq, n, d) in [(1, 1, 64), (3, 17, 64), (6, 600, 64), (9, 70, 64), (2, 33, 32), (4, 100, 128), (5, 31, 40), (2, 16, 16)] {
                let q = (0..<(nq * d)).map { _ in rng.nextNormal() }
                let k = (0..<(n * d)).map { _ in rng.nextNormal() }, v = (0..<(n * d)).map { _ in rng.nextNormal() }
                var masks = (0..<(nq * n)).map { _ in UInt8(rng.next() % 4 == 0 ? 0 : 1) }
                if nq > 2 { for j in 0..<n { masks[n + j] = 0 } }       // query 1 sees nothing
                let offsets = (0..<nq).map { Int32($0 * n) }
                let scale = 1 / Float(d).squareRoot()
                let k16 = k.map { Float16($0).bitPattern }, v16 = v.map { Float16($0).bitPattern }
                for half in [false, true] {
                    // The reference reads the same (rounded) keys and values as the kernel.
                    let kr = half ? k.map { Float(Float16($0)) } : k, vr = half ? v.map { Float(Float16($0)) } : v
                    for sab in [false, true] {
                        var want = [Double](repeating: 0, count: nq * d)
                        for i in 0..<nq {
                            var s = [Double](repeating: -.infinity, count: n)
                            for j in 0..<n where masks[i * n + j] != 0 {
                                s[j] = (0..<d).reduce(0.0) { $0 + Double(q[i * d + $1]) * Double(kr[j * d + $1]) } * Double(scale)
                            }
                            guard let mx = s.max(), mx > -.infinity else { continue }
                            let e = s.map { $0 == -.infinity ? 0 : Foundation.exp($0 - mx) }, total = e.reduce(0, +)
                            // SAB: p >= 0.25 * max p (max p = 1 / total) -> 1, else 0; no renormalisation.
                            let p = sab ? e.map { $0 / total >= 0.25 / total ? 1.0 : 0.0 } : e.map { $0 / total }
                            for j in 0..<n { for c in 0..<d { want[i * d + c] += p[j] * Double(vr[j * d + c]) } }
                        }
                        var scores = [Float](repeating: 0, count: nq * n), out = [Float](repeating: 7, count: nq * d)
                        let sb: Int32 = sab ? 1 : 0
                        if half { ck_attend_group_f16(q, Int32(d), k16, v16, masks, offsets, Int32(nq), Int32(n), Int32(d), scale, sb, &scores, &out, Int32(d)) }
                        else { ck_attend_group(q, Int32(d), k, v, masks, offsets, Int32(nq), Int32(n), Int32(d), scale, sb, &scores, &out, Int32(d)) }
                        let tol = (half ? 1e-3 : 2e-5) * (sab ? 4 : 1)
                        let err = zip(out, want).map { abs(Double($0) - $1) }.max()!
                        XCTAssertLessThan(err, tol, "path=\(path) half=\(half) sab=\(sab) nq=\(nq) n=\(n) d=\(d)")
                        if sab { XCTAssertTrue(scores.allSatisfy { $0 == 0 || $0 == 1 }, "SAB probabilities are 0 or 1") }
                    }
                }
            }
        }
    }

    /// SwiGLU and the sampler's softmax (vectorised exp) against Double references, with tails.
    func testSwiGLUAndSoftmaxKernels() {
        var rng = RNG(seed: 8)
        forEachKernelPath { path in
            for n in [1, 15, 16, 37, 2048] {
                let a = (0..<n).map { _ in rng.nextNormal() * 6 }, b = (0..<n).map { _ in rng.nextNormal() }
                var y = a
                Ops.swiGLU(&y, b, count: n)
                for i in 0..<n {
                    let x = Double(a[i]), want = x / (1 + Foundation.exp(-x)) * Double(b[i])
                    XCTAssertEqual(Double(y[i]), want, accuracy: 1e-6 * max(1, abs(want)), "swiglu n=\(n) path=\(path)")
                }
                var p = a
                for i in stride(from: 0, to: n, by: 3) where n > 1 { p[i] = -.infinity }
                let live = p.filter { $0 > -.infinity }, mx = Double(live.max()!)
                let total = live.reduce(0.0) { $0 + Foundation.exp(Double($1) - mx) }
                var q = p
                XCTAssertEqual(ck_softmax_inplace(&q, Int32(n)), 1)
                for i in 0..<n {
                    let want = p[i] == -.infinity ? 0 : Foundation.exp(Double(p[i]) - mx) / total
                    if p[i] == -.infinity { XCTAssertEqual(q[i], 0) } else { XCTAssertEqual(Double(q[i]), want, accuracy: 1e-5 * max(want, 1e-3)) }
                }
            }
        }
    }

    /// The sampler's C pieces against plain references, with and without AVX-512: the exact k-th
    /// largest (sorted copy), the top-k cut, and the multinomial draw (the running double sum over
    /// every index, the rule the sampler had in Swift).
    func testSamplerKernelsMatchReferences() {
        var rng = RNG(seed: 21)
        var counts = [Int32](repeating: 0, count: 1024)
        forEachKernelPath { path in
            for n in [1, 17, 65, 100, 2048, 16384] {
                for kind in 0..<4 {
                    // normal; one far outlier (the range collapses into a bin or two); 7 distinct values; some -inf
                    var x = (0..<n).map { _ in rng.nextNormal() * 3 }
                    if kind == 1 { x[n / 2] = 1e6 }
                    if kind == 2 { x = x.map { Float(Int($0) % 7) } }
                    if kind == 3 { for i in stride(from: 0, to: n, by: 5) { x[i] = -.infinity } }
                    let sorted = x.sorted(by: >)
                    for k in Set([1, 2, n / 3 + 1, min(n, 2000), n]) where k <= n {
                        var scratch = [Float](repeating: 0, count: n)
                        let got = ck_kth_largest(x, Int32(n), Int32(k), &counts, 1024, &scratch)
                        XCTAssertEqual(got, sorted[k - 1], "kth n=\(n) kind=\(kind) k=\(k) path=\(path)")
                        var cut = x
                        ck_cut_below(&cut, Int32(n), got)
                        for i in 0..<n { XCTAssertEqual(cut[i], x[i] < got ? -.infinity : x[i]) }
                    }
                    // Weights with many exact zeros (as after top-k), and every u edge.
                    let w = x.map { $0 > 1 ? Foundation.exp($0 - 5) : 0 }
                    var live = [Int32](repeating: 0, count: n)
                    for u in [0, 1e-9, 0.25, 0.5, 0.999999, Double(rng.nextUniform())] {
                        var total: Double = 0
                        for v in w { total += Double(v) }
                        var acc: Double = 0, want = 0
                        for (i, v) in w.enumerated() where v > 0 {
                            acc += Double(v); want = i
                            if acc > u * total { break }
                        }
                        XCTAssertEqual(Int(ck_draw(w, Int32(n), u, &live)), want, "draw n=\(n) kind=\(kind) u=\(u) path=\(path)")
                    }
                }
            }
        }
    }

    func checkStreamingKernel() throws {
        var rng = RNG(seed: 5)
        for (m, k, n) in [(1, 64, 36), (2, 768, 260), (3, 100, 7), (5, 64, 37), (6, 392, 300), (7, 33, 13), (8, 512, 29), (11, 520, 14), (16, 200, 257), (31, 24, 9), (40, 64, 64), (6, 2100, 20), (4, 3072, 9)] {
            let x = Tensor(shape: [m, k]), w = Tensor(shape: [n, k])
            for i in 0..<x.count { x[i] = rng.nextNormal() }
            for i in 0..<w.count { w[i] = rng.nextNormal() }
            let y = Tensor(shape: [m, n])
            Linear(weight: w).apply(x.data, rows: m, into: y.data)
            var e: Float = 0
            for i in 0..<m { for j in 0..<n {
                var acc: Double = 0
                for p in 0..<k { acc += Double(x[i * k + p]) * Double(w[j * k + p]) }
                e = max(e, abs(Float(acc) - y[i * n + j]))
            } }
            XCTAssertLessThan(e, 1e-3, "m=\(m) k=\(k) n=\(n)")
        }
    }
}

final class HalfKVCacheTests: XCTestCase {
    func testHalfConversionMatchesSwiftFloat16() {
        var rng = RNG(seed: 9)
        var xs: [Float] = [0, -0, 1, -2.5, 65504, 70000, -70000, 1e-8, 6e-5, 3e-7, .infinity, -.infinity, 0.1, 1.0009766, 1.0004883]
        for _ in 0..<1000 { xs.append(rng.nextNormal() * Float(pow(10.0, Double(Int(rng.next() % 9)) - 4))) }
        var out = [UInt16](repeating: 0, count: xs.count)
        ck_f32_to_f16(xs, &out, Int32(xs.count))
        for (i, x) in xs.enumerated() { XCTAssertEqual(out[i], Float16(x).bitPattern, "\(x)") }
    }

    /// An fp16 cache gives the fp32 logits to within half-precision rounding of K and V, at half the bytes.
    func testFP16CacheLogitsCloseToFP32() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
        let io = try Fixtures.safetensors("llamagen/gpt_c2i_tiny.io.safetensors")
        let tokens = try io.ints("input.tokens"), V = cfg.vocab_size
        let raw = try io.tensor("out.cfg_raw_logits")
        let state = ForwardState(config: cfg, maxRows: 2, slots: gpt.sequenceLength)
        let cache = gpt.makeCache(batch: 2, precision: .fp16)
        XCTAssertEqual(cache.bytes * 2, gpt.makeCache(batch: 2).bytes)
        var worst: Float = 0
        for step in 0..<5 {
            for b in 0..<2 {
                if step == 0 { try gpt.embedClass(b == 0 ? 3 : 10, into: state.input(b)) } else { gpt.embedToken(tokens[step - 1], into: state.input(b)) }
            }
            gpt.forward(state: state, cache: cache, positions: [step, step], batchOf: [0, 1], visibility: AttentionVisibility(), logitRows: [0, 1])
            worst = max(worst, maxAbsDiff(state.logits(0), raw.data + step * V, count: V), maxAbsDiff(state.logits(1), raw.data + (5 + step) * V, count: V))
        }
        XCTAssertLessThan(worst, 2e-2)
        XCTAssertGreaterThan(worst, 0, "fp16 storage should change the logits a little")
        // Whole generations work with every schedule and stay deterministic.
        let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: 3), kvPrecision: .fp16)
        var o = GenerationOptions(); o.sampling.cfgScale = 4; o.sampling.topK = 20; o.seed = 4
        XCTAssertEqual(try gen.generate(.classLabel(3), options: o).tokens, try gen.generate(.classLabel(3), options: o).tokens)
    }
}
