import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Element types a safetensors file may hold (the subset zipar reads or writes).
public enum DType: String, CaseIterable, Sendable {
    case F32, F16, BF16, I64, I32, I16, I8, U8, BOOL

    public var size: Int {
        switch self {
        case .F32, .I32: return 4
        case .F16, .BF16, .I16: return 2
        case .I64: return 8
        case .I8, .U8, .BOOL: return 1
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct TensorInfo: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range inside the data section (after the 8-byte length and the JSON header).
    public let begin: Int
    public let end: Int
    public var count: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file. The header is validated completely on open:
/// JSON shape, known dtypes, offsets inside the file, no overlaps, byte length == dtype size * elements.
/// Any violation is a ZipARError naming the file; nothing is read out of bounds.
public final class SafeTensorsFile {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    private let base: UnsafeRawPointer
    private let mappedSize: Int
    private let dataStart: Int

    /// Headers larger than this are refused (the format's reference reader uses 100 MB).
    public static let maxHeaderBytes = 100 * 1024 * 1024

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ZipARError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ZipARError("cannot stat \(path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ZipARError("\(path) is not a regular file") }
        let size = Int(st.st_size)
        guard size >= 8 else { throw ZipARError("\(path): not a safetensors file (only \(size) bytes)") }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ZipARError("cannot memory-map \(path)")
        }
        let base = UnsafeRawPointer(p)
        do {
            let parsed = try SafeTensorsFile.parseHeader(base: base, size: size, path: path)
            self.tensors = parsed.tensors
            self.metadata = parsed.metadata
            self.dataStart = parsed.dataStart
        } catch {
            munmap(p, size)
            throw error
        }
        self.base = base
        self.mappedSize = size
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedSize) }

    private static func parseHeader(base: UnsafeRawPointer, size: Int, path: String) throws
        -> (tensors: [String: TensorInfo], metadata: [String: String], dataStart: Int) {
        func bad(_ why: String) -> ZipARError { ZipARError("\(path): invalid safetensors file: \(why)") }
        let n64 = base.loadUnaligned(as: UInt64.self).littleEndian
        guard n64 <= UInt64(maxHeaderBytes) else { throw bad("header length \(n64) exceeds the 100 MB limit") }
        let n = Int(n64)
        guard n >= 2, 8 + n <= size else { throw bad("header length \(n) does not fit in a \(size)-byte file (truncated?)") }
        let headerData = Data(bytes: base + 8, count: n)
        guard let json = try? JSONSerialization.jsonObject(with: headerData),
              let dict = json as? [String: Any] else { throw bad("header is not a JSON object") }
        let dataSize = size - 8 - n
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw bad("__metadata__ is not an object") }
                for (k, v) in m { metadata[k] = (v as? String) ?? "\(v)" }
                continue
            }
            guard let entry = value as? [String: Any] else { throw bad("entry '\(name)' is not an object") }
            guard let dts = entry["dtype"] as? String else { throw bad("entry '\(name)' has no dtype") }
            guard let dtype = DType(rawValue: dts) else { throw bad("entry '\(name)' has unsupported dtype \(dts)") }
            guard let shapeAny = entry["shape"] as? [Any] else { throw bad("entry '\(name)' has no shape") }
            var shape: [Int] = []
            var elements = 1
            // Not `d is Bool`: on Linux every JSON 0 and 1 bridges to Bool, so shapes like [64, 64, 1, 1]
            // were rejected. JSON true/false are the NSNumbers whose objCType is "c".
            for d in shapeAny {
                guard let num = d as? NSNumber, String(cString: num.objCType) != "c", num.doubleValue == Double(num.int64Value), num.int64Value >= 0,
                      num.int64Value < Int64(Int32.max) else { throw bad("entry '\(name)' has an invalid shape") }
                shape.append(num.intValue)
                let (m, o) = elements.multipliedReportingOverflow(by: num.intValue)
                guard !o else { throw bad("entry '\(name)' shape overflows") }
                elements = m
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                  let b = offs[0] as? NSNumber, let e = offs[1] as? NSNumber,
                  b.int64Value >= 0, e.int64Value >= b.int64Value else { throw bad("entry '\(name)' has invalid data_offsets") }
            let begin = b.intValue, end = e.intValue
            guard end <= dataSize else { throw bad("entry '\(name)' ends at \(end), past the \(dataSize)-byte data section (truncated?)") }
            let (bytes, o) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !o, bytes == end - begin else {
                throw bad("entry '\(name)': \(dtype) \(shape) needs \(elements * dtype.size) bytes, offsets give \(end - begin)")
            }
            tensors[name] = TensorInfo(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
        }
        let sorted = tensors.values.filter { $0.end > $0.begin }.sorted { $0.begin < $1.begin }
        for i in sorted.indices.dropFirst() where sorted[i].begin < sorted[i - 1].end {
            throw bad("entries '\(sorted[i - 1].name)' and '\(sorted[i].name)' overlap")
        }
        return (tensors, metadata, 8 + n)
    }

    public func info(_ name: String) throws -> TensorInfo {
        guard let t = tensors[name] else { throw ZipARError("\(path): missing tensor '\(name)'") }
        return t
    }

    /// Raw bytes of a tensor (valid while this object lives).
    public func bytes(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + dataStart + info.begin, count: info.end - info.begin)
    }

    /// A float tensor converted to Float32, with an optional shape check.
    public func tensor(_ name: String, shape expected: [Int]? = nil) throws -> Tensor {
        let info = try info(name)
        if let expected, expected != info.shape {
            throw ZipARError("\(path): tensor '\(name)' has shape \(info.shape), the config needs \(expected)")
        }
        let t = Tensor(shape: info.shape)
        let src = bytes(info)
        switch info.dtype {
        case .F32:
            for i in 0..<info.count { t.data[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .F16:
            for i in 0..<info.count { t.data[i] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case .BF16:
            for i in 0..<info.count { t.data[i] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16) }
        default:
            throw ZipARError("\(path): tensor '\(name)' is \(info.dtype), expected a float type (F32, F16 or BF16)")
        }
        return t
    }

    /// An integer tensor (I64, I32, I16, I8, U8, BOOL) as Int values.
    public func ints(_ name: String) throws -> [Int] {
        let info = try info(name)
        let src = bytes(info)
        switch info.dtype {
        case .I64: return (0..<info.count).map { Int(Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
        case .I32: return (0..<info.count).map { Int(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        case .I16: return (0..<info.count).map { Int(Int16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self))) }
        case .I8: return (0..<info.count).map { Int(src.load(fromByteOffset: $0, as: Int8.self)) }
        case .U8, .BOOL: return (0..<info.count).map { Int(src[$0]) }
        default: throw ZipARError("\(path): tensor '\(name)' is \(info.dtype), expected an integer type")
        }
    }
}

/// Writes a safetensors file atomically (temp file + rename). Tensors keep the given order.
public enum SafeTensorsWriter {
    public struct Entry {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let bytes: Data
        public init(name: String, dtype: DType, shape: [Int], bytes: Data) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.bytes = bytes
        }
        public static func f32(_ name: String, _ t: Tensor) -> Entry {
            Entry(name: name, dtype: .F32, shape: t.shape, bytes: Data(bytes: t.data, count: t.count * 4))
        }
    }

    public static func encode(_ entries: [Entry], metadata: [String: String] = [:]) throws -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for e in entries {
            header[e.name] = ["dtype": e.dtype.rawValue, "shape": e.shape, "data_offsets": [offset, offset + e.bytes.count]]
            offset += e.bytes.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }  // pad with spaces so data is 8-byte aligned
        var out = Data()
        var n = UInt64(json.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(json)
        for e in entries { out.append(e.bytes) }
        return out
    }

    public static func write(_ entries: [Entry], metadata: [String: String] = [:], to path: String) throws {
        try AtomicFile.write(try encode(entries, metadata: metadata), to: path)
    }
}

/// Writes files atomically: a temp file in the same directory, then rename. Nothing partial is left.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw ZipARError("cannot write \(path): directory \(dir) does not exist")
        }
        let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else {
            throw ZipARError("cannot write \(path): permission denied or disk full")
        }
        guard rename(tmp, path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(tmp)
            throw ZipARError("cannot write \(path): \(why)")
        }
    }
}
