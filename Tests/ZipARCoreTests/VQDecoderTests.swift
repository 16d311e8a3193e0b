import Foundation
import XCTest
@testable import ZipARCore

final class VQDecoderTests: XCTestCase {
    // MARK: - Fixture C (vq_tiny): official PyTorch goldens

    func loadTiny() throws -> (VQConfig, VQDecoder, SafeTensorsFile) {
        let config = try VQConfig(json: try Fixtures.json("llamagen/vq_tiny.config.json"))
        let weights = try Fixtures.safetensors("llamagen/vq_tiny.weights.safetensors")
        let io = try Fixtures.safetensors("llamagen/vq_tiny.io.safetensors")
        return (config, try VQDecoder(config: config, weights: weights), io)
    }

    func testTinyConfigIsRead() throws {
        let config = try VQConfig(json: try Fixtures.json("llamagen/vq_tiny.config.json"))
        XCTAssertEqual(config.ch, 32)
        XCTAssertEqual(config.decoder_ch_mult, [1, 1, 2, 2])
        XCTAssertEqual(config.z_channels, 32)
        XCTAssertEqual(config.codebook_size, 512)
        XCTAssertEqual(config.codebook_embed_dim, 8)
        XCTAssertEqual(config.num_res_blocks, 2)
    }

    /// The key list derived from the config equals the decode-path keys the official model has.
    func testParameterShapesMatchOfficialKeyList() throws {
        let json = try Fixtures.json("llamagen/vq_tiny.config.json")
        let config = try VQConfig(json: json)
        let all = try XCTUnwrap(json["state_dict_keys_full_model"] as? [[Any]])
        let official = all.compactMap { pair -> (String, [Int])? in
            let name = pair[0] as! String
            let shape = (pair[1] as! [NSNumber]).map { $0.intValue }
            let decodePath = name.hasPrefix("decoder.") || name.hasPrefix("post_quant_conv.") || name == "quantize.embedding.weight"
            return decodePath ? (name, shape) : nil
        }
        let ours = VQDecoder.parameterShapes(config: config)
        XCTAssertEqual(ours.count, official.count)
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: ours.map { ($0.name, $0.shape) }),
                       Dictionary(uniqueKeysWithValues: official.map { ($0.0, $0.1) }))
        // The fixture's weights file holds exactly these keys.
        let weights = try Fixtures.safetensors("llamagen/vq_tiny.weights.safetensors")
        XCTAssertEqual(Set(weights.tensors.keys), Set(ours.map { $0.name }))
        // Full VQ-16 decode path: 42.5M parameters per the spec.
        let vq16 = VQDecoder.parameterShapes(config: VQConfig()).reduce(0) { $0 + $1.shape.reduce(1, *) }
        XCTAssertEqual(Double(vq16 - 16384 * 8) / 1e6, 42.5, accuracy: 0.05)
    }

    func testTinyDecodeMatchesGoldens() throws {
        let (_, dec, io) = try loadTiny()
        let codes = try io.ints("input.codes")
        XCTAssertEqual(codes.count, 64)

        var stages: [String: Tensor] = [:]
        dec.debugHook = { name, t in stages[name] = Tensor(shape: t.shape, values: t.array) }  // copy: buffers get reused
        let image = try dec.decode(codes: codes, height: 8, width: 8)
        XCTAssertEqual(image.shape, [3, 64, 64])

        let checks: [(ours: String, golden: String)] = [
            ("latent", "out.latent"),
            ("post_quant_conv", "out.post_quant_conv"),
            ("conv_in", "dbg.decoder.conv_in_out"),
            ("mid", "dbg.decoder.mid_out"),
            ("conv_blocks.0", "dbg.decoder.conv_blocks.0_out"),
            ("conv_blocks.1", "dbg.decoder.conv_blocks.1_out"),
            ("conv_blocks.3", "dbg.decoder.conv_blocks.3_out"),
            ("image", "out.image"),
        ]
        for (ours, golden) in checks {
            let want = try io.tensor(golden)
            let got = try XCTUnwrap(stages[ours], "stage \(ours) was not reported")
            XCTAssertEqual([1] + got.shape, want.shape, ours)
            guard got.count == want.count else { continue }
            let err = maxAbsDiff(got.data, want.data, count: got.count)
            print("vq_tiny \(ours) vs \(golden): max abs err \(err)")
            XCTAssertLessThanOrEqual(err, 1e-4, ours)
        }

        // uint8 conversion vs the official HWC bytes.
        let want8 = try io.ints("out.image_uint8_hwc")
        let got8 = VQDecoder.toRGB8(image)
        XCTAssertEqual(got8.count, want8.count)
        var differing = 0, worst = 0
        for i in 0..<min(got8.count, want8.count) {
            let d = abs(Int(got8[i]) - want8[i])
            if d != 0 { differing += 1 }
            worst = max(worst, d)
        }
        print("vq_tiny uint8: \(differing) of \(got8.count) bytes differ, max diff \(worst)")
        XCTAssertLessThanOrEqual(worst, 1)
        XCTAssertLessThanOrEqual(differing, 3)

        // A second decode (pool buffers recycled, no hook) gives the identical image.
        dec.debugHook = nil
        XCTAssertEqual(try dec.decode(codes: codes, height: 8, width: 8).array, image.array)
    }

    func testLatentErrors() throws {
        let (_, dec, _) = try loadTiny()
        XCTAssertThrowsError(try dec.latent(codes: [0, 512, 1, 2], height: 2, width: 2)) { err in
            XCTAssertTrue("\(err)".contains("512"), "\(err)")
        }
        XCTAssertThrowsError(try dec.latent(codes: [-1, 0, 1, 2], height: 2, width: 2))
        XCTAssertThrowsError(try dec.decode(codes: [0, 1, 2], height: 2, width: 2))
        XCTAssertThrowsError(try dec.decode(codes: [], height: 0, width: 0))
    }

    // MARK: - Loading errors

    /// Rewrites the fixture weights with `edit` applied to the entry list, then loads them.
    func loadEdited(_ edit: (inout [SafeTensorsWriter.Entry]) -> Void) throws -> Error? {
        let config = try VQConfig(json: try Fixtures.json("llamagen/vq_tiny.config.json"))
        let weights = try Fixtures.safetensors("llamagen/vq_tiny.weights.safetensors")
        var entries = try weights.tensors.keys.sorted().map { SafeTensorsWriter.Entry.f32($0, try weights.tensor($0)) }
        edit(&entries)
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SafeTensorsWriter.write(entries, to: dir + "/w.safetensors")
        do {
            _ = try VQDecoder(config: config, weights: try SafeTensorsFile(path: dir + "/w.safetensors"))
            return nil
        } catch { return error }
    }

    func testShapeMismatchIsReported() throws {
        let key = "decoder.conv_blocks.2.res.0.nin_shortcut.weight"  // [32, 64, 1, 1]
        let err = try loadEdited { entries in
            let i = entries.firstIndex { $0.name == key }!
            entries[i] = .f32(key, Tensor(shape: [64, 32, 1, 1]))
        }
        let msg = "\(try XCTUnwrap(err, "a wrong shape must be rejected"))"
        print(msg)
        XCTAssertTrue(msg.contains(key) && msg.contains("[64, 32, 1, 1]") && msg.contains("[32, 64, 1, 1]"), msg)
    }

    func testMissingTensorIsReportedAndExtrasIgnored() throws {
        let key = "decoder.mid.1.proj_out.bias"
        let err = try loadEdited { entries in
            entries.removeAll { $0.name == key }
            // Keys the decoder does not use are ignored.
            entries.append(.f32("quantize.codebook_used", Tensor(shape: [65536])))
            entries.append(.f32("encoder.conv_in.weight", Tensor(shape: [32, 3, 3, 3])))
        }
        let msg = "\(try XCTUnwrap(err, "a missing tensor must be rejected"))"
        XCTAssertTrue(msg.contains(key) && msg.contains("missing"), msg)
        XCTAssertNil(try loadEdited { entries in entries.append(.f32("quant_conv.weight", Tensor(shape: [8, 32, 1, 1]))) })
    }

    // MARK: - Kernels against naive references

    /// Direct 7-loop "same" convolution (stride 1, zero padding k/2) in Double.
    func naiveConv(_ x: Tensor, _ w: Tensor, _ b: Tensor) -> [Float] {
        let cin = x.shape[0], h = x.shape[1], wd = x.shape[2], cout = w.shape[0], k = w.shape[2], p = k / 2
        var out = [Float](repeating: 0, count: cout * h * wd)
        for o in 0..<cout {
            for y in 0..<h {
                for xx in 0..<wd {
                    var acc = Double(b[o])
                    for c in 0..<cin {
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let sy = y + ky - p, sx = xx + kx - p
                                guard sy >= 0, sy < h, sx >= 0, sx < wd else { continue }
                                acc += Double(w[((o * cin + c) * k + ky) * k + kx]) * Double(x[(c * h + sy) * wd + sx])
                            }
                        }
                    }
                    out[(o * h + y) * wd + xx] = Float(acc)
                }
            }
        }
        return out
    }

    func randomTensor(_ shape: [Int], _ rng: inout RNG) -> Tensor {
        let t = Tensor(shape: shape)
        for i in 0..<t.count { t[i] = 2 * Float(rng.nextUniform()) - 1 }
        return t
    }

    func testBandedConvMatchesNaive() {
        var rng = RNG(seed: 7)
        for (cin, cout, h, w, k) in [(5, 7, 13, 11, 3), (3, 4, 1, 9, 3), (6, 5, 9, 1, 3), (4, 3, 7, 5, 1), (3, 2, 6, 7, 5)] {
            let x = randomTensor([cin, h, w], &rng)
            let conv = Conv2D(weight: randomTensor([cout, cin, k, k], &rng), bias: randomTensor([cout], &rng))
            let want = naiveConv(x, conv.weight, conv.bias)
            // 1 byte → one row per band; 3 rows per band (uneven last band); everything in one band.
            for budget in [1, 3 * cin * k * k * w * 4, 1 << 24] {
                let scratch = ConvScratch(budgetBytes: budget)
                let out = conv(x, scratch: scratch)
                let err = maxAbsDiff(out.data, want, count: want.count)
                XCTAssertLessThanOrEqual(err, 1e-4, "conv \(cin)->\(cout) \(h)x\(w) k\(k) budget \(budget)")
                // accumulate: out = residual + conv(x)
                let res = randomTensor([cout, h, w], &rng)
                let acc = Tensor(shape: res.shape, values: res.array)
                conv.apply(x, into: acc, accumulate: true, scratch: scratch)
                var e2: Float = 0
                for i in 0..<want.count { e2 = max(e2, abs(acc[i] - (res[i] + want[i]))) }
                XCTAssertLessThanOrEqual(e2, 1e-4, "accumulate conv \(cin)->\(cout) \(h)x\(w) k\(k)")
            }
        }
    }

    func testGroupNormSwishMatchesNaive() {
        var rng = RNG(seed: 3)
        let c = 64, h = 5, w = 7  // 2 channels per group, odd spatial size (SIMD tails)
        let x = randomTensor([c, h, w], &rng)
        for i in 0..<x.count { x[i] = 3 * x[i] + 0.5 }
        let norm = GroupNorm(weight: randomTensor([c], &rng), bias: randomTensor([c], &rng))
        for swish in [false, true] {
            let out = Tensor(shape: x.shape)
            norm.apply(x, swish: swish, into: out)
            var err: Float = 0
            let per = c / 32 * h * w
            for g in 0..<32 {
                let vals = (0..<per).map { Double(x[g * per + $0]) }
                let mean = vals.reduce(0, +) / Double(per)
                let variance = vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(per)
                for i in 0..<per {
                    let ch = (g * per + i) / (h * w)
                    var y = (vals[i] - mean) / (variance + 1e-6).squareRoot() * Double(norm.weight[ch]) + Double(norm.bias[ch])
                    if swish { y = y / (1 + Foundation.exp(-y)) }
                    err = max(err, abs(Float(y) - out[g * per + i]))
                }
            }
            XCTAssertLessThanOrEqual(err, 1e-5, "groupNorm swish=\(swish)")
        }
    }

    func testSwishAndSoftmaxAccuracy() {
        // Swish over a wide range, including values where exp would overflow or underflow.
        let n = 20001
        let x = Tensor(shape: [n])
        for i in 0..<n { x[i] = Float(i - n / 2) * 0.01 }  // [-100, 100]
        x[0] = -1e30; x[n - 1] = 1e30
        let y = Tensor(shape: [n], values: x.array)
        NN.swishInPlace(y.data, count: n)
        for i in 0..<n {
            let xd = Double(x[i])
            let want = xd / (1 + Foundation.exp(-xd))
            XCTAssertEqual(Double(y[i]), want, accuracy: 5e-7 * max(1, abs(want)), "swish(\(x[i]))")
        }
        // Softmax of a row with a tail (n not a multiple of 8).
        let row: [Float] = (0..<13).map { Float($0) * 0.7 - 3 }
        let t = Tensor(shape: [1, 13], values: row)
        NN.softmaxRows(t.data, rows: 1, n: 13)
        let m = row.max()!
        let e = row.map { Foundation.exp(Double($0 - m)) }
        let s = e.reduce(0, +)
        for i in 0..<13 { XCTAssertEqual(Double(t[i]), e[i] / s, accuracy: 1e-7) }
    }

    func testUpsampleNearest2x() {
        var rng = RNG(seed: 11)
        let x = randomTensor([3, 5, 7], &rng)  // width 7: SIMD body plus a scalar tail
        let y = NN.upsampleNearest2x(x)
        XCTAssertEqual(y.shape, [3, 10, 14])
        for c in 0..<3 { for yy in 0..<10 { for xx in 0..<14 {
            XCTAssertEqual(y[(c * 10 + yy) * 14 + xx], x[(c * 5 + yy / 2) * 7 + xx / 2])
        } } }
    }

    func testToRGB8() {
        let img = Tensor(shape: [3, 1, 2], values: [-1, 0, 1, 2, -2, .nan])
        // x → clamp(127.5x + 128, 0, 255) truncated; HWC order.
        XCTAssertEqual(VQDecoder.toRGB8(img), [0, 255, 0, 128, 255, 0])
        let t = Tensor(shape: [3, 1, 1], values: [0.5, -0.5, 0.999])
        XCTAssertEqual(VQDecoder.toRGB8(t), [191, 64, 255])  // 191.75, 64.25, 255.37
    }

    func testRandomInitIsDeterministic() throws {
        var config = VQConfig()
        config.codebook_size = 64; config.ch = 32; config.decoder_ch_mult = [1, 2]; config.z_channels = 32
        let a = VQDecoder.randomInit(config: config, seed: 5), b = VQDecoder.randomInit(config: config, seed: 5)
        let codes = (0..<9).map { $0 * 7 % 64 }
        let ia = try a.decode(codes: codes, height: 3, width: 3), ib = try b.decode(codes: codes, height: 3, width: 3)
        XCTAssertEqual(ia.shape, [3, 6, 6])
        XCTAssertEqual(ia.array, ib.array)
        XCTAssertTrue(ia.array.allSatisfy { $0.isFinite && abs($0) < 100 })
    }

    // MARK: - Timing (ZIPAR_TIMING=1 swift test -c release --filter VQDecoderTests/testTimingVQ16)

    func testTimingVQ16() throws {
        let env = ProcessInfo.processInfo.environment
        guard env["ZIPAR_TIMING"] == "1" else { return }  // skipped-as-pass in normal runs
        let config = VQConfig()  // VQ-16: ch 128, ch_mult [1,1,2,2,4], z 256
        let grid = Int(env["ZIPAR_GRID"] ?? "") ?? 16
        let runs = Int(env["ZIPAR_RUNS"] ?? "") ?? 3
        let flops = VQDecoder.decodeFLOPs(config: config, height: grid, width: grid)
        let bands = (env["ZIPAR_BAND_MB"] ?? "16").split(separator: ",").compactMap { Int($0) }
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
        func best(_ reps: Int, _ body: () -> Void) -> Double {
            var b = Double.infinity
            for _ in 0..<reps { let t0 = now(); body(); b = min(b, now() - t0) }
            return b
        }
        // Reference: raw sgemm speed right now (the machine is shared, so compare against this, not the notes).
        do {
            let a = Tensor(shape: [1024, 1024]), b = Tensor(shape: [1024, 1024]), c = Tensor(shape: [1024, 1024])
            a.fill(0.5); b.fill(0.25)
            let t = best(5) { BLAS.matmulNN(a.data, b.data, c.data, m: 1024, k: 1024, n: 1024) }
            print(String(format: "sgemm 1024^3 NN: %.1f GFLOP/s", 2 * 1024 * 1024 * 1024 / t / 1e9))
        }
        // The dominant op: 3x3 conv 128 -> 128 at 256x256 (six of these plus the upsample conv in the last two levels).
        do {
            var rng = RNG(seed: 9)
            let x = randomTensor([128, 256, 256], &rng), out = Tensor(shape: [128, 256, 256])
            let conv = Conv2D(weight: randomTensor([128, 128, 3, 3], &rng), bias: randomTensor([128], &rng))
            let f = 2.0 * 128 * 128 * 9 * 65536
            for mb in bands {
                let scratch = ConvScratch(budgetBytes: mb << 20)
                let t = best(3) { conv.apply(x, into: out, scratch: scratch) }
                let col = scratch.buffer(count: 1)
                let rows = max(1, (mb << 20) / (128 * 9 * 256 * 4))
                let ti = best(3) { var y = 0; while y < 256 { im2col(x.data, channels: 128, height: 256, width: 256, kernel: 3, y0: y, rows: min(rows, 256 - y), col: col); y += rows } }
                print(String(format: "conv3x3 128->128 @256^2 band %d MB: %.1f ms, %.1f GFLOP/s (im2col alone %.1f ms)", mb, t * 1e3, f / t / 1e9, ti * 1e3))
            }
            let ta = best(5) { _ = Tensor(shape: [128, 256, 256]) }
            let dec = VQDecoder.randomInit(config: config, seed: 0)
            let block = dec.conv_blocks.last!.res[1]
            let ws = Workspace()
            let tr = best(3) { _ = block(x, ws) }
            let tc = best(3) { block.conv1.apply(x, into: out, scratch: ws.conv) }
            print(String(format: "alloc [128,256,256]: %.1f ms; ResnetBlock 128 @256^2: %.1f ms vs 2 x conv %.1f ms", ta * 1e3, tr * 1e3, 2 * tc * 1e3))
            let norm = GroupNorm(weight: randomTensor([128], &rng), bias: randomTensor([128], &rng))
            let tn = best(3) { norm.apply(x, swish: true, into: out) }
            let tu = best(3) { _ = NN.upsampleNearest2x(x) }
            print(String(format: "groupNorm+swish [128,256,256]: %.1f ms; upsample [128,256,256]: %.1f ms", tn * 1e3, tu * 1e3))
        }
        for mb in bands {
            let t = VQDecoder.benchmarkDecode(config: config, grid: grid, runs: runs, bandBytes: mb << 20)
            print(String(format: "VQ-16 decode %dx%d codes → %dx%d: median %.3f s of %d runs, %.1f GFLOP, %.1f GFLOP/s (band %d MB, %d BLAS threads)",
                         grid, grid, 16 * grid, 16 * grid, t, runs, flops / 1e9, flops / t / 1e9, mb, BLAS.threads))
        }
        // Per-stage wall time of one decode, from the debug hook's call times.
        let dec = VQDecoder.randomInit(config: config, seed: 0)
        if let mb = bands.last { dec.convBandBytes = mb << 20 }
        var last = now()
        var report: [String] = []
        dec.debugHook = { name, _ in let t = now(); report.append("\(name) \(Int((t - last) * 1e3)) ms"); last = t }
        _ = try dec.decode(codes: (0..<grid * grid).map { $0 % config.codebook_size }, height: grid, width: grid)
        print("stages: " + report.joined(separator: ", "))
    }
}
