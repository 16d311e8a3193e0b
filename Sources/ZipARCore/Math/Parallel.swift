import Dispatch
import Foundation

/// The one place that owns threading. Decode kernels split their output columns across
/// `Parallel.threads` workers; OpenBLAS (prefill, convolutions) uses the same number of its own
/// threads, and the two never run at the same time, so the 2 cores are never oversubscribed.
public enum Parallel {
    public static var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount) {
        didSet { BLAS.threads = threads }
    }

    /// Runs body(part, parts) on `parts` workers (inline when 1) and waits for all.
    public static func run(parts: Int = threads, _ body: (Int, Int) -> Void) {
        if parts <= 1 { body(0, 1); return }
        DispatchQueue.concurrentPerform(iterations: parts) { body($0, parts) }
    }

    /// Splits [0, n) into `parts` contiguous ranges whose bounds are multiples of `align`.
    public static func range(_ part: Int, of parts: Int, n: Int, align: Int = 1) -> Range<Int> {
        let units = (n + align - 1) / align
        let lo = min(n, units * part / parts * align), hi = min(n, units * (part + 1) / parts * align)
        return lo..<hi
    }
}
