#!/usr/bin/env python3
"""Convert official LlamaGen checkpoints (.pt) into a zipar model directory.

The output directory holds:
  config.json       {"name": ..., "gpt": {LlamaGen ModelArgs fields}, "vq": {VQ fields}}
  gpt.safetensors   GPT weights under the official state-dict key names
  vq.safetensors    VQ decode-path weights (quantize.embedding, post_quant_conv, decoder.*)
  classes.txt       optional: one class name per line, line i = class id i

Example:
  python3 tools/convert_llamagen.py --gpt-ckpt c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt \
      --gpt-model GPT-B --image-size 256 -o models/llamagen-b-256

Only torch is needed (see tools/requirements.txt). The safetensors files are written by the
small writer below, not by the `safetensors` package.
"""

import argparse
import ast
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

# ---------------------------------------------------------------------------------------------
# Configs (spec sections 1.1, 1.2 and 2.1)

# LlamaGen ModelArgs defaults, restricted to the fields that matter at inference.
GPT_DEFAULTS = {
    "dim": 4096,
    "n_layer": 32,
    "n_head": 32,
    "n_kv_head": None,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "rope_base": 10000,
    "norm_eps": 1e-5,
    "vocab_size": 16384,
    "block_size": 256,
    "num_classes": 1000,
    "class_dropout_prob": 0.1,
    "cls_token_num": 1,
    "model_type": "c2i",
    "caption_dim": 2048,
}

# Named GPT configs: (n_layer, n_head, dim). Everything else stays at the defaults.
GPT_MODELS = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}

# VQ ModelArgs defaults (VQ-16). ch and num_res_blocks are hard-coded in the official Decoder.
VQ_DEFAULTS = {
    "codebook_size": 16384,
    "codebook_embed_dim": 8,
    "codebook_l2_norm": True,
    "decoder_ch_mult": [1, 1, 2, 2, 4],
    "z_channels": 256,
    "ch": 128,
    "num_res_blocks": 2,
}

# The decoder's ch_mult fixes its downsample factor (one x2 upsample per level but the last).
VQ_CH_MULT = {16: [1, 1, 2, 2, 4], 8: [1, 2, 2, 4]}

# t2i: the caption embedder's uncond_embedding always has 120 rows.
T2I_CAPTION_TOKENS = 120

# torchvision wheel that carries the ImageNet class names. Pinned so that every run gets the
# same file; any platform's wheel holds the same _meta.py, so the platform is pinned too.
TORCHVISION_REQ = "torchvision==0.29.2"
TORCHVISION_PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]
IMAGENET_META = "torchvision/models/_meta.py"

class ConvertError(Exception):
    """A problem the user can fix; printed as one line by main()."""


def gpt_ffn_hidden(cfg):
    """SwiGLU hidden size with LlamaGen's truncating casts, rounded up to multiple_of."""
    hidden = int(2 * (4 * cfg["dim"]) / 3)
    if cfg["ffn_dim_multiplier"] is not None:
        hidden = int(cfg["ffn_dim_multiplier"] * hidden)
    m = cfg["multiple_of"]
    return m * ((hidden + m - 1) // m)


def gpt_config(gpt_model=None, image_size=256, downsample=16, model_type="c2i",
               codebook_size=16384, num_classes=1000, overrides=None):
    """ModelArgs defaults, then the named config and the sample scripts' overrides, then
    `overrides` (e.g. fields read from a JSON file), which win."""
    cfg = dict(GPT_DEFAULTS)
    if gpt_model is not None:
        if gpt_model not in GPT_MODELS:
            raise ConvertError(f"unknown --gpt-model {gpt_model}; choose one of {', '.join(GPT_MODELS)}")
        cfg["n_layer"], cfg["n_head"], cfg["dim"] = GPT_MODELS[gpt_model]
    if image_size % downsample != 0:
        raise ConvertError(f"--image-size {image_size} is not a multiple of --downsample {downsample}")
    cfg["block_size"] = (image_size // downsample) ** 2
    cfg["vocab_size"] = codebook_size
    cfg["model_type"] = model_type
    if model_type == "c2i":
        cfg["num_classes"] = num_classes
        cfg["cls_token_num"] = 1
    else:
        cfg["cls_token_num"] = T2I_CAPTION_TOKENS
        cfg["caption_dim"] = 2048
    for k in GPT_DEFAULTS:
        if overrides and k in overrides:
            cfg[k] = overrides[k]
    validate_gpt_config(cfg)
    return cfg


def vq_config(downsample=16, codebook_size=16384, overrides=None):
    cfg = dict(VQ_DEFAULTS)
    if downsample not in VQ_CH_MULT:
        raise ConvertError(f"--downsample must be 16 or 8, got {downsample}")
    cfg["decoder_ch_mult"] = list(VQ_CH_MULT[downsample])
    cfg["codebook_size"] = codebook_size
    for k in VQ_DEFAULTS:
        if overrides and k in overrides:
            cfg[k] = overrides[k]
    validate_vq_config(cfg)
    return cfg


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_gpt_config(cfg):
    def bad(msg):
        raise ConvertError(f"invalid gpt config: {msg}")
    for k in ("dim", "n_layer", "n_head", "multiple_of", "vocab_size", "block_size", "num_classes",
              "cls_token_num", "caption_dim"):
        if not _is_int(cfg[k]) or cfg[k] <= 0:
            bad(f"{k} must be a positive integer, got {cfg[k]!r}")
    kv = cfg["n_kv_head"] if cfg["n_kv_head"] is not None else cfg["n_head"]
    if not _is_int(kv) or kv <= 0 or cfg["n_head"] % kv != 0:
        bad(f"n_head {cfg['n_head']} is not a multiple of n_kv_head {cfg['n_kv_head']}")
    if cfg["dim"] % cfg["n_head"] != 0:
        bad(f"dim {cfg['dim']} is not divisible by n_head {cfg['n_head']}")
    if (cfg["dim"] // cfg["n_head"]) % 4 != 0:
        bad(f"head_dim {cfg['dim'] // cfg['n_head']} must be a multiple of 4 for 2D RoPE")
    grid = int(round(cfg["block_size"] ** 0.5))
    if grid * grid != cfg["block_size"]:
        bad(f"block_size {cfg['block_size']} is not a perfect square")
    if cfg["model_type"] == "c2i":
        if cfg["cls_token_num"] != 1:
            bad(f"c2i models need cls_token_num 1, got {cfg['cls_token_num']}")
    elif cfg["model_type"] == "t2i":
        if cfg["cls_token_num"] != T2I_CAPTION_TOKENS:
            bad(f"t2i models need cls_token_num {T2I_CAPTION_TOKENS}, got {cfg['cls_token_num']}")
    else:
        bad(f"model_type must be c2i or t2i, got {cfg['model_type']!r}")
    for k in ("rope_base", "norm_eps", "class_dropout_prob"):
        if isinstance(cfg[k], bool) or not isinstance(cfg[k], (int, float)) or cfg[k] < 0:
            bad(f"{k} must be a non-negative number, got {cfg[k]!r}")
    m = cfg["ffn_dim_multiplier"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0):
        bad(f"ffn_dim_multiplier must be null or a positive number, got {m!r}")


def validate_vq_config(cfg):
    def bad(msg):
        raise ConvertError(f"invalid vq config: {msg}")
    for k in ("codebook_size", "codebook_embed_dim", "z_channels", "ch"):
        if not _is_int(cfg[k]) or cfg[k] <= 0:
            bad(f"{k} must be a positive integer, got {cfg[k]!r}")
    if not _is_int(cfg["num_res_blocks"]) or cfg["num_res_blocks"] < 0:
        bad(f"num_res_blocks must be a non-negative integer, got {cfg['num_res_blocks']!r}")
    if not isinstance(cfg["codebook_l2_norm"], bool):
        bad("codebook_l2_norm must be true or false")
    mult = cfg["decoder_ch_mult"]
    if not isinstance(mult, list) or not mult or not all(_is_int(m) and m > 0 for m in mult):
        bad(f"decoder_ch_mult must be a list of positive integers, got {mult!r}")
    for m in mult:
        # GroupNorm uses 32 groups.
        if (cfg["ch"] * m) % 32 != 0:
            bad(f"ch*ch_mult = {cfg['ch'] * m} must be a multiple of 32")


# ---------------------------------------------------------------------------------------------
# Expected state-dict keys and shapes (spec section 3)

def expected_gpt_shapes(cfg):
    """Every key the GPT checkpoint must hold, in state-dict order, with its shape."""
    dim, head_dim = cfg["dim"], cfg["dim"] // cfg["n_head"]
    kv = cfg["n_kv_head"] if cfg["n_kv_head"] is not None else cfg["n_head"]
    hidden = gpt_ffn_hidden(cfg)
    shapes = {}
    if cfg["model_type"] == "c2i":
        # One extra "null class" row when class dropout was used in training.
        rows = cfg["num_classes"] + (1 if cfg["class_dropout_prob"] > 0 else 0)
        shapes["cls_embedding.embedding_table.weight"] = [rows, dim]
    else:
        shapes["cls_embedding.uncond_embedding"] = [T2I_CAPTION_TOKENS, cfg["caption_dim"]]
        shapes["cls_embedding.cap_proj.fc1.weight"] = [dim, cfg["caption_dim"]]
        shapes["cls_embedding.cap_proj.fc2.weight"] = [dim, dim]
    shapes["tok_embeddings.weight"] = [cfg["vocab_size"], dim]
    for i in range(cfg["n_layer"]):
        p = f"layers.{i}."
        shapes[p + "attention.wqkv.weight"] = [(cfg["n_head"] + 2 * kv) * head_dim, dim]
        shapes[p + "attention.wo.weight"] = [dim, dim]
        shapes[p + "feed_forward.w1.weight"] = [hidden, dim]
        shapes[p + "feed_forward.w3.weight"] = [hidden, dim]
        shapes[p + "feed_forward.w2.weight"] = [dim, hidden]
        shapes[p + "attention_norm.weight"] = [dim]
        shapes[p + "ffn_norm.weight"] = [dim]
    shapes["norm.weight"] = [dim]
    shapes["output.weight"] = [cfg["vocab_size"], dim]
    return shapes


def expected_vq_shapes(cfg):
    """The VQ decode path's keys (codebook, post_quant_conv, decoder) with their shapes."""
    shapes = {}

    def conv(name, cout, cin, k):
        shapes[name + ".weight"] = [cout, cin, k, k]
        shapes[name + ".bias"] = [cout]

    def norm(name, c):
        shapes[name + ".weight"] = [c]
        shapes[name + ".bias"] = [c]

    def resnet(p, cin, cout):
        norm(p + ".norm1", cin)
        conv(p + ".conv1", cout, cin, 3)
        norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".nin_shortcut", cout, cin, 1)

    def attn(p, c):
        norm(p + ".norm", c)
        for leaf in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{leaf}", c, c, 1)

    mult, ch, z = cfg["decoder_ch_mult"], cfg["ch"], cfg["z_channels"]
    n = len(mult)
    block_in = ch * mult[-1]
    conv("decoder.conv_in", block_in, z, 3)
    resnet("decoder.mid.0", block_in, block_in)
    attn("decoder.mid.1", block_in)
    resnet("decoder.mid.2", block_in, block_in)
    # conv_blocks run from the lowest resolution up; only block 0 has attention.
    for j in range(n):
        block_out = ch * mult[n - 1 - j]
        for r in range(cfg["num_res_blocks"] + 1):
            resnet(f"decoder.conv_blocks.{j}.res.{r}", block_in, block_out)
            block_in = block_out
        if j == 0:
            for r in range(cfg["num_res_blocks"] + 1):
                attn(f"decoder.conv_blocks.{j}.attn.{r}", block_in)
        if j != n - 1:
            conv(f"decoder.conv_blocks.{j}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", 3, block_in, 3)
    shapes["quantize.embedding.weight"] = [cfg["codebook_size"], cfg["codebook_embed_dim"]]
    conv("post_quant_conv", z, cfg["codebook_embed_dim"], 1)
    return shapes


def is_dropped_gpt_key(key):
    # freqs_cis appears in some released checkpoints; kv caches exist only after setup_caches.
    return key == "freqs_cis" or ".kv_cache." in key


def is_dropped_vq_key(key):
    # Generation only decodes: the encoder, quant_conv and the training statistic are not needed.
    return (key.startswith("encoder.") or key.startswith("quant_conv.")
            or key == "quantize.codebook_used")


def describe_gpt_weights(sd):
    """A short guess at what a GPT state dict holds, to help pick the right flags."""
    parts = []
    tok = sd.get("tok_embeddings.weight")
    if tok is not None and tok.dim() == 2:
        parts.append(f"dim {tok.shape[1]}, vocab {tok.shape[0]}")
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"layers\.(\d+)\.", k)] if m}
    if layers:
        parts.append(f"{max(layers) + 1} layers")
    if "cls_embedding.embedding_table.weight" in sd:
        parts.append(f"c2i with {sd['cls_embedding.embedding_table.weight'].shape[0]} label rows")
    elif "cls_embedding.cap_proj.fc1.weight" in sd:
        parts.append("t2i")
    return ", ".join(parts) if parts else "no recognisable LlamaGen GPT keys"


def check_state_dict(sd, expected, what, hint=""):
    """Fails unless sd holds exactly the expected keys with the expected shapes."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    hint = f" ({hint})" if hint else ""
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise ConvertError(f"{what} does not match the config: {'; '.join(parts)}{hint}")
    for k, shape in expected.items():
        got = list(sd[k].shape)
        if got != shape:
            raise ConvertError(f"{what} does not match the config: {k} has shape {got}, "
                               f"the config needs {shape}{hint}")


# ---------------------------------------------------------------------------------------------
# Loading checkpoints

def load_checkpoint(path):
    import torch
    if not os.path.isfile(path):
        raise ConvertError(f"checkpoint not found: {path}")
    # Training checkpoints pickle an argparse Namespace ("args"), which torch's weights_only
    # loader refuses, so the full unpickler runs: only convert files you trust.
    # mmap keeps multi-GB checkpoints out of memory; the legacy (non-zip) format can't use it.
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        pass  # retried below without mmap, which reports the real problem if there is one
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConvertError(f"cannot load {path}: {type(e).__name__}: {first}")


def as_state_dict(obj, path, wrapper_keys):
    """Picks the weights out of a checkpoint: the first wrapper key present, else the object
    itself when it is already a flat state dict (FSDP consolidated checkpoints)."""
    import torch
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    for key in wrapper_keys:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad or not obj:
        raise ConvertError(f"{path} holds no state dict under {', '.join(repr(k) for k in wrapper_keys)} "
                           f"and is not a flat state dict itself (top-level keys: {', '.join(map(str, list(obj)[:6]))})")
    return obj


def checkpoint_args(obj):
    """The training args pickled in a checkpoint, as a dict (empty when there are none)."""
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def warn_on_args_mismatch(args, cfg, image_size, downsample, gpt_model):
    """The image size is not visible in the weights (RoPE has no parameters), so compare the
    flags with the training args when the checkpoint carries them. Warn only: fine-tuning
    runs may have changed these."""
    checks = [("image_size", image_size), ("downsample_size", downsample), ("gpt_model", gpt_model),
              ("gpt_type", cfg["model_type"]), ("vocab_size", cfg["vocab_size"]),
              ("codebook_size", cfg["vocab_size"]), ("cls_token_num", cfg["cls_token_num"])]
    if cfg["model_type"] == "c2i":
        checks.append(("num_classes", cfg["num_classes"]))
    for name, ours in checks:
        if ours is not None and name in args and args[name] != ours:
            print(f"warning: the checkpoint was trained with {name}={args[name]!r} but the "
                  f"conversion uses {ours!r}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# safetensors writer

def st_dtype(dtype):
    import torch
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8", torch.int8: "I8"}
    return names.get(dtype)


def torch_dtype(name):
    import torch
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[name]


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} as safetensors: an 8-byte little-endian header length, the JSON
    header padded with spaces to a multiple of 8, then each tensor's raw little-endian bytes,
    back to back (the reference reader rejects gaps). Tensors are ordered by element size,
    largest first, so each starts aligned to its element size."""
    if sys.byteorder != "little":
        raise ConvertError("this writer needs a little-endian machine")
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable: keeps key order
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name in order:
        t = tensors[name]
        dt = st_dtype(t.dtype)
        if dt is None:
            raise ConvertError(f"cannot write {name}: unsupported dtype {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name in order:
            t = tensors[name].detach().contiguous()
            # Raw bytes without numpy (which has no bfloat16).
            f.write(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))


def cast_weights(sd, expected, dtype, what):
    """The expected tensors in expected order, in `dtype` ("keep" keeps each tensor's own)."""
    out = {}
    for k in expected:
        t = sd[k]
        if dtype == "keep":
            if st_dtype(t.dtype) is None:
                raise ConvertError(f"{what}: {k} has dtype {t.dtype}; pass --dtype f32, f16 or bf16")
        elif t.dtype != torch_dtype(dtype):
            if not t.is_floating_point():
                raise ConvertError(f"{what}: {k} has non-float dtype {t.dtype}")
            t = t.to(torch_dtype(dtype))
        out[k] = t
    return out


# ---------------------------------------------------------------------------------------------
# ImageNet class names, from torchvision's wheel

def parse_imagenet_categories(source):
    """The list literal assigned to _IMAGENET_CATEGORIES in torchvision/models/_meta.py,
    read with ast (the file is never imported)."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in targets):
            names = ast.literal_eval(value)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConvertError("_IMAGENET_CATEGORIES in _meta.py is not a list of strings")
            return names
    raise ConvertError("_meta.py has no _IMAGENET_CATEGORIES list")


def imagenet_classes_from_wheel(wheel, expected=1000):
    try:
        with zipfile.ZipFile(wheel) as z:
            source = z.read(IMAGENET_META).decode("utf-8")
    except KeyError:
        raise ConvertError(f"{wheel} has no {IMAGENET_META}")
    except (OSError, zipfile.BadZipFile) as e:
        raise ConvertError(f"cannot read torchvision wheel {wheel}: {e}")
    names = parse_imagenet_categories(source)
    if len(names) != expected:
        raise ConvertError(f"{wheel}: expected {expected} ImageNet class names, found {len(names)}")
    return names


def download_torchvision_wheel(dest):
    """pip-downloads the pinned torchvision wheel (no dependencies) into dest; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *TORCHVISION_PLATFORM, "--disable-pip-version-check", "-q", "-d", dest, TORCHVISION_REQ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise ConvertError(f"pip download {TORCHVISION_REQ} timed out; pass --torchvision-wheel FILE or --classes none")
    wheels = [f for f in os.listdir(dest) if f.startswith("torchvision-") and f.endswith(".whl")]
    if r.returncode != 0 or not wheels:
        lines = [l.strip() for l in (r.stderr + r.stdout).splitlines() if l.strip()]
        # pip's first ERROR line says the most ("... (from versions: none)" when offline).
        errors = [l for l in lines if l.startswith("ERROR:")]
        why = (errors or lines or [f"exit code {r.returncode}"])[0]
        raise ConvertError(f"could not download {TORCHVISION_REQ} for the ImageNet class names ({why}); "
                           f"pass --torchvision-wheel FILE or --classes none")
    return os.path.join(dest, wheels[0])


def fetch_imagenet_classes(wheel=None):
    if wheel:
        return imagenet_classes_from_wheel(wheel)
    with tempfile.TemporaryDirectory(prefix="zipar-tv-") as tmp:
        return imagenet_classes_from_wheel(download_torchvision_wheel(tmp))


def resolve_classes(choice, cfg, wheel=None):
    """The class-name list for classes.txt, or None for no file."""
    if cfg["model_type"] != "c2i":
        if choice not in (None, "none"):
            raise ConvertError("--classes applies to c2i models only")
        return None
    if choice is None:
        # The released c2i models are all ImageNet-1k.
        choice = "imagenet" if cfg["num_classes"] == 1000 else "none"
    if choice == "none":
        return None
    if choice == "imagenet":
        if cfg["num_classes"] != 1000:
            raise ConvertError(f"--classes imagenet gives 1000 names but the model has num_classes {cfg['num_classes']}")
        names = fetch_imagenet_classes(wheel)
    else:
        try:
            with open(choice, encoding="utf-8") as f:
                names = f.read().splitlines()
        except OSError as e:
            raise ConvertError(f"cannot read --classes file {choice}: {e.strerror}")
        while names and not names[-1].strip():
            names.pop()  # tolerate trailing blank lines
        if len(names) != cfg["num_classes"]:
            raise ConvertError(f"{choice} has {len(names)} class names but the model has num_classes {cfg['num_classes']}")
    for i, n in enumerate(names):
        if not n.strip() or "\n" in n or "\r" in n:
            raise ConvertError(f"class name {i} is empty or spans lines: {n!r}")
    return names


# ---------------------------------------------------------------------------------------------
# Output directory

def check_outdir(outdir, force):
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ConvertError(f"output path {outdir} exists and is not a directory")
    if os.path.isdir(outdir) and os.listdir(outdir) and not force:
        raise ConvertError(f"output directory {outdir} is not empty; pass --force to replace it")


def install_outdir(tmpdir, outdir, force):
    """Moves the finished tmpdir to outdir, so outdir never holds a half-written model."""
    check_outdir(outdir, force)
    old = None
    if os.path.isdir(outdir):
        # Empty, or non-empty with --force: move it aside first, delete it once the new one is in.
        old = tempfile.mkdtemp(prefix=".zipar-old-", dir=os.path.dirname(outdir))
        os.rmdir(old)
        os.rename(outdir, old)
    try:
        os.rename(tmpdir, outdir)
    except OSError:
        if old:
            os.rename(old, outdir)
        raise
    if old:
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------
# Conversion

def convert(gpt_ckpt, vq_ckpt, outdir, gpt_cfg, vq_cfg, dtype="keep", vq_dtype=None, classes=None,
            force=False, name=None, args_check=None):
    """Converts one GPT + VQ checkpoint pair into outdir. `classes` is a list of names or None.
    `args_check` = (image_size, downsample, gpt_model) to compare with the training args."""
    outdir = os.path.abspath(outdir)
    check_outdir(outdir, force)
    if gpt_cfg["vocab_size"] != vq_cfg["codebook_size"]:
        raise ConvertError(f"gpt vocab_size {gpt_cfg['vocab_size']} differs from vq codebook_size {vq_cfg['codebook_size']}")
    vq_dtype = vq_dtype or dtype

    gpt_obj = load_checkpoint(gpt_ckpt)
    gpt_sd = as_state_dict(gpt_obj, gpt_ckpt, ("model", "module", "state_dict"))
    if args_check:
        warn_on_args_mismatch(checkpoint_args(gpt_obj), gpt_cfg, *args_check)
    gpt_sd = {k: v for k, v in gpt_sd.items() if not is_dropped_gpt_key(k)}
    gpt_expected = expected_gpt_shapes(gpt_cfg)
    check_state_dict(gpt_sd, gpt_expected, f"GPT checkpoint {gpt_ckpt}",
                     f"the checkpoint looks like {describe_gpt_weights(gpt_sd)}")
    gpt_out = cast_weights(gpt_sd, gpt_expected, dtype, "GPT")

    vq_obj = load_checkpoint(vq_ckpt)
    vq_sd = as_state_dict(vq_obj, vq_ckpt, ("model",))
    vq_sd = {k: v for k, v in vq_sd.items() if not is_dropped_vq_key(k)}
    vq_expected = expected_vq_shapes(vq_cfg)
    check_state_dict(vq_sd, vq_expected, f"VQ checkpoint {vq_ckpt}", "check --downsample and the vq config")
    vq_out = cast_weights(vq_sd, vq_expected, vq_dtype, "VQ")

    config = {}
    if name:
        config["name"] = name
    config["gpt"] = {k: gpt_cfg[k] for k in GPT_DEFAULTS}
    config["vq"] = {k: vq_cfg[k] for k in VQ_DEFAULTS}

    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    # Build everything in a sibling temp dir (same filesystem) and rename it into place at the end.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(outdir)}.tmp-", dir=parent)
    try:
        meta = {"format": "pt"}
        write_safetensors(os.path.join(tmp, "gpt.safetensors"), gpt_out, meta)
        write_safetensors(os.path.join(tmp, "vq.safetensors"), vq_out, meta)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        if classes is not None:
            with open(os.path.join(tmp, "classes.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(classes) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        install_outdir(tmp, outdir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def read_config_json(path, section):
    """A config JSON file: either {"gpt": {...}, "vq": {...}} or the section's fields at the top
    level (as in the fixtures' *.config.json). Unknown fields are ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path} is not valid JSON: {e}")
    if not isinstance(d, dict):
        raise ConvertError(f"{path} is not a JSON object")
    if isinstance(d.get(section), dict):
        d = d[section]
    return d


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="convert_llamagen.py",
        description="Convert official LlamaGen GPT and VQ checkpoints (.pt) into a zipar model directory "
                    "(config.json, gpt.safetensors, vq.safetensors, classes.txt). "
                    "SECURITY: checkpoints are loaded with torch.load(weights_only=False) because training "
                    "checkpoints pickle an argparse Namespace; unpickling runs arbitrary code, so only "
                    "convert files from a source you trust.")
    p.add_argument("--gpt-ckpt", required=True, help="GPT checkpoint (.pt): weights under 'model', "
                   "'module' or 'state_dict', or a flat FSDP state dict")
    p.add_argument("--vq-ckpt", required=True, help="VQ tokenizer checkpoint (.pt), weights under 'model'")
    p.add_argument("--gpt-model", choices=list(GPT_MODELS), help="named GPT config (e.g. GPT-B)")
    p.add_argument("--image-size", type=int, default=256, choices=[256, 384, 512],
                   help="image size the GPT was trained for (default 256); not stored in the weights")
    p.add_argument("--downsample", type=int, default=16, choices=[16, 8], help="VQ downsample factor (default 16)")
    p.add_argument("--type", dest="model_type", default="c2i", choices=["c2i", "t2i"], help="default c2i")
    p.add_argument("--codebook-size", type=int, default=16384, help="VQ codebook size = GPT vocab (default 16384)")
    p.add_argument("--num-classes", type=int, default=1000, help="c2i classes (default 1000)")
    p.add_argument("--dtype", default="keep", choices=["keep", "f32", "f16", "bf16"],
                   help="dtype of the written weights (default keep: each tensor's own dtype)")
    p.add_argument("--vq-dtype", choices=["keep", "f32", "f16", "bf16"],
                   help="dtype of the VQ weights (default: same as --dtype)")
    p.add_argument("--classes", help="classes.txt source: 'imagenet' (names from the torchvision wheel, "
                   "fetched with pip), a text file with one name per line, or 'none'. "
                   "Default: imagenet for c2i with 1000 classes, else none")
    p.add_argument("--torchvision-wheel", help="use this torchvision .whl for the ImageNet names instead of pip download")
    p.add_argument("--gpt-config-json", help="JSON file whose GPT ModelArgs fields override the named config "
                   "(top level or under \"gpt\"; unknown fields are ignored)")
    p.add_argument("--vq-config-json", help="JSON file whose VQ fields override the defaults (top level or under \"vq\")")
    p.add_argument("--name", help="model name stored in config.json (default derived from the flags)")
    p.add_argument("-o", "--output", required=True, help="output model directory")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.gpt_model is None and args.gpt_config_json is None:
            raise ConvertError("pass --gpt-model (or --gpt-config-json)")
        gpt_over = read_config_json(args.gpt_config_json, "gpt") if args.gpt_config_json else None
        vq_over = read_config_json(args.vq_config_json, "vq") if args.vq_config_json else None
        gpt_cfg = gpt_config(args.gpt_model, args.image_size, args.downsample, args.model_type,
                             args.codebook_size, args.num_classes, gpt_over)
        vq_cfg = vq_config(args.downsample, args.codebook_size, vq_over)
        name = args.name
        if name is None and args.gpt_model:
            name = f"LlamaGen {args.gpt_model} {gpt_cfg['model_type']} {args.image_size}px"
        # Fail on a bad output dir or class list before the (slow) checkpoint loading.
        check_outdir(os.path.abspath(args.output), args.force)
        classes = resolve_classes(args.classes, gpt_cfg, args.torchvision_wheel)
        args_check = None if gpt_over else (args.image_size, args.downsample, args.gpt_model)
        convert(args.gpt_ckpt, args.vq_ckpt, args.output, gpt_cfg, vq_cfg, args.dtype, args.vq_dtype,
                classes, args.force, name, args_check)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
