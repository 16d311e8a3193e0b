#!/usr/bin/env python3
"""Trains zipar's default text-to-image model (models/default) end to end on CPU.

    python3 tools/train/train.py                     # the shipped model, all phases one after another
    python3 tools/train/train.py --tiny -o /tmp/m    # a few steps of a tiny config, seconds (CI)
    python3 tools/train/train.py --resume            # continue from the checkpoints in --work

Phases (each one checkpoints into --work and is skipped by --resume once done):
  1. codebook: the tokenizer (patches.py): the K most frequent 4x4 palette patterns of seeded scenes;
               a patch is encoded as its nearest pattern.
  2. tokens:   render a fixed, seeded dataset of scenes and encode them into token grids.
  3. dec:      LlamaGen VQ decoder (codebook vectors, post_quant_conv, decoder) trained from scratch to
               turn the codes of fresh scenes back into their pixels (L1 + MSE, objects weighted 5x).
  4. gpt:      the LlamaGen t2i GPT on (prompt, tokens): cross-entropy, AdamW, caption dropout to
               uncond_embedding, EMA weights; the word embedding table (text.safetensors) is trained
               with it. The model is exported every --export-every steps, so an early model exists.
  5. tune:     sample prompts with a few sampling settings, read the images back with
               shapes.analyze, and store the best settings in config.json "sampling".
dec and gpt only share the tokens, so on two cores they run best side by side, one thread each:

    python3 tools/train/train.py --only codebook,tokens
    python3 tools/train/train.py --resume --only dec &  python3 tools/train/train.py --resume --only gpt
    python3 tools/train/train.py --resume             # both done: export and tune

Export writes config.json, gpt.safetensors, vq.safetensors, text_vocab.txt, text.safetensors and
grammar.json into a temp directory next to -o, then renames it into place.
Losses go to stdout and to WORK/train.log.
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tools/, for convert_llamagen's safetensors writer

import nextset  # noqa: E402
import patches  # noqa: E402
import shapes  # noqa: E402
from model import GPTArgs, Transformer, VQArgs, VQModel  # noqa: E402
from convert_llamagen import install_outdir, write_safetensors  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))

# ---------------------------------------------------------------------------------------------
# Configurations

FULL = {
    "name": "zipar-shapes-64",
    "image_size": 64,
    "vq": VQArgs(codebook_size=2048, codebook_embed_dim=16, decoder_ch_mult=[1, 1, 1], z_channels=64, ch=64,
                 num_res_blocks=0),
    # 6 layers since v11 (v1-v10 had 4; v11 is v10 deepened with --gpt-layers 6), so that
    # --init-from models/default works without the flag.
    "gpt": GPTArgs(dim=192, n_layer=6, n_head=6, multiple_of=32, vocab_size=2048, block_size=256, num_classes=1,
                   class_dropout_prob=0.1, cls_token_num=shapes.MAX_WORDS, caption_dim=64),
    "codebook_scenes": 8000,
    "dataset": 40000,
    # GPT scenes (training and held-out, not the codebook's) begin the left object of a side-by-side
    # pair first in raster order (shapes.sample_scene); v15 on, see models/README.
    "left_first": True,
    # ZipAR-visibility training (nextset.py), v16 on: this share of the GPT's samples is trained on the
    # context a ZipAR decode with one of these windows gives (the rest on raster order), so that
    # next-set decoding no longer meets a context the model never saw. See models/README.
    "zipar_share": 0.5, "zipar_windows": [3, 4, 5, 6, 7, 8],
    # Which mask those samples train: "zipar" (ZipAR's, causal in slot order) or "drawn" (a query sees
    # every token drawn so far, the lower rows' too; nextset.py). The model directory records it as
    # config.json "attention", and zipar decodes with it.
    "zipar_attention": "zipar",
    "heldout": 512,  # fresh scenes for the held-out loss, logged at each export
    "dec_steps": 6000, "dec_batch": 16, "dec_lr": 2e-3, "dec_minutes": 60,
    "gpt_steps": 3000, "gpt_batch": 32, "gpt_lr": 1e-3, "gpt_warmup": 100, "gpt_minutes": 60,
    "export_every": 200, "ckpt_every": 50, "log_every": 25,
    "tune_prompts": 64,
}

TINY = {
    "name": "zipar-shapes-tiny",
    "image_size": 32,
    "vq": VQArgs(codebook_size=32, codebook_embed_dim=8, decoder_ch_mult=[1, 1, 1], z_channels=32, ch=32,
                 num_res_blocks=0),
    "gpt": GPTArgs(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=32, block_size=64, num_classes=1,
                   class_dropout_prob=0.1, cls_token_num=shapes.MAX_WORDS, caption_dim=16),
    "codebook_scenes": 8,
    "dataset": 32,
    "left_first": True,
    "zipar_share": 0.5, "zipar_windows": [2, 3], "zipar_attention": "zipar",
    "heldout": 8,
    "dec_steps": 2, "dec_batch": 4, "dec_lr": 2e-3,
    "gpt_steps": 4, "gpt_batch": 4, "gpt_lr": 1e-3, "gpt_warmup": 2,
    "export_every": 2, "ckpt_every": 2, "log_every": 1,
    "tune_prompts": 2,
}

# Sampling of the exports made before the tune phase has run (see export_fn in main).
DEFAULT_SAMPLING = {"cfg_scale": 1.5, "temperature": 1.0, "top_k": 0, "top_p": 0.9}

# Sampling settings tried by the tune phase (cfg_scale, temperature, top_k, top_p).
# Temperatures below 1 were tried on v3 with `zipar eval --n 100` and empty the canvas (objects are the
# unlikely tokens of every row; cfg 1.5: temperature 0.7 -> 5%, 0.5 with top-p 0.9 -> 0%, 1.0 with top-p
# 0.95 -> 16%; greedy draws backgrounds only), so only guidance and nucleus vary.
TUNE_GRID = [(1.0, 1.0, 0, 1.0), (1.5, 1.0, 0, 1.0), (2.0, 1.0, 0, 1.0), (1.5, 1.0, 0, 0.95), (2.0, 1.0, 0, 0.95),
             (1.5, 1.0, 0, 0.9), (3.0, 1.0, 0, 1.0)]
TINY_TUNE_GRID = [(1.0, 1.0, 0, 1.0), (3.0, 1.0, 0, 1.0)]


class Logger:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg):
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        self.f.write(line + "\n")


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cosine_lr(step, progress, base, warmup, floor=0.1):
    """Linear warmup over `warmup` steps, then cosine decay to floor*base as progress goes 0 -> 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Budget:
    """Progress of a phase: the larger of (steps done / steps) and (time used / minutes, when a
    time budget is given). On a busy, shared machine a phase with a time budget still ends on
    time with its learning rate fully decayed. `used` carries the time of earlier runs (resume)."""

    def __init__(self, total, minutes=None, used=0.0, start=0):
        self.total, self.seconds, self.used, self.t = total, (minutes * 60 if minutes else None), used, time.time()
        self.start = start  # the step this schedule began at (a warm start, see init_from_model)

    def elapsed(self):
        return self.used + time.time() - self.t

    def progress(self, step):
        p = (step - self.start) / max(1, self.total)
        if self.seconds:
            p = max(p, self.elapsed() / self.seconds)
        return min(1.0, p)


def to_pixels(x):
    """Decoder output -> uint8 HWC the way zipar converts it: clamp(127.5x + 128), truncated."""
    return (127.5 * x + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_pixels(imgs):
    """uint8 [B, H, W, 3] -> float [B, 3, H, W]; value p maps to the middle of its output bin."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().sub(127.5).div(127.5)


# ---------------------------------------------------------------------------------------------
# Text side

VOCAB = shapes.vocabulary()
# text.safetensors tables beside embedding.weight, each optional (models before them load without).
TEXT_OPTIONAL = ("position_embedding.weight", "context_prev.weight", "context_next.weight")
WORD_ID = {w: i for i, w in enumerate(VOCAB)}


def encode_prompt(prompt, length):
    """Word ids left-padded to `length` with 0, and the mask (True on word positions)."""
    ids = [WORD_ID[w] for w in prompt.lower().split()]
    assert len(ids) <= length, prompt
    pad = length - len(ids)
    return [0] * pad + ids, [False] * pad + [True] * len(ids)


class TextEmbedding(torch.nn.Module):
    """text.safetensors: embedding.weight [vocab, caption_dim] and position_embedding.weight
    [cls_token_num, caption_dim]; the feature of the i-th word of a prompt (counted from its first
    word, whatever the padding) is embedding[word] + position_embedding[i]; pad rows are zero.

    Why positions: LlamaGen's 2D RoPE gives the condition prefix all-zero rotations, so the caption
    rows' keys are zero and every image token averages them with equal weight. Without a position
    term that average is a bag of words: "a red circle left of a blue square" and "a blue circle left
    of a red square" would look the same to the GPT. The position table (zero-initialised, so a model
    trained without it continues unchanged) binds each colour and shape word to its place.

    Context (context_prev.weight, context_next.weight [caption_dim, caption_dim], optional): each
    word row then adds W_prev @ row(i-1) + W_next @ row(i+1) (pad rows are zero). Why: the image
    tokens see only the sum over caption rows of a per-row nonlinear feature, so with positions alone
    "a green circle left of a orange diamond" must be bound through where each word sits, and the v6
    model mostly drew the two colours and the two shapes crosswise (a green diamond and an orange
    circle). With its neighbours in the row, "circle" carries "green": the pair is one feature.
    Zero-initialised, so a model trained without it continues unchanged."""

    def __init__(self, vocab, dim, length):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        torch.nn.init.normal_(self.embedding.weight, std=dim ** -0.5)
        self.position_embedding = torch.nn.Embedding(length, dim)
        torch.nn.init.zeros_(self.position_embedding.weight)
        self.context_prev = torch.nn.Linear(dim, dim, bias=False)
        self.context_next = torch.nn.Linear(dim, dim, bias=False)
        torch.nn.init.zeros_(self.context_prev.weight)
        torch.nn.init.zeros_(self.context_next.weight)

    def forward(self, ids, mask):
        word_index = (torch.cumsum(mask.long(), dim=-1) - 1).clamp(min=0)
        m = mask[..., None].to(self.embedding.weight.dtype)
        rows = (self.embedding(ids) + self.position_embedding(word_index)) * m
        prev = torch.nn.functional.pad(rows[:, :-1], (0, 0, 1, 0))  # row i-1 at i (zero before the first)
        nxt = torch.nn.functional.pad(rows[:, 1:], (0, 0, 0, 1))    # row i+1 at i (zero after the last)
        return (rows + self.context_prev(prev) + self.context_next(nxt)) * m

    @staticmethod
    def from_tables(tables, length):
        """A TextEmbedding holding the tables of a text.safetensors (a zero position table if it has none)."""
        emb = tables["embedding.weight"]
        t = TextEmbedding(emb.shape[0], emb.shape[1], length)
        with torch.no_grad():
            t.embedding.weight.copy_(emb)
            for name in TEXT_OPTIONAL:
                if name in tables:
                    t.get_parameter(name).copy_(tables[name])
        return t


# ---------------------------------------------------------------------------------------------
# Phase 1: codebook (the tokenizer, see patches.py)

def batch_images(rng, n, size, left_first=False):
    scenes = [shapes.sample_scene(rng, size, left_first=left_first) for _ in range(n)]
    return np.stack([shapes.render(s) for s in scenes]), scenes


def build_tokenizer(cfg, work, log, resume, seed):
    path = os.path.join(work, "codebook.npz")
    if resume and os.path.exists(path):
        d = np.load(path)
        log(f"codebook: {len(d['patterns'])} patterns (resumed)")
        return patches.Tokenizer(d["patterns"]), {k: float(d[k]) for k in ("coverage", "px_err", "rec_match")}
    t0 = time.time()
    K, size = cfg["vq"].codebook_size, cfg["image_size"]
    pats, coverage = patches.build_codebook(np.random.default_rng(seed), cfg["codebook_scenes"], K, size)
    tok = patches.Tokenizer(pats)
    # Held-out: how much the tokenizer alone loses (codes painted back exactly, no decoder).
    n_ev = 200 if cfg["codebook_scenes"] >= 1000 else 4
    imgs, scenes = batch_images(np.random.default_rng(seed + 999), n_ev, size)
    rec = tok.decode(tok.encode(imgs), size, size)
    px_err = float((rec != imgs).any(-1).mean())
    match = float(np.mean([shapes.prompt_matches(r, s["prompt"]) for r, s in zip(rec, scenes)]))
    np.savez(path + ".tmp.npz", patterns=pats, coverage=coverage, px_err=px_err, rec_match=match)
    os.replace(path + ".tmp.npz", path)
    log(f"codebook: {K} patterns from {cfg['codebook_scenes']} scenes in {time.time() - t0:.0f}s; they cover "
        f"{coverage * 100:.2f}% of the sampled patches exactly; held-out: {px_err * 100:.2f}% of pixels wrong, "
        f"{match * 100:.1f}% of dictionary reconstructions match their prompt")
    return tok, {"coverage": coverage, "px_err": px_err, "rec_match": match}


# ---------------------------------------------------------------------------------------------
# Phase 2: tokens

def make_tokens(cfg, tok, work, log, resume, seed):
    """The dataset: cfg["dataset"] seeded scenes, one random stream, encoded into token grids. With
    `resume`, an existing tokens.npz is reused, and a larger --dataset extends it: the stream is
    replayed past the scenes it holds (sampling only, no rendering), so an extended dataset is the one
    a fresh run of that size makes."""
    path = os.path.join(work, "tokens.npz")
    n, size, T = cfg["dataset"], cfg["image_size"], cfg["gpt"].cls_token_num
    old = None
    if resume and os.path.exists(path):
        d = np.load(path)
        made_left_first = bool(d["left_first"]) if "left_first" in d else False
        if made_left_first != cfg["left_first"]:
            raise SystemExit(f"{path} was made with left_first={made_left_first}, this config has "
                             f"{cfg['left_first']}: delete it or use another --work")
        old = d["tokens"], d["ids"], d["mask"]
        if len(old[0]) >= n:
            log(f"tokens: {len(old[0])} sequences (resumed)" + (f", training on the first {n}" if len(old[0]) > n else ""))
            return tuple(a[:n] for a in old)
    rng = np.random.default_rng(seed + 1)
    have = 0 if old is None else len(old[0])
    for _ in range(have):
        shapes.sample_scene(rng, size, left_first=cfg["left_first"])  # the scenes tokens.npz holds already
    toks, ids, masks = [], [], []
    t0 = time.time()
    chunk = 256
    for start in range(have, n, chunk):
        imgs, scenes = batch_images(rng, min(chunk, n - start), size, cfg["left_first"])
        toks.append(tok.encode(imgs).astype(np.int16))
        for s in scenes:
            i, m = encode_prompt(s["prompt"], T)
            ids.append(i)
            masks.append(m)
        if ((start - have) // chunk) % 20 == 0:
            log(f"tokens: {start + len(scenes)}/{n} ({time.time() - t0:.0f}s)")
    tokens = np.concatenate(([old[0]] if old else []) + toks)
    ids = np.concatenate(([old[1]] if old else []) + [np.array(ids, np.int16)])
    masks = np.concatenate(([old[2]] if old else []) + [np.array(masks, bool)])
    np.savez(path + ".tmp.npz", tokens=tokens, ids=ids, mask=masks, left_first=cfg["left_first"])
    os.replace(path + ".tmp.npz", path)
    log(f"tokens: {n} sequences of {tokens.shape[1]} tokens ({n - have} new) in {time.time() - t0:.0f}s; "
        f"{len(np.unique(tokens))} distinct codes")
    return tokens, ids, masks


# ---------------------------------------------------------------------------------------------
# Phase 3: decoder

def new_decoder(cfg, tok, seed):
    """LlamaGen VQModel whose codebook starts from the patterns (patches.Tokenizer.embedding_init);
    only quantize.embedding, post_quant_conv and decoder are trained and exported."""
    torch.manual_seed(seed)
    vq = VQModel(cfg["vq"])
    with torch.no_grad():
        vq.quantize.embedding.weight.copy_(torch.from_numpy(tok.embedding_init(cfg["vq"].codebook_embed_dim, seed)))
    return vq


def load_decoder(cfg, tok, work, seed):
    """(decoder, its checkpoint dict or {}) from the latest dec.pt; read once, because the dec phase
    may still be running in another process and rewrite it."""
    vq = new_decoder(cfg, tok, seed)
    path = os.path.join(work, "dec.pt")
    ck = torch.load(path, weights_only=False) if os.path.exists(path) else {}
    if ck:
        vq.load_state_dict(ck["model"])
    return vq.eval(), ck


def decoder_params(vq):
    return list(vq.quantize.parameters()) + list(vq.post_quant_conv.parameters()) + list(vq.decoder.parameters())


def decoder_heldout(vq, tok, cfg, seed, log, what):
    """Decoded codes of held-out scenes: pixel error and how many still match their prompt."""
    n_ev = 64 if cfg["dec_steps"] >= 100 else 4
    size = cfg["image_size"]
    imgs, scenes = batch_images(np.random.default_rng(seed + 999), n_ev, size)
    codes = torch.from_numpy(tok.encode(imgs))
    with torch.no_grad():
        px = to_pixels(vq.decode_code(codes, size // patches.P))
    err = np.abs(px.astype(np.int16) - imgs.astype(np.int16))
    match = float(np.mean([shapes.prompt_matches(p, s["prompt"]) for p, s in zip(px, scenes)]))
    log(f"{what} held-out: mean |px err| {err.mean():.2f}, pixels off by >24: {(err.max(-1) > 24).mean() * 100:.2f}%, "
        f"decoded images matching their prompt {match * 100:.1f}%")
    return {"px_err": round(float(err.mean()), 3), "rec_match": round(match, 3)}, imgs, px


def object_weight(imgs):
    """[B, 1, H, W] float: 1 on pixels that differ from the image's corner (background) colour,
    grown by one pixel so that the edges count too."""
    m = torch.from_numpy((imgs != imgs[:, :1, :1]).any(-1)).float()[:, None]
    return F.max_pool2d(m, 3, stride=1, padding=1)


def train_decoder(cfg, tok, work, log, resume, seed):
    """codes of fresh scenes -> LlamaGen decoder -> the scene's pixels. The codes are fixed
    (patches.py), so this is plain supervised learning and can run next to the GPT phase."""
    path = os.path.join(work, "dec.pt")
    vq = new_decoder(cfg, tok, seed)
    params = decoder_params(vq)
    opt = torch.optim.Adam(params, lr=cfg["dec_lr"], betas=(0.9, 0.99))
    step, used = 0, 0.0
    rng = np.random.default_rng(seed + 3)
    total = cfg["dec_steps"]
    if resume and os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        vq.load_state_dict(ck["model"])
        step, used = ck["step"], ck.get("elapsed", 0.0)
        rng.bit_generator.state = ck["rng"]
        if ck.get("done") and Budget(total, cfg.get("dec_minutes"), used).progress(step) >= 1:
            log(f"dec: done at step {step} (resumed)")
            return vq.eval(), ck.get("stats", {})
        opt.load_state_dict(ck["opt"])
        log(f"dec: resuming at step {step}")
    t0, s0 = time.time(), step
    budget = Budget(total, cfg.get("dec_minutes"), used)
    size = cfg["image_size"]
    vq.train()

    def checkpoint(done, stats=None):
        save_atomic({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng.bit_generator.state,
                     "done": done, "stats": stats or {}, "elapsed": budget.elapsed()}, path)

    while budget.progress(step) < 1:
        lr = cosine_lr(step, budget.progress(step), cfg["dec_lr"], max(1, total // 50), floor=0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        imgs, _ = batch_images(rng, cfg["dec_batch"], size)
        x = from_pixels(imgs)
        rec = vq.decode_code(torch.from_numpy(tok.encode(imgs)), size // patches.P)
        # Objects and their edges weigh 5x: they are a small part of each image but all of the prompt.
        w = 1 + 4 * object_weight(imgs)
        mse = (w * (rec - x) ** 2).mean() / w.mean()
        l1 = (w * (rec - x).abs()).mean() / w.mean()
        loss = mse + 0.5 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0 or step == total:
            px_err = np.abs(to_pixels(rec.detach()).astype(np.int16) - imgs.astype(np.int16)).mean()
            log(f"dec step {step}/{total} mse {mse.item():.5f} l1 {l1.item():.4f} px_err {px_err:.2f} "
                f"lr {lr:.2e} {(time.time() - t0) / max(1, step - s0):.2f}s/step")
        if step % cfg["ckpt_every"] == 0:
            checkpoint(False)
    vq.eval()
    log(f"dec: {step} steps in {budget.elapsed() / 60:.1f} min")
    stats, imgs, px = decoder_heldout(vq, tok, cfg, seed, log, "dec")
    stats["steps"] = step
    checkpoint(True, stats)
    shapes.write_png(os.path.join(work, "dec_recon.png"), shapes.contact_sheet(list(imgs[:16]) + list(px[:16])))
    return vq, stats


# ---------------------------------------------------------------------------------------------
# Phase 4: GPT

class EMA:
    def __init__(self, modules, decay):
        self.decay = decay
        self.modules = modules
        self.shadow = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]

    def update(self, step):
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, sh in zip(self.modules, self.shadow):
                for k, v in m.state_dict().items():
                    if v.dtype.is_floating_point:
                        sh[k].mul_(d).add_(v.detach(), alpha=1 - d)
                    else:
                        sh[k].copy_(v)


def param_groups(modules, wd):
    decay, no_decay = [], []
    for m in modules:
        for n, p in m.named_parameters():
            if n.startswith("position_embedding") or n.startswith("context_"):
                continue  # their own groups (see train_gpt)
            (decay if p.dim() >= 2 and "embedding" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def gpt_optimizer(gpt, text, lr):
    """AdamW and the two groups added after the others: the text position table, then the context
    weights. Checkpoints made before each existed hold fewer groups and load into the optimizer
    before the later groups are added (see train_gpt)."""
    opt = torch.optim.AdamW(param_groups([gpt, text], 0.05), lr=lr, betas=(0.9, 0.95))
    position_group = {"params": [text.position_embedding.weight], "weight_decay": 0.0}
    context_group = {"params": [text.context_prev.weight, text.context_next.weight], "weight_decay": 0.0}
    return opt, position_group, context_group


def heldout_tokens(cfg, tok, seed):
    """Scenes from their own stream (seed + 9), never in the training set: the held-out loss shows when
    the GPT starts to learn the training scenes instead of the grammar (v9: 0.068 on training scenes,
    0.084 on fresh ones, after 18 passes over 40000 scenes)."""
    imgs, scenes = batch_images(np.random.default_rng(seed + 9), cfg["heldout"], cfg["image_size"], cfg["left_first"])
    enc = [encode_prompt(s["prompt"], cfg["gpt"].cls_token_num) for s in scenes]
    return (tok.encode(imgs).astype(np.int16), np.array([e[0] for e in enc], np.int16),
            np.array([e[1] for e in enc], bool))


def windowed(gpt, tokens, feats, m, windows, drawn=False):
    """Loss of a batch whose sample i is decoded with window windows[i] (the grid width = raster);
    `drawn`: with the drawn attention (nextset.py)."""
    g = gpt.grid
    inputs, visible, positions = nextset.batch(tokens, windows, g, g, gpt.cls_token_num, drawn)
    return gpt(inputs, feats, m, targets=tokens, visible=visible, positions=positions)[1]


def heldout_loss(cfg, gpt_sd, text_sd, heldout, batch=64, window=None):
    """Mean cross-entropy of the (EMA) weights on the held-out scenes, captions never dropped;
    with `window`, of the ZipAR decode with that window (nextset.py), else of raster order."""
    gpt = Transformer(cfg["gpt"])
    gpt.load_state_dict(gpt_sd)
    text = TextEmbedding(len(VOCAB), cfg["gpt"].caption_dim, cfg["gpt"].cls_token_num)
    text.load_state_dict(text_sd)
    gpt.eval()
    tokens, ids, masks = heldout
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(tokens), batch):
            tk = torch.from_numpy(tokens[s:s + batch].astype(np.int64))
            m = torch.from_numpy(masks[s:s + batch])
            feats = text(torch.from_numpy(ids[s:s + batch].astype(np.int64)), m)
            if window is None:
                _, loss = gpt(tk[:, :-1], feats, m, targets=tk)
            else:
                loss = windowed(gpt, tk, feats, m, [window] * len(tk), drawn=cfg["zipar_attention"] == "drawn")
            total += loss.item() * len(tk)
    return total / len(tokens)


def train_gpt(cfg, data, work, out, log, resume, seed, export_fn, heldout):
    """Trains (or resumes) the GPT phase; returns the EMA weights and the info dict of the last export."""
    tokens, ids, masks = data
    path = os.path.join(work, "gpt.pt")
    ck = torch.load(path, weights_only=False) if resume and os.path.exists(path) else None
    if ck is not None:
        depth = sum(1 for k in ck["gpt"] if k.endswith(".attention.wo.weight"))
        if depth != cfg["gpt"].n_layer:  # a deepened model (--gpt-layers) resumed without the flag
            log(f"gpt: the checkpoint has {depth} layers; training goes on with {depth}")
            cfg["gpt"] = dataclasses.replace(cfg["gpt"], n_layer=depth)
    torch.manual_seed(seed)
    gpt = Transformer(cfg["gpt"])
    text = TextEmbedding(len(VOCAB), cfg["gpt"].caption_dim, cfg["gpt"].cls_token_num)
    opt, position_group, context_group = gpt_optimizer(gpt, text, cfg["gpt_lr"])
    fast = {id(text.position_embedding.weight), id(text.context_prev.weight)}
    ema = EMA([gpt, text], 0.999)
    step, used, start, base_lr = 0, 0.0, 0, cfg["gpt_lr"]
    rng = np.random.default_rng(seed + 2)
    if ck is not None:
        gpt.load_state_dict(ck["gpt"])
        old = "position_embedding.weight" not in ck["text"]
        no_context = "context_prev.weight" not in ck["text"]
        text.load_state_dict(ck["text"], strict=not (old or no_context))
        if old:
            opt.load_state_dict(ck["opt"])
            opt.add_param_group(position_group)
            ck["ema"][1]["position_embedding.weight"] = text.position_embedding.weight.detach().clone()
            log("gpt: the checkpoint has no text position table; it starts at zero")
        else:
            opt.add_param_group(position_group)
            if not no_context:
                opt.add_param_group(context_group)
            opt.load_state_dict(ck["opt"])
        if no_context:
            opt.add_param_group(context_group)
            for name in ("context_prev.weight", "context_next.weight"):
                ck["ema"][1][name] = text.get_parameter(name).detach().clone()
            log("gpt: the checkpoint has no text context weights; they start at zero")
        ema.shadow = ck["ema"]
        step, used, start = ck["step"], ck.get("elapsed", 0.0), ck.get("start", 0)
        if not cfg.get("gpt_lr_given"):
            base_lr = ck.get("lr", base_lr)  # the schedule's peak, as --init-from or the first run set it
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"gpt: resuming at step {step}" + (f" (schedule from step {start})" if start else ""))
    else:
        opt.add_param_group(position_group)
        opt.add_param_group(context_group)
    total, bs = cfg["gpt_steps"], cfg["gpt_batch"]
    n = len(tokens)
    n_params = sum(p.numel() for p in gpt.parameters())
    log(f"gpt: {n_params / 1e6:.2f}M parameters, {total} steps of {bs}, dataset {n}; ZipAR-visibility share "
        f"{cfg['zipar_share']} with windows {cfg['zipar_windows']}, {cfg['zipar_attention']} attention")
    t0, s0, avg = time.time(), step, (ck["loss"] if ck is not None else None)
    budget = Budget(total, cfg.get("gpt_minutes"), used, start)
    gpt.train()

    def checkpoint():
        save_atomic({"gpt": gpt.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                     "ema": ema.shadow, "step": step, "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "loss": avg, "elapsed": budget.elapsed(), "start": start,
                     "lr": base_lr},
                    path)

    def export(step, avg):
        info = {"gpt_steps": step, "gpt_loss": round(avg, 4),
                "gpt_heldout_loss": round(heldout_loss(cfg, ema.shadow[0], ema.shadow[1], heldout), 4),
                "gpt_heldout_loss_window4": round(heldout_loss(cfg, ema.shadow[0], ema.shadow[1], heldout,
                                                               window=min(4, gpt.grid)), 4)}
        export_fn(ema.shadow[0], ema.shadow[1], info)
        log(f"gpt: exported EMA weights at step {step} to {out}; held-out loss {info['gpt_heldout_loss']:.4f} "
            f"(ZipAR window 4: {info['gpt_heldout_loss_window4']:.4f})")
        return info

    last_export, info = None, None
    while budget.progress(step) < 1:
        lr = cosine_lr(step - start, budget.progress(step), base_lr, cfg["gpt_warmup"])
        for g in opt.param_groups:
            # The position table and the context weights learn 10x faster: they start at zero, their
            # gradient is a small part of an average over every caption row, and at the base rate the
            # position table barely moved from zero in 750 steps.
            g["lr"] = lr * (10 if id(g["params"][0]) in fast else 1)
        b = rng.integers(0, n, bs)
        tok = torch.from_numpy(tokens[b].astype(np.int64))
        m = torch.from_numpy(masks[b])
        feats = text(torch.from_numpy(ids[b].astype(np.int64)), m)
        share = cfg.get("zipar_share", 0.0)
        if share > 0:
            zipar = rng.random(bs) < share
            windows = np.where(zipar, rng.choice(cfg["zipar_windows"], bs), gpt.grid)
            loss = windowed(gpt, tok, feats, m, windows, drawn=cfg["zipar_attention"] == "drawn")
        else:
            _, loss = gpt(tok[:, :-1], feats, m, targets=tok)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(gpt.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        step += 1
        ema.update(step)
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % cfg["log_every"] == 0 or step == start + total:
            log(f"gpt step {step}/{start + total} loss {loss.item():.4f} avg {avg:.4f} lr {lr:.2e} "
                f"{(time.time() - t0) / (step - s0):.2f}s/step")
        if step % cfg["ckpt_every"] == 0:
            checkpoint()
        if step % cfg["export_every"] == 0:
            info = export(step, avg)
            last_export = step
    checkpoint()
    log(f"gpt: {step} steps in {budget.elapsed() / 60:.1f} min, loss (running mean) {avg:.4f}")
    if last_export != step:
        info = export(step, avg)
    return ema.shadow, info


# ---------------------------------------------------------------------------------------------
# Export and loading

def export_dir(out, text_sd, write):
    """Builds a model directory in a temp dir next to `out` and renames it into place: the text
    table from `text_sd`, then `write(tmp)` writes the rest and returns config.json's dict. A
    failure removes the temp dir, so `out` is never half-written."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".zipar-export-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        emb = text_sd["embedding.weight"].detach().float().clone()
        emb[0] = 0  # the padding line is never looked up; zipar writes zero rows for padding
        tables = {"embedding.weight": emb.contiguous()}
        for name in TEXT_OPTIONAL:
            if name in text_sd:
                tables[name] = text_sd[name].detach().float().contiguous()
        write_safetensors(os.path.join(tmp, "text.safetensors"), tables)
        config = write(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
        install_outdir(tmp, out, force=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_model(out, cfg, vq, gpt_sd, text_sd, sampling, info):
    def write(tmp):
        sd = {k: v for k, v in gpt_sd.items() if k != "freqs_cis"}
        gpt_t = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
        vq_t = {k: v.detach().float().contiguous() for k, v in vq.export_state_dict().items()}
        write_safetensors(os.path.join(tmp, "gpt.safetensors"), gpt_t)
        write_safetensors(os.path.join(tmp, "vq.safetensors"), vq_t)
        with open(os.path.join(tmp, "text_vocab.txt"), "w") as f:
            f.write("\n".join(VOCAB) + "\n")
        with open(os.path.join(tmp, "grammar.json"), "w") as f:
            json.dump(shapes.grammar_json(), f, indent=1)
            f.write("\n")
        config = {"name": cfg["name"], "gpt": cfg["gpt"].config_json(), "vq": cfg["vq"].config_json(),
                  "sampling": sampling, "image_size": cfg["image_size"], "training": info}
        if cfg["zipar_attention"] != "zipar":  # the mask zipar decodes ZipAR schedules with (README)
            config["attention"] = cfg["zipar_attention"]
        return config

    export_dir(out, text_sd, write)


def read_safetensors(path):
    """A small reader for the files export_model writes: {name: float32 tensor}."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F32": np.float32, "F16": np.float16}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=dt[v["dtype"]]).reshape(v["shape"])
        out[k] = torch.from_numpy(arr.astype(np.float32))
    return out


def load_model_dir(path):
    """(config, gpt, vq, TextEmbedding) from an exported model directory."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    g = dict(config["gpt"])
    gpt = Transformer(GPTArgs(**g))
    sd = read_safetensors(os.path.join(path, "gpt.safetensors"))
    gpt.load_state_dict(sd, strict=True)
    v = dict(config["vq"])
    vq = VQModel(VQArgs(**v))
    vq.load_state_dict(read_safetensors(os.path.join(path, "vq.safetensors")), strict=True)
    text = TextEmbedding.from_tables(read_safetensors(os.path.join(path, "text.safetensors")), g["cls_token_num"])
    with open(os.path.join(path, "text_vocab.txt")) as f:
        vocab = f.read().split("\n")[: text.embedding.weight.shape[0]]
    assert vocab == VOCAB, "text_vocab.txt differs from the grammar's vocabulary"
    return config, gpt.eval(), vq.eval(), text.eval()


def grow_layers(gpt, args):
    """A deeper GPT (args.n_layer) that computes exactly what `gpt` computes: its blocks first, then
    copies of its last block with attention.wo and feed_forward.w2 zeroed, so each new block adds
    nothing to the residual stream until training moves those two matrices. Copies rather than fresh
    blocks: their norms and projections already read this residual stream."""
    grown = Transformer(args)
    sd = gpt.state_dict()
    old = gpt.args.n_layer
    for name, v in list(sd.items()):
        if name.startswith(f"layers.{old - 1}."):
            rest = name[len(f"layers.{old - 1}."):]
            for i in range(old, args.n_layer):
                zero = rest in ("attention.wo.weight", "feed_forward.w2.weight")
                sd[f"layers.{i}.{rest}"] = torch.zeros_like(v) if zero else v.clone()
    grown.load_state_dict(sd, strict=True)
    return grown.train(gpt.training)


def init_from_model(src, cfg, tok, work, log, seed):
    """Warm start: writes WORK/dec.pt and WORK/gpt.pt from an exported model directory (models/default),
    so that training goes on in a later session from the committed model, when the checkpoints of
    the run that made it are gone. The weights are the exported EMA weights (the GPT in F16); the
    optimizer starts empty, so its learning-rate schedule starts again (warmup, then decay) from the
    model's step. The codebook is rebuilt from the seed, and checked here: the model's decoder must
    still turn rebuilt codes into the scenes they encode. Returns the model's sampling settings."""
    try:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--init-from {src}: cannot read its config.json ({e})")
    for part in ("gpt", "vq"):
        theirs, ours = dict(config.get(part) or {}), cfg[part].config_json()
        if part == "gpt" and isinstance(theirs.get("n_layer"), int) and 0 < theirs["n_layer"] <= ours["n_layer"]:
            theirs["n_layer"] = ours["n_layer"]  # --gpt-layers may deepen the model (grow_layers)
        if theirs != ours:
            raise SystemExit(f"--init-from {src}: its {part} config {config.get(part)} is not this script's "
                             f"{cfg[part].config_json()}")
    if config.get("image_size") != cfg["image_size"]:
        raise SystemExit(f"--init-from {src}: image size {config.get('image_size')} is not {cfg['image_size']}")
    try:
        config, gpt, vq, text = load_model_dir(src)
    except (OSError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        raise SystemExit(f"--init-from {src}: cannot load the model ({e})")
    info = config.get("training", {})
    dec = new_decoder(cfg, tok, seed)
    dec.load_state_dict(vq.state_dict())
    dec.eval()
    stats, _, _ = decoder_heldout(dec, tok, cfg, seed, log, f"init-from {src}: decoder")
    expected = info.get("decoder", {}).get("rec_match")
    if expected is not None and stats["rec_match"] < expected - 0.1:
        raise SystemExit(f"--init-from {src}: its decoder matches {stats['rec_match'] * 100:.1f}% of held-out "
                         f"scenes with the rebuilt codebook, against {expected * 100:.1f}% when it was trained: "
                         "the codebook is not the one the model was trained with")
    dec_info = info.get("decoder", {})
    # Marked done with its whole time budget used, so that a later --resume does not train it on.
    save_atomic({"model": dec.state_dict(), "step": dec_info.get("steps", 0), "done": True,
                 "elapsed": float(cfg.get("dec_minutes") or 0) * 60,
                 "stats": {k: v for k, v in dec_info.items() if k not in ("steps", "done")},
                 "rng": np.random.default_rng(seed + 3).bit_generator.state}, os.path.join(work, "dec.pt"))
    # The training TextEmbedding has every table (from_tables fills the ones a file lacks with zeros).
    train_text = TextEmbedding(len(VOCAB), cfg["gpt"].caption_dim, cfg["gpt"].cls_token_num)
    train_text.load_state_dict(text.state_dict())
    if gpt.args.n_layer < cfg["gpt"].n_layer:
        log(f"init-from {src}: GPT grown from {gpt.args.n_layer} to {cfg['gpt'].n_layer} layers (identity at the start)")
        gpt = grow_layers(gpt, cfg["gpt"])
    opt, position_group, context_group = gpt_optimizer(gpt, train_text, cfg["gpt_lr"])
    opt.add_param_group(position_group)
    opt.add_param_group(context_group)
    step = int(info.get("gpt_steps", 0))
    clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
    torch.manual_seed(seed + step)
    save_atomic({"gpt": gpt.state_dict(), "text": train_text.state_dict(), "opt": opt.state_dict(),
                 "ema": [clone(gpt), clone(train_text)], "step": step, "start": step,
                 "rng": np.random.default_rng(seed + 2 + step).bit_generator.state,
                 "torch_rng": torch.get_rng_state(), "loss": info.get("gpt_loss"), "elapsed": 0.0,
                 "lr": cfg["gpt_lr"]},
                os.path.join(work, "gpt.pt"))
    log(f"init-from {src}: GPT at step {step} (loss {info.get('gpt_loss')}), decoder at step "
        f"{dec_info.get('steps', 0)}; optimizer state starts empty")
    return config.get("sampling", {})


# ---------------------------------------------------------------------------------------------
# Phase 5: sampling and tuning

def eval_prompts(rng, n):
    """Half single-object, half two-object prompts; backgrounds named half of the time."""
    out = []
    for i in range(n):
        spec = shapes.sample_prompt_spec(rng, p_two=1.0 if i % 2 else 0.0, p_background=0.5)
        out.append(shapes.make_prompt(spec["objects"], spec["relation"],
                                      spec["background"] if spec["named_background"] else None))
    return out


def sample_images(config, gpt, vq, text, prompts, setting, seed, batch=48):
    cfg_scale, temperature, top_k, top_p = setting
    T = config["gpt"]["cls_token_num"]
    grid = int(round(config["gpt"]["block_size"] ** 0.5))
    g = torch.Generator().manual_seed(seed)
    imgs = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        enc = [encode_prompt(p, T) for p in chunk]
        ids = torch.tensor([e[0] for e in enc])
        mask = torch.tensor([e[1] for e in enc])
        with torch.no_grad():
            feats = text(ids, mask)
            toks = gpt.generate(feats, mask, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=g)
            imgs.append(to_pixels(vq.decode_code(toks, grid)))
    return np.concatenate(imgs)


def tune_sampling(out, cfg, log, seed, grid):
    config, gpt, vq, text = load_model_dir(out)
    prompts = eval_prompts(np.random.default_rng(seed + 7), cfg["tune_prompts"])
    best, results = None, []
    for setting in grid:
        t0 = time.time()
        imgs = sample_images(config, gpt, vq, text, prompts, setting, seed)
        ok = np.array([shapes.prompt_matches(im, p) for im, p in zip(imgs, prompts)])
        single = ok[0::2].mean() if len(ok) > 1 else ok.mean()
        two = ok[1::2].mean() if len(ok) > 1 else ok.mean()
        results.append({"setting": setting, "acc": float(ok.mean()), "single": float(single), "two": float(two)})
        log(f"tune: cfg {setting[0]} temp {setting[1]} top_k {setting[2]} top_p {setting[3]}: "
            f"accuracy {ok.mean() * 100:.1f}% (single {single * 100:.1f}%, two {two * 100:.1f}%) "
            f"[{time.time() - t0:.0f}s]")
        if best is None or ok.mean() > best[1]:
            best = (setting, ok.mean(), imgs)
    setting, acc, imgs = best
    shapes.write_png(os.path.join(cfg["work"], "samples.png"), shapes.contact_sheet(list(imgs[:32])))
    sampling = {"cfg_scale": setting[0], "temperature": setting[1], "top_k": setting[2], "top_p": setting[3]}
    return sampling, results, acc


# ---------------------------------------------------------------------------------------------

PHASES = ("codebook", "tokens", "dec", "gpt", "tune")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default=os.path.join(REPO, "models", "default"), help="model directory to write")
    ap.add_argument("--work", help="checkpoints and log (default: /tmp/zipar-train, or a temp dir with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a handful of steps on a tiny config (seconds)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    ap.add_argument("--only", help=f"comma-separated phases to run ({','.join(PHASES)}); the codebook is always "
                                   "loaded or built. Checkpoints of other phases are kept.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpt-steps", type=int, help="GPT steps (after --init-from: steps of the new schedule)")
    ap.add_argument("--gpt-lr", type=float, help="GPT peak learning rate")
    ap.add_argument("--init-from", metavar="DIR",
                    help="warm start from an exported model directory (e.g. models/default) instead of the "
                         "checkpoints in --work: its GPT, text table and decoder, a fresh optimizer and schedule; "
                         "runs the gpt phase (and tune) only")
    ap.add_argument("--dec-steps", type=int, help="decoder training steps")
    ap.add_argument("--dataset", type=int, help="number of tokenised training scenes")
    ap.add_argument("--gpt-layers", type=int, help="GPT depth; with --init-from, a model with fewer layers is "
                    "deepened (new blocks start as the identity); with --resume, the checkpoint's depth")
    for ph in ("gpt", "dec"):
        ap.add_argument(f"--{ph}-minutes", type=float,
                        help=f"time budget of the {ph} phase: it stops at its steps or after this many minutes, "
                             "whichever comes first, with the learning-rate schedule following the larger fraction")
    ap.add_argument("--export-every", type=int, help="export the EMA model every N GPT steps")
    ap.add_argument("--no-tune", action="store_true", help="skip the sampling-settings search")
    ap.add_argument("--zipar-share", type=float,
                    help="share of the GPT's samples trained under ZipAR visibility, in [0, 1]")
    ap.add_argument("--zipar-windows",
                    help="comma-separated ZipAR windows drawn for those samples (repeat one to weight it), e.g. 3,4,4,5")
    ap.add_argument("--zipar-attention", choices=("zipar", "drawn"),
                    help="the mask of those samples: ZipAR's (causal in slot order) or drawn (every token drawn so "
                         "far, lower rows too); a drawn model is decoded with it (config.json \"attention\")")
    args = ap.parse_args(argv)
    phases = set(PHASES) if not args.only else set(args.only.split(","))
    if not phases <= set(PHASES):
        ap.error(f"--only takes phases from {', '.join(PHASES)}, got {args.only}")
    if args.init_from:
        if args.resume:
            ap.error("--init-from starts a new schedule from a model directory and --resume continues one in --work; "
                     "pick one")
        if args.only and "dec" in phases:
            ap.error("--init-from takes the decoder from the model directory; it does not train the dec phase")
        phases.discard("dec")
    if args.no_tune:
        phases.discard("tune")

    torch.set_num_threads(max(1, args.threads))
    cfg = dict(TINY if args.tiny else FULL)
    for k, a in (("gpt_steps", args.gpt_steps), ("dataset", args.dataset), ("dec_steps", args.dec_steps),
                 ("gpt_minutes", args.gpt_minutes), ("dec_minutes", args.dec_minutes), ("export_every", args.export_every),
                 ("gpt_lr", args.gpt_lr)):
        if a is not None:
            cfg[k] = a
    if args.zipar_share is not None:
        if not 0 <= args.zipar_share <= 1:
            ap.error(f"--zipar-share must be in [0, 1], got {args.zipar_share}")
        cfg["zipar_share"] = args.zipar_share
    if args.zipar_windows is not None:
        try:
            windows = [int(w) for w in args.zipar_windows.split(",")]
        except ValueError:
            ap.error(f"--zipar-windows takes comma-separated integers, got {args.zipar_windows!r}")
        grid = int(round(cfg["gpt"].block_size ** 0.5))
        if not windows or any(not 1 <= w < grid for w in windows):
            ap.error(f"--zipar-windows must be between 1 and the grid width - 1 ({grid - 1}), got {args.zipar_windows}")
        cfg["zipar_windows"] = windows
    if args.zipar_attention is not None:
        cfg["zipar_attention"] = args.zipar_attention
    elif args.init_from:
        # A model trained for the drawn attention goes on training for it unless told otherwise.
        try:
            with open(os.path.join(args.init_from, "config.json")) as f:
                cfg["zipar_attention"] = json.load(f).get("attention", "zipar")
        except (OSError, ValueError):
            pass  # init_from_model stops with a message about the unreadable config
        if cfg["zipar_attention"] not in ("zipar", "drawn"):
            ap.error(f"--init-from {args.init_from}: config.json \"attention\" must be zipar or drawn, "
                     f"got {cfg['zipar_attention']!r}")
    if args.gpt_layers is not None:
        if args.gpt_layers < 1:
            ap.error(f"--gpt-layers must be at least 1, got {args.gpt_layers}")
        cfg["gpt"] = dataclasses.replace(cfg["gpt"], n_layer=args.gpt_layers)
    work = args.work or (tempfile.mkdtemp(prefix="zipar-train-tiny-") if args.tiny else "/tmp/zipar-train")
    os.makedirs(work, exist_ok=True)
    cfg["work"] = work
    cfg["gpt_lr_given"] = args.gpt_lr is not None  # else --resume keeps the checkpoint's peak rate
    reuse = args.resume or bool(args.only) or bool(args.init_from)  # the codebook and tokens are seeded: reusable
    if not reuse:
        for f in ("codebook.npz", "tokens.npz", "gpt.pt", "dec.pt"):
            if os.path.exists(os.path.join(work, f)):
                os.remove(os.path.join(work, f))
    log = Logger(os.path.join(work, "train.log"))
    t_start = time.time()
    log(f"train.py {'--tiny ' if args.tiny else ''}threads {torch.get_num_threads()} work {work} out {args.out} "
        f"phases {','.join(p for p in PHASES if p in phases)}")
    log(f"vq {cfg['vq'].config_json()}")
    log(f"gpt {cfg['gpt'].config_json()}")

    tok, tok_stats = build_tokenizer(cfg, work, log, reuse, args.seed)
    data = None
    if phases & {"tokens", "gpt"}:
        data = make_tokens(cfg, tok, work, log, args.resume or bool(args.init_from) or "tokens" not in phases,
                           args.seed)
    info_base = {"image_size": cfg["image_size"], "dataset": cfg["dataset"], "gpt_batch": cfg["gpt_batch"],
                 "left_first": cfg["left_first"], "zipar_share": cfg["zipar_share"],
                 "zipar_windows": list(cfg["zipar_windows"]), "zipar_attention": cfg["zipar_attention"],
                 "dec_batch": cfg["dec_batch"], "tokenizer": {k: round(v, 4) for k, v in tok_stats.items()}}
    if "dec" in phases:
        _, dec_stats = train_decoder(cfg, tok, work, log, args.resume, args.seed)
    if "gpt" not in phases:
        return

    # Exports before the tune phase carry the --init-from model's sampling, else the setting every
    # shipped model uses (v5-v14; for v10 and v13 the tune preferred top-p 0.95 by 1 and 3 of its 64
    # prompts, and larger evals overruled it): LlamaGen's cfg 3.0 draws noise with these models.
    export_sampling = dict(DEFAULT_SAMPLING)

    def export_fn(gpt_sd, text_sd, info, sampling=None):
        # The decoder as of now: with --only gpt the dec phase may still be training next door.
        vq, dec = load_decoder(cfg, tok, work, args.seed)
        dec_info = {"steps": dec.get("step", 0), "done": bool(dec.get("done")), **dec.get("stats", {})}
        export_model(args.out, cfg, vq, gpt_sd, text_sd, sampling or export_sampling,
                     {**info_base, "decoder": dec_info, **info, "minutes": round((time.time() - t_start) / 60, 1)})

    # The --init-from model's sampling is kept in --work, so that a later --resume exports with it too.
    sampling_path = os.path.join(work, "sampling.json")
    if args.init_from:
        export_sampling.update(init_from_model(args.init_from, cfg, tok, work, log, args.seed))
        with open(sampling_path + ".tmp", "w") as f:
            json.dump(export_sampling, f)
        os.replace(sampling_path + ".tmp", sampling_path)
    elif args.resume and os.path.exists(sampling_path):
        with open(sampling_path) as f:
            export_sampling.update(json.load(f))
    elif os.path.exists(sampling_path):
        os.remove(sampling_path)  # a GPT trained from scratch (also --only gpt) has no source model
    heldout = heldout_tokens(cfg, tok, args.seed)
    # info: the final export's steps, loss and held-out loss
    shadow, info = train_gpt(cfg, data, work, args.out, log, args.resume or bool(args.init_from), args.seed,
                             export_fn, heldout)
    if "tune" in phases:
        grid = TINY_TUNE_GRID if args.tiny else TUNE_GRID
        sampling, results, acc = tune_sampling(args.out, cfg, log, args.seed, grid)
        info["tune"] = {"prompts": cfg["tune_prompts"], "accuracy": round(float(acc), 3),
                        "results": [{"cfg_scale": r["setting"][0], "temperature": r["setting"][1],
                                     "top_k": r["setting"][2], "top_p": r["setting"][3],
                                     "acc": round(r["acc"], 3), "single": round(r["single"], 3),
                                     "two": round(r["two"], 3)} for r in results]}
        export_fn(shadow[0], shadow[1], info, sampling)
        log(f"tune: best sampling {sampling}; exported to {args.out}")
    log(f"done in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
