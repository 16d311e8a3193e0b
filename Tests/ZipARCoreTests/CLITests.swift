import Foundation
import XCTest
@testable import ZipARCore

/// End-to-end tests of the `zipar` executable on a tiny model assembled from the fixtures
/// (GPT gpt_c2i_tiny + VQ vq_tiny: 8x8 tokens -> 64x64 pixels).
final class CLITests: XCTestCase {
    var dir = ""
    var model: String { dir + "/model" }

    static var binary: String {
        // The test bundle sits in the same build folder as the executable.
        let bundle = Bundle(for: CLITests.self).bundleURL
        let candidates = [bundle.appendingPathComponent("zipar"), bundle.deletingLastPathComponent().appendingPathComponent("zipar"),
                          URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("zipar")]
        return (candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[0]).path
    }

    override func setUpWithError() throws {
        dir = try Fixtures.tempDir()
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        let gpt = try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"), vq = try Fixtures.json("llamagen/vq_tiny.config.json")
        let cfg = try JSONSerialization.data(withJSONObject: ["gpt": gpt, "vq": vq, "name": "tiny"])
        try cfg.write(to: URL(fileURLWithPath: model + "/config.json"))
        try FileManager.default.copyItem(atPath: try Fixtures.path("llamagen/gpt_c2i_tiny.weights.safetensors"), toPath: model + "/gpt.safetensors")
        try FileManager.default.copyItem(atPath: try Fixtures.path("llamagen/vq_tiny.weights.safetensors"), toPath: model + "/vq.safetensors")
        try "zero\none\ntwo\nthree, tri\nfour\nfive\nsix\nseven\neight\nnine\n".write(toFile: model + "/classes.txt", atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    func zipar(_ args: [String], expect code: Int32 = 0, environment: [String: String] = [:], directory: String? = nil,
               file: StaticString = #filePath, line: UInt = #line) throws -> (out: String, err: String) {
        try runZipar(args, expect: code, environment: environment, directory: directory, file: file, line: line)
    }

    func files() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != "model" }.sorted() }

    func testGenerateCountSeedsMetadataTokensAndDecode() throws {
        try zipar(["generate", "--model", model, "--class", "tri", "--window", "3", "--count", "2", "--seed", "5",
                   "-o", dir + "/out.png", "--tokens-out", dir + "/t.json", "--quiet"])
        XCTAssertEqual(try files(), ["out.png", "out_2.png", "t.json"])
        let (img2, text2) = try ImageFile.read(dir + "/out_2.png")
        let params = try XCTUnwrap(text2["parameters"])
        XCTAssertTrue(params.hasPrefix("class 3 (three, tri)\n"), params)
        for field in ["Seed: 6", "Window: 3", "Policy: ideal", "Forward passes: 29", "CFG scale: 4.0", "Top-k: 2000", "Model: tiny", "Attention: zipar"] {
            XCTAssertTrue(params.contains(field), "\(field) missing in \(params)")
        }
        // --attention drawn is recorded, and changes a ZipAR image of the same seed.
        try zipar(["generate", "--model", model, "--class", "tri", "--window", "3", "--seed", "6", "--attention", "drawn",
                   "-o", dir + "/drawn.png", "--quiet"])
        let (drawnImage, drawnText) = try ImageFile.read(dir + "/drawn.png")
        XCTAssertTrue(try XCTUnwrap(drawnText["parameters"]).contains("Attention: drawn"))
        XCTAssertNotEqual(drawnImage.pixels, img2.pixels)
        try FileManager.default.removeItem(atPath: dir + "/drawn.png")
        // Image i of --count equals a single run with seed+i, bit for bit.
        try zipar(["generate", "--model", model, "--class", "3", "--window", "3", "--seed", "6", "-o", dir + "/single.png"])
        XCTAssertEqual(try ImageFile.read(dir + "/single.png").image, img2)
        // Tokens written by generate decode back to the same pixels.
        let tokens = try TokensFile.read(dir + "/t.json", vocab: 512)
        XCTAssertEqual(tokens.height, 8); XCTAssertEqual(tokens.images.count, 2)
        try zipar(["decode", "--model", model, "--tokens", dir + "/t.json", "-o", dir + "/dec.png"])
        XCTAssertEqual(try ImageFile.read(dir + "/dec_2.png").image, img2)
        // JPEG output by extension.
        try zipar(["generate", "--model", model, "--class", "1", "-o", dir + "/a.jpg", "--jpeg-quality", "80"])
        XCTAssertEqual(try ImageFile.format(for: dir + "/a.jpg"), .jpeg)
        XCTAssertEqual(try ImageFile.read(dir + "/a.jpg").image.width, 64)
    }

    func testBadInputEndsWithOneMessageAndNothingOnDisk() throws {
        let out = dir + "/x.png"
        let usage: [[String]] = [
            ["generate", "--model", model, "--class", "1", "--top-p", "1.5", "-o", out],
            ["generate", "--model", model, "--class", "1", "--window", "0", "-o", out],
            ["generate", "--model", model, "--class", "1", "-o", dir + "/x.bmp"],
            ["generate", "--model", model, "-o", out],
            ["generate", "--model", model, "--class", "1", "--prompt", "a", "-o", out],
            ["generate", "--model", model, "--class", "1", "--zipar-policy", "diagonal", "-o", out],
            ["generate", "--model", model, "--class", "1", "--bogus"],
            ["generate", "--model", model, "--class", "1", "--kv-cache", "int4", "-o", out],
            ["generate", "--model", model, "--class", "1", "--kv-sparsity", "zipvl", "-o", out],
            ["generate", "--model", model, "--class", "1", "--kv-cache", "zipcache", "--kv-sparsity", "h2o", "-o", out],
            ["generate", "--model", model, "--class", "1", "--kv-cache", "zipcache", "--zipvl-tau", "1.5", "-o", out],
            ["generate", "--model", model, "--class", "1", "--zipcache-score", "approx", "-o", out],
            ["generate", "--model", model, "--class", "1", "--kv-merge", "minicache", "--kv-cache", "fp16", "-o", out],
            ["generate", "--model", model, "--class", "1", "--kv-merge", "average", "--kv-cache", "kivi4", "-o", out],
            ["bench", "--random-init", "gpt-b", "--kv-caches", "fp32,zip"],
            ["generate", "--model", model, "--class", "1", "--attention", "sideways", "-o", out],
        ]
        for args in usage { try zipar(args, expect: 2) }
        let runtime: [([String], String)] = [
            (["generate", "--model", model, "--class", "tiger", "-o", out], "unknown class 'tiger'"),
            (["generate", "--model", model, "--class", "10", "-o", out], "outside 0..<10"),
            (["generate", "--model", dir + "/nope", "--class", "1", "-o", out], "does not exist"),
            (["generate", "--model", model, "--class", "1", "-o", dir + "/missing/x.png"], "does not exist"),
            (["generate", "--model", model, "--class", "1", "--window", "9", "-o", out], "larger than the grid"),
            (["generate", "--model", model, "--prompt", "a red circle", "-o", out], "class-conditional"),
            (["decode", "--model", model, "--tokens", dir + "/none.json", "-o", out], "cannot read"),
            (["generate", "--model", model, "--class", "1", "--window", "2", "--zipar-holes", "--attention", "drawn", "-o", out],
             "pick one"),
        ]
        for (args, message) in runtime {
            let r = try zipar(args, expect: 1)
            XCTAssertTrue(r.err.contains(message), "'\(message)' not in: \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "one line expected: \(r.err)")
        }
        XCTAssertEqual(try files(), [], "nothing may be left on disk")
    }

    func testHostileModelFilesAreRejectedCleanly() throws {
        let gpt = model + "/gpt.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: gpt))
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: gpt))      // truncated
        var r = try zipar(["generate", "--model", model, "--class", "1", "-o", dir + "/x.png"], expect: 1)
        XCTAssertTrue(r.err.contains("truncated"), r.err)
        var huge = Data(count: 8)
        huge.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(1 << 40).littleEndian, as: UInt64.self) }
        try huge.write(to: URL(fileURLWithPath: gpt))                                 // absurd header length
        r = try zipar(["info", "--model", model], expect: 1)
        XCTAssertTrue(r.err.contains("header length"), r.err)
        var config = try readJSONObject(model + "/config.json")
        config["attention"] = "sideways"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: model + "/config.json"))
        r = try zipar(["info", "--model", model], expect: 1)
        XCTAssertTrue(r.err.contains("\"attention\" must be \"zipar\" or \"drawn\", got sideways"), r.err)
        try "{\"gpt\": {\"dim\": 60, \"n_head\": 7}, \"vq\": {}}".write(toFile: model + "/config.json", atomically: true, encoding: .utf8)
        r = try zipar(["info", "--model", model], expect: 1)
        XCTAssertTrue(r.err.contains("not divisible"), r.err)
        XCTAssertEqual(try files(), [])
    }

    func testGridWritesImageMetadataAndLegend() throws {
        let r = try zipar(["grid", "--model", model, "--classes", "1,tri", "--windows", "4,2", "--seeds", "0,1", "-o", dir + "/g.png", "--quiet"])
        XCTAssertTrue(r.out.contains("3 rows x 4 columns"), r.out)
        let (image, text) = try ImageFile.read(dir + "/g.png")
        XCTAssertEqual(image.width, 4 * 64 + 5 * 4); XCTAssertEqual(image.height, 3 * 64 + 4 * 4)
        let cells = try XCTUnwrap(text["zipar-grid"])
        XCTAssertTrue(cells.contains("Window: 2") && cells.contains("Seed: 1") && cells.contains("class 3 (three, tri)"), cells)
        let legend = try String(contentsOfFile: dir + "/g.md", encoding: .utf8)
        XCTAssertTrue(legend.contains("window 4 (ideal), 36 passes"), legend)
        // The same seed down a column: the raster cell equals a plain generate with that seed.
        try zipar(["generate", "--model", model, "--class", "1", "--seed", "1", "-o", dir + "/one.png"])
        let single = try ImageFile.read(dir + "/one.png").image
        for y in 0..<64 { for x in 0..<64 { for c in 0..<3 {
            XCTAssertEqual(image.pixels[((4 + y) * image.width + (4 + 64 + 4) + x) * 3 + c], single.pixels[(y * 64 + x) * 3 + c])
        } } }
        try zipar(["grid", "--model", model, "--classes", "1", "-o", dir + "/g.jpg"], expect: 2)
    }

    func testDefaultModelLookup() throws {
        // $ZIPAR_MODEL wins; then models/default under the current directory.
        XCTAssertTrue(try zipar(["info"], environment: ["ZIPAR_MODEL": model], directory: dir).out.contains("model        tiny"))
        try FileManager.default.createDirectory(atPath: dir + "/proj/models", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: model, toPath: dir + "/proj/models/default")
        XCTAssertTrue(try zipar(["info"], environment: ["ZIPAR_MODEL": ""], directory: dir + "/proj").out.contains("8x8 tokens"))
    }

    /// `quantize --scheme w1` (post-training binarization) writes a model every command runs unchanged.
    func testQuantizeW1ThenGenerate() throws {
        let r = try zipar(["quantize", "--model", model, "--scheme", "w1", "-o", dir + "/w1"])
        XCTAssertTrue(r.out.contains("wrote") && r.out.contains("(w1,") && r.out.contains("top-1 agreement"), r.out)
        let q = try ModelDirectory(path: dir + "/w1")
        let quant = try XCTUnwrap(q.raw["quant"] as? [String: Any])
        XCTAssertEqual(quant["scheme"] as? String, "w1"); XCTAssertEqual(quant["head"] as? String, "w8a8")
        let gpt = try q.loadGPT()
        XCTAssertEqual(gpt.weightScheme, .w1); XCTAssertEqual(gpt.output.scheme, .w8a8)
        let file = try SafeTensorsFile(path: dir + "/w1/gpt.safetensors")
        XCTAssertEqual(file.tensors["layers.0.attention.wqkv.qweight"]?.shape, [192, 8])
        XCTAssertEqual(file.tensors["layers.0.attention.wqkv.qweight"]?.dtype, .U8)
        try zipar(["generate", "--model", dir + "/w1", "--class", "1", "--window", "4", "-o", dir + "/w1.png", "--quiet"])
        XCTAssertEqual(try ImageFile.read(dir + "/w1.png").image.width, 64)
        XCTAssertTrue(try zipar(["info", "--model", dir + "/w1"]).out.contains("quant        w1 blocks"))
        XCTAssertTrue(try zipar(["bench", "--model", dir + "/w1", "--windows", "4", "--no-vq", "--no-passes"]).out.contains("w1"))
        // In-memory binarization of the fp32 model next to the others.
        let b = try zipar(["bench", "--model", model, "--schemes", "fp32,w1", "--windows", "4", "--no-vq", "--no-passes"]).out
        XCTAssertTrue(b.contains("(w1)"), b)
        try zipar(["quantize", "--model", model, "--scheme", "w1", "--fp32-head", "-o", dir + "/w1f", "--quiet"])
        XCTAssertEqual(try ModelDirectory(path: dir + "/w1f").loadGPT().output.scheme, .fp32)
    }

    func testInfoAndSchedule() throws {
        let info = try zipar(["info", "--model", model]).out
        XCTAssertTrue(info.contains("8x8 tokens -> 64x64 px"), info)
        let s = try zipar(["schedule", "--grid", "24x24", "--window", "8", "--policy", "upstream"]).out
        XCTAssertTrue(s.contains("forward passes  224"), s)
    }
}
