import CKernels
import Foundation

/// Elementwise and row-wise operations of the transformer, on raw row-major buffers.
public enum Ops {
    /// y[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight, for `rows` rows of width `dim` (LlamaGen RMSNorm).
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                               rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            var ss: Float = 0
            for i in 0..<dim { ss += xr[i] * xr[i] }
            let inv = 1 / (ss / Float(dim) + eps).squareRoot()
            for i in 0..<dim { yr[i] = (xr[i] * inv) * weight[i] }
        }
    }

    /// a = silu(a) * b, the SwiGLU gate (vectorised in C: a libm call per value cost ~0.5 ms per
    /// 6-row GPT-B pass, on one core while the other waited).
    public static func swiGLU(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        ck_swiglu(a, b, Int32(count))
    }

    /// GELU with the tanh approximation (PyTorch approximate="tanh"), used by the t2i caption MLP.
    public static func geluTanh(_ a: UnsafeMutablePointer<Float>, count: Int) {
        let c = Float((2.0 / Double.pi).squareRoot())
        for i in 0..<count {
            let x = a[i]
            a[i] = 0.5 * x * (1 + tanh(c * (x + 0.044715 * x * x * x)))
        }
    }

    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// Index of the largest value (first one on ties).
    public static func argmax(_ x: UnsafePointer<Float>, count: Int) -> Int {
        var best = 0
        for i in 1..<count where x[i] > x[best] { best = i }
        return best
    }
}

/// LlamaGen's 2D RoPE table: [cls_token_num + grid², headDim/2] (cos, sin) per pair.
/// Condition positions are all zeros (cos = sin = 0, NOT the identity), so q and k vanish there.
/// Pairs 0..<hd/4 rotate by row·f_k, pairs hd/4..<hd/2 by col·f_k, f_k = base^(-4k/hd).
public struct RoPE2D {
    public let cos: [Float]
    public let sin: [Float]
    public let pairs: Int
    public let positions: Int

    public init(headDim: Int, grid: Int, clsTokens: Int, base: Double) {
        pairs = headDim / 2
        let n = headDim / 4
        positions = clsTokens + grid * grid
        var c = [Float](repeating: 0, count: positions * pairs), s = c
        // LlamaGen computes the frequencies in float32: 1 / base^(2k / (hd/2)).
        let freqs: [Float] = (0..<n).map { k in 1 / Float(pow(base, Double(Float(2 * k) / Float(headDim / 2)))) }
        for t in 0..<(grid * grid) {
            let row = t / grid, col = t % grid
            let p = clsTokens + t
            for k in 0..<n {
                let ar = Float(row) * freqs[k], ac = Float(col) * freqs[k]
                c[p * pairs + k] = Foundation.cos(ar); s[p * pairs + k] = Foundation.sin(ar)
                c[p * pairs + n + k] = Foundation.cos(ac); s[p * pairs + n + k] = Foundation.sin(ac)
            }
        }
        cos = c; sin = s
    }

    /// Rotates interleaved pairs (2i, 2i+1) of one head vector in place at sequence position `pos`.
    @inline(__always)
    public func apply(_ v: UnsafeMutablePointer<Float>, pos: Int) {
        cos.withUnsafeBufferPointer { cp in
            sin.withUnsafeBufferPointer { sp in
                let o = pos * pairs
                for i in 0..<pairs {
                    let a = v[2 * i], b = v[2 * i + 1], c = cp[o + i], s = sp[o + i]
                    v[2 * i] = a * c - b * s
                    v[2 * i + 1] = b * c + a * s
                }
            }
        }
    }
}
