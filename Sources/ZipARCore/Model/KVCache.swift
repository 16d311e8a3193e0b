/// Slot-indexed key/value cache for one generation: slot = sequence position
/// (condition prefix first, then image tokens in raster order). Keys are stored after RoPE.
/// Layout [batch][layer][kvHead][slot][headDim], so one head's keys are contiguous for attention.
/// `written` tracks which slots hold real K/V: ZipAR writes slots out of raster order, and the
/// attention mask hides slots that were never written (unless the upstream "holes" mode is on).
public final class KVCache {
    public let batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int
    public let keys: Tensor
    public let values: Tensor
    public private(set) var written: [Bool]

    public init(batch: Int, layers: Int, kvHeads: Int, slots: Int, headDim: Int) {
        self.batch = batch; self.layers = layers; self.kvHeads = kvHeads; self.slots = slots; self.headDim = headDim
        keys = Tensor(shape: [batch, layers, kvHeads, slots, headDim])
        values = Tensor(shape: [batch, layers, kvHeads, slots, headDim])
        written = Array(repeating: false, count: slots)
    }

    public var bytes: Int { 2 * keys.count * 4 }

    /// Offset of (b, layer, head, slot 0).
    @inline(__always) public func base(_ b: Int, _ layer: Int, _ head: Int) -> Int {
        ((b * layers + layer) * kvHeads + head) * slots * headDim
    }

    public func markWritten(_ slot: Int) { written[slot] = true }

    /// Back to an empty cache (zeros, nothing written) for the next image.
    public func reset() {
        keys.fill(0); values.fill(0)
        for i in written.indices { written[i] = false }
    }
}
