import CKernels
import Foundation

/// An INT8 convolution (VQ decoder, README "INT8 VQ decoder"): weights INT8 symmetric per output channel
/// (w = wscales8[c] * q), the input UINT8 per tensor with a zero point (x = inputScale * (u - inputZero)),
/// int32 accumulation and one float rescale per output channel plus the bias.
///
/// Run time (CKernels ck_conv_*): quantize the input planes once, then per group of 16 output pixels an
/// im2col into UINT8 and the VNNI kernel; workers take 8 groups at a time so the packed columns stay in L2.
public final class QuantizedConv {
    public let outChannels: Int, inChannels: Int, kernel: Int
    /// INT8 weights in PyTorch layout [out, in, k, k] (what is stored).
    public let qweight: [Int8]
    public let wscales: [Float]
    public let inputScale: Float
    public let inputZero: Int
    /// The weights in the kernel's K order (ky, kx, c) and their row sums (for the zero-point correction).
    let wk: [Int8]
    let wsum: [Int32]
    var kdim: Int { inChannels * kernel * kernel }

    /// Checks everything a file could get wrong (the caller turns the message into an error).
    public init(outChannels: Int, inChannels: Int, kernel: Int, qweight: [Int8], wscales: [Float], inputScale: Float, inputZero: Int) throws {
        guard inChannels % 4 == 0 else { throw ZipARError("INT8 convolutions need input channels in multiples of 4, got \(inChannels)") }
        guard qweight.count == outChannels * inChannels * kernel * kernel else { throw ZipARError("qweight has \(qweight.count) values, expected \(outChannels * inChannels * kernel * kernel)") }
        guard wscales.count == outChannels, wscales.allSatisfy({ $0.isFinite && $0 >= 0 }) else { throw ZipARError("wscales8 must hold \(outChannels) finite non-negative scales") }
        guard inputScale.isFinite, inputScale > 0 else { throw ZipARError("input_scale must be one positive finite number, got \(inputScale)") }
        guard (0...255).contains(inputZero) else { throw ZipARError("input_zero must be in [0, 255], got \(inputZero)") }
        self.outChannels = outChannels; self.inChannels = inChannels; self.kernel = kernel
        self.qweight = qweight; self.wscales = wscales; self.inputScale = inputScale; self.inputZero = inputZero
        let k2 = kernel * kernel, K = inChannels * k2
        var wk = [Int8](repeating: 0, count: outChannels * K), ws = [Int32](repeating: 0, count: outChannels)
        for o in 0..<outChannels {
            for c in 0..<inChannels {
                for t in 0..<k2 {
                    let v = qweight[(o * inChannels + c) * k2 + t]
                    wk[o * K + t * inChannels + c] = v
                    ws[o] += Int32(v)
                }
            }
        }
        self.wk = wk; self.wsum = ws
    }

    /// The same weights with another input range (calibration tries many; the weight re-layout is reused).
    public init(_ other: QuantizedConv, inputScale: Float, inputZero: Int) throws {
        guard inputScale.isFinite, inputScale > 0, (0...255).contains(inputZero) else { throw ZipARError("bad input range \(inputScale), \(inputZero)") }
        outChannels = other.outChannels; inChannels = other.inChannels; kernel = other.kernel
        qweight = other.qweight; wscales = other.wscales; wk = other.wk; wsum = other.wsum
        self.inputScale = inputScale; self.inputZero = inputZero
    }

    /// The float weights the kernel effectively uses [out, in, k, k].
    public func dequantizedWeight() -> Tensor {
        let t = Tensor(shape: [outChannels, inChannels, kernel, kernel])
        let per = inChannels * kernel * kernel
        for i in 0..<qweight.count { t.data[i] = Float(qweight[i]) * wscales[i / per] }
        return t
    }

    // MARK: calibration (RepAPQ's shrink grid with the MAE criterion, quant-spec 5.2)

    /// Per output channel: scale = r * absmax / 127 for the shrink ratio r in 1, 0.99, ..., 0.21 that gives
    /// the least mean |w - s * clamp(RNE(w / s), -127, 127)| (first minimum wins).
    public static func quantizeWeights(_ w: Tensor, candidates: Int = 80) -> (q: [Int8], scales: [Float]) {
        let out = w.shape[0], per = w.count / out
        var q = [Int8](repeating: 0, count: w.count), scales = [Float](repeating: 0, count: out)
        for o in 0..<out {
            let row = UnsafeBufferPointer(start: w.data + o * per, count: per)
            let amax = row.reduce(Float(0)) { max($0, abs($1)) }
            guard amax > 0 else { continue }  // all-zero row: scale 0, codes 0
            var best = Float.infinity, bestS: Float = amax / 127
            for i in 0..<candidates {
                let s = (1 - 0.01 * Float(i)) * amax / 127
                var err: Float = 0
                for v in row { err += abs(v - s * min(max((v / s).rounded(.toNearestOrEven), -127), 127)) }
                if err < best { best = err; bestS = s }
            }
            scales[o] = bestS
            for (p, v) in row.enumerated() { q[o * per + p] = Int8(min(max((v / bestS).rounded(.toNearestOrEven), -127), 127)) }
        }
        return (q, scales)
    }

    /// Activation candidates: [r * lo, r * hi] for the shrink ratio r = 1, 0.99, ... (the range always
    /// holds 0, so padding stays exact): scale (hi - lo) / 255, zero RNE(-lo / scale).
    public static func activationCandidate(lo: Float, hi: Float, ratio r: Float) -> (scale: Float, zero: Int) {
        let l = min(lo, 0) * r, h = max(hi, 0) * r
        let s = max(h - l, 1e-8) / 255
        return (s, Int(min(max((-l / s).rounded(.toNearestOrEven), 0), 255)))
    }

    // MARK: compute

    /// Whether apply runs the integer kernel. Without AVX-512 VNNI the portable C kernel is several times
    /// slower than sgemm, so there the same quantized numbers (UINT8 input, INT8 weights, dequantized) go
    /// through im2col + sgemm instead: the same result up to fp32 rounding, at fp32 speed. Tests set it.
    public static var integerPath = ck_qkernel_level() == 2
    private var dequantized: Tensor?

    /// out = conv(x) + bias (or out += ... when accumulate). x: [Cin, H, W], out: [Cout, H, W].
    /// accumulators (tests): the exact int32 sums, [Cout, H*W] (always the integer kernel).
    public func apply(_ x: Tensor, bias: Tensor, into out: Tensor, accumulate: Bool, scratch: ConvScratch,
                      accumulators: UnsafeMutablePointer<Int32>? = nil) {
        let h = x.shape[1], w = x.shape[2], hw = h * w, K = kdim
        if !QuantizedConv.integerPath && accumulators == nil {
            let u = scratch.bytes(slot: 1, count: x.count)
            ck_conv_quantize(x.data, x.count, 1 / inputScale, Int32(inputZero), u)
            let xd = Tensor(shape: x.shape)
            for i in 0..<x.count { xd.data[i] = inputScale * Float(Int(u[i]) - inputZero) }
            if dequantized == nil { dequantized = dequantizedWeight() }
            Conv2D(weight: dequantized!, bias: bias).applyFloat(xd, into: out, accumulate: accumulate, scratch: scratch)
            return
        }
        let planes = scratch.bytes(slot: 1, count: inChannels * hw)
        let inv = 1 / inputScale, zero = Int32(inputZero)
        // Quantize the input planes (split by channels).
        let qchunks = min(inChannels, 4 * Parallel.threads)
        Parallel.run(chunks: hw * inChannels >= 1 << 16 ? qchunks : 1) { part, parts, _ in
            let r = Parallel.range(part, of: parts, n: inChannels)
            if r.isEmpty { return }
            ck_conv_quantize(x.data + r.lowerBound * hw, r.count * hw, inv, zero, planes + r.lowerBound * hw)
        }
        // 8 groups of 16 pixels per task: 8 * 16 * K bytes of packed columns (147 KB at K = 1152) stay in L2.
        let groups = (hw + 15) / 16, per = 8, tasks = (groups + per - 1) / per
        let colBytes = per * 16 * K
        let cols = (0..<Parallel.threads).map { scratch.bytes(slot: 2 + $0, count: colBytes) }
        let wsc = wscales, ws = wsum
        wk.withUnsafeBufferPointer { wp in
            wsc.withUnsafeBufferPointer { sp in
                ws.withUnsafeBufferPointer { sump in
                    Parallel.run(chunks: tasks) { t, _, worker in
                        let g0 = t * per, g1 = min(groups, g0 + per)
                        ck_conv_pack(planes, Int32(inChannels), Int32(h), Int32(w), Int32(kernel), zero, Int32(g0), Int32(g1), cols[worker])
                        ck_conv_gemm(cols[worker], Int32(g0), Int32(g1), Int32(hw), Int32(K), wp.baseAddress, sump.baseAddress, sp.baseAddress,
                                     bias.data, inputScale, zero, Int32(outChannels), out.data, Int32(hw), accumulate ? 1 : 0, accumulators)
                    }
                }
            }
        }
    }
}
