import CKernels
import Foundation

/// Quantization schemes for the transformer's Linear weights.
public enum WeightScheme: String, CaseIterable, Sendable {
    case fp32
    /// INT8 weights, one float scale per output row (symmetric, absmax/127); INT8 activations per token.
    case w8a8
    /// DGQ A8W4: 4-bit codes, integer group scales/zeros, float row scale; INT8 activations.
    case w4a8dgq = "w4a8-dgq"
    /// Binarized: one sign bit per weight and a float scale alpha per output row; INT8 activations per token.
    case w1
}

/// A Linear layer with integer weights, run by the integer GEMM of qkernels.c: activations are
/// quantized to INT8 (a static per-tensor scale from calibration, or per token), multiplied with
/// INT32 accumulation, and rescaled once per output by rowScale * activationScale.
/// The W8/W4 weights are re-laid-out once into the kernels' 16-row blocks (see qkernels.h); W1 keeps
/// the file's row-major sign bits, which already are the kernel's 64-bit words.
public final class QuantizedLinear {
    public let scheme: WeightScheme
    public let outFeatures: Int, inFeatures: Int
    /// W4: input columns per group (S, z); W8: inFeatures.
    public let groupSize: Int
    /// Static activation scale s_x (DGQ's calibrated clip / 127); nil = dynamic per-token absmax / 127.
    public let inputScale: Float?
    let blocks: Int
    let packed: UnsafeMutablePointer<UInt8>
    let S: UnsafeMutablePointer<Int8>?, Z: UnsafeMutablePointer<Int8>?
    let rowScale: UnsafeMutablePointer<Float>
    /// W1: 1-bits per weight row (the kernel's per-row constant).
    let popcounts: UnsafeMutablePointer<Int32>?

    private static func alloc<T>(_ n: Int, _ v: T) -> UnsafeMutablePointer<T> {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(64, (n * MemoryLayout<T>.stride + 63) & ~63), alignment: 64)
        let p = raw.bindMemory(to: T.self, capacity: n)
        p.initialize(repeating: v, count: n)
        return p
    }

    /// A DGQ weight (codes, S, z, s8). k must be a multiple of 8 and of the group size.
    public init(dgq w: DGQWeight, inputScale: Float?) {
        precondition(w.cols % 8 == 0 && w.groupSize % 8 == 0 && w.cols % w.groupSize == 0)
        scheme = .w4a8dgq; outFeatures = w.rows; inFeatures = w.cols; groupSize = w.groupSize; self.inputScale = inputScale
        let n = w.rows, k = w.cols, ng = w.groups
        blocks = (n + 15) / 16
        packed = Self.alloc(blocks * k * 8, 0)
        S = Self.alloc(blocks * ng * 16, 1); Z = Self.alloc(blocks * ng * 16, 0)
        rowScale = Self.alloc(blocks * 16, 0)
        popcounts = nil
        for j in 0..<n {
            let b = j / 16, l = j % 16
            rowScale[j] = w.rowScales[j]
            for g in 0..<ng { S![(b * ng + g) * 16 + l] = w.scales[j * ng + g]; Z![(b * ng + g) * 16 + l] = w.zeros[j * ng + g] }
            for p in 0..<k {
                let c = p / 8, t = p % 8
                let byte = b * (k / 8) * 64 + c * 64 + 4 * l + (t & 3)
                packed[byte] |= t < 4 ? w.codes[j * k + p] : w.codes[j * k + p] << 4
            }
        }
    }

    /// INT8 weights [n, k] with a float scale per row. k must be a multiple of 4.
    public init(int8 q: [Int8], rows n: Int, cols k: Int, rowScales: [Float]) {
        precondition(k % 4 == 0 && q.count == n * k && rowScales.count == n)
        scheme = .w8a8; outFeatures = n; inFeatures = k; groupSize = k; inputScale = nil
        blocks = (n + 15) / 16
        packed = Self.alloc(blocks * k * 16, 128)
        S = nil; Z = nil
        rowScale = Self.alloc(blocks * 16, 0)
        popcounts = nil
        for j in 0..<n {
            let b = j / 16, l = j % 16
            rowScale[j] = rowScales[j]
            for p in 0..<k { packed[b * (k / 4) * 64 + (p / 4) * 64 + 4 * l + p % 4] = UInt8(Int(q[j * k + p]) + 128) }
        }
    }

    /// Binarized weights: `bits` in the file layout (row j = bytes [j*k/8, (j+1)*k/8), bit t of byte c =
    /// column 8c+t, 1 = +alpha_j), one alpha > 0 per row. k must be a multiple of 64.
    public init(signBits bits: [UInt8], rows n: Int, cols k: Int, alphas: [Float]) {
        precondition(k % 64 == 0 && bits.count == n * k / 8 && alphas.count == n)
        scheme = .w1; outFeatures = n; inFeatures = k; groupSize = k; inputScale = nil
        blocks = (n + 15) / 16
        packed = Self.alloc(n * k / 8, 0)
        S = nil; Z = nil
        rowScale = Self.alloc(n, 0)
        popcounts = Self.alloc(n, 0)
        for j in 0..<n {
            rowScale[j] = alphas[j]
            var ones = 0
            for c in 0..<(k / 8) { packed[j * k / 8 + c] = bits[j * k / 8 + c]; ones += bits[j * k / 8 + c].nonzeroBitCount }
            popcounts![j] = Int32(ones)
        }
    }

    deinit {
        UnsafeMutableRawPointer(packed).deallocate(); UnsafeMutableRawPointer(rowScale).deallocate()
        if let popcounts { UnsafeMutableRawPointer(popcounts).deallocate() }
        if let S { UnsafeMutableRawPointer(S).deallocate() }
        if let Z { UnsafeMutableRawPointer(Z).deallocate() }
    }

    /// Symmetric per-output-channel INT8 (the W8A8 baseline; llama.cpp Q8_0's rule with one block per row):
    /// s = max|w_row| / 127, q = RNE(w / s).
    public static func w8a8(weight w: UnsafePointer<Float>, rows n: Int, cols k: Int) -> QuantizedLinear {
        var q = [Int8](repeating: 0, count: n * k), s = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var amax: Float = 0
            for p in 0..<k { amax = max(amax, abs(w[j * k + p])) }
            let sc = amax > 0 ? amax / 127 : 1
            s[j] = sc
            for p in 0..<k { q[j * k + p] = Int8(min(max(rne(w[j * k + p] / sc), -127), 127)) }
        }
        return QuantizedLinear(int8: q, rows: n, cols: k, rowScales: s)
    }

    /// Binarization with the inference rule of binarization-by-classification / BiViT, per output row:
    /// mu = mean(w), bit = (w - mu >= 0), alpha = mean|w - mu| (sums in Double). The row mean itself is
    /// dropped (the weight becomes alpha * sign(w - mu)). A constant row gets the smallest positive alpha,
    /// so the file stays valid (alpha > 0) and the row contributes ~0.
    public static func w1(weight w: UnsafePointer<Float>, rows n: Int, cols k: Int) -> QuantizedLinear {
        precondition(k % 64 == 0)
        var bits = [UInt8](repeating: 0, count: n * k / 8), alphas = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var sum = 0.0
            for p in 0..<k { sum += Double(w[j * k + p]) }
            let mu = Float(sum / Double(k))
            var dev = 0.0
            for p in 0..<k {
                let d = w[j * k + p] - mu
                dev += Double(abs(d))
                if d >= 0 { bits[j * k / 8 + p / 8] |= 1 << UInt8(p % 8) }
            }
            let a = Float(dev / Double(k))
            alphas[j] = a > 0 ? a : .leastNormalMagnitude
        }
        return QuantizedLinear(signBits: bits, rows: n, cols: k, alphas: alphas)
    }

    /// Bytes one pass streams: codes, group scales and zeros, row scales (padding rows included).
    /// W1: the sign bits, alpha and the row's popcount (the kernel reads both per row).
    public var bytes: Int {
        if scheme == .w1 { return outFeatures * inFeatures / 8 + 8 * outFeatures }
        let codes = scheme == .w8a8 ? blocks * 16 * inFeatures : blocks * 16 * inFeatures / 2
        let groups = scheme == .w8a8 ? 0 : 2 * blocks * 16 * (inFeatures / groupSize)
        return codes + groups + blocks * 16 * 4
    }

    // MARK: reading the weights back (saving, tests)

    /// The INT8 weight w8 of row j, column p.
    /// (W1: the sign, +1 or -1.)
    public func w8(_ j: Int, _ p: Int) -> Int {
        let b = j / 16, l = j % 16, k = inFeatures
        if scheme == .w1 { return signBits(j)[p / 8] >> UInt8(p % 8) & 1 == 1 ? 1 : -1 }
        if scheme == .w8a8 { return Int(packed[b * (k / 4) * 64 + (p / 4) * 64 + 4 * l + p % 4]) - 128 }
        return Int(S![(b * (k / groupSize) + p / groupSize) * 16 + l]) * (Int(code(j, p)) - Int(Z![(b * (k / groupSize) + p / groupSize) * 16 + l]))
    }

    func code(_ j: Int, _ p: Int) -> UInt8 {
        let b = j / 16, l = j % 16, k = inFeatures, t = p % 8
        let byte = packed[b * (k / 8) * 64 + (p / 8) * 64 + 4 * l + (t & 3)]
        return t < 4 ? byte & 15 : byte >> 4
    }

    /// The file-layout sign bits of row j (W1 only): k/8 bytes, bit t of byte c = column 8c+t.
    public func signBits(_ j: Int) -> UnsafeBufferPointer<UInt8> {
        precondition(scheme == .w1)
        return UnsafeBufferPointer(start: packed + j * inFeatures / 8, count: inFeatures / 8)
    }

    /// The DGQ weight in its storage form (W4 only).
    public var dgqWeight: DGQWeight? {
        guard scheme == .w4a8dgq, let S, let Z else { return nil }
        let n = outFeatures, k = inFeatures, ng = k / groupSize
        var codes = [UInt8](repeating: 0, count: n * k), s = [Int8](repeating: 0, count: n * ng), z = s
        for j in 0..<n {
            for p in 0..<k { codes[j * k + p] = code(j, p) }
            for g in 0..<ng { s[j * ng + g] = S[((j / 16) * ng + g) * 16 + j % 16]; z[j * ng + g] = Z[((j / 16) * ng + g) * 16 + j % 16] }
        }
        return DGQWeight(rows: n, cols: k, groupSize: groupSize, codes: codes, scales: s, zeros: z,
                         rowScales: (0..<n).map { rowScale[$0] })
    }

    public var rowScales: [Float] { (0..<outFeatures).map { rowScale[$0] } }

    /// The float weight the kernel effectively multiplies with: rowScale * w8.
    public func dequantized() -> Tensor {
        let t = Tensor(shape: [outFeatures, inFeatures])
        for j in 0..<outFeatures { for p in 0..<inFeatures { t.data[j * inFeatures + p] = Float(w8(j, p)) * rowScale[j] } }
        return t
    }

    // MARK: compute

    /// y[m, out] = x[m, in] · Wᵀ (integer GEMM). Scratch is shared and grown on demand, so the
    /// steady state allocates nothing.
    public func apply(_ x: UnsafePointer<Float>, rows m: Int, into y: UnsafeMutablePointer<Float>) {
        QuantScratch.shared.with(rows: m, cols: inFeatures, groups: inFeatures / groupSize, planes: scheme == .w1) { xq, sx, gsum, planes in
            run(x, m, y, xq, sx, gsum, planes, acc: nil)
        }
    }

    /// The same, also returning the int8 activations and the int32 accumulators (tests).
    public func apply(_ x: UnsafePointer<Float>, rows m: Int, into y: UnsafeMutablePointer<Float>, accumulators: inout [Int32]) -> [Int8] {
        precondition(accumulators.count >= m * outFeatures)
        var out: [Int8] = []
        QuantScratch.shared.with(rows: m, cols: inFeatures, groups: inFeatures / groupSize, planes: scheme == .w1) { xq, sx, gsum, planes in
            accumulators.withUnsafeMutableBufferPointer { run(x, m, y, xq, sx, gsum, planes, acc: $0.baseAddress) }
            out = Array(UnsafeBufferPointer(start: xq, count: m * inFeatures))
        }
        return out
    }

    private func run(_ x: UnsafePointer<Float>, _ m: Int, _ y: UnsafeMutablePointer<Float>, _ xq: UnsafeMutablePointer<Int8>,
                     _ sx: UnsafeMutablePointer<Float>, _ gsum: UnsafeMutablePointer<Int32>, _ planes: UnsafeMutablePointer<UInt64>,
                     acc: UnsafeMutablePointer<Int32>?) {
        let n = outFeatures, k = inFeatures
        // W8 keeps activations in [-127, 127] (the AVX2 path moves signs onto them); DGQ's kernel path clamps to -128.
        // W1 takes W8's activations (groupSize = k: gsum is the row sum the identity needs).
        ck_quantize_act(x, Int32(m), Int32(k), Int32(k), inputScale ?? 0, scheme == .w4a8dgq ? -128 : -127, Int32(groupSize), xq, sx, gsum)
        if scheme == .w1 {
            // Planes once per call (m*k bytes; the AVX2 path reads xq instead), then output rows split across workers.
            ck_w1_planes(xq, Int32(m), Int32(k), planes)
            let bits = UnsafeRawPointer(packed).assumingMemoryBound(to: UInt64.self)
            let chunks = n * k >= 1 << 18 ? min(4 * Parallel.threads, max(1, n / 64)) : 1
            Parallel.run(chunks: chunks) { part, parts, _ in
                let r = Parallel.range(part, of: parts, n: n, align: 8)   // the kernel's 8-row tiles
                guard !r.isEmpty else { return }
                ck_qgemm_w1(xq, planes, sx, gsum, Int32(m), Int32(k), bits, popcounts, rowScale, Int32(r.lowerBound), Int32(r.upperBound),
                            y, Int32(n), acc, Int32(n))
            }
            return
        }
        // Blocks of 16 rows split across workers; small weights stay on one thread.
        let chunks = n * k >= 1 << 18 ? min(4 * Parallel.threads, max(1, blocks / 4)) : 1
        Parallel.run(chunks: chunks) { part, parts, _ in
            let r = Parallel.range(part, of: parts, n: blocks)
            guard !r.isEmpty else { return }
            if scheme == .w8a8 {
                ck_qgemm_w8(xq, sx, gsum, Int32(m), Int32(k), packed, rowScale, Int32(n), Int32(r.lowerBound), Int32(r.upperBound),
                            y, Int32(n), acc, Int32(n))
            } else {
                ck_qgemm_w4(xq, sx, gsum, Int32(m), Int32(k), Int32(groupSize), packed, S, Z, rowScale, Int32(n),
                            Int32(r.lowerBound), Int32(r.upperBound), y, Int32(n), acc, Int32(n))
            }
        }
    }
}

/// Activation scratch shared by all quantized layers (int8 rows, row scales, group sums, W1's bit
/// planes). Grown on demand and never shrunk; the lock only makes concurrent use from different threads safe.
final class QuantScratch {
    static let shared = QuantScratch()
    private let lock = NSLock()
    private var xq = UnsafeMutablePointer<Int8>.allocate(capacity: 1), xqCap = 1
    private var sx = UnsafeMutablePointer<Float>.allocate(capacity: 1), sxCap = 1
    private var gs = UnsafeMutablePointer<Int32>.allocate(capacity: 1), gsCap = 1
    /// 64-byte aligned: the W1 kernel loads the 8 planes of a word as one zmm.
    private var pl = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64).bindMemory(to: UInt64.self, capacity: 8), plCap = 8

    func with(rows m: Int, cols k: Int, groups: Int, planes: Bool = false,
              _ body: (UnsafeMutablePointer<Int8>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<UInt64>) -> Void) {
        lock.lock(); defer { lock.unlock() }
        if xqCap < m * k { xq.deallocate(); xqCap = m * k; xq = .allocate(capacity: xqCap) }
        if sxCap < m { sx.deallocate(); sxCap = m; sx = .allocate(capacity: sxCap) }
        if gsCap < m * groups { gs.deallocate(); gsCap = m * groups; gs = .allocate(capacity: gsCap) }
        // m rows x k/64 words x 8 planes.
        if planes && plCap < m * k / 8 {
            UnsafeMutableRawPointer(pl).deallocate()
            plCap = m * k / 8
            pl = UnsafeMutableRawPointer.allocate(byteCount: plCap * 8, alignment: 64).bindMemory(to: UInt64.self, capacity: plCap)
        }
        body(xq, sx, gs, pl)
    }
}
