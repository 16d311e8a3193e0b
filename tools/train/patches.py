"""The default model's tokenizer: a vector quantiser over 4x4 pixel patches with a counted codebook.

The shape domain draws every pixel from a 10-colour palette with no anti-aliasing, so a 4x4 patch is
a 4x4 grid of palette indices. The codebook is the K most frequent such patterns in a seeded sample
of scenes (all solid patches and the common edge patterns); a patch is encoded as its nearest
codebook pattern in RGB (squared distance), which is exact for ~98-99% of patches at K = 2048.
This replaces LlamaGen's conv encoder, which could not be trained to sharp edges in the CPU budget:
the codes are fixed before any network trains, so the decoder and the GPT can train at the same
time. At run time nothing changes: zipar reads quantize.embedding.weight + post_quant_conv + the
LlamaGen decoder, trained to turn the codes back into pixels (train.py phase "dec").

    patterns [K, 16] uint8 palette indices, row-major inside the patch
    codes    [B, (H/4)*(W/4)] int64, raster order
"""

import numpy as np

import shapes

P = 4  # patch side = the VQ downsample factor (ch_mult of length 3)
PALETTE = np.array([shapes.PALETTE[c] for c in shapes.COLORS], np.float32)  # [10, 3]


def labels(imgs):
    """uint8 [B, H, W, 3] -> palette index per pixel [B, H, W] (nearest colour)."""
    d = ((imgs[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


def to_patches(lab):
    """[B, H, W] -> [B, (H/P)*(W/P), P*P], patches in raster order."""
    B, H, W = lab.shape
    return lab.reshape(B, H // P, P, W // P, P).transpose(0, 1, 3, 2, 4).reshape(B, (H // P) * (W // P), P * P)


def from_patches(p, H, W):
    """[B, (H/P)*(W/P), P*P] -> [B, H, W]."""
    B = p.shape[0]
    return p.reshape(B, H // P, W // P, P, P).transpose(0, 1, 3, 2, 4).reshape(B, H, W)


def build_codebook(rng, n_scenes, K, size):
    """The K most frequent patch patterns in n_scenes seeded scenes: ([K, 16] uint8, coverage),
    coverage = share of the sampled patches that are exactly a codebook pattern."""
    counts = {}
    for _ in range(n_scenes):
        lab = labels(shapes.render(shapes.sample_scene(rng, size))[None])
        u, c = np.unique(to_patches(lab)[0], axis=0, return_counts=True)
        for row, n in zip(map(bytes, u), c):
            counts[row] = counts.get(row, 0) + int(n)
    # Most frequent first; ties broken by the pattern bytes so the result does not depend on dict order.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    patterns = np.array([np.frombuffer(k, np.uint8) for k, _ in ranked[:K]])
    total = sum(counts.values())
    coverage = sum(n for _, n in ranked[:K]) / total
    if len(patterns) < K:  # tiny configs: pad with solid patterns so every code decodes to something
        pad = np.repeat(patterns[:1], K - len(patterns), axis=0)
        patterns = np.concatenate([patterns, pad])
    return patterns, coverage


def pack(p):
    """[n, 16] palette indices -> [n] uint64 keys."""
    shifts = (4 * np.arange(p.shape[1], dtype=np.uint64))
    return (p.astype(np.uint64) << shifts).sum(1, dtype=np.uint64)


class Tokenizer:
    """Nearest-pattern encoder and exact dictionary decoder for one codebook."""

    def __init__(self, patterns):
        self.patterns = patterns.astype(np.uint8)                    # [K, 16]
        self.rgb = PALETTE[self.patterns].reshape(len(patterns), -1)  # [K, 48]
        self.rgb_sq = (self.rgb ** 2).sum(1)
        # Exact lookup: a pattern packs into one uint64 (16 indices < 16, 4 bits each).
        keys = pack(self.patterns)
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]

    def encode(self, imgs):
        """uint8 [B, H, W, 3] -> codes [B, (H/4)*(W/4)] int64."""
        p = to_patches(labels(imgs))
        B, N, _ = p.shape
        flat = p.reshape(B * N, -1)
        keys = pack(flat)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        hit = self.sorted_keys[pos] == keys
        codes = np.where(hit, self.order[pos], -1).astype(np.int64)
        miss = np.nonzero(~hit)[0]
        if len(miss):
            x = PALETTE[flat[miss]].reshape(len(miss), -1)
            d = self.rgb_sq[None] - 2 * x @ self.rgb.T
            codes[miss] = d.argmin(1)
        return codes.reshape(B, N)

    def decode(self, codes, H, W):
        """codes [B, N] -> uint8 [B, H, W, 3]: each code's pattern painted exactly."""
        lab = from_patches(self.patterns[codes], H, W)
        return PALETTE[lab].astype(np.uint8)

    def embedding_init(self, dim, seed):
        """Initial codebook vectors [K, dim]: a fixed random projection of each pattern's centred RGB
        values plus a little noise, so that similar patches start close together (the decoder
        learns faster than from random vectors); LlamaGen L2-normalises them at lookup."""
        g = np.random.default_rng(seed)
        proj = g.standard_normal((self.rgb.shape[1], dim)).astype(np.float32) / np.sqrt(self.rgb.shape[1])
        x = (self.rgb - 127.5) / 127.5
        e = x @ proj + 0.05 * g.standard_normal((len(x), dim)).astype(np.float32)
        return e
