import ArgumentParser
import Foundation
import ZipARCore

/// `zipar generate`: prompt or class -> tokens (raster or ZipAR) -> VQ decoder -> PNG/JPEG.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate images from a class, a prompt or caption embeddings.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .customLong("class"), help: "Class id or name (c2i models; names come from classes.txt).")
    var classLabel: String?
    @Option(name: [.short, .long], help: "Text prompt (t2i models with a built-in text encoder).")
    var prompt: String?
    @Option(help: "Caption features for t2i models: safetensors with caption_embs [120, caption_dim] and optional emb_mask.")
    var captionEmbeddings: String?
    @OptionGroup var samplingOptions: SamplingOptions
    @OptionGroup var ziparOptions: ZipAROptions
    @Option(name: [.short, .long], help: "Random seed; image i of --count uses seed+i.")
    var seed: UInt64 = 0
    @Option(help: "Number of images (out.png, out_2.png, ...).")
    var count: Int = 1
    @Option(name: [.short, .long], help: "Output image; .png or .jpg/.jpeg.")
    var output: String = "out.png"
    @Option(help: "JPEG quality 1-100.")
    var jpegQuality: Int = 92
    @Option(help: "Also write the tokens as JSON {\"grid\": [H, W], \"tokens\": [[...], ...]}.")
    var tokensOut: String?
    @Flag(help: "No progress bar.")
    var quiet = false

    func validate() throws {
        try modelOptions.checkSparsity([modelOptions.kvPrecision])
        let given = [classLabel != nil, prompt != nil, captionEmbeddings != nil].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give exactly one of --class, --prompt or --caption-embeddings") }
        guard count >= 1, count <= 10_000 else { throw ValidationError("--count must be between 1 and 10000") }
        guard (1...100).contains(jpegQuality) else { throw ValidationError("--jpeg-quality must be between 1 and 100") }
        do { _ = try ImageFile.format(for: output) } catch let e as ZipARError { throw ValidationError(e.message) }
    }

    func run() throws {
        // Check every output path before any compute, so a bad path costs nothing and leaves nothing.
        for i in 0..<count { try checkWritable(numberedPath(output, i)) }
        if let t = tokensOut { try checkWritable(t) }

        let dir = try modelOptions.open()
        let sampling = try samplingOptions.settings(defaults: dir.samplingDefaults)
        let (condition, promptText) = try makeCondition(dir, classLabel: classLabel, prompt: prompt, captionEmbeddings: captionEmbeddings)
        let schedule = try ziparOptions.schedule(grid: dir.gpt.gridSize)
        let gpt = try dir.loadGPT()
        let vq = try dir.loadVQ()
        let generator = try Generator(gpt: gpt, schedule: schedule, kvPrecision: modelOptions.kvPrecision, kvOptions: modelOptions.kvOptions)

        var allTokens: [[Int]] = []
        for i in 0..<count {
            var options = GenerationOptions()
            options.sampling = sampling
            options.seed = seed &+ UInt64(i)
            options.holes = ziparOptions.ziparHoles
            options.drawn = modelOptions.drawn(dir)
            options.adaptiveMinWindow = ziparOptions.adaptiveWindow
            let bar = ProgressBar(total: dir.gpt.block_size, label: count > 1 ? "image \(i + 1)/\(count)" : "generating", quiet: quiet)
            let result = try generator.generate(condition, options: options) { bar.update(tokens: $0, passes: $1) }
            bar.finish()
            var image: RGBImage!
            let decodeSeconds = try Measure.time {
                image = try renderImage(vq, tokens: result.tokens, height: schedule.height, width: schedule.width)
            }
            let params = ImageParameters(prompt: promptText, sampling: sampling, seed: options.seed, imageSize: image.width,
                                         model: dir.name, window: schedule.window, gridWidth: schedule.width,
                                         policy: schedule.policy, holes: options.holes, forwardPasses: result.forwardPasses,
                                         version: Zipar.version, adaptiveMinWindow: options.adaptiveMinWindow,
                                         attention: modelOptions.attentionMode(dir))
            let path = numberedPath(output, i)
            try ImageFile.write(image, to: path, metadata: [(key: "parameters", value: params.a1111)], jpegQuality: jpegQuality)
            allTokens.append(result.tokens)
            print(String(format: "wrote %@  (seed %llu, %@, %d passes, tokens %.2fs, decode %.2fs)", path, options.seed,
                         params.decodingName, result.forwardPasses, result.seconds, decodeSeconds))
        }
        if let t = tokensOut {
            try TokensFile(height: schedule.height, width: schedule.width, images: allTokens).write(to: t)
            print("wrote \(t)")
        }
    }
}
