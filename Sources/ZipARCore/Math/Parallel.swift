import CKernels
import Foundation

/// The one place that owns threading. Decode kernels split their output columns across
/// `Parallel.threads` workers of a persistent pool (CKernels/pool.c: workers spin briefly, then
/// sleep); OpenBLAS (prefill, convolutions) uses the same number of its own threads. The two never
/// run at the same time, so the cores are never oversubscribed.
public enum Parallel {
    public static var threads: Int = defaultThreads {
        didSet {
            threads = max(1, threads)
            BLAS.threads = threads
            ck_pool_start(Int32(threads))
        }
    }

    static let defaultThreads: Int = {
        // ZIPAR_NO_AVX512=1 keeps the decode kernels on AVX2 (to compare the two on one machine).
        if ProcessInfo.processInfo.environment["ZIPAR_NO_AVX512"] != nil { ck_avx512_enabled = 0 }
        let n = max(1, ProcessInfo.processInfo.activeProcessorCount)
        ck_pool_start(Int32(n))
        return n
    }()

    private final class Task {
        let body: (Int, Int) -> Void
        init(_ body: @escaping (Int, Int) -> Void) { self.body = body }
    }

    /// Runs body(part, parts) on `parts` workers (inline when 1) and waits for all.
    public static func run(parts: Int = threads, _ body: (Int, Int) -> Void) {
        let parts = min(parts, threads)
        if parts <= 1 { body(0, 1); return }
        withoutActuallyEscaping(body) { escapable in
            let task = Task(escapable)
            let ctx = Unmanaged.passUnretained(task).toOpaque()
            ck_parallel({ ctx, part, parts in
                Unmanaged<Task>.fromOpaque(ctx!).takeUnretainedValue().body(Int(part), Int(parts))
            }, ctx, Int32(parts))
            withExtendedLifetime(task) {}
        }
    }

    /// Splits [0, n) into `parts` contiguous ranges whose bounds are multiples of `align`.
    public static func range(_ part: Int, of parts: Int, n: Int, align: Int = 1) -> Range<Int> {
        let units = (n + align - 1) / align
        let lo = min(n, units * part / parts * align), hi = min(n, units * (part + 1) / parts * align)
        return lo..<hi
    }
}
