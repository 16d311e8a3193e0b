/// Every user-facing failure is one of these: a single clear sentence, no stack trace.
public struct ZipARError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

import Foundation

/// True for JSON true/false. (On Linux `x is Bool` also holds for the numbers 0 and 1, so the
/// NSNumber's type code is what tells a boolean from an integer.)
func isJSONBool(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
}
