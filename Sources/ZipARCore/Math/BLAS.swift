import COpenBLAS

/// Thin wrappers over OpenBLAS for the large products (prefill, convolutions).
/// Decode passes with few rows use `Linear` (streaming kernel) instead; see platform-notes section 7.
public enum BLAS {
    /// C[m,n] = A[m,k] · B[n,k]ᵀ (+ C if accumulate). B in PyTorch Linear layout [out, in].
    public static func matmulNT(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                                m: Int, k: Int, n: Int, accumulate: Bool = false) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(k), b, Int32(k), accumulate ? 1 : 0, c, Int32(n))
    }

    /// C[m,n] = A[m,k] · B[k,n] (+ C if accumulate).
    public static func matmulNN(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                                m: Int, k: Int, n: Int, accumulate: Bool = false) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(k), b, Int32(n), accumulate ? 1 : 0, c, Int32(n))
    }

    /// y[n] = W[n,k] · x[k]  (one row: sgemv is ~5x faster than sgemm with M = 1).
    public static func matvec(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int, k: Int) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), 1, w, Int32(k), x, 1, 0, y, 1)
    }

    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}
