import CKernels
import Foundation
import XCTest
@testable import ZipARCore

/// DGQ against the official code's outputs (../shared/fixtures/quant/dgq.*). Everything the fixture
/// README marks exact is compared exactly.
final class DGQFixtureTests: XCTestCase {
    func floats(_ f: SafeTensorsFile, _ name: String) throws -> [Float] { try f.tensor(name).array }

    func testSmoothingAndStaticClip() throws {
        let f = try Fixtures.safetensors("quant/dgq.safetensors")
        for prefix in ["", "multi_"] {
            let x = try floats(f, "x_calib"), w = try floats(f, "w")
            let k = 256, samples = prefix == "" ? 1 : 4, per = 32 / samples
            // Norm-output abs-max, running max over samples (sta_batch0).
            var a = [Float](repeating: 0, count: k)
            for t in 0..<32 { for j in 0..<k { a[j] = max(a[j], abs(x[t * k + j])) } }
            XCTAssertEqual(a, try floats(f, prefix + "act_absmax_calib"), prefix)
            let s = try XCTUnwrap(DGQ.smoothingFactors(absMax: a))
            XCTAssertEqual(s, try floats(f, prefix + "smooth_factor"), prefix)
            let lnw = s.map { 1 / $0 }
            XCTAssertEqual(lnw, try floats(f, prefix + "ln_weight_after"), prefix)
            var ws = w
            for r in 0..<64 { for j in 0..<k { ws[r * k + j] *= s[j] } }
            XCTAssertEqual(ws, try floats(f, prefix + "w_smoothed"), prefix)
            let xs = (0..<(32 * k)).map { x[$0] * lnw[$0 % k] }
            XCTAssertEqual(xs, try floats(f, prefix + "x_calib_smoothed"), prefix)
            let perSample: [[Float]] = (0..<samples).map { smp in
                (0..<k).map { j in (0..<per).reduce(Float(0)) { max($0, abs(xs[(smp * per + $1) * k + j])) } }
            }
            let amax = DGQ.staticClip(perSampleAbsMax: perSample)
            XCTAssertEqual([amax], try floats(f, prefix + "amax"), prefix)
            XCTAssertEqual([amax / 127], try floats(f, prefix + "s_x"), prefix)
        }
    }

    func testSearchMatchesOfficialExactly() throws {
        let f = try Fixtures.safetensors("quant/dgq.safetensors")
        let j = try Fixtures.json("quant/dgq.json")
        XCTAssertEqual((j["phase1_ratios"] as! [Double]).map(Float.init), (0..<20).map(DGQ.phase1Ratio))
        XCTAssertEqual((j["phase2_ratios"] as! [Double]).map(Float.init), (0..<80).map(DGQ.phase2Ratio))
        for prefix in ["", "multi_"] {
            let w = try floats(f, prefix + "w_smoothed"), xs = try floats(f, prefix + "x_search")
            let r = DGQ.search(weight: w, rows: 64, cols: 256, groupSize: 128, inputs: xs, tokens: xs.count / 256)
            XCTAssertEqual(r.phase1Index, try f.ints(prefix + "p1_ratio_idx"), prefix)
            XCTAssertEqual(r.phase1Scale, try floats(f, prefix + "p1_scale"), prefix)
            XCTAssertEqual(r.phase1Zero, try floats(f, prefix + "p1_zero"), prefix)
            XCTAssertEqual(r.phase2Index, try f.ints(prefix + "p2_ratio_idx"), prefix)
            XCTAssertEqual(r.weight.rowScales, try floats(f, prefix + "wscales8"), prefix)
            XCTAssertEqual(r.weight.scales.map(Int.init), try f.ints(prefix + "wscales_int"), prefix)
            XCTAssertEqual(r.weight.zeros.map(Int.init), try f.ints(prefix + "wzeros_int"), prefix)
            XCTAssertEqual(r.weight.codes.map(Int.init), try f.ints(prefix + "q_codes"), prefix)
            XCTAssertEqual(r.weight.packedOfficial().map(Int.init), try f.ints(prefix + "qweight_packed"), prefix)
            XCTAssertEqual(r.dequantSearch, try floats(f, prefix + "w_dequant_search"), prefix)
            XCTAssertEqual(r.weight.dequantized(), try floats(f, prefix + "w_dequant_kernel"), prefix)
            let w8 = (0..<(64 * 256)).map { r.weight.w8($0 / 256, $0 % 256) }
            XCTAssertEqual(w8, try f.ints(prefix + "w8"), prefix)
            // The packed official bytes read back to the same weight.
            let back = try DGQWeight(rows: 64, cols: 256, packedOfficial: r.weight.packedOfficial(), scales: r.weight.scales,
                                     zeros: r.weight.zeros, rowScales: r.weight.rowScales)
            XCTAssertEqual(back.codes, r.weight.codes)
        }
    }

    /// The kernel path: static int8 activations, the integer GEMM (every kernel level), the float epilogue.
    func testIntegerGEMMMatchesOfficialKernel() throws {
        let f = try Fixtures.safetensors("quant/dgq.safetensors")
        defer { ck_qkernel_force(-1) }
        for prefix in ["", "multi_"] {
            let wq = try DGQWeight(rows: 64, cols: 256, packedOfficial: try f.ints(prefix + "qweight_packed").map { UInt8($0) },
                                   scales: try f.ints(prefix + "wscales_int").map { Int8($0) },
                                   zeros: try f.ints(prefix + "wzeros_int").map { Int8($0) }, rowScales: try floats(f, prefix + "wscales8"))
            let sx = try floats(f, prefix + "s_x")[0]
            let lin = QuantizedLinear(dgq: wq, inputScale: sx)
            let x = try f.tensor(prefix + "x_test_smoothed")
            for level in (0...Int(ck_qkernel_level())).reversed() {
                ck_qkernel_force(Int32(level))
                let y = Tensor(shape: [8, 64])
                var acc = [Int32](repeating: 0, count: 8 * 64)
                let xq = lin.apply(x.data, rows: 8, into: y.data, accumulators: &acc)
                XCTAssertEqual(xq.map(Int.init), try f.ints(prefix + "x_test_int8"), "\(prefix) level \(level)")
                XCTAssertEqual(acc.map(Int.init), try f.ints(prefix + "acc_int32"), "\(prefix) level \(level)")
                let want = try floats(f, prefix + "y_kernel")
                for i in 0..<want.count {
                    XCTAssertEqual(y[i], want[i], accuracy: 1e-5 + 1e-6 * abs(want[i]), "\(prefix) level \(level) [\(i)]")
                }
            }
            ck_qkernel_force(-1)
        }
    }
}

/// The integer kernels on every level this CPU has, against plain integer arithmetic.
final class QuantKernelTests: XCTestCase {
    static func randomDGQ(rows n: Int, cols k: Int, group G: Int, rng: inout RNG) -> DGQWeight {
        let ng = k / G
        var codes = [UInt8](repeating: 0, count: n * k), S = [Int8](repeating: 1, count: n * ng), Z = S
        for j in 0..<n {
            for g in 0..<ng {
                let s = Int(rng.next() % 18) + 1, z = Int(rng.next() % 16)
                S[j * ng + g] = Int8(s); Z[j * ng + g] = Int8(z)
                let im = 127 / s
                for c in 0..<G { codes[j * k + g * G + c] = UInt8(min(max(Int(rng.next() % 16), max(z - im, 0)), min(z + im, 15))) }
            }
        }
        return DGQWeight(rows: n, cols: k, groupSize: G, codes: codes, scales: S, zeros: Z,
                         rowScales: (0..<n).map { _ in abs(rng.nextNormal()) * 0.01 + 1e-4 })
    }

    func check(_ lin: QuantizedLinear, m: Int, rng: inout RNG, label: String) {
        let k = lin.inFeatures, n = lin.outFeatures
        let x = Tensor(shape: [m, k])
        for i in 0..<x.count { x[i] = rng.nextNormal() * (i % 7 == 0 ? 5 : 1) }
        var wantAcc = [Int32](repeating: 0, count: m * n), wantXq = [Int8](repeating: 0, count: m * k), sx = [Float](repeating: 0, count: m)
        for i in 0..<m {
            var amax: Float = 0
            for p in 0..<k { amax = max(amax, abs(x[i * k + p])) }
            sx[i] = lin.inputScale ?? max(amax, 1e-5) / 127
            for p in 0..<k { wantXq[i * k + p] = Int8(min(max((x[i * k + p] / sx[i]).rounded(.toNearestOrEven), -128), 127)) }
            for j in 0..<n {
                var a = 0
                for p in 0..<k { a += Int(wantXq[i * k + p]) * lin.w8(j, p) }
                wantAcc[i * n + j] = Int32(a)
            }
        }
        let rowScales = lin.rowScales
        for level in (0...Int(ck_qkernel_level())).reversed() {
            ck_qkernel_force(Int32(level))
            let y = Tensor(shape: [m, n])
            var acc = [Int32](repeating: 0, count: m * n)
            let xq = lin.apply(x.data, rows: m, into: y.data, accumulators: &acc)
            XCTAssertEqual(xq, wantXq, "\(label) level \(level)")
            XCTAssertEqual(acc, wantAcc, "\(label) level \(level)")
            var bad = 0
            for i in 0..<m { for j in 0..<n where y[i * n + j] != Float(wantAcc[i * n + j]) * (rowScales[j] * sx[i]) { bad += 1 } }
            XCTAssertEqual(bad, 0, "\(label) level \(level): outputs differ from float(acc) * (s8 * sx)")
            // The plain entry point gives the same outputs.
            let y2 = Tensor(shape: [m, n])
            lin.apply(x.data, rows: m, into: y2.data)
            XCTAssertEqual(y2.array, y.array, "\(label) level \(level)")
        }
        ck_qkernel_force(-1)
    }

    func testW4KernelsMatchIntegerReference() {
        var rng = RNG(seed: 11)
        defer { ck_qkernel_force(-1) }
        for (m, k, n, G) in [(1, 128, 16, 128), (2, 256, 37, 128), (3, 96, 20, 32), (6, 512, 50, 128), (9, 192, 33, 96), (17, 64, 8, 8), (30, 128, 70, 64), (40, 256, 24, 128)] {
            let w = Self.randomDGQ(rows: n, cols: k, group: G, rng: &rng)
            check(QuantizedLinear(dgq: w, inputScale: nil), m: m, rng: &rng, label: "w4 dynamic m=\(m) k=\(k) n=\(n) G=\(G)")
            check(QuantizedLinear(dgq: w, inputScale: 0.02), m: m, rng: &rng, label: "w4 static m=\(m) k=\(k) n=\(n) G=\(G)")
        }
    }

    func testW8KernelsMatchIntegerReference() {
        var rng = RNG(seed: 12)
        defer { ck_qkernel_force(-1) }
        for (m, k, n) in [(1, 64, 16), (2, 768, 37), (5, 100, 9), (8, 256, 48), (13, 132, 31), (33, 64, 17)] {
            let w = Tensor(shape: [n, k])
            for i in 0..<w.count { w[i] = rng.nextNormal() * 0.05 }
            let lin = QuantizedLinear.w8a8(weight: w.data, rows: n, cols: k)
            // Per-channel symmetric rule: the largest weight of each row maps to +-127.
            for j in 0..<n { XCTAssertEqual((0..<k).map { abs(lin.w8(j, $0)) }.max(), 127) }
            let dq = lin.dequantized()
            for i in 0..<w.count { XCTAssertLessThanOrEqual(abs(dq[i] - w[i]), lin.rowScales[i / k] * 0.5001) }
            check(lin, m: m, rng: &rng, label: "w8 m=\(m) k=\(k) n=\(n)")
        }
    }

    func testDGQWeightLayoutRoundTrips() {
        var rng = RNG(seed: 13)
        let w = Self.randomDGQ(rows: 21, cols: 256, group: 64, rng: &rng)
        let lin = QuantizedLinear(dgq: w, inputScale: nil)
        let back = lin.dgqWeight!
        XCTAssertEqual(back.codes, w.codes); XCTAssertEqual(back.scales, w.scales); XCTAssertEqual(back.zeros, w.zeros)
        XCTAssertEqual(back.rowScales, w.rowScales)
        XCTAssertEqual(lin.dequantized().array, w.dequantized())
    }
}
