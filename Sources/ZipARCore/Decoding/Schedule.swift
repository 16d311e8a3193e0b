// ZipAR "next-set" decoding schedule as pure data: which cells each forward pass samples and which
// tokens it feeds at which cache slots. No model is involved; see specs/zipar-spec.md §1–2.

/// How rows start and how far apart they run.
public enum ZipARPolicy: String, CaseIterable, Sendable {
    /// The paper's rule: row r trails row r−1 by `window` columns from the very first step.
    /// Cell (r, c) is sampled at step r·s + c; (H−1)·s + W passes. Rows start with a proxy input.
    case ideal
    /// The LlamaGen-ZipAR code: row 0 is decoded fully in raster first, row 1 starts right after it,
    /// later rows trail by `window` columns and start with a proxy. 2W + (H−2)·s passes for 2 ≤ s ≤ W−1.
    /// s = W is plain raster here (upstream's s = W copy bug is not reproduced), and s = 1 follows the same
    /// rule (2W + H − 2 passes) although the upstream code itself cannot run it.
    case upstream
    /// Models with an end-of-line token per row (Lumina-mGPT, Emu3): each row starts from its EOL,
    /// which is exact, and the window counts that EOL, so the lag is `window − 1` columns.
    /// (H−1)·(s−1) + W passes; raster decoding would take H·(W+1) because each EOL costs a pass.
    case eol
}

/// A fixed ZipAR schedule for an H×W token grid.
///
/// Cells (`Step.outputs`, `Input.valueOf`, `Input.output`, `stepOfCell()`) are always image raster
/// indices k = row·W + col, for every policy. Slots (`Input.slot`) are cache positions after the
/// condition prefix, and their layout depends on the policy:
/// - ideal / upstream: slot = row·W + col, the same as the cell index;
/// - eol: every row is followed by its end-of-line token, so slot = row·(W+1) + col for a cell and
///   row·(W+1) + W for the EOL after row `row`. The EOL of the last row is never needed.
public struct Schedule: Equatable, Sendable {
    public enum Role: String, Sendable {
        /// The condition prefix; its logits give cell 0.
        case prefill
        /// (r, c−1) at its own slot, predicting (r, c).
        case own
        /// The real last token of the complete row above, at its own slot, predicting (r, 0).
        case rowStart
        /// Stand-in for the not yet decoded (r−1, W−1): a token fed at that cell's slot to predict (r, 0).
        case proxy
        /// A row's real last token written at its own slot once sampled; its logits are thrown away.
        case refresh
        /// The end-of-line token before row r (eol policy), predicting (r, 0). It is exact, never sampled.
        case eol
    }

    public struct Input: Equatable, Sendable {
        /// Cache slot the input sits at (see the layout above); −1 for the prefill.
        public let slot: Int
        /// Cell whose sampled token is fed; nil for the prefill and for an EOL.
        public let valueOf: Int?
        public let role: Role
        /// Cell sampled from this input's logits; nil for a refresh.
        public let output: Int?

        public init(slot: Int, valueOf: Int?, role: Role, output: Int?) {
            self.slot = slot
            self.valueOf = valueOf
            self.role = role
            self.output = output
        }
    }

    /// One forward pass. Inputs are in the order upstream feeds them: the refresh (if any) first, then
    /// one query per active row in ascending row order. `outputs` lists the sampled cells in that order.
    public struct Step: Equatable, Sendable {
        public let inputs: [Input]
        public let outputs: [Int]

        public init(inputs: [Input], outputs: [Int]) {
            self.inputs = inputs
            self.outputs = outputs
        }
    }

    public let height: Int
    public let width: Int
    public let window: Int
    public let policy: ZipARPolicy
    public let steps: [Step]

    /// Columns by which each row trails the row above (`window`, or `window − 1` for eol).
    public var lag: Int { policy == .eol ? window - 1 : window }
    /// Cache slots per grid row: W, or W + 1 with the EOL (eol).
    public var slotsPerRow: Int { policy == .eol ? width + 1 : width }
    /// Cache slot of a cell (raster index) in this schedule's layout.
    public func slot(ofCell cell: Int) -> Int { (cell / width) * slotsPerRow + cell % width }

    public var forwardPasses: Int { steps.count }
    /// Forward passes of plain one-token-at-a-time decoding: H·W, or H·(W+1) when every EOL costs a pass.
    public var rasterPasses: Int { height * slotsPerRow }
    /// Most cells sampled by one pass (a refresh is not counted: it samples nothing).
    public var maxTokensPerStep: Int { steps.map { $0.outputs.count }.max() ?? 0 }
    public var meanTokensPerStep: Double { Double(height * width) / Double(max(steps.count, 1)) }

    /// Largest grid accepted: far above any real model (90×90 = 8100), small enough to stay instant.
    public static let maxCells = 1 << 22

    public static func make(height: Int, width: Int, window: Int, policy: ZipARPolicy = .ideal) throws -> Schedule {
        guard height >= 1, width >= 1 else {
            throw ZipARError("the grid must be at least 1x1 tokens, got \(height)x\(width)")
        }
        let (cells, overflow) = height.multipliedReportingOverflow(by: width)
        guard !overflow, cells <= maxCells else {
            throw ZipARError("the grid \(height)x\(width) has more than \(maxCells) tokens")
        }
        if policy == .eol {
            // The eol window counts the EOL lead, so window 1 would mean lag 0: every row would start at
            // step 0 without seeing a single token of the row above.
            guard width >= 2 else { throw ZipARError("the eol policy needs a grid at least 2 tokens wide") }
            guard (2...width).contains(window) else {
                throw ZipARError("the eol window counts the end-of-line token and must be in 2...\(width) for a grid \(width) wide, got \(window)")
            }
        } else {
            guard (1...width).contains(window) else {
                throw ZipARError("the window must be in 1...\(width) for a grid \(width) wide (\(width) = raster), got \(window)")
            }
        }
        return Schedule(height: height, width: width, window: window, policy: policy,
                        steps: buildSteps(height: height, width: width, window: window, policy: policy))
    }

    /// Simulates the rule step by step. Every cell that is ready is sampled in the same pass.
    private static func buildSteps(height H: Int, width W: Int, window: Int, policy: ZipARPolicy) -> [Step] {
        let lag = policy == .eol ? window - 1 : window
        let slotsPerRow = policy == .eol ? W + 1 : W
        func cell(_ r: Int, _ c: Int) -> Int { r * W + c }
        func slot(_ r: Int, _ c: Int) -> Int { r * slotsPerRow + c }

        var done = [Int](repeating: 0, count: H)          // sampled cells per row (always a prefix)
        // Rows whose last slot must get the real token once the row is finished: a proxy sat there
        // (ideal/upstream), or nothing was written there yet (eol: rows start from the EOL instead).
        var needsRefresh = [Bool](repeating: policy == .eol, count: H)
        needsRefresh[H - 1] = false                       // the last cell is never fed
        var finishedLastStep: [Int] = []
        var steps: [Step] = []

        while done[H - 1] < W {
            var inputs: [Input] = []
            // Refresh first. One row at most finishes per pass (rows lag by ≥ 1 column), so this is at most one.
            for r in finishedLastStep where needsRefresh[r] {
                inputs.append(Input(slot: slot(r, W - 1), valueOf: cell(r, W - 1), role: .refresh, output: nil))
            }

            // Readiness is decided on the counts before this pass, so rows sampled together are independent.
            var ready: [Int] = []
            for r in 0..<H where done[r] < W {
                if r > 0 {
                    if done[r - 1] < min(done[r] + lag, W) { continue }
                    if policy == .upstream && done[0] < W { continue }   // upstream: row 0 is raster first
                }
                ready.append(r)
            }

            var outputs: [Int] = []
            for r in ready {
                let c = done[r]
                let out = cell(r, c)
                if c > 0 {
                    inputs.append(Input(slot: slot(r, c - 1), valueOf: cell(r, c - 1), role: .own, output: out))
                } else if r == 0 {
                    inputs.append(Input(slot: -1, valueOf: nil, role: .prefill, output: out))
                } else if policy == .eol {
                    inputs.append(Input(slot: slot(r - 1, W), valueOf: nil, role: .eol, output: out))
                } else if done[r - 1] == W {
                    inputs.append(Input(slot: slot(r - 1, W - 1), valueOf: cell(r - 1, W - 1), role: .rowStart, output: out))
                } else {
                    // Proxy at the slot of the missing (r−1, W−1). Upstream feeds the newest sampled token of
                    // row r−2 (it never needs a proxy for row 1). For ideal's row 1 there is no row r−2, so it
                    // gets the newest sampled token of row 0, i.e. (0, s−1): the nearest decoded neighbour.
                    let src = max(r - 2, 0)
                    inputs.append(Input(slot: slot(r - 1, W - 1), valueOf: cell(src, done[src] - 1), role: .proxy, output: out))
                    needsRefresh[r - 1] = true
                }
                outputs.append(out)
            }

            finishedLastStep = []
            for r in ready {
                done[r] += 1
                if done[r] == W { finishedLastStep.append(r) }
            }
            steps.append(Step(inputs: inputs, outputs: outputs))
        }
        return steps
    }

    /// The step index at which each cell (raster index) is sampled.
    public func stepOfCell() -> [Int] {
        var result = [Int](repeating: -1, count: height * width)
        for (t, step) in steps.enumerated() {
            for k in step.outputs { result[k] = t }
        }
        return result
    }

    /// The grid of step numbers, one line per row, right-aligned so the diagonals are easy to see.
    public func render() -> String {
        let stepOf = stepOfCell()
        let w = String(max(forwardPasses - 1, 0)).count
        var lines: [String] = []
        for r in 0..<height {
            let row = (0..<width).map { c -> String in
                let s = String(stepOf[r * width + c])
                return String(repeating: " ", count: w - s.count) + s
            }
            lines.append(row.joined(separator: " "))
        }
        return lines.joined(separator: "\n")
    }
}
