"""Tests for the default model's patch tokenizer (tools/train/patches.py)."""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "train"))

import patches  # noqa: E402
import shapes  # noqa: E402


def scenes(seed, n, size=32):
    rng = np.random.default_rng(seed)
    sc = [shapes.sample_scene(rng, size) for _ in range(n)]
    return np.stack([shapes.render(s) for s in sc]), sc


def test_patch_layout_round_trips():
    lab = np.random.default_rng(0).integers(0, 10, (2, 8, 12)).astype(np.uint8)
    p = patches.to_patches(lab)
    assert p.shape == (2, 6, 16)
    assert (p[1, 4] == lab[1, 4:8, 4:8].reshape(-1)).all()  # patch (row 1, col 1) in raster order
    assert (patches.from_patches(p, 8, 12) == lab).all()


def test_labels_of_rendered_pixels_are_exact():
    imgs, _ = scenes(1, 4)
    assert (patches.PALETTE[patches.labels(imgs)] == imgs).all()


def test_codebook_is_seeded_and_ranked():
    a, cov_a = patches.build_codebook(np.random.default_rng(3), 20, 64, 32)
    b, cov_b = patches.build_codebook(np.random.default_rng(3), 20, 64, 32)
    assert (a == b).all() and cov_a == cov_b and 0 < cov_a <= 1
    assert len({bytes(r) for r in a}) == 64  # no duplicate patterns
    solid = [i for i, r in enumerate(a) if (r == r[0]).all()]
    assert solid[:3] == [0, 1, 2]  # solid patches are by far the most frequent


def test_encode_is_exact_on_codebook_patterns_and_nearest_otherwise():
    pats, _ = patches.build_codebook(np.random.default_rng(3), 30, 128, 32)
    tok = patches.Tokenizer(pats)
    imgs, _ = scenes(4, 6)
    codes = tok.encode(imgs)
    assert codes.shape == (6, 64) and codes.min() >= 0 and codes.max() < 128
    lab = patches.to_patches(patches.labels(imgs)).reshape(-1, 16)
    flat = codes.reshape(-1)
    known = {bytes(r): i for i, r in enumerate(pats)}
    for row, c in zip(lab, flat):
        rgb = patches.PALETTE[row].reshape(-1)
        if bytes(row) in known:
            assert c == known[bytes(row)]
        else:  # naive nearest pattern in RGB
            d = ((patches.PALETTE[pats].reshape(len(pats), -1) - rgb) ** 2).sum(1)
            assert d[c] == d.min()
    # decode paints each code's pattern
    rec = tok.decode(codes, 32, 32)
    exact = np.array([bytes(r) in known for r in lab]).reshape(6, 8, 8)
    rec_p = patches.to_patches(patches.labels(rec))
    assert (rec_p.reshape(-1, 16)[exact.reshape(-1)] == lab[exact.reshape(-1)]).all()


def test_embedding_init_is_deterministic():
    pats, _ = patches.build_codebook(np.random.default_rng(3), 10, 32, 32)
    tok = patches.Tokenizer(pats)
    e1, e2 = tok.embedding_init(8, 0), tok.embedding_init(8, 0)
    assert e1.shape == (32, 8) and (e1 == e2).all()
