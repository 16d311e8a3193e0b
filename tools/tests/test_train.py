"""Tests for the default-model training pipeline (tools/train): the shapes renderer and grammar,
parity of the torch modules with the official LlamaGen fixtures, and `train.py --tiny` end to end.

    python3 -m pytest -q tools/tests/test_train.py
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tools", "train"))

import shapes  # noqa: E402

FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "llamagen")
if not os.path.isdir(FIXTURES):
    FIXTURES = "/work/shared/fixtures/llamagen"


# ---------------------------------------------------------------------------------------------
# Renderer and grammar

def test_renderer_rules_hold_on_seeded_samples():
    rng = np.random.default_rng(1234)
    kinds = {"one": 0, "two": 0, "bg": 0}
    rels = set()
    for _ in range(200):
        sc = shapes.sample_scene(rng, 64)
        img = shapes.render(sc)
        shapes.check_scene(sc, img)
        kinds["two" if len(sc["objects"]) == 2 else "one"] += 1
        kinds["bg"] += sc["named_background"]
        if sc["relation"]:
            rels.add(sc["relation"])
    assert kinds["one"] > 40 and kinds["two"] > 80 and kinds["bg"] > 60
    assert rels == set(shapes.RELATIONS)


def test_renderer_is_seeded():
    a = shapes.sample_scene(np.random.default_rng(5))
    b = shapes.sample_scene(np.random.default_rng(5))
    assert a == b
    assert (shapes.render(a) == shapes.render(b)).all()


def test_scene_for_a_given_prompt():
    rng = np.random.default_rng(0)
    for p in ["a red circle above a blue square", "a green triangle left of a purple diamond on a white background",
              "a gray diamond", "a black square right of a black circle on a yellow background",
              "a white triangle below a cyan triangle"]:
        spec = shapes.parse_prompt(p)
        for _ in range(5):
            sc = shapes.sample_scene(rng, 64, spec={**spec, "named_background": spec["background"] is not None})
            assert sc["prompt"] == p
            shapes.check_scene(sc, shapes.render(sc))


def _first_object_in_raster_order(sc, img):
    """Index in sc["objects"] of the object that owns the first non-background pixel, row by row."""
    bg = np.array(shapes.PALETTE[sc["background"]])
    ys, xs = np.nonzero((img != bg).any(-1))
    first = np.lexsort((xs, ys))[0]
    colour = tuple(img[ys[first], xs[first]])
    owners = [i for i, o in enumerate(sc["objects"])
              if tuple(shapes.PALETTE[o["color"]]) == colour
              and shapes.shape_mask(o["shape"], o["x0"], o["y0"], o["s"], sc["size"])[ys[first], xs[first]]]
    assert len(owners) == 1
    return owners[0]


def test_left_first_scenes_begin_the_left_object_first():
    """With left_first, raster order reaches the left object of a side-by-side pair first (as it
    reaches the upper one of an above/below pair); the rules still hold, and the flag changes
    nothing for the other scenes."""
    firsts = {True: [], False: []}
    for left_first in (True, False):
        rng = np.random.default_rng(77)
        for _ in range(150):
            spec = shapes.sample_prompt_spec(rng, p_two=1.0)
            sc = shapes.sample_scene(rng, 64, spec=spec, left_first=left_first)
            img = shapes.render(sc)
            shapes.check_scene(sc, img)
            if sc["relation"] in ("left of", "right of"):
                left = 0 if sc["relation"] == "left of" else 1
                firsts[left_first].append(_first_object_in_raster_order(sc, img) == left)
    assert len(firsts[True]) > 50 and all(firsts[True])
    # without it, about half of the pairs begin with the right object
    assert 0.3 < np.mean(firsts[False]) < 0.7
    a = shapes.sample_scene(np.random.default_rng(9), 64, spec=shapes.parse_prompt("a red circle above a blue square"))
    b = shapes.sample_scene(np.random.default_rng(9), 64, spec=shapes.parse_prompt("a red circle above a blue square"),
                            left_first=True)
    assert a == b


def test_check_scene_catches_broken_rules():
    rng = np.random.default_rng(3)
    sc = shapes.sample_scene(rng, 64, spec={**shapes.parse_prompt("a red circle left of a blue square"),
                                            "named_background": False})
    img = shapes.render(sc)
    bad = dict(sc, relation="right of", prompt="a red circle right of a blue square")
    with pytest.raises(AssertionError):
        shapes.check_scene(bad, img)
    noisy = img.copy()
    noisy[0, 0] = (1, 2, 3)
    with pytest.raises(AssertionError):
        shapes.check_scene(sc, noisy)


def test_prompt_grammar_parse():
    p = shapes.parse_prompt("a green triangle left of a purple diamond on a white background")
    assert p == {"objects": [("green", "triangle"), ("purple", "diamond")], "relation": "left of",
                 "background": "white"}
    assert shapes.parse_prompt("A  Red CIRCLE") == {"objects": [("red", "circle")], "relation": None,
                                                   "background": None}
    assert shapes.parse_prompt("a blue square on a yellow background")["background"] == "yellow"
    for bad in ["a red", "red circle", "a red circle left a blue square", "a pink circle", "a red circle on a blue",
                "a red circle above a blue square above a green diamond", "the red circle", ""]:
        with pytest.raises(ValueError):
            shapes.parse_prompt(bad)
    # make_prompt and parse_prompt round-trip; every prompt fits cls_token_num and the vocabulary
    rng = np.random.default_rng(9)
    vocab = set(shapes.vocabulary()[1:])
    for _ in range(300):
        spec = shapes.sample_prompt_spec(rng)
        text = shapes.make_prompt(spec["objects"], spec["relation"],
                                  spec["background"] if spec["named_background"] else None)
        back = shapes.parse_prompt(text)
        assert back["objects"] == spec["objects"] and back["relation"] == spec["relation"]
        assert len(text.split()) <= shapes.MAX_WORDS and set(text.split()) <= vocab
    longest = "a green triangle left of a purple diamond on a white background"
    assert len(longest.split()) == shapes.MAX_WORDS


def test_vocabulary_and_words_json(tmp_path):
    v = shapes.vocabulary()
    assert v[0] == "<pad>" and len(v) == len(set(v)) and all(w == w.lower() for w in v)
    out = tmp_path / "words.json"
    shapes.main(["--words", str(out)])
    g = json.loads(out.read_text())
    assert g["words"] == v[1:] and g["colors"]["red"] == [220, 40, 40] and g["shapes"] == shapes.SHAPES


# ---------------------------------------------------------------------------------------------
# Parity with the official LlamaGen modules (fixtures in shared/)

def read_st(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dt[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


needs_fixtures = pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="no LlamaGen fixtures")


def load_t2i_fixture():
    """The official tiny t2i GPT as a model.Transformer (eval mode) and its io tensors, as torch."""
    import torch
    from model import GPTArgs, Transformer
    cfg = json.load(open(os.path.join(FIXTURES, "gpt_t2i_tiny.config.json")))
    args = GPTArgs(**{k: cfg[k] for k in ["dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier",
                                          "rope_base", "norm_eps", "vocab_size", "block_size", "num_classes",
                                          "class_dropout_prob", "cls_token_num", "model_type", "caption_dim"]})
    m = Transformer(args).eval()
    w = {k: torch.from_numpy(v.copy()) for k, v in read_st(os.path.join(FIXTURES, "gpt_t2i_tiny.weights.safetensors")).items()}
    m.load_state_dict(w, strict=True)
    io = {k: torch.from_numpy(v.copy()) for k, v in read_st(os.path.join(FIXTURES, "gpt_t2i_tiny.io.safetensors")).items()}
    return m, io


@needs_fixtures
def test_gpt_t2i_matches_official_fixture():
    import torch
    from model import Transformer
    m, io = load_t2i_fixture()
    assert torch.allclose(m.freqs_cis, io["freqs_cis"], atol=1e-6)
    mask = io["input.emb_mask"].bool()
    S = 120 + 64
    assert (Transformer.build_mask(mask, S)[0, 0] == io["out.attn_mask_generate"].bool()).all()
    with torch.no_grad():
        logits, _ = m(io["input.tokens"], io["input.caption_embs"], mask)
        assert (logits - io["out.logits_full_from_last_cond"]).abs().max() < 1e-4
        logits_u, _ = m(io["input.tokens"], io["input.caption_embs"], mask, force_drop_ids=torch.ones(1))
        assert (logits_u - io["out.logits_full_uncond_from_last_cond"]).abs().max() < 1e-4
        # cached generation with CFG 7.5; top_k=1 is greedy
        toks = m.generate(io["input.caption_embs"], mask, cfg_scale=7.5, top_k=1)
    assert (toks == io["out.greedy_tokens_cfg7.5"]).all()


@needs_fixtures
def test_vq_decoder_matches_official_fixture():
    import torch
    from model import VQArgs, VQModel
    vq = VQModel(VQArgs(codebook_size=512, codebook_embed_dim=8, decoder_ch_mult=[1, 1, 2, 2], z_channels=32, ch=32,
                        num_res_blocks=2)).eval()
    w = {k: torch.from_numpy(v.copy()) for k, v in read_st(os.path.join(FIXTURES, "vq_tiny.weights.safetensors")).items()}
    vq.load_state_dict(w, strict=True)  # the fixture holds exactly the decode path
    assert set(vq.export_state_dict()) == set(w)
    io = read_st(os.path.join(FIXTURES, "vq_tiny.io.safetensors"))
    with torch.no_grad():
        img = vq.decode_code(torch.from_numpy(io["input.codes"].copy()), 8)
    assert np.abs(img.numpy() - io["out.image"]).max() < 1e-4
    px = (127.5 * img + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(px.astype(int) - io["out.image_uint8_hwc"].astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------
# train.py --tiny end to end

def test_train_tiny_end_to_end():
    import torch
    sys.path.insert(0, os.path.join(REPO, "tools"))
    from convert_llamagen import expected_gpt_shapes, expected_vq_shapes
    with tempfile.TemporaryDirectory() as tmp:
        out, work = os.path.join(tmp, "models", "tiny"), os.path.join(tmp, "work")
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "train.py"), "--tiny", "-o", out,
                            "--work", work, "--threads", "1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "gpt step" in r.stdout and "dec step" in r.stdout and "codebook:" in r.stdout and os.path.exists(os.path.join(work, "train.log"))
        assert sorted(os.listdir(out)) == ["config.json", "gpt.safetensors", "grammar.json", "text.safetensors",
                                          "text_vocab.txt", "vq.safetensors"]
        assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".")], "temp dirs left behind"
        cfg = json.load(open(os.path.join(out, "config.json")))
        g, v = cfg["gpt"], cfg["vq"]
        assert g["model_type"] == "t2i" and g["vocab_size"] == v["codebook_size"] and v["codebook_l2_norm"] is True
        assert set(cfg["sampling"]) == {"cfg_scale", "top_k", "top_p", "temperature"}
        held = cfg["training"]["gpt_heldout_loss"]  # cross-entropy of a 32-code vocabulary: below ln 32 + slack
        assert 0 < held < 5 and "held-out loss" in r.stdout
        assert all((v["ch"] * m) % 32 == 0 for m in v["decoder_ch_mult"])
        # key sets and shapes as the converter (and zipar) expect, with cls_token_num rows of uncond_embedding
        gpt = read_st(os.path.join(out, "gpt.safetensors"))
        exp = expected_gpt_shapes({**g, "cls_token_num": 120})
        exp["cls_embedding.uncond_embedding"] = [g["cls_token_num"], g["caption_dim"]]
        assert {k: list(a.shape) for k, a in gpt.items()} == exp
        vqw = read_st(os.path.join(out, "vq.safetensors"))
        assert {k: list(a.shape) for k, a in vqw.items()} == expected_vq_shapes(v)
        vocab = open(os.path.join(out, "text_vocab.txt")).read().split("\n")
        vocab = vocab[:-1] if vocab[-1] == "" else vocab
        assert vocab == shapes.vocabulary()
        text = read_st(os.path.join(out, "text.safetensors"))
        assert sorted(text) == ["context_next.weight", "context_prev.weight", "embedding.weight", "position_embedding.weight"]
        assert text["embedding.weight"].shape == (len(vocab), g["caption_dim"])
        assert text["position_embedding.weight"].shape == (g["cls_token_num"], g["caption_dim"])
        assert text["context_prev.weight"].shape == text["context_next.weight"].shape == (g["caption_dim"], g["caption_dim"])
        # loadable, and it generates an image
        from train import load_model_dir, sample_images
        config, gm, vm, tm = load_model_dir(out)
        imgs = sample_images(config, gm, vm, tm, ["a red circle above a blue square"], (2.0, 1.0, 0, 1.0), 0)
        assert imgs.shape == (1, cfg["image_size"], cfg["image_size"], 3) and imgs.dtype == np.uint8
        # --resume after completion reuses the checkpoints
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "train.py"), "--tiny", "-o", out,
                            "--work", work, "--resume", "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "(resumed)" in r.stdout and "gpt: resuming at step" in r.stdout


def test_train_dataset_extends_to_what_a_fresh_run_makes():
    """--resume with a larger --dataset extends tokens.npz instead of rebuilding it, and the extended
    set is, sequence for sequence, the one a fresh run of that size makes."""
    train = os.path.join(REPO, "tools", "train", "train.py")
    with tempfile.TemporaryDirectory() as tmp:
        w1, w2 = os.path.join(tmp, "w1"), os.path.join(tmp, "w2")
        for args in (["--work", w1, "--only", "codebook,tokens", "--dataset", "20"],
                     ["--work", w1, "--resume", "--only", "tokens", "--dataset", "50"],
                     ["--work", w2, "--only", "codebook,tokens", "--dataset", "50"]):
            r = subprocess.run([sys.executable, train, "--tiny", "-o", os.path.join(tmp, "m")] + args,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            if "--resume" in args:
                assert "(30 new)" in r.stdout, r.stdout[-2000:]
        a, b = np.load(os.path.join(w1, "tokens.npz")), np.load(os.path.join(w2, "tokens.npz"))
        assert len(a["tokens"]) == 50
        for k in ("tokens", "ids", "mask"):
            assert np.array_equal(a[k], b[k]), k
        # a smaller --dataset trains on the first sequences and leaves the file as it is
        r = subprocess.run([sys.executable, train, "--tiny", "-o", os.path.join(tmp, "m"), "--work", w1, "--resume",
                            "--only", "tokens", "--dataset", "10"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "training on the first 10" in r.stdout, r.stdout[-2000:]
        assert len(np.load(os.path.join(w1, "tokens.npz"))["tokens"]) == 50
        # a file made before left_first (no such key) is not extended with scenes of the other layout
        path = os.path.join(w1, "tokens.npz")
        old = {k: v for k, v in np.load(path).items() if k != "left_first"}
        np.savez(path, **old)
        r = subprocess.run([sys.executable, train, "--tiny", "-o", os.path.join(tmp, "m"), "--work", w1, "--resume",
                            "--only", "tokens", "--dataset", "60"], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "left_first=False" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
        assert len(np.load(path)["tokens"]) == 50


def test_train_init_from_a_model_directory():
    """--init-from continues training from an exported model (no checkpoints in --work): the rebuilt
    codebook is checked against the model's decoder, the step count goes on from the model's, and a
    model of another architecture is refused with a message."""
    from train import DEFAULT_SAMPLING
    train = os.path.join(REPO, "tools", "train", "train.py")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "out")
        r = subprocess.run([sys.executable, train, "--tiny", "-o", src, "--work", os.path.join(tmp, "w1"), "--no-tune"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        steps = json.load(open(os.path.join(src, "config.json")))["training"]["gpt_steps"]
        cfg = json.load(open(os.path.join(src, "config.json")))
        cfg["sampling"] = {"cfg_scale": 2.5, "temperature": 1.0, "top_k": 0, "top_p": 0.8}  # as a tune might pick
        cfg["attention"] = "drawn"  # a model trained for the drawn attention keeps training for it
        json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
        work2 = os.path.join(tmp, "w2")
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work2, "--init-from", src,
                            "--gpt-steps", "2", "--gpt-lr", "0.02", "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"GPT at step {steps}" in r.stdout and f"resuming at step {steps} (schedule from step {steps})" in r.stdout
        assert "dec step" not in r.stdout, "the decoder comes from the model directory"
        assert json.load(open(os.path.join(out, "config.json")))["training"]["gpt_steps"] == steps + 2
        # without a tune phase the export keeps the source model's sampling
        assert json.load(open(os.path.join(out, "config.json")))["sampling"] == cfg["sampling"]
        assert "drawn attention" in r.stdout and json.load(open(os.path.join(out, "config.json")))["attention"] == "drawn"
        # the warm start's decoder is the model's, bit for bit
        a, b = read_st(os.path.join(src, "vq.safetensors")), read_st(os.path.join(out, "vq.safetensors"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        # --resume continues the warm-started schedule
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work2, "--resume", "--gpt-steps", "3",
                            "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and f"(schedule from step {steps})" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        # ... at the peak rate --init-from set (0.02; the default 1e-3 would keep every rate below 1e-3)
        rates = [float(l.split(" lr ")[1].split()[0]) for l in r.stdout.splitlines() if "gpt step" in l]
        assert rates and max(rates) > 1.5e-3, r.stdout[-2000:]
        assert json.load(open(os.path.join(out, "config.json")))["training"]["gpt_steps"] == steps + 3
        # ... and its export keeps the source model's sampling too
        assert json.load(open(os.path.join(out, "config.json")))["sampling"] == cfg["sampling"]
        # a GPT trained from scratch in that work dir (--only gpt, no --resume) drops it
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work2, "--only", "gpt", "--gpt-steps",
                            "1", "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert not os.path.exists(os.path.join(work2, "sampling.json"))
        assert json.load(open(os.path.join(out, "config.json")))["sampling"] == DEFAULT_SAMPLING
        # another architecture is refused
        cfg = json.load(open(os.path.join(src, "config.json")))
        cfg["gpt"]["n_layer"] += 1
        json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", os.path.join(tmp, "w3"),
                            "--init-from", src, "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "--init-from" in r.stderr and "gpt config" in r.stderr, r.stderr[-2000:]
        r = subprocess.run([sys.executable, train, "--tiny", "--init-from", src, "--resume"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "pick one" in r.stderr


def test_grow_layers_keeps_the_function_and_trains_the_new_blocks():
    """grow_layers deepens a GPT without changing its output (new blocks start as the identity), and
    the new blocks' zeroed output matrices get gradients, so training can use them."""
    import torch
    from model import GPTArgs, Transformer
    from train import grow_layers
    torch.manual_seed(0)
    args = GPTArgs(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=40, block_size=16, num_classes=1,
                   class_dropout_prob=0.0, cls_token_num=4, caption_dim=8)
    small = Transformer(args)
    for p in small.parameters():  # no zero matrices, so a wrong copy would show
        torch.nn.init.normal_(p, std=0.2)
    big = grow_layers(small, GPTArgs(**{**args.__dict__, "n_layer": 4}))
    assert len(big.layers) == 4
    idx = torch.randint(0, 40, (2, 16))
    cap, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    small.eval(), big.eval()
    with torch.no_grad():
        a, _ = small(idx[:, :-1], cap, mask)
        b, _ = big(idx[:, :-1], cap, mask)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.equal(big.layers[2].attention.wqkv.weight, small.layers[1].attention.wqkv.weight)
    assert not big.layers[3].feed_forward.w2.weight.any()
    big.train()
    _, loss = big(idx[:, :-1], cap, mask, targets=idx)
    loss.backward()
    assert big.layers[3].feed_forward.w2.weight.grad.abs().sum() > 0
    assert big.layers[3].attention.wo.weight.grad.abs().sum() > 0


def test_train_init_from_deepens_with_gpt_layers():
    """--init-from with --gpt-layers trains a deeper GPT from a shallower model directory; the
    exported config has the new depth, and --resume without the flag keeps it."""
    train = os.path.join(REPO, "tools", "train", "train.py")
    with tempfile.TemporaryDirectory() as tmp:
        src, out, work = os.path.join(tmp, "src"), os.path.join(tmp, "out"), os.path.join(tmp, "w2")
        r = subprocess.run([sys.executable, train, "--tiny", "-o", src, "--work", os.path.join(tmp, "w1"), "--no-tune"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work, "--init-from", src,
                            "--gpt-layers", "3", "--gpt-steps", "2", "--no-tune"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "grown from 1 to 3 layers" in r.stdout
        assert json.load(open(os.path.join(out, "config.json")))["gpt"]["n_layer"] == 3
        assert "layers.2.attention.wo.weight" in read_st(os.path.join(out, "gpt.safetensors"))
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work, "--resume", "--gpt-steps", "3",
                            "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "has 3 layers" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        assert json.load(open(os.path.join(out, "config.json")))["gpt"]["n_layer"] == 3
        r = subprocess.run([sys.executable, train, "--tiny", "--gpt-layers", "0"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "--gpt-layers" in r.stderr


def test_train_zipar_share_and_windows_flags():
    """--zipar-share and --zipar-windows replace the config's ZipAR-visibility mix (recorded in the
    exported config.json) and reject values a run could not use."""
    train = os.path.join(REPO, "tools", "train", "train.py")
    with tempfile.TemporaryDirectory() as d:
        out, work = os.path.join(d, "m"), os.path.join(d, "w")
        r = subprocess.run([sys.executable, train, "--tiny", "-o", out, "--work", work, "--gpt-steps", "2", "--no-tune",
                            "--zipar-share", "1", "--zipar-windows", "2,2,3"], capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        info = json.load(open(os.path.join(out, "config.json")))["training"]
        assert info["zipar_share"] == 1 and info["zipar_windows"] == [2, 2, 3]
    for flags, word in ((["--zipar-share", "1.5"], "--zipar-share"), (["--zipar-windows", "2,x"], "--zipar-windows"),
                        (["--zipar-windows", "8"], "--zipar-windows"), (["--zipar-windows", "0"], "--zipar-windows")):
        r = subprocess.run([sys.executable, train, "--tiny", *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and word in r.stderr, (flags, r.stderr[-500:])


def test_text_features_count_word_positions_from_the_first_word():
    import torch
    from train import TextEmbedding, encode_prompt, WORD_ID
    torch.manual_seed(0)
    t = TextEmbedding(len(WORD_ID), 8, 12)
    with torch.no_grad():
        t.position_embedding.weight.normal_()
    ids, mask = encode_prompt("a red circle", 12)
    f = t(torch.tensor([ids]), torch.tensor([mask]))[0]
    assert torch.all(f[:9] == 0)  # pad rows
    for i, w in enumerate(["a", "red", "circle"]):
        want = t.embedding.weight[WORD_ID[w]] + t.position_embedding.weight[i]
        assert torch.allclose(f[9 + i], want)
    # The GPT's image tokens average the caption rows with equal weight after a nonlinear projection:
    # without positions that average cannot tell which colour goes with which shape, with them it can.
    a, ma = encode_prompt("a red circle left of a blue square", 12)
    b, mb = encode_prompt("a blue circle left of a red square", 12)
    ids, masks = torch.tensor([a, b]), torch.tensor([ma, mb])
    seen = lambda f: torch.nn.functional.gelu(f).sum(1)
    fa, fb = seen(t(ids, masks))
    assert not torch.allclose(fa, fb, atol=1e-3)
    with torch.no_grad():
        t.position_embedding.weight.zero_()
    fa, fb = seen(t(ids, masks))
    assert torch.allclose(fa, fb, atol=1e-5)


def test_text_context_adds_neighbour_rows():
    import torch
    from train import TextEmbedding, encode_prompt, WORD_ID
    torch.manual_seed(1)
    t = TextEmbedding(len(WORD_ID), 4, 6)
    ids, mask = encode_prompt("a red circle", 6)
    ids, mask = torch.tensor([ids]), torch.tensor([mask])
    with torch.no_grad():
        t.position_embedding.weight.normal_()
        t.context_prev.weight.normal_()
        t.context_next.weight.normal_()
    rows = (t.embedding.weight[ids[0]] + t.position_embedding.weight[(torch.cumsum(mask[0].long(), 0) - 1).clamp(min=0)]) * mask[0, :, None]
    f = t(ids, mask)[0]
    assert torch.all(f[:3] == 0)  # pad rows stay zero
    for i in range(3, 6):  # word rows: own + W_prev row(i-1) + W_next row(i+1); the pad row before is zero
        want = rows[i] + t.context_prev.weight @ rows[i - 1] + (t.context_next.weight @ rows[i + 1] if i < 5 else 0)
        assert torch.allclose(f[i], want, atol=1e-6)
    # Without positions, the image tokens' view (a per-row nonlinearity summed over the rows) of
    # "a green circle left of a orange diamond" and of the colours swapped is the same bag of words;
    # with context it is not: each shape row carries its colour.
    a, ma = encode_prompt("a green circle left of a orange diamond", 12)
    b, mb = encode_prompt("a orange circle left of a green diamond", 12)
    ids, masks = torch.tensor([a, b]), torch.tensor([ma, mb])
    seen = lambda f: torch.nn.functional.gelu(f).sum(1)
    t2 = TextEmbedding(len(WORD_ID), 8, 12)
    fa, fb = seen(t2(ids, masks))
    assert torch.allclose(fa, fb, atol=1e-5)
    with torch.no_grad():
        t2.context_prev.weight.normal_()
    fa, fb = seen(t2(ids, masks))
    assert not torch.allclose(fa, fb, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# binarize.py: the binarized (w1) variant

def test_binarizer_grid_estimator_matches_the_official_per_weight_form():
    import torch
    from binarize import Binarizer
    torch.manual_seed(0)
    exact, grid = Binarizer(exact=True), Binarizer(bins=1 << 15)
    with torch.no_grad():
        for p in exact.net.parameters():
            p.mul_(3)  # away from the near-linear start, so the gate and tanh both matter
    grid.load_state_dict(exact.state_dict())
    w = torch.randn(48, 80) * 0.05
    g = torch.randn(48, 80)
    grads = []
    for m in (exact, grid):
        x = w.clone().requires_grad_()
        out = m(x)
        assert torch.equal(out, torch.where(w >= 0, 1.0, -1.0))  # forward: exactly the bits
        (out * g).sum().backward()
        grads.append((x.grad.clone(), [p.grad.clone() for p in m.net.parameters()]))
    (gx0, gp0), (gx1, gp1) = grads
    assert gx0.abs().max() > 0.1
    assert (gx0 - gx1).abs().max() < 1e-3 * gx0.abs().max()
    for a, b in zip(gp0, gp1):
        assert (a - b).norm() < 1e-3 * a.norm()


def test_pack_bits_layout_and_round_trip():
    import torch
    from binarize import pack_bits, unpack_bits
    bits = torch.zeros(2, 16, dtype=torch.bool)
    bits[0, 0] = bits[0, 9] = bits[1, 7] = True
    assert pack_bits(bits).tolist() == [[1, 2], [128, 0]]  # column 8c+t -> bit t of byte c
    r = torch.rand(5, 64) > 0.5
    assert torch.equal(unpack_bits(pack_bits(r), 64), r)


def test_binarize_tiny_end_to_end():
    import torch
    from binarize import BINARY_LINEARS, unpack_bits
    with tempfile.TemporaryDirectory() as tmp:
        base, work = os.path.join(tmp, "tiny"), os.path.join(tmp, "work")
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "train.py"), "--tiny", "-o", base,
                            "--work", work, "--no-tune"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        out = os.path.join(tmp, "tiny-w1")
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "binarize.py"), "--tiny", "--base", base,
                            "-o", out, "--work", os.path.join(tmp, "bwork"), "--data", work],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "binarize step 3/3" in r.stdout and "exported EMA weights at step 3" in r.stdout
        cfg = json.load(open(os.path.join(out, "config.json")))
        assert cfg["quant"]["scheme"] == "w1" and cfg["training"]["binarize"]["steps"] == 3
        g = read_st(os.path.join(out, "gpt.safetensors"))
        f = read_st(os.path.join(base, "gpt.safetensors"))
        n_layer = cfg["gpt"]["n_layer"]
        for i in range(n_layer):
            for name in BINARY_LINEARS:
                p = f"layers.{i}.{name}"
                n, k = f[p + ".weight"].shape
                assert p + ".weight" not in g
                assert g[p + ".qweight"].dtype == np.uint8 and g[p + ".qweight"].shape == (n, k // 8)
                assert g[p + ".wscales8"].dtype == np.float32 and g[p + ".wscales8"].shape == (n,)
                assert (g[p + ".wscales8"] > 0).all()
                bits = unpack_bits(torch.from_numpy(g[p + ".qweight"].copy()), k)
                assert 0.2 < bits.float().mean() < 0.8  # signs of centred rows: balanced, not all one way
        # everything else is the float model's tensor set, F16
        floats = {k for k in f if not any(k.startswith(f"layers.{i}.{n}.") for i in range(n_layer) for n in BINARY_LINEARS)}
        assert floats <= set(g) and all(g[k].dtype == np.float16 for k in floats)
        # resume continues from the checkpoint
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "binarize.py"), "--tiny", "--base", base,
                            "-o", out, "--work", os.path.join(tmp, "bwork"), "--data", work, "--resume"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "resuming at step 3" in r.stdout, r.stderr[-2000:]
        # --sab: trained with softmax-aware attention binarization, and the config says so for zipar
        sab = os.path.join(tmp, "tiny-w1-sab")
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train", "binarize.py"), "--tiny", "--sab", "--base", base,
                            "-o", sab, "--work", os.path.join(tmp, "bwork-sab"), "--data", work],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert json.load(open(os.path.join(sab, "config.json")))["gpt"]["attention_binarization"] == "sab"
        assert "attention_binarization" not in cfg["gpt"]


def test_sab_attention_is_the_softmax_attention_with_binarized_probabilities(monkeypatch):
    import torch
    import binarize
    from model import GPTArgs, Transformer
    torch.manual_seed(0)
    args = GPTArgs(dim=32, n_layer=1, n_head=2, n_kv_head=1, multiple_of=32, vocab_size=16, block_size=16,
                   num_classes=1, cls_token_num=3, caption_dim=8)
    ref = Transformer(args).eval()
    with torch.no_grad():
        ref.output.weight.normal_()
    sab = Transformer(args).eval()
    sab.load_state_dict(ref.state_dict())
    binarize.use_sab(sab)
    idx, cap, m = torch.randint(0, 16, (2, 5)), torch.randn(2, 3, 8), torch.tensor([[True] * 3, [False, True, True]])
    want, _ = ref(idx, cap, m)
    # identity in place of the binarization: exactly LlamaGen's attention
    monkeypatch.setattr(binarize.SoftmaxAwareBinarize, "apply", staticmethod(lambda p: p))
    got, _ = sab(idx, cap, m)
    assert torch.allclose(got, want, atol=1e-5)
    monkeypatch.undo()
    binar, _ = sab(idx, cap, m)
    assert not torch.allclose(binar, want, atol=1e-3)
    p = torch.softmax(torch.randn(4, 7), -1)
    b = binarize.SoftmaxAwareBinarize.apply(p)
    assert torch.equal(b, (p >= 0.25 * p.amax(-1, keepdim=True)).float()) and (b.sum(-1) >= 1).all()
