/// Every user-facing failure is one of these: a single clear sentence, no stack trace.
public struct ZipARError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
