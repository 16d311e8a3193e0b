import CKernels
import Foundation

/// One LlamaGen transformer block (pre-norm, Llama style):
///   h = x + attention(attention_norm(x));  out = h + feed_forward(ffn_norm(h))
/// Property names follow the checkpoint keys `layers.{i}.*`.
public final class TransformerBlock {
    public let attention_norm: Tensor       // [dim]
    public let wqkv: Linear                 // [(n_head + 2*n_kv_head)*head_dim, dim], rows Q | K | V
    public let wo: Linear                   // [dim, dim]
    public let ffn_norm: Tensor             // [dim]
    public let w1: Linear                   // [hidden, dim]  gate
    public let w3: Linear                   // [hidden, dim]  up
    public let w2: Linear                   // [dim, hidden]  down

    init(attention_norm: Tensor, wqkv: Linear, wo: Linear, ffn_norm: Tensor, w1: Linear, w3: Linear, w2: Linear) {
        self.attention_norm = attention_norm; self.wqkv = wqkv; self.wo = wo
        self.ffn_norm = ffn_norm; self.w1 = w1; self.w3 = w3; self.w2 = w2
    }
}

/// Which cache slots a query may attend to.
public struct AttentionVisibility {
    /// Upstream ZipAR behaviour: unwritten slots below the query are visible as zero keys/values.
    public var holes = false
    /// t2i caption padding mask over the condition prefix (true = valid); nil for c2i.
    public var captionMask: [Bool]? = nil
    /// "Drawn" attention: an image query sees every slot written so far, also slots after its own,
    /// so an upper ZipAR row sees what the rows below it already drew (ZipAR's own mask is causal in
    /// slot order and hides them). Only for models trained on it (config.json "attention": "drawn",
    /// tools/train/nextset.py); raster order is the same either way.
    public var drawn = false
    public init(holes: Bool = false, captionMask: [Bool]? = nil, drawn: Bool = false) {
        self.holes = holes; self.captionMask = captionMask; self.drawn = drawn
    }
}

/// The LlamaGen GPT (c2i and t2i), computed exactly as the official code does in float32.
public final class GPT {
    public let config: GPTConfig
    public let tok_embeddings: Tensor               // [vocab, dim]
    public let cls_embedding_table: Tensor?         // c2i: [num_classes (+1 null row), dim]
    public let uncond_embedding: Tensor?            // t2i: [120, caption_dim]
    public let cap_proj_fc1: Linear?                // t2i: [dim, caption_dim]
    public let cap_proj_fc2: Linear?                // t2i: [dim, dim]
    public let layers: [TransformerBlock]
    public let norm: Tensor                         // [dim]
    public let output: Linear                       // [vocab, dim]
    public let rope: RoPE2D

    /// Sequence length: condition prefix + image tokens.
    public var sequenceLength: Int { config.cls_token_num + config.block_size }

    public init(config: GPTConfig, weights: SafeTensorsFile) throws {
        try config.validate()
        self.config = config
        let d = config.dim, hd = config.headDim, hidden = config.ffnHidden
        let qkvRows = (config.n_head + 2 * config.kvHeads) * hd
        // Every shape is checked against the config before any compute.
        func t(_ name: String, _ shape: [Int]) throws -> Tensor { try weights.tensor(name, shape: shape) }
        // Float or quantized (integer tensors + scales, see QuantFormat).
        func lin(_ name: String, _ shape: [Int]) throws -> Linear { try QuantFormat.loadLinear(weights, name, shape: shape) }
        tok_embeddings = try t("tok_embeddings.weight", [config.vocab_size, d])
        if config.isT2I {
            guard config.cls_token_num == 120 || weights.tensors["cls_embedding.uncond_embedding"]?.shape.first == config.cls_token_num else {
                throw ZipARError("t2i models need cls_token_num = rows of cls_embedding.uncond_embedding (120)")
            }
            uncond_embedding = try t("cls_embedding.uncond_embedding", [config.cls_token_num, config.caption_dim])
            cap_proj_fc1 = try lin("cls_embedding.cap_proj.fc1.weight", [d, config.caption_dim])
            cap_proj_fc2 = try lin("cls_embedding.cap_proj.fc2.weight", [d, d])
            cls_embedding_table = nil
        } else {
            cls_embedding_table = try t("cls_embedding.embedding_table.weight", [config.labelRows, d])
            uncond_embedding = nil; cap_proj_fc1 = nil; cap_proj_fc2 = nil
        }
        layers = try (0..<config.n_layer).map { i in
            let p = "layers.\(i)."
            return TransformerBlock(
                attention_norm: try t(p + "attention_norm.weight", [d]),
                wqkv: try lin(p + "attention.wqkv.weight", [qkvRows, d]),
                wo: try lin(p + "attention.wo.weight", [d, d]),
                ffn_norm: try t(p + "ffn_norm.weight", [d]),
                w1: try lin(p + "feed_forward.w1.weight", [hidden, d]),
                w3: try lin(p + "feed_forward.w3.weight", [hidden, d]),
                w2: try lin(p + "feed_forward.w2.weight", [d, hidden]))
        }
        norm = try t("norm.weight", [d])
        output = try lin("output.weight", [config.vocab_size, d])
        rope = RoPE2D(headDim: hd, grid: config.gridSize, clsTokens: config.cls_token_num, base: config.rope_base)
    }

    /// A model with random weights of the given shape (for timing; deterministic per seed).
    public init(randomWithConfig config: GPTConfig, seed: UInt64) throws {
        try config.validate()
        self.config = config
        var rng = RNG(seed: seed)
        let d = config.dim, hd = config.headDim, hidden = config.ffnHidden
        func t(_ shape: [Int], scale: Float, offset: Float = 0) -> Tensor {
            let x = Tensor(shape: shape)
            for i in 0..<x.count { x.data[i] = offset + scale * rng.nextNormal() }
            return x
        }
        func lin(_ n: Int, _ k: Int) -> Linear { Linear(weight: t([n, k], scale: 1 / Float(k).squareRoot())) }
        tok_embeddings = t([config.vocab_size, d], scale: 1)
        if config.isT2I {
            uncond_embedding = t([config.cls_token_num, config.caption_dim], scale: 1)
            cap_proj_fc1 = lin(d, config.caption_dim); cap_proj_fc2 = lin(d, d); cls_embedding_table = nil
        } else {
            cls_embedding_table = t([config.labelRows, d], scale: 1)
            uncond_embedding = nil; cap_proj_fc1 = nil; cap_proj_fc2 = nil
        }
        layers = (0..<config.n_layer).map { _ in
            TransformerBlock(attention_norm: t([d], scale: 0.1, offset: 1), wqkv: lin((config.n_head + 2 * config.kvHeads) * hd, d),
                             wo: lin(d, d), ffn_norm: t([d], scale: 0.1, offset: 1), w1: lin(hidden, d), w3: lin(hidden, d), w2: lin(d, hidden))
        }
        norm = t([d], scale: 0.1, offset: 1)
        output = lin(config.vocab_size, d)
        rope = RoPE2D(headDim: hd, grid: config.gridSize, clsTokens: config.cls_token_num, base: config.rope_base)
    }

    public var parameterCount: Int {
        var n = tok_embeddings.count + norm.count + output.parameterCount
        n += cls_embedding_table?.count ?? 0
        n += (uncond_embedding?.count ?? 0) + (cap_proj_fc1?.parameterCount ?? 0) + (cap_proj_fc2?.parameterCount ?? 0)
        for l in layers {
            n += l.attention_norm.count + l.ffn_norm.count
            n += l.wqkv.parameterCount + l.wo.parameterCount + l.w1.parameterCount + l.w2.parameterCount + l.w3.parameterCount
        }
        return n
    }

    /// Bytes of weights one decode pass streams (every Linear once; embeddings are row lookups).
    public var streamedBytesPerPass: Int {
        layers.reduce(output.bytes) { $0 + $1.wqkv.bytes + $1.wo.bytes + $1.w1.bytes + $1.w2.bytes + $1.w3.bytes }
    }

    public func makeCache(batch: Int, precision: KVCacheKind = .fp32, options: KVCacheOptions = KVCacheOptions()) -> KVCache {
        KVCache(batch: batch, layers: config.n_layer, kvHeads: config.kvHeads, slots: sequenceLength, headDim: config.headDim,
                prefixSlots: config.cls_token_num, gridWidth: config.gridSize, kind: precision, options: options)
    }

    // MARK: embeddings

    /// Writes the embedding of image token `token` into x[dim].
    public func embedToken(_ token: Int, into x: UnsafeMutablePointer<Float>) {
        x.update(from: tok_embeddings.data + token * config.dim, count: config.dim)
    }

    /// Writes the class embedding (row `label`; `num_classes` is the null class) into x[dim].
    public func embedClass(_ label: Int, into x: UnsafeMutablePointer<Float>) throws {
        guard let table = cls_embedding_table else { throw ZipARError("this is a t2i model: it takes a caption, not a class") }
        guard label >= 0, label < table.shape[0] else { throw ZipARError("class \(label) is outside 0..<\(config.num_classes)") }
        x.update(from: table.data + label * config.dim, count: config.dim)
    }

    /// Projects caption features [cls_token_num, caption_dim] (fc1 -> GELU(tanh) -> fc2) into x[cls_token_num, dim].
    public func embedCaption(_ features: UnsafePointer<Float>, into x: UnsafeMutablePointer<Float>) throws {
        guard let fc1 = cap_proj_fc1, let fc2 = cap_proj_fc2 else { throw ZipARError("this is a c2i model: it takes a class, not a caption") }
        let n = config.cls_token_num
        let h = Tensor(shape: [n, config.dim])
        fc1.apply(features, rows: n, into: h.data)
        Ops.geluTanh(h.data, count: h.count)
        fc2.apply(h.data, rows: n, into: x)
    }

    // MARK: forward

    /// One forward pass over R input rows whose embeddings are in `state.x[0..<R]`.
    /// Row r sits at sequence position `positions[r]` of batch entry `batchOf[r]` (CFG: 0 cond, 1 uncond).
    /// All new keys/values are written to the cache first, then every query attends to the visible slots
    /// <= its position. Logits of the rows listed in `logitRows` go to `state.logits` in that order.
    public func forward(state: ForwardState, cache: KVCache, positions: [Int], batchOf: [Int],
                        visibility: AttentionVisibility, logitRows: [Int]) {
        let R = positions.count
        precondition(R <= state.maxRows && logitRows.count <= state.maxRows && batchOf.count == R)
        let c = config, d = c.dim, hd = c.headDim, nh = c.n_head, nkv = c.kvHeads, hidden = c.ffnHidden
        let qkvW = (nh + 2 * nkv) * hd
        let x = state.x.data, xb = state.xb.data, qkv = state.qkv.data, att = state.att.data
        let h1 = state.h1.data, h3 = state.h3.data

        for p in positions { cache.markWritten(p) }
        buildMasks(state: state, cache: cache, positions: positions, visibility: visibility)
        cache.beginPass(positions: positions, batchOf: batchOf, masks: state.mask)
        // Rows of each batch entry (a pass lists cond rows, then uncond rows), for grouped attention.
        let rowsOf: [[Int]] = (0...(batchOf.max() ?? 0)).map { b in positions.indices.filter { batchOf[$0] == b } }

        let prof = PassProfiler.current
        prof?.start()
        for (li, layer) in layers.enumerated() {
            Ops.rmsNorm(x, layer.attention_norm.data, xb, rows: R, dim: d, eps: c.norm_eps)
            layer.wqkv.apply(xb, rows: R, into: qkv)
            prof?.lap("wqkv")
            // RoPE on Q and K heads, then store K and V at each row's slot.
            for r in 0..<R {
                let row = qkv + r * qkvW, pos = positions[r], b = batchOf[r]
                for h in 0..<(nh + nkv) { rope.apply(row + h * hd, pos: pos) }
                for h in 0..<nkv {
                    cache.store(b, li, h, slot: pos, key: row + d + h * hd, value: row + d + nkv * hd + h * hd)
                }
            }
            prof?.lap("rope+cache")
            attention(state: state, cache: cache, layer: li, positions: positions, rowsOf: rowsOf,
                      keysEnd: visibility.drawn ? cache.writtenEnd : 0)
            prof?.lap("attention")
            layer.wo.apply(att, rows: R, into: xb)
            Ops.add(x, xb, count: R * d)
            prof?.lap("wo")

            Ops.rmsNorm(x, layer.ffn_norm.data, xb, rows: R, dim: d, eps: c.norm_eps)
            layer.w1.apply(xb, rows: R, into: h1)
            layer.w3.apply(xb, rows: R, into: h3)
            prof?.lap("w1+w3")
            Ops.swiGLU(h1, h3, count: R * hidden)
            layer.w2.apply(h1, rows: R, into: xb)
            Ops.add(x, xb, count: R * d)
            prof?.lap("w2")
        }
        // Final norm only for the rows whose logits are wanted.
        for (i, r) in logitRows.enumerated() {
            Ops.rmsNorm(x + r * d, norm.data, xb + i * d, rows: 1, dim: d, eps: c.norm_eps)
        }
        if !logitRows.isEmpty { output.apply(xb, rows: logitRows.count, into: state.logits.data) }
        prof?.lap("output")
        prof?.passes += 1
    }

    /// mask[r][j] = 1 when the query of row r may attend to slot j (rows are cleared to the end).
    private func buildMasks(state: ForwardState, cache: KVCache, positions: [Int], visibility: AttentionVisibility) {
        let S = cache.slots, cls = config.cls_token_num
        for (r, p) in positions.enumerated() {
            let m = state.mask + r * S
            // Drawn: image queries see the written slots after their own too (the prefix stays causal).
            let end = visibility.drawn && p >= cls ? max(p, cache.writtenEnd - 1) : p
            for j in 0...end {
                var ok = visibility.holes || cache.written[j]
                if j < cls, let cap = visibility.captionMask, !cap[j], j != p { ok = false }
                m[j] = ok ? 1 : 0
            }
            if end + 1 < S { (m + end + 1).update(repeating: 0, count: S - end - 1) }
        }
    }

    /// Multi-head attention. Queries that read the same cache head (same batch entry, same KV head:
    /// every row of the pass and, with GQA, every query head of the group) are handled together, so
    /// each key and value row is read once per pass instead of once per query. Groups are split
    /// across workers. Keys run to the last query's slot, or to `keysEnd` when larger (drawn attention).
    private func attention(state: ForwardState, cache: KVCache, layer: Int, positions: [Int], rowsOf: [[Int]], keysEnd: Int) {
        let c = config, hd = c.headDim, nh = c.n_head, nkv = c.kvHeads
        let qkvW = (nh + 2 * nkv) * hd, group = nh / nkv, S = cache.slots
        let scale = 1 / Float(hd).squareRoot(), sab = c.usesSAB
        let B = rowsOf.count
        let qkv = state.qkv.data, att = state.att.data, mask = state.mask, scores = state.scores.data
        let work = positions.reduce(0) { $0 + $1 } * nh * hd
        let perPart = state.scores.count / max(1, state.scores.shape[0])
        // One chunk per (batch entry, KV head); scratch buffers are per worker thread.
        let jobs = B * nkv
        Parallel.run(chunks: work > 200_000 ? jobs : 1) { chunk, chunks, worker in
            let sc = scores + worker * perPart
            let offsets = state.maskOffsets + worker * state.maxRows * group
            let qslots = state.querySlots + worker * state.maxRows * group
            let qbuf = state.qGather.data + worker * state.maxRows * nh * hd
            let obuf = state.oGather.data + worker * state.maxRows * nh * hd
            for job in (chunks == 1 ? 0..<jobs : chunk..<(chunk + 1)) {
                let b = job / nkv, g = job % nkv, rows = rowsOf[b]
                guard !rows.isEmpty else { continue }
                let n = max(rows.map { positions[$0] }.max()! + 1, keysEnd)
                // Query i = (row rows[i / group], head g*group + i % group); q and out rows are hd apart within a row.
                for (ri, r) in rows.enumerated() {
                    for h in 0..<group { offsets[ri * group + h] = Int32(r * S); qslots[ri * group + h] = Int32(positions[r]) }
                }
                let nq = rows.count * group
                // Gather queries into a contiguous block [nq, hd] and scatter results back.
                for (ri, r) in rows.enumerated() {
                    (qbuf + ri * group * hd).update(from: qkv + r * qkvW + g * group * hd, count: group * hd)
                }
                // The cache reads its own stored form (dense, or one dequantized block at a time).
                cache.attend(b, layer, g, q: qbuf, nq: nq, n: n, masks: mask, maskOffsets: offsets, querySlots: qslots,
                             scale: scale, sab: sab, scores: sc, out: obuf, worker: worker)
                for (ri, r) in rows.enumerated() {
                    (att + r * c.dim + g * group * hd).update(from: obuf + ri * group * hd, count: group * hd)
                }
            }
        }
    }
}

/// Scratch buffers for forward passes of up to `maxRows` rows, allocated once per generation.
public final class ForwardState {
    public let maxRows: Int
    let x, xb, qkv, att, h1, h3, logits, scores: Tensor
    let qGather, oGather: Tensor      // per worker: [maxRows * n_head, head_dim] gathered queries / outputs
    let maskOffsets: UnsafeMutablePointer<Int32>   // per worker: mask row offset of each gathered query
    let querySlots: UnsafeMutablePointer<Int32>    // per worker: cache slot of each gathered query
    let mask: UnsafeMutablePointer<UInt8>

    public init(config: GPTConfig, maxRows: Int, slots: Int) {
        self.maxRows = maxRows
        let d = config.dim
        x = Tensor(shape: [maxRows, d]); xb = Tensor(shape: [maxRows, d]); att = Tensor(shape: [maxRows, d])
        qkv = Tensor(shape: [maxRows, (config.n_head + 2 * config.kvHeads) * config.headDim])
        h1 = Tensor(shape: [maxRows, config.ffnHidden]); h3 = Tensor(shape: [maxRows, config.ffnHidden])
        logits = Tensor(shape: [maxRows, config.vocab_size])
        let workers = max(1, Parallel.threads)
        // Attention scratch per worker: scores of up to maxRows * (query heads per KV head) queries.
        scores = Tensor(shape: [workers, maxRows * (config.n_head / config.kvHeads) * slots])
        qGather = Tensor(shape: [workers, maxRows * config.n_head * config.headDim])
        oGather = Tensor(shape: [workers, maxRows * config.n_head * config.headDim])
        let group = config.n_head / config.kvHeads
        maskOffsets = UnsafeMutablePointer<Int32>.allocate(capacity: workers * maxRows * group)
        maskOffsets.initialize(repeating: 0, count: workers * maxRows * group)
        querySlots = UnsafeMutablePointer<Int32>.allocate(capacity: workers * maxRows * group)
        querySlots.initialize(repeating: 0, count: workers * maxRows * group)
        mask = UnsafeMutablePointer<UInt8>.allocate(capacity: maxRows * slots)
        mask.initialize(repeating: 0, count: maxRows * slots)
    }

    deinit { mask.deallocate(); maskOffsets.deallocate(); querySlots.deallocate() }

    /// Input embedding row r (write the row's embedding here before `forward`).
    public func input(_ r: Int) -> UnsafeMutablePointer<Float> { x.data + r * x.shape[1] }
    /// Logits of the i-th requested row after `forward`.
    public func logits(_ i: Int) -> UnsafeMutablePointer<Float> { logits.data + i * logits.shape[1] }
}
