import XCTest
@testable import ZipARCore
final class PerfProbeTests: XCTestCase {
    func testProbe() throws {
        guard ProcessInfo.processInfo.environment["ZIPAR_PROBE"] != nil else { return }
        let gpt = try GPT(randomWithConfig: try GPTConfig.named("gpt-b", grid: 16), seed: 1)
        let bw = Measure.readBandwidth()
        let mb = Double(gpt.streamedBytesPerPass) / 1e6
        print(String(format: "bandwidth %.1f GB/s, weights %.0f MB, limit %.1f ms", bw, mb, mb / bw))
        for k in [1, 2, 3, 4, 8, 16] {
            for cfg in [false, true] {
                let t = Measure.forwardPass(gpt: gpt, inputs: k, cfg: cfg)
                print(String(format: "inputs %2d cfg %d: %.2f ms (%.2fx limit)", k, cfg ? 1 : 0, t * 1e3, t * 1e3 / (mb / bw)))
            }
        }
    }
}
