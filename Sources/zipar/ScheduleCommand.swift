import ArgumentParser
import Foundation
import ZipARCore

/// `zipar schedule`: how many forward passes a ZipAR window saves on a grid. Pure arithmetic, no model.
struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Show the ZipAR decoding schedule for a token grid: forward passes and tokens per pass."
    )

    @Option(help: "Token grid as HxW, e.g. 24x24.")
    var grid: String

    @Option(help: "Window s: each row trails the row above by s columns (s = W is raster, 1 the diagonal wavefront).")
    var window: String   // parsed here rather than by ArgumentParser so a bad value also exits with 2

    @Option(help: "Row-start policy: ideal (paper rule), upstream (LlamaGen-ZipAR code: row 0 first), eol (EOL token per row).")
    var policy: String = ZipARPolicy.ideal.rawValue

    @Flag(help: "Also print the grid of step numbers at which each cell is sampled.")
    var show = false

    func run() throws {
        let schedule: Schedule
        do {
            guard let p = ZipARPolicy(rawValue: policy) else {
                throw ZipARError("unknown policy '\(policy)'; use one of \(ZipARPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let (h, w) = try Self.parseGrid(grid)
            guard let s = Int(window) else { throw ZipARError("--window must be an integer, got '\(window)'") }
            schedule = try Schedule.make(height: h, width: w, window: s, policy: p)
        } catch let error as ZipARError {
            // Usage errors exit with 2. (ArgumentParser's ValidationError would exit with EX_USAGE = 64.)
            FileHandle.standardError.write(Data("Error: \(error.message)\n".utf8))
            throw ExitCode(2)
        }

        let passes = schedule.forwardPasses, raster = schedule.rasterPasses
        let saving = 100 * Double(raster - passes) / Double(raster)
        print("grid            \(schedule.height)x\(schedule.width), window \(schedule.window) (lag \(schedule.lag)), policy \(schedule.policy.rawValue)")
        print("forward passes  \(passes)")
        print("raster passes   \(raster)")
        print("saving          \(String(format: "%.1f", saving))% fewer passes, \(String(format: "%.2f", Double(raster) / Double(passes)))x")
        print("tokens/pass     peak \(schedule.maxTokensPerStep), mean \(String(format: "%.2f", schedule.meanTokensPerStep))")
        if show {
            print("\nstep at which each cell is sampled (0 = prefill):")
            print(schedule.render())
        }
    }

    /// "HxW" with both sides positive integers.
    static func parseGrid(_ text: String) throws -> (Int, Int) {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, let h = Int(parts[0]), let w = Int(parts[1]), h >= 1, w >= 1 else {
            throw ZipARError("--grid must be HxW with positive integers, e.g. 24x24; got '\(text)'")
        }
        return (h, w)
    }
}
