import CKernels
import Foundation
import XCTest
@testable import ZipARCore

/// Binarized (w1) Linear weights: the bit-serial kernel against plain integer arithmetic on both paths,
/// the post-training rule, the file contract, the loader's errors and a whole-model round trip.
final class W1Tests: XCTestCase {
    /// Random sign bits in the file layout, with row 0 all +1 and row 1 all -1 (the identity's extremes).
    static func randomBits(rows n: Int, cols k: Int, rng: inout RNG) -> [UInt8] {
        var bits = (0..<(n * k / 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for c in 0..<(k / 8) { bits[c] = 0xFF; if n > 1 { bits[k / 8 + c] = 0 } }
        return bits
    }

    /// The sign of (j, p) read straight from the contract: bit p%8 of byte p/8 of row j.
    static func sign(_ bits: [UInt8], _ j: Int, _ p: Int, cols k: Int) -> Int { (bits[j * k / 8 + p / 8] >> UInt8(p % 8)) & 1 == 1 ? 1 : -1 }

    /// The paths to run: the portable one always, AVX2 and AVX-512 where the CPU has them.
    func paths() -> [(level: Int32, name: String)] {
        defer { ck_qkernel_force(-1) }
        var out: [(Int32, String)] = []
        for (level, name) in [(Int32(0), "portable"), (1, "avx2"), (-1, "avx512")] {
            ck_qkernel_force(level)
            if ck_w1_path() == (level < 0 ? 2 : level) { out.append((level, name)) }
        }
        return out
    }

    func testPlanesMatchTheBitsOfUOnEveryPlanePath() {
        defer { ck_qkernel_force(-1) }
        var rng = RNG(seed: 21)
        let m = 3, k = 192
        var xq = (0..<(m * k)).map { _ in Int8(Int(rng.next() % 255) - 127) }
        xq[0] = -127; xq[1] = 127; xq[2] = 0; xq[3] = -128
        var want = [UInt64](repeating: 0, count: m * k / 8)
        for i in 0..<m { for p in 0..<k {
            let u = UInt64(Int(xq[i * k + p]) + 128)
            for b in 0..<8 where (u >> UInt64(b)) & 1 == 1 { want[(i * (k / 64) + p / 64) * 8 + b] |= 1 << UInt64(p % 64) }
        } }
        for path in paths() where path.name != "avx2" {   // the AVX2 path reads xq and needs no planes
            ck_qkernel_force(path.level)
            var got = [UInt64](repeating: 0, count: m * k / 8)
            ck_w1_planes(xq, Int32(m), Int32(k), &got)
            XCTAssertEqual(got, want, path.name)
        }
    }

    func testKernelMatchesIntegerReferenceOnEveryPath() {
        defer { ck_qkernel_force(-1) }
        var rng = RNG(seed: 22)
        let ps = paths()
        print("w1 paths tested: \(ps.map { $0.name })")
        var cases: [(m: Int, n: Int, k: Int)] = []
        for m in [1, 2, 3, 5, 8, 17] { for k in [64, 192, 320] { cases.append((m, 37, k)) } }
        cases.append((3, 1000, 320))   // large enough to be split across workers
        // Past 4096 columns the AVX2 path widens its int16 sums block by block; row 0 (q = 127 everywhere)
        // against weight row 0 (all +1) is the largest sum a block can hold.
        cases.append((2, 9, 4160))
        for (m, n, k) in cases {
            let bits = Self.randomBits(rows: n, cols: k, rng: &rng)
            let alphas = (0..<n).map { _ in abs(rng.nextNormal()) * 0.02 + 1e-3 }
            let lin = QuantizedLinear(signBits: bits, rows: n, cols: k, alphas: alphas)
            let x = Tensor(shape: [m, k])
            for i in 0..<x.count { x[i] = rng.nextNormal() * (i % 7 == 0 ? 5 : 1) }
            for p in 0..<k { x[p] = 3 }        // row 0 constant: every q = 127
            // Per-token INT8 as W8A8: s = max|x| / 127, q = clamp(RNE(x / s), -127, 127).
            var sx = [Float](repeating: 0, count: m), xq = [Int8](repeating: 0, count: m * k)
            for i in 0..<m {
                let amax = (0..<k).map { abs(x[i * k + $0]) }.max()!
                sx[i] = max(amax, 1e-5) / 127
                for p in 0..<k { xq[i * k + p] = Int8(min(max((x[i * k + p] / sx[i]).rounded(.toNearestOrEven), -127), 127)) }
            }
            var want = [Int32](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var a = 0
                for p in 0..<k { a += Self.sign(bits, j, p, cols: k) * Int(xq[i * k + p]) }
                want[i * n + j] = Int32(a)
            } }
            let label = "m=\(m) n=\(n) k=\(k)"
            for path in ps {
                ck_qkernel_force(path.level)
                let y = Tensor(shape: [m, n])
                var acc = [Int32](repeating: 0, count: m * n)
                XCTAssertEqual(lin.apply(x.data, rows: m, into: y.data, accumulators: &acc), xq, "\(label) \(path.name)")
                XCTAssertEqual(acc, want, "\(label) \(path.name)")
                var bad = 0
                for i in 0..<m { for j in 0..<n where y[i * n + j] != Float(want[i * n + j]) * (alphas[j] * sx[i]) { bad += 1 } }
                XCTAssertEqual(bad, 0, "\(label) \(path.name): outputs differ from float(acc) * (alpha * sx)")
                let y2 = Tensor(shape: [m, n])
                lin.apply(x.data, rows: m, into: y2.data)
                XCTAssertEqual(y2.array, y.array, "\(label) \(path.name)")
                // Against the float product of the dequantized weight: with the dequantized activations
                // (q * sx) it is the same number up to float rounding; with the original activations the
                // difference is bounded by the activation rounding (|x - q sx| <= sx / 2 per column).
                let w = lin.dequantized()
                var worst: Double = 0, worstBound: Double = 0
                for i in 0..<m { for j in 0..<n {
                    var dq = 0.0, mag = 0.0, fx = 0.0
                    for p in 0..<k {
                        let wv = Double(w[j * k + p])
                        dq += wv * Double(xq[i * k + p]) * Double(sx[i]); mag += abs(wv * Double(xq[i * k + p]) * Double(sx[i]))
                        fx += wv * Double(x[i * k + p])
                    }
                    worst = max(worst, abs(Double(y[i * n + j]) - dq) / max(mag, 1e-30))
                    worstBound = max(worstBound, abs(Double(y[i * n + j]) - fx) / (Double(alphas[j]) * Double(sx[i]) / 2 * Double(k) * 1.0001))
                } }
                XCTAssertLessThan(worst, 1e-6, "\(label) \(path.name)")
                XCTAssertLessThanOrEqual(worstBound, 1, "\(label) \(path.name)")
            }
        }
    }

    func testPTQRuleMatchesNaiveComputation() {
        var rng = RNG(seed: 23)
        let n = 9, k = 128
        var w = (0..<(n * k)).map { _ in rng.nextNormal() * 0.05 + 0.01 }
        for p in 0..<k { w[2 * k + p] = 0.25 }   // a constant row
        for p in 0..<k { w[3 * k + p] = 0 }      // a zero row
        let lin = w.withUnsafeBufferPointer { QuantizedLinear.w1(weight: $0.baseAddress!, rows: n, cols: k) }
        XCTAssertEqual(lin.scheme, .w1)
        XCTAssertEqual(lin.bytes, n * k / 8 + 8 * n)
        for j in 0..<n {
            let row = Array(w[(j * k)..<((j + 1) * k)])
            let mu = Float(row.reduce(0.0) { $0 + Double($1) } / Double(k))
            let alpha = Float(row.reduce(0.0) { $0 + Double(abs($1 - mu)) } / Double(k))
            for p in 0..<k { XCTAssertEqual(lin.w8(j, p), row[p] - mu >= 0 ? 1 : -1, "row \(j) col \(p)") }
            if j == 2 || j == 3 {
                XCTAssertEqual(lin.rowScales[j], .leastNormalMagnitude, "constant row \(j) keeps a positive alpha")
            } else {
                XCTAssertEqual(lin.rowScales[j], alpha, accuracy: alpha * 1e-6, "row \(j)")
            }
            let dq = lin.dequantized()
            for p in 0..<k { XCTAssertEqual(dq[j * k + p], lin.rowScales[j] * Float(lin.w8(j, p))) }
        }
        XCTAssertThrowsError(try ModelQuantizer.quantizeW1(Linear(weight: Tensor(shape: [4, 72])))) { XCTAssertTrue("\($0)".contains("multiples of 64"), "\($0)") }
    }

    /// A file written by hand from the contract's words (not by our writer) loads to the weights it describes.
    func testHandWrittenFileFollowsTheContract() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = 5, k = 128
        func positive(_ j: Int, _ p: Int) -> Bool { (p * 7 + j) % 3 == 0 || p == 127 }
        var bytes = [UInt8](repeating: 0, count: n * k / 8)
        for j in 0..<n { for c in 0..<(k / 8) { for t in 0..<8 where positive(j, 8 * c + t) { bytes[j * (k / 8) + c] |= 1 << UInt8(t) } } }
        let alphas: [Float] = [0.5, 1, 2, 0.125, 3]
        try SafeTensorsWriter.write([SafeTensorsWriter.Entry(name: "l.qweight", dtype: .U8, shape: [n, k / 8], bytes: Data(bytes)),
                                     SafeTensorsWriter.Entry(name: "l.wscales8", dtype: .F32, shape: [n], bytes: alphas.withUnsafeBytes { Data($0) })],
                                    to: dir + "/h.safetensors")
        let lin = try QuantFormat.loadLinear(try SafeTensorsFile(path: dir + "/h.safetensors"), "l.weight", shape: [n, k])
        XCTAssertEqual(lin.scheme, .w1)
        let dq = lin.quantized!.dequantized()
        for j in 0..<n { for p in 0..<k { XCTAssertEqual(dq[j * k + p], positive(j, p) ? alphas[j] : -alphas[j], "(\(j), \(p))") } }
        // Written back, the entries are the same bytes.
        let back = QuantFormat.entries(lin, name: "l.weight")
        XCTAssertEqual(back.map(\.name), ["l.qweight", "l.wscales8"])
        XCTAssertEqual(back[0].shape, [n, k / 8]); XCTAssertEqual(back[0].dtype, .U8)
        XCTAssertEqual([UInt8](back[0].bytes), bytes)
        XCTAssertEqual(back[1].bytes, alphas.withUnsafeBytes { Data($0) })
    }

    func testLoaderRejectsBadW1Tensors() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func entries(n: Int, k: Int, bitsShape: [Int]? = nil, alphas: [Float]? = nil) -> [SafeTensorsWriter.Entry] {
            let shape = bitsShape ?? [n, k / 8]
            let a = alphas ?? [Float](repeating: 0.5, count: n)
            return [SafeTensorsWriter.Entry(name: "l.qweight", dtype: .U8, shape: shape, bytes: Data(repeating: 0x5A, count: shape.reduce(1, *))),
                    SafeTensorsWriter.Entry(name: "l.wscales8", dtype: .F32, shape: [a.count], bytes: a.withUnsafeBytes { Data($0) })]
        }
        func load(_ e: [SafeTensorsWriter.Entry], shape: [Int]) throws -> Linear {
            try SafeTensorsWriter.write(e, to: dir + "/x.safetensors")
            return try QuantFormat.loadLinear(try SafeTensorsFile(path: dir + "/x.safetensors"), "l.weight", shape: shape)
        }
        XCTAssertEqual(try load(entries(n: 8, k: 64), shape: [8, 64]).scheme, .w1)
        func expectError(_ e: [SafeTensorsWriter.Entry], shape: [Int] = [8, 64], _ text: String, line: UInt = #line) {
            XCTAssertThrowsError(try load(e, shape: shape), line: line) { err in
                // One ZipARError naming the file and the tensor ('l' or 'l.wscales8').
                XCTAssertTrue(err is ZipARError, "\(err)", line: line)
                XCTAssertTrue("\(err)".contains("x.safetensors") && "\(err)".contains("'l"), "\(err)", line: line)
                XCTAssertTrue("\(err)".contains(text), "\(err)", line: line)
            }
        }
        expectError(entries(n: 8, k: 64, bitsShape: [8, 9]), "expected [8, 32] (W4")
        expectError(entries(n: 8, k: 64, bitsShape: [7, 8]), "expected [8, 32] (W4")
        expectError(entries(n: 8, k: 72), shape: [8, 72], "multiple of 64, got 72")
        expectError(entries(n: 8, k: 64, alphas: [0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5, 0.5]), "must be positive")
        expectError(entries(n: 8, k: 64, alphas: [0.5, 0.5, -1, 0.5, 0.5, 0.5, 0.5, 0.5]), "must be positive")
        expectError(entries(n: 8, k: 64, alphas: [0.5, .nan, 1, 0.5, 0.5, 0.5, 0.5, 0.5]), "non-finite")
        expectError(entries(n: 8, k: 64, alphas: [0.5, .infinity, 1, 0.5, 0.5, 0.5, 0.5, 0.5]), "non-finite")
        expectError(entries(n: 8, k: 64, alphas: [0.5, 0.5]), "wscales8 has shape [2]")
        expectError(Array(entries(n: 8, k: 64).prefix(1)), "missing tensor 'l.wscales8'")
    }

    func tinyGPT(_ weights: SafeTensorsFile) throws -> GPT {
        try GPT(config: try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json")), weights: weights)
    }

    func logits(_ gpt: GPT, label: Int, tokens: [Int]) throws -> [Float] {
        try QuantizationQuality.teacherForcedLogits(gpt, CalibrationSample(condition: .classLabel(label), tokens: tokens))
    }

    /// Quantize the tiny model to w1, save, load: same scheme, same head, bit-identical logits; twice the same file.
    func testSaveLoadRoundTrip() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let original = try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors")
        var rng = RNG(seed: 24)
        let tokens = (0..<64).map { _ in Int(rng.next() % 512) }
        var files: [Data] = []
        for run in 0..<2 {
            let gpt = try tinyGPT(original)
            try ModelQuantizer.quantize(gpt, settings: QuantizeSettings(scheme: .w1), samples: [])
            XCTAssertEqual(gpt.weightScheme, .w1); XCTAssertEqual(gpt.output.scheme, .w8a8)
            let path = dir + "/w1-\(run).safetensors"
            try SafeTensorsWriter.write(try QuantFormat.modelEntries(gpt, original: original), to: path)
            files.append(try Data(contentsOf: URL(fileURLWithPath: path)))
            let file = try SafeTensorsFile(path: path)
            XCTAssertEqual(file.tensors["layers.1.feed_forward.w2.qweight"]?.shape, [64, 192 / 8])
            XCTAssertEqual(file.tensors["layers.1.feed_forward.w2.qweight"]?.dtype, .U8)
            let loaded = try tinyGPT(file)
            XCTAssertEqual(loaded.weightScheme, .w1); XCTAssertEqual(loaded.output.scheme, .w8a8)
            XCTAssertEqual(loaded.streamedBytesPerPass, gpt.streamedBytesPerPass)
            XCTAssertEqual(try logits(loaded, label: 3, tokens: tokens), try logits(gpt, label: 3, tokens: tokens))
        }
        XCTAssertEqual(files[0], files[1], "w1 quantization is not deterministic")
    }

    /// A mixed file as a trained export may be: F16 embeddings, layer 0's wqkv and the head float, the
    /// other block Linears w1. It loads, reports w1, and runs the same as the model built in memory.
    func testMixedFileLoads() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let original = try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors")
        // Step 1: the float model with F16 embeddings.
        var f16: [SafeTensorsWriter.Entry] = []
        for info in original.tensors.values.sorted(by: { $0.begin < $1.begin }) {
            if info.name == "tok_embeddings.weight" || info.name == "cls_embedding.embedding_table.weight" {
                let h = try original.tensor(info.name).array.map { Float16($0).bitPattern }
                f16.append(SafeTensorsWriter.Entry(name: info.name, dtype: .F16, shape: info.shape, bytes: h.withUnsafeBytes { Data($0) }))
            } else {
                f16.append(SafeTensorsWriter.Entry(name: info.name, dtype: info.dtype, shape: info.shape, bytes: Data(original.bytes(info))))
            }
        }
        try SafeTensorsWriter.write(f16, to: dir + "/f16.safetensors")
        let floatFile = try SafeTensorsFile(path: dir + "/f16.safetensors")
        // Step 2: binarize all block Linears but layer 0's wqkv, in memory; keep the head float.
        let gpt = try tinyGPT(floatFile)
        for (i, l) in gpt.layers.enumerated() {
            for lin in [l.wqkv, l.wo, l.w1, l.w3, l.w2] where !(i == 0 && lin === l.wqkv) { try ModelQuantizer.quantizeW1(lin) }
        }
        XCTAssertEqual(gpt.layers[0].wqkv.scheme, .fp32)
        XCTAssertEqual(gpt.weightScheme, .w1)
        try SafeTensorsWriter.write(try QuantFormat.modelEntries(gpt, original: floatFile), to: dir + "/mixed.safetensors")
        let mixed = try SafeTensorsFile(path: dir + "/mixed.safetensors")
        XCTAssertEqual(mixed.tensors["tok_embeddings.weight"]?.dtype, .F16)
        XCTAssertNotNil(mixed.tensors["layers.0.attention.wqkv.weight"]); XCTAssertNotNil(mixed.tensors["output.weight"])
        let loaded = try tinyGPT(mixed)
        XCTAssertEqual(loaded.weightScheme, .w1)
        XCTAssertEqual(loaded.layers[0].wqkv.scheme, .fp32); XCTAssertEqual(loaded.output.scheme, .fp32)
        let tokens = (0..<64).map { ($0 * 37) % 512 }
        XCTAssertEqual(try logits(loaded, label: 1, tokens: tokens), try logits(gpt, label: 1, tokens: tokens))
    }
}

/// The shipped binarized model end to end: every W1 path this machine has (ZIPAR_QKERNEL_LEVEL caps the
/// integer kernels) generates the same tokens, because all paths compute the same int32 sums.
final class W1ModelPathTests: XCTestCase {
    func testShippedW1ModelGeneratesTheSameTokensOnEveryPath() throws {
        let model = Fixtures.packageRoot + "/models/default-w1"
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var outputs: [Data] = []
        var levels = ["0"]
        ck_qkernel_force(-1)
        if ck_qkernel_level() >= 1 { levels.append("1") }
        if ck_w1_path() == 2 { levels.append("2") }
        for level in levels {
            let tokens = "\(dir)/tokens\(level).bin"
            try runZipar(["generate", "--model", model, "--prompt", "a green triangle left of a purple diamond", "--seed", "3",
                          "--window", "4", "--threads", "2", "--quiet", "-o", "\(dir)/img\(level).png", "--tokens-out", tokens],
                         environment: ["ZIPAR_QKERNEL_LEVEL": level])
            outputs.append(try Data(contentsOf: URL(fileURLWithPath: tokens)))
        }
        print("w1 model paths compared: levels \(levels)")
        XCTAssertFalse(outputs[0].isEmpty)
        for (i, o) in outputs.enumerated().dropFirst() { XCTAssertEqual(o, outputs[0], "level \(levels[i]) differs from the portable path") }
    }
}
