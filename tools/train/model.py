"""LlamaGen-compatible torch modules for the default zipar model.

The modules follow the official LlamaGen code (autoregressive/models/gpt.py and
tokenizer/tokenizer_image/vq_model.py, see /work/shared/specs/llamagen-spec.md) and use its
state-dict key names, so `state_dict()` can be written out as-is:

- GPT (t2i): CaptionEmbedder (fc1 -> GELU(tanh) -> fc2, no biases, `uncond_embedding` buffer
  with cls_token_num rows), token embedding, pre-norm blocks with RMSNorm, fused wqkv, SwiGLU FFN
  (LlamaGen's hidden-size rounding), 2D RoPE (interleaved pairs, row angle in the first half,
  all-zero rows for the condition prefix), untied output head.
- VQ: Encoder / Decoder / VectorQuantizer (L2-normalised codebook) / quant_conv / post_quant_conv.
"""

import math
from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# GPT

@dataclass
class GPTArgs:
    dim: int = 192
    n_layer: int = 4
    n_head: int = 6
    n_kv_head: int = None
    multiple_of: int = 32
    ffn_dim_multiplier: float = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    vocab_size: int = 256
    block_size: int = 256
    num_classes: int = 1
    class_dropout_prob: float = 0.1
    cls_token_num: int = 12
    model_type: str = "t2i"
    caption_dim: int = 64
    token_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    ffn_dropout_p: float = 0.0

    def config_json(self):
        keys = ["dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier", "rope_base",
                "norm_eps", "vocab_size", "block_size", "num_classes", "class_dropout_prob", "cls_token_num",
                "model_type", "caption_dim"]
        d = asdict(self)
        return {k: d[k] for k in keys}


def ffn_hidden(args):
    hidden = 4 * args.dim
    hidden = int(2 * hidden / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    m = args.multiple_of
    return m * ((hidden + m - 1) // m)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return n.type_as(x) * self.weight


class MLP(nn.Module):
    def __init__(self, in_features, hidden_features, out_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features -> dim; in training, captions are replaced by uncond_embedding with
    probability uncond_prob (classifier-free guidance training, as LlamaGen)."""

    def __init__(self, in_channels, hidden_size, uncond_prob, token_num):
        super().__init__()
        self.cap_proj = MLP(in_channels, hidden_size, hidden_size)
        self.register_buffer("uncond_embedding", torch.randn(token_num, in_channels) / in_channels ** 0.5)
        self.uncond_prob = uncond_prob

    def forward(self, caption, train, force_drop_ids=None):
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            if force_drop_ids is None:
                drop = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
            else:
                drop = force_drop_ids == 1
            caption = torch.where(drop[:, None, None], self.uncond_embedding.to(caption.dtype), caption)
        return self.cap_proj(caption)


class FeedForward(nn.Module):
    def __init__(self, args):
        super().__init__()
        h = ffn_hidden(args)
        self.w1 = nn.Linear(args.dim, h, bias=False)
        self.w3 = nn.Linear(args.dim, h, bias=False)
        self.w2 = nn.Linear(h, args.dim, bias=False)
        self.drop = nn.Dropout(args.ffn_dropout_p)

    def forward(self, x):
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def apply_rotary_emb(x, freqs_cis):
    # x [B, S, H, hd]; freqs_cis [S, hd/2, 2]; interleaved pairs (2i, 2i+1)
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1],
                       xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.n_head = args.n_head
        self.head_dim = args.dim // args.n_head
        self.n_kv_head = args.n_kv_head if args.n_kv_head is not None else args.n_head
        total = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.wqkv = nn.Linear(args.dim, total, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)
        self.resid_dropout = nn.Dropout(args.resid_dropout_p)

    def forward(self, x, freqs_cis, mask):
        B, S, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, kv, kv], dim=-1)
        q = q.view(B, S, self.n_head, self.head_dim)
        k = k.view(B, S, self.n_kv_head, self.head_dim)
        v = v.view(B, S, self.n_kv_head, self.head_dim)
        q = apply_rotary_emb(q, freqs_cis)
        k = apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.n_kv_head != self.n_head:
            r = self.n_head // self.n_kv_head
            k = k.repeat_interleave(r, dim=1)
            v = v.repeat_interleave(r, dim=1)
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).contiguous().view(B, S, -1)
        return self.resid_dropout(self.wo(o))


class TransformerBlock(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, freqs_cis, mask):
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask)
        return h + self.feed_forward(self.ffn_norm(h))


def precompute_freqs_cis_2d(grid_size, n_elem, base=10000, cls_token_num=120):
    """[cls_token_num + grid^2, n_elem/2, 2] (cos, sin); the prefix rows are all zero."""
    half = n_elem // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid_size, dtype=torch.float32)
    freqs = torch.outer(t, freqs)  # [grid, half/2]
    freqs_grid = torch.cat([freqs[:, None, :].expand(-1, grid_size, -1),   # row angle first
                            freqs[None, :, :].expand(grid_size, -1, -1)], dim=-1)
    cache_grid = torch.stack([torch.cos(freqs_grid), torch.sin(freqs_grid)], dim=-1)
    cache = cache_grid.flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, n_elem // 2, 2), cache])


class Transformer(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        assert args.model_type == "t2i"
        self.args = args
        self.cls_token_num = args.cls_token_num
        self.cls_embedding = CaptionEmbedder(args.caption_dim, args.dim, args.class_dropout_prob, args.cls_token_num)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.tok_dropout = nn.Dropout(args.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        grid = int(round(args.block_size ** 0.5))
        assert grid * grid == args.block_size
        self.grid = grid
        self.register_buffer("freqs_cis", precompute_freqs_cis_2d(grid, args.dim // args.n_head, args.rope_base,
                                                                  args.cls_token_num), persistent=False)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.constant_(self.output.weight, 0)

    @staticmethod
    def build_mask(emb_mask, seq_len, visible=None):
        """LlamaGen's t2i mask: causal (or `visible` [B, 1, S, S], see nextset.py), prefix key columns
        ANDed with the caption mask, diagonal forced true. emb_mask [B, T] bool -> [B, 1, S, S] bool."""
        B, T = emb_mask.shape
        if visible is None:
            m = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool)).unsqueeze(0).repeat(B, 1, 1)
        else:
            m = visible[:, 0].clone()
        m[:, :, :T] &= emb_mask[:, None, :]
        idx = torch.arange(seq_len)
        m[:, idx, idx] = True
        return m.unsqueeze(1)

    def forward(self, idx, caption, emb_mask, targets=None, force_drop_ids=None, visible=None, positions=None):
        """Training-style forward: idx = image tokens [B, L'] (L' <= block_size - 1 when
        targets are given), caption [B, T, caption_dim], emb_mask [B, T] bool.
        Returns logits for the image positions [B, L'+1, vocab] and the loss.
        ZipAR training (nextset.batch): idx has extra positions after the L' inputs, `visible` is the
        attention pattern and `positions` [S] the RoPE positions; the logits stop at targets' length."""
        cond = self.cls_embedding(caption, train=self.training, force_drop_ids=force_drop_ids)[:, : self.cls_token_num]
        tok = self.tok_embeddings(idx)
        h = self.tok_dropout(torch.cat([cond, tok], dim=1))
        S = h.shape[1]
        mask = self.build_mask(emb_mask, S, visible)
        fc = self.freqs_cis[:S] if positions is None else self.freqs_cis[positions]
        for layer in self.layers:
            h = layer(h, fc, mask)
        h = self.norm(h)
        n_out = S - self.cls_token_num + 1 if targets is None else targets.shape[1]
        logits = self.output(h[:, self.cls_token_num - 1:self.cls_token_num - 1 + n_out]).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, caption, emb_mask, cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """Raster sampling with CFG (cond rows first, then uncond), no KV cache (small models)."""
        B = caption.shape[0]
        use_cfg = cfg_scale > 1.0
        if use_cfg:
            cap = torch.cat([caption, self.cls_embedding.uncond_embedding.expand(B, -1, -1)])
            msk = torch.cat([emb_mask, emb_mask])
        else:
            cap, msk = caption, emb_mask
        cond = self.cls_embedding(cap, train=False)
        seq = torch.zeros(cap.shape[0], 0, dtype=torch.long)
        out = []
        caches = None
        for i in range(self.args.block_size):
            logits, caches = self._step(cond, msk, seq, caches)
            if use_cfg:
                c, u = logits.chunk(2)
                logits = u + (c - u) * cfg_scale
            logits = logits / max(temperature, 1e-5)
            if top_k > 0:
                k = min(top_k, logits.size(-1))
                kth = torch.topk(logits, k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if top_p < 1.0:
                sl, si = torch.sort(logits, descending=True)
                cp = sl.softmax(-1).cumsum(-1)
                rm = cp > top_p
                rm[:, 1:] = rm[:, :-1].clone()
                rm[:, 0] = False
                logits = logits.masked_fill(rm.scatter(1, si, rm), float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            out.append(nxt)
            step = torch.cat([nxt, nxt]) if use_cfg else nxt
            seq = step
        return torch.cat(out, dim=1)

    def _step(self, cond, msk, new_tok, caches):
        """Incremental forward with a simple KV cache. Returns logits of the last position."""
        T = self.cls_token_num
        if caches is None:
            h = cond
            start = 0
        else:
            h = self.tok_embeddings(new_tok)
            start = caches["pos"]
        S_new = h.shape[1]
        end = start + S_new
        full = self.build_mask(msk, end)[:, :, start:end, :end]
        fc = self.freqs_cis[start:end]
        new_caches = {"pos": end, "kv": []}
        for li, layer in enumerate(self.layers):
            att = layer.attention
            x = layer.attention_norm(h)
            B = x.shape[0]
            kvd = att.n_kv_head * att.head_dim
            q, k, v = att.wqkv(x).split([att.n_head * att.head_dim, kvd, kvd], dim=-1)
            q = apply_rotary_emb(q.view(B, S_new, att.n_head, att.head_dim), fc).transpose(1, 2)
            k = apply_rotary_emb(k.view(B, S_new, att.n_kv_head, att.head_dim), fc).transpose(1, 2)
            v = v.view(B, S_new, att.n_kv_head, att.head_dim).transpose(1, 2)
            if caches is not None:
                pk, pv = caches["kv"][li]
                k = torch.cat([pk, k], dim=2)
                v = torch.cat([pv, v], dim=2)
            new_caches["kv"].append((k, v))
            if att.n_kv_head != att.n_head:
                r = att.n_head // att.n_kv_head
                k = k.repeat_interleave(r, dim=1)
                v = v.repeat_interleave(r, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
            o = o.transpose(1, 2).reshape(B, S_new, -1)
            h = h + att.wo(o)
            h = h + layer.feed_forward(layer.ffn_norm(h))
        logits = self.output(self.norm(h[:, -1])).float()
        return logits, new_caches


# ---------------------------------------------------------------------------------------------
# VQ

@dataclass
class VQArgs:
    codebook_size: int = 256
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    decoder_ch_mult: list = field(default_factory=lambda: [1, 1, 2])
    z_channels: int = 32
    ch: int = 32
    num_res_blocks: int = 1

    def config_json(self):
        keys = ["codebook_size", "codebook_embed_dim", "codebook_l2_norm", "decoder_ch_mult", "z_channels", "ch",
                "num_res_blocks"]
        d = asdict(self)
        return {k: d[k] for k in keys}


def Normalize(c):
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def nonlinearity(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)
        else:
            self.nin_shortcut = None

    def forward(self, x):
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(nonlinearity(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = Normalize(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        B, C, H, W = q.shape
        q = q.reshape(B, C, H * W).permute(0, 2, 1)
        k = k.reshape(B, C, H * W)
        w = torch.bmm(q, k) * (C ** -0.5)
        w = w.softmax(dim=2)
        v = v.reshape(B, C, H * W)
        o = torch.bmm(v, w.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj_out(o)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, z_channels=32, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, out_channels=3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[self.num_resolutions - 1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            block = nn.Module()
            res, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if i == self.num_resolutions - 1:
                    attn.append(AttnBlock(block_in))
            block.res, block.attn = res, attn
            if i != 0:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for i, block in enumerate(self.conv_blocks):
            for j, r in enumerate(block.res):
                h = r(h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if i != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """LlamaGen's codebook, lookup side only: the default model's codes come from patches.py."""

    def __init__(self, n_e, e_dim, l2_norm=True):
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)

    def codebook(self):
        e = self.embedding.weight
        return F.normalize(e, p=2, dim=-1) if self.l2_norm else e

    def lookup(self, idx, shape):
        """Codes [B, H*W] -> latent [B, C, H, W] (get_codebook_entry)."""
        zq = self.codebook()[idx.reshape(-1)]
        B, C, H, W = shape
        return zq.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """LlamaGen VQModel's decode path (quantize.embedding, post_quant_conv, decoder): what zipar reads."""

    def __init__(self, args: VQArgs):
        super().__init__()
        self.args = args
        self.decoder = Decoder(z_channels=args.z_channels, ch=args.ch, ch_mult=args.decoder_ch_mult,
                               num_res_blocks=args.num_res_blocks)
        self.quantize = VectorQuantizer(args.codebook_size, args.codebook_embed_dim, args.codebook_l2_norm)
        self.post_quant_conv = nn.Conv2d(args.codebook_embed_dim, args.z_channels, 1)

    @property
    def downsample(self):
        return 2 ** (len(self.args.decoder_ch_mult) - 1)

    def decode(self, zq):
        return self.decoder(self.post_quant_conv(zq))

    def decode_code(self, idx, grid):
        zq = self.quantize.lookup(idx, (idx.shape[0], self.args.codebook_embed_dim, grid, grid))
        return self.decode(zq)

    def export_state_dict(self):
        """The decode-path keys zipar reads (spec section 3.2)."""
        return dict(self.state_dict())
