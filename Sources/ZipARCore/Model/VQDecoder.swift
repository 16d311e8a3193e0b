import Foundation

/// LlamaGen's VQ tokenizer, decode path only (spec section 2): codes → codebook latent → post_quant_conv
/// → Decoder (conv_in, mid, conv_blocks lowest resolution first, norm_out, swish, conv_out) → image.
/// Batch 1, channel-first [C, H, W] activations. Properties are named after the checkpoint keys they hold.
///
/// Not thread-safe: decode reuses one workspace (im2col band + recycled activation buffers). Use one decoder per thread.
public final class VQDecoder {
    /// `decoder.*.res.i` / `decoder.mid.0|2`: h = conv1(swish(norm1(x))); out = skip(x) + conv2(swish(norm2(h))).
    public struct ResnetBlock {
        public let norm1: GroupNorm
        public let conv1: Conv2D
        public let norm2: GroupNorm
        public let conv2: Conv2D
        /// 1x1 conv on the skip path, present only when in ≠ out channels.
        public let nin_shortcut: Conv2D?

        /// x: [Cin, H, W] → [Cout, H, W]. Consumes x: when there is no shortcut conv the result is written into x.
        func callAsFunction(_ x: Tensor, _ ws: Workspace) -> Tensor {
            let hw = [x.shape[1], x.shape[2]]
            let hn = ws.take(x.shape)
            norm1.apply(x, swish: true, into: hn)
            let h = ws.take([conv1.outChannels] + hw)                      // [Cout, H, W]
            conv1.apply(hn, into: h, scratch: ws.conv)
            ws.give(hn)
            norm2.apply(h, swish: true, into: h)
            var out = x
            if let nin = nin_shortcut {
                out = ws.take([nin.outChannels] + hw)
                nin.apply(x, into: out, scratch: ws.conv)
                ws.give(x)
            }
            conv2.apply(h, into: out, accumulate: true, scratch: ws.conv)  // out = skip + conv2(...)
            ws.give(h)
            return out
        }
    }

    /// `decoder.*.attn.i` / `decoder.mid.1`: single-head self-attention over H·W, scale C^-0.5, residual.
    public struct AttnBlock {
        public let norm: GroupNorm
        public let q: Conv2D
        public let k: Conv2D
        public let v: Conv2D
        public let proj_out: Conv2D

        /// x: [C, H, W] → [C, H, W], written into x.
        func callAsFunction(_ x: Tensor, _ ws: Workspace) -> Tensor {
            let n = x.shape[1] * x.shape[2]
            let hn = ws.take(x.shape)
            norm.apply(x, swish: false, into: hn)
            let qt = ws.take(x.shape), kt = ws.take(x.shape), vt = ws.take(x.shape)  // [C, H, W] = [C, N] each
            q.apply(hn, into: qt, scratch: ws.conv)
            k.apply(hn, into: kt, scratch: ws.conv)
            v.apply(hn, into: vt, scratch: ws.conv)
            let scores = ws.take([n, n])
            NN.attention(q: qt, k: kt, v: vt, into: hn, scores: scores.data)  // hn is free again: reuse for the output
            proj_out.apply(hn, into: x, accumulate: true, scratch: ws.conv)    // x + proj_out(attn)
            for t in [hn, qt, kt, vt, scores] { ws.give(t) }
            return x
        }
    }

    /// `decoder.mid.{0,1,2}`: ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution.
    public struct MidBlock {
        public let res0: ResnetBlock  // mid.0
        public let attn1: AttnBlock   // mid.1
        public let res2: ResnetBlock  // mid.2
    }

    /// `decoder.conv_blocks.j`: num_res_blocks+1 ResnetBlocks, each followed by an AttnBlock in block 0 only,
    /// then (all but the last block) nearest x2 upsample + `upsample.conv`.
    public struct ConvBlock {
        public let res: [ResnetBlock]
        public let attn: [AttnBlock]
        public let upsample_conv: Conv2D?  // upsample.conv
    }

    public let config: VQConfig
    /// `quantize.embedding.weight` [codebook_size, codebook_embed_dim]; rows are not unit-norm.
    public let quantize_embedding: Tensor
    public let post_quant_conv: Conv2D  // 1x1, embed_dim → z_channels
    public let conv_in: Conv2D          // 3x3, z_channels → ch·ch_mult[-1]
    public let mid: MidBlock
    public let conv_blocks: [ConvBlock]
    public let norm_out: GroupNorm
    public let conv_out: Conv2D         // 3x3, ch·ch_mult[0] → 3

    /// Called with ("latent" | "post_quant_conv" | "conv_in" | "mid" | "conv_blocks.j" | "image", tensor [C, H, W])
    /// as decode passes each stage. The tensor may be overwritten later: copy what you keep.
    public var debugHook: ((String, Tensor) -> Void)?

    let ws = Workspace()
    /// Bound on the im2col band buffer of the 3x3 convolutions. 8 MB keeps the band in the L3 cache;
    /// measured at 256x256: im2col ~20 ms per conv at 2-8 MB vs ~45 ms at 32-64 MB, sgemm unchanged.
    public var convBandBytes: Int {
        get { ws.conv.budgetBytes }
        set { ws.conv.budgetBytes = newValue }
    }

    // MARK: - Parameters

    /// Every tensor the decode path needs, in checkpoint order, with the shape the config implies.
    /// The single source of truth for loading, shape checks and random init.
    public static func parameterShapes(config c: VQConfig) -> [(name: String, shape: [Int])] {
        var out: [(String, [Int])] = []
        func conv(_ p: String, _ cout: Int, _ cin: Int, _ k: Int) { out += [("\(p).weight", [cout, cin, k, k]), ("\(p).bias", [cout])] }
        func norm(_ p: String, _ ch: Int) { out += [("\(p).weight", [ch]), ("\(p).bias", [ch])] }
        func res(_ p: String, _ cin: Int, _ cout: Int) {
            norm("\(p).norm1", cin); conv("\(p).conv1", cout, cin, 3)
            norm("\(p).norm2", cout); conv("\(p).conv2", cout, cout, 3)
            if cin != cout { conv("\(p).nin_shortcut", cout, cin, 1) }
        }
        func attn(_ p: String, _ ch: Int) {
            norm("\(p).norm", ch)
            for m in ["q", "k", "v", "proj_out"] { conv("\(p).\(m)", ch, ch, 1) }
        }
        let mult = c.decoder_ch_mult, levels = mult.count
        var blockIn = c.ch * mult[levels - 1]
        conv("decoder.conv_in", blockIn, c.z_channels, 3)
        res("decoder.mid.0", blockIn, blockIn)
        attn("decoder.mid.1", blockIn)
        res("decoder.mid.2", blockIn, blockIn)
        for j in 0..<levels {
            let blockOut = c.ch * mult[levels - 1 - j]
            for i in 0...c.num_res_blocks {
                res("decoder.conv_blocks.\(j).res.\(i)", blockIn, blockOut)
                blockIn = blockOut
                if j == 0 { attn("decoder.conv_blocks.\(j).attn.\(i)", blockIn) }
            }
            if j != levels - 1 { conv("decoder.conv_blocks.\(j).upsample.conv", blockIn, blockIn, 3) }
        }
        norm("decoder.norm_out", blockIn)
        conv("decoder.conv_out", 3, blockIn, 3)
        out.append(("quantize.embedding.weight", [c.codebook_size, c.codebook_embed_dim]))
        conv("post_quant_conv", c.z_channels, c.codebook_embed_dim, 1)
        return out.map { (name: $0.0, shape: $0.1) }
    }

    /// Loads the decode path from a safetensors file. Every needed tensor's presence, dtype and shape is
    /// checked against the config before anything is read; other keys (encoder.*, quant_conv.*,
    /// quantize.codebook_used) are ignored.
    public convenience init(config: VQConfig, weights: SafeTensorsFile) throws {
        try config.validate()
        let specs = VQDecoder.parameterShapes(config: config)
        var problems: [String] = []
        // A conv stored as INT8 (`P.qweight` + scales, QuantFormat) replaces `P.weight`; it is checked when read.
        func isInt8Conv(_ name: String, _ shape: [Int]) -> Bool { shape.count == 4 && QuantFormat.isQuantized(weights, name) }
        for (name, shape) in specs where !isInt8Conv(name, shape) {
            guard let info = weights.tensors[name] else { problems.append("missing tensor '\(name)' (expected shape \(shape))"); continue }
            if info.shape != shape {
                problems.append("tensor '\(name)' has shape \(info.shape), the config needs \(shape)")
            } else if ![.F32, .F16, .BF16].contains(info.dtype) {
                problems.append("tensor '\(name)' is \(info.dtype), expected F32, F16 or BF16")
            }
        }
        if let first = problems.first {
            let more = problems.count > 1 ? " (and \(problems.count - 1) more problem\(problems.count > 2 ? "s" : ""))" : ""
            throw ZipARError("\(weights.path): VQ decoder weights do not match the config: \(first)\(more)")
        }
        var tensors: [String: Tensor] = [:]
        var quantized: [String: QuantizedConv] = [:]
        for (name, shape) in specs {
            if isInt8Conv(name, shape) {
                let q = try QuantFormat.loadConv(weights, name, shape: shape)
                quantized[QuantFormat.prefix(name)] = q
                tensors[name] = q.dequantizedWeight()
            } else {
                tensors[name] = try weights.tensor(name, shape: shape)
            }
        }
        self.init(config: config, tensors: tensors, quantized: quantized)
    }

    /// A decoder with deterministic pseudo-random weights of sensible scale (for timing at full size).
    /// Conv weights uniform with variance 1/fan_in, conv biases ±0.01, norms identity, codebook uniform ±1.
    public static func randomInit(config: VQConfig, seed: UInt64) -> VQDecoder {
        var rng = RNG(seed: seed)
        var tensors: [String: Tensor] = [:]
        for (name, shape) in parameterShapes(config: config) {
            let t = Tensor(shape: shape)
            let isNorm = shape.count == 1 && name.split(separator: ".").dropLast().last?.hasPrefix("norm") == true
            if isNorm {
                if name.hasSuffix(".weight") { t.fill(1) }  // bias stays 0
            } else {
                let bound: Float
                switch shape.count {
                case 4: bound = (3 / Float(shape[1] * shape[2] * shape[3])).squareRoot()
                case 1: bound = 0.01
                default: bound = 1
                }
                for i in 0..<t.count { t.data[i] = bound * (2 * Float(rng.nextUniform()) - 1) }
            }
            tensors[name] = t
        }
        return VQDecoder(config: config, tensors: tensors)
    }

    /// Builds the module tree from already-checked tensors (every key of parameterShapes present).
    private init(config c: VQConfig, tensors: [String: Tensor], quantized: [String: QuantizedConv] = [:]) {
        func t(_ name: String) -> Tensor {
            guard let x = tensors[name] else { preconditionFailure("internal: '\(name)' is not in parameterShapes") }
            return x
        }
        func conv(_ p: String) -> Conv2D { Conv2D(weight: t("\(p).weight"), bias: t("\(p).bias"), name: p, quantized: quantized[p]) }
        func norm(_ p: String) -> GroupNorm { GroupNorm(weight: t("\(p).weight"), bias: t("\(p).bias")) }
        func res(_ p: String) -> ResnetBlock {
            ResnetBlock(norm1: norm("\(p).norm1"), conv1: conv("\(p).conv1"), norm2: norm("\(p).norm2"), conv2: conv("\(p).conv2"),
                        nin_shortcut: tensors["\(p).nin_shortcut.weight"] == nil ? nil : conv("\(p).nin_shortcut"))
        }
        func attn(_ p: String) -> AttnBlock {
            AttnBlock(norm: norm("\(p).norm"), q: conv("\(p).q"), k: conv("\(p).k"), v: conv("\(p).v"), proj_out: conv("\(p).proj_out"))
        }
        config = c
        quantize_embedding = t("quantize.embedding.weight")
        post_quant_conv = conv("post_quant_conv")
        conv_in = conv("decoder.conv_in")
        mid = MidBlock(res0: res("decoder.mid.0"), attn1: attn("decoder.mid.1"), res2: res("decoder.mid.2"))
        let levels = c.decoder_ch_mult.count
        conv_blocks = (0..<levels).map { j in
            let p = "decoder.conv_blocks.\(j)"
            return ConvBlock(res: (0...c.num_res_blocks).map { res("\(p).res.\($0)") },
                             attn: j == 0 ? (0...c.num_res_blocks).map { attn("\(p).attn.\($0)") } : [],
                             upsample_conv: j == levels - 1 ? nil : conv("\(p).upsample.conv"))
        }
        norm_out = norm("decoder.norm_out")
        conv_out = conv("decoder.conv_out")
    }

    /// Every convolution, in execution order (post_quant_conv, conv_in, mid, conv_blocks, conv_out).
    public var convs: [Conv2D] {
        func res(_ r: ResnetBlock) -> [Conv2D] { [r.conv1] + (r.nin_shortcut.map { [$0] } ?? []) + [r.conv2] }
        func attn(_ a: AttnBlock) -> [Conv2D] { [a.q, a.k, a.v, a.proj_out] }
        var out = [post_quant_conv, conv_in] + res(mid.res0) + attn(mid.attn1) + res(mid.res2)
        for b in conv_blocks {
            for i in b.res.indices { out += res(b.res[i]); if !b.attn.isEmpty { out += attn(b.attn[i]) } }
            if let u = b.upsample_conv { out.append(u) }
        }
        return out + [conv_out]
    }

    /// Whether any convolution runs the INT8 path.
    public var isQuantized: Bool { convs.contains { $0.quantized != nil } }

    // MARK: - Forward

    /// Codebook lookup (`get_codebook_entry`): codes in raster order (y·W + x) → latent [embed_dim, H, W].
    /// With codebook_l2_norm each gathered row is divided by max(‖row‖₂, 1e-12).
    public func latent(codes: [Int], height: Int, width: Int) throws -> Tensor {
        // The upper bound only rules out Int overflow in the sizes below; memory runs out long before.
        guard height > 0, width > 0, height <= 1 << 15, width <= 1 << 15 else {
            throw ZipARError("VQ decode: grid \(height)x\(width) must be positive and at most 32768 per side")
        }
        guard codes.count == height * width else {
            throw ZipARError("VQ decode: got \(codes.count) codes for a \(height)x\(width) grid (need \(height * width))")
        }
        let k = config.codebook_size, d = config.codebook_embed_dim, n = codes.count
        let out = Tensor(shape: [d, height, width])
        for (i, code) in codes.enumerated() {
            guard code >= 0 && code < k else { throw ZipARError("VQ decode: code \(code) at position \(i) is outside the codebook [0, \(k))") }
            let row = quantize_embedding.data + code * d
            // F.normalize: row / max(‖row‖₂, eps); the division (not a reciprocal multiply) matches PyTorch.
            var norm: Float = 1
            if config.codebook_l2_norm {
                var sq: Float = 0
                for j in 0..<d { sq += row[j] * row[j] }
                norm = max(sq.squareRoot(), 1e-12)
            }
            // [H·W, D] → [D, H·W]: transpose while gathering.
            for j in 0..<d { out.data[j * n + i] = row[j] / norm }
        }
        return out
    }

    /// Codes [height·width] (raster order) → image [3, 16·height, 16·width] (for VQ-16), float, unclamped.
    public func decode(codes: [Int], height: Int, width: Int) throws -> Tensor {
        let z = try latent(codes: codes, height: height, width: width)
        debugHook?("latent", z)
        // Every intermediate comes from (and goes back to) the workspace pool: at 256x256 a fresh
        // 33 MB activation costs ~20 ms of page faults and zeroing, about 10% of the decode in all.
        defer { ws.releaseAll() }
        let hw0 = [height, width]
        var h = ws.take([post_quant_conv.outChannels] + hw0)  // [z_channels, H, W]
        post_quant_conv.apply(z, into: h, scratch: ws.conv)
        debugHook?("post_quant_conv", h)
        let hin = ws.take([conv_in.outChannels] + hw0)        // [ch·mult[-1], H, W]
        conv_in.apply(h, into: hin, scratch: ws.conv)
        ws.give(h)
        h = hin
        debugHook?("conv_in", h)
        h = mid.res0(h, ws)
        h = mid.attn1(h, ws)
        h = mid.res2(h, ws)
        debugHook?("mid", h)
        for (j, block) in conv_blocks.enumerated() {
            for i in block.res.indices {
                h = block.res[i](h, ws)
                if !block.attn.isEmpty { h = block.attn[i](h, ws) }
            }
            if let up = block.upsample_conv {
                let big = ws.take([h.shape[0], 2 * h.shape[1], 2 * h.shape[2]])  // [C, 2H, 2W]
                NN.upsampleNearest2x(h, into: big)
                ws.give(h)
                h = ws.take(big.shape)
                up.apply(big, into: h, scratch: ws.conv)
                ws.give(big)
            }
            debugHook?("conv_blocks.\(j)", h)
        }
        norm_out.apply(h, swish: true, into: h)
        // The image is returned to the caller, so it is a fresh tensor, not a pool buffer.
        let image = Tensor(shape: [conv_out.outChannels, h.shape[1], h.shape[2]])  // [3, H·2^(levels-1), W·2^(levels-1)]
        conv_out.apply(h, into: image, scratch: ws.conv)
        debugHook?("image", image)
        return image
    }

    /// image [3, H, W] (nominally in [-1, 1]) → HWC RGB bytes, as LlamaGen's evaluation path and app.py:
    /// clamp(127.5·x + 128, 0, 255), then truncate toward zero. NaN maps to 0.
    public static func toRGB8(_ image: Tensor) -> [UInt8] {
        precondition(image.shape.count == 3 && image.shape[0] == 3, "toRGB8 expects [3, H, W], got \(image.shape)")
        let hw = image.shape[1] * image.shape[2]
        var out = [UInt8](repeating: 0, count: 3 * hw)
        for c in 0..<3 {
            let plane = image.data + c * hw
            for i in 0..<hw {
                let v = 127.5 * plane[i] + 128
                out[3 * i + c] = v.isNaN ? 0 : UInt8(min(max(v, 0), 255))
            }
        }
        return out
    }

    // MARK: - Cost and timing

    /// Floating-point operations (2 per multiply-add) of one decode of a height x width grid:
    /// all convolutions plus the two attention products.
    public static func decodeFLOPs(config c: VQConfig, height: Int, width: Int) -> Double {
        var flops = 0.0
        var hw = Double(height * width)
        func conv(_ cout: Int, _ cin: Int, _ k: Int) { flops += 2 * Double(cout * cin * k * k) * hw }
        func res(_ cin: Int, _ cout: Int) { conv(cout, cin, 3); conv(cout, cout, 3); if cin != cout { conv(cout, cin, 1) } }
        func attn(_ ch: Int) { for _ in 0..<4 { conv(ch, ch, 1) }; flops += 2 * 2 * hw * hw * Double(ch) }
        let mult = c.decoder_ch_mult, levels = mult.count
        var ch = c.ch * mult[levels - 1]
        conv(c.z_channels, c.codebook_embed_dim, 1)
        conv(ch, c.z_channels, 3)
        res(ch, ch); attn(ch); res(ch, ch)
        for j in 0..<levels {
            let cout = c.ch * mult[levels - 1 - j]
            for _ in 0...c.num_res_blocks {
                res(ch, cout); ch = cout
                if j == 0 { attn(ch) }
            }
            if j != levels - 1 { hw *= 4; conv(ch, ch, 3) }
        }
        conv(3, ch, 3)
        return flops
    }

    /// Median wall time in seconds of `runs` decodes of a grid x grid code map with random weights
    /// (randomInit seed 0, random codes). Used by `zipar bench`. Weight generation is not timed.
    public static func benchmarkDecode(config: VQConfig, grid: Int, runs: Int, bandBytes: Int? = nil) -> Double {
        let dec = randomInit(config: config, seed: 0)
        if let bandBytes { dec.convBandBytes = bandBytes }
        var rng = RNG(seed: 1)
        let codes = (0..<grid * grid).map { _ in Int(rng.next() % UInt64(config.codebook_size)) }
        var times: [Double] = []
        for _ in 0..<max(1, runs) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try! dec.decode(codes: codes, height: grid, width: grid)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        times.sort()
        return times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2
    }
}

/// Decode scratch: the im2col band buffer and a pool of activation tensors recycled by shape.
/// Pool tensors have undefined contents (every user overwrites them fully).
final class Workspace {
    let conv = ConvScratch(budgetBytes: 8 << 20)
    private var free: [[Int]: [Tensor]] = [:]

    func take(_ shape: [Int]) -> Tensor {
        if let t = free[shape]?.popLast() { return t }
        return Tensor(shape: shape)
    }

    func give(_ t: Tensor) { free[t.shape, default: []].append(t) }

    /// Drops the pooled tensors so an idle decoder does not hold hundreds of MB.
    func releaseAll() { free.removeAll() }
}

