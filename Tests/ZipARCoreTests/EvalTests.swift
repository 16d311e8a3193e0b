import XCTest
@testable import ZipARCore

final class EvalTests: XCTestCase {
    // MARK: - Helpers

    /// EvalScore plus a few failure examples for the messages.
    struct Score: CustomStringConvertible {
        var score = EvalScore()
        var failures: [String] = []

        mutating func add(_ r: ClauseResults, _ prompt: ShapePrompt) {
            score.add(r)
            if !r.passed && failures.count < 5 { failures.append("'\(prompt.text)': \(r.failureSummary)") }
        }

        var overall: Double { score.accuracy("overall") ?? 0 }
        var description: String {
            String(format: "%.1f%% of %d prompts", 100 * overall, score.prompts) + " (" +
                score.accuracies.dropFirst().map { String(format: "%@ %.1f%%", $0.key, 100 * ($0.value ?? .nan)) }.joined(separator: ", ") + ")" +
                failures.map { "\n    e.g. " + $0 }.joined()
        }
    }

    /// 3x3 box blur (edge pixels average what is inside the image), as two 1-D passes.
    static func boxBlur(_ img: RGBImage) -> RGBImage {
        let w = img.width, h = img.height
        let src = img.pixels.map { Int($0) }
        var sum = [Int](repeating: 0, count: src.count), cnt = [Int](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                for xx in max(0, x - 1)...min(w - 1, x + 1) {
                    let q = (y * w + xx) * 3, p = (y * w + x) * 3
                    sum[p] += src[q]; sum[p + 1] += src[q + 1]; sum[p + 2] += src[q + 2]
                    cnt[y * w + x] += 1
                }
            }
        }
        var out = img
        for y in 0..<h {
            for x in 0..<w {
                var s = (0, 0, 0), k = 0
                for yy in max(0, y - 1)...min(h - 1, y + 1) {
                    let q = (yy * w + x) * 3
                    s.0 += sum[q]; s.1 += sum[q + 1]; s.2 += sum[q + 2]; k += cnt[yy * w + x]
                }
                let p = (y * w + x) * 3
                out.pixels[p] = UInt8(s.0 / k); out.pixels[p + 1] = UInt8(s.1 / k); out.pixels[p + 2] = UInt8(s.2 / k)
            }
        }
        return out
    }

    /// Uniform noise of +-amplitude on every channel.
    static func noise(_ img: RGBImage, amplitude: Int, seed: UInt64) -> RGBImage {
        var out = img, rng = RNG(seed: seed)
        for i in 0..<out.pixels.count {
            let d = Int(rng.nextUniform() * Double(2 * amplitude + 1)) - amplitude
            out.pixels[i] = UInt8(max(0, min(255, Int(out.pixels[i]) + d)))
        }
        return out
    }

    /// Every pixel takes the value of a random pixel of its 3x3 block: ragged 1-px edges.
    static func jitter(_ img: RGBImage, seed: UInt64) -> RGBImage {
        var out = img, rng = RNG(seed: seed)
        let w = img.width, h = img.height
        for y in 0..<h {
            for x in 0..<w {
                let xx = min(w - 1, max(0, x + Int(rng.nextUniform() * 3) - 1))
                let yy = min(h - 1, max(0, y + Int(rng.nextUniform() * 3) - 1))
                for c in 0..<3 { out.pixels[(y * w + x) * 3 + c] = img.pixels[(yy * w + xx) * 3 + c] }
            }
        }
        return out
    }

    let analyser = Analyser()

    // MARK: - Grammar

    func testGrammarParsesAndRoundTrips() throws {
        let p = try ShapePrompt.parse("  A  Green   TRIANGLE left  OF a purple diamond ON a White background ")
        XCTAssertEqual(p.objects, [ShapeObject(.green, .triangle), ShapeObject(.purple, .diamond)])
        XCTAssertEqual(p.relation, .leftOf)
        XCTAssertEqual(p.background, .white)
        XCTAssertEqual(p.text, "a green triangle left of a purple diamond on a white background")
        for text in ["a red circle", "a blue square on a yellow background", "a black diamond below a gray square",
                     "a cyan circle above a cyan square", "a orange triangle right of a yellow triangle"] {
            XCTAssertEqual(try ShapePrompt.parse(text).text, text)
        }
        for e in PromptSet.make(count: 300, seed: 5) {
            XCTAssertEqual(try ShapePrompt.parse(e.prompt.text), e.prompt)
            XCTAssertEqual(try ShapePrompt.parse(e.prompt.text.uppercased()), e.prompt)
        }
    }

    func testGrammarRejectsBadPrompts() {
        let bad = ["", "red circle", "a red", "a red hexagon", "a pink circle", "an red circle", "a red circle left a blue square",
                   "a red circle left of", "a red circle next to a blue square", "a red circle above a red circle",
                   "a red circle on a red background", "a red circle left of a blue square on a blue background",
                   "a red circle on a blue", "a red circle on a blue background please", "a red circle a blue square",
                   "a red circle left of a blue square right of a green circle", "a red circle on a background"]
        for text in bad {
            XCTAssertThrowsError(try ShapePrompt.parse(text), "'\(text)' should not parse") { error in
                XCTAssertFalse((error as? ZipARError)?.message.isEmpty ?? true, "'\(text)': \(error)")
            }
        }
        XCTAssertThrowsError(try ShapePrompt(objects: [ShapeObject(.red, .circle), ShapeObject(.blue, .circle)]))
        XCTAssertThrowsError(try ShapePrompt(objects: [ShapeObject(.red, .circle)], relation: .above))
    }

    func testRelationHolds() {
        XCTAssertTrue(Relation.leftOf.holds(a: (0.2, 0.5), b: (0.6, 0.5), margin: 0.15))
        XCTAssertFalse(Relation.rightOf.holds(a: (0.2, 0.5), b: (0.6, 0.5), margin: 0.15))
        XCTAssertFalse(Relation.leftOf.holds(a: (0.4, 0.5), b: (0.5, 0.5), margin: 0.15), "too close")
        XCTAssertFalse(Relation.leftOf.holds(a: (0.2, 0.1), b: (0.5, 0.8), margin: 0.15), "more vertical than horizontal")
        XCTAssertTrue(Relation.above.holds(a: (0.5, 0.1), b: (0.45, 0.8), margin: 0.15), "y grows downwards")
        XCTAssertTrue(Relation.below.holds(a: (0.5, 0.8), b: (0.45, 0.1), margin: 0.15))
    }

    // MARK: - Renderer

    func testRendererObeysTheGrammar() throws {
        for (w, h, count) in [(64, 64, 300), (96, 64, 40), (128, 128, 20)] {
            let side = Double(min(w, h))
            for e in PromptSet.make(count: count, seed: 11) {
                let scene = ShapeRenderer.scene(for: e.prompt, width: w, height: h, seed: e.seed)
                let img = ShapeRenderer.draw(scene, width: w, height: h)
                let label = "'\(e.prompt.text)' seed \(e.seed) \(w)x\(h)"
                if let bg = e.prompt.background { XCTAssertEqual(scene.background, bg, label) }
                XCTAssertFalse(e.prompt.objects.contains { $0.color == scene.background }, label)
                XCTAssertEqual(scene.shapes.map(\.object), e.prompt.objects, label)
                // Measure every object from the pixels: each is painted in its own colour only, its box
                // is 16-40% of the side, and no pixel is inside two objects.
                var centroids: [(x: Double, y: Double)] = []
                for s in scene.shapes {
                    var n = 0, sx = 0.0, sy = 0.0, x0 = w, x1 = -1, y0 = h, y1 = -1
                    for y in 0..<h {
                        for x in 0..<w where s.contains(Double(x) + 0.5, Double(y) + 0.5) {
                            let i = (y * w + x) * 3, c = s.object.color.rgb
                            XCTAssertEqual([img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]], [c.r, c.g, c.b], label)
                            XCTAssertEqual(scene.shapes.filter { $0.contains(Double(x) + 0.5, Double(y) + 0.5) }.count, 1, "overlap in \(label)")
                            n += 1; sx += Double(x) + 0.5; sy += Double(y) + 0.5
                            x0 = min(x0, x); x1 = max(x1, x); y0 = min(y0, y); y1 = max(y1, y)
                        }
                    }
                    for extent in [x1 - x0 + 1, y1 - y0 + 1] {
                        XCTAssert(Double(extent) >= 0.16 * side && Double(extent) <= 0.40 * side, "box \(extent) px in \(label)")
                    }
                    centroids.append((sx / Double(n) / Double(w), sy / Double(n) / Double(h)))
                }
                if let r = e.prompt.relation {
                    XCTAssertTrue(r.holds(a: centroids[0], b: centroids[1], margin: 0.15), label)
                }
            }
        }
    }

    func testRendererIsSeeded() throws {
        let p = try ShapePrompt.parse("a red circle left of a blue square")
        XCTAssertEqual(ShapeRenderer.render(p, seed: 3), ShapeRenderer.render(p, seed: 3))
        XCTAssertNotEqual(ShapeRenderer.render(p, seed: 3), ShapeRenderer.render(p, seed: 4))
        // Without a named background, the background varies with the seed but avoids object colours.
        let backgrounds = Set((0..<50).map { ShapeRenderer.scene(for: p, width: 64, height: 64, seed: $0).background })
        XCTAssertGreaterThan(backgrounds.count, 4)
        XCTAssertFalse(backgrounds.contains(.red) || backgrounds.contains(.blue))
    }

    // MARK: - Analyser

    func testShapeClassifierOnIdealShapes() {
        for size in [10, 11, 16, 25, 40, 60] {
            for shape in ShapeKind.allCases {
                let canvas = 2 * size + 8     // the background must stay the dominant colour
                let scene = ShapeScene(background: .white, shapes: [PlacedShape(object: ShapeObject(.blue, shape), centerX: Double(canvas) / 2,
                                                                                centerY: Double(canvas) / 2, width: Double(size), height: Double(size))])
                let a = analyser.analyse(ShapeRenderer.draw(scene, width: canvas, height: canvas))
                XCTAssertEqual(a.objects.count, 1, "\(shape) \(size) px")
                XCTAssertEqual(a.objects.first?.shape, shape, "\(shape) \(size) px: \(String(describing: a.objects.first))")
            }
        }
    }

    func testAnalyserScoresRenderedImages() {
        let prompts = PromptSet.make(count: 300, seed: 1)
        var clean = Score(), blurred = Score(), noisy = Score(), jittered = Score(), other = Score()
        for e in prompts {
            let img = ShapeRenderer.render(e.prompt, seed: e.seed)
            clean.add(analyser.check(img, prompt: e.prompt), e.prompt)
            // Degraded copies on a third of the prompts each (picked by seed, so every kind of
            // prompt gets each), to keep the test fast.
            switch e.seed % 3 {
            case 0: blurred.add(analyser.check(Self.boxBlur(img), prompt: e.prompt), e.prompt)
            case 1: noisy.add(analyser.check(Self.noise(img, amplitude: 20, seed: e.seed), prompt: e.prompt), e.prompt)
            default: jittered.add(analyser.check(Self.jitter(img, seed: e.seed), prompt: e.prompt), e.prompt)
            }
        }
        // Other canvas sizes, and blur plus noise together.
        for e in prompts.prefix(24) {
            let (w, h) = e.index % 2 == 0 ? (128, 128) : (80, 64)
            other.add(analyser.check(ShapeRenderer.render(e.prompt, width: w, height: h, seed: e.seed), prompt: e.prompt), e.prompt)
            let img = Self.noise(Self.boxBlur(ShapeRenderer.render(e.prompt, seed: e.seed)), amplitude: 10, seed: e.seed)
            other.add(analyser.check(img, prompt: e.prompt), e.prompt)
        }
        print("analyser on rendered images:\n  clean \(clean)\n  blurred \(blurred)\n  noisy \(noisy)\n  jittered \(jittered)\n  other sizes, blur+noise \(other)")
        for (name, rate) in clean.score.accuracies { XCTAssertGreaterThanOrEqual(rate ?? 0, 0.99, "clean \(name): \(clean)") }
        XCTAssertEqual(clean.score.relations, 200)
        XCTAssertEqual(clean.score.backgrounds, 150)
        for (name, s) in [("blurred", blurred), ("noisy", noisy), ("jittered", jittered), ("other", other)] {
            XCTAssertGreaterThanOrEqual(s.overall, 0.95, "\(name): \(s)")
        }
    }

    /// EvalScore tallies two-object prompts per relation: a scene drawn for one relation passes
    /// under that relation and fails under its mirror image.
    func testScoreCountsPromptsPerRelation() throws {
        var score = EvalScore()
        for (k, r) in Relation.allCases.enumerated() {
            let p = try ShapePrompt(objects: [ShapeObject(.red, .circle), ShapeObject(.blue, .square)], relation: r)
            let img = ShapeRenderer.render(p, seed: UInt64(k))
            score.add(analyser.check(img, prompt: p))
            let mirror: Relation = [.leftOf: .rightOf, .rightOf: .leftOf, .above: .below, .below: .above][r]!
            let q = try ShapePrompt(objects: p.objects, relation: mirror)
            XCTAssertEqual(analyser.check(img, prompt: q).relationKind, mirror)
            if r == .leftOf || r == .above { score.add(analyser.check(img, prompt: q)) }
        }
        score.add(analyser.check(ShapeRenderer.render(try ShapePrompt.parse("a red circle"), seed: 1), prompt: try ShapePrompt.parse("a red circle")))
        let got = score.relationAccuracies
        XCTAssertEqual(got.map(\.relation), Relation.allCases)
        // Each relation's own scene passes; the "left of" scene read as "right of" and the "above"
        // scene read as "below" fail. The single-object prompt counts for no relation.
        XCTAssertEqual(got.map(\.value), [1.0, 0.5, 1.0, 0.5])
        XCTAssertEqual(Relation.allCases.map { score.byRelation[$0]!.prompts }, [1, 2, 1, 2])
        XCTAssertEqual(score.twoObjects, 6)
        XCTAssertNil(EvalScore().relationAccuracies[0].value)
    }

    /// Each kind of violation, made from rendered scenes, must fail the right clause and the prompt.
    func testAnalyserRejectsViolations() throws {
        let twoObject = PromptSet.make(count: 48, seed: 2).filter { $0.prompt.relation != nil }
        XCTAssertEqual(twoObject.count, 32)
        for e in twoObject {
            let p = e.prompt, a = p.objects[0], b = p.objects[1]
            let scene = ShapeRenderer.scene(for: p, width: 64, height: 64, seed: e.seed)
            let img = ShapeRenderer.draw(scene, width: 64, height: 64)
            XCTAssertTrue(analyser.check(img, prompt: p).passed, p.text)

            // Wrong colour of the first object (a colour not used by the other object nor the background).
            var recolored = scene
            let newColor = PaletteColor.allCases.first { $0 != a.color && $0 != b.color && $0 != scene.background }!
            recolored.shapes[0].object.color = newColor
            var r = analyser.check(ShapeRenderer.draw(recolored, width: 64, height: 64), prompt: p)
            XCTAssertFalse(r.passed, "wrong colour: \(p.text)")
            XCTAssertFalse(r.objects[0].present, "wrong colour: \(p.text)")

            // Wrong shape of the first object.
            var reshaped = scene
            let newShape = ShapeKind.allCases.first { $0 != a.shape && ShapeObject(a.color, $0) != b }!
            reshaped.shapes[0].object.shape = newShape
            r = analyser.check(ShapeRenderer.draw(reshaped, width: 64, height: 64), prompt: p)
            XCTAssertFalse(r.passed, "wrong shape (\(newShape)): \(p.text)")
            XCTAssertFalse(r.objects[0].present, "wrong shape (\(newShape)): \(p.text)")

            // The same image against the reversed relation and against the two of the other axis.
            let rel = p.relation!
            for other in Relation.allCases where other != rel {
                let q = try ShapePrompt(objects: p.objects, relation: other, background: p.background)
                r = analyser.check(img, prompt: q)
                XCTAssertEqual(r.relation, false, "'\(q.text)' on an image of '\(p.text)'")
                XCTAssertFalse(r.passed)
            }

            // Wrong background: the image against another background, and a repainted background.
            let otherBackground = PaletteColor.allCases.first { $0 != scene.background && $0 != a.color && $0 != b.color }!
            let q = try ShapePrompt(objects: p.objects, relation: p.relation, background: otherBackground)
            r = analyser.check(img, prompt: q)
            XCTAssertEqual(r.background, false, "'\(q.text)'")
            XCTAssertFalse(r.passed)
            if let bg = p.background {
                var repainted = scene
                repainted.background = otherBackground
                r = analyser.check(ShapeRenderer.draw(repainted, width: 64, height: 64), prompt: p)
                XCTAssertEqual(r.background, false, "repainted \(bg.rawValue) -> \(otherBackground.rawValue): \(p.text)")
            }

            // A missing object: only the first is drawn.
            var single = scene
            single.shapes.removeLast()
            r = analyser.check(ShapeRenderer.draw(single, width: 64, height: 64), prompt: p)
            XCTAssertFalse(r.passed)
            XCTAssertFalse(r.count)
            XCTAssertFalse(r.objects[1].present)
            XCTAssertNotEqual(r.relation, true)

            // An extra object: the two-object image against the first object's single prompt.
            r = analyser.check(img, prompt: try ShapePrompt(objects: [a], background: p.background))
            XCTAssertTrue(r.objects[0].present)
            XCTAssertFalse(r.count, "extra object: \(p.text)")
            XCTAssertFalse(r.passed)
        }
    }

    func testAnalyserIgnoresSpecksAndFindsNothingOnABlankImage() throws {
        let blank = ShapeRenderer.draw(ShapeScene(background: .gray, shapes: []), width: 64, height: 64)
        var a = analyser.analyse(blank)
        XCTAssertEqual(a.background, .gray)
        XCTAssertTrue(a.objects.isEmpty)
        // Scattered single-pixel and 2x2 specks of palette colours are not objects.
        var specked = blank, rng = RNG(seed: 9)
        for _ in 0..<60 {
            let x = Int(rng.nextUniform() * 62), y = Int(rng.nextUniform() * 62), c = PaletteColor.allCases[Int(rng.nextUniform() * 10)].rgb
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] { let i = ((y + dy) * 64 + x + dx) * 3; specked.pixels[i] = c.r; specked.pixels[i + 1] = c.g; specked.pixels[i + 2] = c.b }
        }
        a = analyser.analyse(specked)
        XCTAssertEqual(a.background, .gray)
        XCTAssertTrue(a.objects.isEmpty, "\(a.objects)")
        let r = analyser.check(blank, prompt: try ShapePrompt.parse("a red circle on a gray background"))
        XCTAssertFalse(r.passed)
        XCTAssertEqual(r.background, true)
        XCTAssertFalse(r.count)
    }

    // MARK: - Prompt set

    func testPromptSetIsDeterministicAndBalanced() {
        let set = PromptSet.make(count: 240, seed: 7)
        XCTAssertEqual(set, PromptSet.make(count: 240, seed: 7))
        XCTAssertNotEqual(set.map(\.prompt), PromptSet.make(count: 240, seed: 8).map(\.prompt))
        XCTAssertEqual(Array(set.prefix(50)), PromptSet.make(count: 50, seed: 7), "a smaller set is a prefix")
        XCTAssertEqual(PromptSet.make().count, 200)
        XCTAssertEqual(set.map(\.index), Array(0..<240))
        XCTAssertGreaterThan(Set(set.map(\.seed)).count, 235, "seeds differ per prompt")

        XCTAssertEqual(set.filter { $0.prompt.objects.count == 1 }.count, 80)
        XCTAssertEqual(set.filter { $0.prompt.background != nil }.count, 120)
        for r in Relation.allCases {
            XCTAssertEqual(set.filter { $0.prompt.relation == r }.count, 40, r.rawValue)
            XCTAssertEqual(set.filter { $0.prompt.relation == r && $0.prompt.background != nil }.count, 20, r.rawValue)
        }
        let objects = set.flatMap(\.prompt.objects)       // 400 objects
        for c in PaletteColor.allCases {
            let n = objects.filter { $0.color == c }.count
            XCTAssert(abs(n - 40) <= 2, "\(c): \(n) of \(objects.count) objects")
            let b = set.filter { $0.prompt.background == c }.count
            XCTAssert(abs(b - 12) <= 3, "background \(c): \(b)")
        }
        for s in ShapeKind.allCases {
            let n = objects.filter { $0.shape == s }.count
            XCTAssert(abs(n - 100) <= 3, "\(s): \(n)")
        }
    }
}

/// `zipar eval` end to end: the reference renderer (no model) and a tiny random text-to-image model
/// assembled from the fixtures (gpt_t2i_tiny + vq_tiny, 8x8 tokens -> 64x64 px, a made-up word
/// embedding for the grammar's words).
final class EvalCommandTests: XCTestCase {
    @discardableResult
    func zipar(_ args: [String], expect code: Int32, file: StaticString = #filePath, line: UInt = #line) throws -> (out: String, err: String) {
        try runZipar(args, expect: code, file: file, line: line)
    }

    func testReferenceRun() throws {
        let (out, _) = try zipar(["eval", "--reference", "--n", "24", "--json"], expect: 0)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let modes = try XCTUnwrap(report["modes"] as? [[String: Any]])
        XCTAssertEqual(modes.count, 1)
        XCTAssertEqual((modes[0]["accuracy"] as? [String: Any])?["overall"] as? Double, 1.0)
        let results = try XCTUnwrap(report["results"] as? [[String: Any]])
        XCTAssertEqual(results.map { $0["prompt"] as? String }, PromptSet.make(count: 24).map { $0.prompt.text })
        let (table, _) = try zipar(["eval", "--reference", "--n", "12"], expect: 0)
        XCTAssertTrue(table.contains("| renderer | 100.0% |"), table)
    }

    func testBadFlagsExitTwo() throws {
        for args in [["--n", "0"], ["--windows", "8,x"], ["--reference", "--model", "m"], ["--top-p", "1.5"], ["--bogus"]] {
            let (_, err) = try zipar(["eval"] + args, expect: 2)
            XCTAssertFalse(err.isEmpty)
        }
        try zipar(["eval", "--model", "/nonexistent/model", "--n", "1"], expect: 1)
    }

    func testPromptEncoderAddsWordPositionsFromTheFirstWord() throws {
        let vocab = ["<pad>", "a", "red", "circle"], dim = 3, length = 5
        let table = Tensor(shape: [4, dim], values: (0..<12).map { Float($0) })
        let positions = Tensor(shape: [length, dim], values: (0..<15).map { Float($0) * 100 })
        let enc = PromptEncoder(vocab: vocab, embedding: table, positions: positions, length: length)
        let (f, mask) = try enc.encode("A  Red circle")
        XCTAssertEqual(mask, [false, false, true, true, true])
        XCTAssertEqual(Array(UnsafeBufferPointer(start: f.data, count: 2 * dim)), [Float](repeating: 0, count: 2 * dim))
        // Row 2 + i holds word i: embedding[id] + position[i] (positions count from the first word, not the padding).
        for (i, id) in [1, 2, 3].enumerated() {
            let row = Array(UnsafeBufferPointer(start: f.data + (2 + i) * dim, count: dim))
            XCTAssertEqual(row, (0..<dim).map { table.data[id * dim + $0] + positions.data[i * dim + $0] })
        }
        // Without a position table the rows are the word embeddings alone (models trained before it).
        let plain = try PromptEncoder(vocab: vocab, embedding: table, length: length).encode("a red circle").features
        XCTAssertEqual(Array(UnsafeBufferPointer(start: plain.data + 2 * dim, count: dim)), [3, 4, 5])
    }

    /// Context weights add W_prev @ row(i-1) + W_next @ row(i+1) to each word row, from the rows
    /// before mixing; the first word has no previous row and the last no next one (pads are not rows).
    func testPromptEncoderMixesNeighbourRows() throws {
        let vocab = ["<pad>", "a", "red", "circle"], dim = 2, length = 4
        let table = Tensor(shape: [4, dim], values: [0, 0, 1, 2, 3, 5, 7, 11])
        let prev = Tensor(shape: [dim, dim], values: [1, 0, 0, 2])      // row i gets (x, 2y) of row i-1
        let next = Tensor(shape: [dim, dim], values: [0, 1, 10, 0])     // row i gets (y, 10x) of row i+1
        let enc = PromptEncoder(vocab: vocab, embedding: table, context: (prev, next), length: length)
        let (f, mask) = try enc.encode("a red circle")
        XCTAssertEqual(mask, [false, true, true, true])
        let rows = (0..<length).map { Array(UnsafeBufferPointer(start: f.data + $0 * dim, count: dim)) }
        XCTAssertEqual(rows[0], [0, 0], "the pad row stays zero")
        XCTAssertEqual(rows[1], [1 + 5, 2 + 30], "a: own (1, 2) + next of red (3, 5) -> (5, 30)")
        XCTAssertEqual(rows[2], [3 + 1 + 11, 5 + 4 + 70], "red: own + prev of a (1, 4) + next of circle (11, 70)")
        XCTAssertEqual(rows[3], [7 + 3, 11 + 10], "circle: own + prev of red (3, 10)")
        // Zero context weights change nothing (a model continues unchanged when they are added).
        let zero = Tensor(shape: [dim, dim])
        let same = try PromptEncoder(vocab: vocab, embedding: table, context: (zero, zero), length: length).encode("a red circle").features
        let plain = try PromptEncoder(vocab: vocab, embedding: table, length: length).encode("a red circle").features
        XCTAssertEqual(Array(UnsafeBufferPointer(start: same.data, count: length * dim)), Array(UnsafeBufferPointer(start: plain.data, count: length * dim)))
    }

    func testTinyModelAllModesSameSeeds() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = dir + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        let gpt = try Fixtures.json("llamagen/gpt_t2i_tiny.config.json"), vq = try Fixtures.json("llamagen/vq_tiny.config.json")
        try JSONSerialization.data(withJSONObject: ["gpt": gpt, "vq": vq, "name": "tiny-t2i"]).write(to: URL(fileURLWithPath: model + "/config.json"))
        try FileManager.default.copyItem(atPath: try Fixtures.path("llamagen/gpt_t2i_tiny.weights.safetensors"), toPath: model + "/gpt.safetensors")
        try FileManager.default.copyItem(atPath: try Fixtures.path("llamagen/vq_tiny.weights.safetensors"), toPath: model + "/vq.safetensors")
        let words = ["<pad>", "a", "on", "background", "left", "of", "right", "above", "below"] +
            PaletteColor.allCases.map(\.rawValue) + ShapeKind.allCases.map(\.rawValue)
        try (words.joined(separator: "\n") + "\n").write(toFile: model + "/text_vocab.txt", atomically: true, encoding: .utf8)
        var rng = RNG(seed: 3)
        let table = Tensor(shape: [words.count, 16], values: (0..<(words.count * 16)).map { _ in rng.nextNormal() })
        let cls = try XCTUnwrap(gpt["cls_token_num"] as? Int)
        let positions = Tensor(shape: [cls, 16], values: (0..<(cls * 16)).map { _ in rng.nextNormal() })
        try SafeTensorsWriter.write([.f32("embedding.weight", table), .f32("position_embedding.weight", positions)],
                                    to: model + "/text.safetensors")

        let images = dir + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        let (out, err) = try zipar(["eval", "--model", model, "--n", "1", "--windows", "4,8", "--top-k", "1", "--cfg-scale", "1",
                                    "--threads", "1", "--json", "--save-images", images], expect: 0)
        XCTAssertTrue(err.isEmpty, err)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let modes = try XCTUnwrap(report["modes"] as? [[String: Any]])
        XCTAssertEqual(modes.map { $0["decoding"] as? String }, ["raster", "window 4"], "window 8 = grid width is raster, skipped")
        XCTAssertEqual(modes.map { $0["forward_passes_per_image"] as? Double }, [64, 36])
        XCTAssertEqual(report["grid"] as? [Int], [8, 8])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: images).sorted(), ["0000_raster.png", "0000_w4.png"])
        // The saved image is the image analysed: re-analysing it gives the reported verdict.
        let results = try XCTUnwrap(report["results"] as? [[String: Any]])
        let prompt = try ShapePrompt.parse(try XCTUnwrap(results[0]["prompt"] as? String))
        let raster = try ImageFile.read(images + "/0000_raster.png").image
        XCTAssertEqual((results[0]["passed"] as? [Bool])?.first, Analyser().check(raster, prompt: prompt).passed)

        // Context weights come in pairs; one alone is refused by name.
        try SafeTensorsWriter.write([.f32("embedding.weight", table), .f32("context_prev.weight", Tensor(shape: [16, 16]))],
                                    to: model + "/text.safetensors")
        let (_, err0) = try zipar(["eval", "--model", model, "--n", "1"], expect: 1)
        XCTAssertTrue(err0.contains("context_next.weight"), err0)

        // A position table of the wrong shape is refused by name.
        try SafeTensorsWriter.write([.f32("embedding.weight", table), .f32("position_embedding.weight", Tensor(shape: [cls + 1, 16]))],
                                    to: model + "/text.safetensors")
        let (_, err1) = try zipar(["eval", "--model", model, "--n", "1"], expect: 1)
        XCTAssertTrue(err1.contains("position_embedding.weight"), err1)

        // A word the model does not know fails before any compute, with exit 1.
        try "<pad>\na\nred\n".write(toFile: model + "/text_vocab.txt", atomically: true, encoding: .utf8)
        try SafeTensorsWriter.write([.f32("embedding.weight", Tensor(shape: [3, 16]))], to: model + "/text.safetensors")
        let (_, err2) = try zipar(["eval", "--model", model, "--n", "1"], expect: 1)
        XCTAssertTrue(err2.contains("unknown word"), err2)
    }
}
