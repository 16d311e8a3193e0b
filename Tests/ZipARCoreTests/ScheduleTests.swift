import XCTest
@testable import ZipARCore

final class ScheduleTests: XCTestCase {
    // MARK: golden values from ../shared/fixtures/zipar/schedule.json

    func testCountsMatchFixture() throws {
        let counts = try XCTUnwrap(Fixtures.json("zipar/schedule.json")["counts"] as? [[String: Any]])
        XCTAssertEqual(counts.count, 48)
        for entry in counts {
            let h = try XCTUnwrap(entry["H"] as? Int), w = try XCTUnwrap(entry["W"] as? Int)
            let s = try XCTUnwrap(entry["s"] as? Int)
            let tag = "\(h)x\(w) s=\(s)"

            let ideal = try Schedule.make(height: h, width: w, window: s, policy: .ideal)
            XCTAssertEqual(ideal.forwardPasses, entry["ideal"] as? Int, "ideal \(tag)")
            XCTAssertEqual(ideal.maxTokensPerStep, entry["ideal_max_tokens_per_step"] as? Int, "ideal peak \(tag)")
            XCTAssertEqual(ideal.rasterPasses, entry["raster"] as? Int, tag)

            // upstream_form is the rule's value, also at s = 1 (which the upstream code itself cannot run).
            let up = try Schedule.make(height: h, width: w, window: s, policy: .upstream)
            XCTAssertEqual(up.forwardPasses, entry["upstream_form"] as? Int, "upstream \(tag)")
            XCTAssertEqual(up.maxTokensPerStep, entry["upstream_form_max_tokens_per_step"] as? Int, "upstream peak \(tag)")
            if (2...w - 1).contains(s) {
                XCTAssertEqual(up.forwardPasses, 2 * w + (h - 2) * s, "upstream closed form \(tag)")
                if let observed = entry["upstream_code_observed"] as? Int {
                    XCTAssertEqual(up.forwardPasses, observed, "upstream code \(tag)")
                }
            }
            if s == w {
                // We do not reproduce upstream's s = W copy bug: s = W is raster, every cell sampled.
                XCTAssertEqual(up.forwardPasses, h * w, tag)
                XCTAssertEqual(up.maxTokensPerStep, 1, tag)
            }
        }
    }

    func testUpstreamSteps8x8MatchFixtureExactly() throws {
        let root = try XCTUnwrap(Fixtures.json("zipar/schedule.json")["upstream_steps_8x8"] as? [String: Any])
        let windows = try XCTUnwrap(root["windows"] as? [String: Any])
        for (s, expectedCount) in [(2, 28), (4, 40)] {
            let fixture = try XCTUnwrap(windows[String(s)] as? [[String: Any]])
            let sched = try Schedule.make(height: 8, width: 8, window: s, policy: .upstream)
            XCTAssertEqual(fixture.count, expectedCount)
            XCTAssertEqual(sched.steps.count, fixture.count, "s=\(s)")
            for (t, (step, want)) in zip(sched.steps, fixture).enumerated() {
                let outputs = try cells(want["outputs"])
                XCTAssertEqual(step.outputs, outputs, "s=\(s) step \(t) outputs")
                let inputs = try XCTUnwrap(want["inputs"] as? [[String: Any]]).map(fixtureInput)
                XCTAssertEqual(step.inputs, inputs, "s=\(s) step \(t) inputs")
            }
        }
    }

    func testIdealSteps8x8MatchFixture() throws {
        let root = try XCTUnwrap(Fixtures.json("zipar/schedule.json")["ideal_steps_8x8"] as? [String: Any])
        let windows = try XCTUnwrap(root["windows"] as? [String: Any])
        XCTAssertEqual(Set(windows.keys), ["2", "4"])
        for (key, value) in windows {
            let fixture = try XCTUnwrap(value as? [Any])
            let sched = try Schedule.make(height: 8, width: 8, window: Int(key)!, policy: .ideal)
            XCTAssertEqual(sched.steps.map { $0.outputs }, try fixture.map { try cells($0) }, "s=\(key)")
        }
    }

    /// A fixture input {pos, slot, value_of, role, out} in our types. Upstream calls the real (r−1, W−1) fed
    /// to start row r "own"; we call it rowStart.
    private func fixtureInput(_ d: [String: Any]) throws -> Schedule.Input {
        let pos = try XCTUnwrap(d["pos"] as? Int)
        let slot = try d["slot"] as? String == "class" ? -1 : cell(d["slot"])
        XCTAssertEqual(pos, slot + 1, "pos is the slot after the class token")
        let valueOf: Int? = try d["value_of"] as? String == "class" ? nil : cell(d["value_of"])
        let out: Int? = try d["out"] is NSNull ? nil : cell(d["out"])
        var role: Schedule.Role
        switch try XCTUnwrap(d["role"] as? String) {
        case "prefill": role = .prefill
        case "own": role = (out.map { $0 % 8 == 0 } ?? false) ? .rowStart : .own
        case "proxy": role = .proxy
        case "refresh": role = .refresh
        case let other: throw ZipARError("unknown role \(other)")
        }
        return Schedule.Input(slot: slot, valueOf: valueOf, role: role, output: out)
    }

    /// [row, col] on the 8×8 fixture grid → raster index.
    private func cell(_ any: Any?) throws -> Int {
        let rc = try XCTUnwrap(any as? [Int])
        XCTAssertEqual(rc.count, 2)
        return rc[0] * 8 + rc[1]
    }

    private func cells(_ any: Any?) throws -> [Int] {
        try XCTUnwrap(any as? [Any]).map { try cell($0) }
    }

    // MARK: closed forms and edge cases

    func testClosedForms() throws {
        for h in 1...12 {
            for w in 1...12 {
                for s in 1...w {
                    let ideal = try Schedule.make(height: h, width: w, window: s)
                    XCTAssertEqual(ideal.forwardPasses, (h - 1) * s + w, "ideal \(h)x\(w) s=\(s)")
                    XCTAssertEqual(ideal.maxTokensPerStep, min(h, (w + s - 1) / s), "ideal peak \(h)x\(w) s=\(s)")
                    if h >= 2, s >= 2, s < w {
                        let up = try Schedule.make(height: h, width: w, window: s, policy: .upstream)
                        XCTAssertEqual(up.forwardPasses, 2 * w + (h - 2) * s, "upstream \(h)x\(w) s=\(s)")
                    }
                    if s >= 2 {
                        let eol = try Schedule.make(height: h, width: w, window: s, policy: .eol)
                        XCTAssertEqual(eol.forwardPasses, (h - 1) * (s - 1) + w, "eol \(h)x\(w) s=\(s)")
                        XCTAssertEqual(eol.rasterPasses, h * (w + 1))
                    }
                }
            }
        }
        // Spot values from the paper and the spec.
        for (s, n) in [(16, 400), (12, 312), (8, 224)] {
            XCTAssertEqual(try Schedule.make(height: 24, width: 24, window: s, policy: .upstream).forwardPasses, n)
        }
        let emu3 = try Schedule.make(height: 90, width: 90, window: 8, policy: .eol)
        XCTAssertEqual(emu3.forwardPasses, 713)
        XCTAssertEqual(emu3.rasterPasses, 8190)
        XCTAssertEqual(try Schedule.make(height: 48, width: 48, window: 16, policy: .eol).forwardPasses, 753)
    }

    func testWavefrontAndRaster() throws {
        let wave = try Schedule.make(height: 5, width: 7, window: 1)
        XCTAssertEqual(wave.forwardPasses, 5 + 7 - 1)
        let stepOf = wave.stepOfCell()
        for r in 0..<5 { for c in 0..<7 { XCTAssertEqual(stepOf[r * 7 + c], r + c) } }

        for policy in [ZipARPolicy.ideal, .upstream] {
            let raster = try Schedule.make(height: 6, width: 5, window: 5, policy: policy)
            XCTAssertEqual(raster.forwardPasses, 30)
            XCTAssertEqual(raster.stepOfCell(), Array(0..<30))
            XCTAssertFalse(raster.steps.contains { $0.inputs.contains { $0.role == .proxy || $0.role == .refresh } })
        }
    }

    func testRender() throws {
        XCTAssertEqual(try Schedule.make(height: 3, width: 4, window: 2).render(), "0 1 2 3\n2 3 4 5\n4 5 6 7")
        // Two-digit steps: every column is padded to the same width.
        let wide = try Schedule.make(height: 4, width: 5, window: 3).render()
        XCTAssertEqual(wide, " 0  1  2  3  4\n 3  4  5  6  7\n 6  7  8  9 10\n 9 10 11 12 13")
        XCTAssertEqual(try Schedule.make(height: 1, width: 1, window: 1).render(), "0")
    }

    func testEolLayout() throws {
        // 3x4, window 3 → lag 2. Slots are row·5 + col; the EOL after row r sits at r·5 + 4.
        let sched = try Schedule.make(height: 3, width: 4, window: 3, policy: .eol)
        XCTAssertEqual(sched.slotsPerRow, 5)
        XCTAssertEqual(sched.lag, 2)
        XCTAssertEqual(sched.steps[2].inputs, [
            .init(slot: 1, valueOf: 1, role: .own, output: 2),
            .init(slot: 4, valueOf: nil, role: .eol, output: 4),
        ])
        // Row 0 finished in step 3: step 4 writes (0, 3) at its slot, then queries rows 1 and 2.
        XCTAssertEqual(sched.steps[4].inputs.first, .init(slot: 3, valueOf: 3, role: .refresh, output: nil))
        XCTAssertEqual(sched.steps[4].inputs.last, .init(slot: 9, valueOf: nil, role: .eol, output: 8))
    }

    func testInvalidArgumentsThrow() {
        let bad: [(Int, Int, Int, ZipARPolicy)] = [
            (0, 4, 1, .ideal), (4, 0, 1, .ideal), (-1, 4, 1, .upstream), (4, 4, 0, .ideal), (4, 4, 5, .ideal),
            (4, 4, -2, .upstream), (4, 4, 1, .eol), (4, 1, 1, .eol), (4, 4, 5, .eol), (1 << 20, 1 << 20, 1, .ideal),
        ]
        for (h, w, s, p) in bad {
            XCTAssertThrowsError(try Schedule.make(height: h, width: w, window: s, policy: p), "\(h)x\(w) s=\(s) \(p)") {
                XCTAssertTrue($0 is ZipARError)
            }
        }
    }

    // MARK: independent property test

    func testRandomSchedulesAreConsistent() throws {
        var rng = RNG(seed: 0x5EED_2412_0406_2)
        var cases = 0
        while cases < 200 {
            let policy = ZipARPolicy.allCases[Int(rng.next() % 3)]
            let h = 1 + Int(rng.next() % 20), w = 1 + Int(rng.next() % 20)
            let s = 1 + Int(rng.next() % UInt64(w))
            if policy == .eol && s < 2 { continue }
            try checkInvariants(Schedule.make(height: h, width: w, window: s, policy: policy))
            cases += 1
        }
        // Plus every window of a few fixed grids, square and not.
        for (h, w) in [(1, 1), (1, 6), (6, 1), (2, 2), (8, 8), (5, 13), (13, 5)] {
            for s in 1...w {
                for policy in ZipARPolicy.allCases where !(policy == .eol && s < 2) {
                    try checkInvariants(Schedule.make(height: h, width: w, window: s, policy: policy))
                }
            }
        }
    }

    /// Checks the schedule against the rules directly, without re-deriving it.
    private func checkInvariants(_ sched: Schedule) {
        let (H, W, lag) = (sched.height, sched.width, sched.lag)
        let tag = "\(H)x\(W) s=\(sched.window) \(sched.policy)"
        let n = H * W
        var stepOf = [Int](repeating: -1, count: n)
        for (t, step) in sched.steps.enumerated() {
            XCTAssertFalse(step.outputs.isEmpty, "\(tag): step \(t) samples nothing")
            XCTAssertEqual(step.outputs, step.inputs.compactMap { $0.output }, "\(tag): step \(t) outputs vs inputs")
            XCTAssertEqual(step.outputs, step.outputs.sorted(), tag)
            XCTAssertEqual(Set(step.outputs.map { $0 / W }).count, step.outputs.count, "\(tag): two cells of one row")
            XCTAssertLessThanOrEqual(step.inputs.filter { $0.role == .refresh }.count, 1, tag)
            let slots = step.inputs.map { $0.slot }
            XCTAssertEqual(Set(slots).count, slots.count, "\(tag): step \(t) feeds a slot twice")
            for k in step.outputs {
                XCTAssertEqual(stepOf[k], -1, "\(tag): cell \(k) sampled twice")
                stepOf[k] = t
            }
        }
        XCTAssertFalse(stepOf.contains(-1), "\(tag): some cell never sampled")
        XCTAssertEqual(stepOf, sched.stepOfCell(), tag)
        XCTAssertEqual(stepOf[0], 0, tag)
        XCTAssertEqual(sched.steps[0].inputs, [.init(slot: -1, valueOf: nil, role: .prefill, output: 0)], tag)

        // Order: after the left neighbour, and after the row above holds min(c + lag, W) sampled cells.
        for r in 0..<H {
            for c in 0..<W {
                let t = stepOf[r * W + c]
                if c > 0 { XCTAssertGreaterThan(t, stepOf[r * W + c - 1], tag) }
                if r > 0 {
                    let above = (0..<W).filter { stepOf[(r - 1) * W + $0] < t }.count
                    XCTAssertGreaterThanOrEqual(above, min(c + lag, W), "\(tag): cell (\(r),\(c)) too early")
                }
                if sched.policy == .ideal { XCTAssertEqual(t, r * lag + c, tag) }
            }
        }

        // Feeding: every fed value was sampled earlier; the slots follow the layout; every proxy is replaced by
        // the real token later; every cell but the last ends up written at its own slot with its own value.
        var lastWrite: [Int: Int?] = [:]        // slot → value of the latest write (nil for an EOL)
        var fedAtOwnSlot = Set<Int>()
        for (t, step) in sched.steps.enumerated() {
            for input in step.inputs {
                if let v = input.valueOf {
                    XCTAssertLessThan(stepOf[v], t, "\(tag): step \(t) feeds cell \(v) before it is sampled")
                    if input.slot == sched.slot(ofCell: v) { fedAtOwnSlot.insert(v) }
                }
                switch input.role {
                case .prefill:
                    XCTAssertEqual(t, 0, tag)
                case .own:
                    XCTAssertEqual(input.slot, sched.slot(ofCell: input.valueOf!), tag)
                    XCTAssertEqual(input.output, input.valueOf! + 1, tag)
                    XCTAssertNotEqual(input.output! % W, 0, tag)
                case .rowStart, .refresh:
                    XCTAssertEqual(input.valueOf! % W, W - 1, tag)
                    XCTAssertEqual(input.slot, sched.slot(ofCell: input.valueOf!), tag)
                    if input.role == .rowStart { XCTAssertEqual(input.output, input.valueOf! + 1, tag) }
                    else { XCTAssertNil(input.output, tag) }
                case .proxy:
                    let out = input.output!
                    XCTAssertEqual(out % W, 0, tag)
                    XCTAssertNotEqual(sched.policy, .eol, tag)
                    XCTAssertEqual(input.slot, sched.slot(ofCell: out - 1), "\(tag): proxy at the wrong slot")
                    // The real (r−1, W−1) is not sampled yet (at s = W−1 it is sampled in this very pass).
                    XCTAssertGreaterThanOrEqual(stepOf[out - 1], t, "\(tag): proxy for a cell that already exists")
                case .eol:
                    XCTAssertEqual(sched.policy, .eol, tag)
                    let out = input.output!
                    XCTAssertEqual(out % W, 0, tag)
                    XCTAssertEqual(input.slot, (out / W - 1) * (W + 1) + W, tag)
                }
                if input.slot >= 0 { lastWrite[input.slot] = input.valueOf }
            }
        }
        let last = n - 1
        XCTAssertEqual(fedAtOwnSlot, Set(0..<last), "\(tag): not every cell but the last written at its own slot")
        // Final cache contents equal raster decoding: each cell slot's latest write is its own real token
        // (so every proxy got refreshed), and every EOL slot holds an EOL.
        for k in 0..<last { XCTAssertEqual(lastWrite[sched.slot(ofCell: k)], .some(k), "\(tag): slot of cell \(k)") }
        XCTAssertNil(lastWrite[sched.slot(ofCell: last)], "\(tag): the last cell is never fed")
        let eolSlots = lastWrite.keys.filter { $0 % sched.slotsPerRow == W }
        XCTAssertEqual(eolSlots.count, sched.policy == .eol ? H - 1 : 0, tag)
        for s in eolSlots { XCTAssertEqual(lastWrite[s], .some(nil), tag) }
    }
}

