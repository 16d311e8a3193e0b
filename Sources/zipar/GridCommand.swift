import ArgumentParser
import Foundation
import ZipARCore

/// `zipar grid`: one image per (decoding mode, prompt, seed), laid out so that the effect of the
/// window shows down each column: rows = raster then each window, columns = prompts x seeds.
struct GridCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "grid", abstract: "Make a comparison grid: rows = raster and ZipAR windows, columns = prompts x seeds.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "File with one prompt per line (t2i models).")
    var prompts: String?
    @Option(help: "Comma-separated class ids or names (c2i models).")
    var classes: String?
    @Option(help: "ZipAR windows, one row each after the raster row, e.g. 16,8,4.")
    var windows: String = "8,4"
    @Option(help: "Seeds, e.g. 0,1,2; the same seed is used down a column.")
    var seeds: String = "0"
    @Option(help: "Row-start policy for the windows: ideal or upstream.")
    var ziparPolicy: String = "ideal"
    @OptionGroup var samplingOptions: SamplingOptions
    @Option(name: [.short, .long], help: "Output PNG; a legend goes to the same path with .md.")
    var output: String = "grid.png"
    @Flag(help: "No progress bar.")
    var quiet = false

    func validate() throws {
        try modelOptions.checkSparsity([modelOptions.kvPrecision])
        guard (prompts == nil) != (classes == nil) else { throw ValidationError("give exactly one of --prompts or --classes") }
        _ = try parseIntList(windows, flag: "--windows")
        let s = try parseIntList(seeds, flag: "--seeds")
        guard s.allSatisfy({ $0 >= 0 }) else { throw ValidationError("--seeds must be >= 0") }
        guard let p = ZipARPolicy(rawValue: ziparPolicy), p != .eol else { throw ValidationError("--zipar-policy must be ideal or upstream") }
        guard URL(fileURLWithPath: output).pathExtension.lowercased() == "png" else { throw ValidationError("--output must be a .png file") }
    }

    func run() throws {
        let legendPath = String(output.dropLast(4)) + ".md"
        try checkWritable(output); try checkWritable(legendPath)
        let dir = try modelOptions.open()
        let sampling = try samplingOptions.settings(defaults: dir.samplingDefaults)
        var conditions: [(Condition, String)] = []
        if let file = prompts {
            // FileHandle also reads pipes (`--prompts <(...)`), which String(contentsOfFile:) does not.
            guard let data = FileHandle(forReadingAtPath: file)?.readDataToEndOfFile(), let text = String(data: data, encoding: .utf8) else {
                throw ZipARError("cannot read \(file)")
            }
            for line in text.split(separator: "\n") where !line.trimmingCharacters(in: .whitespaces).isEmpty {
                conditions.append(try makeCondition(dir, classLabel: nil, prompt: String(line), captionEmbeddings: nil))
            }
            guard !conditions.isEmpty else { throw ZipARError("\(file) holds no prompt") }
        } else {
            for c in (classes ?? "").split(separator: ",") {
                conditions.append(try makeCondition(dir, classLabel: c.trimmingCharacters(in: .whitespaces), prompt: nil, captionEmbeddings: nil))
            }
        }
        let side = dir.gpt.gridSize
        let policy = ZipARPolicy(rawValue: ziparPolicy)!
        var windowList = [side]
        for w in try parseIntList(windows, flag: "--windows") {
            guard w >= 1, w <= side else { throw ZipARError("window \(w) is outside 1...\(side)") }
            if !windowList.contains(w) { windowList.append(w) }
        }
        let seedList = try parseIntList(seeds, flag: "--seeds").map { UInt64($0) }
        let gpt = try dir.loadGPT(), vq = try dir.loadVQ()

        var rows: [[RGBImage]] = [], cellParams: [[String]] = [], records: [[String: Any]] = []
        let total = windowList.count * conditions.count * seedList.count
        var done = 0
        for w in windowList {
            let schedule = try Schedule.make(height: side, width: side, window: w, policy: policy)
            let generator = try Generator(gpt: gpt, schedule: schedule, kvPrecision: modelOptions.kvPrecision, kvOptions: modelOptions.kvOptions)
            var row: [RGBImage] = [], rowParams: [String] = []
            for (condition, text) in conditions {
                for seed in seedList {
                    var options = GenerationOptions()
                    options.sampling = sampling; options.seed = seed
                    options.drawn = modelOptions.drawn(dir)
                    let bar = ProgressBar(total: dir.gpt.block_size, label: "cell \(done + 1)/\(total)", quiet: quiet)
                    let result = try generator.generate(condition, options: options) { bar.update(tokens: $0, passes: $1) }
                    bar.finish()
                    row.append(try renderImage(vq, tokens: result.tokens, height: side, width: side))
                    let p = ImageParameters(prompt: text, sampling: sampling, seed: seed, imageSize: dir.imageSize, model: dir.name,
                                            window: w, gridWidth: side, policy: policy, holes: false,
                                            forwardPasses: result.forwardPasses, version: Zipar.version,
                                            attention: modelOptions.attentionMode(dir))
                    rowParams.append(p.a1111)
                    records.append(["row": rows.count, "column": row.count - 1, "parameters": p.a1111])
                    done += 1
                }
            }
            rows.append(row); cellParams.append(rowParams)
        }
        let rowLabels = windowList.map { w -> String in
            let passes = try? Schedule.make(height: side, width: side, window: w, policy: policy).forwardPasses
            return (w == side ? "raster" : "window \(w) (\(policy.rawValue))") + ", \(passes ?? 0) passes"
        }
        let columnLabels = conditions.flatMap { c in seedList.map { "\(c.1), seed \($0)" } }
        let image = try Grid.compose(rows)
        let json = try JSONSerialization.data(withJSONObject: ["rows": rowLabels, "columns": columnLabels, "cells": records], options: [.sortedKeys])
        let summary = "zipar grid: rows = \(rowLabels.joined(separator: " | "))\ncolumns = \(columnLabels.joined(separator: " | "))"
        try ImageFile.write(image, to: output, metadata: [(key: "parameters", value: summary), (key: "zipar-grid", value: String(decoding: json, as: UTF8.self))])
        let legend = Grid.legendMarkdown(title: "zipar grid \(URL(fileURLWithPath: output).lastPathComponent) (model \(dir.name))",
                                         rowLabels: rowLabels, columnLabels: columnLabels, cellParameters: cellParams)
        try AtomicFile.write(Data(legend.utf8), to: legendPath)
        print("wrote \(output) (\(rows.count) rows x \(columnLabels.count) columns) and \(legendPath)")
    }
}
