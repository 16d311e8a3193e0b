import Foundation
import CKernels

/// Quantization primitives of the compressed KV caches (ZipCache, KIVI, int8), written as the
/// official ZipCache code computes them (`CompressUtils/compress_function.py`): asymmetric min/max,
/// `step = (max - min) / (2^bits - 1)`, `code = round((x - min) / step)` with torch's round half to
/// even and a real divide. The port adds what the official code lacks: a guard for step = 0 (code 0,
/// the value is min) and a clamp of the codes to [0, 2^bits - 1] (needed once min/step are rounded
/// to fp16 for storage; without rounding the clamp never changes a code).
public enum KVQuant {
    /// Optional rounding of a stored parameter (fp16 storage); nil keeps fp32 (the official values).
    public typealias ParamRounding = ((Float) -> Float)?

    @inline(__always) static func levels(_ bits: Int) -> Float { Float((1 << bits) - 1) }

    @inline(__always) static func code(_ x: Float, _ mn: Float, _ st: Float, _ maxCode: Float) -> UInt8 {
        guard st > 0 else { return 0 }
        let q = ((x - mn) / st).rounded(.toNearestOrEven)
        return UInt8(min(max(q, 0), maxCode))
    }

    /// Channel-wise quantization of `rows` rows of `d` channels (row r at x + r*ld): one min/step per
    /// channel over all rows. codes is [rows][d] unpacked.
    public static func channelwise(_ x: UnsafePointer<Float>, rows: Int, d: Int, ld: Int, bits: Int,
                                   codes: UnsafeMutablePointer<UInt8>, mins: UnsafeMutablePointer<Float>,
                                   steps: UnsafeMutablePointer<Float>, round: ParamRounding = nil) {
        let L = levels(bits)
        for c in 0..<d {
            var lo = Float.infinity, hi = -Float.infinity
            for r in 0..<rows { let v = x[r * ld + c]; lo = min(lo, v); hi = max(hi, v) }
            if rows == 0 { lo = 0; hi = 0 }
            var st = (hi - lo) / L
            if let round { lo = round(lo); st = round(st) }
            mins[c] = lo; steps[c] = st
            for r in 0..<rows { codes[r * d + c] = code(x[r * ld + c], lo, st, L) }
        }
    }

    /// Token-wise quantization of one row: `d / group` groups of `group` channels, each with its own
    /// min/step (written to mins[g], steps[g]).
    public static func tokenwise(_ x: UnsafePointer<Float>, d: Int, group: Int, bits: Int, codes: UnsafeMutablePointer<UInt8>,
                                 mins: UnsafeMutablePointer<Float>, steps: UnsafeMutablePointer<Float>, round: ParamRounding = nil) {
        let L = levels(bits)
        for g in 0..<(d / group) {
            var lo = Float.infinity, hi = -Float.infinity
            for c in (g * group)..<((g + 1) * group) { lo = min(lo, x[c]); hi = max(hi, x[c]) }
            var st = (hi - lo) / L
            if let round { lo = round(lo); st = round(st) }
            mins[g] = lo; steps[g] = st
            for c in (g * group)..<((g + 1) * group) { codes[c] = code(x[c], lo, st, L) }
        }
    }

    /// Bytes of one packed row of d codes.
    public static func packedBytes(bits: Int, d: Int) -> Int { bits * d / 8 }

    /// Packs d codes planar as the official code does: 4-bit byte j = c[j] + 16 c[j + d/2];
    /// 2-bit byte j = c[j] + 4 c[j + d/4] + 16 c[j + d/2] + 64 c[j + 3d/4]; 8-bit one code per byte.
    public static func pack(_ codes: UnsafePointer<UInt8>, bits: Int, d: Int, into out: UnsafeMutablePointer<UInt8>) {
        switch bits {
        case 8: out.update(from: codes, count: d)
        case 4:
            let h = d / 2
            for j in 0..<h { out[j] = codes[j] | (codes[j + h] << 4) }
        case 2:
            let q = d / 4
            for j in 0..<q { out[j] = codes[j] | (codes[j + q] << 2) | (codes[j + 2 * q] << 4) | (codes[j + 3 * q] << 6) }
        default: preconditionFailure("KV codes are 2, 4 or 8 bits, not \(bits)")
        }
    }

    /// Inverse of `pack`.
    public static func unpack(_ packed: UnsafePointer<UInt8>, bits: Int, d: Int, into out: UnsafeMutablePointer<UInt8>) {
        switch bits {
        case 8: out.update(from: packed, count: d)
        case 4:
            let h = d / 2
            for j in 0..<h { out[j] = packed[j] & 15; out[j + h] = packed[j] >> 4 }
        case 2:
            let q = d / 4
            for j in 0..<q {
                let b = packed[j]
                out[j] = b & 3; out[j + q] = (b >> 2) & 3; out[j + 2 * q] = (b >> 4) & 3; out[j + 3 * q] = b >> 6
            }
        default: preconditionFailure("KV codes are 2, 4 or 8 bits, not \(bits)")
        }
    }

    /// Rounds to the nearest IEEE half (what fp16 parameter storage keeps).
    @inline(__always) public static func toHalf(_ x: Float) -> Float { Float(Float16(x)) }
}

/// ZipCache (He et al., NeurIPS 2024) as the official code computes it on one prefill: the
/// normalized attention score, the salient / regular split, channel-wise keys and CST values.
/// Used by the fixture tests and, per sealed block, by the streaming cache (`QuantizedKV`).
public enum ZipCache {
    /// The official demo's split: 40% of the tokens ("unimportant") at 2 bits, the rest at 4 bits.
    public static let unimportantRatio = 0.4
    public static let salientBits = 4, regularBits = 2

    /// The official demo quantizes in blocks of about this many tokens.
    public static let nominalBlock = 128

    /// The default block: whole image rows (a finished row is final under every ZipAR policy, so
    /// blocks seal as rows finish) near `nominalBlock` slots, preferring a row count that divides the
    /// image, so that no short last block pays a full set of per-channel key parameters for few
    /// tokens. 24x24: 6 rows (4 blocks of 144) rather than 128-slot blocks ending in one of 64 slots;
    /// 16x16 and 64x64: 128 slots. Width 0 (unknown) gives `nominalBlock`.
    public static func rowBlock(width: Int, imageSlots: Int) -> Int {
        guard width > 0, imageSlots >= width else { return nominalBlock }
        let rows = imageSlots / width
        // Distance from the nominal size on a log scale (96 and 171 slots are equally far from 128).
        func distance(_ r: Int) -> Double { abs(log(Double(r * width) / Double(nominalBlock))) }
        let dividing = (1...rows).filter { rows % $0 == 0 && distance($0) <= log(2.0) }
        if let best = dividing.min(by: { distance($0) < distance($1) }) { return best * width }
        return max(1, min(rows, Int((Double(nominalBlock) / Double(width)).rounded()))) * width
    }

    /// Number of regular tokens of a set of n: Python's int(0.4 * n) (truncation, in double).
    public static func regularCount(_ n: Int, ratio: Double = unimportantRatio) -> Int { Int(ratio * Double(n)) }

    /// Normalised attention score of one head: sum over the probe rows of probs[r][i] ([L][L] row-major),
    /// divided by the number of queries that could see token i under a causal mask, (L - i). The
    /// official code divides by (L - i) even when only probe rows were summed.
    public static func causalScore(probs: UnsafePointer<Float>, length L: Int, probeRows: [Int]) -> [Float] {
        var s = [Float](repeating: 0, count: L)
        for r in probeRows { for i in 0..<L { s[i] += probs[r * L + i] } }
        for i in 0..<L { s[i] /= Float(L - i) }
        return s
    }

    /// The official probe rows of a prefill of L tokens: the last 5% (`arange(int(L - 0.05L), L)`)
    /// followed by the given random draws (`int(0.05L)` of them from [0, int(L - 0.05L)) in the
    /// official code, drawn with torch's RNG; the caller supplies them).
    public static func recentProbeRows(_ L: Int) -> [Int] { Array(Int(Double(L) - 0.05 * Double(L))..<L) }

    /// Splits tokens by score: the `regularCount` lowest scores are regular, listed by ascending score
    /// (ties: lower position first); the rest are salient, in ascending position.
    public static func split(scores: [Float], ratio: Double = unimportantRatio) -> (salient: [Int], regular: [Int]) {
        let nReg = regularCount(scores.count, ratio: ratio)
        let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] < scores[$1] : $0 < $1 }
        let regular = Array(order.prefix(nReg))
        var isReg = [Bool](repeating: false, count: scores.count)
        for i in regular { isReg[i] = true }
        return (scores.indices.filter { !isReg[$0] }, regular)
    }

    /// One token set of the official `MixedPrecisionCompressUnion.compress` output.
    public struct SetCodes {
        public var keyCodes: [UInt8] = []      // [n][C] unpacked
        public var keyMin: [Float] = [], keyStep: [Float] = []     // [C]
        public var valueCodes: [UInt8] = []    // [n][C]
        public var valueMin: [Float] = [], valueStep: [Float] = [] // [n]
    }

    public struct Compressed {
        public var salient = SetCodes(), regular = SetCodes()
        public var channelScale: [Float] = []              // [C]
        public var keyDequant: [Float] = [], valueDequant: [Float] = []   // [H][L][D]
    }

    /// compress + decompress of the official code on one layer's K and V ([H][L][D] each, no batch),
    /// with per-head token ids (row r of a set concatenates token ids[h][r] of every head h, so with
    /// per-head ids a "row" of the CST values mixes tokens across heads, exactly as upstream).
    public static func compress(keys: [Float], values: [Float], heads H: Int, length L: Int, headDim D: Int,
                                salientIds: [[Int]], regularIds: [[Int]],
                                salientBits: Int = salientBits, regularBits: Int = regularBits) -> Compressed {
        let C = H * D
        var out = Compressed()
        out.keyDequant = [Float](repeating: 0, count: H * L * D)
        out.valueDequant = out.keyDequant
        // CST channel normaliser over all L tokens, before the split.
        out.channelScale = (0..<C).map { c in
            let h = c / D, d = c % D
            var m: Float = 0
            for t in 0..<L { m = max(m, abs(values[(h * L + t) * D + d])) }
            return m.squareRoot()
        }
        func gather(_ x: [Float], _ ids: [[Int]], scale: [Float]?) -> [Float] {
            let n = ids[0].count
            var rows = [Float](repeating: 0, count: n * C)
            for r in 0..<n { for h in 0..<H { for d in 0..<D {
                let v = x[(h * L + ids[h][r]) * D + d]
                rows[r * C + h * D + d] = scale.map { v / $0[h * D + d] } ?? v
            } } }
            return rows
        }
        func run(_ ids: [[Int]], bits: Int) -> SetCodes {
            let n = ids[0].count
            var s = SetCodes()
            s.keyCodes = [UInt8](repeating: 0, count: n * C); s.keyMin = [Float](repeating: 0, count: C); s.keyStep = s.keyMin
            s.valueCodes = s.keyCodes; s.valueMin = [Float](repeating: 0, count: n); s.valueStep = s.valueMin
            let k = gather(keys, ids, scale: nil), v = gather(values, ids, scale: out.channelScale)
            KVQuant.channelwise(k, rows: n, d: C, ld: C, bits: bits, codes: &s.keyCodes, mins: &s.keyMin, steps: &s.keyStep)
            for r in 0..<n {
                v.withUnsafeBufferPointer { vp in
                    s.valueCodes.withUnsafeMutableBufferPointer { cp in
                        s.valueMin.withUnsafeMutableBufferPointer { mp in
                            s.valueStep.withUnsafeMutableBufferPointer { sp in
                                KVQuant.tokenwise(vp.baseAddress! + r * C, d: C, group: C, bits: bits, codes: cp.baseAddress! + r * C,
                                                  mins: mp.baseAddress! + r, steps: sp.baseAddress! + r)
                            }
                        }
                    }
                }
            }
            // decompress(): dequantize, scatter back by the same ids, then multiply by the channel scale.
            for r in 0..<n { for h in 0..<H { for d in 0..<D {
                let c = h * D + d, t = ids[h][r]
                out.keyDequant[(h * L + t) * D + d] = Float(s.keyCodes[r * C + c]) * s.keyStep[c] + s.keyMin[c]
                out.valueDequant[(h * L + t) * D + d] = (Float(s.valueCodes[r * C + c]) * s.valueStep[r] + s.valueMin[r]) * out.channelScale[c]
            } } }
            return s
        }
        out.salient = run(salientIds, bits: salientBits)
        out.regular = run(regularIds, bits: regularBits)
        return out
    }
}
