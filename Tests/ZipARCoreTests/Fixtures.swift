import CKernels
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

/// Runs the built `zipar` binary and checks its exit status; returns stdout and stderr.
@discardableResult
func runZipar(_ args: [String], expect code: Int32 = 0, environment: [String: String] = [:], directory: String? = nil,
              file: StaticString = #filePath, line: UInt = #line) throws -> (out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: CLITests.binary)
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let res = (String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    XCTAssertEqual(p.terminationStatus, code, "zipar \(args.joined(separator: " ")): \(res.1)", file: file, line: line)
    return res
}

/// Runs `body` once per kernel path: AVX-512 and AVX2 where the CPU has them, then the portable C
/// loops (each path falls back to the next where the CPU lacks it, so a path may repeat). The C
/// switches are restored afterwards.
func forEachKernelPath(_ body: (_ path: String) throws -> Void) rethrows {
    defer { ck_avx512_enabled = 1; ck_avx2_enabled = 1 }
    for (avx512, avx2, path) in [(Int32(1), Int32(1), "avx512"), (0, 1, "avx2"), (0, 0, "portable")] {
        ck_avx512_enabled = avx512; ck_avx2_enabled = avx2
        try body(path)
    }
}
