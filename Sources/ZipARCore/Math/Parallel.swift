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
        // ZIPAR_QKERNEL_LEVEL=0 or 1 caps the integer kernels (0 portable, 1 AVX2; to compare paths end to end).
        if let level = ProcessInfo.processInfo.environment["ZIPAR_QKERNEL_LEVEL"].flatMap({ Int32($0) }), (0...2).contains(level) {
            ck_qkernel_force(level)
        }
        let n = max(1, ProcessInfo.processInfo.activeProcessorCount)
        ck_pool_start(Int32(n))
        return n
    }()

    private final class Task {
        let body: (Int, Int, Int) -> Void
        init(_ body: @escaping (Int, Int, Int) -> Void) { self.body = body }
    }

    /// Runs body(chunk, chunks, worker) for every chunk in [0, chunks) on up to `threads` workers and
    /// waits for all. `worker` (0..<threads) names the thread, for per-thread scratch buffers.
    /// Chunks are claimed dynamically, so a descheduled worker never stalls the call.
    public static func run(chunks: Int, _ body: (_ chunk: Int, _ chunks: Int, _ worker: Int) -> Void) {
        if chunks <= 0 { return }
        if chunks == 1 || threads <= 1 { for c in 0..<chunks { body(c, chunks, 0) }; return }
        withoutActuallyEscaping(body) { escapable in
            let task = Task(escapable)
            let ctx = Unmanaged.passUnretained(task).toOpaque()
            ck_parallel({ ctx, chunk, chunks, worker in
                Unmanaged<Task>.fromOpaque(ctx!).takeUnretainedValue().body(Int(chunk), Int(chunks), Int(worker))
            }, ctx, Int32(chunks), Int32(threads))
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
