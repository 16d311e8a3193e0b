import COpenBLAS

/// Elementwise and normalisation ops for the VQ decoder. Activations are channel-first [C, H, W], batch 1.
/// Loops are single-threaded on purpose: they are memory-bound and cheap next to the convolutions,
/// and OpenBLAS already owns both cores during the sgemm calls.
public enum NN {
    typealias F8 = SIMD8<Float>

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> F8 { UnsafeRawPointer(p).loadUnaligned(as: F8.self) }
    @inline(__always) static func store8(_ v: F8, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self) }

    /// e^x for 8 lanes, Cephes-style: x = n·ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r,
    /// and 2^n built in the exponent bits. About 1-2 ulp. Plain SSE2 arithmetic only (the default
    /// x86-64 target has no rounding instruction and a per-lane libm call would be ~10x slower).
    /// Inputs are clamped to [-87, 88] so 2^n stays a normal float; that is harmless for sigmoid/softmax.
    @inline(__always) static func exp8(_ xIn: F8) -> F8 {
        let x = pointwiseMax(pointwiseMin(xIn, F8(repeating: 88)), F8(repeating: -87))
        // Adding 1.5·2^23 + 127 rounds x·log2(e) to an integer n and leaves n + 127 in the low mantissa bits.
        let magic = F8(repeating: 12_583_039)
        let f = x * F8(repeating: 1.44269504088896341) + magic
        let n = f - magic
        let r = x - n * F8(repeating: 0.693359375) - n * F8(repeating: -2.12194440e-4)
        var p = F8(repeating: 1.9875691500e-4)
        p = p * r + F8(repeating: 1.3981999507e-3)
        p = p * r + F8(repeating: 8.3334519073e-3)
        p = p * r + F8(repeating: 4.1665795894e-2)
        p = p * r + F8(repeating: 1.6666665459e-1)
        p = p * r + F8(repeating: 5.0000001201e-1)
        p = p * r * r + r + F8(repeating: 1)
        // (n + 127) << 23 is the bit pattern of 2^n; the shift drops the magic's high bits.
        let scale = unsafeBitCast(unsafeBitCast(f, to: SIMD8<UInt32>.self) &<< 23, to: F8.self)
        return p * scale
    }

    @inline(__always) static func swish8(_ x: F8) -> F8 { x / (F8(repeating: 1) + exp8(-x)) }

    /// Scalar swish through the same polynomial, so vector body and tail agree bit for bit.
    @inline(__always) static func swish1(_ x: Float) -> Float { swish8(F8(repeating: x))[0] }

    /// x ← x·sigmoid(x), in place over `count` floats.
    public static func swishInPlace(_ p: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count { store8(swish8(load8(p + i)), p + i); i += 8 }
        while i < count { p[i] = swish1(p[i]); i += 1 }
    }

    /// GroupNorm (PyTorch semantics: biased variance over each group's C/G·H·W values, eps inside the sqrt)
    /// with per-channel affine, optionally followed by swish. x, out: [C, H, W]; gamma, beta: [C].
    /// out may alias x.
    public static func groupNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, groups: Int = 32, eps: Float = 1e-6,
                                 swish: Bool, into out: Tensor) {
        let c = x.shape[0]
        let hw = x.count / c
        precondition(c % groups == 0 && gamma.count == c && beta.count == c && out.count == x.count, "groupNorm shapes")
        let perGroup = c / groups
        let n = Double(perGroup * hw)
        for g in 0..<groups {
            let base = x.data + g * perGroup * hw
            // Two passes (mean, then centred variance) for accuracy; Float SIMD partial sums per channel
            // row, Double across rows, since a group can hold millions of values.
            var sum = 0.0
            for ci in 0..<perGroup { sum += Double(rowSum(base + ci * hw, hw)) }
            let mean = Float(sum / n)
            var sq = 0.0
            for ci in 0..<perGroup { sq += Double(rowSquaredDeviation(base + ci * hw, hw, mean: mean)) }
            let rstd = 1 / (Float(sq / n) + eps).squareRoot()
            for ci in 0..<perGroup {
                let ch = g * perGroup + ci
                // y = (x - mean)·rstd·gamma + beta = x·a + b
                let a = rstd * gamma.data[ch]
                let b = beta.data[ch] - mean * a
                let src = x.data + ch * hw, dst = out.data + ch * hw
                let a8 = F8(repeating: a), b8 = F8(repeating: b)
                var i = 0
                if swish {
                    while i + 8 <= hw { store8(swish8(load8(src + i) * a8 + b8), dst + i); i += 8 }
                    while i < hw { dst[i] = swish1(src[i] * a + b); i += 1 }
                } else {
                    while i + 8 <= hw { store8(load8(src + i) * a8 + b8, dst + i); i += 8 }
                    while i < hw { dst[i] = src[i] * a + b; i += 1 }
                }
            }
        }
    }

    static func rowSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = F8(), acc1 = F8()
        var i = 0
        while i + 16 <= n { acc0 += load8(p + i); acc1 += load8(p + i + 8); i += 16 }
        var s = (acc0 + acc1).sum()
        while i < n { s += p[i]; i += 1 }
        return s
    }

    static func rowSquaredDeviation(_ p: UnsafePointer<Float>, _ n: Int, mean: Float) -> Float {
        let m8 = F8(repeating: mean)
        var acc0 = F8(), acc1 = F8()
        var i = 0
        while i + 16 <= n {
            let d0 = load8(p + i) - m8, d1 = load8(p + i + 8) - m8
            acc0 += d0 * d0; acc1 += d1 * d1
            i += 16
        }
        var s = (acc0 + acc1).sum()
        while i < n { let d = p[i] - mean; s += d * d; i += 1 }
        return s
    }

    /// Nearest-neighbour x2 upsample. x: [C, H, W] → [C, 2H, 2W].
    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let out = Tensor(shape: [x.shape[0], 2 * x.shape[1], 2 * x.shape[2]])
        upsampleNearest2x(x, into: out)
        return out
    }

    /// Nearest-neighbour x2 upsample into out: [C, 2H, 2W].
    public static func upsampleNearest2x(_ x: Tensor, into out: Tensor) {
        let c = x.shape[0], h = x.shape[1], w = x.shape[2]
        precondition(out.shape == [c, 2 * h, 2 * w], "upsample output \(out.shape) for input \(x.shape)")
        for row in 0..<(c * h) {  // (channel, y) pairs: input row → output rows 2y and 2y+1 of the same channel
            let src = x.data + row * w
            let dst = out.data + row * 4 * w
            var i = 0
            while i + 4 <= w {
                let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self)
                store8(F8(v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3]), dst + 2 * i)
                i += 4
            }
            while i < w { dst[2 * i] = src[i]; dst[2 * i + 1] = src[i]; i += 1 }
            (dst + 2 * w).update(from: dst, count: 2 * w)  // the second output row is a copy of the first
        }
    }

    /// Softmax over each row of a [rows, n] matrix, in place (max-subtracted, as PyTorch).
    public static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
        for r in 0..<rows {
            let row = p + r * n
            var m = -Float.infinity
            for i in 0..<n { m = max(m, row[i]) }
            let m8 = F8(repeating: m)
            var sum: Float = 0
            var i = 0
            var acc = F8()
            while i + 8 <= n { let e = exp8(load8(row + i) - m8); store8(e, row + i); acc += e; i += 8 }
            sum = acc.sum()
            while i < n { let e = exp8(F8(repeating: row[i] - m))[0]; row[i] = e; sum += e; i += 1 }
            let inv = 1 / sum
            for j in 0..<n { row[j] *= inv }
        }
    }

    /// Single-head self-attention over the H·W positions, used by the decoder's AttnBlock.
    /// q, k, v: [C, N] (the 1x1 conv outputs); returns out[c, i] = Σ_j softmax_j(q_i·k_j / √C) · v[c, j] into `out` [C, N].
    /// `scores` is caller-provided scratch of N·N floats.
    public static func attention(q: Tensor, k: Tensor, v: Tensor, into out: Tensor, scores: UnsafeMutablePointer<Float>) {
        let c = q.shape[0], n = q.count / c
        let scale = 1 / Float(c).squareRoot()
        // S[N_i, N_j] = scale · qᵀ[N, C] · k[C, N]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n), Int32(n), Int32(c),
                    scale, q.data, Int32(n), k.data, Int32(n), 0, scores, Int32(n))
        softmaxRows(scores, rows: n, n: n)
        // out[C, N_i] = v[C, N_j] · Pᵀ  (P is [N_i, N_j])
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(c), Int32(n), Int32(n),
                    1, v.data, Int32(n), scores, Int32(n), 0, out.data, Int32(n))
    }
}

/// GroupNorm parameters (LlamaGen: 32 groups, eps 1e-6, affine). weight, bias: [C].
public struct GroupNorm {
    public let weight: Tensor
    public let bias: Tensor
    public let groups: Int
    public let eps: Float

    public init(weight: Tensor, bias: Tensor, groups: Int = 32, eps: Float = 1e-6) {
        precondition(weight.shape.count == 1 && bias.shape == weight.shape && weight.count % groups == 0, "GroupNorm shapes")
        self.weight = weight; self.bias = bias; self.groups = groups; self.eps = eps
    }

    /// out = GroupNorm(x), then swish when asked. out may be x itself.
    public func apply(_ x: Tensor, swish: Bool, into out: Tensor) {
        NN.groupNorm(x, gamma: weight, beta: bias, groups: groups, eps: eps, swish: swish, into: out)
    }
}
