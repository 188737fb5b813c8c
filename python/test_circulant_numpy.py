#!/usr/bin/env python3
"""Tests of circulant_numpy.py: a plain script (no pytest needed); exit status 1 on failure.

    python test_circulant_numpy.py
        unit tests: circulant / block layers against the format doc's dense expansion, conv,
        pooling, batch norm, the checkpoint reader (F32, F16, BF16), the PNG codec, all networks.

    python test_circulant_numpy.py --checkpoint CKPT --inputs PIXELS.npy --expected PRED.jsonl
        additionally compares `Model.predict` with `trainer predict --json` output: PIXELS.npy
        holds the uint8 images (N, H, W, C) that were written as the PNG files predicted,
        PRED.jsonl the trainer's JSON lines in the same order. The three options may be repeated
        (one case per checkpoint). Also from the environment: CIRCULANT_NUMPY_CHECKPOINT,
        CIRCULANT_NUMPY_INPUTS, CIRCULANT_NUMPY_EXPECTED.

    python test_circulant_numpy.py --make-inputs DIR --shape CxHxW [--count N] [--seed S]
        writes DIR/img<i>.png and DIR/pixels.npy (random images) for the comparison above.

The last line printed is `<passed> passed, <failed> failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import circulant_numpy as cn  # noqa: E402

#: Largest accepted |numpy probability - trainer probability|.
PROB_TOL = 1e-5

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def rng(seed=0):
    return np.random.default_rng(seed)


def assert_close(a, b, tol, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= tol, f"{what}: max abs difference {err:.3g} > {tol:.3g}"
    return err


# --------------------------------------------------------------------------------------------
# (a) layers against explicit references
# --------------------------------------------------------------------------------------------

# (d, k): square, d < k, d > k, odd and non-power-of-two sizes, size 1.
FC_SIZES = [(1, 1), (7, 7), (5, 12), (12, 5), (13, 30), (30, 13), (100, 37), (37, 100), (64, 64)]


@test
def circulant_matches_dense_expansion():
    g = rng(1)
    for d, k in FC_SIZES:
        n = max(d, k)
        r = g.standard_normal(n).astype(np.float32)
        signs = np.where(g.random(d) < 0.5, -1.0, 1.0).astype(np.float32)
        bias = g.standard_normal(k).astype(np.float32)
        x = g.standard_normal((3, d)).astype(np.float32)
        for s in (signs, None):
            w = cn.expanded_weight(r.astype(np.float64), s, "circulant", d, k)
            want = x.astype(np.float64) @ w.T + bias
            got = cn.circulant_forward(x, r, s, bias, d, k)
            assert_close(got, want, 1e-10, f"circulant {d}->{k} signs={s is not None}")
            got32 = cn.circulant_forward(x, r, s, bias, d, k, dtype=np.float32)
            assert_close(got32, want, 1e-4, f"circulant f32 {d}->{k}")


@test
def circulant_first_column_is_r():
    # circ(r) has r as its first column: W[:, 0] = r (signs = +1), W[0, :] = r reversed cyclically.
    r = np.arange(1.0, 6.0)
    w = cn.expanded_weight(r, None, "circulant", 5, 5)
    assert np.array_equal(w[:, 0], r) and np.array_equal(w[0], [1, 5, 4, 3, 2]), w
    e0 = np.eye(5)[:1]
    assert_close(cn.circulant_forward(e0, r, None, np.zeros(5), 5, 5), r[None], 1e-12, "e0")


@test
def block_matches_dense_expansion():
    g = rng(2)
    for b in (1, 3, 4, 7, 16):
        for d, k in FC_SIZES:
            p, q = -(-k // b), -(-d // b)
            r = g.standard_normal((p, q, b)).astype(np.float32)
            signs = np.where(g.random(d) < 0.5, -1.0, 1.0).astype(np.float32)
            bias = g.standard_normal(k).astype(np.float32)
            x = g.standard_normal((2, d)).astype(np.float32)
            for s in (signs, None):
                w = cn.expanded_weight(r.astype(np.float64), s, f"block:{b}", d, k)
                want = x.astype(np.float64) @ w.T + bias
                got = cn.block_circulant_forward(x, r, s, bias, d, k)
                assert_close(got, want, 1e-10, f"block:{b} {d}->{k} signs={s is not None}")


@test
def block_with_one_block_equals_circulant():
    g = rng(3)
    for n in (5, 8, 33):
        r = g.standard_normal(n)
        x = g.standard_normal((4, n))
        bias = g.standard_normal(n)
        a = cn.circulant_forward(x, r, None, bias, n, n)
        b = cn.block_circulant_forward(x, r.reshape(1, 1, n), None, bias, n, n)
        assert_close(a, b, 1e-10, f"n={n}")


def naive_conv(x, w, bias, stride, padding):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y + bias[None, :, None, None]


@test
def conv_matches_naive():
    g = rng(4)
    for c_in, c_out, h, w, k, p, s in [
        (3, 4, 9, 9, 3, 1, 1), (2, 3, 8, 7, 5, 0, 1), (2, 3, 8, 8, 5, 2, 1),
        (3, 2, 23, 23, 11, 2, 4), (2, 2, 10, 10, 3, 1, 2), (2, 2, 9, 9, 3, 1, 2),
    ]:
        x = g.standard_normal((2, c_in, h, w))
        wt = g.standard_normal((c_out, c_in, k, k))
        b = g.standard_normal(c_out)
        assert_close(cn.conv2d(x, wt, b, s, p), naive_conv(x, wt, b, s, p), 1e-10,
                     f"conv c{c_in}->{c_out} {h}x{w} k{k} p{p} s{s}")


@test
def max_pool_matches_naive():
    g = rng(5)
    for h, w, k, s in [(7, 7, 3, 2), (13, 13, 3, 2), (8, 9, 3, 2), (6, 5, 2, 1), (8, 8, 2, 2),
                       (9, 11, 3, 3), (55, 55, 3, 2), (5, 5, 2, 2)]:
        x = g.standard_normal((2, 3, h, w))
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        want = np.empty((2, 3, oh, ow))
        for i in range(oh):
            for j in range(ow):
                want[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
        got = cn.max_pool2d(x, k, s)
        assert np.array_equal(got, want), f"pool {h}x{w} k{k} s{s}"


@test
def batch_norm_eval_formula():
    g = rng(6)
    x = g.standard_normal((2, 4, 3, 3))
    w, b, m = g.standard_normal(4), g.standard_normal(4), g.standard_normal(4)
    v = g.random(4) + 0.1
    want = (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5) \
        * w[None, :, None, None] + b[None, :, None, None]
    assert_close(cn.batch_norm_eval(x, w, b, m, v), want, 1e-12, "batch norm")


@test
def bf16_conversion():
    vals = np.array([0.0, 1.0, -2.5, 3.140625, 1e-3, -65504.0, np.inf], dtype=np.float32)
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact for these
    back = cn._bf16_to_f32(bits)
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(back, want)
    assert np.array_equal(back[:4], vals[:4]) and back[-1] == np.inf


@test
def png_round_trip():
    g = rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in [(5, 7), (28, 28, 1), (9, 4, 3), (1, 1), (32, 32, 3)]:
            px = g.integers(0, 256, size=shape, dtype=np.uint8)
            path = os.path.join(tmp, "a.png")
            for filters in [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)]:
                cn.write_png(path, px, filters)
                back = cn.read_png(path)
                want = px if px.ndim == 3 else px[:, :, None]
                assert np.array_equal(back, want), f"PNG {shape} filters {filters}"


@test
def channel_conversion_as_image_crate():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], dtype=np.uint8)
    luma = cn._to_channels(rgb, 1)[0, :, 0]
    want = [(2126 * r + 7152 * g + 722 * b) // 10000 for r, g, b in rgb[0].astype(int)]
    assert luma.tolist() == want, (luma, want)
    grey = np.array([[[7], [9]]], dtype=np.uint8)
    assert cn._to_channels(grey, 3).tolist() == [[[7, 7, 7], [9, 9, 9]]]


@test
def eval_crop_box_as_trainer():
    small = {"input": {"channels": 1, "height": 28, "width": 28}}
    big = {"input": {"channels": 3, "height": 224, "width": 224}}
    eight = {"input": {"channels": 1, "height": 8, "width": 8}}
    assert cn.eval_crop_box(28, 28, small) == (0, 0, 28, 28)
    assert cn.exact_image_size(small) == (28, 28) and cn.exact_image_size(big) == (256, 256)
    assert cn.eval_crop_box(256, 256, big) == (16, 16, 224, 224)
    # transform.rs's test: a 16x8 image for an 8x8 input keeps x in 4..12.
    assert cn.eval_crop_box(16, 8, eight) == (4, 0, 8, 8)
    # 224x224 images are resampled (their centre 196x196 scaled up): not exact.
    assert cn.eval_crop_box(224, 224, big)[2] == 196
    with tempfile.TemporaryDirectory() as tmp:
        px = rng(14).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
        cn.write_png(os.path.join(tmp, "a.png"), px)
        got = cn.load_image(os.path.join(tmp, "a.png"), big)
        assert np.array_equal(got, px[16:240, 16:240])


@test
def preprocess_matches_trainer_formula():
    cfg = {"input": {"channels": 3, "height": 2, "width": 2,
                     "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}}
    px = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3) * 20
    x = cn.preprocess(px, cfg)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    mean, std = np.float32(cfg["input"]["mean"]), np.float32(cfg["input"]["std"])
    for c in range(3):
        scale = np.float32(1) / (np.float32(255) * std[c])
        want = px[0, :, :, c].astype(np.float32) * scale - mean[c] / std[c]
        assert np.array_equal(x[0, c], want)
    assert abs(float(x[0, 0, 0, 0]) - (0 - 0.4914) / 0.247) < 1e-6


# --------------------------------------------------------------------------------------------
# Checkpoints written here: the reader, dtypes, every network
# --------------------------------------------------------------------------------------------


def random_checkpoint_tensors(config, g):
    """Random tensors of every name and shape the config implies (signs ±1, variances > 0)."""
    out = {}
    for name, shape in cn._expected_tensors(config).items():
        if name.endswith(".signs"):
            out[name] = np.where(g.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
        elif name.endswith(".running_var"):
            out[name] = (g.random(shape) + 0.5).astype(np.float32)
        else:
            fan_in = np.prod(shape[1:]) if len(shape) > 1 else shape[0]
            if name.endswith(".r"):
                fan_in = shape[-1] * (shape[1] if len(shape) == 3 else 1)
            out[name] = (g.uniform(-1, 1, size=shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def make_config(network, heads, num_classes=10, sign_flip=True):
    c, h, w = cn.INPUT_SHAPES[network]
    fc = [p["name"] for kind, p in cn.layer_specs(network, num_classes) if kind == "fc"]
    if isinstance(heads, str):
        heads = {n: heads for n in fc}
    return {"network": network, "heads": heads, "num_classes": num_classes, "seed": 0,
            "sign_flip": sign_flip,
            "input": {"channels": c, "height": h, "width": w, "mean": [0.5] * c, "std": [0.25] * c}}


def write_checkpoint(path, tensors, config, dtype="F32", classes=None):
    """A safetensors file in the checkpoint layout, tensors stored as F32, F16 or BF16."""
    from safetensors.numpy import save_file

    meta = {"config": json.dumps(config), "format": "circulant-model/1", "dtype": dtype.lower()}
    if classes is not None:
        meta["classes"] = json.dumps(classes)
    if dtype in ("F32", "F16"):
        np_dt = np.float32 if dtype == "F32" else np.float16
        save_file({k: v.astype(np_dt) for k, v in tensors.items()}, path, metadata=meta)
        return
    # BF16 by hand (round to nearest even): header + raw little-endian u16 data.
    import struct
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        v = np.ascontiguousarray(tensors[name], dtype=np.float32)
        u = v.view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        blob = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def reference_forward(config, t, x):
    """The network forward pass written out with dense expanded FC weights and naive loops-free
    but independent code paths (np.einsum convolution via explicit patch extraction)."""
    h = x.astype(np.float64)
    for kind, p in cn.layer_specs(config["network"], config["num_classes"]):
        if kind == "conv":
            h = naive_conv(h, t[p["name"] + ".weight"].astype(np.float64),
                           t[p["name"] + ".bias"].astype(np.float64), p["stride"], p["padding"])
        elif kind == "bn":
            n = p["name"]
            s = lambda a: a.astype(np.float64)[None, :, None, None]  # noqa: E731
            h = (h - s(t[n + ".running_mean"])) / np.sqrt(s(t[n + ".running_var"]) + 1e-5) \
                * s(t[n + ".weight"]) + s(t[n + ".bias"])
        elif kind == "maxpool":
            h = cn.max_pool2d(h, p["k"], p["stride"])
        elif kind == "relu":
            h = np.maximum(h, 0)
        elif kind == "flatten":
            h = h.reshape(len(h), -1)
        elif kind == "fc":
            n, d, k = p["name"], p["d"], p["k"]
            head = config["heads"][n]
            if head == "dense":
                w = t[n + ".weight"].astype(np.float64)
            else:
                w = cn.expanded_weight(t[n + ".r"].astype(np.float64), t.get(n + ".signs"), head, d, k)
            h = h @ w.T + t[n + ".bias"]
    return h


@test
def networks_match_reference_forward():
    g = rng(8)
    cases = [
        ("mnist-cnn", {"fc1": "circulant", "fc2": "block:3"}, True),
        ("mnist-cnn", "dense", True),
        ("mlp", {"fc1": "block:48", "fc2": "circulant", "fc3": "dense"}, True),
        ("mlp", "circulant", False),
        ("cifar-cnn", {"fc1": "block:64", "fc2": "circulant"}, True),
    ]
    for network, heads, sign_flip in cases:
        cfg = make_config(network, heads, num_classes=7, sign_flip=sign_flip)
        t = random_checkpoint_tensors(cfg, g)
        model = cn.Model(config=cfg, tensors=t)
        x = g.standard_normal((2,) + cn.INPUT_SHAPES[network]).astype(np.float32)
        want = reference_forward(cfg, t, x)
        got = model.forward(x)
        assert got.shape == (2, 7) and got.dtype == np.float32
        assert_close(got, want, 1e-5 * (1 + np.abs(want).max()), f"{network} {heads}")
        p = model.predict(x)
        assert_close(p.sum(axis=1), np.ones(2), 1e-6, "softmax sums")
    # mlp takes flattened input too.
    cfg = make_config("mlp", "circulant")
    model = cn.Model(config=cfg, tensors=random_checkpoint_tensors(cfg, g))
    x = g.standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert np.array_equal(model.forward(x), model.forward(x.reshape(3, 784)))


@test
def alexnet_forward_shapes():
    # Reference convolution loops would be slow at 224x224: check that the pass runs, is
    # deterministic and that the flattened features feed fc6 (9216 = 256*6*6).
    g = rng(9)
    cfg = make_config("alexnet", {"fc6": "circulant", "fc7": "block:64", "fc8": "circulant"},
                      num_classes=5)
    t = random_checkpoint_tensors(cfg, g)
    model = cn.Model(config=cfg, tensors=t)
    x = g.standard_normal((1, 3, 224, 224)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (1, 5) and np.all(np.isfinite(y))
    # The conv stack against the naive convolution on a small crop is covered by
    # conv_matches_naive (11x11 stride 4 padding 2 included); here compare fc6's input size.
    h = x.astype(np.float64)
    for kind, p in model.layers:
        if kind == "flatten":
            break
        if kind == "conv":
            h = cn.conv2d(h, t[p["name"] + ".weight"], t[p["name"] + ".bias"], p["stride"], p["padding"])
        elif kind == "maxpool":
            h = cn.max_pool2d(h, p["k"], p["stride"])
        elif kind == "relu":
            h = np.maximum(h, 0)
    assert h.shape == (1, 256, 6, 6), h.shape


@test
def checkpoint_dtypes_and_metadata():
    g = rng(10)
    cfg = make_config("mnist-cnn", {"fc1": "circulant", "fc2": "block:4"})
    t = random_checkpoint_tensors(cfg, g)
    x = g.standard_normal((2, 1, 28, 28)).astype(np.float32)
    classes = [f"class {i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for dt, tol in [("F32", 0.0), ("F16", 5e-2), ("BF16", 2e-1)]:
            path = os.path.join(tmp, f"m-{dt}.safetensors")
            write_checkpoint(path, t, cfg, dt, classes if dt != "F32" else None)
            m = cn.load(path)
            assert m.config == cfg
            assert m.classes == (classes if dt != "F32" else None)
            for name, v in t.items():
                got = m.tensors[name]
                assert got.dtype == np.float32 and got.shape == v.shape, name
                if dt == "F32":
                    assert np.array_equal(got, v), name
                elif dt == "F16":
                    assert np.array_equal(got, v.astype(np.float16).astype(np.float32)), name
                else:  # BF16: within half an ulp of 8 significant bits
                    assert np.all(np.abs(got - v) <= np.abs(v) * 2.0 ** -8 + 1e-30), name
            y = m.forward(x)
            if ref is None:
                ref = y
            else:
                assert_close(y, ref, tol * (1 + np.abs(ref).max()), f"{dt} logits")
        # Errors that name the problem.
        bad = dict(t)
        del bad["fc1.r"]
        try:
            cn.Model(config=cfg, tensors=bad)
            raise AssertionError("missing tensor accepted")
        except ValueError as e:
            assert "fc1.r" in str(e), e
        bad = dict(t, extra=np.zeros(1, np.float32))
        try:
            cn.Model(config=cfg, tensors=bad)
            raise AssertionError("extra tensor accepted")
        except ValueError as e:
            assert "extra" in str(e), e


@test
def metadata_readable_as_documented():
    # The snippet of docs/CHECKPOINT_FORMAT.md, "Reading the file in Python".
    from safetensors import safe_open

    g = rng(11)
    cfg = make_config("mlp", "circulant")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        write_checkpoint(path, random_checkpoint_tensors(cfg, g), cfg, "F32", ["a"] * 10)
        with safe_open(path, "np") as f:
            meta = f.metadata()
            names = sorted(f.keys())
        assert json.loads(meta["config"]) == cfg
        assert json.loads(meta["classes"]) == ["a"] * 10
        assert "fc1.r" in names and "fc3.signs" in names


@test
def format_doc_python_snippets_run():
    # The code blocks of the section "Reading the file in Python", executed as written.
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                       "CHECKPOINT_FORMAT.md")
    text = open(doc, encoding="utf-8").read()
    section = text.split("## Reading the file in Python", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2, f"{len(blocks)} python blocks in the section"
    g = rng(13)
    cfg = make_config("mlp", {"fc1": "block:48", "fc2": "circulant", "fc3": "dense"})
    t = random_checkpoint_tensors(cfg, g)
    with tempfile.TemporaryDirectory() as tmp:
        f32, bf16 = os.path.join(tmp, "a.safetensors"), os.path.join(tmp, "b.safetensors")
        write_checkpoint(f32, t, cfg, "F32", [str(i) for i in range(10)])
        write_checkpoint(bf16, t, cfg, "BF16")
        env = {"path": f32}
        exec(blocks[0], env)
        assert env["config"] == cfg and env["classes"] == [str(i) for i in range(10)]
        assert set(env["tensors"]) == set(t)
        assert all(np.array_equal(env["tensors"][k], v) for k, v in t.items())
        want = cn.read_checkpoint(bf16)[0]
        for name in ("fc1.r", "fc3.weight", "fc2.signs"):
            env = {"path": bf16, "name": name}
            exec(blocks[1], env)
            assert np.array_equal(env["x"], want[name]), name
            assert np.all(np.abs(env["x"] - t[name]) <= np.abs(t[name]) * 2.0 ** -8), name


@test
def cli_runs_on_npy_and_png():
    import contextlib
    import io

    g = rng(12)
    cfg = make_config("mnist-cnn", "circulant")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        write_checkpoint(path, random_checkpoint_tensors(cfg, g), cfg, "F32", list("abcdefghij"))
        px = g.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
        pngs = []
        for i in range(2):
            pngs.append(os.path.join(tmp, f"{i}.png"))
            cn.write_png(pngs[-1], px[i])
        npy = os.path.join(tmp, "x.npy")
        np.save(npy, cn.preprocess(px, cfg))
        outs = []
        for argv in ([path, npy, "--json"], [path, "--json", "--images", *pngs]):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert cn.main(argv) == 0
            outs.append([json.loads(line) for line in buf.getvalue().splitlines()])
        assert len(outs[0]) == 2 and outs[0][0]["label"] in "abcdefghij"
        for a, b in zip(*outs):
            assert a["class"] == b["class"] and a["probabilities"] == b["probabilities"]


# --------------------------------------------------------------------------------------------
# (b) against the Rust trainer's predictions
# --------------------------------------------------------------------------------------------


def compare_with_trainer(checkpoint, inputs, expected):
    """Returns the max abs probability difference; raises AssertionError above PROB_TOL."""
    model = cn.load(checkpoint)
    pixels = np.load(inputs)
    with open(expected) as f:
        preds = [json.loads(line) for line in f if line.strip()]
    assert len(preds) == len(pixels), f"{len(preds)} predictions for {len(pixels)} images"
    c = model.input_shape[0]
    for pred, px in zip(preds, pixels):
        # The PNG the trainer read holds exactly these pixels.
        if os.path.exists(pred["file"]):
            img = cn._to_channels(cn.load_image(pred["file"], model.config), c)
            want = px if px.ndim == 3 else px[:, :, None]
            assert np.array_equal(img, want), f"{pred['file']} does not hold the .npy pixels"
    x = cn.preprocess(pixels, model.config)
    probs = model.predict(x)
    want = np.array([p["probabilities"] for p in preds], dtype=np.float64)
    err = float(np.max(np.abs(probs.astype(np.float64) - want)))
    classes = [p["class"] for p in preds]
    name = f"{model.network} {model.config['heads']}"
    print(f"    {name}: {len(preds)} images, max |p_numpy - p_trainer| = {err:.3g}")
    assert err <= PROB_TOL, f"{checkpoint}: max abs difference {err:.3g} > {PROB_TOL}"
    assert classes == [int(np.argmax(p)) for p in want], "trainer classes are not its argmax"
    # float32 arithmetic stays close too.
    p32 = cn.load(checkpoint, precision=np.float32).predict(x)
    err32 = float(np.max(np.abs(p32.astype(np.float64) - want)))
    print(f"    {name}: float32 arithmetic, max difference {err32:.3g}")
    assert err32 <= 1e-4, f"float32 arithmetic: {err32:.3g}"
    return err


def make_inputs(out_dir, shape, count, seed):
    """Random images the trainer reads without resampling: PNGs of `exact_image_size` (the
    input size, or 256x256 for 224x224 inputs) and pixels.npy with the part the model sees."""
    c, h, w = shape
    cfg = {"input": {"channels": c, "height": h, "width": w}}
    ph, pw = cn.exact_image_size(cfg)
    x0, y0, cw, ch = cn.eval_crop_box(pw, ph, cfg)
    assert (cw, ch) == (w, h) and float(x0).is_integer() and float(y0).is_integer()
    g = rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    # Mid-grey blobs plus noise: images that are neither constant nor pure noise.
    base = g.integers(30, 220, size=(count, 1, 1, c))
    noise = g.integers(-60, 61, size=(count, ph, pw, c))
    yy, xx = np.mgrid[0:ph, 0:pw]
    blob = (((yy - ph / 2) ** 2 + (xx - pw / 3) ** 2) < (min(ph, pw) / 4) ** 2)[None, :, :, None]
    px = np.clip(base + noise + 40 * blob, 0, 255).astype(np.uint8)
    paths = []
    for i in range(count):
        paths.append(os.path.join(out_dir, f"img{i}.png"))
        cn.write_png(paths[-1], px[i])
    np.save(os.path.join(out_dir, "pixels.npy"), px[:, int(y0):int(y0) + h, int(x0):int(x0) + w])
    print("\n".join(paths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", default=[])
    ap.add_argument("--inputs", action="append", default=[])
    ap.add_argument("--expected", action="append", default=[])
    ap.add_argument("--make-inputs", metavar="DIR")
    ap.add_argument("--shape", default="1x28x28", help="CxHxW for --make-inputs")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-unit", action="store_true", help="only the trainer comparison")
    args = ap.parse_args(argv)
    if args.make_inputs:
        make_inputs(args.make_inputs, tuple(int(v) for v in args.shape.split("x")), args.count,
                    args.seed)
        return 0
    env = [os.environ.get(f"CIRCULANT_NUMPY_{k}") for k in ("CHECKPOINT", "INPUTS", "EXPECTED")]
    if all(env) and not args.checkpoint:
        args.checkpoint, args.inputs, args.expected = [env[0]], [env[1]], [env[2]]
    if not (len(args.checkpoint) == len(args.inputs) == len(args.expected)):
        ap.error("give --checkpoint, --inputs and --expected the same number of times")

    tests = [] if args.skip_unit else list(TESTS)
    for ck, inp, exp in zip(args.checkpoint, args.inputs, args.expected):
        def case(ck=ck, inp=inp, exp=exp):
            return compare_with_trainer(ck, inp, exp)
        case.__name__ = f"trainer_comparison[{os.path.basename(os.path.dirname(ck)) or ck}]"
        tests.append(case)
    passed = failed = 0
    worst = None
    for t in tests:
        try:
            r = t()
            if t.__name__.startswith("trainer_comparison"):
                worst = r if worst is None else max(worst, r)
            passed += 1
            print(f"ok    {t.__name__}")
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL  {t.__name__}")
            traceback.print_exc(file=sys.stdout)
    if worst is not None:
        print(f"max abs probability difference against the trainer: {worst:.3g} "
              f"(tolerance {PROB_TOL:g})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
