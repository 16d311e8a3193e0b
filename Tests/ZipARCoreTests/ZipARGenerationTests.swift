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
