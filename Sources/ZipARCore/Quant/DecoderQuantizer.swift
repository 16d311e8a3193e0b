import CKernels
import Foundation

/// INT8 VQ decoder calibration (README "INT8 VQ decoder"; RepAPQ's MAE criterion, quant-spec 5).
///
/// Quantized: every convolution of the decoder except post_quant_conv (a 1x1 on the codebook latent,
/// 0.1% of the work) and the attention q/k/v/proj_out 1x1s; `keepFloat` names more to leave fp32.
/// Per conv, in execution order (across-block calibration):
///  1. the fp32 decoder's output of this conv on every calibration latent is the target;
///  2. its inputs come from the decoder with every earlier conv ALREADY quantized, so the chosen
///     parameters see (and can partly offset) the error propagated from the layers before;
///  3. weights: INT8 per output channel, clip ratio by least weight MAE (QuantizedConv.quantizeWeights);
///  4. input: UINT8 per tensor, range [r * min, r * max] of the inputs in 2, r from the shrink grid
///     1, 0.99, ... that gives the least MAE between the INT8 conv output and the target of 1.
public enum DecoderQuantizer {
    public struct Settings {
        /// Shrink ratios tried for the weights and for the activations (1 - 0.01 i, quant-spec 5.2: 80).
        public var candidates = 80
        /// Conv names (`decoder.conv_out`) kept fp32.
        public var keepFloat: Set<String> = []
        public init() {}
    }

    public struct LayerReport {
        public var name: String
        public var ratio: Float       // chosen activation shrink ratio
        public var mae: Double        // mean |int8 output - fp32-chain output| at that ratio
        public var meanAbsTarget: Double
    }

    /// The convs calibration quantizes, in execution order.
    public static func targets(_ dec: VQDecoder, keepFloat: Set<String> = []) -> [Conv2D] {
        let attn = Set(([dec.mid.attn1] + dec.conv_blocks.flatMap { $0.attn }).flatMap { [$0.q, $0.k, $0.v, $0.proj_out] }.map { ObjectIdentifier($0) })
        return dec.convs.filter { $0 !== dec.post_quant_conv && !attn.contains(ObjectIdentifier($0)) && !keepFloat.contains($0.name) && $0.inChannels % 4 == 0 }
    }

    /// Quantizes `dec` in place from calibration code grids (each height x width).
    public static func quantize(_ dec: VQDecoder, latents: [[Int]], height: Int, width: Int, settings: Settings = Settings(),
                                log: ((String) -> Void)? = nil) throws -> [LayerReport] {
        guard !latents.isEmpty else { throw ZipARError("decoder calibration needs at least one latent") }
        guard !dec.isQuantized else { throw ZipARError("the VQ decoder is already quantized") }
        let names = Set(dec.convs.map { $0.name })
        if let bad = settings.keepFloat.sorted().first(where: { !names.contains($0) }) {
            throw ZipARError("the VQ decoder has no convolution named '\(bad)' (names look like decoder.conv_out, decoder.mid.0.conv1)")
        }
        let convs = targets(dec, keepFloat: settings.keepFloat)
        let scratch = ConvScratch()
        var reports: [LayerReport] = []
        for (li, conv) in convs.enumerated() {
            // 1. fp32 targets: detach the INT8 convs for this run.
            let done = convs[..<li].map { $0.quantized }
            for c in convs[..<li] { c.quantized = nil }
            let xf = try capture(dec, conv, latents, height, width)
            for (c, q) in zip(convs[..<li], done) { c.quantized = q }
            let targets = xf.map { x -> Tensor in
                let y = Tensor(shape: [conv.outChannels, x.shape[1], x.shape[2]])
                conv.applyFloat(x, into: y, scratch: scratch)
                return y
            }
            // 2. inputs through the already-quantized layers.
            let xq = try capture(dec, conv, latents, height, width)
            // 3. weights.
            let (qw, ws) = QuantizedConv.quantizeWeights(conv.weight, candidates: settings.candidates)
            // 4. input range by output MAE.
            var lo = Float.infinity, hi = -Float.infinity
            for x in xq { for v in x.buffer { lo = min(lo, v); hi = max(hi, v) } }
            guard lo.isFinite, hi.isFinite else { throw ZipARError("calibration: non-finite input to \(conv.name)") }
            var best: (q: QuantizedConv, ratio: Float, mae: Double)? = nil
            let outs = targets.map { Tensor(shape: $0.shape) }
            let base = try QuantizedConv(outChannels: conv.outChannels, inChannels: conv.inChannels, kernel: conv.kernel,
                                         qweight: qw, wscales: ws, inputScale: 1, inputZero: 0)
            for i in 0..<settings.candidates {
                let r = 1 - 0.01 * Float(i)
                let (s, z) = QuantizedConv.activationCandidate(lo: lo, hi: hi, ratio: r)
                let q = try QuantizedConv(base, inputScale: s, inputZero: z)
                var err = 0.0, n = 0
                for (si, x) in xq.enumerated() {
                    q.apply(x, bias: conv.bias, into: outs[si], accumulate: false, scratch: scratch)
                    err += meanAbsDiff(outs[si], targets[si]) * Double(outs[si].count); n += outs[si].count
                }
                err /= Double(n)
                if best == nil || err < best!.mae { best = (q, r, err) }
            }
            conv.quantized = best!.q
            let mabs = targets.reduce(0.0) { $0 + meanAbsDiff($1, nil) * Double($1.count) } / Double(targets.reduce(0) { $0 + $1.count })
            reports.append(LayerReport(name: conv.name, ratio: best!.ratio, mae: best!.mae, meanAbsTarget: mabs))
            log?(String(format: "%2d/%d %@: activation clip %.2f, output MAE %.4g (mean |y| %.3g)", li + 1, convs.count, conv.name, best!.ratio, best!.mae, mabs))
        }
        return reports
    }

    /// Copies of the inputs `conv` sees while `dec` decodes each latent.
    static func capture(_ dec: VQDecoder, _ conv: Conv2D, _ latents: [[Int]], _ h: Int, _ w: Int) throws -> [Tensor] {
        var got: [Tensor] = []
        Conv2D.inputObserver = { c, x in if c === conv { got.append(x.reshaped(x.shape)) } }
        defer { Conv2D.inputObserver = nil }
        for codes in latents { _ = try dec.decode(codes: codes, height: h, width: w) }
        guard got.count == latents.count else { throw ZipARError("internal: \(conv.name) ran \(got.count) times for \(latents.count) latents") }
        return got
    }

    static func meanAbsDiff(_ a: Tensor, _ b: Tensor?) -> Double {
        ck_sum_abs_diff(a.data, b?.data, a.count) / Double(max(a.count, 1))
    }

    /// PSNR (dB) of an image against a reference, both [3, H, W] floats, on the 8-bit RGB both become;
    /// 100 for identical images (so means stay finite).
    public static func psnr(_ image: Tensor, reference: Tensor) -> Double {
        let a = VQDecoder.toRGB8(image), b = VQDecoder.toRGB8(reference)
        var se = 0.0
        for i in 0..<a.count { let d = Double(a[i]) - Double(b[i]); se += d * d }
        let mse = se / Double(a.count)
        return mse == 0 ? 100 : min(100, 10 * log10(255 * 255 / mse))
    }
}

extension DecoderQuantizer {
    public struct Comparison {
        public var psnrMean: Double, psnrMin: Double
        /// Median seconds per decode, fp32 and INT8, timed alternately in one run (noise hits both alike).
        public var fp32Seconds: Double, int8Seconds: Double
        public var speedup: Double { fp32Seconds / int8Seconds }
    }

    /// PSNR of `int8`'s images against `fp32`'s on each latent, and both decoders' median time on the
    /// first latent (after one warm-up each), over `runs` alternating decodes.
    public static func compare(fp32: VQDecoder, int8: VQDecoder, latents: [[Int]], height: Int, width: Int, runs: Int = 3) throws -> Comparison {
        var psnrs: [Double] = []
        for codes in latents {
            let a = try fp32.decode(codes: codes, height: height, width: width), b = try int8.decode(codes: codes, height: height, width: width)
            psnrs.append(psnr(b, reference: a))
        }
        var tf: [Double] = [], tq: [Double] = []
        for _ in 0..<max(1, runs) {
            for (dec, into) in [(fp32, 0), (int8, 1)] {
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try dec.decode(codes: latents[0], height: height, width: width)
                let t = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
                if into == 0 { tf.append(t) } else { tq.append(t) }
            }
        }
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
        return Comparison(psnrMean: psnrs.reduce(0, +) / Double(psnrs.count), psnrMin: psnrs.min() ?? 0,
                          fp32Seconds: median(tf), int8Seconds: median(tq))
    }
}
