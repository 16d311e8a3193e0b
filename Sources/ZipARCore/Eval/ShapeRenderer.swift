import Foundation

/// One object placed on the canvas: its bounding box in pixels (centre and size, fractional).
public struct PlacedShape: Equatable, Sendable {
    public var object: ShapeObject
    public var centerX: Double
    public var centerY: Double
    public var width: Double
    public var height: Double

    public init(object: ShapeObject, centerX: Double, centerY: Double, width: Double, height: Double) {
        self.object = object; self.centerX = centerX; self.centerY = centerY; self.width = width; self.height = height
    }

    /// The area centroid in pixels. A point-up triangle's lies 2/3 of the way down its box; the
    /// other shapes are symmetric about their box centre.
    public var centroid: (x: Double, y: Double) {
        object.shape == .triangle ? (centerX, centerY - height / 2 + height * 2 / 3) : (centerX, centerY)
    }

    /// Whether the pixel centre (px, py) lies inside the shape.
    public func contains(_ px: Double, _ py: Double) -> Bool {
        let dx = px - centerX, dy = py - centerY
        let hw = width / 2, hh = height / 2
        switch object.shape {
        case .circle:
            return (dx / hw) * (dx / hw) + (dy / hh) * (dy / hh) <= 1
        case .square:
            return abs(dx) <= hw && abs(dy) <= hh
        case .diamond:
            return abs(dx) / hw + abs(dy) / hh <= 1
        case .triangle:
            // Apex at the top centre, base along the bottom edge: the half width grows linearly down.
            let t = (dy + hh) / height          // 0 at the apex row, 1 at the base
            return t >= 0 && t <= 1 && abs(dx) <= t * hw
        }
    }
}

/// A full picture: background colour and the placed objects, in prompt order.
public struct ShapeScene: Equatable, Sendable {
    public var background: PaletteColor
    public var shapes: [PlacedShape]
    public init(background: PaletteColor, shapes: [PlacedShape]) { self.background = background; self.shapes = shapes }
}

/// Seeded procedural renderer of the shape grammar: the same prompt, size and seed always give the
/// same image. Every image obeys the grammar's rules (see Grammar.swift), with margins so that a
/// measurement of the image (the analyser) sees them too after mild blur or noise: object boxes are
/// 18%-38% of the canvas side (the rule says 16%-40%), relation offsets at least 17% (the rule: 15%)
/// and 5% more than across, and objects keep a gap of at least 3% of the side.
public enum ShapeRenderer {
    public static let minBoxFraction = 0.18
    public static let maxBoxFraction = 0.38
    public static let relationMargin = 0.17
    public static let relationDominance = 0.05
    public static let gapFraction = 0.03

    /// Renders `prompt` on a width x height canvas.
    public static func render(_ prompt: ShapePrompt, width: Int = 64, height: Int = 64, seed: UInt64) -> RGBImage {
        draw(scene(for: prompt, width: width, height: height, seed: seed), width: width, height: height)
    }

    /// Chooses the background and places the objects (rejection sampling with the seeded RNG).
    public static func scene(for prompt: ShapePrompt, width: Int, height: Int, seed: UInt64) -> ShapeScene {
        var rng = RNG(seed: seed)
        func uniform(_ a: Double, _ b: Double) -> Double { a + (b - a) * rng.nextUniform() }
        let W = Double(width), H = Double(height), side = Double(min(width, height))

        let used = Set(prompt.objects.map(\.color))
        let free = PaletteColor.allCases.filter { !used.contains($0) }
        let background = prompt.background ?? free[min(free.count - 1, Int(rng.nextUniform() * Double(free.count)))]

        func place(_ object: ShapeObject) -> PlacedShape {
            let s = side * uniform(minBoxFraction, maxBoxFraction)
            // A 1-px margin keeps shapes off the border, where "border majority" looks for the background.
            let cx = uniform(s / 2 + 1, W - s / 2 - 1), cy = uniform(s / 2 + 1, H - s / 2 - 1)
            return PlacedShape(object: object, centerX: cx, centerY: cy, width: s, height: s)
        }

        guard prompt.objects.count == 2, let relation = prompt.relation else {
            return ShapeScene(background: background, shapes: [place(prompt.objects[0])])
        }
        let gap = max(2, gapFraction * side)
        for _ in 0..<100_000 {
            let a = place(prompt.objects[0]), b = place(prompt.objects[1])
            let apart = abs(a.centerX - b.centerX) >= (a.width + b.width) / 2 + gap ||
                        abs(a.centerY - b.centerY) >= (a.height + b.height) / 2 + gap
            let ca = a.centroid, cb = b.centroid
            let pa = (x: ca.x / W, y: ca.y / H), pb = (x: cb.x / W, y: cb.y / H)
            let across = relation.horizontal ? abs(pa.y - pb.y) : abs(pa.x - pb.x)
            if apart && relation.holds(a: pa, b: pb, margin: max(relationMargin, across + relationDominance)) {
                return ShapeScene(background: background, shapes: [a, b])
            }
        }
        // Unreachable for canvases of sensible shape; a fixed layout keeps the function total.
        let s = side * minBoxFraction
        var first = PlacedShape(object: prompt.objects[0], centerX: W * 0.25, centerY: H * 0.5, width: s, height: s)
        var second = PlacedShape(object: prompt.objects[1], centerX: W * 0.75, centerY: H * 0.5, width: s, height: s)
        if !relation.horizontal { (first.centerX, first.centerY, second.centerX, second.centerY) = (W * 0.5, H * 0.25, W * 0.5, H * 0.75) }
        if relation == .rightOf || relation == .below { swap(&first.centerX, &second.centerX); swap(&first.centerY, &second.centerY) }
        return ShapeScene(background: background, shapes: [first, second])
    }

    /// Paints a scene: flat colours, no outline, no anti-aliasing (a pixel belongs to a shape when its
    /// centre does); later shapes paint over earlier ones (they never overlap in generated scenes).
    public static func draw(_ scene: ShapeScene, width: Int, height: Int) -> RGBImage {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        let bg = scene.background.rgb
        for p in 0..<(width * height) { pixels[3 * p] = bg.r; pixels[3 * p + 1] = bg.g; pixels[3 * p + 2] = bg.b }
        for shape in scene.shapes {
            let c = shape.object.color.rgb
            // Only the pixels of the bounding box can be inside.
            let x0 = max(0, Int((shape.centerX - shape.width / 2).rounded(.down)))
            let x1 = min(width - 1, Int((shape.centerX + shape.width / 2).rounded(.up)))
            let y0 = max(0, Int((shape.centerY - shape.height / 2).rounded(.down)))
            let y1 = min(height - 1, Int((shape.centerY + shape.height / 2).rounded(.up)))
            guard x0 <= x1, y0 <= y1 else { continue }
            for y in y0...y1 {
                for x in x0...x1 where shape.contains(Double(x) + 0.5, Double(y) + 0.5) {
                    let i = 3 * (y * width + x)
                    pixels[i] = c.r; pixels[i + 1] = c.g; pixels[i + 2] = c.b
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }
}
