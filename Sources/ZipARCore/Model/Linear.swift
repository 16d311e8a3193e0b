import CKernels

/// A bias-free linear layer y = x · Wᵀ with W in PyTorch layout [out, in], copied once into an
/// aligned buffer at load time. Few rows (decode passes) go through the streaming kernel, which
/// reads each weight once for all rows; many rows (prefill) go through OpenBLAS sgemm.
public final class Linear {
    public let weight: Tensor           // [outFeatures, inFeatures]
    public var outFeatures: Int { weight.shape[0] }
    public var inFeatures: Int { weight.shape[1] }

    /// Below this many rows the streaming kernel beats sgemm (measured with `zipar bench --kernels`).
    public static var sgemmMinRows = 32

    public init(weight: Tensor) {
        precondition(weight.shape.count == 2)
        self.weight = weight
    }

    public var bytes: Int { weight.count * 4 }

    /// y[m, out] = x[m, in] · Wᵀ
    public func apply(_ x: UnsafePointer<Float>, rows m: Int, into y: UnsafeMutablePointer<Float>) {
        let n = outFeatures, k = inFeatures
        if m >= Linear.sgemmMinRows {
            BLAS.matmulNT(x, weight.data, y, m: m, k: k, n: n)
            return
        }
        let w = weight.data
        // Split output columns across workers in multiples of the kernels' 3- and 4-row tiles.
        // A few chunks per thread, so a busy core's share can be taken over by the others. Weights
        // under 1 MB run on one thread: handing them out costs more than it saves.
        let chunks = n * k >= 1 << 18 ? min(4 * Parallel.threads, max(1, n / 96)) : 1
        Parallel.run(chunks: chunks) { part, parts, _ in
            let r = Parallel.range(part, of: parts, n: n, align: 12)
            if !r.isEmpty { ck_gemm_rows(x, Int32(m), Int32(k), w, Int32(r.lowerBound), Int32(r.upperBound), y, Int32(n)) }
        }
    }
}
