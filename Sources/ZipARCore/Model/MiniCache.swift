import Foundation

/// MiniCache (Liu et al., NeurIPS 2024) on top of a quantized cache: from half depth on, each pair
/// of adjacent layers (l, l+1) stores one merged key/value direction per token and head (SLERP of the
/// two unit directions, t = 0.6) plus each layer's norm; the most distinct pairs (angular distance
/// in the top γ = 5% of the block's range, per head) also keep both originals. The merged
/// directions are quantized like a layer of the base cache (ZipCache splits them by the first
/// layer's scores); reading restores ‖x‖·e and overwrites the retained tokens.
/// No reference implementation exists (spec §2): t and γ follow the paper's reported settings.
struct MergedBlock {
    static let t: Float = 0.6
    static let gamma: Float = 0.05
    let count: Int, heads: Int, headDim: Int
    /// fp16 norms, [kv (0 keys, 1 values)][layer of the pair][head][token].
    var norms: [UInt16]
    /// Retained tokens per [kv][head]: block-local ids and both layers' originals (fp16, [id][2][headDim]).
    var retainedIds: [[UInt16]]
    var retained: [[UInt16]]

    init(count: Int, heads: Int, headDim: Int) {
        self.count = count; self.heads = heads; self.headDim = headDim
        norms = [UInt16](repeating: 0, count: 2 * 2 * heads * count)
        retainedIds = Array(repeating: [], count: 2 * heads)
        retained = Array(repeating: [], count: 2 * heads)
    }

    var bytes: Int { norms.count * 2 + retainedIds.reduce(0) { $0 + $1.count * 2 } + retained.reduce(0) { $0 + $1.count * 2 } }

    /// Merges rows [0, count) of layers a and c (fp16, [token][headDim] each, one head) in place:
    /// a's rows become the merged unit directions.
    mutating func merge(kv: Int, head: Int, a: UnsafeMutablePointer<UInt16>, c: UnsafePointer<UInt16>) {
        let hd = headDim, n = count
        var xa = [Float](repeating: 0, count: hd), xc = xa, e = xa
        var dist = [Float](repeating: 0, count: n)
        var originals = [UInt16](repeating: 0, count: n * 2 * hd)
        for t in 0..<n {
            for i in 0..<hd { xa[i] = Float(Float16(bitPattern: a[t * hd + i])); xc[i] = Float(Float16(bitPattern: c[t * hd + i])) }
            (originals.withUnsafeMutableBufferPointer { o in
                for i in 0..<hd { o[t * 2 * hd + i] = a[t * hd + i]; o[t * 2 * hd + hd + i] = c[t * hd + i] }
            })
            var na: Float = 0, nc: Float = 0, dot: Float = 0
            for i in 0..<hd { na += xa[i] * xa[i]; nc += xc[i] * xc[i] }
            na = na.squareRoot(); nc = nc.squareRoot()
            for i in 0..<hd { xa[i] = na > 0 ? xa[i] / na : 0; xc[i] = nc > 0 ? xc[i] / nc : 0; dot += xa[i] * xc[i] }
            let omega = acos(min(1, max(-1, dot)))
            if omega < 1e-4 || sin(omega) < 1e-6 {
                for i in 0..<hd { e[i] = (1 - Self.t) * xa[i] + Self.t * xc[i] }     // nearly parallel: LERP
            } else {
                let wa = sin((1 - Self.t) * omega) / sin(omega), wc = sin(Self.t * omega) / sin(omega)
                for i in 0..<hd { e[i] = wa * xa[i] + wc * xc[i] }
            }
            var ne: Float = 0
            for i in 0..<hd { ne += e[i] * e[i] }
            ne = ne.squareRoot()
            for i in 0..<hd { a[t * hd + i] = Float16(ne > 0 ? e[i] / ne : 0).bitPattern }
            norms[((kv * 2 + 0) * heads + head) * n + t] = Float16(na).bitPattern
            norms[((kv * 2 + 1) * heads + head) * n + t] = Float16(nc).bitPattern
            dist[t] = omega / .pi
        }
        // Retention: the pairs whose angular distance is in the top γ of the block's range.
        guard let lo = dist.min(), let hi = dist.max(), hi > lo else { return }
        let threshold = hi - Self.gamma * (hi - lo)
        for t in 0..<n where dist[t] >= threshold {
            retainedIds[kv * heads + head].append(UInt16(t))
            retained[kv * heads + head] += originals[(t * 2 * hd)..<((t + 1) * 2 * hd)]
        }
    }

    /// Restores rows [0, len) of one head of layer `second ? c : a` in place: ‖x‖·e, then the retained originals.
    func restore(kv: Int, second: Bool, head: Int, rows: UnsafeMutablePointer<Float>, len: Int) {
        let hd = headDim, base = ((kv * 2 + (second ? 1 : 0)) * heads + head) * count
        norms.withUnsafeBufferPointer { nrm in
            for t in 0..<len {
                let s = Float(Float16(bitPattern: nrm[base + t]))
                for i in 0..<hd { rows[t * hd + i] *= s }
            }
        }
        let ids = retainedIds[kv * heads + head], orig = retained[kv * heads + head]
        for (r, t) in ids.enumerated() where Int(t) < len {
            let o = r * 2 * hd + (second ? hd : 0)
            for i in 0..<hd { rows[Int(t) * hd + i] = Float(Float16(bitPattern: orig[o + i])) }
        }
    }
}
