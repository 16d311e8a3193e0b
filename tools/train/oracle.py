"""What ZipAR's context costs a *perfect* model on the shape grammar: the part of the window-4 loss
that no training can remove.

A ZipAR pass samples several cells at once, each from what its own query sees: with window s, cell
(r, c) is sampled at step r*s + c and its query sees the cells sampled at earlier steps *and* at
earlier slots (the KV cache is causal in slot order, so an upper row never sees what the rows below
it already drew; see nextset.py). Two cells that see nothing of each other can both begin an object.

This script replaces the GPT by an oracle on object-occupancy grids (16x16 cells, a cell is "object"
when a quarter of its 4x4 pixels are): each cell is drawn from the *true* conditional given exactly
the cells its query sees, estimated from a bank of renderer scenes (the fraction of the bank scenes
that agree with every visible cell and have an object at this cell). It then counts the images
whose occupancy does not hold the prompt's number of objects (4-connected components). Raster order
with the oracle reproduces the bank's distribution, so its row measures the counting itself (two
objects 3 px apart can touch at cell resolution); the window rows minus the raster row are what the
visibility alone costs.

With `--attention drawn` the queries see every cell drawn at an earlier step, the lower rows' too
(zipar's drawn attention, nextset.py): what that mask buys a perfect model.

A sampled context that no bank scene matches ("left the support": the independent draws of one
pass made a picture the renderer never makes) has its remaining cells drawn as background.

    python3 tools/train/oracle.py --objects 1 --n 100 --bank 20000 --windows 8,4 [--attention drawn]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

CELL = 4  # pixels per cell side: the VQ tokenizer's downsampling


def occupancy_bank(n, objects, seed, size=64):
    """[n, G*G] bool: the object cells of n renderer scenes with `objects` objects."""
    g = size // CELL
    rng = np.random.default_rng(seed)
    out = np.zeros((n, g * g), bool)
    for i in range(n):
        spec = shapes.sample_prompt_spec(rng, p_two=1.0 if objects == 2 else 0.0)
        scene = shapes.sample_scene(rng, size, spec, left_first=True)
        m = np.zeros((size, size), bool)
        for o in scene["objects"]:
            m |= shapes.shape_mask(o["shape"], o["x0"], o["y0"], o["s"], size)
        out[i] = m.reshape(g, CELL, g, CELL).mean(axis=(1, 3)).ravel() >= 0.25
    return out


def visibility(g, window, drawn=False):
    """[N, N] bool: vis[q, p] = the query that samples cell q sees cell p (window >= g: raster);
    `drawn`: every cell sampled at an earlier step, not only those at earlier slots."""
    k = np.arange(g * g)
    step = k if window >= g else (k // g) * window + k % g
    vis = step[None, :] < step[:, None]
    return (vis if drawn else vis & (k[None, :] < k[:, None])), step


def components(cells, g):
    """Number of 4-connected components of a [g*g] bool grid (the renderer's reader's own search)."""
    return len(shapes._components(cells.reshape(g, g)))


def sample(bank, window, rng, drawn=False):
    """One occupancy grid drawn pass by pass from the oracle; (cells, left_support)."""
    g = int(round(bank.shape[1] ** 0.5))
    vis, step = visibility(g, window, drawn)
    b = bank.astype(np.float32)  # [n, N]
    x = np.zeros(g * g, bool)
    left = False
    for t in range(step.max() + 1):
        cells = np.nonzero(step == t)[0]
        v = vis[cells].astype(np.float32)  # [k, N]
        # Disagreements of each bank scene with what each query sees: |B v| - 2 B (x v) + |x v|.
        wrong = b @ v.T - 2 * (b @ (v * x).T) + (v * x).sum(axis=1)
        agree = wrong < 0.5  # [n, k]
        counts = agree.sum(axis=0)
        hits = (agree & bank[:, cells]).sum(axis=0)
        left |= bool((counts == 0).any())
        p = np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)
        x[cells] = rng.random(len(cells)) < p  # one pass: independent draws
    return x, left


def evaluate(bank, objects, windows, n, seed, drawn=False):
    """Rows (mode, wrong-count rate, left-support rate) for raster and each window, same seeds."""
    g = int(round(bank.shape[1] ** 0.5))
    rows = []
    for w in [g] + [w for w in windows if w < g]:
        rng = np.random.default_rng(seed)
        wrong = left = 0
        for _ in range(n):
            x, out = sample(bank, w, rng, drawn)
            wrong += components(x, g) != objects
            left += out
        rows.append(("raster" if w >= g else f"window {w}", wrong / n, left / n))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, choices=(1, 2), default=1, help="objects per scene")
    ap.add_argument("--n", type=int, default=100, help="images per decoding mode")
    ap.add_argument("--bank", type=int, default=20000, help="renderer scenes the conditionals are estimated from")
    ap.add_argument("--windows", default="8,4", help="comma-separated ZipAR windows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention", choices=("zipar", "drawn"), default="zipar",
                    help="what a query sees: ZipAR's mask (earlier steps and slots) or drawn (every earlier step)")
    args = ap.parse_args(argv)
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        ap.error(f"--windows takes comma-separated integers, got {args.windows!r}")
    if args.n < 1 or args.bank < 1 or any(w < 1 for w in windows):
        ap.error("--n, --bank and the windows must be positive")
    t0 = time.time()
    bank = occupancy_bank(args.bank, args.objects, seed=args.seed + 1)
    rows = evaluate(bank, args.objects, windows, args.n, args.seed, args.attention == "drawn")
    print(f"oracle: {args.objects}-object scenes, {args.attention} attention, bank {args.bank}, {args.n} images per mode, "
          f"{time.time() - t0:.0f} s")
    print("| decoding | wrong object count | left the bank's support |")
    print("|---|---|---|")
    for mode, wrong, left in rows:
        print(f"| {mode} | {100 * wrong:.1f}% | {100 * left:.1f}% |")


if __name__ == "__main__":
    main()
