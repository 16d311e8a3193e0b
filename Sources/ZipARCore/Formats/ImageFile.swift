import CImageIO
import Foundation

/// An 8-bit RGB image, pixels interleaved row by row (HWC): pixel (x, y) starts at `(y * width + x) * 3`.
public struct RGBImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "RGBImage: \(pixels.count) bytes do not make a \(width)x\(height) RGB8 image")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A black image.
    public init(width: Int, height: Int) {
        self.init(width: width, height: height, pixels: [UInt8](repeating: 0, count: width * height * 3))
    }
}

/// Reading and writing PNG and JPEG files, with text metadata.
///
/// Metadata:
/// - PNG: every (key, value) pair becomes a text chunk, written before the image data. Values that are
///   Latin-1 go into `tEXt`; any other value goes into an uncompressed UTF-8 `iTXt` chunk (what A1111 and
///   PIL do, so their "PNG Info" readers see it). Keys must be valid PNG keywords (1-79 Latin-1 characters).
/// - JPEG: only the `parameters` value is kept, in a COM marker (UTF-8, at most 65533 bytes); other keys
///   are dropped. Reading a JPEG returns its first COM marker as `parameters`.
///
/// Writing is atomic: the file is encoded in memory, then written to a temporary file and renamed, so a
/// failure never leaves a partial image behind.
public enum ImageFile {
    public enum Format: Equatable, Sendable {
        case png, jpeg
    }

    /// The format named by the file extension: `.png`, `.jpg` or `.jpeg`, in any case.
    public static func format(for path: String) throws -> Format {
        switch URL(fileURLWithPath: path).pathExtension.lowercased() {
        case "png": return .png
        case "jpg", "jpeg": return .jpeg
        default:
            throw ZipARError("cannot tell the image format of \(path): use a .png, .jpg or .jpeg extension")
        }
    }

    /// Writes `image` to `path` in the format given by its extension.
    /// `jpegQuality` (1...100) is checked for every format, so a bad value fails early and the same way.
    public static func write(_ image: RGBImage, to path: String, metadata: [(key: String, value: String)] = [],
                             jpegQuality: Int = 92) throws {
        let format = try format(for: path)
        let data: Data
        do {
            data = try encode(image, format: format, metadata: metadata, jpegQuality: jpegQuality)
        } catch let error as ZipARError {
            throw ZipARError("cannot write \(path): \(error.message)")
        }
        try AtomicFile.write(data, to: path)
    }

    /// Reads a PNG or JPEG file (recognised by its content, not its extension) and its text metadata.
    public static func read(_ path: String) throws -> (image: RGBImage, text: [String: String]) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ZipARError("cannot read \(path): no such file")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ZipARError("cannot read \(path): permission denied or not a regular file")
        }
        do {
            return try decode(data)
        } catch let error as ZipARError {
            throw ZipARError("cannot read \(path): \(error.message)")
        }
    }

    /// Encodes to PNG or JPEG bytes in memory (see the type documentation for what happens to metadata).
    public static func encode(_ image: RGBImage, format: Format, metadata: [(key: String, value: String)] = [],
                              jpegQuality: Int = 92) throws -> Data {
        guard (1...100).contains(jpegQuality) else {
            throw ZipARError("JPEG quality must be between 1 and 100, got \(jpegQuality)")
        }
        guard image.width > 0, image.height > 0, image.pixels.count == image.width * image.height * 3 else {
            throw ZipARError("invalid image: \(image.width)x\(image.height) with \(image.pixels.count) bytes")
        }
        switch format {
        case .png: return try encodePNG(image, metadata: metadata)
        case .jpeg:
            let comment = metadata.last(where: { $0.key == "parameters" }).map { Array($0.value.utf8) } ?? []
            return try encodeJPEG(image, quality: jpegQuality, comment: comment)
        }
    }

    /// Decodes PNG or JPEG bytes, recognised by their signature.
    public static func decode(_ data: Data) throws -> (image: RGBImage, text: [String: String]) {
        let bytes = [UInt8](data)
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return try decodePNG(bytes) }
        if bytes.starts(with: [0xFF, 0xD8, 0xFF]) { return try decodeJPEG(bytes) }
        throw ZipARError("not a PNG or JPEG file")
    }

    // MARK: - PNG

    private static func encodePNG(_ image: RGBImage, metadata: [(key: String, value: String)]) throws -> Data {
        // Packed "key\0value\0..." blob plus one flag per pair (see cimageio.h).
        var blob: [UInt8] = []
        var utf8Flags: [Int32] = []
        for (key, value) in metadata {
            blob += try pngKeyword(key)
            blob.append(0)
            if value.unicodeScalars.contains(where: { $0.value == 0 }) {
                throw ZipARError("metadata value for \"\(key)\" contains a NUL character")
            }
            if let latin1 = latin1Bytes(value) {
                blob += latin1
                utf8Flags.append(0)
            } else {
                blob += Array(value.utf8)
                utf8Flags.append(1)
            }
            blob.append(0)
        }
        var out: UnsafeMutablePointer<UInt8>? = nil
        var outLen = 0
        try callC("PNG encoding") { errbuf, errlen in
            image.pixels.withUnsafeBufferPointer { px in
                blob.withUnsafeBufferPointer { text in
                    utf8Flags.withUnsafeBufferPointer { flags in
                        cimg_png_encode(px.baseAddress, Int32(image.width), Int32(image.height),
                                        text.baseAddress, text.count, flags.baseAddress, Int32(flags.count),
                                        &out, &outLen, errbuf, errlen)
                    }
                }
            }
        }
        defer { cimg_free(out) }
        return Data(bytes: out!, count: outLen)
    }

    private static func decodePNG(_ bytes: [UInt8]) throws -> (image: RGBImage, text: [String: String]) {
        var rgb: UnsafeMutablePointer<UInt8>? = nil
        var w: Int32 = 0, h: Int32 = 0
        var text: UnsafeMutablePointer<UInt8>? = nil
        var textLen = 0
        var textCount: Int32 = 0
        try callC("invalid PNG") { errbuf, errlen in
            bytes.withUnsafeBufferPointer {
                cimg_png_decode($0.baseAddress, $0.count, &rgb, &w, &h, &text, &textLen, &textCount, errbuf, errlen)
            }
        }
        defer {
            cimg_free(rgb)
            cimg_free(text)
        }
        let image = RGBImage(width: Int(w), height: Int(h),
                             pixels: Array(UnsafeBufferPointer(start: rgb, count: Int(w) * Int(h) * 3)))
        // Unpack "key\0value\0..." (all UTF-8 by now); a repeated key keeps its last value.
        let parts = UnsafeBufferPointer(start: text, count: textLen).split(separator: 0, omittingEmptySubsequences: false)
        var dict: [String: String] = [:]
        for i in 0..<Int(textCount) where 2 * i + 1 < parts.count {
            dict[String(decoding: parts[2 * i], as: UTF8.self)] = String(decoding: parts[2 * i + 1], as: UTF8.self)
        }
        return (image, dict)
    }

    /// PNG keywords: 1-79 printable Latin-1 characters, no leading, trailing or double spaces.
    /// libpng would silently rewrite an invalid keyword, so we reject it instead.
    private static func pngKeyword(_ key: String) throws -> [UInt8] {
        guard let bytes = latin1Bytes(key), (1...79).contains(bytes.count),
              bytes.allSatisfy({ (0x20...0x7E).contains($0) || (0xA1...0xFF).contains($0) }),
              bytes.first != 0x20, bytes.last != 0x20, !key.contains("  ") else {
            throw ZipARError("invalid PNG metadata key \"\(key)\": use 1-79 printable Latin-1 characters")
        }
        return bytes
    }

    private static func latin1Bytes(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        for scalar in s.unicodeScalars {
            guard scalar.value <= 0xFF else { return nil }
            out.append(UInt8(scalar.value))
        }
        return out
    }

    // MARK: - JPEG

    private static func encodeJPEG(_ image: RGBImage, quality: Int, comment: [UInt8]) throws -> Data {
        guard comment.count <= 65533 else {
            throw ZipARError("the parameters text is \(comment.count) bytes; a JPEG comment holds at most 65533")
        }
        var out: UnsafeMutablePointer<UInt8>? = nil
        var outLen = 0
        try callC("JPEG encoding") { errbuf, errlen in
            image.pixels.withUnsafeBufferPointer { px in
                comment.withUnsafeBufferPointer { c in
                    cimg_jpeg_encode(px.baseAddress, Int32(image.width), Int32(image.height), Int32(quality),
                                     c.baseAddress, c.count, &out, &outLen, errbuf, errlen)
                }
            }
        }
        defer { cimg_free(out) }
        return Data(bytes: out!, count: outLen)
    }

    private static func decodeJPEG(_ bytes: [UInt8]) throws -> (image: RGBImage, text: [String: String]) {
        var rgb: UnsafeMutablePointer<UInt8>? = nil
        var w: Int32 = 0, h: Int32 = 0
        var comment: UnsafeMutablePointer<UInt8>? = nil
        var commentLen = 0
        try callC("invalid JPEG") { errbuf, errlen in
            bytes.withUnsafeBufferPointer {
                cimg_jpeg_decode($0.baseAddress, $0.count, &rgb, &w, &h, &comment, &commentLen, errbuf, errlen)
            }
        }
        defer {
            cimg_free(rgb)
            cimg_free(comment)
        }
        let image = RGBImage(width: Int(w), height: Int(h),
                             pixels: Array(UnsafeBufferPointer(start: rgb, count: Int(w) * Int(h) * 3)))
        var text: [String: String] = [:]
        if let comment {
            // We write UTF-8; comments from other tools may be Latin-1.
            let raw = Array(UnsafeBufferPointer(start: comment, count: commentLen))
            text["parameters"] = String(validating: raw, as: UTF8.self)
                ?? String(String.UnicodeScalarView(raw.map { Unicode.Scalar($0) }))
        }
        return (image, text)
    }

    // MARK: - C calls

    /// Runs a CImageIO call with an error buffer; a non-zero return becomes "<what>: <C message>".
    private static func callC(_ what: String, _ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws {
        var errbuf = [CChar](repeating: 0, count: 256)
        let rc = errbuf.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        if rc != 0 {
            let message = errbuf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw ZipARError("\(what): \(message.isEmpty ? "unknown error" : message)")
        }
    }
}
