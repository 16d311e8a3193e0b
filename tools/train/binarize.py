#!/usr/bin/env python3
"""Trains the binarized variant of the default model (models/default-w1): every Linear inside the
transformer blocks (wqkv, wo, w1, w2, w3) gets 1-bit weights; embeddings, norms, the caption path
and the output head stay in float, as binary networks usually keep their first and last layers.

    python3 tools/train/binarize.py                      # from models/default, 75 min on one core
    python3 tools/train/binarize.py --resume             # continue from the checkpoint in --work
    python3 tools/train/binarize.py --tiny --base M -o O # a few steps on a tiny model (CI)

What a binary Linear computes (BiViT / binarization-by-classification inference rule):
    W_c = W - mean_row(W)                  latent float weights, centred per output row
    B   = +1 where W_c >= 0 else -1        the stored bits
    y   = alpha * (B @ x)                  alpha: one learnable scale per output row (BiViT's
                                           parameterized scales), initialised to mean|W_c|
The backward pass is binarization-by-classification's learned estimator (MetaConv_v2 in the
official code): a tiny MLP 1 -> 100 -> tanh -> 2, no bias, shared by the whole network, reads each
centred weight; the forward output is still exactly B, the gradient of B reaches both MLP outputs
(gated to |output| < 1) and flows through the MLP to W_c. The MLP trains jointly and is dropped at
export. Training starts from the float model (its weights are the latent weights), with the float
model as a distillation teacher (KL on the logits) next to the cross-entropy on the tokens.

--sab adds BiViT's softmax-aware attention binarization (attention probabilities p >= 0.25 * max
become 1, the rest 0, no renormalisation; softmax gradient in the backward). The export then sets
"attention_binarization": "sab" in config.json's gpt section, and zipar's attention does the same.

Export (a zipar model directory, the format of README "Quantized weights", scheme w1):
    P.qweight  U8  [n, k/8]  bit t of byte c in row j = 1 when B[j, 8c+t] = +1 (LSB first)
    P.wscales8 F32 [n]       alpha
The other tensors are written as train.py writes them (F16), and vq/text/vocab/grammar are copied
from the base model. Losses go to stdout and WORK/binarize.log.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import train  # noqa: E402
from convert_llamagen import write_safetensors  # noqa: E402

BINARY_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


# ---------------------------------------------------------------------------------------------
# Binarization by classification (the learned backward estimator)

class SignWithMLPGradient(torch.autograd.Function):
    """Forward: the bits, +1 / -1 (0 counts as +1, as the exported bits do). Backward: the weight's
    gradient goes to both MLP outputs; the centred weight itself gets none on this path."""

    @staticmethod
    def forward(ctx, wc, mlp_out):
        return torch.where(wc >= 0, 1.0, -1.0).to(wc.dtype)

    @staticmethod
    def backward(ctx, g):
        g = g.reshape(-1, 1)
        return None, torch.cat([g, g], dim=1)


class GateUnitRange(torch.autograd.Function):
    """Identity forward; the backward passes the gradient only where the value is inside (-1, 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > -1) & (x < 1)).to(g.dtype)


class BinnedSign(torch.autograd.Function):
    """sign(wc) forward. Backward: each weight gets g * f'(its grid point); each grid point's MLP
    outputs get the sum of the gradients of the weights rounded to it, once per output (as
    SignWithMLPGradient gives g to both outputs)."""

    @staticmethod
    def forward(ctx, wc, idx, grid_out, grid_slope):
        ctx.save_for_backward(idx, grid_slope)
        ctx.bins = grid_out.shape[0]
        return torch.where(wc >= 0, 1.0, -1.0).to(wc.dtype)

    @staticmethod
    def backward(ctx, g):
        idx, slope = ctx.saved_tensors
        gw = g * slope[idx].reshape(g.shape)
        gb = torch.zeros(ctx.bins, dtype=g.dtype).index_add_(0, idx, g.reshape(-1))
        return gw, None, torch.stack([gb, gb], dim=1), None


class Binarizer(nn.Module):
    """BbC's shared classifier-binarizer: 1 -> hidden -> tanh -> 2, no biases.

    The official code runs the MLP on every weight (N x hidden tanh per step: 40% of a training
    step here). It is a function of one scalar, so it is evaluated on a grid of `bins` points
    spanning the weights instead, each weight using its nearest grid point (spacing 1/4096 of the
    weight range); the forward output (the bits) is exact, only the estimator's input is rounded.
    `exact=True` runs the official per-weight form (tests compare the two)."""

    def __init__(self, hidden=100, bins=4096, exact=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden, bias=False), nn.Tanh(), nn.Linear(hidden, 2, bias=False))
        self.bins, self.exact = bins, exact

    def forward(self, wc):
        if self.exact:
            out = GateUnitRange.apply(self.net(wc.reshape(-1, 1)))
            return SignWithMLPGradient.apply(wc, out).reshape(wc.shape)
        with torch.no_grad():
            x = wc.reshape(-1)
            lo, hi = x.min(), x.max()
            step = (hi - lo).clamp_min(1e-12) / (self.bins - 1)
            idx = torch.round((x - lo) / step).long().clamp_(0, self.bins - 1)
            grid = (lo + step * torch.arange(self.bins, dtype=x.dtype))[:, None]
        out = GateUnitRange.apply(self.net(grid))  # [bins, 2]
        with torch.no_grad():
            # f'(x) = sum_c gate_c(x) * sum_h W2[c,h] * W1[h] * (1 - tanh(W1[h] x)^2)
            w1, w2 = self.net[0].weight[:, 0], self.net[2].weight
            t = torch.tanh(grid * w1[None, :])
            gate = ((out > -1) & (out < 1)).to(x.dtype)
            slope = (gate[:, :, None] * w2[None] * (w1 * (1 - t * t))[:, None, :]).sum((1, 2))
        return BinnedSign.apply(wc, idx, out, slope)


class BinaryLinear(nn.Module):
    """A Linear whose forward uses alpha * sign(W - mean_row(W)). `weight` keeps the name of the
    float checkpoint key so the float model loads into it."""

    def __init__(self, linear, binarizer):
        super().__init__()
        w = linear.weight.detach().clone()
        self.weight = nn.Parameter(w)
        self.alpha = nn.Parameter((w - w.mean(1, keepdim=True)).abs().mean(1))
        self.binarizer = [binarizer]  # a list: shared, not registered as a submodule of every layer

    def centred(self):
        return self.weight - self.weight.mean(1, keepdim=True)

    def bits(self):
        return self.centred() >= 0

    def forward(self, x):
        b = self.binarizer[0](self.centred())
        return F.linear(x, self.alpha[:, None] * b)


def binarize_model(gpt, binarizer):
    """Swaps the block Linears of a train.Transformer for BinaryLinears in place."""
    for layer in gpt.layers:
        for name in BINARY_LINEARS:
            parent, attr = name.split(".")
            mod = getattr(layer, parent)
            setattr(mod, attr, BinaryLinear(getattr(mod, attr), binarizer))
    return gpt


def binary_linears(gpt):
    """{checkpoint prefix (without .weight): BinaryLinear}"""
    out = {}
    for i, layer in enumerate(gpt.layers):
        for name in BINARY_LINEARS:
            parent, attr = name.split(".")
            out[f"layers.{i}.{name}"] = getattr(getattr(layer, parent), attr)
    return out


# ---------------------------------------------------------------------------------------------
# BiViT softmax-aware attention binarization (training option)

class SoftmaxAwareBinarize(torch.autograd.Function):
    """p -> 1 where p >= 0.25 * max_j p_j (per query row), else 0; the backward is the identity, so
    the gradient is that of the softmax that produced p (BiViT's STE)."""

    @staticmethod
    def forward(ctx, p):
        return (p >= 0.25 * p.amax(-1, keepdim=True)).to(p.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def use_sab(gpt):
    """Replaces each Attention.forward's softmax-weighted sum by the SAB one (B @ V, no renorm)."""
    import model as M

    def forward(self, x, freqs_cis, mask):
        # model.Attention.forward with the softmax-weighted sum replaced by B @ V.
        B, S, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, kv, kv], dim=-1)
        q = M.apply_rotary_emb(q.view(B, S, self.n_head, self.head_dim), freqs_cis)
        k = M.apply_rotary_emb(k.view(B, S, self.n_kv_head, self.head_dim), freqs_cis)
        v = v.view(B, S, self.n_kv_head, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.n_kv_head != self.n_head:
            r = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        if mask is None:
            mask = torch.tril(torch.ones(S, S, dtype=torch.bool))
        s = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        o = (SoftmaxAwareBinarize.apply(p) @ v).transpose(1, 2).contiguous().view(B, S, -1)
        return self.resid_dropout(self.wo(o))

    for layer in gpt.layers:
        layer.attention.forward = forward.__get__(layer.attention)


# ---------------------------------------------------------------------------------------------
# Export

def pack_bits(bits):
    """bool [n, k] -> uint8 [n, k/8], column 8c+t in bit t of byte c."""
    n, k = bits.shape
    assert k % 8 == 0, k
    b = bits.reshape(n, k // 8, 8).to(torch.uint8)
    weights = torch.tensor([1 << t for t in range(8)], dtype=torch.uint8)
    return (b * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed, k):
    """uint8 [n, k/8] -> bool [n, k] (the inverse of pack_bits)."""
    n = packed.shape[0]
    shifts = torch.arange(8, dtype=torch.int32)
    return ((packed.to(torch.int32)[:, :, None] >> shifts) & 1).reshape(n, k).bool()


def w1_state_dict(gpt):
    """The exported tensors: float ones as F16 (as train.py exports), binary Linears as bits + alpha."""
    out = {}
    lins = binary_linears(gpt)
    for k, v in gpt.state_dict().items():
        if k == "freqs_cis" or k.endswith(".alpha"):
            continue
        prefix = k[: -len(".weight")] if k.endswith(".weight") else None
        if prefix in lins:
            lin = lins[prefix]
            out[prefix + ".qweight"] = pack_bits(lin.bits().detach())
            out[prefix + ".wscales8"] = lin.alpha.detach().float().contiguous()
        else:
            out[k] = v.detach().to(torch.float16).contiguous()
    return out


def export(out, base, gpt, text_sd, info, sab):
    def write(tmp):
        write_safetensors(os.path.join(tmp, "gpt.safetensors"), w1_state_dict(gpt), metadata={"zipar.quant": "w1"})
        for f in ("vq.safetensors", "text_vocab.txt", "grammar.json"):
            shutil.copyfile(os.path.join(base, f), os.path.join(tmp, f))
        with open(os.path.join(base, "config.json")) as f:
            config = json.load(f)
        config["name"] = config["name"] + "-w1" + ("-sab" if sab else "")
        if sab:
            config["gpt"]["attention_binarization"] = "sab"
        config["quant"] = {"scheme": "w1", "source": os.path.basename(os.path.normpath(base)), "head": "fp32",
                           "activations": "dynamic", "trained": "tools/train/binarize.py",
                           "attention": "sab" if sab else "softmax"}
        config["training"] = {"base": config.get("training", {}), "binarize": info}
        return config

    train.export_dir(out, text_sd, write)


# ---------------------------------------------------------------------------------------------
# Training

def load_data(args, base_config, log):
    """(tokens, word ids, masks): the token file of train.py's work dir, or rebuilt from its seed
    (the codebook and dataset are deterministic) when it is missing."""
    path = os.path.join(args.data, "tokens.npz")
    if os.path.exists(path):
        d = np.load(path)
        log(f"data: {len(d['tokens'])} sequences from {path}")
        return d["tokens"], d["ids"], d["mask"]
    cfg = dict(train.TINY if args.tiny else train.FULL)
    if cfg["image_size"] != base_config["image_size"]:
        raise SystemExit(f"binarize.py: {path} is missing and the base model is not train.py's "
                         f"{'tiny' if args.tiny else 'full'} configuration")
    os.makedirs(args.data, exist_ok=True)
    tok, _ = train.build_tokenizer(cfg, args.data, log, True, 0)
    return train.make_tokens(cfg, tok, args.data, log, True, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=os.path.join(train.REPO, "models", "default"), help="float model directory")
    ap.add_argument("-o", "--out", default=os.path.join(train.REPO, "models", "default-w1"))
    ap.add_argument("--work", default="/tmp/zipar-binarize", help="checkpoint and log")
    ap.add_argument("--data", default="/tmp/zipar-train", help="train.py's work dir (tokens.npz)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="train.py's tiny configuration, a few steps")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=75, help="time budget (resume counts earlier runs)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--distill", type=float, default=1.0, help="weight of the KL to the float teacher (0: off)")
    ap.add_argument("--sab", action="store_true", help="BiViT softmax-aware attention binarization")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-every", type=int, default=250)
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps, args.minutes, args.batch, args.export_every = min(args.steps, 3), None, 4, 2
    torch.set_num_threads(max(1, args.threads))
    os.makedirs(args.work, exist_ok=True)
    log = train.Logger(os.path.join(args.work, "binarize.log"))

    config, teacher, _, base_text = train.load_model_dir(args.base)
    for p in teacher.parameters():
        p.requires_grad_(False)
    tokens, ids, masks = load_data(args, config, log)
    torch.manual_seed(args.seed)
    _, student, _, _ = train.load_model_dir(args.base)
    binarizer = Binarizer()
    binarize_model(student, binarizer)
    if args.sab:
        use_sab(student)
    text = copy.deepcopy(base_text).train()
    # No weight decay anywhere: on the latent binary weights it would only push them across zero, and
    # the rest starts trained. The estimator MLP learns at 2x the rate.
    opt = torch.optim.AdamW([{"params": list(student.parameters()) + list(text.parameters())},
                             {"params": binarizer.parameters(), "lr_scale": 2.0}],
                            lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ema = train.EMA([student, text], 0.995)
    step, used, avg = 0, 0.0, None
    rng = np.random.default_rng(args.seed + 11)
    ck_path = os.path.join(args.work, "binarize.pt")
    if args.resume and os.path.exists(ck_path):
        ck = torch.load(ck_path, weights_only=False)
        student.load_state_dict(ck["gpt"])
        text.load_state_dict(ck["text"])
        binarizer.load_state_dict(ck["binarizer"])
        opt.load_state_dict(ck["opt"])
        ema.shadow = ck["ema"]
        step, used, avg = ck["step"], ck["elapsed"], ck["loss"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"binarize: resuming at step {step}")
    n_bin = sum(m.weight.numel() for m in binary_linears(student).values())
    log(f"binarize: {n_bin / 1e6:.2f}M binary weights in {len(binary_linears(student))} Linears; "
        f"{args.steps} steps of {args.batch}, distill {args.distill}, sab {args.sab}, base {args.base}")
    budget = train.Budget(args.steps, args.minutes, used)
    t0, s0 = time.time(), step
    warmup = 2 if args.tiny else 50

    def checkpoint():
        train.save_atomic({"gpt": student.state_dict(), "text": text.state_dict(), "binarizer": binarizer.state_dict(),
                           "opt": opt.state_dict(), "ema": ema.shadow, "step": step, "elapsed": budget.elapsed(),
                           "loss": avg, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ck_path)

    def do_export():
        # The EMA weights go into a copy of the student (bits = signs of the EMA latent weights).
        _, m, _, _ = train.load_model_dir(args.base)
        binarize_model(m, Binarizer())
        m.load_state_dict(ema.shadow[0])
        t = copy.deepcopy(base_text)
        t.load_state_dict(ema.shadow[1])
        export(args.out, args.base, m, t.state_dict(), {"steps": step, "loss": round(avg, 4), "batch": args.batch,
                                                         "distill": args.distill,
                                                         "minutes": round(budget.elapsed() / 60, 1)}, args.sab)
        log(f"binarize: exported EMA weights at step {step} to {args.out}")

    student.train()
    while budget.progress(step) < 1:
        lr = train.cosine_lr(step, budget.progress(step), args.lr, warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        b = rng.integers(0, len(tokens), args.batch)
        tok = torch.from_numpy(tokens[b].astype(np.int64))
        m = torch.from_numpy(masks[b])
        wid = torch.from_numpy(ids[b].astype(np.int64))
        # The same caption dropout for student and teacher, so the teacher's uncond logits are the target.
        drop = torch.rand(args.batch) < config["gpt"]["class_dropout_prob"]
        logits, ce = student(tok[:, :-1], text(wid, m), m, targets=tok, force_drop_ids=drop.long())
        loss = ce
        if args.distill > 0:
            with torch.no_grad():
                t_logits, _ = teacher(tok[:, :-1], base_text(wid, m), m, force_drop_ids=drop.long())
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                          reduction="batchmean") / logits.shape[1]
            loss = ce + args.distill * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        ema.update(step)
        avg = ce.item() if avg is None else 0.95 * avg + 0.05 * ce.item()
        if step % (1 if args.tiny else 25) == 0:
            log(f"binarize step {step}/{args.steps} ce {ce.item():.4f} avg {avg:.4f} loss {loss.item():.4f} "
                f"lr {lr:.2e} {(time.time() - t0) / (step - s0):.2f}s/step")
        if step % (2 if args.tiny else 50) == 0:
            checkpoint()
        if step % args.export_every == 0:
            do_export()
    checkpoint()
    do_export()
    log(f"binarize: {step} steps in {budget.elapsed() / 60:.1f} min, ce (running mean) {avg:.4f}")


if __name__ == "__main__":
    main()
