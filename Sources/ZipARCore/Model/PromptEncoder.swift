import Foundation

/// The built-in text encoder of small t2i models (the shipped default model): a word-level
/// vocabulary (`text_vocab.txt`, one word per line, line 0 = padding) and learned embedding tables
/// (`text.safetensors`: `embedding.weight` [vocab, caption_dim] and, optionally,
/// `position_embedding.weight` [cls_token_num, caption_dim]). The i-th word of a prompt (counted from
/// its first word) becomes embedding[word] + position_embedding[i]. The position term is there
/// because LlamaGen gives the caption rows zero keys (its 2D RoPE table is zero on the prefix), so
/// image tokens average them with equal weight: without positions, "a red circle left of a blue
/// square" and "a blue circle left of a red square" would be the same bag of words.
/// Optional context weights (`context_prev.weight`, `context_next.weight` [caption_dim, caption_dim])
/// then add W_prev @ row(i-1) + W_next @ row(i+1) to each word row (pad rows are zero): the image
/// tokens see only a sum over the caption rows, and with its neighbours in the row "circle" carries
/// "green", so the colour-shape pair is one feature instead of two words bound by position.
/// A prompt becomes caption features the way LlamaGen's t2i script lays out T5 features:
/// left-padded to cls_token_num rows, pad rows zero, mask 1 on the word rows.
public struct PromptEncoder {
    public let vocab: [String]
    public let index: [String: Int]
    public let embedding: Tensor          // [vocab, caption_dim]
    public let position_embedding: Tensor?  // [cls_token_num, caption_dim]; nil in models trained without it
    public let length: Int                // cls_token_num
    public let context_prev: Tensor?      // [caption_dim, caption_dim]; nil in models trained without it
    public let context_next: Tensor?

    public static func load(_ dir: ModelDirectory) throws -> PromptEncoder {
        let vocabPath = dir.path + "/text_vocab.txt", weightsPath = dir.path + "/text.safetensors"
        guard dir.gpt.isT2I else { throw ZipARError("\(dir.name) is a class-conditional model: use --class") }
        guard FileManager.default.fileExists(atPath: vocabPath), FileManager.default.fileExists(atPath: weightsPath) else {
            throw ZipARError("\(dir.name) has no built-in text encoder (text_vocab.txt + text.safetensors); pass --caption-embeddings FILE instead")
        }
        let words = try String(contentsOfFile: vocabPath, encoding: .utf8).split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
        let file = try SafeTensorsFile(path: weightsPath)
        let table = try file.tensor("embedding.weight", shape: [words.count, dir.gpt.caption_dim])
        let positions = try file.tensors["position_embedding.weight"].map { _ in
            try file.tensor("position_embedding.weight", shape: [dir.gpt.cls_token_num, dir.gpt.caption_dim])
        }
        let d = dir.gpt.caption_dim
        let context = try ["context_prev.weight", "context_next.weight"].map { name in
            try file.tensors[name].map { _ in try file.tensor(name, shape: [d, d]) }
        }
        guard (context[0] == nil) == (context[1] == nil) else {
            throw ZipARError("\(weightsPath): context_prev.weight and context_next.weight come together; it has only one")
        }
        return PromptEncoder(vocab: words, embedding: table, positions: positions, context: context[0].map { ($0, context[1]!) },
                             length: dir.gpt.cls_token_num)
    }

    public init(vocab: [String], embedding: Tensor, positions: Tensor? = nil, context: (prev: Tensor, next: Tensor)? = nil, length: Int) {
        self.vocab = vocab
        self.embedding = embedding
        self.position_embedding = positions
        self.context_prev = context?.prev
        self.context_next = context?.next
        self.length = length
        var idx: [String: Int] = [:]
        for (i, w) in vocab.enumerated() where i > 0 { idx[w.lowercased()] = i }
        index = idx
    }

    /// Word ids of a prompt: case and extra spaces do not matter; unknown words are an error listing the vocabulary.
    public func tokenize(_ text: String) throws -> [Int] {
        let words = text.lowercased().split(whereSeparator: { $0.isWhitespace }).map(String.init)
        guard !words.isEmpty else { throw ZipARError("the prompt is empty") }
        let unknown = words.filter { index[$0] == nil }
        guard unknown.isEmpty else {
            throw ZipARError("unknown word\(unknown.count > 1 ? "s" : "") \(unknown.map { "'\($0)'" }.joined(separator: ", ")); the vocabulary is: \(vocab.dropFirst().joined(separator: " "))")
        }
        guard words.count <= length else { throw ZipARError("the prompt has \(words.count) words; this model takes at most \(length)") }
        return words.map { index[$0]! }
    }

    /// Caption features [length, caption_dim] and mask, left-padded.
    public func encode(_ text: String) throws -> (features: Tensor, mask: [Bool]) {
        let ids = try tokenize(text)
        let dim = embedding.shape[1]
        let features = Tensor(shape: [length, dim])
        var mask = [Bool](repeating: false, count: length)
        for (i, id) in ids.enumerated() {
            let row = length - ids.count + i
            let f = features.data + row * dim
            f.update(from: embedding.data + id * dim, count: dim)
            if let p = position_embedding { for c in 0..<dim { f[c] += p.data[i * dim + c] } }
            mask[row] = true
        }
        if let prev = context_prev, let next = context_next { mixNeighbours(features, words: ids.count, prev: prev, next: next) }
        return (features, mask)
    }

    /// row(i) += W_prev @ row(i-1) + W_next @ row(i+1) over the word rows (the last `words` rows),
    /// all from the rows before mixing; the rows beyond the words are zero.
    private func mixNeighbours(_ features: Tensor, words: Int, prev: Tensor, next: Tensor) {
        let dim = embedding.shape[1], first = length - words
        let rows = Array(UnsafeBufferPointer(start: features.data, count: length * dim))
        var term = [Float](repeating: 0, count: dim)
        for r in first..<length {
            let out = features.data + r * dim
            for (w, src) in [(prev, r - 1), (next, r + 1)] where src >= first && src < length {
                rows.withUnsafeBufferPointer { BLAS.matvec(w.data, $0.baseAddress! + src * dim, &term, n: dim, k: dim) }
                for o in 0..<dim { out[o] += term[o] }
            }
        }
    }
}
