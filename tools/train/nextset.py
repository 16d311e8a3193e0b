"""ZipAR next-set decoding as one teacher-forced training pass.

With window s (the "ideal" schedule of Sources/ZipARCore/Decoding/Schedule.swift) cell (r, c) of an
H x W grid is sampled at step r*s + c, so the query predicting it sees row r-1 only up to column
c+s-1, row r-2 up to c+2s-1, and so on: the rest of those rows is not decoded yet. A model trained
on raster order alone never saw that context, which is what ZipAR costs in quality. Training on
this visibility (for a share of the samples) teaches the model to predict from it.

The decode it reproduces, exactly as the Swift engine runs it (one KV cache, every input of a pass
written first, a query attends to the written slots at or before its own):
- cell k's token is fed at slot k one step after it is sampled;
- row r+1 starts (step (r+1)*s) before row r ends, so the query predicting (r+1, 0) sits at the
  slot of the missing (r, W-1) and is fed a proxy: the newest token of row r-1 (of row 0 for r = 0);
- once row r ends (step r*s + W) the real (r, W-1) is written over the proxy ("refresh"): queries
  from then on see the refreshed keys and values, earlier ones the proxy's.
One sequence holds both versions: the N-1 inputs at their slots (proxies at the last column), then
H-1 refresh positions carrying the real last-column tokens at the RoPE positions of those slots.
A mask says which version each query sees, so the loss at every position is the loss the decode
would see, with the keys and values computed from the same contexts as the KV cache holds them.

`drawn=True` is zipar's "drawn" attention (GPT.swift AttentionVisibility.drawn): a query sees every
slot written so far, also slots after its own, so an upper row sees what the rows below it already
drew (ZipAR's own mask hides them: the cache is causal in slot order). Raster is the same either way.
A model must be trained on it to use it (the relative positions are new to a raster-trained model).
"""

import functools

import numpy as np
import torch


def feed_steps(H, W, s):
    """Step at which each of the N-1 input slots is (first) written, and the refresh steps [H-1]."""
    k = np.arange(H * W - 1)
    r, c = k // W, k % W
    fed = np.where(c < W - 1, r * s + c + 1, (r + 1) * s)
    refresh = np.arange(H - 1) * s + W
    return fed, refresh


@functools.lru_cache(maxsize=64)
def layout(H, W, s, drawn=False):
    """For window s (1 <= s <= W; s = W is raster): (visible [L, L] bool, proxy_src [N-1] int) over the
    L = N-1 + H-1 image positions (inputs, then refreshes). visible[i, j]: query i sees key j.
    proxy_src[k] is the cell whose token is fed at slot k (k itself except at proxied slots)."""
    N = H * W
    fed, refresh = feed_steps(H, W, s)
    slot = np.concatenate([np.arange(N - 1), np.arange(H - 1) * W + W - 1])
    src = np.arange(N - 1)
    if s == W:  # raster: causal over the inputs; the refresh positions only see (and are seen by) nobody else
        vis = np.zeros((N - 1 + H - 1,) * 2, bool)
        vis[:N - 1, :N - 1] = np.tril(np.ones((N - 1, N - 1), bool))
        vis[N - 1:, :N - 1] = slot[N - 1:, None] >= slot[None, :N - 1]
        idx = np.arange(N - 1, N - 1 + H - 1)
        vis[idx, idx] = True
        return vis, src
    time = np.concatenate([fed, refresh])
    # Which refresh (if any) overwrites a key, and when.
    overwritten = np.full(N - 1 + H - 1, np.iinfo(np.int64).max)
    for r in range(H - 1):
        overwritten[r * W + W - 1] = refresh[r]
        # proxy: the newest sampled token of row max(r-1, 0) when row r+1 starts at step (r+1)*s
        row = max(r - 1, 0)
        done = min(((r + 1) - row) * s, W)
        src[r * W + W - 1] = row * W + done - 1
    vis = (time[None, :] <= time[:, None]) & (time[:, None] < overwritten[None, :])
    if not drawn:  # ZipAR's mask: causal in slot order as well
        vis &= slot[None, :] <= slot[:, None]
    return vis, src


def batch(tokens, windows, H, W, cls_token_num, drawn=False):
    """tokens [B, N] int64, windows [B] ints -> (inputs [B, N-1+H-1], visible [B, 1, S, S] bool with
    S = cls_token_num + N-1 + H-1, rope positions [S]). The caption columns are all visible here
    (the caption mask is applied by Transformer.build_mask)."""
    B, N = tokens.shape
    T, L = cls_token_num, N - 1 + H - 1
    S = T + L
    inputs = torch.empty(B, L, dtype=torch.long)
    visible = torch.zeros(B, 1, S, S, dtype=torch.bool)
    visible[:, :, :T, :T] = torch.tril(torch.ones(T, T, dtype=torch.bool))
    visible[:, :, T:, :T] = True
    last = torch.arange(H - 1) * W + W - 1
    for b, s in enumerate(windows):
        vis, src = layout(H, W, int(s), bool(drawn))
        inputs[b, :N - 1] = tokens[b, torch.from_numpy(src)]
        inputs[b, N - 1:] = tokens[b, last]
        visible[b, 0, T:, T:] = torch.from_numpy(vis)
    positions = torch.cat([torch.arange(T + N - 1), T + last])
    return inputs, visible, positions
