import Foundation
import XCTest
@testable import ZipARCore

final class ImageFileTests: XCTestCase {
    /// Deterministic noisy image: exercises every byte value, so a PNG round trip proves exactness.
    static func noise(width: Int, height: Int, seed: UInt64 = 1) -> RGBImage {
        var s = seed
        let px = (0..<width * height * 3).map { _ -> UInt8 in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: s >> 56)
        }
        return RGBImage(width: width, height: height, pixels: px)
    }

    /// Smooth image, the kind of content JPEG is meant for.
    static func gradient(width: Int, height: Int) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        for y in 0..<height {
            for x in 0..<width {
                let i = (y * width + x) * 3
                img.pixels[i] = UInt8(x * 255 / (width - 1))
                img.pixels[i + 1] = UInt8(y * 255 / (height - 1))
                img.pixels[i + 2] = UInt8((x + y) * 255 / (width + height - 2))
            }
        }
        return img
    }

    func entries(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    func assertZipARError(_ expression: @autoclosure () throws -> Any, containing text: String,
                          file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            guard let error = error as? ZipARError else {
                return XCTFail("expected ZipARError, got \(error)", file: file, line: line)
            }
            XCTAssertTrue(error.message.contains(text), "\"\(error.message)\" lacks \"\(text)\"", file: file, line: line)
        }
    }

    // MARK: - PNG

    func testPNGRoundTripIsExactAndKeepsText() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = Self.noise(width: 37, height: 23)
        let parameters = "a red fox\nNegative prompt: blurry\nSteps: 256, CFG scale: 4, Seed: 42, Size: 256x256"
        let metadata: [(key: String, value: String)] = [
            ("parameters", parameters),
            ("zipar_window", "8"),
            ("comment", "café"),            // Latin-1: stays a tEXt chunk
            ("prompt", "一只猫 🐱, naïve"),   // not Latin-1: goes into iTXt as UTF-8
            ("empty", ""),
        ]
        let path = dir + "/out.png"
        try ImageFile.write(image, to: path, metadata: metadata)

        let (back, text) = try ImageFile.read(path)
        XCTAssertEqual(back, image)
        XCTAssertEqual(text, ["parameters": parameters, "zipar_window": "8", "comment": "café",
                              "prompt": "一只猫 🐱, naïve", "empty": ""])
        XCTAssertEqual(try entries(dir), ["out.png"], "no temporary file may remain")

        // Chunk types on disk: Latin-1 text as tEXt with Latin-1 bytes, the rest as iTXt.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertTrue(contains(bytes, Array("tEXtcomment".utf8) + [0, 0x63, 0x61, 0x66, 0xE9]))
        XCTAssertTrue(contains(bytes, Array("tEXtparameters".utf8) + [0]))
        XCTAssertTrue(contains(bytes, Array("iTXtprompt".utf8) + [0]))
    }

    func testPNGRejectsInvalidKeys() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = RGBImage(width: 2, height: 2)
        for key in ["", " lead", "trail ", "two  spaces", "日本", String(repeating: "k", count: 80)] {
            assertZipARError(try ImageFile.write(image, to: dir + "/k.png", metadata: [(key, "v")]),
                             containing: "invalid PNG metadata key")
        }
        assertZipARError(try ImageFile.write(image, to: dir + "/k.png", metadata: [("k", "a\u{0}b")]),
                         containing: "NUL")
        XCTAssertEqual(try entries(dir), [])
    }

    func testPNGWithoutMetadataAndOneByOne() throws {
        let image = RGBImage(width: 1, height: 1, pixels: [1, 2, 3])
        let (back, text) = try ImageFile.decode(try ImageFile.encode(image, format: .png))
        XCTAssertEqual(back, image)
        XCTAssertEqual(text, [:])
    }

    func testCorruptPNGThrows() throws {
        let good = try ImageFile.encode(Self.noise(width: 16, height: 16), format: .png, metadata: [("k", "v")])
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var flipped = [UInt8](good)
        flipped[flipped.count / 2] ^= 0xFF               // inside IDAT: CRC / zlib error
        let cases: [[UInt8]] = [
            signature,                                      // signature only
            signature + [UInt8](repeating: 0xAB, count: 100), // garbage after the signature
            Array(good.prefix(good.count / 2)),             // truncated
            Array(good.dropLast(12)),                       // IEND missing
            flipped,
        ]
        for bytes in cases {
            assertZipARError(try ImageFile.decode(Data(bytes)), containing: "invalid PNG")
        }
        // Same through a file: the message names the file.
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(cases[2]).write(to: URL(fileURLWithPath: dir + "/bad.png"))
        assertZipARError(try ImageFile.read(dir + "/bad.png"), containing: dir + "/bad.png")
    }

    // MARK: - JPEG

    func testJPEGRoundTripKeepsSizeAndParameters() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = Self.gradient(width: 64, height: 48)
        let parameters = "un chat noir, 一只猫\nSteps: 256, Seed: 7"
        let path = dir + "/out.JPG"
        try ImageFile.write(image, to: path, metadata: [("zipar_window", "8"), ("parameters", parameters)],
                            jpegQuality: 95)
        let (back, text) = try ImageFile.read(path)
        XCTAssertEqual(back.width, 64)
        XCTAssertEqual(back.height, 48)
        let maxDiff = zip(back.pixels, image.pixels).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThanOrEqual(maxDiff, 6)
        XCTAssertEqual(text, ["parameters": parameters], "only parameters survives, in the COM marker")
        XCTAssertEqual(try entries(dir), ["out.JPG"])
    }

    func testJPEGWithoutParametersAndLowQuality() throws {
        let image = Self.gradient(width: 17, height: 9)
        let data = try ImageFile.encode(image, format: .jpeg, jpegQuality: 1)
        let (back, text) = try ImageFile.decode(data)
        XCTAssertEqual(back.width, 17)
        XCTAssertEqual(back.height, 9)
        XCTAssertEqual(text, [:])
        let big = String(repeating: "x", count: 65534)
        assertZipARError(try ImageFile.encode(image, format: .jpeg, metadata: [("parameters", big)]),
                         containing: "65533")
    }

    func testCorruptJPEGThrows() throws {
        let good = [UInt8](try ImageFile.encode(Self.noise(width: 32, height: 32), format: .jpeg))
        let cases: [[UInt8]] = [
            [0xFF, 0xD8, 0xFF],                                     // header only
            [0xFF, 0xD8, 0xFF] + [UInt8](repeating: 0x5A, count: 200), // garbage
            Array(good.prefix(good.count / 2)),                     // truncated (a warning in libjpeg)
            Array(good.prefix(40)),
        ]
        for bytes in cases {
            assertZipARError(try ImageFile.decode(Data(bytes)), containing: "invalid JPEG")
        }
        assertZipARError(try ImageFile.decode(Data([1, 2, 3, 4])), containing: "not a PNG or JPEG")
        assertZipARError(try ImageFile.decode(Data()), containing: "not a PNG or JPEG")
    }

    func testInvalidQualityIsAnError() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for quality in [0, 101, -5] {
            assertZipARError(try ImageFile.write(RGBImage(width: 4, height: 4), to: dir + "/q.jpg", jpegQuality: quality),
                             containing: "between 1 and 100")
        }
        XCTAssertEqual(try entries(dir), [])
    }

    // MARK: - Paths and formats

    func testFormatFromExtension() throws {
        XCTAssertEqual(try ImageFile.format(for: "a.png"), .png)
        XCTAssertEqual(try ImageFile.format(for: "/x/y/B.PnG"), .png)
        XCTAssertEqual(try ImageFile.format(for: "c.jpg"), .jpeg)
        XCTAssertEqual(try ImageFile.format(for: "d.JPEG"), .jpeg)
        for path in ["e.gif", "f", "g.png.txt"] {
            assertZipARError(try ImageFile.format(for: path), containing: ".png, .jpg or .jpeg")
        }
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        assertZipARError(try ImageFile.write(RGBImage(width: 1, height: 1), to: dir + "/x.webp"),
                         containing: "cannot tell the image format")
        XCTAssertEqual(try entries(dir), [])
    }

    func testMissingDirectoryIsOneClearError() throws {
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        assertZipARError(try ImageFile.write(RGBImage(width: 2, height: 2), to: dir + "/nope/out.png"),
                         containing: "does not exist")
        XCTAssertEqual(try entries(dir), [])
        assertZipARError(try ImageFile.read(dir + "/nope.png"), containing: "no such file")
    }

    func testUnwritableDirectoryIsAnErrorAndLeavesNothing() throws {
        let dir = try Fixtures.tempDir()
        defer {
            chmod(dir, 0o755)
            try? FileManager.default.removeItem(atPath: dir)
        }
        chmod(dir, 0o555)
        // root ignores permission bits; procfs refuses new files even to root.
        let target = geteuid() == 0 ? "/proc/zipar-test.png" : dir + "/out.png"
        XCTAssertThrowsError(try ImageFile.write(RGBImage(width: 2, height: 2), to: target)) { error in
            XCTAssertTrue(error is ZipARError, "\(error)")
            XCTAssertTrue("\(error)".contains(target), "\(error)")
        }
        XCTAssertEqual(try entries(dir), [])
    }

    func testFailedRenameLeavesNoTempFile() throws {
        // The temp file is written, then the rename fails because the target is a non-empty directory.
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/out.png/inner", withIntermediateDirectories: true)
        assertZipARError(try ImageFile.write(RGBImage(width: 2, height: 2), to: dir + "/out.png"),
                         containing: "cannot write")
        XCTAssertEqual(try entries(dir), ["out.png"])
    }

    private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<$0 + needle.count]) == needle }
    }
}
