import ArgumentParser
import Foundation
import ZipARCore

/// `zipar info`: what a model directory holds, without running it.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Describe a model: architecture, parameters, grid, dtype, memory.")

    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        let dir = try modelOptions.open()
        let g = dir.gpt, v = dir.vq
        let gptFile = try SafeTensorsFile(path: dir.gptPath), vqFile = try SafeTensorsFile(path: dir.vqPath)
        func summary(_ f: SafeTensorsFile) -> (params: Int, bytes: Int, dtypes: String) {
            let ts = Array(f.tensors.values)
            let dtypes = Set(ts.map { $0.dtype.rawValue }).sorted().joined(separator: "+")
            return (ts.reduce(0) { $0 + $1.count }, ts.reduce(0) { $0 + $1.end - $1.begin }, dtypes)
        }
        let gs = summary(gptFile), vs = summary(vqFile)
        let mb = { (b: Int) in String(format: "%.1f MB", Double(b) / 1e6) }
        let kvBytes = 2 * 2 * g.n_layer * g.kvHeads * g.headDim * (g.cls_token_num + g.block_size) * 4
        print("model        \(dir.name)  (\(dir.path))")
        print("type         \(g.model_type)" + (g.isT2I ? ", caption_dim \(g.caption_dim), \(g.cls_token_num) condition tokens" : ", \(g.num_classes) classes" + (dir.classes != nil ? " (classes.txt)" : "")))
        print("gpt          \(g.n_layer) layers, dim \(g.dim), \(g.n_head) heads (\(g.kvHeads) kv), head_dim \(g.headDim), ffn \(g.ffnHidden), vocab \(g.vocab_size)"
              + (g.usesSAB ? ", SAB attention (BiViT softmax-aware binarization)" : ""))
        print("grid         \(g.gridSize)x\(g.gridSize) tokens -> \(dir.imageSize)x\(dir.imageSize) px")
        print("gpt weights  \(String(format: "%.1fM", Double(gs.params) / 1e6)) params, \(gs.dtypes) on disk \(mb(gs.bytes)), \(mb(gs.params * 4)) as fp32 in memory")
        if let q = dir.raw["quant"] as? [String: Any] {
            // Element counts above are of the stored tensors (two 4-bit codes or eight W1 sign bits per U8); this line says what they hold.
            var line = "quant        \(q["scheme"] ?? "?") blocks, head \(q["head"] ?? "?"), \(q["activations"] ?? "?") activation scales"
            if let gsz = q["group_size"] { line += ", group \(gsz), calibrated on \(q["calib"] ?? "?") prompts (seed \(q["seed"] ?? "?"))" }
            if let c = q["check"] as? [String: Any], let t = c["top1_agreement"] as? Double, let kl = c["mean_kl"] as? Double {
                line += String(format: "; vs fp32: top-1 agreement %.1f%%, mean KL %.4f", t * 100, kl)
            }
            print(line)
        }
        print("vq decoder   ch \(v.ch), ch_mult \(v.decoder_ch_mult), z \(v.z_channels), codebook \(v.codebook_size)x\(v.codebook_embed_dim); \(String(format: "%.1fM", Double(vs.params) / 1e6)) params, \(vs.dtypes), \(mb(vs.bytes))")
        if let q = dir.raw["vq_quant"] as? [String: Any] {
            let n = vqFile.tensors.keys.filter { $0.hasSuffix(".qweight") }.count
            var line = "vq quant     \(q["scheme"] ?? "?"): \(n) INT8 convolutions (per-channel weights, UINT8 activations), calibrated on \(q["calib"] ?? "?") latents (seed \(q["seed"] ?? "?"))"
            if let c = q["check"] as? [String: Any], let p = c["psnr_db"] as? Double { line += String(format: "; vs fp32: PSNR %.1f dB", p) }
            print(line)
        } else if vqFile.tensors.keys.contains(where: { $0.hasSuffix(".qweight") }) {
            print("vq quant     \(vqFile.tensors.keys.filter { $0.hasSuffix(".qweight") }.count) INT8 convolutions")
        }
        print("kv cache     \(mb(kvBytes)) fp32 with CFG (2 x \(g.n_layer) layers x \(g.cls_token_num + g.block_size) slots)")
        if let t = try? PromptEncoder.load(dir) { print("text         built-in word encoder, \(t.vocab.count - 1) words") }
        if !dir.samplingDefaults.isEmpty {
            print("defaults     " + dir.samplingDefaults.keys.sorted().map { "\($0)=\(dir.samplingDefaults[$0]!)" }.joined(separator: ", "))
        }
        print("attention    \(dir.attention)" + (dir.attention == "drawn"
            ? " (ZipAR passes see every token drawn so far, the lower rows' too; the model was trained on it)"
            : " (ZipAR's mask)"))
    }
}
