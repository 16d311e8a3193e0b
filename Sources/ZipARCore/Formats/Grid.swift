import Foundation

/// Grids of equally sized images (for batches and parameter sweeps) and their markdown legend.
/// There is no text rendering (no fonts): captions go into the PNG metadata and a sidecar .md file.
public enum Grid {
    /// Composes `cells[row][column]` into one image. `padding` pixels of `background` go between cells
    /// and around the border (as torchvision's make_grid does). Rows may be shorter than the longest
    /// one (e.g. 5 images in rows of 3); the missing cells are left as background.
    public static func compose(_ cells: [[RGBImage]], padding: Int = 4,
                               background: (UInt8, UInt8, UInt8) = (255, 255, 255)) throws -> RGBImage {
        guard padding >= 0 else { throw ZipARError("grid padding must not be negative, got \(padding)") }
        guard let first = cells.lazy.flatMap({ $0 }).first else {
            throw ZipARError("cannot compose a grid without images")
        }
        let cellW = first.width, cellH = first.height
        for (r, row) in cells.enumerated() {
            for (c, cell) in row.enumerated()
            where cell.width != cellW || cell.height != cellH || cell.pixels.count != cellW * cellH * 3 {
                throw ZipARError("grid cell at row \(r + 1), column \(c + 1) is \(cell.width)x\(cell.height) "
                    + "but the first cell is \(cellW)x\(cellH): all cells must have the same size")
            }
        }
        let rows = cells.count
        let columns = cells.map(\.count).max()!
        let width = columns * cellW + (columns + 1) * padding
        let height = rows * cellH + (rows + 1) * padding

        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        for i in stride(from: 0, to: pixels.count, by: 3) {
            pixels[i] = background.0
            pixels[i + 1] = background.1
            pixels[i + 2] = background.2
        }
        let rowBytes = cellW * 3
        for (r, row) in cells.enumerated() {
            for (c, cell) in row.enumerated() {
                let x0 = padding + c * (cellW + padding)
                let y0 = padding + r * (cellH + padding)
                for y in 0..<cellH {
                    let dst = ((y0 + y) * width + x0) * 3
                    pixels[dst..<dst + rowBytes] = cell.pixels[y * rowBytes..<(y + 1) * rowBytes]
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    /// Lays a flat list of images out in rows of `columns` (the last row may be shorter).
    public static func compose(_ images: [RGBImage], columns: Int, padding: Int = 4,
                               background: (UInt8, UInt8, UInt8) = (255, 255, 255)) throws -> RGBImage {
        guard columns >= 1 else { throw ZipARError("grid needs at least 1 column, got \(columns)") }
        let rows = stride(from: 0, to: images.count, by: columns).map {
            Array(images[$0..<min($0 + columns, images.count)])
        }
        return try compose(rows, padding: padding, background: background)
    }

    /// A markdown document describing a grid: a title and a table whose cell (r, c) holds
    /// `cellParameters[r][c]`. Missing labels or cells are left empty. Cell text is escaped so that
    /// pipes and newlines (A1111 `parameters` strings have both) do not break the table.
    public static func legendMarkdown(title: String, rowLabels: [String], columnLabels: [String],
                                      cellParameters: [[String]]) -> String {
        let rows = max(rowLabels.count, cellParameters.count)
        let columns = max(columnLabels.count, cellParameters.map(\.count).max() ?? 0)
        func item(_ list: [String], _ i: Int) -> String { i < list.count ? escape(list[i]) : "" }

        var lines = ["# \(title)", ""]
        lines.append("| " + ([""] + (0..<columns).map { item(columnLabels, $0) }).joined(separator: " | ") + " |")
        lines.append("|" + String(repeating: "---|", count: columns + 1))
        for r in 0..<rows {
            let cells = r < cellParameters.count ? cellParameters[r] : []
            let row = [item(rowLabels, r)] + (0..<columns).map { item(cells, $0) }
            lines.append("| " + row.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "|", with: "\\|")
            .replacingOccurrences(of: "\r\n", with: "<br>")
            .replacingOccurrences(of: "\n", with: "<br>")
    }
}
