import XCTest
@testable import ZipARCore

final class ParallelTests: XCTestCase {
    /// Every chunk runs exactly once, on a worker id below the thread count, across many calls
    /// (the pool reuses its workers; a stale worker must never run a chunk of a later call).
    func testEveryChunkRunsOnceOnAValidWorker() {
        let saved = Parallel.threads
        defer { Parallel.threads = saved }
        for threads in [1, 2, 3] {
            Parallel.threads = threads
            for chunks in [1, 2, 3, 7, 64] {
                for _ in 0..<50 {
                    let hits = UnsafeMutablePointer<Int32>.allocate(capacity: chunks)
                    hits.initialize(repeating: 0, count: chunks)
                    let workers = UnsafeMutablePointer<Int32>.allocate(capacity: chunks)
                    Parallel.run(chunks: chunks) { chunk, n, worker in
                        XCTAssertEqual(n, chunks)
                        hits[chunk] += 1            // each chunk is claimed by exactly one thread
                        workers[chunk] = Int32(worker)
                    }
                    for c in 0..<chunks {
                        XCTAssertEqual(hits[c], 1, "chunk \(c) of \(chunks) with \(threads) threads")
                        XCTAssertTrue(workers[c] >= 0 && Int(workers[c]) < threads)
                    }
                    hits.deallocate(); workers.deallocate()
                }
            }
        }
    }

    func testRangesCoverAlignedAndDisjoint() {
        for (n, parts, align) in [(100, 3, 12), (768, 8, 12), (5, 4, 1), (0, 2, 4), (13, 13, 1)] {
            var covered = 0, last = 0
            for p in 0..<parts {
                let r = Parallel.range(p, of: parts, n: n, align: align)
                XCTAssertEqual(r.lowerBound, last)
                if r.upperBound < n { XCTAssertEqual(r.upperBound % align, 0) }
                covered += r.count; last = r.upperBound
            }
            XCTAssertEqual(covered, n)
        }
    }
}
