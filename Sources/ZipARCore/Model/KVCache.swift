import CKernels

/// How the KV cache stores keys and values. fp16 halves the cache's memory and the bytes attention
/// reads per pass; values are rounded to half precision when written (IEEE binary16, F16C).
public enum KVPrecision: String, CaseIterable, Sendable {
    case fp32, fp16
    public var bytesPerValue: Int { self == .fp32 ? 4 : 2 }
}

/// Slot-indexed key/value cache for one generation: slot = sequence position
/// (condition prefix first, then image tokens in raster order). Keys are stored after RoPE.
/// Layout [batch][layer][kvHead][slot][headDim], so one head's keys are contiguous for attention.
/// `written` tracks which slots hold real K/V: ZipAR writes slots out of raster order, and the
/// attention mask hides slots that were never written (unless the upstream "holes" mode is on).
public final class KVCache {
    public let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    public let precision: KVPrecision
    /// Raw storage of keys and values (Float or UInt16 elements, by `precision`).
    public let keys: UnsafeMutableRawPointer
    public let values: UnsafeMutableRawPointer
    public private(set) var written: [Bool]
    private let elements: Int

    public init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int, precision: KVPrecision = .fp32) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        self.precision = precision
        elements = batch * layers * kvHeads * slots * headDim
        let bytes = max(64, elements * precision.bytesPerValue)
        keys = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        values = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        written = Array(repeating: false, count: slots)
        reset()
    }

    deinit { keys.deallocate(); values.deallocate() }

    public var bytes: Int { 2 * elements * precision.bytesPerValue }

    /// Element offset of (b, layer, head, slot 0).
    @inline(__always) public func base(_ b: Int, _ layer: Int, _ head: Int) -> Int {
        ((b * layers + layer) * kvHeads + head) * slots * headDim
    }

    /// Stores one head's key and value (headDim floats each) at a slot.
    @inline(__always)
    public func store(_ b: Int, _ layer: Int, _ head: Int, slot: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        let o = base(b, layer, head) + slot * headDim
        switch precision {
        case .fp32:
            (keys.assumingMemoryBound(to: Float.self) + o).update(from: key, count: headDim)
            (values.assumingMemoryBound(to: Float.self) + o).update(from: value, count: headDim)
        case .fp16:
            ck_f32_to_f16(key, keys.assumingMemoryBound(to: UInt16.self) + o, Int32(headDim))
            ck_f32_to_f16(value, values.assumingMemoryBound(to: UInt16.self) + o, Int32(headDim))
        }
    }

    public func markWritten(_ slot: Int) { written[slot] = true }

    /// Back to an empty cache (zeros, nothing written) for the next image.
    public func reset() {
        let bytes = max(64, elements * precision.bytesPerValue)
        keys.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        values.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        for i in written.indices { written[i] = false }
    }
}
