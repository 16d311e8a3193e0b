import CKernels

/// How the KV cache stores keys and values, chosen at load time (`--kv-cache`).
/// - fp32: full precision (the reference).
/// - fp16: IEEE halves (F16C), half the memory.
/// - int8: keys and values per token and head, asymmetric 8-bit (min/step per row).
/// - kivi2 / kivi4: KIVI (Liu et al., ICML 2024): keys per channel over groups of 32 tokens, values
///   per token over groups of 32 channels, 2 or 4 bits; recent tokens in fp16.
/// - zipcache: ZipCache (He et al., NeurIPS 2024): keys channel-wise per token set, values CST
///   (channel-separable token-wise), 4 bits for salient tokens and 2 bits for the 40% with the
///   lowest normalised attention score; recent tokens in fp16.
public enum KVCacheKind: String, CaseIterable, Sendable {
    case fp32, fp16, int8, kivi2, kivi4, zipcache
    public var isQuantized: Bool { self != .fp32 && self != .fp16 }
    public static var names: String { allCases.map(\.rawValue).joined(separator: "|") }
}

/// The earlier name of the cache type (fp32 / fp16 only then).
public typealias KVPrecision = KVCacheKind

/// How ZipCache scores tokens.
public enum ZipCacheScore: String, CaseIterable, Sendable {
    /// Every query's attention probabilities (the paper's exact normalised score; free on CPU).
    case exact
    /// Only probe queries (about 10%, a fixed hash of the query slot) add attention, divided as the
    /// official code does by the number of all queries that saw the token.
    case probe
}

/// Settings of the compressed caches (defaults = the official ZipCache demo and KIVI's example).
public struct KVCacheOptions: Sendable {
    public var zipScore: ZipCacheScore = .exact
    public var unimportantRatio = ZipCache.unimportantRatio
    /// Slots per quantized block of ZipCache: each block has its own per-channel key parameters per
    /// set, so larger blocks cost fewer parameter bits but keep more tokens in the fp16 recent buffer.
    /// nil = whole image rows near 128 slots (`ZipCache.rowBlock`).
    public var zipBlock: Int? = nil
    /// KIVI's group G (tokens per key group, channels per value group) and the int8 block.
    public var kiviGroup = 32
    /// ZipVL (`--kv-sparsity zipvl`): per layer and sealed block, keep the fewest tokens whose
    /// normalised attention covers this fraction of the block's total; the rest are evicted and no
    /// longer attended. nil = off.
    public var zipvlTau: Double? = nil
    public static let defaultZipvlTau = 0.975
    /// MiniCache (`--kv-merge minicache`): adjacent layers share merged K/V from half depth on.
    public var miniCache = false
    public init() {}
}

/// A storage scheme of the KV cache (dense or quantized). Implementations keep their own layout;
/// attention goes through `attend`, which reads the stored form directly.
protocol KVStorage: AnyObject {
    /// Bytes held now (codes, parameters, recent buffer, saliency state).
    var bytes: Int { get }
    /// Bits per stored key/value element of the compressed form, parameters included, the recent
    /// buffer excluded (dense: 32 or 16; quantized: over the blocks sealed so far).
    var formatBitsPerValue: Double { get }
    func store(_ b: Int, _ layer: Int, _ head: Int, slot: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>)
    /// Attention of nq queries q[nq][hd] of one (batch entry, layer, KV head) over slots [0, n):
    /// scores is scratch [nq][n] (left holding the probabilities), out is [nq][hd]. sab: BiViT's
    /// softmax-aware binarization of the probabilities (models trained with it).
    func attend(_ b: Int, _ layer: Int, _ head: Int, q: UnsafePointer<Float>, nq: Int, n: Int, masks: UnsafePointer<UInt8>,
                maskOffsets: UnsafePointer<Int32>, querySlots: UnsafePointer<Int32>, scale: Float, sab: Bool,
                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, worker: Int)
    /// Called once per forward pass after the masks are built (queries per slot for ZipCache).
    func beginPass(positions: [Int], batchOf: [Int], masks: UnsafePointer<UInt8>, slots: Int)
    /// Every slot below `finalUpTo` holds its final key/value: whole blocks there may be compressed.
    func seal(finalUpTo: Int)
    func reset()
}

/// Slot-indexed key/value cache for one generation: slot = sequence position (condition prefix
/// first, then image tokens in raster order). Keys are stored after RoPE.
/// `written` tracks which slots hold real K/V: ZipAR writes slots out of raster order, and the
/// attention mask hides slots that were never written (unless the upstream "holes" mode is on).
/// `final` tracks which slots will not be written again: a ZipAR proxy is later overwritten by the
/// real token, so only final slots may be compressed (the generator marks them).
public final class KVCache {
    public let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    public let kind: KVCacheKind
    public var precision: KVCacheKind { kind }
    public private(set) var written: [Bool]
    public private(set) var final: [Bool]
    /// Every slot below this one is final.
    public private(set) var finalUpTo = 0
    let storage: KVStorage
    /// The largest `bytes` seen since the cache was made (the recent buffer grows on demand).
    public private(set) var peakBytes = 0

    /// ZipVL: fraction of the tokens kept per layer (sealed blocks of every image so far); nil when off.
    public var keptRatioPerLayer: [Double]? {
        guard let q = storage as? QuantizedKV, q.zipvlTau != nil else { return nil }
        return zip(q.keptPerLayer, q.seenPerLayer).map { $1 > 0 ? Double($0) / Double($1) : 1 }
    }

    /// `prefixSlots`: the condition prefix (cls_token_num slots), which quantized caches keep in a block of its own.
    /// `gridWidth`: tokens per image row, which ZipCache's default block is a whole number of (0 = unknown).
    public init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, prefixSlots: Int = 0, gridWidth: Int = 0,
                kind: KVCacheKind = .fp32, options: KVCacheOptions = KVCacheOptions()) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        self.kind = kind
        switch kind {
        case .fp32, .fp16:
            storage = DenseKV(batch: batch, layers: layers, kvHeads: kvHeads, slots: slots, headDim: headDim, half: kind == .fp16)
        default:
            storage = QuantizedKV(batch: batch, layers: layers, kvHeads: kvHeads, slots: slots, headDim: headDim,
                                  prefixSlots: prefixSlots, gridWidth: gridWidth, kind: kind, options: options)
        }
        written = Array(repeating: false, count: slots)
        final = written
        peakBytes = storage.bytes
    }

    public convenience init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, precision: KVCacheKind) {
        self.init(batch: batch, layers: layers, kvHeads: kvHeads, slots: slots, headDim: headDim, kind: precision)
    }

    /// Bytes the cache holds now.
    public var bytes: Int { storage.bytes }

    /// Bytes the same slots take in fp16 (the reference of the compression ratios).
    public var fp16Bytes: Int { 2 * batch * layers * kvHeads * slots * headDim * 2 }

    /// Bits per stored key/value element of the compressed form, parameters included (the recent
    /// buffer excluded): 32 for fp32, 16 for fp16, about 3.5 for ZipCache.
    public var formatBitsPerValue: Double { storage.formatBitsPerValue }

    /// Stores one head's key and value (headDim floats each) at a slot.
    @inline(__always)
    public func store(_ b: Int, _ layer: Int, _ head: Int, slot: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        storage.store(b, layer, head, slot: slot, key: key, value: value)
    }

    public func markWritten(_ slot: Int) { written[slot] = true; writtenEnd = max(writtenEnd, slot + 1) }
    /// One past the last written slot.
    public private(set) var writtenEnd = 0

    /// The slot holds its final key/value (not a ZipAR proxy that a later pass overwrites).
    public func markFinal(_ slot: Int) {
        final[slot] = true
        while finalUpTo < slots && final[finalUpTo] { finalUpTo += 1 }
    }

    /// Compresses every complete block of final slots (no-op for fp32/fp16).
    public func seal() {
        storage.seal(finalUpTo: finalUpTo)
        peakBytes = max(peakBytes, storage.bytes)
    }

    func beginPass(positions: [Int], batchOf: [Int], masks: UnsafePointer<UInt8>) {
        storage.beginPass(positions: positions, batchOf: batchOf, masks: masks, slots: slots)
        peakBytes = max(peakBytes, storage.bytes)
    }

    @inline(__always)
    func attend(_ b: Int, _ layer: Int, _ head: Int, q: UnsafePointer<Float>, nq: Int, n: Int, masks: UnsafePointer<UInt8>,
                maskOffsets: UnsafePointer<Int32>, querySlots: UnsafePointer<Int32>, scale: Float, sab: Bool,
                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, worker: Int) {
        storage.attend(b, layer, head, q: q, nq: nq, n: n, masks: masks, maskOffsets: maskOffsets, querySlots: querySlots,
                       scale: scale, sab: sab, scores: scores, out: out, worker: worker)
    }

    /// Back to an empty cache (zeros, nothing written) for the next image.
    public func reset() {
        storage.reset()
        for i in written.indices { written[i] = false; final[i] = false }
        finalUpTo = 0
        writtenEnd = 0
    }
}

/// fp32 or fp16 keys and values, layout [batch][layer][kvHead][slot][headDim] (one head's keys contiguous).
final class DenseKV: KVStorage {
    let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    let half: Bool
    let keys: UnsafeMutableRawPointer
    let values: UnsafeMutableRawPointer
    private let elements: Int
    private var rawBytes: Int { max(64, elements * (half ? 2 : 4)) }

    init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, half: Bool) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        self.half = half
        elements = batch * layers * kvHeads * slots * headDim
        let n = max(64, elements * (half ? 2 : 4))
        keys = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        values = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        reset()
    }

    deinit { keys.deallocate(); values.deallocate() }

    var bytes: Int { 2 * elements * (half ? 2 : 4) }
    var formatBitsPerValue: Double { half ? 16 : 32 }

    @inline(__always) func base(_ b: Int, _ layer: Int, _ head: Int) -> Int {
        ((b * layers + layer) * kvHeads + head) * slots * headDim
    }

    func store(_ b: Int, _ layer: Int, _ head: Int, slot: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        let o = base(b, layer, head) + slot * headDim
        if half {
            ck_f32_to_f16(key, keys.assumingMemoryBound(to: UInt16.self) + o, Int32(headDim))
            ck_f32_to_f16(value, values.assumingMemoryBound(to: UInt16.self) + o, Int32(headDim))
        } else {
            (keys.assumingMemoryBound(to: Float.self) + o).update(from: key, count: headDim)
            (values.assumingMemoryBound(to: Float.self) + o).update(from: value, count: headDim)
        }
    }

    func attend(_ b: Int, _ layer: Int, _ head: Int, q: UnsafePointer<Float>, nq: Int, n: Int, masks: UnsafePointer<UInt8>,
                maskOffsets: UnsafePointer<Int32>, querySlots: UnsafePointer<Int32>, scale: Float, sab: Bool,
                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, worker: Int) {
        let o = base(b, layer, head), hd = Int32(headDim)
        if half {
            ck_attend_group_f16(q, hd, keys.assumingMemoryBound(to: UInt16.self) + o, values.assumingMemoryBound(to: UInt16.self) + o,
                                masks, maskOffsets, Int32(nq), Int32(n), hd, scale, sab ? 1 : 0, scores, out, hd)
        } else {
            ck_attend_group(q, hd, keys.assumingMemoryBound(to: Float.self) + o, values.assumingMemoryBound(to: Float.self) + o,
                            masks, maskOffsets, Int32(nq), Int32(n), hd, scale, sab ? 1 : 0, scores, out, hd)
        }
    }

    func beginPass(positions: [Int], batchOf: [Int], masks: UnsafePointer<UInt8>, slots: Int) {}
    func seal(finalUpTo: Int) {}

    func reset() {
        keys.initializeMemory(as: UInt8.self, repeating: 0, count: rawBytes)
        values.initializeMemory(as: UInt8.self, repeating: 0, count: rawBytes)
    }
}
