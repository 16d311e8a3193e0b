#!/usr/bin/env python3
"""Trains zipar's default text-to-image model (models/default) end to end on CPU.

    python3 tools/train/train.py                     # the shipped model (about 75 min, 1 thread)
    python3 tools/train/train.py --tiny -o /tmp/m    # a few steps of a tiny config, seconds (CI)
    python3 tools/train/train.py --resume            # continue from the checkpoints in --work

Phases (each one checkpoints into --work and is skipped by --resume once done):
  1. vq:       LlamaGen VQ (encoder, L2-normalised codebook, decoder) on rendered scenes; MSE + L1
               reconstruction + codebook + commitment losses, dead codes restarted from the batch.
  2. tokens:   render a fixed, seeded dataset of scenes and encode them into token grids.
  3. decoder:  with the encoder and codebook frozen (the tokens stay valid), train the decoder
               further on the codes of fresh scenes, objects and edges weighted 5x.
  4. gpt:      the LlamaGen t2i GPT on (prompt, tokens): cross-entropy, AdamW, caption dropout to
               uncond_embedding, EMA weights; the word embedding table (text.safetensors) is trained
               with it. The model is exported every --export-every steps, so an early model exists.
  5. dec2:     more decoder fine-tuning on frozen codes (norm_out learning faster), re-export.
  6. tune:     sample prompts with a few sampling settings, read the images back with
               shapes.analyze, and store the best settings in config.json "sampling".
Export writes config.json, gpt.safetensors, vq.safetensors, text_vocab.txt, text.safetensors and
grammar.json into a temp directory next to -o, then renames it into place.
Losses go to stdout and to WORK/train.log.
"""

import argparse
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

import shapes  # noqa: E402
from model import GPTArgs, Transformer, VQArgs, VQModel  # noqa: E402
from convert_llamagen import install_outdir, write_safetensors  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))

# ---------------------------------------------------------------------------------------------
# Configurations

FULL = {
    "name": "zipar-shapes-64",
    "image_size": 64,
    "vq": VQArgs(codebook_size=256, codebook_embed_dim=8, decoder_ch_mult=[1, 1, 2], z_channels=32, ch=32,
                 num_res_blocks=0),
    "gpt": GPTArgs(dim=192, n_layer=4, n_head=6, multiple_of=32, vocab_size=256, block_size=256, num_classes=1,
                   class_dropout_prob=0.1, cls_token_num=shapes.MAX_WORDS, caption_dim=64),
    "vq_steps": 1000, "vq_batch": 16, "vq_lr": 2e-3,
    "dataset": 24000,
    "dec_steps": 1000, "dec_lr": 1e-3, "dec_minutes": 12,
    "dec2_steps": 2000, "dec2_lr": 5e-4, "dec2_minutes": 15, "dec2_norm_lr_mult": 10.0,
    "gpt_steps": 3000, "gpt_batch": 32, "gpt_lr": 1e-3, "gpt_warmup": 100, "gpt_minutes": 50,
    "export_every": 200, "ckpt_every": 50, "log_every": 25,
    "tune_prompts": 64,
}

TINY = {
    "name": "zipar-shapes-tiny",
    "image_size": 32,
    "vq": VQArgs(codebook_size=32, codebook_embed_dim=8, decoder_ch_mult=[1, 1, 2], z_channels=32, ch=32,
                 num_res_blocks=0),
    "gpt": GPTArgs(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=32, block_size=64, num_classes=1,
                   class_dropout_prob=0.1, cls_token_num=shapes.MAX_WORDS, caption_dim=16),
    "vq_steps": 4, "vq_batch": 4, "vq_lr": 2e-3,
    "dataset": 32,
    "dec_steps": 2, "dec_lr": 1e-3,
    "dec2_steps": 2, "dec2_lr": 5e-4, "dec2_norm_lr_mult": 10.0,
    "gpt_steps": 4, "gpt_batch": 4, "gpt_lr": 1e-3, "gpt_warmup": 2,
    "export_every": 2, "ckpt_every": 2, "log_every": 1,
    "tune_prompts": 2,
}

# Sampling settings tried by the tune phase (cfg_scale, temperature, top_k, top_p).
TUNE_GRID = [(1.5, 1.0, 0, 1.0), (3.0, 1.0, 0, 1.0), (5.0, 1.0, 0, 1.0), (3.0, 0.7, 0, 1.0), (3.0, 1.0, 0, 0.8)]
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

    def __init__(self, total, minutes=None, used=0.0):
        self.total, self.seconds, self.used, self.t = total, (minutes * 60 if minutes else None), used, time.time()

    def elapsed(self):
        return self.used + time.time() - self.t

    def progress(self, step):
        p = step / max(1, self.total)
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
WORD_ID = {w: i for i, w in enumerate(VOCAB)}


def encode_prompt(prompt, length):
    """Word ids left-padded to `length` with 0, and the mask (True on word positions)."""
    ids = [WORD_ID[w] for w in prompt.lower().split()]
    assert len(ids) <= length, prompt
    pad = length - len(ids)
    return [0] * pad + ids, [False] * pad + [True] * len(ids)


class TextEmbedding(torch.nn.Module):
    """text.safetensors: embedding.weight [vocab, caption_dim]; pad rows give zero features."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        torch.nn.init.normal_(self.embedding.weight, std=dim ** -0.5)

    def forward(self, ids, mask):
        return self.embedding(ids) * mask[..., None].to(self.embedding.weight.dtype)


# ---------------------------------------------------------------------------------------------
# Phase 1: VQ

def batch_images(rng, n, size):
    scenes = [shapes.sample_scene(rng, size) for _ in range(n)]
    return np.stack([shapes.render(s) for s in scenes]), scenes


def train_vq(cfg, work, log, resume, seed):
    path = os.path.join(work, "vq.pt")
    vq = VQModel(cfg["vq"])
    opt = torch.optim.Adam(vq.parameters(), lr=cfg["vq_lr"], betas=(0.9, 0.99))
    step, used = 0, 0.0
    rng = np.random.default_rng(seed)
    if resume and os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        vq.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, used = ck["step"], ck.get("elapsed", 0.0)
        rng.bit_generator.state = ck["rng"]
        if ck.get("done"):
            log(f"vq: done at step {step} (resumed)")
            return vq
        log(f"vq: resuming at step {step}")
    total, bs, size = cfg["vq_steps"], cfg["vq_batch"], cfg["image_size"]
    n_e = cfg["vq"].codebook_size
    usage = torch.zeros(n_e)
    t0, s0 = time.time(), step
    budget = Budget(total, cfg.get("vq_minutes"), used)
    vq.train()
    while budget.progress(step) < 1:
        lr = cosine_lr(step, budget.progress(step), cfg["vq_lr"], max(1, total // 20), floor=0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        imgs, _ = batch_images(rng, bs, size)
        x = from_pixels(imgs)
        rec, vq_loss, commit_loss, idx, zf = vq(x)
        mse = F.mse_loss(rec, x)
        l1 = (rec - x).abs().mean()
        loss = mse + 0.2 * l1 + vq_loss + commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        usage += torch.bincount(idx.flatten(), minlength=n_e).float()
        step += 1
        # Restart dead codes from encoder outputs of the batch (LlamaGen's l2 codebook makes
        # collapse rarer, but a small codebook trained briefly still loses entries).
        restart_every = max(1, min(50, total // 10))
        if step % restart_every == 0 and budget.progress(step) < 0.8:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                pick = torch.randint(0, zf.shape[0], (len(dead),))
                with torch.no_grad():
                    vq.quantize.embedding.weight[dead] = zf.detach()[pick] + 0.01 * torch.randn(len(dead), zf.shape[1])
            used = int((usage > 0).sum())
            usage.zero_()
        else:
            used = None
        if step % cfg["log_every"] == 0 or step == total:
            with torch.no_grad():
                px_err = (to_pixels(rec.detach()).astype(np.int16) - imgs.astype(np.int16)).__abs__().mean()
            msg = (f"vq step {step}/{total} loss {loss.item():.4f} mse {mse.item():.5f} l1 {l1.item():.4f} "
                   f"vq {vq_loss.item():.4f} commit {commit_loss.item():.4f} px_err {px_err:.2f} lr {lr:.2e} "
                   f"{(time.time() - t0) / max(1, step - s0):.2f}s/step")
            if used is not None:
                msg += f" codes_used {used}/{n_e}"
            log(msg)
        if step % (cfg["ckpt_every"] * 2) == 0:
            save_atomic({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step,
                         "rng": rng.bit_generator.state, "done": False, "elapsed": budget.elapsed()}, path)
    log(f"vq: {step} steps in {budget.elapsed() / 60:.1f} min")
    vq.eval()
    stats, imgs, px = vq_heldout(vq, cfg, seed, log, "vq")
    stats["steps"] = step
    save_atomic({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": rng.bit_generator.state, "done": True, "stats": stats, "elapsed": budget.elapsed()}, path)
    shapes.write_png(os.path.join(work, "vq_recon.png"), shapes.contact_sheet(list(imgs[:16]) + list(px[:16])))
    return vq


def vq_heldout(vq, cfg, seed, log, what):
    """Reconstructions of held-out scenes: pixel error and how many still match their prompt."""
    ev_rng = np.random.default_rng(seed + 999)
    n_ev = 64 if cfg["vq_steps"] >= 100 else 4
    imgs, scenes = batch_images(ev_rng, n_ev, cfg["image_size"])
    with torch.no_grad():
        rec, _, _, idx, _ = vq(from_pixels(imgs))
    px = to_pixels(rec)
    err = np.abs(px.astype(np.int16) - imgs.astype(np.int16))
    match = float(np.mean([shapes.prompt_matches(p, s["prompt"]) for p, s in zip(px, scenes)]))
    codes = len(torch.unique(idx))
    log(f"{what} held-out: mean |px err| {err.mean():.2f}, pixels off by >24: {(err.max(-1) > 24).mean() * 100:.2f}%, "
        f"reconstructions matching their prompt {match * 100:.1f}%, distinct codes {codes}/{cfg['vq'].codebook_size}")
    return {"px_err": round(float(err.mean()), 3), "rec_match": round(match, 3), "codes": codes}, imgs, px


def object_weight(imgs):
    """[B, 1, H, W] float: 1 on pixels that differ from the image's corner (background) colour,
    grown by one pixel so that the edges count too."""
    m = torch.from_numpy((imgs != imgs[:, :1, :1]).any(-1)).float()[:, None]
    return F.max_pool2d(m, 3, stride=1, padding=1)


def finetune_decoder(cfg, vq, work, log, resume, seed, phase="dec"):
    """Phases 3 ("dec") and 5 ("dec2"): with the encoder and codebook frozen (so the GPT's tokens
    stay valid), train post_quant_conv + decoder further on the codes of fresh scenes.
    The final GroupNorm (norm_out) learns `{phase}_norm_lr_mult` times faster: with 32 channels in
    32 groups it normalises every channel over the image, so flat colours that do not depend on
    an object's area need large norm_out gains."""
    path = os.path.join(work, f"{phase}.pt")
    total = cfg[f"{phase}_steps"]
    base_lr = cfg[f"{phase}_lr"]
    mult = cfg.get(f"{phase}_norm_lr_mult", 1.0)
    norm_params = list(vq.decoder.norm_out.parameters())
    other = [p for p in vq.decoder.parameters() if all(p is not q for q in norm_params)]
    other += list(vq.post_quant_conv.parameters())
    params = other + norm_params
    opt = torch.optim.Adam([{"params": other, "mult": 1.0}, {"params": norm_params, "mult": mult}],
                           lr=base_lr, betas=(0.9, 0.99))
    step, used = 0, 0.0
    rng = np.random.default_rng(seed + (3 if phase == "dec" else 4))
    if resume and os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        vq.load_state_dict(ck["model"])
        step, used = ck["step"], ck.get("elapsed", 0.0)
        rng.bit_generator.state = ck["rng"]
        done = ck.get("done") and Budget(total, cfg.get(f"{phase}_minutes"), used).progress(step) >= 1
        if not done:
            opt.load_state_dict(ck["opt"])
        if done:
            log(f"{phase} decoder fine-tune: done at step {step} (resumed)")
            return ck.get("stats", {})
        if ck.get("done"):
            log(f"{phase} decoder fine-tune: extending a finished phase (larger budget)")
        log(f"{phase} decoder fine-tune: resuming at step {step}")
    if total <= 0:
        return {}
    t0, s0 = time.time(), step
    budget = Budget(total, cfg.get(f"{phase}_minutes"), used)
    vq.eval()  # no dropout/batch statistics anywhere; eval() only documents that the encoder is frozen
    while budget.progress(step) < 1:
        lr = cosine_lr(step, budget.progress(step), base_lr, max(1, total // 20), floor=0.05)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        imgs, _ = batch_images(rng, cfg["vq_batch"], cfg["image_size"])
        x = from_pixels(imgs)
        with torch.no_grad():
            zq = vq.quant_conv(vq.encoder(x))
            _, _, _, idx, _ = vq.quantize(zq)
            zq = vq.quantize.lookup(idx, zq.shape)
        rec = vq.decode(zq)
        # Objects and their edges weigh 5x: they are a small part of each image but all of the prompt.
        w = 1 + 4 * object_weight(imgs)
        mse = (w * (rec - x) ** 2).mean() / w.mean()
        l1 = (w * (rec - x).abs()).mean() / w.mean()
        loss = mse + 0.2 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0 or step == total:
            px_err = np.abs(to_pixels(rec.detach()).astype(np.int16) - imgs.astype(np.int16)).mean()
            log(f"{phase} step {step}/{total} mse {mse.item():.5f} l1 {l1.item():.4f} px_err {px_err:.2f} "
                f"lr {lr:.2e} {(time.time() - t0) / max(1, step - s0):.2f}s/step")
        if step % (cfg["ckpt_every"] * 2) == 0:
            save_atomic({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step,
                         "rng": rng.bit_generator.state, "done": False, "elapsed": budget.elapsed()}, path)
    log(f"{phase} decoder fine-tune: {step} steps in {budget.elapsed() / 60:.1f} min")
    stats, imgs, px = vq_heldout(vq, cfg, seed, log, f"{phase} decoder fine-tune")
    stats["steps"] = step
    save_atomic({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng.bit_generator.state,
                 "done": True, "stats": stats, "elapsed": budget.elapsed()}, path)
    shapes.write_png(os.path.join(work, f"{phase}_recon.png"), shapes.contact_sheet(list(imgs[:16]) + list(px[:16])))
    return stats


# ---------------------------------------------------------------------------------------------
# Phase 2: tokens

def make_tokens(cfg, vq, work, log, resume, seed):
    path = os.path.join(work, "tokens.npz")
    if resume and os.path.exists(path):
        d = np.load(path)
        log(f"tokens: {len(d['tokens'])} sequences (resumed)")
        return d["tokens"], d["ids"], d["mask"]
    n, size, T = cfg["dataset"], cfg["image_size"], cfg["gpt"].cls_token_num
    rng = np.random.default_rng(seed + 1)
    toks, ids, masks = [], [], []
    t0 = time.time()
    vq.eval()
    chunk = 64
    for start in range(0, n, chunk):
        imgs, scenes = batch_images(rng, min(chunk, n - start), size)
        with torch.no_grad():
            _, _, _, idx, _ = vq.encode(from_pixels(imgs))
        toks.append(idx.numpy().astype(np.int16))
        for s in scenes:
            i, m = encode_prompt(s["prompt"], T)
            ids.append(i)
            masks.append(m)
        if (start // chunk) % 100 == 0:
            log(f"tokens: {start + len(scenes)}/{n} ({time.time() - t0:.0f}s)")
    tokens = np.concatenate(toks)
    ids, masks = np.array(ids, np.int16), np.array(masks, bool)
    np.savez(path + ".tmp.npz", tokens=tokens, ids=ids, mask=masks)
    os.replace(path + ".tmp.npz", path)
    log(f"tokens: {n} sequences of {tokens.shape[1]} tokens in {time.time() - t0:.0f}s; "
        f"{len(np.unique(tokens))} distinct codes")
    return tokens, ids, masks


# ---------------------------------------------------------------------------------------------
# Phase 3: GPT

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
            (decay if p.dim() >= 2 and "embedding" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_gpt(cfg, vq, data, work, out, log, resume, seed, export_fn):
    tokens, ids, masks = data
    path = os.path.join(work, "gpt.pt")
    torch.manual_seed(seed)
    gpt = Transformer(cfg["gpt"])
    text = TextEmbedding(len(VOCAB), cfg["gpt"].caption_dim)
    opt = torch.optim.AdamW(param_groups([gpt, text], 0.05), lr=cfg["gpt_lr"], betas=(0.9, 0.95))
    ema = EMA([gpt, text], 0.999)
    step, used = 0, 0.0
    rng = np.random.default_rng(seed + 2)
    if resume and os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        gpt.load_state_dict(ck["gpt"])
        text.load_state_dict(ck["text"])
        opt.load_state_dict(ck["opt"])
        ema.shadow = ck["ema"]
        step, used = ck["step"], ck.get("elapsed", 0.0)
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"gpt: resuming at step {step}")
    total, bs = cfg["gpt_steps"], cfg["gpt_batch"]
    n = len(tokens)
    n_params = sum(p.numel() for p in gpt.parameters())
    log(f"gpt: {n_params / 1e6:.2f}M parameters, {total} steps of {bs}, dataset {n}")
    t0, s0, avg = time.time(), step, (ck["loss"] if resume and os.path.exists(path) else None)
    budget = Budget(total, cfg.get("gpt_minutes"), used)
    gpt.train()

    def checkpoint():
        save_atomic({"gpt": gpt.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                     "ema": ema.shadow, "step": step, "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "loss": avg, "elapsed": budget.elapsed()}, path)

    last_export = None
    while budget.progress(step) < 1:
        lr = cosine_lr(step, budget.progress(step), cfg["gpt_lr"], cfg["gpt_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        b = rng.integers(0, n, bs)
        tok = torch.from_numpy(tokens[b].astype(np.int64))
        m = torch.from_numpy(masks[b])
        feats = text(torch.from_numpy(ids[b].astype(np.int64)), m)
        _, loss = gpt(tok[:, :-1], feats, m, targets=tok)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(gpt.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        step += 1
        ema.update(step)
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % cfg["log_every"] == 0 or step == total:
            log(f"gpt step {step}/{total} loss {loss.item():.4f} avg {avg:.4f} lr {lr:.2e} "
                f"{(time.time() - t0) / (step - s0):.2f}s/step")
        if step % cfg["ckpt_every"] == 0:
            checkpoint()
        if step % cfg["export_every"] == 0:
            export_fn(ema.shadow[0], ema.shadow[1], {"gpt_steps": step, "gpt_loss": round(avg, 4)})
            last_export = step
            log(f"gpt: exported EMA weights at step {step} to {out}")
    checkpoint()
    log(f"gpt: {step} steps in {budget.elapsed() / 60:.1f} min, loss (running mean) {avg:.4f}")
    if last_export != step:
        export_fn(ema.shadow[0], ema.shadow[1], {"gpt_steps": step, "gpt_loss": round(avg, 4)})
        log(f"gpt: exported EMA weights at step {step} to {out}")
    return ema.shadow


# ---------------------------------------------------------------------------------------------
# Export and loading

def export_model(out, cfg, vq, gpt_sd, text_sd, sampling, info):
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".zipar-export-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        gpt_sd = {k: v for k, v in gpt_sd.items() if k != "freqs_cis"}
        gpt_t = {k: v.detach().to(torch.float16).contiguous() for k, v in gpt_sd.items()}
        vq_t = {k: v.detach().float().contiguous() for k, v in vq.export_state_dict().items()}
        emb = text_sd["embedding.weight"].detach().float().clone()
        emb[0] = 0  # the padding line is never looked up; zipar writes zero rows for padding
        write_safetensors(os.path.join(tmp, "gpt.safetensors"), gpt_t)
        write_safetensors(os.path.join(tmp, "vq.safetensors"), vq_t)
        write_safetensors(os.path.join(tmp, "text.safetensors"), {"embedding.weight": emb.contiguous()})
        with open(os.path.join(tmp, "text_vocab.txt"), "w") as f:
            f.write("\n".join(VOCAB) + "\n")
        with open(os.path.join(tmp, "grammar.json"), "w") as f:
            json.dump(shapes.grammar_json(), f, indent=1)
            f.write("\n")
        config = {"name": cfg["name"], "gpt": cfg["gpt"].config_json(), "vq": cfg["vq"].config_json(),
                  "sampling": sampling, "image_size": cfg["image_size"], "training": info}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
        install_outdir(tmp, out, force=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    """(config, gpt, vq, text embedding table) from an exported model directory."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    g = dict(config["gpt"])
    gpt = Transformer(GPTArgs(**g))
    sd = read_safetensors(os.path.join(path, "gpt.safetensors"))
    gpt.load_state_dict(sd, strict=True)
    v = dict(config["vq"])
    vq = VQModel(VQArgs(**v))
    missing, unexpected = vq.load_state_dict(read_safetensors(os.path.join(path, "vq.safetensors")), strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("encoder.", "quant_conv.")) for k in missing), missing
    emb = read_safetensors(os.path.join(path, "text.safetensors"))["embedding.weight"]
    with open(os.path.join(path, "text_vocab.txt")) as f:
        vocab = f.read().split("\n")[: emb.shape[0]]
    assert vocab == VOCAB, "text_vocab.txt differs from the grammar's vocabulary"
    return config, gpt.eval(), vq.eval(), emb


# ---------------------------------------------------------------------------------------------
# Phase 4: sampling and tuning

def eval_prompts(rng, n):
    """Half single-object, half two-object prompts; backgrounds named half of the time."""
    out = []
    for i in range(n):
        spec = shapes.sample_prompt_spec(rng, p_two=1.0 if i % 2 else 0.0, p_background=0.5)
        out.append(shapes.make_prompt(spec["objects"], spec["relation"],
                                      spec["background"] if spec["named_background"] else None))
    return out


def sample_images(config, gpt, vq, emb, prompts, setting, seed, batch=48):
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
        feats = emb[ids] * mask[..., None].float()
        with torch.no_grad():
            toks = gpt.generate(feats, mask, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=g)
            imgs.append(to_pixels(vq.decode_code(toks, grid)))
    return np.concatenate(imgs)


def tune_sampling(out, cfg, log, seed, grid):
    config, gpt, vq, emb = load_model_dir(out)
    prompts = eval_prompts(np.random.default_rng(seed + 7), cfg["tune_prompts"])
    best, results = None, []
    for setting in grid:
        t0 = time.time()
        imgs = sample_images(config, gpt, vq, emb, prompts, setting, seed)
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

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default=os.path.join(REPO, "models", "default"), help="model directory to write")
    ap.add_argument("--work", help="checkpoints and log (default: /tmp/zipar-train, or a temp dir with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a handful of steps on a tiny config (seconds)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vq-steps", type=int)
    ap.add_argument("--gpt-steps", type=int)
    ap.add_argument("--dataset", type=int, help="number of tokenised training scenes")
    ap.add_argument("--dec-steps", type=int, help="decoder fine-tuning steps on frozen codes (before the GPT)")
    ap.add_argument("--dec2-steps", type=int, help="more decoder fine-tuning steps after the GPT")
    for ph in ("vq", "gpt", "dec", "dec2"):
        ap.add_argument(f"--{ph}-minutes", type=float,
                        help=f"time budget of the {ph} phase: it stops at its steps or after this many minutes, "
                             "whichever comes first, with the learning-rate schedule following the larger fraction")
    ap.add_argument("--export-every", type=int, help="export the EMA model every N GPT steps")
    ap.add_argument("--no-tune", action="store_true", help="skip the sampling-settings search")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    cfg = dict(TINY if args.tiny else FULL)
    for k, a in (("vq_steps", args.vq_steps), ("gpt_steps", args.gpt_steps), ("dataset", args.dataset), ("dec_steps", args.dec_steps),
                 ("vq_minutes", args.vq_minutes), ("gpt_minutes", args.gpt_minutes), ("dec_minutes", args.dec_minutes),
                 ("dec2_steps", args.dec2_steps), ("dec2_minutes", args.dec2_minutes),
                 ("export_every", args.export_every)):
        if a is not None:
            cfg[k] = a
    work = args.work or (tempfile.mkdtemp(prefix="zipar-train-tiny-") if args.tiny else "/tmp/zipar-train")
    os.makedirs(work, exist_ok=True)
    cfg["work"] = work
    if not args.resume:
        for f in ("vq.pt", "tokens.npz", "gpt.pt", "dec.pt", "dec2.pt"):
            if os.path.exists(os.path.join(work, f)):
                os.remove(os.path.join(work, f))
    log = Logger(os.path.join(work, "train.log"))
    t_start = time.time()
    log(f"train.py {'--tiny ' if args.tiny else ''}threads {torch.get_num_threads()} work {work} out {args.out}")
    log(f"vq {cfg['vq'].config_json()}")
    log(f"gpt {cfg['gpt'].config_json()}")

    vq = train_vq(cfg, work, log, args.resume, args.seed)
    t_vq = time.time() - t_start
    data = make_tokens(cfg, vq, work, log, args.resume, args.seed)
    t_tok = time.time() - t_start - t_vq
    default_sampling = {"cfg_scale": 3.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    vq_stats = torch.load(os.path.join(work, "vq.pt"), weights_only=False).get("stats", {})
    info_base = {"image_size": cfg["image_size"], "dataset": int(len(data[0])), "vq_steps": cfg["vq_steps"],
                 "vq_batch": cfg["vq_batch"], "gpt_batch": cfg["gpt_batch"], "vq_heldout": vq_stats}

    def export_fn(gpt_sd, text_sd, info, sampling=None):
        export_model(args.out, cfg, vq, gpt_sd, text_sd, sampling or default_sampling,
                     {**info_base, **info, "minutes": round((time.time() - t_start) / 60, 1)})

    t0 = time.time()
    dec_stats = finetune_decoder(cfg, vq, work, log, args.resume, args.seed)
    t_dec = time.time() - t0
    if dec_stats:
        info_base["decoder_finetune"] = {"steps": dec_stats.get("steps"), "heldout": dec_stats}
    t0 = time.time()
    shadow = train_gpt(cfg, vq, data, work, args.out, log, args.resume, args.seed, export_fn)
    t_gpt = time.time() - t0
    ck = torch.load(os.path.join(work, "gpt.pt"), weights_only=False)
    info = {"gpt_steps": ck["step"], "gpt_loss": round(ck["loss"], 4)}
    t0 = time.time()
    dec2_stats = finetune_decoder(cfg, vq, work, log, args.resume, args.seed, phase="dec2")
    t_dec += time.time() - t0
    if dec2_stats:
        info_base["decoder_finetune2"] = {"steps": dec2_stats.get("steps"), "heldout": dec2_stats}
        export_fn(shadow[0], shadow[1], info)
        log(f"dec2: exported to {args.out}")
    if not args.no_tune:
        grid = TINY_TUNE_GRID if args.tiny else TUNE_GRID
        sampling, results, acc = tune_sampling(args.out, cfg, log, args.seed, grid)
        info["tune"] = {"prompts": cfg["tune_prompts"], "accuracy": round(float(acc), 3),
                        "results": [{"cfg_scale": r["setting"][0], "temperature": r["setting"][1],
                                     "top_k": r["setting"][2], "top_p": r["setting"][3],
                                     "acc": round(r["acc"], 3), "single": round(r["single"], 3),
                                     "two": round(r["two"], 3)} for r in results]}
        export_fn(shadow[0], shadow[1], info, sampling)
        log(f"tune: best sampling {sampling}; exported to {args.out}")
    log(f"done in {(time.time() - t_start) / 60:.1f} min (vq {t_vq / 60:.1f}, tokens {t_tok / 60:.1f}, "
        f"gpt {t_gpt / 60:.1f}, decoder {t_dec / 60:.1f})")


if __name__ == "__main__":
    main()
