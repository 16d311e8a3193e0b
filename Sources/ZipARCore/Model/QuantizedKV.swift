import CKernels
import Foundation

/// Block-quantized KV storage (int8, KIVI, ZipCache). The condition prefix (slots below
/// `prefixSlots`) is a block of its own, as the official ZipCache quantizes the prompt at prefill
/// apart from the generated tokens; the image slots after it are cut into fixed blocks.
/// New keys/values go into an fp16 "recent" buffer (slots >= recentStart). Once every slot of the
/// oldest open block is final (ZipAR proxies overwritten by their real token), the block is
/// quantized once, for all batch entries, layers and heads, and leaves the recent buffer; it is
/// never re-quantized. Attention reads sealed blocks by dequantizing one block of one head into a
/// per-worker scratch buffer, and the recent buffer as fp16.
///
/// Per head and block, the codes of each token set are stored packed along head_dim (planar, as
/// the official ZipCache packing). Parameters are fp16:
/// - keys channel-wise (KIVI, ZipCache): min and step per channel and set;
/// - keys token-wise (int8): min and step per token;
/// - values token-wise (int8, KIVI): min and step per token and group of channels;
/// - values CST (ZipCache): a channel scale per channel, and min/step per token shared by all heads
///   (the token's row spans all kvHeads*head_dim channels, as in the official code).
/// ZipCache's split is head-agnostic (one score per token: the normalised score summed over heads),
/// so a CST row is one real token (quant-spec 1.6).
final class QuantizedKV: KVStorage {
    enum KeyMode { case channel, token(group: Int) }
    enum ValueMode { case token(group: Int), cst }

    /// Fixed slot range of a block.
    struct Block { var start = 0, count = 0 }

    /// Where the parts of one sealed (batch entry, layer, block) lie in its buffer. Per head:
    /// key codes of each set, value codes of each set, key parameters, value parameters (fp16);
    /// after the heads: CST row parameters shared by the heads, then the token ids (set order,
    /// evicted tokens last) when the order is not the identity.
    struct Layout {
        var setRows: [Int] = [], setBits: [Int] = []
        var evicted = 0
        /// Every key of the block is exactly zero (the condition prefix: LlamaGen rotates it by a zero
        /// angle): no key codes or parameters are stored, and its scores are 0.
        var zeroKeys = false
        var keyCode: [Int] = [], valueCode: [Int] = []     // byte offsets within a head
        var keyParam = 0, valueParam = 0                      // byte offsets within a head
        var headBytes = 0
        var shared = 0, ids = 0, bytes = 0                    // byte offsets within the buffer, total size
        var kept: Int { setRows.reduce(0, +) }
    }

    /// One sealed (batch entry, layer, block).
    struct Sealed {
        var layout = Layout()
        var data: UnsafeMutableRawPointer? = nil
        var hasIds = false
        func codes(_ head: Int) -> UnsafeMutablePointer<UInt8> { (data! + head * layout.headBytes).assumingMemoryBound(to: UInt8.self) }
        func halves(_ byteOffset: Int) -> UnsafeMutablePointer<UInt16> { (data! + byteOffset).assumingMemoryBound(to: UInt16.self) }
        var ids: UnsafeMutablePointer<UInt16>? { hasIds ? halves(layout.ids) : nil }
    }

    let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    let kind: KVCacheKind
    let baseBits: [Int]
    let keyMode: KeyMode, valueMode: ValueMode
    let blockSize: Int
    let zip: Bool
    /// ZipVL: per layer and block, keep the fewest tokens covering tau of the normalised attention; evict the rest.
    let zipvlTau: Double?
    /// Attention scores are tracked (ZipCache or ZipVL).
    let scored: Bool
    /// MiniCache: first merged layer (half depth), nil = off.
    let mergeFrom: Int?
    /// MiniCache data of each merged (b, first layer of the pair, block).
    private(set) var merged: [MergedBlock?]
    let options: KVCacheOptions
    let blocks: [Block]

    /// Sealed blocks, [b][layer][block]; a block's buffer is allocated when it is sealed.
    private(set) var sealed: [Sealed]
    private(set) var sealedBytes = 0
    let identity: UnsafeMutablePointer<UInt16>

    // Recent buffer: [b][layer][head][cap][headDim] fp16 keys and values (+ attention sums).
    private(set) var cap: Int
    var recentK: UnsafeMutablePointer<UInt16>
    var recentV: UnsafeMutablePointer<UInt16>
    var acc: UnsafeMutablePointer<Float>           // [b][layer][head][cap]: attention received
    let counts: UnsafeMutablePointer<Int32>        // [b][slot]: queries that could see the slot
    private(set) var recentStart = 0
    private(set) var recentHigh = 0                // 1 + the highest slot stored
    private(set) var sealedBlocks = 0
    /// ZipVL: tokens kept and tokens sealed, per layer (over every image since the cache was made).
    private(set) var keptPerLayer: [Int], seenPerLayer: [Int]

    /// Attention reads sealed blocks straight from their codes (kvkernels.c) where that is the fast path
    /// (AVX-512, head_dim 64; MiniCache-merged blocks still go through the scratch buffer): channel-wise
    /// keys, and token-wise keys with one group per row (int8). ZIPAR_KV_FUSED=0 turns it off, for comparisons.
    var fused: Bool { Self.fusedAllowed && ck_kv_fused_fast(Int32(headDim)) != 0 }
    var keysOnCodes: Bool {
        switch keyMode {
        case .channel: return true
        case .token(let g): return g == headDim
        }
    }
    static let fusedAllowed = ProcessInfo.processInfo.environment["ZIPAR_KV_FUSED"] != "0"

    // Scratch: one block of one head per worker, and the sealing buffers.
    let workers: Int
    let scratch: UnsafeMutablePointer<Float>
    let sealRows: UnsafeMutablePointer<Float>      // [block][headDim] one head's rows (slot order)
    let sealSet: UnsafeMutablePointer<Float>       // [block][headDim] gathered rows of a set
    let sealAll: UnsafeMutablePointer<Float>       // [block][C] CST values of all heads
    let sealCodes: UnsafeMutablePointer<UInt8>     // [block][max(C, headDim)]
    let sealMin: UnsafeMutablePointer<Float>, sealStep: UnsafeMutablePointer<Float>
    var sealScores: [Float]

    init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, prefixSlots: Int, gridWidth: Int = 0, kind: KVCacheKind,
         options: KVCacheOptions) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        self.kind = kind; self.options = options
        let hd = headDim, C = kvHeads * headDim
        precondition(hd % 4 == 0 && hd <= 512, "quantized KV caches need head_dim divisible by 4 and <= 512")
        // KIVI groups 32 channels; head_dim 100 (GPT-3B) is not a multiple, so a whole head row is one group there.
        let g = hd % options.kiviGroup == 0 ? options.kiviGroup : hd
        let prefix = min(max(prefixSlots, 0), slots)
        switch kind {
        case .int8: baseBits = [8]; keyMode = .token(group: hd); valueMode = .token(group: hd); blockSize = options.kiviGroup
        case .kivi2: baseBits = [2]; keyMode = .channel; valueMode = .token(group: g); blockSize = options.kiviGroup
        case .kivi4: baseBits = [4]; keyMode = .channel; valueMode = .token(group: g); blockSize = options.kiviGroup
        case .zipcache:
            baseBits = [ZipCache.salientBits, ZipCache.regularBits]; keyMode = .channel; valueMode = .cst
            blockSize = options.zipBlock ?? ZipCache.rowBlock(width: gridWidth, imageSlots: slots - prefix)
        case .fp32, .fp16: preconditionFailure("dense caches are DenseKV")
        }
        zip = kind == .zipcache
        zipvlTau = options.zipvlTau
        scored = zip || zipvlTau != nil
        mergeFrom = options.miniCache && layers >= 2 ? layers / 2 : nil
        // The prefix's keys are exactly zero (LlamaGen gives the condition tokens no RoPE angle, so
        // rotation zeroes them). Alone in a block they are stored as such (a zero-key block, no key
        // codes); sharing a block with image keys they would round to a level of the image keys'
        // range and every query would weigh the caption rows unevenly.
        var list: [Block] = []
        var start = 0
        while start < slots {
            let end = start < prefix ? min(start + blockSize, prefix) : min(start + blockSize, slots)
            list.append(Block(start: start, count: end - start))
            start = end
        }
        blocks = list
        sealed = Array(repeating: Sealed(), count: batch * layers * list.count)
        merged = Array(repeating: nil, count: batch * layers * list.count)
        let heads = batch * layers * kvHeads
        identity = .allocate(capacity: blockSize)
        for i in 0..<blockSize { identity[i] = UInt16(i) }
        cap = blockSize + 64
        recentK = .allocate(capacity: heads * cap * hd); recentK.initialize(repeating: 0, count: heads * cap * hd)
        recentV = .allocate(capacity: heads * cap * hd); recentV.initialize(repeating: 0, count: heads * cap * hd)
        acc = .allocate(capacity: scored ? heads * cap : 1); acc.initialize(repeating: 0, count: scored ? heads * cap : 1)
        counts = .allocate(capacity: scored ? batch * slots : 1); counts.initialize(repeating: 0, count: scored ? batch * slots : 1)
        keptPerLayer = Array(repeating: 0, count: layers); seenPerLayer = keptPerLayer
        workers = max(1, Parallel.threads)
        scratch = .allocate(capacity: workers * blockSize * hd)
        sealRows = .allocate(capacity: blockSize * hd)
        sealSet = .allocate(capacity: blockSize * hd)
        sealAll = .allocate(capacity: zip ? blockSize * C : 1)
        sealCodes = .allocate(capacity: blockSize * max(C, hd))
        sealMin = .allocate(capacity: blockSize * max(C, hd)); sealStep = .allocate(capacity: blockSize * max(C, hd))
        sealScores = [Float](repeating: 0, count: blockSize)
    }

    deinit {
        for s in sealed { s.data?.deallocate() }
        identity.deallocate()
        recentK.deallocate(); recentV.deallocate(); acc.deallocate(); counts.deallocate()
        scratch.deallocate(); sealRows.deallocate(); sealSet.deallocate(); sealAll.deallocate()
        sealCodes.deallocate(); sealMin.deallocate(); sealStep.deallocate()
    }

    /// The byte layout of a block with these set sizes (the last `evicted` tokens have no storage).
    func layout(setRows: [Int], evicted: Int, ids: Bool, zeroKeys: Bool = false) -> Layout {
        var l = Layout()
        l.setRows = setRows; l.setBits = baseBits; l.evicted = evicted; l.zeroKeys = zeroKeys
        let hd = headDim, n = setRows.reduce(0, +)
        var o = 0
        for (s, rows) in setRows.enumerated() { l.keyCode.append(o); o += zeroKeys ? 0 : rows * KVQuant.packedBytes(bits: baseBits[s], d: hd) }
        for (s, rows) in setRows.enumerated() { l.valueCode.append(o); o += rows * KVQuant.packedBytes(bits: baseBits[s], d: hd) }
        o = (o + 1) & ~1                                  // halves are 2-byte aligned
        l.keyParam = o
        switch keyMode {
        case _ where zeroKeys: break
        case .channel: o += setRows.count * 2 * hd * 2
        case .token(let g): o += n * 2 * (hd / g) * 2
        }
        l.valueParam = o
        switch valueMode {
        case .token(let g): o += n * 2 * (hd / g) * 2
        case .cst: o += hd * 2
        }
        l.headBytes = o
        l.shared = kvHeads * o
        if case .cst = valueMode { l.ids = l.shared + n * 2 * 2 } else { l.ids = l.shared }
        l.bytes = l.ids + (ids ? (n + evicted) * 2 : 0)
        return l
    }

    /// The sealed storage of (b, layer, block k).
    func sealedBlock(_ b: Int, _ layer: Int, _ k: Int) -> Sealed { sealed[(b * layers + layer) * blocks.count + k] }

    /// MiniCache pairing: (first layer of the pair, whether `layer` is the second), nil when unmerged.
    func pair(_ layer: Int) -> (first: Int, second: Bool)? {
        guard let m = mergeFrom, layer >= m else { return nil }
        let first = layer - (layer - m) % 2
        return first + 1 < layers ? (first, layer != first) : nil
    }

    // MARK: sizes

    var heads: Int { batch * layers * kvHeads }
    /// Bytes of the recent buffer and the saliency state.
    var recentBytes: Int { heads * cap * headDim * 2 * 2 + (scored ? heads * cap * 4 + batch * slots * 4 : 0) }
    var bytes: Int { sealedBytes + recentBytes }
    /// Bits per element of the sealed blocks (evicted tokens count as stored slots with 0 bits).
    var formatBitsPerValue: Double {
        let sealedSlots = blocks.prefix(sealedBlocks).reduce(0) { $0 + $1.count }
        guard sealedSlots > 0 else { return 0 }
        return Double(sealedBytes) * 8 / Double(sealedSlots * 2 * batch * layers * kvHeads * headDim)
    }

    @inline(__always) func headIndex(_ b: Int, _ layer: Int, _ head: Int) -> Int { (b * layers + layer) * kvHeads + head }

    // MARK: writes

    func store(_ b: Int, _ layer: Int, _ head: Int, slot: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        precondition(slot >= recentStart, "KV cache: slot \(slot) rewritten after its block was compressed (a slot must be final before sealing)")
        let i = slot - recentStart
        if i >= cap { grow(to: i + 1) }
        recentHigh = max(recentHigh, slot + 1)
        let o = (headIndex(b, layer, head) * cap + i) * headDim
        ck_f32_to_f16(key, recentK + o, Int32(headDim))
        ck_f32_to_f16(value, recentV + o, Int32(headDim))
    }

    /// Enlarges the recent buffer (rare: only while the first image shows how far ahead of the
    /// oldest open block the schedule writes). It grows to what is needed, rounded up to 16 slots,
    /// and by at least 1/8: the buffer is the fp16 part of the cache, and a ZipAR image needs it only
    /// a few rows larger than a block, so a 1.5x step would leave most of a step unused at the peak,
    /// while the 1/8 floor keeps a caller that writes far ahead slot by slot from copying it per slot.
    private func grow(to need: Int) {
        let newCap = max((need + 15) & ~15, cap + cap / 8), hd = headDim, used = min(cap, recentHigh - recentStart)
        func moved<T>(_ old: UnsafeMutablePointer<T>, width: Int, zero: T) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutablePointer<T>.allocate(capacity: heads * newCap * width)
            p.initialize(repeating: zero, count: heads * newCap * width)
            for h in 0..<heads where used > 0 { (p + h * newCap * width).update(from: old + h * cap * width, count: used * width) }
            old.deallocate()
            return p
        }
        recentK = moved(recentK, width: hd, zero: 0)
        recentV = moved(recentV, width: hd, zero: 0)
        if scored { acc = moved(acc, width: 1, zero: 0) }
        cap = newCap
    }

    func beginPass(positions: [Int], batchOf: [Int], masks: UnsafePointer<UInt8>, slots S: Int) {
        guard scored else { return }
        // ZipAR: the number of queries that saw a slot is counted, never derived from L - i.
        for (r, p) in positions.enumerated() where p >= recentStart {
            let m = masks + r * S, c = counts + batchOf[r] * slots
            for j in recentStart...p where m[j] != 0 { c[j] += 1 }
        }
    }

    // MARK: attention

    /// ZipCache's probe approximation: every 10th query slot is a probe.
    @inline(__always) static func isProbe(_ slot: Int32) -> Bool { slot % 10 == 9 }

    func attend(_ b: Int, _ layer: Int, _ head: Int, q: UnsafePointer<Float>, nq: Int, n: Int, masks: UnsafePointer<UInt8>,
                maskOffsets: UnsafePointer<Int32>, querySlots: UnsafePointer<Int32>, scale: Float, sab: Bool,
                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, worker: Int) {
        precondition(worker < workers, "more attention workers than the cache was made for")
        let hd = headDim, hi = headIndex(b, layer, head)
        let buf = scratch + worker * blockSize * hd
        let rk = recentK + hi * cap * hd, rv = recentV + hi * cap * hd
        let nRecent = max(0, n - recentStart)
        let fused = self.fused, fusedKeys = fused && keysOnCodes
        // Scores: sealed blocks one at a time (on their codes, or through the scratch buffer), then the fp16 recent slots.
        let pr = pair(layer), storedLayer = pr?.first ?? layer
        for k in 0..<sealedBlocks {
            let blk = blocks[k]
            guard blk.start < n else { break }
            let len = min(blk.count, n - blk.start)
            let sb = sealedBlock(b, storedLayer, k)
            let mergedBlock = pr.flatMap { merged[(b * layers + $0.first) * blocks.count + k] }
            if fusedKeys && mergedBlock == nil {
                attendKeyCodes(sb, head, q: q, nq: nq, len: len, scores: scores + blk.start, ld: n)
            } else {
                dequantKeys(sb, head, into: buf)
                if let pr, let mergedBlock { mergedBlock.restore(kv: 0, second: pr.second, head: head, rows: buf, len: len) }
                ck_attn_scores(q, Int32(nq), Int32(hd), buf, Int32(len), scores + blk.start, Int32(n))
            }
            // ZipVL: evicted tokens are not attended (sparse attention).
            if sb.layout.evicted > 0, let ids = sb.ids {
                for e in sb.layout.kept..<(sb.layout.kept + sb.layout.evicted) where Int(ids[e]) < len {
                    for i in 0..<nq { scores[i * n + blk.start + Int(ids[e])] = -.infinity }
                }
            }
        }
        if nRecent > 0 { ck_attn_scores_f16(q, Int32(nq), Int32(hd), rk, Int32(nRecent), scores + recentStart, Int32(n)) }
        ck_softmax_rows(masks, maskOffsets, Int32(nq), Int32(n), scale, sab ? 1 : 0, scores)
        // Saliency: attention received by each open slot (sealed slots are already split).
        if scored && nRecent > 0 {
            let a = acc + hi * cap
            for i in 0..<nq where options.zipScore == .exact || Self.isProbe(querySlots[i]) {
                let p = scores + i * n + recentStart
                for j in 0..<nRecent { a[j] += p[j] }
            }
        }
        out.update(repeating: 0, count: nq * hd)
        for k in 0..<sealedBlocks {
            let blk = blocks[k]
            guard blk.start < n else { break }
            let len = min(blk.count, n - blk.start)
            let sb = sealedBlock(b, storedLayer, k)
            let mergedBlock = pr.flatMap { merged[(b * layers + $0.first) * blocks.count + k] }
            if fused && mergedBlock == nil {
                attendValueCodes(sb, head, p: scores + blk.start, nq: nq, ldp: n, len: len, out: out)
                continue
            }
            dequantValues(sb, head, into: buf)
            if let pr, let mergedBlock { mergedBlock.restore(kv: 1, second: pr.second, head: head, rows: buf, len: len) }
            // Evicted rows of the scratch hold stale values, but their probabilities are 0 (skipped).
            for i in 0..<nq { ck_weighted_rows_acc(scores + i * n + blk.start, buf, Int32(len), Int32(hd), out + i * hd) }
        }
        if nRecent > 0 {
            for i in 0..<nq { ck_weighted_rows_acc_f16(scores + i * n + recentStart, rv, Int32(nRecent), Int32(hd), out + i * hd) }
        }
    }

    /// One code set of one head of a sealed block: its packed codes, bit width, row count and the ids of its rows.
    struct CodeSet { let codes: UnsafePointer<UInt8>, bits: Int32, rows: Int32, ids: UnsafePointer<UInt16> }

    /// The key code sets of one head of a sealed block, each with its parameters: channel-wise, mins [hd] then
    /// steps [hd]; token-wise (int8), per row hd/g mins then hd/g steps.
    private func keySets(_ sb: Sealed, _ head: Int, _ body: (CodeSet, _ params: UnsafePointer<UInt16>) -> Void) {
        let L = sb.layout, hd = headDim
        guard !L.zeroKeys else { return }
        let c = sb.codes(head), p = sb.halves(head * L.headBytes + L.keyParam)
        let idBase = sb.ids ?? identity
        var row0 = 0
        for (s, rows) in L.setRows.enumerated() where rows > 0 {
            let set = CodeSet(codes: c + L.keyCode[s], bits: Int32(L.setBits[s]), rows: Int32(rows), ids: idBase + row0)
            switch keyMode {
            case .channel: body(set, p + s * 2 * hd)
            case .token(let g): body(set, p + row0 * 2 * (hd / g))
            }
            row0 += rows
        }
    }

    /// The value code sets of one head of a sealed block, as the token-wise kernels take them: group, per-row
    /// parameters and their stride, and the CST channel scale (nil for KIVI and int8).
    private func valueSets(_ sb: Sealed, _ head: Int,
                           _ body: (CodeSet, _ group: Int32, _ params: UnsafePointer<UInt16>, _ stride: Int32, _ chanScale: UnsafePointer<UInt16>?) -> Void) {
        let L = sb.layout, hd = headDim
        let c = sb.codes(head), p = sb.halves(head * L.headBytes + L.valueParam)
        let idBase = sb.ids ?? identity
        var row0 = 0
        for (s, rows) in L.setRows.enumerated() where rows > 0 {
            let set = CodeSet(codes: c + L.valueCode[s], bits: Int32(L.setBits[s]), rows: Int32(rows), ids: idBase + row0)
            switch valueMode {
            case .token(let g): body(set, Int32(g), p + row0 * 2 * (hd / g), Int32(2 * (hd / g)), nil)
            case .cst: body(set, Int32(hd), sb.halves(L.shared) + row0 * 2, 2, p)
            }
            row0 += rows
        }
    }

    /// Scores of the nq queries against the kept rows of a sealed block, computed on the codes:
    /// scores[i * ld + slot - block start] for the block's slots below len.
    private func attendKeyCodes(_ sb: Sealed, _ head: Int, q: UnsafePointer<Float>, nq: Int, len: Int,
                                scores: UnsafeMutablePointer<Float>, ld: Int) {
        let hd = Int32(headDim)
        if sb.layout.zeroKeys {
            for i in 0..<nq { (scores + i * ld).update(repeating: 0, count: len) }
            return
        }
        keySets(sb, head) { set, par in
            switch keyMode {
            case .channel:
                ck_kv_scores_channel(set.codes, set.bits, set.rows, hd, par, par + Int(hd), set.ids, Int32(len), q, Int32(nq), scores, Int32(ld))
            case .token(let g):
                ck_kv_scores_token(set.codes, set.bits, set.rows, hd, Int32(g), par, 2 * hd / Int32(g), set.ids, Int32(len), q, Int32(nq), scores, Int32(ld))
            }
        }
    }

    /// out[i][0..<hd] += the probability-weighted values of the kept rows of a sealed block, computed on the codes
    /// (p[i * ldp + slot - block start] is query i's probability of that slot).
    private func attendValueCodes(_ sb: Sealed, _ head: Int, p: UnsafePointer<Float>, nq: Int, ldp: Int, len: Int,
                                  out: UnsafeMutablePointer<Float>) {
        valueSets(sb, head) { set, g, par, stride, cs in
            ck_kv_values_token(set.codes, set.bits, set.rows, Int32(headDim), g, par, stride, cs, set.ids, Int32(len), p, Int32(nq), Int32(ldp), out)
        }
    }

    /// Keys of a sealed block of one head, in slot order, into out[count][headDim] (evicted rows untouched).
    func dequantKeys(_ sb: Sealed, _ head: Int, into out: UnsafeMutablePointer<Float>) {
        let hd = Int32(headDim)
        if sb.layout.zeroKeys { out.update(repeating: 0, count: sb.layout.kept * headDim + sb.layout.evicted * headDim); return }
        keySets(sb, head) { set, par in
            switch keyMode {
            case .channel: ck_kv_dequant_channel(set.codes, set.bits, set.rows, hd, par, par + Int(hd), set.ids, out)
            case .token(let g): ck_kv_dequant_token(set.codes, set.bits, set.rows, hd, Int32(g), par, 2 * hd / Int32(g), nil, set.ids, out)
            }
        }
    }

    /// Values of a sealed block of one head, in slot order, into out[count][headDim] (evicted rows untouched).
    func dequantValues(_ sb: Sealed, _ head: Int, into out: UnsafeMutablePointer<Float>) {
        valueSets(sb, head) { set, g, par, stride, cs in
            ck_kv_dequant_token(set.codes, set.bits, set.rows, Int32(headDim), g, par, stride, cs, set.ids, out)
        }
    }

    // MARK: sealing

    func seal(finalUpTo: Int) {
        while sealedBlocks < blocks.count {
            let blk = blocks[sealedBlocks]
            guard blk.start + blk.count <= finalUpTo, blk.start + blk.count <= recentHigh else { break }
            precondition(blk.start == recentStart)
            for b in 0..<batch {
                for l in 0..<layers {
                    if let pr = pair(l) {
                        if pr.second { continue }          // stored with the first layer of its pair
                        mergePair(b, l, sealedBlocks)
                    }
                    sealBlock(b, l, sealedBlocks)
                }
            }
            compact(blk.count)
            sealedBlocks += 1
        }
    }

    @inline(__always) private static func half(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    /// MiniCache: replaces layer a's open rows of block k by the merged directions of (a, a+1).
    private func mergePair(_ b: Int, _ a: Int, _ k: Int) {
        let n = blocks[k].count, hd = headDim
        var m = MergedBlock(count: n, heads: kvHeads, headDim: hd)
        for kv in 0..<2 {
            let buf = kv == 0 ? recentK : recentV
            for h in 0..<kvHeads {
                m.merge(kv: kv, head: h, a: buf + headIndex(b, a, h) * cap * hd, c: buf + headIndex(b, a + 1, h) * cap * hd)
            }
        }
        merged[(b * layers + a) * blocks.count + k] = m
        sealedBytes += m.bytes
    }

    /// Token order of a block: the base cache's sets (ZipCache: salient ascending, then regular by
    /// ascending score), then the tokens ZipVL evicts.
    private func tokenOrder(_ b: Int, _ layer: Int, _ blk: Block) -> (order: [Int], setRows: [Int], evicted: Int) {
        let n = blk.count
        guard scored else { return (Array(0..<n), [n], 0) }
        // Normalised score: attention received, summed over heads, / queries that could see the token.
        let cnt = counts + b * slots + blk.start
        for t in 0..<n {
            var s: Float = 0
            for h in 0..<kvHeads { s += acc[headIndex(b, layer, h) * cap + t] }
            sealScores[t] = cnt[t] > 0 ? s / Float(cnt[t]) : 0
        }
        let scores = Array(sealScores[0..<n])
        var kept = Array(0..<n), evicted: [Int] = []
        if let tau = zipvlTau {
            // ZipVL: the fewest tokens whose scores cover tau of the block's total (ties: earlier first).
            let desc = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
            let total = scores.reduce(0, +)
            var sum: Float = 0, p = 0
            while p < n && (total <= 0 || Double(sum) < tau * Double(total)) { sum += scores[desc[p]]; p += 1 }
            if total <= 0 { p = n }
            kept = Array(desc.prefix(p)).sorted()
            evicted = Array(desc.suffix(n - p)).sorted()
            keptPerLayer[layer] += p; seenPerLayer[layer] += n
        }
        guard zip else { return (kept + evicted, [kept.count], evicted.count) }
        let (sal, reg) = ZipCache.split(scores: kept.map { scores[$0] }, ratio: options.unimportantRatio)
        return (sal.map { kept[$0] } + reg.map { kept[$0] } + evicted, [sal.count, reg.count], evicted.count)
    }

    private func sealBlock(_ b: Int, _ layer: Int, _ k: Int) {
        let blk = blocks[k], n = blk.count, hd = headDim, C = kvHeads * hd
        let (order, setRows, evicted) = tokenOrder(b, layer, blk)
        let hasIds = scored
        var zeroKeys = true
        for h in 0..<kvHeads where zeroKeys {
            let k = recentK + headIndex(b, layer, h) * cap * hd
            for i in 0..<(n * hd) where k[i] & 0x7fff != 0 { zeroKeys = false; break }
        }
        var sb = Sealed()
        sb.layout = layout(setRows: setRows, evicted: evicted, ids: hasIds, zeroKeys: zeroKeys)
        sb.hasIds = hasIds
        sb.data = UnsafeMutableRawPointer.allocate(byteCount: max(1, sb.layout.bytes), alignment: 16)
        sb.data!.initializeMemory(as: UInt8.self, repeating: 0, count: max(1, sb.layout.bytes))
        let L = sb.layout
        if let idp = sb.ids { for (r, t) in order.enumerated() { idp[r] = UInt16(t) } }
        let round: KVQuant.ParamRounding = KVQuant.toHalf
        // 1. Keys, head by head.
        for h in 0..<kvHeads where !zeroKeys {
            ck_f16_to_f32(recentK + headIndex(b, layer, h) * cap * hd, sealRows, Int32(n * hd))
            let c = sb.codes(h), p = sb.halves(h * L.headBytes + L.keyParam)
            var row0 = 0
            for (s, rows) in setRows.enumerated() where rows > 0 {
                for r in 0..<rows { (sealSet + r * hd).update(from: sealRows + order[row0 + r] * hd, count: hd) }
                switch keyMode {
                case .channel:
                    KVQuant.channelwise(sealSet, rows: rows, d: hd, ld: hd, bits: L.setBits[s], codes: sealCodes, mins: sealMin, steps: sealStep, round: round)
                    for i in 0..<hd { p[s * 2 * hd + i] = Self.half(sealMin[i]); p[s * 2 * hd + hd + i] = Self.half(sealStep[i]) }
                case .token(let g):
                    let G = hd / g
                    for r in 0..<rows {
                        KVQuant.tokenwise(sealSet + r * hd, d: hd, group: g, bits: L.setBits[s], codes: sealCodes + r * hd,
                                          mins: sealMin, steps: sealStep, round: round)
                        let pr = p + (row0 + r) * 2 * G
                        for i in 0..<G { pr[i] = Self.half(sealMin[i]); pr[G + i] = Self.half(sealStep[i]) }
                    }
                }
                let rb = KVQuant.packedBytes(bits: L.setBits[s], d: hd)
                for r in 0..<rows { KVQuant.pack(sealCodes + r * hd, bits: L.setBits[s], d: hd, into: c + L.keyCode[s] + r * rb) }
                row0 += rows
            }
        }
        // 2. Values.
        switch valueMode {
        case .token(let g):
            let G = hd / g
            for h in 0..<kvHeads {
                ck_f16_to_f32(recentV + headIndex(b, layer, h) * cap * hd, sealRows, Int32(n * hd))
                let c = sb.codes(h), p = sb.halves(h * L.headBytes + L.valueParam)
                var row0 = 0
                for (s, rows) in setRows.enumerated() where rows > 0 {
                    let rb = KVQuant.packedBytes(bits: L.setBits[s], d: hd)
                    for r in 0..<rows {
                        KVQuant.tokenwise(sealRows + order[row0 + r] * hd, d: hd, group: g, bits: L.setBits[s], codes: sealCodes,
                                          mins: sealMin, steps: sealStep, round: round)
                        let pr = p + (row0 + r) * 2 * G
                        for i in 0..<G { pr[i] = Self.half(sealMin[i]); pr[G + i] = Self.half(sealStep[i]) }
                        KVQuant.pack(sealCodes, bits: L.setBits[s], d: hd, into: c + L.valueCode[s] + r * rb)
                    }
                    row0 += rows
                }
            }
        case .cst:
            // All heads' values of the block as rows of C channels (channel = head*hd + d).
            for h in 0..<kvHeads {
                ck_f16_to_f32(recentV + headIndex(b, layer, h) * cap * hd, sealRows, Int32(n * hd))
                for t in 0..<n { (sealAll + t * C + h * hd).update(from: sealRows + t * hd, count: hd) }
            }
            // Channel normaliser sqrt(max |V|) over the block's stored tokens (fp16; V is divided by the stored value).
            let stored = order.prefix(L.kept)
            for ch in 0..<C {
                var m: Float = 0
                for t in stored { m = max(m, abs(sealAll[t * C + ch])) }
                let cs = KVQuant.toHalf(m.squareRoot())
                sb.halves((ch / hd) * L.headBytes + L.valueParam)[ch % hd] = Self.half(cs)
                for t in stored { sealAll[t * C + ch] = cs > 0 ? sealAll[t * C + ch] / cs : 0 }
            }
            let sp = sb.halves(L.shared)
            var row0 = 0
            for (s, rows) in setRows.enumerated() where rows > 0 {
                let rb = KVQuant.packedBytes(bits: L.setBits[s], d: hd)
                for r in 0..<rows {
                    KVQuant.tokenwise(sealAll + order[row0 + r] * C, d: C, group: C, bits: L.setBits[s], codes: sealCodes,
                                      mins: sealMin, steps: sealStep, round: round)
                    sp[(row0 + r) * 2] = Self.half(sealMin[0]); sp[(row0 + r) * 2 + 1] = Self.half(sealStep[0])
                    for h in 0..<kvHeads {
                        KVQuant.pack(sealCodes + h * hd, bits: L.setBits[s], d: hd, into: sb.codes(h) + L.valueCode[s] + r * rb)
                    }
                }
                row0 += rows
            }
        }
        sealed[(b * layers + layer) * blocks.count + k] = sb
        sealedBytes += L.bytes
    }

    /// Drops the first n slots of the recent buffer (just sealed).
    private func compact(_ n: Int) {
        let hd = headDim, used = max(0, recentHigh - recentStart), keep = max(0, used - n)
        for h in 0..<heads {
            // memmove: the kept rows overlap the dropped ones.
            for k in 0..<2 {
                let base = (k == 0 ? recentK : recentV) + h * cap * hd
                if keep > 0 { memmove(base, base + n * hd, keep * hd * 2) }
                (base + keep * hd).update(repeating: 0, count: (used - keep) * hd)
            }
            if scored {
                let a = acc + h * cap
                if keep > 0 { memmove(a, a + n, keep * 4) }
                (a + keep).update(repeating: 0, count: used - keep)
            }
        }
        recentStart += n
        recentHigh = max(recentHigh, recentStart)
    }

    func reset() {
        for i in sealed.indices { sealed[i].data?.deallocate(); sealed[i] = Sealed(); merged[i] = nil }
        sealedBytes = 0
        recentK.update(repeating: 0, count: heads * cap * headDim)
        recentV.update(repeating: 0, count: heads * cap * headDim)
        if scored {
            acc.update(repeating: 0, count: heads * cap)
            counts.update(repeating: 0, count: batch * slots)
        }
        recentStart = 0; recentHigh = 0; sealedBlocks = 0
    }
}
