import ArgumentParser
import Foundation
import ZipARCore

/// `zipar decode`: a tokens file (from `generate --tokens-out`) back to pixels with the model's VQ decoder.
struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "decode", abstract: "Decode VQ tokens (JSON) to images.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Tokens JSON: {\"grid\": [H, W], \"tokens\": [[...], ...]}.")
    var tokens: String
    @Option(name: [.short, .long], help: "Output image (.png/.jpg); several images become out.png, out_2.png, ...")
    var output: String = "out.png"
    @Option(help: "JPEG quality 1-100.")
    var jpegQuality: Int = 92

    func validate() throws {
        guard (1...100).contains(jpegQuality) else { throw ValidationError("--jpeg-quality must be between 1 and 100") }
        do { _ = try ImageFile.format(for: output) } catch let e as ZipARError { throw ValidationError(e.message) }
    }

    func run() throws {
        let dir = try modelOptions.open()
        let file = try TokensFile.read(tokens, vocab: dir.vq.codebook_size)
        for i in 0..<file.images.count { try checkWritable(numberedPath(output, i)) }
        let vq = try dir.loadVQ()
        for (i, codes) in file.images.enumerated() {
            let image = try renderImage(vq, tokens: codes, height: file.height, width: file.width)
            let path = numberedPath(output, i)
            try ImageFile.write(image, to: path, metadata: [(key: "parameters", value: "decoded from \(tokens) (image \(i + 1))\nModel: \(dir.name), Version: zipar \(Zipar.version)")],
                                jpegQuality: jpegQuality)
            print("wrote \(path)")
        }
    }
}
