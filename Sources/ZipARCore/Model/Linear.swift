import CKernels

/// A bias-free linear layer y = x · Wᵀ with W in PyTorch layout [out, in], copied once into an
/// aligned buffer at load time. Few rows (decode passes) go through the streaming kernel, which
/// reads each weight once for all rows; many rows (prefill) go through OpenBLAS sgemm.
/// A quantized layer (`quantized` set, `weight` nil) runs the integer GEMM instead, for any row count.
public final class Linear {
    /// The fp32 weight [outFeatures, inFeatures]; nil once the layer is quantized.
    public private(set) var weight: Tensor?
    public private(set) var quantized: QuantizedLinear?
    public let outFeatures: Int
    public let inFeatures: Int

    /// Below this many rows the streaming kernel beats sgemm (measured with `zipar bench --kernels`).
    public static var sgemmMinRows = 32

    /// When set, every fp32 `apply` hands its input rows to this closure first (calibration).
    public static var inputObserver: ((Linear, UnsafePointer<Float>, Int) -> Void)? = nil

    public init(weight: Tensor) {
        precondition(weight.shape.count == 2)
        self.weight = weight
        outFeatures = weight.shape[0]; inFeatures = weight.shape[1]
    }

    public init(quantized q: QuantizedLinear) {
        quantized = q
        outFeatures = q.outFeatures; inFeatures = q.inFeatures
    }

    /// Replaces the fp32 weight by its quantized form (frees the fp32 copy).
    public func quantize(_ q: QuantizedLinear) {
        precondition(q.outFeatures == outFeatures && q.inFeatures == inFeatures)
        quantized = q
        weight = nil
    }

    public var parameterCount: Int { outFeatures * inFeatures }
    public var scheme: WeightScheme { quantized?.scheme ?? .fp32 }

    /// Bytes one pass streams (fp32 weight, or codes plus scales).
    public var bytes: Int { quantized?.bytes ?? parameterCount * 4 }

    /// y[m, out] = x[m, in] · Wᵀ
    public func apply(_ x: UnsafePointer<Float>, rows m: Int, into y: UnsafeMutablePointer<Float>) {
        if let q = quantized { q.apply(x, rows: m, into: y); return }
        Linear.inputObserver?(self, x, m)
        let weight = self.weight!
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
