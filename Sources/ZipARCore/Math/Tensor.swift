import Foundation

/// The one tensor type: a contiguous, 64-byte aligned, row-major Float32 buffer with a shape.
/// Reference semantics (a class) so that big weights are never copied by accident.
public final class Tensor {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled tensor.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        // Aligned so SIMD kernels can use aligned loads and cache lines are not split.
        let bytes = max(64, (count * MemoryLayout<Float>.stride + 63) & ~63)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        self.data = raw.bindMemory(to: Float.self, capacity: count)
    }

    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "values.count \(values.count) != \(count) for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    /// A copy with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        let t = Tensor(shape: newShape)
        precondition(t.count == count, "cannot reshape \(shape) to \(newShape)")
        t.data.update(from: data, count: count)
        return t
    }

    public func fill(_ v: Float) { data.update(repeating: v, count: count) }

    /// Pointer to row `i` of a tensor viewed as [shape[0], rest].
    public func row(_ i: Int) -> UnsafeMutablePointer<Float> { data + i * (count / max(shape[0], 1)) }
}

/// Largest absolute elementwise difference; used by tests and checks.
public func maxAbsDiff(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
    var m: Float = 0
    for i in 0..<count { m = max(m, abs(a[i] - b[i])) }
    return m
}
