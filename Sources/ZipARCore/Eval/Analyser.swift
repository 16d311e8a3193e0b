import Foundation

/// An object found in an image: a connected region of one palette colour.
public struct DetectedObject: Equatable, Sendable {
    public var color: PaletteColor
    /// nil when the region is not shaped like any of the four (see `Analyser.minShapeIoU`).
    public var shape: ShapeKind?
    /// Pixels of the region (holes filled).
    public var area: Int
    /// Bounding box in pixels, inclusive.
    public var minX: Int, minY: Int, maxX: Int, maxY: Int
    /// Area centroid in pixels (pixel centres at +0.5).
    public var centroidX: Double, centroidY: Double
    /// The shape features (see `Analyser.momentFeatures`).
    public var squareness: Double, skew: Double
    /// How well each shape's template, fitted to the region's centroid, area and aspect ratio,
    /// overlaps it (intersection over union, 0...1).
    public var shapeIoU: [ShapeKind: Double]
}

/// What the analyser sees in an image, independent of any prompt.
public struct ImageAnalysis: Equatable, Sendable {
    public var width: Int, height: Int
    /// The dominant palette colour; nil only if no pixel is close to any palette colour.
    public var background: PaletteColor?
    /// Objects, largest first.
    public var objects: [DetectedObject]
    /// Share of pixels close to no palette colour (VQ blur, noise).
    public var unknownShare: Double
}

/// The verdict of one prompt object.
public struct ObjectClause: Equatable, Sendable {
    public var object: ShapeObject
    /// Some detected object has this colour and this shape: the object clause.
    public var present: Bool
    /// Some detected object has this colour (any shape).
    public var colorFound: Bool
    /// Some detected object has this shape (any colour).
    public var shapeFound: Bool
    /// Index into `ClauseResults.analysis.objects` of the largest exact match.
    public var match: Int?
}

/// Pass/fail per clause of a prompt. `relation` and `background` are nil when the prompt has none.
public struct ClauseResults: Equatable, Sendable {
    public var objects: [ObjectClause]
    /// Exactly as many objects as the prompt names.
    public var count: Bool
    /// Both objects present and their centroids in the named relation.
    public var relation: Bool?
    /// The relation the prompt names (nil for one object): `EvalScore` tallies prompts per relation.
    public var relationKind: Relation?
    /// The dominant colour is the named background.
    public var background: Bool?
    public var analysis: ImageAnalysis

    /// The prompt passes only if every clause holds.
    public var passed: Bool {
        objects.allSatisfy(\.present) && count && relation != false && background != false
    }

    /// One line saying which clauses failed, e.g. "missing a red circle; count 3 (want 2)"; "" if passed.
    public var failureSummary: String {
        var parts: [String] = []
        for o in objects where !o.present { parts.append("missing \(o.object)") }
        if !count { parts.append("count \(analysis.objects.count) (want \(objects.count))") }
        if relation == false { parts.append("relation") }
        if background == false { parts.append("background \(analysis.background?.rawValue ?? "none")") }
        return parts.joined(separator: "; ")
    }
}

/// A deterministic, prompt-agnostic pixel analyser for images of the shape grammar (GenEval-style):
/// it never sees the generator, only the pixels.
///
/// 1. Every pixel takes its nearest palette colour if that is clearly the nearest (see
///    `maxDistanceRatio`), else it is unknown, so that blurred edge pixels between two colours are
///    not mistaken for a third.
/// 2. The background is the most frequent colour.
/// 3. An opening (plus-shaped element) per colour marks the pixels that belong to solid areas: it
///    drops specks, noise and the 1-2 px rings that blur leaves along edges (a blue-on-yellow edge
///    blurs to gray, a red-on-yellow one to orange).
/// 4. Objects are the 8-connected regions of one non-background colour holding at least
///    `minAreaFraction` of the image in solid pixels. The region itself is taken whole (opening only
///    decides which regions count), so ragged edges and thin tips keep their pixels; holes are filled.
/// 5. Shapes are read from two moment features of the region (`momentFeatures`: how far the mass
///    reaches along the diagonals versus the axes, and its vertical skew), nearest of the four ideal
///    values; the shape's template fitted to the region must then overlap it by `minShapeIoU`, so a
///    blob or a fragment is no shape. Moments use every pixel, so they bend less under blur and
///    jitter than bounding-box features (fill ratio, corners), which one stray pixel can shift.
/// 6. Relations compare area centroids as fractions of the canvas.
public struct Analyser: Sendable {
    /// A pixel takes its nearest palette colour only if it is at most this far from it (RGB
    /// Euclidean)...
    public var maxColorDistance: Double = 100
    /// ... and at most this fraction of its distance to the second nearest. The ratio, not a fixed
    /// radius, decides ambiguity: a blurred gray-on-black edge pixel 60 from gray but 125 from black
    /// is gray, while a blue-orange blend that lands between gray and purple is unknown. (Orange and
    /// yellow, the closest pair, are 81 apart.)
    public var maxDistanceRatio: Double = 0.6
    /// Regions smaller than this share of the image are specks. The smallest legal object (a 16%
    /// triangle) covers 1.28% of the canvas.
    public var minAreaFraction: Double = 0.005
    /// A relation needs the centroids this far apart (fraction of the canvas) along its axis, and
    /// farther than across. The grammar's images keep 15%; the analyser accepts 10% so that a
    /// clearly left-of placement a little short of the training margin still counts, as GenEval's
    /// position test does.
    public var relationMargin: Double = 0.10
    /// A region whose classified shape's fitted template overlaps it by less than this IoU has no
    /// shape. Clean rendered shapes score 0.9-1; blur or 1-px jitter takes small ones down to about
    /// 0.65.
    public var minShapeIoU: Double = 0.6

    public init() {}

    // MARK: - Checking a prompt

    public func check(_ image: RGBImage, prompt: ShapePrompt) -> ClauseResults {
        let analysis = analyse(image)
        let found = analysis.objects
        var clauses: [ObjectClause] = []
        for o in prompt.objects {
            // Objects are sorted largest first, so the first exact match is the largest.
            let match = found.firstIndex { $0.color == o.color && $0.shape == o.shape }
            clauses.append(ObjectClause(object: o, present: match != nil,
                                        colorFound: found.contains { $0.color == o.color },
                                        shapeFound: found.contains { $0.shape == o.shape }, match: match))
        }
        var relation: Bool?
        if let r = prompt.relation, clauses.count == 2 {
            if let i = clauses[0].match, let j = clauses[1].match {
                let a = found[i], b = found[j]
                let w = Double(image.width), h = Double(image.height)
                relation = r.holds(a: (a.centroidX / w, a.centroidY / h), b: (b.centroidX / w, b.centroidY / h), margin: relationMargin)
            } else {
                relation = false
            }
        }
        let background = prompt.background.map { $0 == analysis.background }
        return ClauseResults(objects: clauses, count: found.count == prompt.objects.count,
                             relation: relation, relationKind: relation == nil ? nil : prompt.relation,
                             background: background, analysis: analysis)
    }

    // MARK: - Analysing pixels

    public func analyse(_ image: RGBImage) -> ImageAnalysis {
        let w = image.width, h = image.height, n = w * h
        guard n > 0 else { return ImageAnalysis(width: w, height: h, background: nil, objects: [], unknownShare: 0) }
        let palette = PaletteColor.allCases

        // 1. Nearest palette colour per pixel, or -1 (unknown). Runs of equal pixels (most of a
        // clean image) reuse the previous answer.
        var cls = [Int8](repeating: -1, count: n)
        var pal = [Int](repeating: 0, count: 3 * palette.count)
        for (k, c) in palette.enumerated() { pal[3 * k] = Int(c.rgb.r); pal[3 * k + 1] = Int(c.rgb.g); pal[3 * k + 2] = Int(c.rgb.b) }
        let maxD2 = Int(maxColorDistance * maxColorDistance), ratio2 = maxDistanceRatio * maxDistanceRatio
        var counts = [Int](repeating: 0, count: palette.count)
        var unknown = 0
        var last = (r: -1, g: -1, b: -1, c: Int8(-1))
        image.pixels.withUnsafeBufferPointer { px in
            for p in 0..<n {
                let r = Int(px[3 * p]), g = Int(px[3 * p + 1]), b = Int(px[3 * p + 2])
                if r != last.r || g != last.g || b != last.b {
                    var best = -1, bestD2 = Int.max, secondD2 = Int.max
                    for k in 0..<palette.count {
                        let dr = r - pal[3 * k], dg = g - pal[3 * k + 1], db = b - pal[3 * k + 2]
                        let d2 = dr * dr + dg * dg + db * db
                        if d2 < bestD2 { secondD2 = bestD2; bestD2 = d2; best = k } else if d2 < secondD2 { secondD2 = d2 }
                    }
                    let clear = bestD2 <= maxD2 && Double(bestD2) <= ratio2 * Double(secondD2)
                    last = (r, g, b, clear ? Int8(best) : -1)
                }
                cls[p] = last.c
                if last.c >= 0 { counts[Int(last.c)] += 1 } else { unknown += 1 }
            }
        }

        // 2. Background: the most frequent colour (ties go to the earlier palette colour).
        var top = 0
        for k in 1..<palette.count where counts[k] > counts[top] { top = k }
        guard counts[top] > 0 else { return ImageAnalysis(width: w, height: h, background: nil, objects: [], unknownShare: 1) }
        let bg = Int8(top)

        // 3. Opening with a plus-shaped element: a core pixel has its in-image 4-neighbours in its
        // colour; a pixel is solid if it or a 4-neighbour of its colour is core. Lines and rings up
        // to 2 px wide have no core pixels.
        var core = [Bool](repeating: false, count: n)
        for y in 0..<h {
            for x in 0..<w {
                let p = y * w + x, c = cls[p]
                guard c >= 0, c != bg else { continue }
                core[p] = (x == 0 || cls[p - 1] == c) && (x == w - 1 || cls[p + 1] == c) &&
                          (y == 0 || cls[p - w] == c) && (y == h - 1 || cls[p + w] == c)
            }
        }
        func solid(_ p: Int, _ x: Int, _ y: Int) -> Bool {
            let c = cls[p]
            return core[p] || (x > 0 && core[p - 1] && cls[p - 1] == c) || (x < w - 1 && core[p + 1] && cls[p + 1] == c) ||
                (y > 0 && core[p - w] && cls[p - w] == c) || (y < h - 1 && core[p + w] && cls[p + w] == c)
        }

        // 4. 8-connected regions of one non-background colour with enough solid pixels.
        let minArea = max(4, Int((minAreaFraction * Double(n)).rounded(.up)))
        var region = [Int32](repeating: -1, count: n)      // region id of every flooded pixel
        var regionCount: Int32 = 0
        var objects: [DetectedObject] = []
        var stack: [Int] = []
        var members: [Int] = []
        for start in 0..<n where cls[start] >= 0 && cls[start] != bg && region[start] < 0 {
            let c = cls[start], id = regionCount
            regionCount += 1
            members.removeAll(keepingCapacity: true)
            var solidCount = 0
            region[start] = id
            stack.append(start)
            while let p = stack.popLast() {
                members.append(p)
                let x = p % w, y = p / w
                if solid(p, x, y) { solidCount += 1 }
                for yy in (y > 0 ? y - 1 : y)...(y < h - 1 ? y + 1 : y) {
                    for xx in (x > 0 ? x - 1 : x)...(x < w - 1 ? x + 1 : x) {
                        let q = yy * w + xx
                        if region[q] < 0 && cls[q] == c { region[q] = id; stack.append(q) }
                    }
                }
            }
            // Rings and lines left by blur are mostly not solid even where a corner makes a few
            // solid pixels; objects are mostly solid even with ragged edges.
            guard solidCount >= minArea, 2 * solidCount >= members.count else { continue }
            objects.append(describe(members, id: id, region: region, color: palette[Int(c)], background: palette[Int(bg)], image: image))
        }
        objects.sort { ($0.area, $1.minY, $1.minX) > ($1.area, $0.minY, $0.minX) }
        return ImageAnalysis(width: w, height: h, background: palette[Int(bg)], objects: objects, unknownShare: Double(unknown) / Double(n))
    }

    /// Box, hole-filled mask, centroid and shape of one region.
    private func describe(_ members: [Int], id: Int32, region: [Int32], color: PaletteColor, background: PaletteColor,
                          image: RGBImage) -> DetectedObject {
        let w = image.width, h = image.height
        var minX = Int.max, minY = Int.max, maxX = Int.min, maxY = Int.min
        for p in members {
            let x = p % w, y = p / w
            minX = min(minX, x); maxX = max(maxX, x); minY = min(minY, y); maxY = max(maxY, y)
        }
        let bw = maxX - minX + 1, bh = maxY - minY + 1
        var mask = [Bool](repeating: false, count: bw * bh)
        for p in members { mask[(p / w - minY) * bw + (p % w - minX)] = true }
        mask = Analyser.fillHoles(mask, width: bw, height: bh)
        let hard = mask.map { $0 ? 1.0 : 0.0 }
        let m = Analyser.moments(hard, width: bw, height: bh)

        // Soft membership for the shape features, over the box plus a 2-px margin: how far each
        // pixel's colour lies from the background towards the object's colour. Blur turns a thin
        // tip into a few part-coloured pixels that a hard mask drops (a blurred small diamond
        // reads as a circle); weighted by their share, the moments still see the tip.
        let x0 = max(0, minX - 2), x1 = min(w - 1, maxX + 2), y0 = max(0, minY - 2), y1 = min(h - 1, maxY + 2)
        let sw = x1 - x0 + 1, sh = y1 - y0 + 1
        let c = color.rgb, b = background.rgb
        let dir = (Double(c.r) - Double(b.r), Double(c.g) - Double(b.g), Double(c.b) - Double(b.b))
        let dirNorm2 = dir.0 * dir.0 + dir.1 * dir.1 + dir.2 * dir.2
        var soft = [Double](repeating: 0, count: sw * sh)
        for y in y0...y1 {
            for x in x0...x1 {
                let p = y * w + x
                if region[p] >= 0 && region[p] != id { continue }     // another object
                let inMask = x >= minX && x <= maxX && y >= minY && y <= maxY && mask[(y - minY) * bw + (x - minX)]
                let v = (Double(image.pixels[3 * p]) - Double(b.r), Double(image.pixels[3 * p + 1]) - Double(b.g),
                         Double(image.pixels[3 * p + 2]) - Double(b.b))
                let t = (v.0 * dir.0 + v.1 * dir.1 + v.2 * dir.2) / dirNorm2
                let r = (v.0 - t * dir.0, v.1 - t * dir.1, v.2 - t * dir.2)
                let residual = (r.0 * r.0 + r.1 * r.1 + r.2 * r.2).squareRoot()
                // A blend of the two colours: its share, with noise-sized shares (< 0.15 or > 0.85)
                // snapped to 0 or 1. Anything else (a third colour, heavy noise): the hard mask.
                soft[(y - y0) * sw + (x - x0)] = residual <= 40 ? min(1, max(0, (t - 0.15) / 0.7)) : (inMask ? 1 : 0)
            }
        }
        let f = Analyser.momentFeatures(soft, width: sw, height: sh)
        let iou = Analyser.shapeIoU(hard, width: bw, height: bh)
        let nearest = Analyser.classify(squareness: f.squareness, skew: f.skew)
        return DetectedObject(color: color, shape: iou[nearest]! >= minShapeIoU ? nearest : nil, area: Int(m.area),
                              minX: minX, minY: minY, maxX: maxX, maxY: maxY,
                              centroidX: Double(minX) + m.cx, centroidY: Double(minY) + m.cy,
                              squareness: f.squareness, skew: f.skew, shapeIoU: iou)
    }

    /// Fills the holes of a mask: every unset pixel not connected (4-neighbours) to the box border.
    static func fillHoles(_ mask: [Bool], width w: Int, height h: Int) -> [Bool] {
        var outside = [Bool](repeating: false, count: w * h)
        var stack: [Int] = []
        for y in 0..<h {
            for x in 0..<w where (x == 0 || y == 0 || x == w - 1 || y == h - 1) && !mask[y * w + x] {
                outside[y * w + x] = true
                stack.append(y * w + x)
            }
        }
        while let p = stack.popLast() {
            let x = p % w, y = p / w
            if x > 0 && !mask[p - 1] && !outside[p - 1] { outside[p - 1] = true; stack.append(p - 1) }
            if x < w - 1 && !mask[p + 1] && !outside[p + 1] { outside[p + 1] = true; stack.append(p + 1) }
            if y > 0 && !mask[p - w] && !outside[p - w] { outside[p - w] = true; stack.append(p - w) }
            if y < h - 1 && !mask[p + w] && !outside[p + w] { outside[p + w] = true; stack.append(p + w) }
        }
        return outside.map { !$0 }
    }

    // MARK: - Shape classification

    /// Total weight, centroid and variances of a weight map (1 = in the shape; pixel centres at +0.5).
    static func moments(_ weight: [Double], width w: Int, height h: Int) -> (area: Double, cx: Double, cy: Double, vx: Double, vy: Double) {
        var n = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, syy = 0.0
        for y in 0..<h {
            for x in 0..<w where weight[y * w + x] > 0 {
                let a = weight[y * w + x], fx = Double(x) + 0.5, fy = Double(y) + 0.5
                n += a; sx += a * fx; sy += a * fy; sxx += a * fx * fx; syy += a * fy * fy
            }
        }
        guard n > 0 else { return (0, 0, 0, 0, 0) }
        let cx = sx / n, cy = sy / n
        return (n, cx, cy, max(0, sxx / n - cx * cx), max(0, syy / n - cy * cy))
    }

    /// Two scale-free moment features of a weight map (a mask, or soft membership), computed on
    /// coordinates standardised per axis
    /// (centroid 0, variance 1, so that stretching a shape does not change them):
    /// - squareness: log(E[u^4 + v^4] / E[x^4 + y^4]) with (u, v) the coordinates turned 45 degrees:
    ///   how much the mass reaches out along the diagonals rather than the axes: square +0.288,
    ///   circle and triangle 0, diamond -0.288;
    /// - skew: E[y^3] (y down): a point-up triangle -0.566 (its mass sits low), the others 0.
    public static func momentFeatures(_ weight: [Double], width w: Int, height h: Int) -> (squareness: Double, skew: Double) {
        let m = moments(weight, width: w, height: h)
        guard m.area > 1, m.vx > 0, m.vy > 0 else { return (0, 0) }
        let sx = m.vx.squareRoot(), sy = m.vy.squareRoot()
        var axis = 0.0, cross = 0.0, cube = 0.0
        for y in 0..<h {
            for x in 0..<w where weight[y * w + x] > 0 {
                let a = weight[y * w + x], u = (Double(x) + 0.5 - m.cx) / sx, v = (Double(y) + 0.5 - m.cy) / sy
                axis += a * (u * u * u * u + v * v * v * v)
                cross += a * u * u * v * v
                cube += a * v * v * v
            }
        }
        // Turned 45 degrees: u'^4 + v'^4 = (u^4 + v^4) / 2 + 3 u^2 v^2.
        let diagonal = axis / 2 + 3 * cross
        return (Foundation.log(diagonal / axis), cube / m.area)
    }

    /// The ideal (squareness, skew) of each shape; see `momentFeatures`.
    public static let prototypes: [(shape: ShapeKind, squareness: Double, skew: Double)] = [
        (.circle, 0, 0), (.square, 0.2877, 0), (.diamond, -0.2877, 0), (.triangle, 0, -0.5657),
    ]

    /// The shape whose ideal features are nearest (Euclidean). Blur and ragged edges round every
    /// shape towards a circle, and the circle prototype sits between the others, so errors fall to
    /// "circle" first.
    public static func classify(squareness: Double, skew: Double) -> ShapeKind {
        prototypes.min { a, b in
            let da = (squareness - a.squareness) * (squareness - a.squareness) + (skew - a.skew) * (skew - a.skew)
            let db = (squareness - b.squareness) * (squareness - b.squareness) + (skew - b.skew) * (skew - b.skew)
            return da < db
        }!.shape
    }

    /// The template of `shape` with the mask's centroid, area and aspect ratio, in mask coordinates.
    /// Per unit box (w = h = 1) the shapes have area circle pi/4, square 1, diamond and triangle 1/2,
    /// and variances x/y: circle 1/16, 1/16; square 1/12, 1/12; diamond 1/24, 1/24; point-up
    /// triangle 1/24, 1/18 (its centroid is 2/3 of the way down its box).
    static func template(_ shape: ShapeKind, area: Double, cx: Double, cy: Double, vx: Double, vy: Double) -> PlacedShape {
        let unitArea: Double, yOverX: Double
        switch shape {
        case .circle: (unitArea, yOverX) = (Double.pi / 4, 1)
        case .square: (unitArea, yOverX) = (1, 1)
        case .diamond: (unitArea, yOverX) = (0.5, 1)
        case .triangle: (unitArea, yOverX) = (0.5, 24.0 / 18.0)
        }
        // w/h from the variance ratio (vx/vy = (w/h)^2 / yOverX), kept within 1:2 either way.
        let aspect = vy > 0 ? min(2, max(0.5, (vx / vy * yOverX).squareRoot())) : 1
        let h = (area / (unitArea * aspect)).squareRoot(), w = aspect * h
        let boxCenterY = shape == .triangle ? cy - h / 6 : cy
        return PlacedShape(object: ShapeObject(.white, shape), centerX: cx, centerY: boxCenterY, width: w, height: h)
    }

    /// For each shape, the IoU of the mask with that shape's fitted template.
    public static func shapeIoU(_ mask: [Double], width w: Int, height h: Int) -> [ShapeKind: Double] {
        let m = moments(mask, width: w, height: h)
        var scores: [ShapeKind: Double] = [:]
        for shape in ShapeKind.allCases {
            guard m.area > 0 else { scores[shape] = 0; continue }
            let t = template(shape, area: m.area, cx: m.cx, cy: m.cy, vx: m.vx, vy: m.vy)
            // Scan the union of the mask's box and the template's box.
            let x0 = min(0, Int((t.centerX - t.width / 2).rounded(.down))), x1 = max(w - 1, Int((t.centerX + t.width / 2).rounded(.up)))
            let y0 = min(0, Int((t.centerY - t.height / 2).rounded(.down))), y1 = max(h - 1, Int((t.centerY + t.height / 2).rounded(.up)))
            var inter = 0, union = 0
            for y in y0...y1 {
                for x in x0...x1 {
                    let inMask = x >= 0 && y >= 0 && x < w && y < h && mask[y * w + x] > 0
                    let inTemplate = t.contains(Double(x) + 0.5, Double(y) + 0.5)
                    if inMask && inTemplate { inter += 1 }
                    if inMask || inTemplate { union += 1 }
                }
            }
            scores[shape] = union > 0 ? Double(inter) / Double(union) : 0
        }
        return scores
    }
}

/// Clause results tallied over a prompt set: the accuracies `zipar eval` reports.
public struct EvalScore: Sendable {
    public private(set) var prompts = 0, passed = 0
    /// Prompt objects (one or two per prompt) and how many were present / had their colour / shape.
    public private(set) var objects = 0, present = 0, colorsFound = 0, shapesFound = 0
    public private(set) var countsRight = 0
    public private(set) var relations = 0, relationsRight = 0
    public private(set) var backgrounds = 0, backgroundsRight = 0
    public private(set) var singleObject = 0, singleObjectPassed = 0, twoObjects = 0, twoObjectsPassed = 0
    /// Two-object prompts and how many passed, per relation (over 800 prompts v14 passed 18% of the
    /// "left of" ones and 69% of the "above" ones: its two-object failures are the horizontal relations).
    public private(set) var byRelation: [Relation: (prompts: Int, passed: Int)] = [:]

    public init() {}

    public mutating func add(_ r: ClauseResults) {
        prompts += 1
        if r.passed { passed += 1 }
        for o in r.objects {
            objects += 1
            if o.present { present += 1 }
            if o.colorFound { colorsFound += 1 }
            if o.shapeFound { shapesFound += 1 }
        }
        if r.count { countsRight += 1 }
        if let ok = r.relation { relations += 1; if ok { relationsRight += 1 } }
        if let ok = r.background { backgrounds += 1; if ok { backgroundsRight += 1 } }
        if r.objects.count == 1 {
            singleObject += 1; if r.passed { singleObjectPassed += 1 }
        } else {
            twoObjects += 1; if r.passed { twoObjectsPassed += 1 }
        }
        if let kind = r.relationKind {
            let t = byRelation[kind] ?? (0, 0)
            byRelation[kind] = (t.prompts + 1, t.passed + (r.passed ? 1 : 0))
        }
    }

    /// Pass rate of the two-object prompts of each relation, in grammar order (nil: no such prompt).
    public var relationAccuracies: [(relation: Relation, value: Double?)] {
        Relation.allCases.map { r in (r, byRelation[r].map { Double($0.passed) / Double($0.prompts) }) }
    }

    /// The reported accuracies, in report order: (key, fraction or nil when no prompt had that clause).
    public var accuracies: [(key: String, value: Double?)] {
        func rate(_ a: Int, _ b: Int) -> Double? { b == 0 ? nil : Double(a) / Double(b) }
        return [("overall", rate(passed, prompts)), ("object", rate(present, objects)), ("color", rate(colorsFound, objects)),
                ("shape", rate(shapesFound, objects)), ("count", rate(countsRight, prompts)), ("relation", rate(relationsRight, relations)),
                ("background", rate(backgroundsRight, backgrounds)), ("single_object", rate(singleObjectPassed, singleObject)),
                ("two_objects", rate(twoObjectsPassed, twoObjects))]
    }

    public func accuracy(_ key: String) -> Double? { accuracies.first { $0.key == key }?.value ?? nil }
}
