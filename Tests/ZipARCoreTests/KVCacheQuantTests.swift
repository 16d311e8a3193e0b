import CKernels
import XCTest
@testable import ZipARCore

/// ZipCache against the official code's outputs (../shared/fixtures/quant/zipcache.*, README section 1).
final class ZipCacheFixtureTests: XCTestCase {
    let H = 4, L = 40, D = 16
    var C: Int { H * D }

    func load() throws -> (SafeTensorsFile, [String: Any]) {
        (try Fixtures.safetensors("quant/zipcache.safetensors"), try Fixtures.json("quant/zipcache.json"))
    }

    func u8(_ f: SafeTensorsFile, _ name: String) throws -> [UInt8] { try f.ints(name).map { UInt8($0) } }
    func floats(_ f: SafeTensorsFile, _ name: String) throws -> [Float] { let t = try f.tensor(name); return Array(UnsafeBufferPointer(start: t.data, count: t.count)) }

    func assertClose(_ a: [Float], _ b: [Float], atol: Float = 0, rtol: Float = 0, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        var worst: Float = 0
        for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) - rtol * abs(y)) }
        XCTAssertLessThanOrEqual(worst, atol, "\(what): worst excess \(worst)", file: file, line: line)
    }

    /// Our own softmax(q k^T / sqrt(D) + causal mask) matches the fixture's attention probabilities.
    func testAttentionProbabilities() throws {
        let (f, _) = try load()
        let q = try floats(f, "q"), k = try floats(f, "k"), probs = try floats(f, "attn_probs")
        var mine = [Float](repeating: 0, count: H * L * L)
        for h in 0..<H { for r in 0..<L {
            var s = [Double](repeating: 0, count: r + 1)
            for j in 0...r { for d in 0..<D { s[j] += Double(q[(h * L + r) * D + d]) * Double(k[(h * L + j) * D + d]) }; s[j] /= 4 }
            let m = s.max()!, e = s.map { exp($0 - m) }, z = e.reduce(0, +)
            for j in 0...r { mine[(h * L + r) * L + j] = Float(e[j] / z) }
        } }
        assertClose(mine, probs, atol: 1e-6, "attn_probs")
    }

    /// Scores, split ids, codes, packed bytes, parameters and dequantized K/V of the three variants.
    func testEveryVariantMatchesOfficialCode() throws {
        let (f, json) = try load()
        let k = try floats(f, "k"), v = try floats(f, "v"), probs = try floats(f, "attn_probs")
        let probeIds = (json["probe_ids"] as! [NSNumber]).map { $0.intValue }
        XCTAssertEqual(Array(probeIds.prefix(2)), ZipCache.recentProbeRows(L), "the official recent probes are the last 5%")
        XCTAssertEqual(ZipCache.regularCount(L), json["n_regular"] as? Int)

        var exactScores: [[Float]] = []
        for variant in ["exact", "probe", "shared"] {
            let P = variant + "_"
            var salient: [[Int]] = [], regular: [[Int]] = []
            if variant == "shared" {
                // Head-agnostic: the exact score summed over heads, one split for every head.
                var s = [Float](repeating: 0, count: L)
                for h in 0..<H { for i in 0..<L { s[i] += exactScores[h][i] } }
                assertClose(s, try floats(f, "shared_score"), atol: 1e-6, "shared_score")
                let (sal, reg) = ZipCache.split(scores: s)
                salient = Array(repeating: sal, count: H); regular = Array(repeating: reg, count: H)
            } else {
                var scores: [Float] = []
                for h in 0..<H {
                    let rows = variant == "exact" ? Array(0..<L) : probeIds
                    let s = probs.withUnsafeBufferPointer { ZipCache.causalScore(probs: $0.baseAddress! + h * L * L, length: L, probeRows: rows) }
                    if variant == "exact" { exactScores.append(s) }
                    scores += s
                    let (sal, reg) = ZipCache.split(scores: s)
                    salient.append(sal); regular.append(reg)
                }
                assertClose(scores, try floats(f, P + "score"), atol: 1e-6, P + "score")
            }
            // Split ids: exact, regular in ascending-score order.
            let sal = try f.ints(P + "important_ids"), reg = try f.ints(P + "unimportant_ids")
            XCTAssertEqual(salient.flatMap { $0 }, sal, P + "important_ids")
            XCTAssertEqual(regular.flatMap { $0 }, reg, P + "unimportant_ids")

            let out = ZipCache.compress(keys: k, values: v, heads: H, length: L, headDim: D, salientIds: salient, regularIds: regular)
            for (set, name, bits) in [(out.salient, "sal", 4), (out.regular, "reg", 2)] {
                XCTAssertEqual(set.keyCodes, try u8(f, P + "k_\(name)_codes"), P + "k_\(name)_codes")
                XCTAssertEqual(set.valueCodes, try u8(f, P + "v_\(name)_codes"), P + "v_\(name)_codes")
                assertClose(set.keyMin, try floats(f, P + "k_\(name)_min"), rtol: 1e-6, P + "k_\(name)_min")
                assertClose(set.keyStep, try floats(f, P + "k_\(name)_step"), rtol: 1e-6, P + "k_\(name)_step")
                assertClose(set.valueMin, try floats(f, P + "v_\(name)_min"), rtol: 1e-6, P + "v_\(name)_min")
                assertClose(set.valueStep, try floats(f, P + "v_\(name)_step"), rtol: 1e-6, P + "v_\(name)_step")
                // Official packing along the 64 flattened channels of a row.
                for (codes, tensor) in [(set.keyCodes, "k"), (set.valueCodes, "v")] {
                    let rows = codes.count / C, rb = KVQuant.packedBytes(bits: bits, d: C)
                    var packed = [UInt8](repeating: 0, count: rows * rb)
                    for r in 0..<rows { codes.withUnsafeBufferPointer { c in packed.withUnsafeMutableBufferPointer { p in
                        KVQuant.pack(c.baseAddress! + r * C, bits: bits, d: C, into: p.baseAddress! + r * rb) } } }
                    XCTAssertEqual(packed, try u8(f, P + "\(tensor)_\(name)_packed"), P + "\(tensor)_\(name)_packed")
                    var back = [UInt8](repeating: 0, count: codes.count)
                    for r in 0..<rows { packed.withUnsafeBufferPointer { p in back.withUnsafeMutableBufferPointer { c in
                        KVQuant.unpack(p.baseAddress! + r * rb, bits: bits, d: C, into: c.baseAddress! + r * C) } } }
                    XCTAssertEqual(back, codes, "unpack inverts pack")
                }
            }
            assertClose(out.channelScale, try floats(f, P + "v_channel_scale"), rtol: 1e-6, P + "v_channel_scale")
            assertClose(out.keyDequant, try floats(f, P + "k_dequant"), atol: 1e-5, P + "k_dequant")
            assertClose(out.valueDequant, try floats(f, P + "v_dequant"), atol: 1e-5, P + "v_dequant")
        }
    }
}

/// The streaming block-quantized caches: kernels against naive references, ZipAR-aware saliency,
/// and the model's logits against the fp32 cache.
final class KVCacheQuantTests: XCTestCase {
    func randomKV(_ rng: inout RNG, _ n: Int) -> [Float] { (0..<n).map { _ in rng.nextNormal() } }

    /// The C dequantizers rebuild what the Swift quantizer encoded (fp16 parameters, planar codes,
    /// permuted ids): every element is within half a step of the input (plus fp16 rounding).
    func testDequantKernelsMatchQuantizer() {
        defer { ck_avx512_enabled = 1 }
        for avx512 in [Int32(1), 0] {
            ck_avx512_enabled = avx512
            checkDequantKernels()
        }
    }

    func checkDequantKernels() {
        var rng = RNG(seed: 5)
        for d in [16, 64, 100, 128] {
            for bits in [2, 4, 8] {
                let rows = 12, x = randomKV(&rng, rows * d)
                // Channel-wise, rows written to permuted slots.
                var codes = [UInt8](repeating: 0, count: rows * d), mins = [Float](repeating: 0, count: d), steps = mins
                KVQuant.channelwise(x, rows: rows, d: d, ld: d, bits: bits, codes: &codes, mins: &mins, steps: &steps, round: KVQuant.toHalf)
                let rb = KVQuant.packedBytes(bits: bits, d: d)
                var packed = [UInt8](repeating: 0, count: rows * rb)
                for r in 0..<rows { codes.withUnsafeBufferPointer { c in packed.withUnsafeMutableBufferPointer { p in
                    KVQuant.pack(c.baseAddress! + r * d, bits: bits, d: d, into: p.baseAddress! + r * rb) } } }
                let ids: [UInt16] = (0..<rows).map { UInt16((rows - 1 - $0 * 5 % rows + rows) % rows) }
                XCTAssertEqual(Set(ids).count, rows)
                var out = [Float](repeating: .nan, count: rows * d)
                let mh = mins.map { Float16($0).bitPattern }, sh = steps.map { Float16($0).bitPattern }
                ck_kv_dequant_channel(packed, Int32(bits), Int32(rows), Int32(d), mh, sh, ids, &out)
                for r in 0..<rows { for c in 0..<d {
                    let want = Float(codes[r * d + c]) * steps[c] + mins[c]
                    XCTAssertEqual(out[Int(ids[r]) * d + c], want, accuracy: 1e-6 * max(1, abs(want)), "channel d=\(d) bits=\(bits)")
                    XCTAssertLessThanOrEqual(abs(want - x[r * d + c]), steps[c] / 2 + 2e-3 * (abs(x[r * d + c]) + 1), "channel error bound")
                } }
                // Token-wise with groups and a channel scale.
                let g = d % 32 == 0 ? 32 : d, G = d / g
                var tparams = [UInt16](repeating: 0, count: rows * 2 * G), tcodes = [UInt8](repeating: 0, count: rows * d)
                var expect = [Float](repeating: 0, count: rows * d)
                let cs = (0..<d).map { _ in Float(Float16(0.5 + abs(rng.nextNormal()))) }
                for r in 0..<rows {
                    var m = [Float](repeating: 0, count: G), s = m
                    x.withUnsafeBufferPointer { xp in tcodes.withUnsafeMutableBufferPointer { cp in
                        KVQuant.tokenwise(xp.baseAddress! + r * d, d: d, group: g, bits: bits, codes: cp.baseAddress! + r * d,
                                          mins: &m, steps: &s, round: KVQuant.toHalf) } }
                    for i in 0..<G { tparams[r * 2 * G + i] = Float16(m[i]).bitPattern; tparams[r * 2 * G + G + i] = Float16(s[i]).bitPattern }
                    for c in 0..<d { expect[r * d + c] = (Float(tcodes[r * d + c]) * s[c / g] + m[c / g]) * cs[c] }
                }
                var tpacked = [UInt8](repeating: 0, count: rows * rb)
                for r in 0..<rows { tcodes.withUnsafeBufferPointer { c in tpacked.withUnsafeMutableBufferPointer { p in
                    KVQuant.pack(c.baseAddress! + r * d, bits: bits, d: d, into: p.baseAddress! + r * rb) } } }
                var tout = [Float](repeating: .nan, count: rows * d)
                ck_kv_dequant_token(tpacked, Int32(bits), Int32(rows), Int32(d), Int32(g), tparams, Int32(2 * G),
                                    cs.map { Float16($0).bitPattern }, nil, &tout)
                for i in 0..<(rows * d) { XCTAssertEqual(tout[i], expect[i], accuracy: 1e-5 * max(1, abs(expect[i])), "token d=\(d) bits=\(bits)") }
            }
        }
    }

    /// ck_f16_to_f32 (F16C and the portable tail) is exact for every half, subnormals, infinities and NaNs included.
    func testHalfToFloatEveryBitPattern() {
        let all = (0..<65536).map { UInt16($0) }
        for n in [65536, 65531] {
            var out = [Float](repeating: 0, count: n)
            ck_f16_to_f32(all, &out, Int32(n))
            for i in 0..<n {
                let want = Float(Float16(bitPattern: all[i]))
                XCTAssert(want.isNaN ? out[i].isNaN : out[i].bitPattern == want.bitPattern, "half \(all[i])")
            }
        }
    }

    /// Attention on the codes (ck_kv_scores_channel, ck_kv_values_token) equals attention on the dequantized
    /// rows (ck_kv_dequant_*, checked above against the quantizer), for the AVX-512 and the portable paths:
    /// permuted ids, rows past len skipped, zero probabilities, 1-9 queries, groups, a channel scale.
    func testAttentionOnCodesMatchesDequantized() {
        defer { ck_avx512_enabled = 1 }
        for avx512 in [Int32(1), 0] {
            ck_avx512_enabled = avx512
            var rng = RNG(seed: 9)
            for d in [16, 64, 100] {
                for bits in [2, 4, 8] {
                    let rows = 37, len = 30, ld = 41, rb = KVQuant.packedBytes(bits: bits, d: d)
                    let packed = (0..<(rows * rb)).map { _ in UInt8(truncatingIfNeeded: Int(rng.nextNormal() * 1000)) }
                    let ids: [UInt16] = (0..<rows).map { UInt16(($0 * 7 + 3) % rows) }
                    func halves(_ n: Int, _ scale: Float) -> [UInt16] { (0..<n).map { _ in Float16(rng.nextNormal() * scale).bitPattern } }
                    let mn = halves(d, 1), st = halves(d, 0.2)
                    // Keys: scores against the dequantized rows.
                    var K = [Float](repeating: 0, count: rows * d)
                    ck_kv_dequant_channel(packed, Int32(bits), Int32(rows), Int32(d), mn, st, ids, &K)
                    for nq in [1, 3, 9] {
                        let q = (0..<(nq * d)).map { _ in rng.nextNormal() }
                        var got = [Float](repeating: .nan, count: nq * ld)
                        ck_kv_scores_channel(packed, Int32(bits), Int32(rows), Int32(d), mn, st, ids, Int32(len), q, Int32(nq), &got, Int32(ld))
                        for i in 0..<nq { for j in 0..<ld {
                            if j >= len { XCTAssert(got[i * ld + j].isNaN, "slot \(j) >= len is not written"); continue }
                            var want = 0.0, mag = 0.0
                            for c in 0..<d { want += Double(q[i * d + c]) * Double(K[j * d + c]); mag += abs(Double(q[i * d + c]) * Double(K[j * d + c])) }
                            XCTAssertEqual(Double(got[i * ld + j]), want, accuracy: 1e-5 * max(1, mag), "scores d=\(d) bits=\(bits) nq=\(nq) avx512=\(avx512)")
                        } }
                    }
                    // Token-wise keys (int8's layout: per row G mins then G steps), one group per row and several.
                    for g in [d, d % 16 == 0 ? 16 : d] {
                        let G = d / g, params = halves(rows * 2 * G, 0.3)
                        var Kt = [Float](repeating: 0, count: rows * d)
                        ck_kv_dequant_token(packed, Int32(bits), Int32(rows), Int32(d), Int32(g), params, Int32(2 * G), nil, ids, &Kt)
                        for nq in [1, 3, 17] {
                            let q = (0..<(nq * d)).map { _ in rng.nextNormal() }
                            var got = [Float](repeating: .nan, count: nq * ld)
                            ck_kv_scores_token(packed, Int32(bits), Int32(rows), Int32(d), Int32(g), params, Int32(2 * G), ids, Int32(len),
                                               q, Int32(nq), &got, Int32(ld))
                            for i in 0..<nq { for j in 0..<ld {
                                if j >= len { XCTAssert(got[i * ld + j].isNaN, "slot \(j) >= len is not written"); continue }
                                var want = 0.0, mag = 0.0
                                for c in 0..<d { want += Double(q[i * d + c]) * Double(Kt[j * d + c]); mag += abs(Double(q[i * d + c]) * Double(Kt[j * d + c])) }
                                XCTAssertEqual(Double(got[i * ld + j]), want, accuracy: 1e-5 * max(1, mag), "token keys d=\(d) bits=\(bits) g=\(g) nq=\(nq) avx512=\(avx512)")
                            } }
                        }
                    }
                    // Values: token-wise groups, with and without a channel scale.
                    for (g, scaled) in [(d, true), (d % 32 == 0 ? 32 : d, false), (d % 16 == 0 ? 16 : d, true)] {
                        let G = d / g, params = halves(rows * 2 * G, 0.5), cs = scaled ? halves(d, 1) : nil
                        var Vd = [Float](repeating: 0, count: rows * d)
                        ck_kv_dequant_token(packed, Int32(bits), Int32(rows), Int32(d), Int32(g), params, Int32(2 * G), cs, ids, &Vd)
                        for nq in [1, 2, 3, 4, 5, 9] {
                            // Probabilities with zeros, some rows zero for every query.
                            let p = (0..<(nq * ld)).map { k in k % ld % 5 == 2 ? Float(0) : abs(rng.nextNormal()) / Float(len) }
                            let start = (0..<(nq * d)).map { _ in rng.nextNormal() }
                            var got = start
                            ck_kv_values_token(packed, Int32(bits), Int32(rows), Int32(d), Int32(g), params, Int32(2 * G), cs, ids, Int32(len),
                                               p, Int32(nq), Int32(ld), &got)
                            for i in 0..<nq { for c in 0..<d {
                                var want = Double(start[i * d + c]), mag = abs(want)
                                for j in 0..<len { want += Double(p[i * ld + j]) * Double(Vd[j * d + c]); mag += abs(Double(p[i * ld + j]) * Double(Vd[j * d + c])) }
                                XCTAssertEqual(Double(got[i * d + c]), want, accuracy: 1e-5 * max(1, mag), "values d=\(d) bits=\(bits) g=\(g) nq=\(nq) avx512=\(avx512)")
                            } }
                        }
                    }
                }
            }
        }
    }

    /// A cache of every quantized kind, filled out of order with random K/V: each sealed block
    /// rebuilds the input within the quantization error, ZipCache's blocks equal the fixture-verified
    /// reference `ZipCache.compress` on the same split (up to fp16 parameter rounding), and attention
    /// over the compressed form equals naive attention over the dequantized block + fp16 recent slots.
    func testStreamingCacheBlocksAndAttention() {
        // Both with a condition prefix block of zero keys (stored without key codes).
        checkStreamingCache(hd: 16, prefix: 5)   // dequantize-to-scratch attention
        checkStreamingCache(hd: 64, prefix: 9)   // attention on the codes (AVX-512 machines)
    }

    /// The condition prefix is a block of its own: its keys, exactly zero after LlamaGen's zero RoPE
    /// angles, stay exactly zero in the sealed form. In a block shared with image keys they would not.
    func testPrefixBlockKeepsZeroKeys() {
        let hd = 16, heads = 2, slots = 60, prefix = 7
        var opts = KVCacheOptions(); opts.zipBlock = 20; opts.kiviGroup = 16
        for kind in [KVCacheKind.kivi2, .kivi4, .zipcache, .int8] {
            for prefixSlots in [prefix, 0] {
                var rng = RNG(seed: 5)
                let cache = KVCache(batch: 1, layers: 1, kvHeads: heads, slots: slots, headDim: hd, prefixSlots: prefixSlots, kind: kind, options: opts)
                let q = cache.storage as! QuantizedKV
                XCTAssertEqual(q.blocks.first?.count, prefixSlots == 0 ? q.blockSize : prefix, "\(kind): the prefix is block 0")
                if prefixSlots > 0 { XCTAssertEqual(q.blocks[1].start, prefix, "\(kind): image blocks start after the prefix") }
                var K = [Float](repeating: 0, count: heads * slots * hd), V = K
                for h in 0..<heads { for s in prefix..<slots { for d in 0..<hd { K[(h * slots + s) * hd + d] = rng.nextNormal() + 0.5 } } }
                for h in 0..<heads { for s in 0..<slots { for d in 0..<hd { V[(h * slots + s) * hd + d] = rng.nextNormal() } } }
                let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: slots); defer { masks.deallocate() }
                for s in 0..<slots {
                    for h in 0..<heads {
                        K.withUnsafeBufferPointer { kp in V.withUnsafeBufferPointer { vp in
                            cache.store(0, 0, h, slot: s, key: kp.baseAddress! + (h * slots + s) * hd, value: vp.baseAddress! + (h * slots + s) * hd) } }
                    }
                    cache.markWritten(s)
                    for j in 0..<slots { masks[j] = j <= s ? 1 : 0 }
                    cache.beginPass(positions: [s], batchOf: [0], masks: masks)
                    cache.markFinal(s)
                    cache.seal()
                }
                XCTAssertGreaterThanOrEqual(q.sealedBlocks, 2)
                // The all-zero keys of the prefix block are not stored at all.
                let first = q.sealedBlock(0, 0, 0).layout
                XCTAssertEqual(first.zeroKeys, prefixSlots > 0, "\(kind): zero-key block")
                if prefixSlots > 0 {
                    let stored = q.layout(setRows: first.setRows, evicted: first.evicted, ids: false)
                    XCTAssertLessThan(first.bytes, stored.bytes, "\(kind): a zero-key block stores no key codes or parameters")
                }
                let held = heldKV(q, cache, 0, 0, 1, n: slots, K: K, V: V) { _, _, h, s in (h * slots + s) * hd }
                let worst = held.k[0..<(prefix * hd)].map(abs).max()!
                if prefixSlots > 0 { XCTAssertEqual(worst, 0, "\(kind): zero prefix keys stay zero") }
                else if kind != .int8 { XCTAssertGreaterThan(worst, 0, "\(kind): sharing a block, zero keys round to the image keys' levels") }
            }
        }
    }

    /// ZipCache's default block is whole image rows near 128 slots, a divisor of the image where one
    /// is near: no short last block pays a full set of channel parameters for a few tokens.
    func testZipCacheDefaultBlockIsWholeRows() {
        XCTAssertEqual(ZipCache.rowBlock(width: 16, imageSlots: 256), 128)
        XCTAssertEqual(ZipCache.rowBlock(width: 64, imageSlots: 4096), 128)
        XCTAssertEqual(ZipCache.rowBlock(width: 24, imageSlots: 576), 144, "6 rows divide 24; 4 rows (96) are further from 128")
        XCTAssertEqual(ZipCache.rowBlock(width: 32, imageSlots: 1024), 128)
        XCTAssertEqual(ZipCache.rowBlock(width: 23, imageSlots: 529), 138, "23 rows have no divisor near 128 slots: 6 whole rows")
        XCTAssertEqual(ZipCache.rowBlock(width: 300, imageSlots: 90_000), 300, "one row when a row is longer than the block")
        XCTAssertEqual(ZipCache.rowBlock(width: 0, imageSlots: 576), ZipCache.nominalBlock)
        // Made through the model config (24x24 grid, one class token): the prefix block, then 4 blocks of 6 rows.
        let cache = KVCache(batch: 1, layers: 1, kvHeads: 1, slots: 577, headDim: 16, prefixSlots: 1, gridWidth: 24, kind: .zipcache)
        let q = cache.storage as! QuantizedKV
        XCTAssertEqual(q.blocks.map(\.count), [1, 144, 144, 144, 144])
        var opts = KVCacheOptions(); opts.zipBlock = 128
        let fixed = KVCache(batch: 1, layers: 1, kvHeads: 1, slots: 577, headDim: 16, prefixSlots: 1, gridWidth: 24, kind: .zipcache, options: opts)
        XCTAssertEqual((fixed.storage as! QuantizedKV).blocks.map(\.count), [1, 128, 128, 128, 128, 64], "--zipcache-block overrides")
    }

    /// Writing far ahead of the oldest open block grows the fp16 recent buffer to what is needed
    /// (rounded up to 16 slots, by at least 1/8, not by 1.5x) and keeps every slot written before the growth.
    func testRecentBufferGrowsToNeedAndKeepsSlots() {
        let hd = 16, heads = 2, slots = 300
        var opts = KVCacheOptions(); opts.kiviGroup = 16
        for kind in [KVCacheKind.kivi4, .zipcache] {
            var rng = RNG(seed: 3)
            let cache = KVCache(batch: 1, layers: 1, kvHeads: heads, slots: slots, headDim: hd, kind: kind, options: opts)
            let q = cache.storage as! QuantizedKV
            let first = q.cap
            let K = randomKV(&rng, heads * slots * hd), V = randomKV(&rng, heads * slots * hd)
            let written = Array(0..<10) + [150, 151, 250]
            for s in written {
                for h in 0..<heads {
                    cache.store(0, 0, h, slot: s, key: Array(K[((h * slots + s) * hd)..<((h * slots + s + 1) * hd)]),
                                value: Array(V[((h * slots + s) * hd)..<((h * slots + s + 1) * hd)]))
                }
                cache.markWritten(s)
            }
            XCTAssertGreaterThan(q.cap, first, "\(kind): the buffer grew")
            XCTAssertEqual(q.cap, 256, "\(kind): grown to slot 250 + 1, rounded up to 16")
            // One query at slot 250 sees every written slot: attention over the grown buffer = naive fp16 attention.
            let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: slots); defer { masks.deallocate() }
            for j in 0..<slots { masks[j] = written.contains(j) ? 1 : 0 }
            cache.beginPass(positions: [250], batchOf: [0], masks: masks)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: slots); defer { scores.deallocate() }
            for h in 0..<heads {
                let qv = randomKV(&rng, hd)
                var out = [Float](repeating: 0, count: hd), offs: [Int32] = [0], qs: [Int32] = [250]
                cache.attend(0, 0, h, q: qv, nq: 1, n: 251, masks: masks, maskOffsets: &offs, querySlots: &qs, scale: 0.25, sab: false,
                             scores: scores, out: &out, worker: 0)
                var e = [Double](repeating: 0, count: slots), z = 0.0
                for j in written {
                    var dot = 0.0
                    for d in 0..<hd { dot += Double(qv[d]) * Double(Float(Float16(K[(h * slots + j) * hd + d]))) }
                    e[j] = exp(dot * 0.25); z += e[j]
                }
                for d in 0..<hd {
                    var o = 0.0
                    for j in written { o += e[j] / z * Double(Float(Float16(V[(h * slots + j) * hd + d]))) }
                    XCTAssertEqual(out[d], Float(o), accuracy: 1e-4, "\(kind) head \(h): slots kept across the growth")
                }
            }
        }
    }

    func checkStreamingCache(hd: Int, prefix: Int) {
        let heads = 2, slots = 70, batch = 2
        var opts = KVCacheOptions(); opts.zipBlock = 20; opts.kiviGroup = 16
        for (kind, tau, merge) in [(KVCacheKind.int8, nil, false), (.kivi2, nil, false), (.kivi4, nil, false), (.zipcache, nil, false),
                                   (.kivi4, 0.9, false), (.zipcache, 0.8, false), (.kivi4, nil, true), (.zipcache, 0.9, true)] as [(KVCacheKind, Double?, Bool)] {
            var rng = RNG(seed: 11)
            opts.zipvlTau = tau; opts.miniCache = merge
            // MiniCache merges from half depth: 4 layers give one merged pair (2, 3).
            let layers = merge ? 4 : 2
            let cache = KVCache(batch: batch, layers: layers, kvHeads: heads, slots: slots, headDim: hd, prefixSlots: prefix, kind: kind, options: opts)
            let q = cache.storage as! QuantizedKV
            var K = [Float](repeating: 0, count: batch * layers * heads * slots * hd), V = K
            func idx(_ b: Int, _ l: Int, _ h: Int, _ s: Int) -> Int { (((b * layers + l) * heads + h) * slots + s) * hd }
            // Outlier channels, as real keys have.
            for b in 0..<batch { for l in 0..<layers { for h in 0..<heads { for s in 0..<slots { for d in 0..<hd {
                K[idx(b, l, h, s) + d] = s < prefix ? 0 : rng.nextNormal() * (d == 3 ? 6 : 1) + (d == 3 ? 4 : 0)
                V[idx(b, l, h, s) + d] = rng.nextNormal() * (d == 7 ? 5 : 1)
            } } } } }
            // Write in a scrambled order within windows of 8 (like ZipAR), sealing as slots become final.
            var order: [Int] = []
            for w in stride(from: 0, to: slots, by: 8) { order += (w..<min(slots, w + 8)).reversed() }
            let S = slots
            let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: 4 * S); defer { masks.deallocate() }
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: 8 * S); defer { scores.deallocate() }
            var outQ = [Float](repeating: 0, count: 4 * hd)
            var naiveAcc = [Float](repeating: 0, count: batch * layers * slots), naiveCount = [Int](repeating: 0, count: batch * slots)
            var worstAttention: Float = 0
            for (step, s) in order.enumerated() {
                for b in 0..<batch { for l in 0..<layers { for h in 0..<heads {
                    K.withUnsafeBufferPointer { kp in V.withUnsafeBufferPointer { vp in
                        cache.store(b, l, h, slot: s, key: kp.baseAddress! + idx(b, l, h, s), value: vp.baseAddress! + idx(b, l, h, s)) } }
                } } }
                cache.markWritten(s)
                // Two queries per batch entry: at this slot and at the highest written slot.
                let top = order[0...step].max()!
                let qpos = [s, top]
                var positions: [Int] = [], batchOf: [Int] = []
                for b in 0..<batch { for p in qpos { positions.append(p); batchOf.append(b) } }
                for (r, p) in positions.enumerated() {
                    for j in 0..<S { masks[r * S + j] = j <= p && cache.written[j] ? 1 : 0 }
                    for j in 0...p where masks[r * S + j] != 0 { naiveCount[batchOf[r] * slots + j] += 1 }
                }
                cache.beginPass(positions: positions, batchOf: batchOf, masks: masks)
                let n = top + 1
                for b in 0..<batch { for l in 0..<layers { for h in 0..<heads {
                    let qv = randomKV(&rng, 2 * hd)
                    var offs: [Int32] = [Int32((b * 2) * S), Int32((b * 2 + 1) * S)], qs: [Int32] = qpos.map { Int32($0) }
                    cache.attend(b, l, h, q: qv, nq: 2, n: n, masks: masks, maskOffsets: &offs, querySlots: &qs, scale: 0.25, sab: false,
                                 scores: scores, out: &outQ, worker: 0)
                    // Naive attention over what the cache holds: dequantized sealed blocks, fp16 recent slots.
                    let held = heldKV(q, cache, b, l, h, n: n, K: K, V: V, idx: idx)
                    for i in 0..<2 {
                        var sc = [Double](repeating: -.infinity, count: n)
                        for j in 0..<n where masks[Int(offs[i]) + j] != 0 && !held.evicted.contains(j) {
                            var dot = 0.0
                            for d in 0..<hd { dot += Double(qv[i * hd + d]) * Double(held.k[j * hd + d]) }
                            sc[j] = dot * 0.25
                        }
                        let m = sc.max()!, e = sc.map { $0 == -.infinity ? 0 : exp($0 - m) }, z = e.reduce(0, +)
                        for j in 0..<n { naiveAcc[(b * layers + l) * slots + j] += Float(e[j] / z) }
                        for d in 0..<hd {
                            var o = 0.0
                            for j in 0..<n { o += e[j] / z * Double(held.v[j * hd + d]) }
                            worstAttention = max(worstAttention, abs(Float(o) - outQ[i * hd + d]))
                        }
                    }
                } } }
                cache.markFinal(s)
                let before = q.sealedBlocks
                // Check the normalised score against the naive one before the block is sealed.
                var blockScores: [[Float]] = []
                if q.scored, before < q.blocks.count {
                    let blk = q.blocks[before]
                    if blk.start + blk.count <= cache.finalUpTo && blk.start + blk.count <= q.recentHigh {
                        for b in 0..<batch { for l in 0..<layers {
                            var mine = [Float](), naive = [Float]()
                            for t in 0..<blk.count {
                                var a: Float = 0
                                for h in 0..<heads { a += q.acc[q.headIndex(b, l, h) * q.cap + t] }
                                let c = Float(q.counts[b * slots + blk.start + t])
                                XCTAssertEqual(Int(c), naiveCount[b * slots + blk.start + t], "queries per slot are counted")
                                mine.append(a / c); naive.append(naiveAcc[(b * layers + l) * slots + blk.start + t] / c)
                            }
                            for (x, y) in zip(mine, naive) { XCTAssertEqual(x, y, accuracy: 2e-4 * max(1, y), "normalised score") }
                            blockScores.append(mine)
                        } }
                    }
                }
                cache.seal()
                if q.sealedBlocks > before {
                    checkSealed(q, kind, zipvl: tau != nil, blockIndex: q.sealedBlocks - 1, K: K, V: V, idx: idx)
                    if merge { XCTAssertNotNil(q.merged[(0 * layers + 2) * q.blocks.count + before], "layers 2 and 3 are merged") }
                    if let tau {
                        // ZipVL keeps the fewest top-score tokens covering tau of the block's total.
                        for b in 0..<batch { for l in 0..<layers where q.pair(l)?.second != true {
                            let sb = q.sealedBlock(b, l, before), sc = blockScores[b * layers + l]
                            let kept = (0..<sb.layout.kept).map { Float(sc[Int(sb.ids![$0])]) }.sorted(by: >)
                            let evicted = (sb.layout.kept..<(sb.layout.kept + sb.layout.evicted)).map { sc[Int(sb.ids![$0])] }
                            let total = sc.reduce(0, +)
                            XCTAssertGreaterThanOrEqual(Double(kept.reduce(0, +)), tau * Double(total) * 0.99999, "covers tau")
                            XCTAssertLessThan(Double(kept.dropLast().reduce(0, +)), tau * Double(total), "fewest tokens")
                            XCTAssertGreaterThanOrEqual(kept.last ?? 0, evicted.max() ?? 0, "the highest scores are kept")
                            if sc.count >= 16 { XCTAssertGreaterThan(sb.layout.evicted, 0, "tau \(tau) evicts some tokens of random attention: \(sc) kept \(sb.layout.kept) block \(before)") }
                        } }
                    }
                }
            }
            XCTAssertGreaterThanOrEqual(q.sealedBlocks, q.blocks.count - 1, "\(kind): every complete block is sealed")
            XCTAssertLessThan(worstAttention, 2e-4, "\(kind) zipvl \(tau ?? 0): attention over the compressed form")
            // (The toy cache is smaller than its recent buffer; only the sealed form is compared.)
            XCTAssertLessThan(q.formatBitsPerValue, 16, "\(kind) codes are smaller than fp16")
            XCTAssertEqual(cache.keptRatioPerLayer == nil, tau == nil)
        }
    }

    /// Raster decoding of the tiny fixture model, teacher-forced with the same tokens: the logits of
    /// every quantized cache stay near the fp32 cache's while blocks are sealed along the way.
    func testLogitsNearFP32() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny.weights.safetensors"))
        let V = cfg.vocab_size, steps = gpt.sequenceLength - 1
        var opts = KVCacheOptions(); opts.zipBlock = 16; opts.kiviGroup = 16
        func run(_ kind: KVCacheKind) throws -> ([Float], KVCache) {
            let state = ForwardState(config: cfg, maxRows: 2, slots: gpt.sequenceLength)
            let cache = gpt.makeCache(batch: 2, precision: kind, options: opts)
            var logits: [Float] = []
            for step in 0..<steps {
                for b in 0..<2 {
                    if step == 0 { try gpt.embedClass(b == 0 ? 3 : 10, into: state.input(b)) } else { gpt.embedToken((step * 37) % V, into: state.input(b)) }
                }
                gpt.forward(state: state, cache: cache, positions: [step, step], batchOf: [0, 1], visibility: AttentionVisibility(), logitRows: [0, 1])
                cache.markFinal(step); cache.seal()
                logits += Array(UnsafeBufferPointer(start: state.logits(0), count: 2 * V))
            }
            return (logits, cache)
        }
        let (ref, _) = try run(.fp32)
        let scale = ref.map { abs($0) }.max()!
        var errors: [KVCacheKind: Float] = [:]
        for kind in [KVCacheKind.int8, .kivi4, .kivi2, .zipcache] {
            let (l, cache) = try run(kind)
            let q = cache.storage as! QuantizedKV
            XCTAssertEqual(q.sealedBlocks, q.blocks.count - 1, "\(kind): every block but the last (never complete) is sealed")
            var e: Float = 0
            for i in 0..<ref.count { e = max(e, abs(l[i] - ref[i])) }
            errors[kind] = e / scale
        }
        // Relative to the largest logit. A wrong slot or block mapping gives errors of order 1.
        XCTAssertLessThan(errors[.int8]!, 0.02, "\(errors)")
        XCTAssertLessThan(errors[.kivi4]!, 0.1, "\(errors)")
        XCTAssertLessThan(errors[.kivi2]!, 0.4, "\(errors)")
        XCTAssertLessThan(errors[.zipcache]!, 0.3, "\(errors)")
        XCTAssertLessThan(errors[.int8]!, errors[.kivi4]!, "8 bits beat 4 bits")
        XCTAssertLessThan(errors[.kivi4]!, errors[.kivi2]!, "4 bits beat 2 bits")
        print("relative logit error vs fp32: \(errors)")
    }

    /// ZipAR writes several slots per pass out of raster order and overwrites proxies: every policy,
    /// the adaptive window and the holes mode run with every compressed cache (a rewrite of a sealed
    /// slot would stop the test), seal every block they can, and are deterministic.
    func testZipARGenerationWithEveryCache() throws {
        let cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny_gqa.config.json"))
        let gpt = try GPT(config: cfg, weights: try Fixtures.safetensors("llamagen/gpt_c2i_tiny_gqa.weights.safetensors"))
        var opts = KVCacheOptions(); opts.zipBlock = 12; opts.kiviGroup = 8
        var o = GenerationOptions(); o.sampling.cfgScale = 4; o.sampling.topK = 20; o.seed = 4
        for (kind, tau) in [(KVCacheKind.int8, nil), (.kivi2, nil), (.kivi4, nil), (.zipcache, nil), (.zipcache, 0.9)] as [(KVCacheKind, Double?)] {
            opts.zipvlTau = tau
            for (window, policy, adaptive, holes) in [(8, ZipARPolicy.ideal, nil, false), (3, .ideal, nil, false), (2, .upstream, nil, false),
                                                      (1, .ideal, nil, false), (4, .ideal, 2, false), (3, .upstream, nil, true)] as [(Int, ZipARPolicy, Int?, Bool)] {
                let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: window, policy: policy),
                                        kvPrecision: kind, kvOptions: opts)
                o.adaptiveMinWindow = adaptive; o.holes = holes
                let a = try gen.generate(.classLabel(3), options: o), b = try gen.generate(.classLabel(3), options: o)
                XCTAssertEqual(a.tokens, b.tokens, "\(kind) window \(window) \(policy) adaptive \(adaptive ?? 0)")
                let q = gen.cache(cfg: true).storage as! QuantizedKV
                // All slots but the last cell's (never fed) are final at the end, so all but the last block are sealed.
                XCTAssertEqual(q.sealedBlocks, q.blocks.count - 1, "\(kind) window \(window) \(policy)")
            }
        }
    }

    /// MiniCache's merge: the merged direction is the SLERP (t = 0.6) of the two unit directions,
    /// each layer restores with its own norm, identical layers come back unchanged, and the most
    /// distinct pairs (top 5% of the angular range) come back exactly.
    func testMiniCacheMergeRestore() {
        let n = 40, hd = 16
        var rng = RNG(seed: 8)
        var a = [UInt16](repeating: 0, count: n * hd), c = a
        for t in 0..<n { for i in 0..<hd {
            let x = rng.nextNormal() * 2
            a[t * hd + i] = Float16(x).bitPattern
            // Token 0: the same vector in both layers; token 1: opposite-ish (most distinct); the rest: correlated.
            let y: Float = t == 0 ? x : t == 1 ? -x + 0.1 * rng.nextNormal() : 0.5 * x + 0.6 * rng.nextNormal()
            c[t * hd + i] = Float16(y).bitPattern
        } }
        let original = (a, c)
        var m = MergedBlock(count: n, heads: 1, headDim: hd)
        m.merge(kv: 0, head: 0, a: &a, c: c)
        XCTAssertTrue(m.retainedIds[0].contains(1), "the most distinct pair is retained")
        XCTAssertFalse(m.retainedIds[0].contains(0))
        func f(_ x: [UInt16]) -> [Float] { x.map { Float(Float16(bitPattern: $0)) } }
        let e = f(a), xa = f(original.0), xc = f(original.1)
        for second in [false, true] {
            var rows = e
            m.restore(kv: 0, second: second, head: 0, rows: &rows, len: n)
            let x = second ? xc : xa
            for t in 0..<n {
                let r = Array(rows[(t * hd)..<((t + 1) * hd)]), o = Array(x[(t * hd)..<((t + 1) * hd)])
                func norm(_ v: [Float]) -> Float { v.reduce(0) { $0 + $1 * $1 }.squareRoot() }
                XCTAssertEqual(norm(r), norm(o), accuracy: 2e-3 * norm(o), "norm kept, token \(t)")
                if t <= 1 { for i in 0..<hd { XCTAssertEqual(r[i], o[i], accuracy: 3e-3 * max(1, abs(o[i])), "token \(t)") } }
            }
        }
        // SLERP: the merged direction is at t·Ω from layer a's direction and (1-t)·Ω from layer c's.
        for t in 2..<n where !m.retainedIds[0].contains(UInt16(t)) {
            func unit(_ v: ArraySlice<Float>) -> [Float] { let s = v.reduce(0) { $0 + $1 * $1 }.squareRoot(); return v.map { $0 / s } }
            let ua = unit(xa[(t * hd)..<((t + 1) * hd)]), uc = unit(xc[(t * hd)..<((t + 1) * hd)]), ue = unit(e[(t * hd)..<((t + 1) * hd)])
            func angle(_ p: [Float], _ q: [Float]) -> Float { acos(min(1, max(-1, zip(p, q).reduce(0) { $0 + $1.0 * $1.1 }))) }
            let omega = angle(ua, uc)
            XCTAssertEqual(angle(ua, ue), 0.6 * omega, accuracy: 3e-3)
            XCTAssertEqual(angle(uc, ue), 0.4 * omega, accuracy: 3e-3)
        }
    }

    /// MiniCache and ZipVL on a 4-layer model (one merged pair) with ZipAR windows and the adaptive window.
    func testMergeAndSparsityGeneration() throws {
        var cfg = try GPTConfig(json: try Fixtures.json("llamagen/gpt_c2i_tiny.config.json"))
        cfg.n_layer = 4
        let gpt = try GPT(randomWithConfig: cfg, seed: 3)
        var o = GenerationOptions(); o.sampling.cfgScale = 4; o.sampling.topK = 20; o.seed = 1
        for (kind, tau, merge) in [(KVCacheKind.zipcache, nil, true), (.kivi4, 0.95, true), (.zipcache, 0.95, false)] as [(KVCacheKind, Double?, Bool)] {
            var opts = KVCacheOptions(); opts.zipBlock = 16; opts.kiviGroup = 8; opts.zipvlTau = tau; opts.miniCache = merge
            for (window, adaptive) in [(3, nil), (4, 2)] as [(Int, Int?)] {
                let gen = try Generator(gpt: gpt, schedule: try Schedule.make(height: 8, width: 8, window: window), kvPrecision: kind, kvOptions: opts)
                o.adaptiveMinWindow = adaptive
                let a = try gen.generate(.classLabel(2), options: o), b = try gen.generate(.classLabel(2), options: o)
                XCTAssertEqual(a.tokens, b.tokens)
                let cache = gen.cache(cfg: true), q = cache.storage as! QuantizedKV
                XCTAssertEqual(q.sealedBlocks, q.blocks.count - 1)
                XCTAssertEqual(q.merged.contains { $0 != nil }, merge)
                if let kept = cache.keptRatioPerLayer { XCTAssertTrue(kept.allSatisfy { $0 > 0 && $0 <= 1 }, "\(kept)") } else { XCTAssertNil(tau) }
            }
        }
    }

    /// Queries per slot are counted from the masks (ZipAR), not derived from L - i.
    func testZipCacheCountsQueriesPerSlot() {
        let S = 10
        let cache = KVCache(batch: 2, layers: 1, kvHeads: 1, slots: S, headDim: 16, kind: .zipcache)
        let q = cache.storage as! QuantizedKV
        let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: 3 * S); defer { masks.deallocate() }
        masks.initialize(repeating: 0, count: 3 * S)
        // Row 0 (batch 0) at slot 5 sees 0,1,2,5; row 1 (batch 0) at slot 2 sees 0..2; row 2 (batch 1) at slot 7 sees 7.
        for j in [0, 1, 2, 5] { masks[j] = 1 }
        for j in 0...2 { masks[S + j] = 1 }
        masks[2 * S + 7] = 1
        cache.beginPass(positions: [5, 2, 7], batchOf: [0, 0, 1], masks: masks)
        XCTAssertEqual((0..<S).map { Int(q.counts[$0]) }, [2, 2, 2, 0, 0, 1, 0, 0, 0, 0])
        XCTAssertEqual((0..<S).map { Int(q.counts[S + $0]) }, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    }

    /// The probe option adds only probe queries' attention (every 10th slot); exact adds every query's.
    func testZipCacheProbeScoresOnlyProbeQueries() {
        let S = 12, hd = 16
        for mode in ZipCacheScore.allCases {
            var o = KVCacheOptions(); o.zipScore = mode
            let cache = KVCache(batch: 1, layers: 1, kvHeads: 1, slots: S, headDim: hd, kind: .zipcache, options: o)
            let q = cache.storage as! QuantizedKV
            var rng = RNG(seed: 2)
            for s in 0..<10 {
                let k = randomKV(&rng, hd), v = randomKV(&rng, hd)
                cache.store(0, 0, 0, slot: s, key: k, value: v); cache.markWritten(s)
            }
            let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: 2 * S); defer { masks.deallocate() }
            for j in 0..<S { masks[j] = j <= 9 ? 1 : 0; masks[S + j] = j <= 5 ? 1 : 0 }
            var offs: [Int32] = [0, Int32(S)], slotsQ: [Int32] = [9, 5]
            var out = [Float](repeating: 0, count: 2 * hd)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: 2 * 10); defer { scores.deallocate() }
            cache.attend(0, 0, 0, q: randomKV(&rng, 2 * hd), nq: 2, n: 10, masks: masks, maskOffsets: &offs, querySlots: &slotsQ,
                         scale: 0.25, sab: false, scores: scores, out: &out, worker: 0)
            for j in 0..<10 {
                let want = scores[j] + (mode == .exact ? scores[10 + j] : 0)
                XCTAssertEqual(q.acc[j], want, accuracy: 1e-7, "\(mode) slot \(j)")
            }
        }
    }

    struct Held { var k: [Float]; var v: [Float]; var evicted: Set<Int> }

    /// The keys/values the cache holds for slots [0, n) of one head, rebuilt naively.
    func heldKV(_ q: QuantizedKV, _ cache: KVCache, _ b: Int, _ l: Int, _ h: Int, n: Int, K: [Float], V: [Float],
                idx: (Int, Int, Int, Int) -> Int) -> Held {
        let hd = q.headDim
        var k = [Float](repeating: 0, count: n * hd), v = k
        var buf = [Float](repeating: 0, count: q.blockSize * hd)
        var evicted = Set<Int>()
        for bi in 0..<q.sealedBlocks {
            let blk = q.blocks[bi], pr = q.pair(l), sb = q.sealedBlock(b, pr?.first ?? l, bi)
            let m = pr.flatMap { q.merged[(b * q.layers + $0.first) * q.blocks.count + bi] }
            q.dequantKeys(sb, h, into: &buf)
            if let m { m.restore(kv: 0, second: pr!.second, head: h, rows: &buf, len: blk.count) }
            for i in 0..<(blk.count * hd) where blk.start * hd + i < n * hd { k[blk.start * hd + i] = buf[i] }
            q.dequantValues(sb, h, into: &buf)
            if let m { m.restore(kv: 1, second: pr!.second, head: h, rows: &buf, len: blk.count) }
            for i in 0..<(blk.count * hd) where blk.start * hd + i < n * hd { v[blk.start * hd + i] = buf[i] }
            for e in sb.layout.kept..<(sb.layout.kept + sb.layout.evicted) { evicted.insert(blk.start + Int(sb.ids![e])) }
        }
        for s in q.recentStart..<n where cache.written[s] {
            for d in 0..<hd {
                k[s * hd + d] = Float(Float16(K[idx(b, l, h, s) + d])); v[s * hd + d] = Float(Float16(V[idx(b, l, h, s) + d]))
            }
        }
        return Held(k: k, v: v, evicted: evicted)
    }

    func checkSealed(_ q: QuantizedKV, _ kind: KVCacheKind, zipvl: Bool, blockIndex bi: Int, K: [Float], V: [Float], idx: (Int, Int, Int, Int) -> Int) {
        let blk = q.blocks[bi], hd = q.headDim, H = q.kvHeads, n = blk.count
        var buf = [Float](repeating: 0, count: q.blockSize * hd)
        for b in 0..<q.batch { for l in 0..<q.layers where q.pair(l) == nil {
            // The fp16 inputs the block was quantized from, [H][n][hd] (merged layers: see testMiniCacheMergeRestore).
            var k16 = [Float](repeating: 0, count: H * n * hd), v16 = k16
            for h in 0..<H { for t in 0..<n { for d in 0..<hd {
                k16[(h * n + t) * hd + d] = Float(Float16(K[idx(b, l, h, blk.start + t) + d]))
                v16[(h * n + t) * hd + d] = Float(Float16(V[idx(b, l, h, blk.start + t) + d]))
            } } }
            var ref: ZipCache.Compressed? = nil
            var setOf = [(set: Int, row: Int)](repeating: (0, 0), count: n)
            let sb = q.sealedBlock(b, l, bi)
            var evicted = Set<Int>()
            if let idp = sb.ids {
                let ids = (0..<n).map { Int(idp[$0]) }
                XCTAssertEqual(Set(ids).count, n, "the sets partition the block")
                evicted = Set(ids.suffix(sb.layout.evicted))
            }
            if kind == .zipcache && !zipvl {
                let ids = (0..<n).map { Int(sb.ids![$0]) }
                let sal = Array(ids.prefix(sb.layout.setRows[0])), reg = Array(ids.prefix(sb.layout.kept).suffix(sb.layout.setRows[1]))
                XCTAssertEqual(sal, sal.sorted(), "salient ids ascend")
                ref = ZipCache.compress(keys: k16, values: v16, heads: H, length: n, headDim: hd,
                                        salientIds: Array(repeating: sal, count: H), regularIds: Array(repeating: reg, count: H))
                for (r, t) in sal.enumerated() { setOf[t] = (0, r) }
                for (r, t) in reg.enumerated() { setOf[t] = (1, r) }
            }
            var far = 0, total = 0
            for h in 0..<H {
                q.dequantKeys(sb, h, into: &buf)
                let kd = Array(buf[0..<(n * hd)])
                q.dequantValues(sb, h, into: &buf)
                let vd = Array(buf[0..<(n * hd)])
                for t in 0..<n where !evicted.contains(t) { for d in 0..<hd {
                    let i = (h * n + t) * hd + d, x = k16[i], y = v16[i]
                    // Error bound: half a step of the element's group (range / (2^bits - 1) / 2), plus fp16 parameter rounding.
                    func range(_ xs: [Float]) -> Float { xs.max()! - xs.min()! }
                    let row = { (a: [Float]) in Array(a[((h * n + t) * hd)..<((h * n + t + 1) * hd)]) }
                    let column = { (a: [Float]) in (0..<n).map { a[(h * n + $0) * hd + d] } }
                    let bits: Float = kind == .int8 ? 8 : kind == .kivi4 ? 4 : 2
                    let kRange = kind == .int8 ? range(row(k16)) : range(column(k16))
                    let vRange = kind == .zipcache ? 2 * range(column(v16)) + range(row(v16)) : range(row(v16))
                    func bound(_ r: Float, _ x: Float) -> Float { r / (powf(2, bits) - 1) / 2 + (abs(x) + r) / 512 + 1e-4 }
                    XCTAssertLessThan(abs(kd[t * hd + d] - x), bound(kRange, x), "\(kind) key error b\(b) l\(l) h\(h) t\(t) d\(d)")
                    XCTAssertLessThan(abs(vd[t * hd + d] - y), bound(vRange, y), "\(kind) value error b\(b) l\(l) h\(h) t\(t) d\(d)")
                    if let ref {
                        // Same split, fp32 vs fp16 parameters: equal up to parameter rounding, except
                        // rare codes that the rounding moves by one step.
                        let set = setOf[t].set == 0 ? ref.salient : ref.regular, c = h * hd + d
                        let rk = ref.keyDequant[i], rv = ref.valueDequant[i]
                        let kStep = set.keyStep[c], vStep = set.valueStep[setOf[t].row] * ref.channelScale[c]
                        XCTAssertLessThanOrEqual(abs(kd[t * hd + d] - rk), kStep * 1.01 + 3e-3 * (1 + abs(rk)), "zipcache key vs official reference")
                        XCTAssertLessThanOrEqual(abs(vd[t * hd + d] - rv), vStep * 1.01 + 3e-3 * (1 + abs(rv)), "zipcache value vs official reference")
                        if abs(kd[t * hd + d] - rk) > 1e-2 * (1 + abs(rk)) { far += 1 }
                        if abs(vd[t * hd + d] - rv) > 1e-2 * (1 + abs(rv)) { far += 1 }
                        total += 2
                    }
                } }
            }
            XCTAssertLessThanOrEqual(far * 50, total, "zipcache: at most 2% of the values move a code step")
        } }
    }
}
