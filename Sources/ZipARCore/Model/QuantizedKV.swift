import CKernels
import Foundation

/// Block-quantized KV storage (int8, KIVI, ZipCache). Slots are cut into fixed blocks from slot 0.
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

    struct Block {
        var start = 0, count = 0
        var setRows: [Int] = []            // rows of each set, in set order (salient first)
        var keyCodeOff: [Int] = [], valueCodeOff: [Int] = []   // bytes, within a head's code region
        var keyParamOff = 0, valueParamOff = 0                  // halves, within a head's parameter region
        var sharedOff = 0                                       // halves, within a (b, layer) shared region
    }

    let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    let kind: KVCacheKind
    let setBits: [Int]
    let keyMode: KeyMode, valueMode: ValueMode
    let blockSize: Int
    let zip: Bool
    let options: KVCacheOptions
    let blocks: [Block]

    // Sealed storage, allocated once.
    let headCodeBytes: Int, headParamHalves: Int, sharedHalves: Int
    let codes: UnsafeMutablePointer<UInt8>
    let params: UnsafeMutablePointer<UInt16>
    let shared: UnsafeMutablePointer<UInt16>
    /// ZipCache: per (b, layer) and slot, the block-local token of each set row (set order).
    let ids: UnsafeMutablePointer<UInt16>
    let identity: UnsafeMutablePointer<UInt16>

    // Recent buffer: [b][layer][head][cap][headDim] fp16 keys and values (+ ZipCache attention sums).
    private(set) var cap: Int
    var recentK: UnsafeMutablePointer<UInt16>
    var recentV: UnsafeMutablePointer<UInt16>
    var acc: UnsafeMutablePointer<Float>           // [b][layer][head][cap]: attention received
    let counts: UnsafeMutablePointer<Int32>        // [b][slot]: queries that could see the slot
    private(set) var recentStart = 0
    private(set) var recentHigh = 0                // 1 + the highest slot stored
    private(set) var sealedBlocks = 0

    // Scratch: one block of one head per worker, and the sealing buffers.
    let workers: Int
    let scratch: UnsafeMutablePointer<Float>
    let sealRows: UnsafeMutablePointer<Float>      // [block][headDim] one head's rows (slot order)
    let sealSet: UnsafeMutablePointer<Float>       // [block][headDim] gathered rows of a set
    let sealAll: UnsafeMutablePointer<Float>       // [block][C] CST values of all heads
    let sealCodes: UnsafeMutablePointer<UInt8>     // [block][max(C, headDim)]
    let sealMin: UnsafeMutablePointer<Float>, sealStep: UnsafeMutablePointer<Float>
    var sealScores: [Float]

    init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, kind: KVCacheKind, options: KVCacheOptions) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        self.kind = kind; self.options = options
        let hd = headDim, C = kvHeads * headDim
        precondition(hd % 4 == 0 && hd <= 512, "quantized KV caches need head_dim divisible by 4 and <= 512")
        // KIVI groups 32 channels; head_dim 100 (GPT-3B) is not a multiple, so a whole head row is one group there.
        let g = hd % options.kiviGroup == 0 ? options.kiviGroup : hd
        switch kind {
        case .int8: setBits = [8]; keyMode = .token(group: hd); valueMode = .token(group: hd); blockSize = options.kiviGroup
        case .kivi2: setBits = [2]; keyMode = .channel; valueMode = .token(group: g); blockSize = options.kiviGroup
        case .kivi4: setBits = [4]; keyMode = .channel; valueMode = .token(group: g); blockSize = options.kiviGroup
        case .zipcache:
            setBits = [ZipCache.salientBits, ZipCache.regularBits]; keyMode = .channel; valueMode = .cst; blockSize = options.zipBlock
        case .fp32, .fp16: preconditionFailure("dense caches are DenseKV")
        }
        zip = kind == .zipcache
        var list: [Block] = []
        var codeOff = 0, paramOff = 0, sharedOff = 0
        var start = 0
        while start < slots {
            var b = Block()
            b.start = start; b.count = min(blockSize, slots - start)
            if zip {
                let nReg = ZipCache.regularCount(b.count, ratio: options.unimportantRatio)
                b.setRows = [b.count - nReg, nReg]
            } else {
                b.setRows = [b.count]
            }
            for (s, rows) in b.setRows.enumerated() { b.keyCodeOff.append(codeOff); codeOff += rows * KVQuant.packedBytes(bits: setBits[s], d: hd) }
            for (s, rows) in b.setRows.enumerated() { b.valueCodeOff.append(codeOff); codeOff += rows * KVQuant.packedBytes(bits: setBits[s], d: hd) }
            b.keyParamOff = paramOff
            switch keyMode {
            case .channel: paramOff += b.setRows.count * 2 * hd
            case .token(let g): paramOff += b.count * 2 * (hd / g)
            }
            b.valueParamOff = paramOff
            switch valueMode {
            case .token(let g): paramOff += b.count * 2 * (hd / g)
            case .cst: paramOff += hd; b.sharedOff = sharedOff; sharedOff += b.count * 2
            }
            list.append(b)
            start += b.count
        }
        blocks = list
        headCodeBytes = codeOff; headParamHalves = paramOff; sharedHalves = sharedOff
        let heads = batch * layers * kvHeads
        codes = .allocate(capacity: max(1, heads * codeOff)); codes.initialize(repeating: 0, count: max(1, heads * codeOff))
        params = .allocate(capacity: max(1, heads * paramOff)); params.initialize(repeating: 0, count: max(1, heads * paramOff))
        shared = .allocate(capacity: max(1, batch * layers * sharedOff)); shared.initialize(repeating: 0, count: max(1, batch * layers * sharedOff))
        let idCount = zip ? batch * layers * slots : 1
        ids = .allocate(capacity: idCount); ids.initialize(repeating: 0, count: idCount)
        identity = .allocate(capacity: blockSize)
        for i in 0..<blockSize { identity[i] = UInt16(i) }
        cap = blockSize + 64
        recentK = .allocate(capacity: heads * cap * hd); recentK.initialize(repeating: 0, count: heads * cap * hd)
        recentV = .allocate(capacity: heads * cap * hd); recentV.initialize(repeating: 0, count: heads * cap * hd)
        acc = .allocate(capacity: zip ? heads * cap : 1); acc.initialize(repeating: 0, count: zip ? heads * cap : 1)
        counts = .allocate(capacity: zip ? batch * slots : 1); counts.initialize(repeating: 0, count: zip ? batch * slots : 1)
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
        codes.deallocate(); params.deallocate(); shared.deallocate(); ids.deallocate(); identity.deallocate()
        recentK.deallocate(); recentV.deallocate(); acc.deallocate(); counts.deallocate()
        scratch.deallocate(); sealRows.deallocate(); sealSet.deallocate(); sealAll.deallocate()
        sealCodes.deallocate(); sealMin.deallocate(); sealStep.deallocate()
    }

    // MARK: sizes

    var heads: Int { batch * layers * kvHeads }
    /// Bytes of the quantized form of every block (codes, parameters, ZipCache ids).
    var compressedBytes: Int {
        heads * (headCodeBytes + 2 * headParamHalves) + 2 * batch * layers * sharedHalves + (zip ? 2 * batch * layers * slots : 0)
    }
    /// Bytes of the recent buffer and the saliency state.
    var recentBytes: Int { heads * cap * headDim * 2 * 2 + (zip ? heads * cap * 4 + batch * slots * 4 : 0) }
    var bytes: Int { compressedBytes + recentBytes }
    var formatBytes: Int { compressedBytes }

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
    /// oldest open block the schedule writes).
    private func grow(to need: Int) {
        let newCap = max(need + 32, cap + cap / 2), hd = headDim, used = min(cap, recentHigh - recentStart)
        func moved<T>(_ old: UnsafeMutablePointer<T>, width: Int, zero: T) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutablePointer<T>.allocate(capacity: heads * newCap * width)
            p.initialize(repeating: zero, count: heads * newCap * width)
            for h in 0..<heads where used > 0 { (p + h * newCap * width).update(from: old + h * cap * width, count: used * width) }
            old.deallocate()
            return p
        }
        recentK = moved(recentK, width: hd, zero: 0)
        recentV = moved(recentV, width: hd, zero: 0)
        if zip { acc = moved(acc, width: 1, zero: 0) }
        cap = newCap
    }

    func beginPass(positions: [Int], batchOf: [Int], masks: UnsafePointer<UInt8>, slots S: Int) {
        guard zip else { return }
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
                maskOffsets: UnsafePointer<Int32>, querySlots: UnsafePointer<Int32>, scale: Float,
                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, worker: Int) {
        precondition(worker < workers, "more attention workers than the cache was made for")
        let hd = headDim, hi = headIndex(b, layer, head)
        let buf = scratch + worker * blockSize * hd
        let rk = recentK + hi * cap * hd, rv = recentV + hi * cap * hd
        let nRecent = max(0, n - recentStart)
        // Scores: sealed blocks one at a time through the scratch buffer, then the fp16 recent slots.
        for k in 0..<sealedBlocks {
            let blk = blocks[k]
            guard blk.start < n else { break }
            let len = min(blk.count, n - blk.start)
            dequantKeys(b, layer, head, k, into: buf)
            ck_gemm_rows(q, Int32(nq), Int32(hd), buf, 0, Int32(len), scores + blk.start, Int32(n))
        }
        if nRecent > 0 { ck_gemm_rows_f16(q, Int32(nq), Int32(hd), rk, 0, Int32(nRecent), scores + recentStart, Int32(n)) }
        ck_softmax_rows(masks, maskOffsets, Int32(nq), Int32(n), scale, scores)
        // ZipCache saliency: attention received by each open slot (sealed slots are already split).
        if zip && nRecent > 0 {
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
            dequantValues(b, layer, head, k, into: buf)
            for i in 0..<nq { ck_weighted_rows_acc(scores + i * n + blk.start, buf, Int32(len), Int32(hd), out + i * hd) }
        }
        if nRecent > 0 {
            for i in 0..<nq { ck_weighted_rows_acc_f16(scores + i * n + recentStart, rv, Int32(nRecent), Int32(hd), out + i * hd) }
        }
    }

    /// Keys of block k of one head, in slot order, into out[count][headDim].
    func dequantKeys(_ b: Int, _ layer: Int, _ head: Int, _ k: Int, into out: UnsafeMutablePointer<Float>) {
        let blk = blocks[k], hd = headDim, hi = headIndex(b, layer, head)
        let c = codes + hi * headCodeBytes, p = params + hi * headParamHalves + blk.keyParamOff
        let idBase: UnsafeMutablePointer<UInt16> = zip ? ids + (b * layers + layer) * slots + blk.start : identity
        var row0 = 0
        for (s, rows) in blk.setRows.enumerated() where rows > 0 {
            switch keyMode {
            case .channel:
                ck_kv_dequant_channel(c + blk.keyCodeOff[s], Int32(setBits[s]), Int32(rows), Int32(hd), p + s * 2 * hd, p + s * 2 * hd + hd,
                                      idBase + row0, out)
            case .token(let g):
                let G = hd / g
                ck_kv_dequant_token(c + blk.keyCodeOff[s], Int32(setBits[s]), Int32(rows), Int32(hd), Int32(g), p + row0 * 2 * G,
                                    Int32(2 * G), nil, idBase + row0, out)
            }
            row0 += rows
        }
    }

    /// Values of block k of one head, in slot order, into out[count][headDim].
    func dequantValues(_ b: Int, _ layer: Int, _ head: Int, _ k: Int, into out: UnsafeMutablePointer<Float>) {
        let blk = blocks[k], hd = headDim, hi = headIndex(b, layer, head)
        let c = codes + hi * headCodeBytes, p = params + hi * headParamHalves + blk.valueParamOff
        let idBase: UnsafeMutablePointer<UInt16> = zip ? ids + (b * layers + layer) * slots + blk.start : identity
        var row0 = 0
        for (s, rows) in blk.setRows.enumerated() where rows > 0 {
            switch valueMode {
            case .token(let g):
                let G = hd / g
                ck_kv_dequant_token(c + blk.valueCodeOff[s], Int32(setBits[s]), Int32(rows), Int32(hd), Int32(g), p + row0 * 2 * G,
                                    Int32(2 * G), nil, idBase + row0, out)
            case .cst:
                let sp = shared + (b * layers + layer) * sharedHalves + blk.sharedOff + row0 * 2
                ck_kv_dequant_token(c + blk.valueCodeOff[s], Int32(setBits[s]), Int32(rows), Int32(hd), Int32(hd), sp, 2, p,
                                    idBase + row0, out)
            }
            row0 += rows
        }
    }

    // MARK: sealing

    func seal(finalUpTo: Int) {
        while sealedBlocks < blocks.count {
            let blk = blocks[sealedBlocks]
            guard blk.start + blk.count <= finalUpTo, blk.start + blk.count <= recentHigh else { break }
            precondition(blk.start == recentStart)
            for b in 0..<batch { for l in 0..<layers { sealBlock(b, l, sealedBlocks) } }
            compact(blk.count)
            sealedBlocks += 1
        }
    }

    @inline(__always) private static func half(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    private func sealBlock(_ b: Int, _ layer: Int, _ k: Int) {
        let blk = blocks[k], n = blk.count, hd = headDim, C = kvHeads * hd
        // 1. Token order of the sets: ZipCache splits by the normalised score summed over heads.
        var order = Array(0..<n)
        if zip {
            let cnt = counts + b * slots + blk.start
            for t in 0..<n {
                var s: Float = 0
                for h in 0..<kvHeads { s += acc[headIndex(b, layer, h) * cap + t] }
                sealScores[t] = cnt[t] > 0 ? s / Float(cnt[t]) : 0
            }
            let (sal, reg) = ZipCache.split(scores: Array(sealScores[0..<n]), ratio: options.unimportantRatio)
            order = sal + reg
            let idp = ids + (b * layers + layer) * slots + blk.start
            for (r, t) in order.enumerated() { idp[r] = UInt16(t) }
        }
        let round: KVQuant.ParamRounding = KVQuant.toHalf
        // 2. Keys, head by head.
        for h in 0..<kvHeads {
            let hi = headIndex(b, layer, h)
            ck_f16_to_f32(recentK + hi * cap * hd, sealRows, Int32(n * hd))
            let c = codes + hi * headCodeBytes, p = params + hi * headParamHalves + blk.keyParamOff
            var row0 = 0
            for (s, rows) in blk.setRows.enumerated() where rows > 0 {
                for r in 0..<rows { (sealSet + r * hd).update(from: sealRows + order[row0 + r] * hd, count: hd) }
                switch keyMode {
                case .channel:
                    KVQuant.channelwise(sealSet, rows: rows, d: hd, ld: hd, bits: setBits[s], codes: sealCodes, mins: sealMin, steps: sealStep, round: round)
                    for i in 0..<hd { p[s * 2 * hd + i] = Self.half(sealMin[i]); p[s * 2 * hd + hd + i] = Self.half(sealStep[i]) }
                case .token(let g):
                    let G = hd / g
                    for r in 0..<rows {
                        KVQuant.tokenwise(sealSet + r * hd, d: hd, group: g, bits: setBits[s], codes: sealCodes + r * hd,
                                          mins: sealMin, steps: sealStep, round: round)
                        let pr = p + (row0 + r) * 2 * G
                        for i in 0..<G { pr[i] = Self.half(sealMin[i]); pr[G + i] = Self.half(sealStep[i]) }
                    }
                }
                let rb = KVQuant.packedBytes(bits: setBits[s], d: hd)
                for r in 0..<rows { KVQuant.pack(sealCodes + r * hd, bits: setBits[s], d: hd, into: c + blk.keyCodeOff[s] + r * rb) }
                row0 += rows
            }
        }
        // 3. Values.
        switch valueMode {
        case .token(let g):
            let G = hd / g
            for h in 0..<kvHeads {
                let hi = headIndex(b, layer, h)
                ck_f16_to_f32(recentV + hi * cap * hd, sealRows, Int32(n * hd))
                let c = codes + hi * headCodeBytes, p = params + hi * headParamHalves + blk.valueParamOff
                var row0 = 0
                for (s, rows) in blk.setRows.enumerated() where rows > 0 {
                    let rb = KVQuant.packedBytes(bits: setBits[s], d: hd)
                    for r in 0..<rows {
                        KVQuant.tokenwise(sealRows + order[row0 + r] * hd, d: hd, group: g, bits: setBits[s], codes: sealCodes,
                                          mins: sealMin, steps: sealStep, round: round)
                        let pr = p + (row0 + r) * 2 * G
                        for i in 0..<G { pr[i] = Self.half(sealMin[i]); pr[G + i] = Self.half(sealStep[i]) }
                        KVQuant.pack(sealCodes, bits: setBits[s], d: hd, into: c + blk.valueCodeOff[s] + r * rb)
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
            // Channel normaliser sqrt(max |V|) over the block's tokens (stored fp16; V is divided by the stored value).
            for ch in 0..<C {
                var m: Float = 0
                for t in 0..<n { m = max(m, abs(sealAll[t * C + ch])) }
                let cs = KVQuant.toHalf(m.squareRoot())
                params[headIndex(b, layer, ch / hd) * headParamHalves + blk.valueParamOff + ch % hd] = Self.half(cs)
                for t in 0..<n { sealAll[t * C + ch] = cs > 0 ? sealAll[t * C + ch] / cs : 0 }
            }
            let sp = shared + (b * layers + layer) * sharedHalves + blk.sharedOff
            var row0 = 0
            for (s, rows) in blk.setRows.enumerated() where rows > 0 {
                let rb = KVQuant.packedBytes(bits: setBits[s], d: hd)
                for r in 0..<rows {
                    KVQuant.tokenwise(sealAll + order[row0 + r] * C, d: C, group: C, bits: setBits[s], codes: sealCodes,
                                      mins: sealMin, steps: sealStep, round: round)
                    sp[(row0 + r) * 2] = Self.half(sealMin[0]); sp[(row0 + r) * 2 + 1] = Self.half(sealStep[0])
                    for h in 0..<kvHeads {
                        KVQuant.pack(sealCodes + h * hd, bits: setBits[s], d: hd,
                                     into: codes + headIndex(b, layer, h) * headCodeBytes + blk.valueCodeOff[s] + r * rb)
                    }
                }
                row0 += rows
            }
        }
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
            if zip {
                let a = acc + h * cap
                if keep > 0 { memmove(a, a + n, keep * 4) }
                (a + keep).update(repeating: 0, count: used - keep)
            }
        }
        recentStart += n
        recentHigh = max(recentHigh, recentStart)
    }

    func reset() {
        codes.update(repeating: 0, count: max(1, heads * headCodeBytes))
        params.update(repeating: 0, count: max(1, heads * headParamHalves))
        shared.update(repeating: 0, count: max(1, batch * layers * sharedHalves))
        recentK.update(repeating: 0, count: heads * cap * headDim)
        recentV.update(repeating: 0, count: heads * cap * headDim)
        if zip {
            acc.update(repeating: 0, count: heads * cap)
            counts.update(repeating: 0, count: batch * slots)
            ids.update(repeating: 0, count: batch * layers * slots)
        }
        recentStart = 0; recentHigh = 0; sealedBlocks = 0
    }
}
