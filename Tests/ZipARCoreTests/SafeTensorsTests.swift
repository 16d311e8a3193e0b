import XCTest
@testable import ZipARCore

final class SafeTensorsTests: XCTestCase {
    func testRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "st-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        try SafeTensorsWriter.write([.f32("a", t)], to: dir + "/a.safetensors")
        let f = try SafeTensorsFile(path: dir + "/a.safetensors")
        XCTAssertEqual(try f.tensor("a").array, t.array)
        XCTAssertThrowsError(try f.tensor("a", shape: [3, 2]))
    }
}
