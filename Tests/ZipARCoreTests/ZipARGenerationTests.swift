import XCTest
@testable import ZipARCore

/// ZipAR decoding through the real model against tokens from the official ZipAR code
/// (../shared/fixtures/zipar), in upstream mode (row 0 raster, unwritten slots visible) and masked mode.
final class ZipARGenerationTests: XCTestCase {
    func testGreedyTokensMatchUpstreamAndMaskedReference() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
        let io = try Fixtures.safetensors("zipar/gpt_c2i_tiny_zipar.io.safetensors")
        for (tag, scale) in [("cfg4", Float(4)), ("nocfg", Float(1))] {
            var o = GenerationOptions(); o.sampling.cfgScale = scale; o.sampling.greedy = true
            let raster = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: 8))
            XCTAssertEqual(try raster.generate(.classLabel(3), options: o).tokens, try io.ints("out.raster.\(tag).tokens"), "raster \(tag)")
            for s in [2, 4, 6] {
                let schedule = try Schedule.make(height: 8, width: 8, window: s, policy: .upstream)
                let gen = try Generator(gpt: gpt, schedule: schedule)
                XCTAssertEqual(schedule.stepOfCell(), try io.ints("out.zipar.s\(s).\(tag).step"), "steps s=\(s)")
                o.holes = true
                let up = try gen.generate(.classLabel(3), options: o)
                XCTAssertEqual(up.tokens, try io.ints("out.zipar.s\(s).\(tag).tokens"), "upstream s=\(s) \(tag)")
                XCTAssertEqual(up.forwardPasses, (try io.ints("out.zipar.s\(s).\(tag).step").max() ?? 0) + 1)
                o.holes = false
                let masked = try gen.generate(.classLabel(3), options: o)
                XCTAssertEqual(masked.tokens, try io.ints("ref.zipar_masked.s\(s).\(tag).tokens"), "masked s=\(s) \(tag)")
            }
        }
    }

    func testSamplingIsDeterministicPerSeedAndDiffersAcrossSeeds() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
        for s in [8, 3, 1] {
            let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: s))
            var o = GenerationOptions(); o.sampling.cfgScale = 2; o.sampling.topK = 100; o.seed = 7
            let a = try gen.generate(.classLabel(5), options: o), b = try gen.generate(.classLabel(5), options: o)
            XCTAssertEqual(a.tokens, b.tokens)
            o.seed = 8
            XCTAssertNotEqual(a.tokens, try gen.generate(.classLabel(5), options: o).tokens)
            XCTAssertEqual(a.forwardPasses, 7 * s + 8)
        }
    }
}

/// The drawn attention (AttentionVisibility.drawn) against the Python reference decode of
/// tools/tests/test_nextset.py: greedy tokens of the shared t2i fixture model, stored in
/// Tests/fixtures/drawn_greedy.json (the pytest test keeps that file current).
final class DrawnAttentionTests: XCTestCase {
    func testGreedyTokensMatchThePythonReference() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_t2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_t2i_tiny.weights.safetensors"))
        let io = try Fixtures.safetensors("llamagen/gpt_t2i_tiny.io.safetensors")
        let caption = try io.tensor("input.caption_embs").reshaped([120, cfg.caption_dim])
        let mask = try io.tensor("input.emb_mask").array.map { $0 > 0.5 }
        let want = try readJSONObject(Fixtures.packageRoot + "/Tests/fixtures/drawn_greedy.json")
        let runs = try XCTUnwrap(want["runs"] as? [[String: Any]])
        XCTAssertEqual(runs.count, 6)
        var differ = 0
        for run in runs {
            let s = try XCTUnwrap(run["window"] as? Int), scale = try XCTUnwrap(run["cfg_scale"] as? Double)
            let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: s))
            var o = GenerationOptions(); o.sampling.greedy = true; o.sampling.cfgScale = Float(scale)
            for mode in ["zipar", "drawn"] {
                o.drawn = mode == "drawn"
                let got = try gen.generate(.caption(features: caption, mask: mask), options: o)
                XCTAssertEqual(got.tokens, run[mode] as? [Int], "window \(s) cfg \(scale) \(mode)")
                XCTAssertEqual(got.forwardPasses, 7 * s + 8)
            }
            if (run["zipar"] as? [Int]) != (run["drawn"] as? [Int]) { differ += 1 }
        }
        XCTAssertGreaterThan(differ, 0, "the fixture must tell the two masks apart")
    }

    /// Raster order is the same under both masks; holes and drawn together are refused.
    func testRasterUnchangedAndHolesRefused() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
        let raster = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: 8))
        var o = GenerationOptions(); o.sampling.cfgScale = 2; o.sampling.topK = 50; o.seed = 3
        let plain = try raster.generate(.classLabel(1), options: o).tokens
        o.drawn = true
        XCTAssertEqual(try raster.generate(.classLabel(1), options: o).tokens, plain)
        o.holes = true
        XCTAssertThrowsError(try raster.generate(.classLabel(1), options: o))
    }
}

final class AdaptiveWindowTests: XCTestCase {
    func model() throws -> GPT {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        return try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
    }

    /// With the minimum window equal to the window, nothing is drafted early: the adaptive loop must
    /// reproduce the static ideal schedule token for token (same inputs, same RNG draws).
    func testMinEqualToWindowReproducesStaticSchedule() throws {
        let gpt = try model()
        for s in [1, 2, 5, 8] {
            let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: s))
            for greedy in [false, true] {
                var o = GenerationOptions(); o.sampling.cfgScale = 3; o.sampling.topK = 50; o.seed = 11; o.sampling.greedy = greedy
                let fixed = try gen.generate(.classLabel(2), options: o)
                o.adaptiveMinWindow = s
                let adaptive = try gen.generate(.classLabel(2), options: o)
                XCTAssertEqual(adaptive.tokens, fixed.tokens, "s=\(s) greedy=\(greedy)")
                XCTAssertEqual(adaptive.forwardPasses, fixed.forwardPasses)
                XCTAssertEqual(adaptive.rowStartLags, Array(repeating: s, count: 7))
            }
        }
    }

    func testAdaptiveLagsStayInBoundsAndPassesBetweenStaticCounts() throws {
        let gpt = try model()
        let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: 6))
        var o = GenerationOptions(); o.sampling.cfgScale = 2; o.sampling.topK = 20; o.adaptiveMinWindow = 2
        var early = 0
        for seed in 0..<6 {
            o.seed = UInt64(seed)
            let r = try gen.generate(.classLabel(seed % 10), options: o)
            XCTAssertEqual(r.tokens, try gen.generate(.classLabel(seed % 10), options: o).tokens, "deterministic")
            XCTAssertTrue(r.rowStartLags.allSatisfy { (3...6).contains($0) }, "\(r.rowStartLags)")
            XCTAssertTrue(r.forwardPasses >= 7 * 3 + 8 && r.forwardPasses <= 7 * 6 + 8, "\(r.forwardPasses)")
            XCTAssertTrue(r.tokens.allSatisfy { $0 >= 0 && $0 < 512 })
            early += r.rowStartLags.filter { $0 < 6 }.count
        }
        XCTAssertGreaterThan(early, 0, "some drafts should be accepted before the full window")
        o.adaptiveMinWindow = 7
        XCTAssertThrowsError(try gen.generate(.classLabel(1), options: o))
    }

    /// The accept/reject step keeps the new distribution exact: over many trials the empirical
    /// frequency of the result matches p_new, whatever the draft distribution was.
    func testRecheckSamplesTheNewDistribution() {
        var s = SamplingSettings(); s.topK = 0
        let sampler = Sampler(settings: s, vocab: 3)
        let oldLogits: [Float] = [2, 0, 0], newLogits: [Float] = [0, 1, 0]
        var rng = RNG(seed: 3)
        var pOld = [Float](repeating: 0, count: 3), pNew = pOld
        var counts = [0, 0, 0]
        let n = 20000
        for _ in 0..<n {
            let d = oldLogits.withUnsafeBufferPointer { sampler.sample($0.baseAddress!, rng: &rng, probabilities: &pOld) }
            let t = newLogits.withUnsafeBufferPointer { sampler.recheck(draft: d, draftProbs: pOld, logits: $0.baseAddress!, newProbs: &pNew, rng: &rng).token }
            counts[t] += 1
        }
        for i in 0..<3 { XCTAssertEqual(Double(counts[i]) / Double(n), Double(pNew[i]), accuracy: 0.015, "token \(i)") }
    }
}
