import Foundation

/// Quantized Linear weights in a safetensors file (documented in README "Quantized weights").
/// A Linear stored as `P.weight` (float) may instead be stored, with P the name without ".weight", as
///   W4A8 (DGQ):  P.qweight U8 [n, k/2]  two 4-bit codes per byte, column 2c in the high nibble (DGQ's packW4W8)
///                P.wscales I8 [n, k/G]  integer group scale S >= 1
///                P.wzeros  I8 [n, k/G]  integer zero point z
///                P.wscales8 F32 [n]     row scale s8;   weight = s8 * S * (q - z), |S * (q - z)| <= 127
///                P.input_scale F32 [1]  optional static activation scale s_x (absent: per-token scales)
///   W8A8:        P.qweight I8 [n, k], P.wscales8 F32 [n];   weight = s8 * q
///   W1 (binarized, scheme "w1"): P.qweight U8 [n, k/8]  bit-packed signs: byte c of row j holds columns
///                8c..8c+7, bit t (LSB = 0) is 1 for +alpha_j, 0 for -alpha_j; k a multiple of 64
///                P.wscales8 F32 [n]     alpha_j > 0;    weight = alpha_j * (2 * bit - 1)
///                (told apart from W4 by the shape: k/8 bytes per row instead of k/2)
/// Schemes (WeightScheme): fp32, w8a8, w4a8-dgq, w1. One file may mix them per Linear (e.g. w1 blocks,
/// a w8a8 or float output head); embeddings and norms are always float (F32, F16 or BF16).
/// A VQ decoder convolution `P.weight` [out, in, k, k] may be stored as (INT8 VQ decoder):
///   P.qweight I8 [out, in, k, k], P.wscales8 F32 [out]   weight = wscales8[o] * q
///   P.input_scale F32 [1], P.input_zero U8 [1]           input  = input_scale * (u - input_zero), u in [0, 255]
public enum QuantFormat {
    /// The prefix of a `.weight` name.
    static func prefix(_ name: String) -> String { name.hasSuffix(".weight") ? String(name.dropLast(7)) : name }

    /// Whether the file stores this Linear quantized.
    public static func isQuantized(_ file: SafeTensorsFile, _ name: String) -> Bool { file.tensors[prefix(name) + ".qweight"] != nil }

    /// Loads a Linear [n, k] stored either as float `name` or in a quantized form.
    public static func loadLinear(_ file: SafeTensorsFile, _ name: String, shape: [Int]) throws -> Linear {
        let p = prefix(name)
        guard let qi = file.tensors[p + ".qweight"] else { return Linear(weight: try file.tensor(name, shape: shape)) }
        let n = shape[0], k = shape[1]
        func bad(_ why: String) -> ZipARError { ZipARError("\(file.path): quantized '\(p)': \(why)") }
        let s8t = try file.tensor(p + ".wscales8")
        guard s8t.shape == [n] else { throw bad("wscales8 has shape \(s8t.shape), expected [\(n)]") }
        let s8 = s8t.array
        guard s8.allSatisfy({ $0.isFinite }) else { throw bad("wscales8 holds a non-finite value") }
        switch qi.dtype {
        case .U8 where qi.shape.count == 2 && qi.shape[0] == n && qi.shape[1] * 8 == k:
            guard k % 64 == 0 else { throw bad("W1 sign bits need an input width that is a multiple of 64, got \(k)") }
            guard s8.allSatisfy({ $0 > 0 }) else { throw bad("W1 wscales8 (alpha) must be positive") }
            return Linear(quantized: QuantizedLinear(signBits: [UInt8](file.bytes(qi)), rows: n, cols: k, alphas: s8))
        case .U8:
            guard qi.shape == [n, k / 2], k % 8 == 0 else {
                throw bad("qweight U8 has shape \(qi.shape), expected [\(n), \(k / 2)] (W4, \(k) a multiple of 8) or [\(n), \(k / 8)] (W1, \(k) a multiple of 64)")
            }
            guard let si = file.tensors[p + ".wscales"], let zi = file.tensors[p + ".wzeros"], si.dtype == .I8, zi.dtype == .I8,
                  si.shape.count == 2, si.shape[0] == n, si.shape == zi.shape else {
                throw bad("W4 weights need wscales and wzeros, I8 [\(n), groups]")
            }
            let ng = si.shape[1]
            guard ng > 0, k % ng == 0, (k / ng) % 8 == 0 else { throw bad("\(ng) groups do not split \(k) columns into multiples of 8") }
            let S = try file.ints(p + ".wscales").map { Int8($0) }, Z = try file.ints(p + ".wzeros").map { Int8($0) }
            guard S.allSatisfy({ $0 >= 1 }) else { throw bad("wscales must be >= 1") }
            let packed = [UInt8](file.bytes(qi))
            let w: DGQWeight
            do { w = try DGQWeight(rows: n, cols: k, packedOfficial: packed, scales: S, zeros: Z, rowScales: s8) }
            catch let e as ZipARError { throw bad(e.message) }
            var sx: Float? = nil
            if file.tensors[p + ".input_scale"] != nil {
                let t = try file.tensor(p + ".input_scale")
                guard t.count == 1, t[0] > 0, t[0].isFinite else { throw bad("input_scale must be one positive number") }
                sx = t[0]
            }
            return Linear(quantized: QuantizedLinear(dgq: w, inputScale: sx))
        case .I8:
            guard qi.shape == [n, k], k % 4 == 0 else { throw bad("qweight I8 has shape \(qi.shape), expected [\(n), \(k)] with \(k) a multiple of 4") }
            let q = file.bytes(qi).map { Int8(bitPattern: $0) }
            return Linear(quantized: QuantizedLinear(int8: q, rows: n, cols: k, rowScales: s8))
        default:
            throw bad("qweight is \(qi.dtype); expected U8 (W4A8 or W1) or I8 (W8A8)")
        }
    }

    /// Loads an INT8 decoder convolution `name` (= P.weight) of the given [out, in, k, k] shape.
    public static func loadConv(_ file: SafeTensorsFile, _ name: String, shape: [Int]) throws -> QuantizedConv {
        let p = prefix(name)
        func bad(_ why: String) -> ZipARError { ZipARError("\(file.path): INT8 convolution '\(p)': \(why)") }
        func need(_ suffix: String, _ dtype: DType, _ shape: [Int]) throws -> TensorInfo {
            guard let t = file.tensors[p + suffix] else { throw bad("missing \(p + suffix) (\(dtype) \(shape))") }
            guard t.dtype == dtype, t.shape == shape else { throw bad("\(p + suffix) is \(t.dtype) \(t.shape), expected \(dtype) \(shape)") }
            return t
        }
        let qi = try need(".qweight", .I8, shape)
        _ = try need(".wscales8", .F32, [shape[0]])
        _ = try need(".input_scale", .F32, [1])
        _ = try need(".input_zero", .U8, [1])
        let q = file.bytes(qi).map { Int8(bitPattern: $0) }
        do {
            return try QuantizedConv(outChannels: shape[0], inChannels: shape[1], kernel: shape[2], qweight: q,
                                     wscales: try file.tensor(p + ".wscales8").array, inputScale: try file.tensor(p + ".input_scale")[0],
                                     inputZero: try file.ints(p + ".input_zero")[0])
        } catch let e as ZipARError { throw bad(e.message) }
    }

    /// The VQ file's tensors in order, each quantized conv's `P.weight` replaced by its INT8 tensors.
    public static func decoderEntries(_ dec: VQDecoder, original file: SafeTensorsFile) -> [SafeTensorsWriter.Entry] {
        var int8: [String: QuantizedConv] = [:]
        for c in dec.convs { if let q = c.quantized { int8[c.name + ".weight"] = q } }
        var out: [SafeTensorsWriter.Entry] = []
        for info in file.tensors.values.sorted(by: { $0.begin < $1.begin }) {
            guard let q = int8[info.name] else {
                out.append(SafeTensorsWriter.Entry(name: info.name, dtype: info.dtype, shape: info.shape, bytes: Data(file.bytes(info))))
                continue
            }
            let p = prefix(info.name)
            out.append(SafeTensorsWriter.Entry(name: p + ".qweight", dtype: .I8, shape: info.shape, bytes: q.qweight.withUnsafeBytes { Data($0) }))
            out.append(SafeTensorsWriter.Entry(name: p + ".wscales8", dtype: .F32, shape: [q.outChannels], bytes: q.wscales.withUnsafeBytes { Data($0) }))
            out.append(SafeTensorsWriter.Entry(name: p + ".input_scale", dtype: .F32, shape: [1], bytes: [q.inputScale].withUnsafeBytes { Data($0) }))
            out.append(SafeTensorsWriter.Entry(name: p + ".input_zero", dtype: .U8, shape: [1], bytes: Data([UInt8(q.inputZero)])))
        }
        return out
    }

    /// The safetensors entries of a Linear named `name` (`P.weight` for fp32, the tensors above otherwise).
    public static func entries(_ lin: Linear, name: String) -> [SafeTensorsWriter.Entry] {
        guard let q = lin.quantized else { return [.f32(name, lin.weight!)] }
        let p = prefix(name), n = q.outFeatures, k = q.inFeatures
        func f32(_ suffix: String, _ v: [Float]) -> SafeTensorsWriter.Entry {
            SafeTensorsWriter.Entry(name: p + suffix, dtype: .F32, shape: [v.count], bytes: v.withUnsafeBytes { Data($0) })
        }
        func i8(_ suffix: String, _ v: [Int8], _ shape: [Int]) -> SafeTensorsWriter.Entry {
            SafeTensorsWriter.Entry(name: p + suffix, dtype: .I8, shape: shape, bytes: v.withUnsafeBytes { Data($0) })
        }
        switch q.scheme {
        case .w4a8dgq:
            let w = q.dgqWeight!
            var out = [SafeTensorsWriter.Entry(name: p + ".qweight", dtype: .U8, shape: [n, k / 2], bytes: Data(w.packedOfficial())),
                       i8(".wscales", w.scales, [n, w.groups]), i8(".wzeros", w.zeros, [n, w.groups]), f32(".wscales8", w.rowScales)]
            if let sx = q.inputScale { out.append(f32(".input_scale", [sx])) }
            return out
        case .w1:
            var bits = Data(capacity: n * k / 8)
            for j in 0..<n { bits.append(contentsOf: q.signBits(j)) }
            return [SafeTensorsWriter.Entry(name: p + ".qweight", dtype: .U8, shape: [n, k / 8], bytes: bits), f32(".wscales8", q.rowScales)]
        default:
            let v = (0..<(n * k)).map { Int8(q.w8($0 / k, $0 % k)) }
            return [i8(".qweight", v, [n, k]), f32(".wscales8", q.rowScales)]
        }
    }

    /// The tensors of the original file in order; quantized Linears replaced, norms taken from memory
    /// (smoothing rescales them), everything else copied byte for byte.
    public static func modelEntries(_ gpt: GPT, original file: SafeTensorsFile) throws -> [SafeTensorsWriter.Entry] {
        var linears: [String: Linear] = ["output.weight": gpt.output]
        var norms: [String: Tensor] = [:]
        for (i, l) in gpt.layers.enumerated() {
            let p = "layers.\(i)."
            linears[p + "attention.wqkv.weight"] = l.wqkv; linears[p + "attention.wo.weight"] = l.wo
            linears[p + "feed_forward.w1.weight"] = l.w1; linears[p + "feed_forward.w2.weight"] = l.w2; linears[p + "feed_forward.w3.weight"] = l.w3
            norms[p + "attention_norm.weight"] = l.attention_norm; norms[p + "ffn_norm.weight"] = l.ffn_norm
        }
        var out: [SafeTensorsWriter.Entry] = []
        for info in file.tensors.values.sorted(by: { $0.begin < $1.begin }) {
            if let lin = linears[info.name], lin.quantized != nil { out += entries(lin, name: info.name) }
            else if let t = norms[info.name] { out.append(.f32(info.name, t)) }
            else { out.append(SafeTensorsWriter.Entry(name: info.name, dtype: info.dtype, shape: info.shape, bytes: Data(file.bytes(info)))) }
        }
        return out
    }
}
