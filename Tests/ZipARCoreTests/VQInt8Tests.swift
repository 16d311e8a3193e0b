import CKernels
import Foundation
import XCTest
@testable import ZipARCore

/// The INT8 VQ decoder: the integer convolution against a naive reference (exact int32 sums), the
/// MAE calibration on the shipped model against fp32 (PSNR), the file format and the CLI.
final class VQInt8Tests: XCTestCase {
    static let modelPath = Fixtures.packageRoot + "/models/default"

    func randomTensor(_ shape: [Int], _ rng: inout RNG, scale: Float = 1) -> Tensor {
        let t = Tensor(shape: shape)
        for i in 0..<t.count { t.data[i] = scale * (2 * Float(rng.nextUniform()) - 1) }
        return t
    }

    /// Every shape class of the packing (16-pixel groups inside a row, at the edges, wrapping rows,
    /// a partial last group) and of the kernel (channel and pixel remainders), on each kernel level.
    func testInt8ConvMatchesIntegerReference() throws {
        let integer = QuantizedConv.integerPath
        defer { ck_qkernel_force(-1); QuantizedConv.integerPath = integer }
        QuantizedConv.integerPath = true
        var rng = RNG(seed: 5)
        for (cout, cin, k, h, w) in [(7, 8, 3, 4, 32), (13, 12, 3, 5, 20), (3, 16, 3, 3, 7), (16, 8, 1, 6, 16), (6, 4, 3, 17, 48)] {
            let x = randomTensor([cin, h, w], &rng, scale: 2)
            let wt = randomTensor([cout, cin, k, k], &rng, scale: 0.3), bias = randomTensor([cout], &rng)
            let (qw, ws) = QuantizedConv.quantizeWeights(wt)
            let (s, z) = QuantizedConv.activationCandidate(lo: -1.5, hi: 1.7, ratio: 1)  // clips part of x: saturation is covered too
            let q = try QuantizedConv(outChannels: cout, inChannels: cin, kernel: k, qweight: qw, wscales: ws, inputScale: s, inputZero: z)
            // Reference: the same UINT8 input, zero point outside the image, a plain 6-deep loop.
            let u = (0..<x.count).map { Int(min(max((x.data[$0] * (1 / s)).rounded(.toNearestOrEven) + Float(z), 0), 255)) }
            var want = [Int32](repeating: 0, count: cout * h * w)
            for o in 0..<cout { for y in 0..<h { for xx in 0..<w {
                var acc = 0
                for c in 0..<cin { for ky in 0..<k { for kx in 0..<k {
                    let sy = y + ky - k / 2, sx = xx + kx - k / 2
                    let v = sy >= 0 && sy < h && sx >= 0 && sx < w ? u[(c * h + sy) * w + sx] : z
                    acc += (v - z) * Int(qw[((o * cin + c) * k + ky) * k + kx])
                } } }
                want[(o * h + y) * w + xx] = Int32(acc)
            } } }
            var outs: [[Float]] = []
            for level in [0, 2] {
                ck_qkernel_force(Int32(level))
                var acc = [Int32](repeating: 0, count: cout * h * w)
                let out = Tensor(shape: [cout, h, w])
                acc.withUnsafeMutableBufferPointer { q.apply(x, bias: bias, into: out, accumulate: false, scratch: ConvScratch(), accumulators: $0.baseAddress) }
                XCTAssertEqual(acc, want, "\(cout)x\(cin)x\(k) at \(h)x\(w), level \(level)")
                for o in 0..<cout { for p in 0..<(h * w) {
                    XCTAssertEqual(out.data[o * h * w + p], Float(want[o * h * w + p]) * (s * ws[o]) + bias.data[o])
                } }
                // accumulate adds onto what is there.
                let acc2 = Tensor(shape: [cout, h, w]); acc2.fill(1)
                q.apply(x, bias: bias, into: acc2, accumulate: true, scratch: ConvScratch())
                for i in 0..<acc2.count { XCTAssertEqual(acc2.data[i], 1 + out.data[i]) }
                outs.append(out.array)
            }
            XCTAssertEqual(outs[0], outs[1], "kernel levels disagree")
            // The sgemm fallback (CPUs without VNNI): the same numbers up to fp32 rounding.
            QuantizedConv.integerPath = false
            let fb = Tensor(shape: [cout, h, w])
            q.apply(x, bias: bias, into: fb, accumulate: false, scratch: ConvScratch())
            QuantizedConv.integerPath = true
            for i in 0..<fb.count { XCTAssertEqual(fb.data[i], outs[1][i], accuracy: 1e-5 * max(1, abs(outs[1][i]))) }
            // And it is the convolution: close to fp32 with the dequantized weights.
            let ref = Conv2D(weight: q.dequantizedWeight(), bias: bias)(x.reshaped(x.shape), scratch: ConvScratch())
            let xc = Tensor(shape: x.shape)
            for i in 0..<x.count { xc.data[i] = s * Float(u[i] - z) }
            let refq = Conv2D(weight: q.dequantizedWeight(), bias: bias)(xc, scratch: ConvScratch())
            XCTAssertLessThan(maxAbsDiff(refq.data, outs[1], count: refq.count), 1e-3)
            XCTAssertGreaterThan(ref.count, 0)
        }
    }

    func testWeightClipMinimisesMAE() {
        var rng = RNG(seed: 3)
        let w = randomTensor([4, 64], &rng)
        let (q, s) = QuantizedConv.quantizeWeights(w)
        func mae(_ o: Int, _ scale: Float) -> Float {
            (0..<64).reduce(0) { $0 + abs(w.data[o * 64 + $1] - scale * min(max((w.data[o * 64 + $1] / scale).rounded(.toNearestOrEven), -127), 127)) }
        }
        for o in 0..<4 {
            let amax = (0..<64).reduce(Float(0)) { max($0, abs(w.data[o * 64 + $1])) }
            XCTAssertLessThanOrEqual(mae(o, s[o]), mae(o, amax / 127))
            XCTAssertEqual((0..<64).map { Float(q[o * 64 + $0]) }, (0..<64).map { min(max((w.data[o * 64 + $0] / s[o]).rounded(.toNearestOrEven), -127), 127) })
        }
    }

    /// Token grids the shipped model generates for seeded grammar prompts.
    static func modelLatents(_ dir: ModelDirectory, count: Int, seed: UInt64) throws -> [[Int]] {
        let gpt = try dir.loadGPT(), enc = try PromptEncoder.load(dir), side = dir.gpt.gridSize
        let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: side, width: side, window: side))
        var options = GenerationOptions()
        return try PromptSet.make(count: count, seed: seed).enumerated().map { i, p in
            let (f, m) = try enc.encode(p.prompt.text)
            options.seed = seed &+ UInt64(i)
            return try gen.generate(.caption(features: f, mask: m), options: options).tokens
        }
    }

    func testQuantizedShippedDecoderAgainstFP32() throws {
        let dir = try ModelDirectory(path: Self.modelPath)
        let side = dir.gpt.gridSize
        let calib = try Self.modelLatents(dir, count: 3, seed: 0), held = try Self.modelLatents(dir, count: 3, seed: 1_000_003)
        let dec = try dir.loadVQ(), ref = try dir.loadVQ()
        var settings = DecoderQuantizer.Settings()
        settings.candidates = 30  // 1 ... 0.71 (the CLI's 80 takes a while in a debug build)
        let layers = try DecoderQuantizer.quantize(dec, latents: calib, height: side, width: side, settings: settings)
        XCTAssertEqual(layers.count, 14)
        XCTAssertEqual(layers.first?.name, "decoder.conv_in"); XCTAssertEqual(layers.last?.name, "decoder.conv_out")
        XCTAssertTrue(dec.isQuantized); XCTAssertFalse(ref.isQuantized)
        let cmp = try DecoderQuantizer.compare(fp32: ref, int8: dec, latents: held, height: side, width: side, runs: 1)
        // Measured 46.8 dB mean / 43.3 min (CLI, 8 calibration latents, 80 ratios). A wrong zero point,
        // scale or layout gives < 25 dB.
        XCTAssertGreaterThan(cmp.psnrMean, 40, "\(cmp)")
        XCTAssertGreaterThan(cmp.psnrMin, 36, "\(cmp)")

        // Save, load: the same images bit for bit; deterministic bytes.
        let tmp = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let original = try SafeTensorsFile(path: dir.vqPath)
        let entries = QuantFormat.decoderEntries(dec, original: original)
        try SafeTensorsWriter.write(entries, to: tmp + "/vq.safetensors")
        let file = try SafeTensorsFile(path: tmp + "/vq.safetensors")
        XCTAssertEqual(file.tensors["decoder.conv_in.qweight"]?.dtype, .I8)
        XCTAssertEqual(file.tensors["decoder.conv_in.input_zero"]?.dtype, .U8)
        XCTAssertNil(file.tensors["decoder.conv_in.weight"])
        XCTAssertNotNil(file.tensors["decoder.mid.1.q.weight"])  // attention stays fp32
        let loaded = try VQDecoder(config: dir.vq, weights: file)
        XCTAssertEqual(loaded.convs.filter { $0.quantized != nil }.count, 14)
        for codes in held.prefix(1) {
            XCTAssertEqual(try loaded.decode(codes: codes, height: side, width: side).array, try dec.decode(codes: codes, height: side, width: side).array)
        }

        // Bad or missing scale tensors: a clear error naming the conv, no crash.
        func expectError(_ es: [SafeTensorsWriter.Entry], _ text: String) throws {
            try SafeTensorsWriter.write(es, to: tmp + "/bad.safetensors")
            XCTAssertThrowsError(try VQDecoder(config: dir.vq, weights: try SafeTensorsFile(path: tmp + "/bad.safetensors"))) {
                XCTAssertTrue("\($0)".contains(text), "\($0)")
            }
        }
        let n = "decoder.conv_in"
        try expectError(entries.filter { $0.name != n + ".input_zero" }, "missing \(n).input_zero")
        try expectError(entries.filter { $0.name != n + ".wscales8" }, "missing \(n).wscales8")
        try expectError(entries.map { $0.name == n + ".input_scale" ? .init(name: $0.name, dtype: .F32, shape: [1], bytes: [Float(0)].withUnsafeBytes { Data($0) }) : $0 }, "input_scale must be one positive")
        try expectError(entries.map { $0.name == n + ".wscales8" ? .init(name: $0.name, dtype: .F32, shape: [2], bytes: $0.bytes.prefix(8)) : $0 }, "expected F32 [64]")
        try expectError(entries.map { $0.name == n + ".wscales8" ? .init(name: $0.name, dtype: .F32, shape: $0.shape, bytes: Data(repeating: 0xFF, count: $0.bytes.count)) : $0 }, "finite")
        try expectError(entries.map { $0.name == n + ".qweight" ? .init(name: $0.name, dtype: .U8, shape: $0.shape, bytes: $0.bytes) : $0 }, "expected I8")
    }

    func testQuantizeDecoderCommand() throws {
        let tmp = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let r = try runZipar(["quantize", "--model", Self.modelPath, "--decoder", "int8-mae", "--calib", "2", "--check-prompts", "2", "-o", tmp + "/d"])
        XCTAssertTrue(r.out.contains("PSNR") && r.out.contains("transformer unchanged"), r.out)
        let q = try ModelDirectory(path: tmp + "/d")
        XCTAssertEqual((q.raw["vq_quant"] as? [String: Any])?["scheme"] as? String, "int8-mae")
        XCTAssertNil(q.raw["quant"])
        XCTAssertTrue(try q.loadVQ().isQuantized)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: tmp + "/d/gpt.safetensors")), try Data(contentsOf: URL(fileURLWithPath: Self.modelPath + "/gpt.safetensors")))
        XCTAssertTrue(try runZipar(["info", "--model", tmp + "/d"]).out.contains("vq quant     int8-mae: 14 INT8 convolutions"))
        try runZipar(["generate", "--model", tmp + "/d", "--prompt", "a red circle", "-o", tmp + "/a.png", "--quiet"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmp + "/a.png"))

        // Invalid combinations (usage errors), and a decoder that is already INT8.
        try runZipar(["quantize", "--model", Self.modelPath, "-o", tmp + "/x"], expect: 2)
        try runZipar(["quantize", "--model", Self.modelPath, "--scheme", "fp32", "-o", tmp + "/x"], expect: 2)
        try runZipar(["quantize", "--model", Self.modelPath, "--decoder", "int4", "-o", tmp + "/x"], expect: 2)
        XCTAssertTrue(try runZipar(["quantize", "--model", tmp + "/d", "--decoder", "int8-mae", "-o", tmp + "/x"], expect: 1).err.contains("already INT8"))
        XCTAssertTrue(try runZipar(["quantize", "--model", Self.modelPath, "--decoder", "int8-mae", "--decoder-keep-fp32", "decoder.conv_outt", "--calib", "1", "-o", tmp + "/x"], expect: 1).err.contains("no convolution named 'decoder.conv_outt'"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/x"))
    }
}
