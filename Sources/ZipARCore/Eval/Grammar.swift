import Foundation

// The shape grammar shared by the default text-to-image model's training data, the procedural
// renderer, the prompt set and the analyser of `zipar eval`. It is a contract: change it only
// together with the training data.
//
//   prompt     := object [relation object] [background]
//   object     := "a" COLOR SHAPE
//   relation   := "left of" | "right of" | "above" | "below"
//   background := "on a" COLOR "background"
//
// Image rules: solid background, flat shapes without outline, object bounding boxes 16%-40% of the
// canvas side, objects never overlap, a relation means the centroids differ by at least 15% of the
// canvas along that axis and more than along the other axis, two objects differ in colour or shape,
// no object has the background's colour, and without a named background the background is any
// palette colour no object uses.

/// The ten palette colours and their exact RGB values.
public enum PaletteColor: String, CaseIterable, Sendable {
    case red, orange, yellow, green, cyan, blue, purple, white, black, gray

    public var rgb: (r: UInt8, g: UInt8, b: UInt8) {
        switch self {
        case .red: return (220, 40, 40)
        case .orange: return (245, 140, 30)
        case .yellow: return (240, 220, 40)
        case .green: return (40, 170, 60)
        case .cyan: return (40, 200, 220)
        case .blue: return (40, 70, 210)
        case .purple: return (140, 60, 190)
        case .white: return (245, 245, 245)
        case .black: return (20, 20, 20)
        case .gray: return (128, 128, 128)
        }
    }
}

/// The four shapes: square is axis-aligned, triangle points up, diamond is a square turned 45 degrees.
public enum ShapeKind: String, CaseIterable, Sendable {
    case circle, square, triangle, diamond
}

/// "A <relation> B" compares the centroid of A with the centroid of B (image y grows downwards).
public enum Relation: String, CaseIterable, Sendable {
    case leftOf = "left of"
    case rightOf = "right of"
    case above
    case below

    /// True if the relation's axis is x (left/right), false for y (above/below).
    public var horizontal: Bool { self == .leftOf || self == .rightOf }

    /// The reverse relation: "A left of B" is "B right of A".
    public var swapped: Relation {
        switch self {
        case .leftOf: return .rightOf
        case .rightOf: return .leftOf
        case .above: return .below
        case .below: return .above
        }
    }

    /// Whether A (centroid a) stands in this relation to B (centroid b), both as fractions of the
    /// canvas (x / width, y / height): the difference along the relation's axis has the right sign,
    /// is at least `margin`, and is larger than the difference along the other axis.
    public func holds(a: (x: Double, y: Double), b: (x: Double, y: Double), margin: Double) -> Bool {
        let dx = b.x - a.x, dy = b.y - a.y      // positive: A is left of / above B
        let along: Double, across: Double
        switch self {
        case .leftOf: (along, across) = (dx, dy)
        case .rightOf: (along, across) = (-dx, dy)
        case .above: (along, across) = (dy, dx)
        case .below: (along, across) = (-dy, dx)
        }
        return along >= margin && along > abs(across)
    }
}

/// One object of a prompt: "a red circle".
public struct ShapeObject: Hashable, Sendable, CustomStringConvertible {
    public var color: PaletteColor
    public var shape: ShapeKind
    public init(_ color: PaletteColor, _ shape: ShapeKind) { self.color = color; self.shape = shape }
    public var description: String { "a \(color.rawValue) \(shape.rawValue)" }
}

/// A parsed prompt of the grammar. Invariants (checked by `init(objects:relation:background:)` and
/// `parse`): one object, or two objects with a relation; two objects differ in colour or shape; no
/// object has the background's colour.
public struct ShapePrompt: Hashable, Sendable, CustomStringConvertible {
    public let objects: [ShapeObject]
    public let relation: Relation?
    public let background: PaletteColor?

    public init(objects: [ShapeObject], relation: Relation? = nil, background: PaletteColor? = nil) throws {
        guard objects.count == 1 || objects.count == 2 else { throw ZipARError("a prompt names one or two objects, got \(objects.count)") }
        guard (objects.count == 2) == (relation != nil) else {
            throw ZipARError(relation == nil ? "two objects need a relation (left of, right of, above, below)" : "a relation needs two objects")
        }
        if objects.count == 2 && objects[0] == objects[1] {
            throw ZipARError("the two objects must differ in colour or shape ('\(objects[0])' twice)")
        }
        if let bg = background, let o = objects.first(where: { $0.color == bg }) {
            throw ZipARError("'\(o)' has the background's colour \(bg.rawValue)")
        }
        self.objects = objects
        self.relation = relation
        self.background = background
    }

    /// The canonical text, e.g. "a green triangle left of a purple diamond on a white background".
    public var text: String {
        var s = objects[0].description
        if let r = relation, objects.count == 2 { s += " \(r.rawValue) \(objects[1].description)" }
        if let bg = background { s += " on a \(bg.rawValue) background" }
        return s
    }

    public var description: String { text }

    /// Parses a prompt; case and extra whitespace are ignored. Throws a `ZipARError` that says
    /// what was expected where.
    public static func parse(_ text: String) throws -> ShapePrompt {
        let words = text.lowercased().split(whereSeparator: { $0.isWhitespace }).map(String.init)
        var i = 0
        func fail(_ expected: String) -> ZipARError {
            let found = i < words.count ? "'\(words[i])'" : "the end"
            return ZipARError("cannot parse prompt '\(text)': expected \(expected), found \(found)")
        }
        func expect(_ word: String) throws {
            guard i < words.count, words[i] == word else { throw fail("'\(word)'") }
            i += 1
        }
        func color() throws -> PaletteColor {
            guard i < words.count, let c = PaletteColor(rawValue: words[i]) else {
                throw fail("a colour (\(PaletteColor.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            i += 1
            return c
        }
        func object() throws -> ShapeObject {
            try expect("a")
            let c = try color()
            guard i < words.count, let s = ShapeKind(rawValue: words[i]) else {
                throw fail("a shape (\(ShapeKind.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            i += 1
            return ShapeObject(c, s)
        }

        var objects = [try object()]
        var relation: Relation?
        // Relations are one or two words; try the two-word ones first.
        if i + 1 < words.count, let r = Relation(rawValue: words[i] + " " + words[i + 1]) {
            relation = r; i += 2
        } else if i < words.count, let r = Relation(rawValue: words[i]) {
            relation = r; i += 1
        }
        if relation != nil { objects.append(try object()) }
        var background: PaletteColor?
        if i < words.count {
            guard words[i] == "on" else {
                throw fail(relation == nil ? "a relation or 'on a COLOR background'" : "'on a COLOR background' or the end")
            }
            i += 1
            try expect("a")
            background = try color()
            try expect("background")
        }
        guard i == words.count else { throw fail("the end of the prompt") }
        return try ShapePrompt(objects: objects, relation: relation, background: background)
    }
}
