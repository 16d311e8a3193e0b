import Foundation

/// Token files: JSON {"grid": [H, W], "tokens": [[...H*W ids in raster order...], ...]}, one list per image.
public struct TokensFile: Equatable {
    public var height: Int
    public var width: Int
    public var images: [[Int]]

    public init(height: Int, width: Int, images: [[Int]]) { self.height = height; self.width = width; self.images = images }

    public func write(to path: String) throws {
        let obj: [String: Any] = ["grid": [height, width], "tokens": images]
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), to: path)
    }

    public static func read(_ path: String, vocab: Int) throws -> TokensFile {
        let d = try readJSONObject(path)
        guard let g = d["grid"] as? [Any], g.count == 2, let h = (g[0] as? NSNumber)?.intValue, let w = (g[1] as? NSNumber)?.intValue,
              h > 0, w > 0, h * w <= 1 << 22 else { throw ZipARError("\(path): \"grid\" must be [H, W] with positive sizes") }
        guard let lists = d["tokens"] as? [Any], !lists.isEmpty else { throw ZipARError("\(path): \"tokens\" must be a non-empty list of lists") }
        var images: [[Int]] = []
        for (i, l) in lists.enumerated() {
            guard let nums = l as? [Any], nums.count == h * w else { throw ZipARError("\(path): image \(i) must hold \(h * w) tokens") }
            let ids = try nums.map { v -> Int in
                guard let n = v as? NSNumber, !isJSONBool(v), Double(n.intValue) == n.doubleValue, n.intValue >= 0, n.intValue < vocab else {
                    throw ZipARError("\(path): image \(i) has a token outside 0..<\(vocab)")
                }
                return n.intValue
            }
            images.append(ids)
        }
        return TokensFile(height: h, width: w, images: images)
    }
}

/// Caption features for t2i models (e.g. flan-t5-xl outputs): a safetensors file with
/// `caption_embs` [cls_token_num, caption_dim] (or [1, ...]) and optional `emb_mask` [cls_token_num]
/// (1 = valid). The fixture names `input.caption_embs` / `input.emb_mask` are accepted too.
/// Without a mask, all-zero rows count as padding.
public enum CaptionEmbeddings {
    public static func load(_ path: String, config: GPTConfig) throws -> (features: Tensor, mask: [Bool]) {
        let f = try SafeTensorsFile(path: path)
        guard let name = ["caption_embs", "input.caption_embs"].first(where: { f.tensors[$0] != nil }) else {
            throw ZipARError("\(path): no 'caption_embs' tensor")
        }
        let t = try f.tensor(name)
        let n = config.cls_token_num, dim = config.caption_dim
        guard t.count == n * dim, t.shape.last == dim else {
            throw ZipARError("\(path): caption_embs has shape \(t.shape), the model needs [\(n), \(dim)]")
        }
        let features = t.reshaped([n, dim])
        var mask: [Bool]
        if let mname = ["emb_mask", "input.emb_mask"].first(where: { f.tensors[$0] != nil }) {
            let info = try f.info(mname)
            let m = info.dtype == .F32 || info.dtype == .F16 || info.dtype == .BF16 ? try f.tensor(mname).array.map { $0 > 0.5 } : try f.ints(mname).map { $0 != 0 }
            guard m.count == n else { throw ZipARError("\(path): emb_mask must have \(n) entries") }
            mask = m
        } else {
            mask = (0..<n).map { r in (0..<dim).contains { features[r * dim + $0] != 0 } }
        }
        guard mask.contains(true) else { throw ZipARError("\(path): the caption mask has no valid position") }
        return (features, mask)
    }
}
