import XCTest
@testable import ZipARCore

final class GridTests: XCTestCase {
    /// A cell whose pixel (x, y) is (tag, x, y): every pixel of the grid says where it came from.
    func cell(_ tag: UInt8, width: Int = 4, height: Int = 3) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        for y in 0..<height {
            for x in 0..<width {
                let i = (y * width + x) * 3
                img.pixels[i] = tag
                img.pixels[i + 1] = UInt8(x)
                img.pixels[i + 2] = UInt8(y)
            }
        }
        return img
    }

    func pixel(_ img: RGBImage, _ x: Int, _ y: Int) -> [UInt8] {
        let i = (y * img.width + x) * 3
        return Array(img.pixels[i..<i + 3])
    }

    func testComposePlacesEveryPixel() throws {
        let rows = [[cell(1), cell(2), cell(3)], [cell(4), cell(5), cell(6)]]
        let grid = try Grid.compose(rows, padding: 2, background: (200, 201, 202))
        XCTAssertEqual(grid.width, 3 * 4 + 4 * 2)
        XCTAssertEqual(grid.height, 2 * 3 + 3 * 2)
        for gy in 0..<grid.height {
            for gx in 0..<grid.width {
                // Position inside the (cell + leading padding) period.
                let (c, px) = ((gx - 2) / 6, (gx - 2) % 6)
                let (r, py) = ((gy - 2) / 5, (gy - 2) % 5)
                let inCell = gx >= 2 && gy >= 2 && px < 4 && py < 3 && c < 3 && r < 2
                let expected: [UInt8] = inCell ? [UInt8(r * 3 + c + 1), UInt8(px), UInt8(py)] : [200, 201, 202]
                XCTAssertEqual(pixel(grid, gx, gy), expected, "grid pixel (\(gx), \(gy))")
            }
        }
    }

    func testFlatListWithShortLastRowAndNoPadding() throws {
        let grid = try Grid.compose((1...5).map { cell(UInt8($0)) }, columns: 3, padding: 0, background: (9, 9, 9))
        XCTAssertEqual(grid.width, 12)
        XCTAssertEqual(grid.height, 6)
        XCTAssertEqual(pixel(grid, 0, 0), [1, 0, 0])
        XCTAssertEqual(pixel(grid, 11, 2), [3, 3, 2])
        XCTAssertEqual(pixel(grid, 4, 3), [5, 0, 0])
        XCTAssertEqual(pixel(grid, 7, 5), [5, 3, 2])
        XCTAssertEqual(pixel(grid, 8, 3), [9, 9, 9], "missing sixth cell is background")
        XCTAssertEqual(pixel(grid, 11, 5), [9, 9, 9])
        // One image, one column: the image plus its border.
        let single = try Grid.compose([cell(7)], columns: 1, padding: 1)
        XCTAssertEqual(single.width, 6)
        XCTAssertEqual(pixel(single, 0, 0), [255, 255, 255])
        XCTAssertEqual(pixel(single, 1, 1), [7, 0, 0])
    }

    func testErrors() {
        XCTAssertThrowsError(try Grid.compose([[cell(1), cell(2, width: 5)]])) { error in
            let message = (error as? ZipARError)?.message ?? ""
            XCTAssertTrue(message.contains("row 1, column 2 is 5x3"), message)
        }
        XCTAssertThrowsError(try Grid.compose([[cell(1)], [cell(2, height: 4)]]))
        XCTAssertThrowsError(try Grid.compose([[RGBImage]]()))
        XCTAssertThrowsError(try Grid.compose([[], []]))
        XCTAssertThrowsError(try Grid.compose([[cell(1)]], padding: -1))
        XCTAssertThrowsError(try Grid.compose([cell(1)], columns: 0))
    }

    func testLegendMarkdown() {
        let md = Grid.legendMarkdown(
            title: "cfg × window",
            rowLabels: ["cfg 4", "cfg 7"],
            columnLabels: ["window 0", "window 8"],
            cellParameters: [["Seed: 1", "a|b\nSteps: 2"], ["Seed: 3"]])
        XCTAssertEqual(md, """
            # cfg × window

            |  | window 0 | window 8 |
            |---|---|---|
            | cfg 4 | Seed: 1 | a\\|b<br>Steps: 2 |
            | cfg 7 | Seed: 3 |  |

            """)
    }
}
