import Foundation
import XCTest
@testable import ZipARCore

/// Locates ../shared/fixtures next to the package root. Tests fail loudly (never skip) when it is missing.
enum Fixtures {
    static let packageRoot: String = {
        // This file is <root>/Tests/ZipARCoreTests/Fixtures.swift.
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static var sharedDir: String { packageRoot + "/../shared" }

    static func path(_ rel: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let p = sharedDir + "/fixtures/" + rel
        guard FileManager.default.fileExists(atPath: p) else {
            XCTFail("fixture \(p) is missing: ../shared must sit next to the repository", file: file, line: line)
            throw ZipARError("missing fixture \(p)")
        }
        return p
    }

    static func safetensors(_ rel: String) throws -> SafeTensorsFile { try SafeTensorsFile(path: try path(rel)) }
    static func json(_ rel: String) throws -> [String: Any] { try readJSONObject(try path(rel)) }

    static func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "zipar-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
}
