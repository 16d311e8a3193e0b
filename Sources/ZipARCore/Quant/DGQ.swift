import CKernels
import Foundation

/// bfloat16 rounding (round to nearest even), the precision the official DGQ code keeps its scale
/// buffers in. The result is an fp32 value exactly representable in bf16.
public enum BF16 {
    @inline(__always) public static func round(_ x: Float) -> Float {
        if x.isNaN { return x }
        let b = x.bitPattern
        let r = b &+ 0x7FFF &+ ((b >> 16) & 1)
        return Float(bitPattern: r & 0xFFFF_0000)
    }
}

@inline(__always) func rne(_ x: Float) -> Float { x.rounded(.toNearestOrEven) }

/// DGQ A8W4 weights (Zhang et al., arXiv 2310.04836) for one Linear W[n, k]: 4-bit codes q in groups
/// of `groupSize` input columns, an integer group scale S >= 1 and zero point z per (row, group), and a
/// float scale s8 per row. The int8 weight the kernel multiplies is w8 = S * (q - z), within [-127, 127];
/// the effective float weight is s8 * w8.
public struct DGQWeight {
    public let rows: Int, cols: Int, groupSize: Int
    public var codes: [UInt8]          // [rows * cols], 0...15
    public var scales: [Int8]          // S [rows, groups]
    public var zeros: [Int8]           // z [rows, groups]
    public var rowScales: [Float]      // s8 [rows], bf16 values
    public var groups: Int { cols / groupSize }

    public init(rows: Int, cols: Int, groupSize: Int, codes: [UInt8], scales: [Int8], zeros: [Int8], rowScales: [Float]) {
        self.rows = rows; self.cols = cols; self.groupSize = groupSize
        self.codes = codes; self.scales = scales; self.zeros = zeros; self.rowScales = rowScales
    }

    @inline(__always) public func w8(_ j: Int, _ p: Int) -> Int {
        let g = j * groups + p / groupSize
        return Int(scales[g]) * (Int(codes[j * cols + p]) - Int(zeros[g]))
    }

    /// The weight the integer kernel computes with: s8 * w8 (not bf16(S * s8) * (q - z) as the search does).
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        for j in 0..<rows { for p in 0..<cols { out[j * cols + p] = Float(w8(j, p)) * rowScales[j] } }
        return out
    }

    /// The official storage (`QuantLinear.packW4W8`): byte c of the row-major code array holds code 2c
    /// in the high nibble and code 2c+1 in the low nibble. [rows, cols / 2].
    public func packedOfficial() -> [UInt8] {
        (0..<(rows * cols / 2)).map { c in (codes[2 * c] << 4) | codes[2 * c + 1] }
    }

    public init(rows: Int, cols: Int, packedOfficial packed: [UInt8], scales: [Int8], zeros: [Int8], rowScales: [Float]) throws {
        guard packed.count * 2 == rows * cols, scales.count == zeros.count, scales.count > 0, (rows * cols) % scales.count == 0,
              rowScales.count == rows, scales.count % rows == 0 else { throw ZipARError("inconsistent DGQ tensor sizes") }
        let groups = scales.count / rows
        guard cols % groups == 0 else { throw ZipARError("DGQ groups (\(groups)) do not divide \(cols) columns") }
        var codes = [UInt8](repeating: 0, count: rows * cols)
        for c in 0..<packed.count { codes[2 * c] = packed[c] >> 4; codes[2 * c + 1] = packed[c] & 15 }
        self.init(rows: rows, cols: cols, groupSize: cols / groups, codes: codes, scales: scales, zeros: zeros, rowScales: rowScales)
        for j in 0..<rows {
            for p in 0..<cols where abs(w8(j, p)) > 127 { throw ZipARError("DGQ weight row \(j) column \(p): S*(q-z) = \(w8(j, p)) is outside [-127, 127]") }
        }
    }
}

/// The calibration side of DGQ, as the official code (`quantizer_helper.searchquant`, `smooth.py`,
/// `quant_sequence.PTQ`) computes it in fp32. See `../shared/fixtures/quant/README.md` for every
/// rounding step; comments below name the deliberate guards the official code lacks.
public enum DGQ {
    public static let phase1Candidates = 20
    public static let phase2Candidates = 80

    /// Python's `1.02 - (i+1) / grid * 0.22` in double, rounded to fp32 as torch applies a scalar.
    public static func phase1Ratio(_ i: Int) -> Float { Float(1.02 - Double(i + 1) / Double(phase1Candidates) * 0.22) }
    public static func phase2Ratio(_ i: Int) -> Float { Float(1.02 - Double(i + 1) / Double(phase2Candidates) * 0.82) }

    /// The group size used for `cols` input columns: the requested one if it divides cols, else the
    /// largest multiple of 8 below it that does (e.g. 96 for the 192-wide default model).
    public static func groupSize(cols: Int, requested: Int = 128) -> Int? {
        var g = min(requested, cols) / 8 * 8
        while g >= 8 { if cols % g == 0 { return g }; g -= 8 }
        return nil
    }

    // MARK: smoothing (smooth.py: smooth_ln_fcs / smooth_llama_mlp)

    /// Per-channel smoothing factors from calibration abs-max statistics: the baseline is the value
    /// at rank int(0.005*C + 1.5) from the top; channels above it get a_j / baseline, others 1.
    /// nil when the baseline is below 1e-4 (the official code then skips smoothing).
    public static func smoothingFactors(absMax a: [Float]) -> [Float]? {
        let sorted = a.sorted()
        let basl = Int(Double(a.count) * 0.005 + 1.5)
        let baseline = sorted[a.count - basl]
        guard baseline >= 1e-4 else { return nil }
        return a.map { $0 > baseline ? $0 / baseline : 1 }
    }

    /// Static activation clip: per sample the per-channel abs-max, a running minimum over samples,
    /// then the maximum over channels (deliberately conservative). s_x = amax / 127.
    public static func staticClip(perSampleAbsMax samples: [[Float]]) -> Float {
        guard var running = samples.first else { return 0 }
        for s in samples.dropFirst() { for j in running.indices { running[j] = min(running[j], s[j]) } }
        return running.max() ?? 0
    }

    // MARK: the two-phase grid search

    public struct Search {
        public var phase1Scale: [Float]      // [rows, groups] bf16 values
        public var phase1Zero: [Float]       // [rows, groups] integers
        public var phase1Index: [Int]        // [rows, groups]
        public var phase2Index: [Int]        // [rows]
        public var weight: DGQWeight         // final S, z, codes, s8
        public var dequantSearch: [Float]    // bf16(S*s8) * (q - z), what the official layer holds after PTQ
    }

    /// Runs phase 1 (per row and group, 20 shrink ratios, asymmetric UINT4, group output MSE), phase 2
    /// (per row, 80 ratios for the INT8 row scale, full-row output MSE) and the final bf16 requantization.
    /// w [rows, cols] row-major (already smoothed); x [tokens, cols] the search inputs.
    public static func search(weight w: [Float], rows n: Int, cols k: Int, groupSize G: Int, inputs x: [Float], tokens T: Int) -> Search {
        precondition(w.count == n * k && x.count == T * k && k % G == 0)
        let ng = k / G
        var p1s = [Float](repeating: 1, count: n * ng), p1z = [Float](repeating: 1, count: n * ng), p1i = [Int](repeating: -1, count: n * ng)
        // Scratch as raw buffers: the element loops run split across workers (rows are independent).
        func buf(_ c: Int) -> UnsafeMutablePointer<Float> { let p = UnsafeMutablePointer<Float>.allocate(capacity: max(c, 1)); p.initialize(repeating: 0, count: max(c, 1)); return p }
        let xg = buf(T * G), wt = buf(n * G), d = buf(n * k), out = buf(T * n), sv = buf(n), zv = buf(n), mn = buf(n), mx = buf(n)
        defer { for p in [xg, wt, d, out, sv, zv, mn, mx] { p.deallocate() } }
        let chunks = n * k >= 1 << 16 ? 4 * Parallel.threads : 1

        // Phase 1, one group at a time.
        for g in 0..<ng {
            for t in 0..<T { for c in 0..<G { xg[t * G + c] = x[t * k + g * G + c] } }
            for j in 0..<n {
                var lo = Float.infinity, hi = -Float.infinity
                for c in 0..<G { let v = w[j * k + g * G + c]; wt[j * G + c] = v; lo = min(lo, v); hi = max(hi, v) }
                mn[j] = lo; mx[j] = hi
            }
            var best = [Float](repeating: .infinity, count: n)
            for i in 0..<phase1Candidates {
                let r = phase1Ratio(i)
                w.withUnsafeBufferPointer { wp in
                    Parallel.run(chunks: chunks) { part, parts, _ in
                        for j in Parallel.range(part, of: parts, n: n) {
                            let lo = mn[j] * r, hi = mx[j] * r
                            var s = (hi - lo) / 15
                            // Guard (not in the official code): a constant group has range 0; any positive step
                            // then represents it (the value itself or 0 lies on the grid).
                            if !(s > 0) { s = max(abs(lo), 1e-8) / 7 }
                            let z = rne((-mn[j]) * r / s)
                            sv[j] = s; zv[j] = z
                            // The clamped weight carries over from one candidate to the next, as in the official loop:
                            // v = clamp(wt, lo, hi) (kept), q = clamp(RNE(v / s) + z, 0, 15), d = w - s * (q - z).
                            ck_dgq_fakequant(wp.baseAddress! + j * k + g * G, wt + j * G, wt + j * G, Int32(G), lo, hi, s, z, 0, 15, d + j * G)
                        }
                    }
                }
                let mse = rowMSE(x: xg, tokens: T, cols: G, diff: d, rows: n, out: out)
                for j in 0..<n where best[j] > mse[j] {
                    best[j] = mse[j]; p1s[j * ng + g] = BF16.round(sv[j]); p1z[j * ng + g] = zv[j]; p1i[j * ng + g] = i
                }
            }
        }

        // Phase 2: the row scale s8, with the phase-1 group scales turned into integers.
        var amax = [Float](repeating: 0, count: n)
        for j in 0..<n { for p in 0..<k { amax[j] = max(amax[j], abs(w[j * k + p])) } }
        var best = [Float](repeating: .infinity, count: n), s8 = [Float](repeating: 0, count: n), p2i = [Int](repeating: -1, count: n)
        for i in 0..<phase2Candidates {
            let r = phase2Ratio(i)
            w.withUnsafeBufferPointer { wp in p1s.withUnsafeBufferPointer { p1sp in p1z.withUnsafeBufferPointer { p1zp in
                Parallel.run(chunks: chunks) { part, parts, _ in
                    for j in Parallel.range(part, of: parts, n: n) {
                        let wmax = amax[j] * r
                        let sc8 = wmax / 127
                        sv[j] = sc8
                        for g in 0..<ng {
                            let S = max(1, rne(p1sp[j * ng + g] / sc8))
                            let im = (127 / S).rounded(.down)
                            let z = p1zp[j * ng + g]
                            let upper = min(z + im, 15), lower = max(z - im, 0)
                            let sq = S * sc8
                            // v = clamp(w, -wmax, wmax), q = clamp(RNE(v / sq) + z, lower, upper), d = w - sq * (q - z)
                            let wrow = wp.baseAddress! + j * k + g * G
                            ck_dgq_fakequant(wrow, wrow, nil, Int32(G), -wmax, wmax, sq, z, lower, upper, d + j * k + g * G)
                        }
                    }
                }
            } } }
            let mse = x.withUnsafeBufferPointer { rowMSE(x: $0.baseAddress!, tokens: T, cols: k, diff: d, rows: n, out: out) }
            for j in 0..<n where best[j] > mse[j] { best[j] = mse[j]; s8[j] = BF16.round(sv[j]); p2i[j] = i }
        }

        // Final requantization with bf16 tensors: bf16 rounding after every scale operation.
        var codes = [UInt8](repeating: 0, count: n * k), S8 = [Int8](repeating: 1, count: n * ng), Z8 = [Int8](repeating: 0, count: n * ng)
        var dq = [Float](repeating: 0, count: n * k)
        for j in 0..<n {
            // Guard: an all-zero row has s8 = 0; any positive scale quantizes it to zeros.
            if !(s8[j] > 0) { s8[j] = 1 }
            let bound = BF16.round(127 * s8[j])
            for g in 0..<ng {
                var S = max(1, rne(BF16.round(p1s[j * ng + g] / s8[j])))
                S = min(S, 127)                           // guard: S is stored as int8
                let im = BF16.round(127 / S).rounded(.down)
                var z = p1z[j * ng + g]
                z = min(max(z, -128), 127)                // guard: z is stored as int8 (0...15 for any row with both signs)
                let upper = min(z + im, 15), lower = max(z - im, 0)
                let sq = BF16.round(S * s8[j])
                S8[j * ng + g] = Int8(S); Z8[j * ng + g] = Int8(z)
                for c in 0..<G {
                    let p = g * G + c
                    let v = min(max(w[j * k + p], -bound), bound)
                    var q = min(max(rne(v / sq) + z, lower), upper)
                    // Guard: with z outside 0...15 the official clamp can leave no valid code; keep one in range.
                    q = min(max(q, 0), 15)
                    if abs((q - z) * S) > 127 { q = z }
                    codes[j * k + p] = UInt8(q)
                    dq[j * k + p] = sq * (q - z)
                }
            }
        }
        let wq = DGQWeight(rows: n, cols: k, groupSize: G, codes: codes, scales: S8, zeros: Z8, rowScales: s8)
        return Search(phase1Scale: p1s, phase1Zero: p1z, phase1Index: p1i, phase2Index: p2i, weight: wq, dequantSearch: dq)
    }

    /// mean over tokens of (x · dᵀ)² per row of d: the output MSE of a weight error d [rows, cols].
    static func rowMSE(x: UnsafePointer<Float>, tokens T: Int, cols k: Int, diff d: UnsafePointer<Float>, rows n: Int,
                       out: UnsafeMutablePointer<Float>) -> [Float] {
        BLAS.matmulNT(x, d, out, m: T, k: k, n: n)
        var mse = [Double](repeating: 0, count: n)
        for t in 0..<T { for j in 0..<n { let v = Double(out[t * n + j]); mse[j] += v * v } }
        return mse.map { Float($0 / Double(T)) }
    }
}
