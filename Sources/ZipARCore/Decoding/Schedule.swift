// TEMPORARY raster-only stand-in with the agreed API; replaced by the full ZipAR schedule (branch sched).
public enum ZipARPolicy: String, CaseIterable { case ideal, upstream, eol }

public struct Schedule {
    public enum Role: Equatable { case prefill, own, rowStart, proxy, refresh, eol }
    public struct Input: Equatable { public let slot: Int; public let valueOf: Int?; public let role: Role; public let output: Int? }
    public struct Step { public let inputs: [Input]; public let outputs: [Int] }
    public let height: Int, width: Int, window: Int, policy: ZipARPolicy
    public let steps: [Step]
    public var forwardPasses: Int { steps.count }
    public var maxTokensPerStep: Int { steps.map { $0.outputs.count }.max() ?? 0 }

    public static func make(height: Int, width: Int, window: Int, policy: ZipARPolicy = .ideal) throws -> Schedule {
        var steps = [Step(inputs: [Input(slot: -1, valueOf: nil, role: .prefill, output: 0)], outputs: [0])]
        for k in 1..<(height * width) {
            steps.append(Step(inputs: [Input(slot: k - 1, valueOf: k - 1, role: .own, output: k)], outputs: [k]))
        }
        return Schedule(height: height, width: width, window: window, policy: policy, steps: steps)
    }
}
