import COpenBLAS

/// A 2-D convolution with stride 1, an odd square kernel and "same" zero padding (k/2 each side),
/// in PyTorch layout: weight [out, in, k, k], bias [out]. Batch 1, activations channel-first [C, H, W].
///
/// k = 1 is a plain sgemm: out[Cout, HW] = W[Cout, Cin] · x[Cin, HW].
/// k > 1 uses im2col + sgemm, one band of output rows at a time, so the column buffer stays
/// bounded (a full im2col of a 3x3 conv with 128 channels at 256x256 would be 300 MB).
///
/// A class (not a struct) so a decoder's convolutions can be quantized in place by the calibrator:
/// when `quantized` is set, apply runs the INT8 path (QuantizedConv) instead of sgemm.
public final class Conv2D {
    public let weight: Tensor  // [out, in, k, k] (for a quantized conv: the dequantized INT8 weights)
    public let bias: Tensor    // [out]
    public let outChannels: Int
    public let inChannels: Int
    public let kernel: Int
    /// The checkpoint prefix (`decoder.conv_in`), set by the VQ decoder; "" elsewhere.
    public let name: String
    public var quantized: QuantizedConv?

    /// Calibration: sees every input of apply before the convolution runs (nil at run time).
    public static var inputObserver: ((Conv2D, Tensor) -> Void)? = nil

    public init(weight: Tensor, bias: Tensor, name: String = "", quantized: QuantizedConv? = nil) {
        precondition(weight.shape.count == 4 && weight.shape[2] == weight.shape[3] && weight.shape[2] % 2 == 1,
                     "conv weight must be [out, in, k, k] with odd k, got \(weight.shape)")
        precondition(bias.shape == [weight.shape[0]], "conv bias \(bias.shape) does not match weight \(weight.shape)")
        self.weight = weight
        self.bias = bias
        self.outChannels = weight.shape[0]
        self.inChannels = weight.shape[1]
        self.kernel = weight.shape[2]
        self.name = name
        self.quantized = quantized
    }

    /// out = conv(x) + bias, or out += conv(x) + bias when `accumulate` (used to add a residual for free).
    /// x: [Cin, H, W], out: [Cout, H, W], distinct buffers.
    public func apply(_ x: Tensor, into out: Tensor, accumulate: Bool = false, scratch: ConvScratch) {
        Conv2D.inputObserver?(self, x)
        if let q = quantized {
            precondition(x.shape.count == 3 && x.shape[0] == inChannels && out.shape == [outChannels, x.shape[1], x.shape[2]],
                         "conv shapes \(x.shape) -> \(out.shape) do not fit [\(outChannels), \(inChannels), \(kernel), \(kernel)]")
            q.apply(x, bias: bias, into: out, accumulate: accumulate, scratch: scratch)
            return
        }
        applyFloat(x, into: out, accumulate: accumulate, scratch: scratch)
    }

    /// The fp32 path (im2col + sgemm), whether or not the conv is quantized.
    public func applyFloat(_ x: Tensor, into out: Tensor, accumulate: Bool = false, scratch: ConvScratch) {
        precondition(x.shape.count == 3 && x.shape[0] == inChannels, "conv input \(x.shape), expected [\(inChannels), H, W]")
        let h = x.shape[1], w = x.shape[2]
        precondition(out.shape == [outChannels, h, w], "conv output \(out.shape), expected [\(outChannels), \(h), \(w)]")
        let hw = h * w

        // Start from the bias (or residual + bias); every sgemm below then runs with beta = 1.
        for o in 0..<outChannels {
            let row = out.data + o * hw
            let b = bias.data[o]
            if accumulate {
                for i in 0..<hw { row[i] += b }
            } else {
                row.update(repeating: b, count: hw)
            }
        }

        if kernel == 1 {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(outChannels), Int32(hw), Int32(inChannels),
                        1, weight.data, Int32(inChannels), x.data, Int32(hw), 1, out.data, Int32(hw))
            return
        }

        // K index = (c, ky, kx) row-major, which is exactly the weight's [out, in, k, k] layout.
        let kdim = inChannels * kernel * kernel
        let rowBytes = kdim * w * MemoryLayout<Float>.stride
        let bandRows = max(1, min(h, scratch.budgetBytes / max(rowBytes, 1)))
        let col = scratch.buffer(count: kdim * bandRows * w)

        var y0 = 0
        while y0 < h {
            let rows = min(bandRows, h - y0)
            let n = rows * w
            im2col(x.data, channels: inChannels, height: h, width: w, kernel: kernel, y0: y0, rows: rows, col: col)
            // out[:, y0*W ..< (y0+rows)*W] += W[Cout, K] · col[K, n]   (ldc = H*W: a column band of out)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(outChannels), Int32(n), Int32(kdim),
                        1, weight.data, Int32(kdim), col, Int32(n), 1, out.data + y0 * w, Int32(hw))
            y0 += rows
        }
    }

    /// Convenience: allocates the output. out: [Cout, H, W].
    public func callAsFunction(_ x: Tensor, scratch: ConvScratch) -> Tensor {
        let out = Tensor(shape: [outChannels, x.shape[1], x.shape[2]])
        apply(x, into: out, scratch: scratch)
        return out
    }
}

/// Fills col[K = C·k·k, rows·W] for output rows y0 ..< y0+rows:
/// col[(c, ky, kx), r·W + x] = in[c, y0 + r + ky - p, x + kx - p], zero outside the image (p = k/2).
/// Each destination row segment is one shifted copy of a source row plus zeroed edges.
func im2col(_ input: UnsafePointer<Float>, channels: Int, height h: Int, width w: Int, kernel k: Int,
            y0: Int, rows: Int, col: UnsafeMutablePointer<Float>) {
    let pad = k / 2
    let n = rows * w
    for c in 0..<channels {
        let plane = input + c * h * w
        for ky in 0..<k {
            for kx in 0..<k {
                let dst = col + ((c * k + ky) * k + kx) * n
                let dx = kx - pad
                // Valid output columns x have 0 <= x + dx < W.
                let xLo = max(0, -dx), xHi = min(w, w - dx)
                for r in 0..<rows {
                    let d = dst + r * w
                    let sy = y0 + r + ky - pad
                    if sy < 0 || sy >= h || xHi <= xLo {
                        d.update(repeating: 0, count: w)
                        continue
                    }
                    if xLo > 0 { d.update(repeating: 0, count: xLo) }
                    (d + xLo).update(from: plane + sy * w + xLo + dx, count: xHi - xLo)
                    if xHi < w { (d + xHi).update(repeating: 0, count: w - xHi) }
                }
            }
        }
    }
}

/// A reusable, growable 64-byte aligned scratch buffer for im2col bands.
/// Not thread-safe: one per decoder (or per thread).
public final class ConvScratch {
    /// Upper bound on the im2col band (bytes). One image row is always allowed even if it is larger.
    public var budgetBytes: Int
    private var storage: UnsafeMutablePointer<Float>?
    private var capacity = 0

    /// Byte buffers of the INT8 path by slot (1: quantized input planes, 2...: per-worker packed columns).
    private var byteSlots: [Int: (UnsafeMutableRawPointer, Int)] = [:]

    public init(budgetBytes: Int = 8 << 20) { self.budgetBytes = budgetBytes }

    deinit {
        storage.map { UnsafeMutableRawPointer($0).deallocate() }
        for (p, _) in byteSlots.values { p.deallocate() }
    }

    /// A 64-byte aligned byte buffer of at least `count` bytes for `slot`; contents undefined, valid until
    /// the next call for that slot. Call before a parallel region, not inside it.
    public func bytes(slot: Int, count: Int) -> UnsafeMutablePointer<UInt8> {
        if let (p, cap) = byteSlots[slot], cap >= count { return p.assumingMemoryBound(to: UInt8.self) }
        byteSlots[slot].map { $0.0.deallocate() }
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(64, count + 64), alignment: 64)
        byteSlots[slot] = (p, count)
        return p.bindMemory(to: UInt8.self, capacity: count + 64)
    }

    /// A buffer of at least `count` floats; contents are undefined. Valid until the next call.
    public func buffer(count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity || storage == nil {
            storage.map { UnsafeMutableRawPointer($0).deallocate() }
            let raw = UnsafeMutableRawPointer.allocate(byteCount: max(64, count * MemoryLayout<Float>.stride), alignment: 64)
            storage = raw.bindMemory(to: Float.self, capacity: max(count, 16))
            capacity = count
        }
        return storage!
    }
}
