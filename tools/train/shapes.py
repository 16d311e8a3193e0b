#!/usr/bin/env python3
"""The shapes domain of the default zipar model: a fixed compositional grammar of flat shapes.

    prompt     := object [relation object] [background]
    object     := "a" COLOR SHAPE
    relation   := "left of" | "right of" | "above" | "below"
    background := "on a" COLOR "background"

Everything here is numpy only and seeded: `sample_scene(rng)` draws a scene (objects, sizes,
positions, background), `render(scene)` rasterises it to uint8 RGB [S, S, 3], and
`check_scene(scene, image)` verifies every rule of the issue on the rendered pixels. `analyze` /
`prompt_matches` read an arbitrary (e.g. generated) image back into colours, shapes and
positions, which train.py uses to pick sampling defaults.

Rules (checked by check_scene):
- solid background, flat-filled shapes (palette colours only, no outline, no anti-aliasing);
- each object's pixel bounding box is between 16% and 40% of the canvas side (both sides);
- objects never overlap (their bounding boxes are at least GAP pixels apart);
- "A left of B": centroid(A).x < centroid(B).x by at least 15% of the side, and the x distance
  is larger than the y distance (similarly for right of / above / below);
- two objects differ in colour or in shape; no object has the background colour; with no
  background named, the background is any palette colour no object uses.

`python3 shapes.py --check 1000` renders and checks 1000 scenes; `--words FILE` writes the
grammar's words as JSON; `--sheet FILE.png` writes a contact sheet of samples (needs nothing but
zlib).
"""

import argparse
import json
import re
import struct
import sys
import zlib

import numpy as np

PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 210),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLORS = list(PALETTE)
SHAPES = ["circle", "square", "triangle", "diamond"]
RELATIONS = ["left of", "right of", "above", "below"]
OTHER_WORDS = ["a", "left", "right", "of", "above", "below", "on", "background"]
PAD = "<pad>"
MAX_WORDS = 12  # "a green triangle left of a purple diamond on a white background"

MIN_FRAC, MAX_FRAC = 0.16, 0.40   # object bounding box side, fraction of the canvas side
REL_FRAC = 0.15                   # relation: centroid distance along the axis, fraction of the side
GAP = 3                           # pixels between the bounding boxes of two objects
# Margins the sampler keeps on top of the rules, so that the training images show the relations
# clearly (a generated image that is a little off still satisfies them).
REL_MARGIN_PX = 2.0


def vocabulary():
    """Line 0 is the padding token, then every word of the grammar, lowercase."""
    return [PAD] + OTHER_WORDS + COLORS + SHAPES


def grammar_json():
    return {"colors": {k: list(v) for k, v in PALETTE.items()}, "shapes": SHAPES, "relations": RELATIONS,
            "words": vocabulary()[1:], "pad": PAD, "max_words": MAX_WORDS,
            "grammar": 'prompt := object [relation object] [background]; object := "a" COLOR SHAPE; '
                       'relation := "left of" | "right of" | "above" | "below"; '
                       'background := "on a" COLOR "background"'}


# ---------------------------------------------------------------------------------------------
# Prompts

def make_prompt(objects, relation=None, background=None):
    """objects: [(color, shape)] (1 or 2); relation applies to objects[0] relative to objects[1]."""
    parts = [f"a {objects[0][0]} {objects[0][1]}"]
    if len(objects) == 2:
        parts.append(f"{relation} a {objects[1][0]} {objects[1][1]}")
    if background is not None:
        parts.append(f"on a {background} background")
    return " ".join(parts)


_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_PROMPT_RE = re.compile(
    rf"^a (?P<c1>{_COLOR_RE}) (?P<s1>{_SHAPE_RE})"
    rf"(?: (?P<rel>left of|right of|above|below) a (?P<c2>{_COLOR_RE}) (?P<s2>{_SHAPE_RE}))?"
    rf"(?: on a (?P<bg>{_COLOR_RE}) background)?$")


def parse_prompt(text):
    """Prompt -> {"objects": [(color, shape), ...], "relation": str|None, "background": str|None}.
    Raises ValueError when the text is not in the grammar."""
    norm = " ".join(text.lower().split())
    m = _PROMPT_RE.match(norm)
    if not m:
        raise ValueError(f"not in the grammar: {text!r}")
    objs = [(m["c1"], m["s1"])]
    if m["rel"]:
        objs.append((m["c2"], m["s2"]))
    return {"objects": objs, "relation": m["rel"], "background": m["bg"]}


# ---------------------------------------------------------------------------------------------
# Rasterising

def shape_mask(shape, x0, y0, s, size):
    """Boolean [size, size] mask of a shape whose bounding square is (x0, y0, side s), sampled
    at pixel centres."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cx, cy, r = x0 + s / 2.0, y0 + s / 2.0, s / 2.0
    if shape == "square":
        m = (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s)
    elif shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "diamond":
        m = np.abs(xx - cx) + np.abs(yy - cy) <= r
    elif shape == "triangle":  # point up, base at the bottom, apex at the top centre
        t = (yy - y0) / s
        m = (yy >= y0) & (yy < y0 + s) & (np.abs(xx - cx) <= t * r)
    else:
        raise ValueError(shape)
    return m


def mask_stats(m):
    ys, xs = np.nonzero(m)
    return {"count": len(xs), "x0": int(xs.min()), "x1": int(xs.max()), "y0": int(ys.min()), "y1": int(ys.max()),
            "cx": float(xs.mean() + 0.5), "cy": float(ys.mean() + 0.5)}


def relation_holds(a, b, relation, size, margin=0.0):
    """Does a stand `relation` to b (centroid dicts with cx, cy)?"""
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]   # > 0: a is left of / above b
    need = REL_FRAC * size + margin
    if relation == "left of":
        return dx >= need and abs(dx) > abs(dy) + margin
    if relation == "right of":
        return -dx >= need and abs(dx) > abs(dy) + margin
    if relation == "above":
        return dy >= need and abs(dy) > abs(dx) + margin
    if relation == "below":
        return -dy >= need and abs(dy) > abs(dx) + margin
    raise ValueError(relation)


def render(scene):
    size = scene["size"]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = PALETTE[scene["background"]]
    for o in scene["objects"]:
        img[shape_mask(o["shape"], o["x0"], o["y0"], o["s"], size)] = PALETTE[o["color"]]
    return img


# ---------------------------------------------------------------------------------------------
# Sampling scenes

def side_range(size):
    lo = int(np.ceil(MIN_FRAC * size)) + 2     # +2: circles/diamonds lose a pixel or so at the rim
    hi = int(np.floor(MAX_FRAC * size)) - 1
    return lo, hi


def sample_prompt_spec(rng, p_two=0.6, p_background=0.5):
    two = rng.random() < p_two
    c1, s1 = COLORS[rng.integers(10)], SHAPES[rng.integers(4)]
    objs = [(c1, s1)]
    relation = None
    if two:
        while True:
            c2, s2 = COLORS[rng.integers(10)], SHAPES[rng.integers(4)]
            if (c2, s2) != (c1, s1):
                break
        objs.append((c2, s2))
        relation = RELATIONS[rng.integers(4)]
    used = {c for c, _ in objs}
    free = [c for c in COLORS if c not in used]
    bg = free[rng.integers(len(free))]
    named = rng.random() < p_background
    return {"objects": objs, "relation": relation, "background": bg, "named_background": named}


def sample_scene(rng, size=64, spec=None, left_first=False):
    """A random scene (optionally for a given spec from parse_prompt/sample_prompt_spec).

    left_first: in a side-by-side scene the left object's top row is at or above the right one's,
    so that raster order always begins the left object first, as it begins the upper one of an
    above/below scene. The GPT training data uses it: without it, a model that gets both objects
    right puts them on the right sides only half the time (v14), while above/below, where drawing
    order and relation agree, it gets right almost always."""
    if spec is None:
        spec = sample_prompt_spec(rng)
    spec = dict(spec)
    if spec.get("background") is None:
        used = {c for c, _ in spec["objects"]}
        free = [c for c in COLORS if c not in used]
        spec["background"] = free[rng.integers(len(free))]
        spec["named_background"] = False
    lo, hi = side_range(size)
    for _ in range(10000):
        objs, stats = [], []
        for color, shape in spec["objects"]:
            s = int(rng.integers(lo, hi + 1))
            x0 = int(rng.integers(1, size - s))
            y0 = int(rng.integers(1, size - s))
            objs.append({"color": color, "shape": shape, "x0": x0, "y0": y0, "s": s})
            stats.append(mask_stats(shape_mask(shape, x0, y0, s, size)))
        if len(objs) == 2:
            a, b = stats
            apart = (a["x1"] + GAP < b["x0"] or b["x1"] + GAP < a["x0"] or
                     a["y1"] + GAP < b["y0"] or b["y1"] + GAP < a["y0"])
            if not apart or not relation_holds(a, b, spec["relation"], size, REL_MARGIN_PX):
                continue
            if left_first and spec["relation"] in ("left of", "right of"):
                left, right = (a, b) if spec["relation"] == "left of" else (b, a)
                if left["y0"] > right["y0"]:
                    continue
        scene = {"size": size, "objects": objs, "relation": spec["relation"], "background": spec["background"],
                 "named_background": bool(spec.get("named_background", False))}
        scene["prompt"] = make_prompt(spec["objects"], spec["relation"],
                                      spec["background"] if scene["named_background"] else None)
        return scene
    raise RuntimeError(f"could not place {spec}")


# ---------------------------------------------------------------------------------------------
# Checking rendered images

def check_scene(scene, img):
    """Raises AssertionError unless the rendered image obeys every rule of the grammar."""
    size = scene["size"]
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    spec = parse_prompt(scene["prompt"])
    assert [(o["color"], o["shape"]) for o in scene["objects"]] == spec["objects"]
    assert spec["relation"] == scene["relation"]
    if spec["background"] is not None:
        assert spec["background"] == scene["background"]
    bg = np.array(PALETTE[scene["background"]], np.uint8)
    colors = [o["color"] for o in scene["objects"]]
    assert scene["background"] not in colors, "an object has the background colour"
    if len(scene["objects"]) == 2:
        a, b = scene["objects"]
        assert (a["color"], a["shape"]) != (b["color"], b["shape"]), "two identical objects"
    masks = [shape_mask(o["shape"], o["x0"], o["y0"], o["s"], size) for o in scene["objects"]]
    if len(masks) == 2:
        assert not (masks[0] & masks[1]).any(), "objects overlap"
    union = np.zeros((size, size), bool)
    stats = []
    for o, m in zip(scene["objects"], masks):
        assert (img[m] == np.array(PALETTE[o["color"]], np.uint8)).all(), "object not flat-filled"
        st = mask_stats(m)
        w, h = st["x1"] - st["x0"] + 1, st["y1"] - st["y0"] + 1
        for side in (w, h):
            assert MIN_FRAC * size <= side <= MAX_FRAC * size, f"object box side {side} out of range"
        stats.append(st)
        union |= m
    assert (img[~union] == bg).all(), "background not solid"
    # Only palette colours appear, and exactly the expected ones.
    flat = img.reshape(-1, 3)
    uniq = {tuple(int(v) for v in c) for c in np.unique(flat, axis=0)}
    assert uniq == {PALETTE[c] for c in colors + [scene["background"]]}
    if len(stats) == 2:
        assert relation_holds(stats[0], stats[1], scene["relation"], size), "relation does not hold"
    # The analyzer reads the image back to the same description.
    assert prompt_matches(img, scene["prompt"]), f"analyze() disagrees: {analyze(img)}"


# ---------------------------------------------------------------------------------------------
# Reading images back (for generated images)

_PAL = np.array([PALETTE[c] for c in COLORS], np.float32)


def quantize_palette(img):
    d = ((img.reshape(-1, 1, 3).astype(np.float32) - _PAL[None]) ** 2).sum(-1)
    return d.argmin(1).reshape(img.shape[:2])


def _components(mask):
    """4-connected components of a boolean mask, as a list of index arrays (numpy + a small BFS)."""
    h, w = mask.shape
    labels = -np.ones((h, w), np.int32)
    comps = []
    ys, xs = np.nonzero(mask)
    for y, x in zip(ys, xs):
        if labels[y, x] >= 0:
            continue
        k = len(comps)
        stack = [(y, x)]
        labels[y, x] = k
        pts = []
        while stack:
            cy, cx = stack.pop()
            pts.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and labels[ny, nx] < 0:
                    labels[ny, nx] = k
                    stack.append((ny, nx))
        comps.append(np.array(pts))
    return comps


def classify_shape(pts):
    ys, xs = pts[:, 0], pts[:, 1]
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    fill = len(pts) / float(w * h)
    if fill > 0.9:
        return "square"
    if fill > 0.66:
        return "circle"
    widths = np.bincount(ys - y0, minlength=h)
    # where the shape is widest, as a fraction of its height: bottom for a triangle, middle for a diamond
    rows = np.nonzero(widths >= widths.max() - 1)[0]
    pos = (rows.mean() + 0.5) / h
    return "triangle" if pos > 0.7 else "diamond"


def analyze(img, min_frac=0.004):
    """Image -> {"background": color, "objects": [{color, shape, cx, cy, count, w, h}]} (objects
    sorted by size, components smaller than min_frac of the canvas ignored)."""
    size = img.shape[0]
    q = quantize_palette(img)
    counts = np.bincount(q.ravel(), minlength=len(COLORS))
    bg = int(counts.argmax())
    objs = []
    for ci in range(len(COLORS)):
        if ci == bg or counts[ci] < min_frac * size * size:
            continue
        for pts in _components(q == ci):
            if len(pts) < min_frac * size * size:
                continue
            objs.append({"color": COLORS[ci], "shape": classify_shape(pts), "count": len(pts),
                         "cx": float(pts[:, 1].mean() + 0.5), "cy": float(pts[:, 0].mean() + 0.5),
                         "w": int(np.ptp(pts[:, 1]) + 1), "h": int(np.ptp(pts[:, 0]) + 1)})
    objs.sort(key=lambda o: -o["count"])
    return {"background": COLORS[bg], "objects": objs}


def prompt_matches(img, prompt):
    """A strict reading of the prompt against an image: the right number of objects, colours and
    shapes, the relation between the centroids, and the background when named."""
    spec = parse_prompt(prompt)
    a = analyze(img)
    size = img.shape[0]
    if spec["background"] is not None and a["background"] != spec["background"]:
        return False
    if len(a["objects"]) != len(spec["objects"]):
        return False
    found = []
    for color, shape in spec["objects"]:
        hit = [o for o in a["objects"] if o["color"] == color and o["shape"] == shape]
        if len(hit) != 1:
            return False
        found.append(hit[0])
    if len(found) == 2:
        if found[0] is found[1] or not relation_holds(found[0], found[1], spec["relation"], size):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# PNG writing (contact sheets for eyeballing), zlib only

def write_png(path, img):
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def contact_sheet(images, cols=8, pad=2):
    n = len(images)
    rows = (n + cols - 1) // cols
    s = images[0].shape[0]
    sheet = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[pad + r * (s + pad): pad + r * (s + pad) + s, pad + c * (s + pad): pad + c * (s + pad) + s] = im
    return sheet


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", type=int, default=0, help="render and check N seeded scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--words", help="write the grammar's words (and palette) as JSON to this file")
    ap.add_argument("--sheet", help="write a PNG contact sheet of 32 samples")
    args = ap.parse_args(argv)
    if args.words:
        with open(args.words, "w") as f:
            json.dump(grammar_json(), f, indent=1)
            f.write("\n")
    rng = np.random.default_rng(args.seed)
    if args.check:
        for i in range(args.check):
            sc = sample_scene(rng, args.size)
            check_scene(sc, render(sc))
        print(f"{args.check} scenes rendered and checked")
    if args.sheet:
        scenes = [sample_scene(rng, args.size) for _ in range(32)]
        write_png(args.sheet, contact_sheet([render(s) for s in scenes]))
        for i, s in enumerate(scenes):
            print(i, s["prompt"])


if __name__ == "__main__":
    main()
