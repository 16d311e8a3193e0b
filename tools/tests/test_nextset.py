"""ZipAR-visibility training (tools/train/nextset.py) against a step-by-step KV-cache decode.

The reference below follows the Swift engine: the ideal schedule of Schedule.swift (simulated here
with its own readiness rule, not nextset's formulas), one KV cache per layer, every input of a pass
written first, each query attending to the written slots at or before its own. Fed the same tokens,
the one-pass training forward must give the same logits for every cell.

    python3 -m pytest -q tools/tests/test_nextset.py
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "train"))

import nextset  # noqa: E402
from test_train import load_t2i_fixture, needs_fixtures  # noqa: E402
from model import GPTArgs, Transformer, apply_rotary_emb  # noqa: E402


def ideal_steps(H, W, s):
    """Schedule.swift's buildSteps for the ideal policy: [(inputs [(slot, cell fed, output cell)])]."""
    done = [0] * H
    needs_refresh = [False] * H
    finished = []
    steps = []
    while done[H - 1] < W:
        inputs = []
        for r in finished:
            if needs_refresh[r] and r < H - 1:
                inputs.append((r * W + W - 1, r * W + W - 1, None))
        ready = [r for r in range(H) if done[r] < W and (r == 0 or done[r - 1] >= min(done[r] + s, W))]
        for r in ready:
            c = done[r]
            if c > 0:
                inputs.append((r * W + c - 1, r * W + c - 1, r * W + c))
            elif r == 0:
                inputs.append((-1, None, 0))
            elif done[r - 1] == W:
                inputs.append(((r - 1) * W + W - 1, (r - 1) * W + W - 1, r * W))
            else:
                src = max(r - 2, 0)
                inputs.append(((r - 1) * W + W - 1, src * W + done[src] - 1, r * W))
                needs_refresh[r - 1] = True
        finished = []
        for r in ready:
            done[r] += 1
            if done[r] == W:
                finished.append(r)
        steps.append(inputs)
    return steps


def cached_decode(gpt, cond, emb_mask, tokens, H, W, s, drawn=False, pick=None):
    """Logits [B, N, vocab] of every cell, decoding `tokens` [B, N] (teacher-forced) with window s;
    `drawn`: every query sees every written slot (zipar's drawn attention), not only those before it.
    `pick` (free decoding): called with each cell's logits [B, vocab] after its pass; the token it
    returns is written into `tokens` for every batch row before any pass feeds it."""
    T, N = gpt.cls_token_num, H * W
    B = tokens.shape[0]
    S = T + N
    layers = gpt.layers
    att0 = layers[0].attention
    K = [torch.zeros(B, att0.n_kv_head, S, att0.head_dim) for _ in layers]
    V = [torch.zeros(B, att0.n_kv_head, S, att0.head_dim) for _ in layers]
    written = torch.zeros(S, dtype=torch.bool)
    out = torch.zeros(B, N, gpt.args.vocab_size)
    for inputs in ideal_steps(H, W, s):
        rows, pos, outs = [], [], []
        for slot, cell, o in inputs:
            if slot == -1:  # prefill: the caption rows, the last one predicts cell 0
                rows += [cond[:, t] for t in range(T)]
                pos += list(range(T))
                outs += [None] * (T - 1) + [o]
            else:
                rows.append(gpt.tok_embeddings(tokens[:, cell]))
                pos.append(T + slot)
                outs.append(o)
        h = torch.stack(rows, dim=1)  # [B, R, dim]
        p = torch.tensor(pos)
        written[p] = True
        keys = torch.arange(S)
        # drawn: image queries see every written slot; the caption prefix stays causal
        m = written[None, :] & ((keys[None, :] <= p[:, None]) | (drawn & (p[:, None] >= T)))  # [R, S]
        m = m[None].repeat(B, 1, 1)
        m[:, :, :T] &= emb_mask[:, None, :]
        m[:, torch.arange(len(pos)), p] = True
        fc = gpt.freqs_cis[p]
        R = len(pos)
        for li, layer in enumerate(layers):
            att = layer.attention
            x = layer.attention_norm(h)
            kvd = att.n_kv_head * att.head_dim
            q, k, v = att.wqkv(x).split([att.n_head * att.head_dim, kvd, kvd], dim=-1)
            q = apply_rotary_emb(q.view(B, R, att.n_head, att.head_dim), fc).transpose(1, 2)
            k = apply_rotary_emb(k.view(B, R, att.n_kv_head, att.head_dim), fc).transpose(1, 2)
            v = v.view(B, R, att.n_kv_head, att.head_dim).transpose(1, 2)
            K[li][:, :, p] = k
            V[li][:, :, p] = v
            o = F.scaled_dot_product_attention(q, K[li], V[li], attn_mask=m[:, None])
            h = h + att.wo(o.transpose(1, 2).reshape(B, R, -1))
            h = h + layer.feed_forward(layer.ffn_norm(h))
        logits = gpt.output(gpt.norm(h)).float()
        for i, o in enumerate(outs):
            if o is not None:
                out[:, o] = logits[:, i]
                if pick is not None:
                    tokens[:, o] = pick(logits[:, i])
    return out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    args = GPTArgs(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=16, block_size=36, num_classes=1,
                   class_dropout_prob=0.0, cls_token_num=4, caption_dim=8)
    gpt = Transformer(args).eval()
    for prm in gpt.parameters():  # the output layer starts at zero; random weights make every logit differ
        torch.nn.init.normal_(prm, std=0.3)
    B = 3
    caption = torch.randn(B, 4, 8)
    emb_mask = torch.tensor([[False, True, True, True], [True, True, True, True], [False, False, True, True]])
    tokens = torch.randint(0, 16, (B, 36))
    return gpt, caption, emb_mask, tokens


@pytest.mark.parametrize("drawn", [False, True])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 6])
def test_one_pass_training_matches_the_cached_zipar_decode(tiny, s, drawn):
    gpt, caption, emb_mask, tokens = tiny
    H = W = 6
    with torch.no_grad():
        cond = gpt.cls_embedding(caption, train=False)[:, :gpt.cls_token_num]
        want = cached_decode(gpt, cond, emb_mask, tokens, H, W, s, drawn)
        inputs, visible, positions = nextset.batch(tokens, [s] * len(tokens), H, W, gpt.cls_token_num, drawn)
        got, loss = gpt(inputs, caption, emb_mask, targets=tokens, visible=visible, positions=positions)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
    assert torch.isclose(loss, F.cross_entropy(want.reshape(-1, 16), tokens.reshape(-1)), atol=1e-5)


def test_raster_window_is_the_plain_forward_and_windows_differ(tiny):
    gpt, caption, emb_mask, tokens = tiny
    with torch.no_grad():
        plain, _ = gpt(tokens[:, :-1], caption, emb_mask, targets=tokens)
        mixed = [6, 2, 6]  # one batch may mix windows: every sample has its own pattern
        inputs, visible, positions = nextset.batch(tokens, mixed, 6, 6, gpt.cls_token_num)
        got, _ = gpt(inputs, caption, emb_mask, targets=tokens, visible=visible, positions=positions)
        want2 = cached_decode(gpt, gpt.cls_embedding(caption, train=False)[:, :4], emb_mask, tokens, 6, 6, 2)
    assert torch.allclose(got[[0, 2]], plain[[0, 2]], atol=2e-5)
    assert torch.allclose(got[1], want2[1], atol=2e-5)
    # The windowed context really is different: a test that could not fail would not show it.
    assert (got[1] - plain[1]).abs().max() > 1e-2


def test_ideal_steps_match_the_swift_step_formula():
    # Cell (r, c) at step r*s + c; (H-1)*s + W passes (Schedule.swift, ideal policy).
    for H, W, s in [(6, 6, 2), (5, 7, 3), (4, 4, 4), (16, 16, 8)]:
        steps = ideal_steps(H, W, s)
        assert len(steps) == (H - 1) * s + W
        for t, inputs in enumerate(steps):
            for _, _, o in inputs:
                if o is not None:
                    assert t == (o // W) * s + o % W


def test_drawn_attention_sees_the_lower_rows_and_changes_only_zipar(tiny):
    gpt, caption, emb_mask, tokens = tiny
    cond = gpt.cls_embedding(caption, train=False)[:, :4]
    with torch.no_grad():
        slot = cached_decode(gpt, cond, emb_mask, tokens, 6, 6, 2)
        drawn = cached_decode(gpt, cond, emb_mask, tokens, 6, 6, 2, drawn=True)
        raster = cached_decode(gpt, cond, emb_mask, tokens, 6, 6, 6, drawn=True)
        plain, _ = gpt(tokens[:, :-1], caption, emb_mask, targets=tokens)
    assert torch.allclose(raster, plain, atol=2e-5)
    # Row 0 is sampled before row 1 starts (window 2: cells (0, 0), (0, 1)): nothing below to see yet.
    assert torch.allclose(drawn[:, :2], slot[:, :2], atol=2e-5)
    assert (drawn - slot).abs().max() > 1e-2
    vis, _ = nextset.layout(6, 6, 2, True)
    # The query predicting (0, 5) sits at slot 4, fed at step 5: it sees (1, 0), fed at step 3 at slot 6.
    assert vis[4, 6] and not nextset.layout(6, 6, 2, False)[0][4, 6]


# ---------------------------------------------------------------------------------------------
# The Swift engine's drawn attention against this reference: greedy tokens of the shared LlamaGen
# t2i fixture model, decoded here with ideal_steps and the drawn mask, are stored in
# Tests/fixtures/drawn_greedy.json, which ZipARGenerationTests replays through the
# Swift Generator. This test recomputes them and fails when the file is stale
# (ZIPAR_WRITE_FIXTURE=1 rewrites it).

ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURE = os.path.join(ROOT, "Tests", "fixtures", "drawn_greedy.json")


def greedy_decode(gpt, caption, emb_mask, H, W, s, drawn, cfg_scale):
    """Greedy tokens [N] of one caption ([1, T, caption_dim]), batch = (cond, uncond) when cfg_scale > 1."""
    T = gpt.cls_token_num
    cond, mask = gpt.cls_embedding(caption, train=False)[:, :T], emb_mask
    if cfg_scale > 1:
        uncond = gpt.cls_embedding(caption, train=False, force_drop_ids=torch.ones(1, dtype=torch.bool))[:, :T]
        cond, mask = torch.cat([cond, uncond]), torch.cat([emb_mask, emb_mask])
    tokens = torch.full((cond.shape[0], H * W), -1, dtype=torch.long)

    def pick(logits):  # LlamaGen's guidance: uncond + scale * (cond - uncond)
        guided = logits[0] if len(logits) == 1 else logits[1] + cfg_scale * (logits[0] - logits[1])
        return int(guided.argmax())

    cached_decode(gpt, cond, mask, tokens, H, W, s, drawn, pick)
    return tokens[0].tolist()


@needs_fixtures
def test_swift_drawn_fixture_is_current():
    import json
    gpt, io = load_t2i_fixture()
    caption, emb_mask = io["input.caption_embs"], io["input.emb_mask"] > 0.5
    with torch.no_grad():
        # The reference decode reproduces the official greedy raster tokens: the loader and loop are right.
        raster = greedy_decode(gpt, caption, emb_mask, 8, 8, 8, False, 7.5)
        assert raster == io["out.greedy_tokens_cfg7.5"][0].tolist()
        runs = []
        for s in (2, 3, 5):
            for cfg_scale in (1.0, 7.5):
                zipar = greedy_decode(gpt, caption, emb_mask, 8, 8, s, False, cfg_scale)
                drawn = greedy_decode(gpt, caption, emb_mask, 8, 8, s, True, cfg_scale)
                runs.append({"window": s, "cfg_scale": cfg_scale, "zipar": zipar, "drawn": drawn})
    # The fixture must tell the masks apart, or the Swift test could not fail on the wrong one.
    assert any(r["zipar"] != r["drawn"] for r in runs)
    want = {"model": "shared/fixtures/llamagen/gpt_t2i_tiny", "greedy": True, "runs": runs}
    if os.environ.get("ZIPAR_WRITE_FIXTURE") == "1":
        os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
        with open(FIXTURE, "w") as f:
            json.dump(want, f)
            f.write("\n")
    with open(FIXTURE) as f:
        assert json.load(f) == want, "drawn_greedy.json is stale: rerun with ZIPAR_WRITE_FIXTURE=1"
