#!/usr/bin/env python3
"""Inference for circulant-model checkpoints with numpy and safetensors only (no torch).

The checkpoint layout and the layer order of the four networks (mnist-cnn, mlp, cifar-cnn,
alexnet) are described in docs/CHECKPOINT_FORMAT.md; this module follows that document (and the
Rust code in circulant-model/src/networks.rs it was written from).

Library use::

    import circulant_numpy as cn
    model = cn.load("runs/x/model.safetensors")
    model.config            # the config JSON as a dict
    model.classes           # class names from metadata key "classes", or None
    x = cn.preprocess(pixels, model.config)   # uint8 (N, H, W, C) or (N, C, H, W) -> float32 NCHW
    logits = model.forward(x)                 # (N, num_classes) float32
    probs = model.predict(x)                  # softmax of the logits

`forward` takes inputs that are already normalised (as the Rust `Model::forward`). It computes in
float64 by default (float32 inputs and weights, float64 arithmetic), which keeps it within about
1e-6 of the Rust f32 output; pass `precision=np.float32` to `load` for float32 arithmetic.

Command line::

    python circulant_numpy.py CHECKPOINT IMAGES.npy            # normalised float (N, C, H, W)
    python circulant_numpy.py CHECKPOINT --images a.png b.png  # PNG files (8-bit)
    python circulant_numpy.py CHECKPOINT --json --images a.png # JSON lines like `trainer predict`

`trainer predict` scales an image so that its shorter side is `size / crop_pct` and takes the
centre `size x size` crop (`crop_pct` is 1 for mnist/cifar inputs, 0.875 for alexnet's 224).
PNG files it does not resample (28x28 / 32x32 for the small networks; 256x256 for alexnet, whose
centre 224x224 it keeps) are read here exactly as the trainer reads them (8-bit grey/RGB, with or
without alpha; a zlib-only decoder). Other images need Pillow and are resized with its bilinear
filter, which approximates but does not reproduce the trainer's resize bit for bit.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Model",
    "load",
    "layer_specs",
    "circulant_forward",
    "block_circulant_forward",
    "expanded_weight",
    "preprocess",
    "read_png",
    "write_png",
    "softmax",
    "BN_EPS",
]

#: Batch-norm epsilon (PyTorch's default, `BatchNorm2d::EPS` in batch_norm.rs).
BN_EPS = 1e-5

# --------------------------------------------------------------------------------------------
# Network descriptions (a transcription of circulant-model/src/networks.rs)
# --------------------------------------------------------------------------------------------


def _conv(name, c_in, c_out, k, stride=1, padding=0):
    return ("conv", dict(name=name, c_in=c_in, c_out=c_out, k=k, stride=stride, padding=padding))


def _conv3(name, c_in, c_out):
    return _conv(name, c_in, c_out, 3, 1, 1)


def _bn(name, c):
    return ("bn", dict(name=name, c=c))


def _fc(name, d, k):
    return ("fc", dict(name=name, d=d, k=k))


_POOL2 = ("maxpool", dict(k=2, stride=2))
_POOL3S2 = ("maxpool", dict(k=3, stride=2))
_DROP = ("dropout", dict(p=0.5))
_RELU = ("relu", {})
_FLATTEN = ("flatten", {})

#: Input channels, height, width of each network.
INPUT_SHAPES = {
    "mnist-cnn": (1, 28, 28),
    "mlp": (1, 28, 28),
    "cifar-cnn": (3, 32, 32),
    "alexnet": (3, 224, 224),
}


def layer_specs(network: str, num_classes: int) -> list[tuple[str, dict]]:
    """The forward pass of `network` as a list of `(kind, params)`."""
    if network == "mnist-cnn":
        return [
            _conv("conv1", 1, 32, 5), _POOL2, _RELU,  # 28 -> 24 -> 12
            _conv("conv2", 32, 64, 5), _POOL2, _RELU,  # -> 8 -> 4
            _FLATTEN,  # 64 * 4 * 4 = 1024
            _fc("fc1", 1024, 1024), _RELU, _DROP,
            _fc("fc2", 1024, num_classes),
        ]
    if network == "mlp":
        return [
            _FLATTEN,
            _fc("fc1", 784, 1024), _RELU, _DROP,
            _fc("fc2", 1024, 1024), _RELU, _DROP,
            _fc("fc3", 1024, num_classes),
        ]
    if network == "cifar-cnn":
        return [
            _conv3("conv1", 3, 64), _bn("bn1", 64), _RELU,
            _conv3("conv2", 64, 64), _bn("bn2", 64), _RELU,
            _POOL2,  # 32 -> 16
            _conv3("conv3", 64, 128), _bn("bn3", 128), _RELU,
            _conv3("conv4", 128, 128), _bn("bn4", 128), _RELU,
            _POOL2,  # -> 8
            _conv3("conv5", 128, 256), _bn("bn5", 256), _RELU,
            _POOL2,  # -> 4
            _FLATTEN,  # 256 * 4 * 4 = 4096
            _fc("fc1", 4096, 4096), _RELU, _DROP,
            _fc("fc2", 4096, num_classes),
        ]
    if network == "alexnet":
        return [
            _conv("conv1", 3, 64, 11, 4, 2), _RELU, _POOL3S2,  # 224 -> 55 -> 27
            _conv("conv2", 64, 192, 5, 1, 2), _RELU, _POOL3S2,  # -> 27 -> 13
            _conv3("conv3", 192, 384), _RELU,
            _conv3("conv4", 384, 256), _RELU,
            _conv3("conv5", 256, 256), _RELU,
            _POOL3S2,  # -> 6
            _FLATTEN,  # 256 * 6 * 6 = 9216
            _DROP,
            _fc("fc6", 9216, 4096), _RELU, _DROP,
            _fc("fc7", 4096, 4096), _RELU,
            _fc("fc8", 4096, num_classes),
        ]
    raise ValueError(
        f"unknown network {network!r} (expected mnist-cnn, mlp, cifar-cnn or alexnet)"
    )


def parse_head(head: str) -> tuple[str, int | None]:
    """`"dense"` -> `("dense", None)`, `"circulant"` -> `("circulant", None)`,
    `"block:<b>"` -> `("block", b)`."""
    if head in ("dense", "circulant"):
        return head, None
    if isinstance(head, str) and head.startswith("block:"):
        try:
            b = int(head[len("block:"):])
        except ValueError:
            b = 0
        if b >= 1 and head[len("block:"):].isdigit():
            return "block", b
    raise ValueError(f"invalid head {head!r} (expected dense, circulant or block:<b> with b >= 1)")


# --------------------------------------------------------------------------------------------
# Circulant layers
# --------------------------------------------------------------------------------------------


def circulant_forward(x, r, signs, bias, d, k, dtype=np.float64):
    """Paper-mode circulant layer: `y = trunc_k(circ(r) · pad_n(signs * x)) + bias`.

    x: `(N, d)`, r: `(n,)` with `n = max(d, k)`; `circ(r)` has `r` as its first column, so the
    product is the circular convolution of `r` and the padded input, computed with real FFTs.
    """
    x = np.asarray(x)
    n = max(d, k)
    if x.shape[-1] != d or np.shape(r) != (n,):
        raise ValueError(f"circulant layer {d}->{k}: x {x.shape}, r {np.shape(r)} (want ({n},))")
    x = x.astype(dtype, copy=False)
    if signs is not None:
        x = x * np.asarray(signs, dtype=dtype)
    xf = np.fft.rfft(x, n=n, axis=-1)  # zero-pads to n
    rf = np.fft.rfft(np.asarray(r, dtype=dtype))
    y = np.fft.irfft(xf * rf, n=n, axis=-1)[..., :k]
    return y + np.asarray(bias, dtype=dtype)


def block_circulant_forward(x, r, signs, bias, d, k, dtype=np.float64):
    """Block-circulant layer: `y[i*b + s] = Σ_j Σ_t r[i, j, (s - t) mod b] · (signs*x)[j*b + t]`.

    x: `(N, d)`, r: `(p, q, b)` with `q = ceil(d/b)`, `p = ceil(k/b)`; the input is zero-padded
    to `q*b` and the `p*b` outputs truncated to `k`.
    """
    x = np.asarray(x)
    r = np.asarray(r, dtype=dtype)
    if r.ndim != 3:
        raise ValueError(f"block layer: r must be (p, q, b), got {r.shape}")
    p, q, b = r.shape
    if x.shape[-1] != d or (p, q) != (-(-k // b), -(-d // b)):
        raise ValueError(f"block layer {d}->{k}: x {x.shape}, r {r.shape}")
    x = x.astype(dtype, copy=False)
    if signs is not None:
        x = x * np.asarray(signs, dtype=dtype)
    lead = x.shape[:-1]
    x = x.reshape(-1, d)
    xp = np.zeros((x.shape[0], q * b), dtype=dtype)
    xp[:, :d] = x
    xf = np.fft.rfft(xp.reshape(-1, q, b), axis=-1)  # (N, q, f)
    rf = np.fft.rfft(r, axis=-1)  # (p, q, f)
    yf = np.einsum("nqf,pqf->npf", xf, rf)
    y = np.fft.irfft(yf, n=b, axis=-1).reshape(x.shape[0], p * b)[:, :k]
    return (y + np.asarray(bias, dtype=dtype)).reshape(*lead, k)


def expanded_weight(r, signs, head, d, k):
    """The explicit `(k, d)` weight of a circulant or block layer (the format doc's reference
    expansion); `y = x @ W.T + bias`."""
    r = np.asarray(r)
    s = np.arange(k)[:, None]
    t = np.arange(d)[None, :]
    if head == "circulant":
        w = r[(s - t) % max(d, k)]
    else:  # "block:<b>"
        b = int(head.split(":")[1])
        w = r[s // b, t // b, (s % b - t % b) % b]
    # (The format doc's snippet indexes `1.0[None, :]` when signs is None; that fails.)
    return w * np.asarray(signs)[None, :] if signs is not None else w


# --------------------------------------------------------------------------------------------
# Convolution, pooling, batch norm
# --------------------------------------------------------------------------------------------


def conv2d(x, w, bias, stride, padding, dtype=np.float64):
    """`x (N, C, H, W)`, `w (O, C, k, k)` (PyTorch layout, cross-correlation) by im2col + matmul."""
    n, c, h, wd = x.shape
    o, wc, kh, kw = w.shape
    if wc != c:
        raise ValueError(f"conv: input has {c} channels, weight {w.shape}")
    x = x.astype(dtype, copy=False)
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :oh, :ow]  # (N, C, oh, ow, kh, kw)
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    wm = np.asarray(w, dtype=dtype).reshape(o, c * kh * kw)
    y = cols @ wm.T + np.asarray(bias, dtype=dtype)  # (N*oh*ow, O)
    return np.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))


def max_pool2d(x, k, stride):
    """Max pool, `k x k` window, no padding, output size rounded down (PyTorch MaxPool2d(k, s))."""
    n, c, h, w = x.shape
    if h < k or w < k:
        raise ValueError(f"max pool {k}x{k} on {h}x{w}")
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    if k == stride:
        v = x[:, :, : oh * k, : ow * k].reshape(n, c, oh, k, ow, k)
        return v.max(axis=(3, 5))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride][:, :, :oh, :ow].max(axis=(4, 5))


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps=BN_EPS, dtype=np.float64):
    """Eval-mode batch norm with the running statistics: `(x - rm) / sqrt(rv + eps) * w + b`."""
    f = lambda a: np.asarray(a, dtype=dtype).reshape(1, -1, 1, 1)  # noqa: E731
    scale = f(weight) / np.sqrt(f(running_var) + eps)
    return x.astype(dtype, copy=False) * scale + (f(bias) - f(running_mean) * scale)


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------

_NP_DTYPES = {
    "F32": np.float32, "F16": np.float16, "F64": np.float64,
}


def read_header(path) -> tuple[dict, int]:
    """The safetensors JSON header of `path` and the offset where the tensor data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: safetensors header of {n} bytes is too large")
        header = json.loads(f.read(n))
    return header, 8 + n


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32: the bf16 bits are the high half of the f32."""
    return (bits.astype("<u4") << 16).view("<f4").astype(np.float32)


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a checkpoint as float32 arrays, and its `__metadata__` map.

    F32, F16 (and F64) tensors are read with safetensors' numpy loader; BF16 tensors, which numpy
    has no dtype for, are read as raw bytes located through the header and widened to float32.
    """
    from safetensors import safe_open

    header, data_start = read_header(path)
    tensors: dict[str, np.ndarray] = {}
    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata() or {})
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dt = info["dtype"]
            if dt in _NP_DTYPES:
                tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
            elif dt == "BF16":
                start, end = info["data_offsets"]
                shape = tuple(info["shape"])
                count = int(np.prod(shape, dtype=np.int64))
                if end - start != 2 * count:
                    raise ValueError(f"{path}: tensor {name} has {end - start} bytes for {shape}")
                bits = np.fromfile(path, dtype="<u2", count=count, offset=data_start + start)
                tensors[name] = _bf16_to_f32(bits).reshape(shape)
            else:
                raise ValueError(f"{path}: tensor {name} has dtype {dt}, expected F32, F16 or BF16")
    return tensors, meta


def _expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its shape."""
    specs = layer_specs(config["network"], int(config["num_classes"]))
    heads = config.get("heads", {})
    sign_flip = config.get("sign_flip", True)
    want: dict[str, tuple[int, ...]] = {}
    for kind, p in specs:
        if kind == "conv":
            want[f"{p['name']}.weight"] = (p["c_out"], p["c_in"], p["k"], p["k"])
            want[f"{p['name']}.bias"] = (p["c_out"],)
        elif kind == "bn":
            for s in ("weight", "bias", "running_mean", "running_var"):
                want[f"{p['name']}.{s}"] = (p["c"],)
        elif kind == "fc":
            name, d, k = p["name"], p["d"], p["k"]
            if name not in heads:
                raise ValueError(f"config has no head for FC layer {name!r}")
            h, b = parse_head(heads[name])
            if h == "dense":
                want[f"{name}.weight"] = (k, d)
            else:
                want[f"{name}.r"] = (max(d, k),) if h == "circulant" else (-(-k // b), -(-d // b), b)
                if sign_flip:
                    want[f"{name}.signs"] = (d,)
            want[f"{name}.bias"] = (k,)
    extra = set(heads) - {p["name"] for kind, p in specs if kind == "fc"}
    if extra:
        raise ValueError(f"config heads name layers that {config['network']} lacks: {sorted(extra)}")
    return want


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class Model:
    """A checkpoint's network: `forward` (logits) and `predict` (probabilities)."""

    config: dict
    tensors: dict[str, np.ndarray]
    classes: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    precision: Any = np.float64

    def __post_init__(self):
        want = _expected_tensors(self.config)
        missing = sorted(set(want) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(want))
        if missing:
            raise ValueError(f"checkpoint lacks tensor(s) {missing}")
        if extra:
            raise ValueError(f"checkpoint has unexpected tensor(s) {extra}")
        for name, shape in want.items():
            if tuple(self.tensors[name].shape) != shape:
                raise ValueError(
                    f"tensor {name} has shape {tuple(self.tensors[name].shape)}, expected {shape}"
                )
        self.layers = layer_specs(self.config["network"], int(self.config["num_classes"]))
        inp = self.config.get("input") or {}
        default = INPUT_SHAPES[self.config["network"]]
        self.input_shape = (
            int(inp.get("channels", default[0])),
            int(inp.get("height", default[1])),
            int(inp.get("width", default[2])),
        )

    @property
    def network(self) -> str:
        return self.config["network"]

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def _fc(self, name, d, k, h):
        t = self.tensors
        head, _ = parse_head(self.config["heads"][name])
        dt = self.precision
        if head == "dense":
            w = t[f"{name}.weight"].astype(dt, copy=False)
            return h.astype(dt, copy=False) @ w.T + t[f"{name}.bias"].astype(dt)
        signs = t.get(f"{name}.signs") if self.config.get("sign_flip", True) else None
        f = circulant_forward if head == "circulant" else block_circulant_forward
        return f(h, t[f"{name}.r"], signs, t[f"{name}.bias"], d, k, dtype=dt)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: `(N, C, H, W)` float32, normalised per `config["input"]` (see `preprocess`) ->
        logits `(N, num_classes)` float32 (eval mode: dropout is the identity, batch norm uses
        the running statistics). `mlp` also accepts `(N, C*H*W)`."""
        x = np.asarray(x)
        c, hh, ww = self.input_shape
        if x.ndim == 4 and tuple(x.shape[1:]) == (c, hh, ww) and x.shape[0] > 0:
            pass
        elif x.ndim == 2 and self.network == "mlp" and x.shape[1] == c * hh * ww and x.shape[0] > 0:
            pass
        else:
            raise ValueError(f"input shape {x.shape}, expected (N, {c}, {hh}, {ww}) with N >= 1")
        dt = self.precision
        h = x.astype(np.float32, copy=False)
        t = self.tensors
        for kind, p in self.layers:
            if kind == "conv":
                n = p["name"]
                h = conv2d(h, t[f"{n}.weight"], t[f"{n}.bias"], p["stride"], p["padding"], dt)
            elif kind == "bn":
                n = p["name"]
                h = batch_norm_eval(
                    h, t[f"{n}.weight"], t[f"{n}.bias"], t[f"{n}.running_mean"],
                    t[f"{n}.running_var"], BN_EPS, dt,
                )
            elif kind == "maxpool":
                h = max_pool2d(h, p["k"], p["stride"])
            elif kind == "relu":
                h = np.maximum(h, 0)
            elif kind == "dropout":
                pass  # identity at inference
            elif kind == "flatten":
                h = h.reshape(h.shape[0], -1)  # NCHW row-major: index c*H*W + y*W + x
            elif kind == "fc":
                h = self._fc(p["name"], p["d"], p["k"], h)
            else:  # pragma: no cover
                raise AssertionError(kind)
        return np.asarray(h, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities `(N, num_classes)` (softmax of the logits), float32."""
        return softmax(self.forward(x)).astype(np.float32)

    __call__ = forward


def load(path, precision=np.float64) -> Model:
    """Loads a checkpoint (F32, F16 or BF16 tensors) with its config and class names."""
    tensors, meta = read_checkpoint(path)
    if "config" not in meta:
        raise ValueError(f"{path}: no `config` in the safetensors metadata")
    config = json.loads(meta["config"])
    classes = None
    if "classes" in meta:
        classes = json.loads(meta["classes"])
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise ValueError(f"{path}: metadata `classes` is not a JSON list of strings")
    return Model(config=config, tensors=tensors, classes=classes, metadata=meta, precision=precision)


# --------------------------------------------------------------------------------------------
# Preprocessing and PNG reading
# --------------------------------------------------------------------------------------------


def preprocess(pixels: np.ndarray, config: dict) -> np.ndarray:
    """uint8 pixels of the model's input size -> normalised float32 `(N, C, H, W)`.

    `pixels`: `(N, H, W, C)` (interleaved, as decoded images), `(N, C, H, W)`, or `(N, H, W)`
    for one channel. Computes `p * (1 / (255 * std[c])) - mean[c] / std[c]` in float32, exactly
    as the trainer's `Normalize::apply`.
    """
    inp = config["input"]
    c, h, w = inp["channels"], inp["height"], inp["width"]
    px = np.asarray(pixels)
    if px.dtype != np.uint8:
        raise ValueError(f"preprocess wants uint8 pixels, got {px.dtype}")
    if px.ndim == 3 and c == 1:
        px = px[:, None]
    elif px.ndim == 4 and px.shape[1:] == (h, w, c) and px.shape[1:] != (c, h, w):
        px = px.transpose(0, 3, 1, 2)
    if px.ndim != 4 or px.shape[1:] != (c, h, w):
        raise ValueError(f"pixels of shape {np.shape(pixels)} for a {c}x{h}x{w} input")
    std = np.asarray(inp["std"], dtype=np.float32)
    mean = np.asarray(inp["mean"], dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std)).reshape(1, c, 1, 1)
    offset = (mean / std).reshape(1, c, 1, 1)
    return (px.astype(np.float32) * scale - offset).astype(np.float32)


def read_png(path) -> np.ndarray:
    """Decodes an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB, RGBA) with zlib only.

    Returns uint8 `(H, W, channels)` with channels 1, 2, 3 or 4.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    if ihdr is None:
        raise ValueError(f"{path}: PNG without IHDR")
    w, h, depth, color, _, _, interlace = ihdr
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace != 0:
        raise ValueError(
            f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported "
            f"(bit depth {depth}, colour type {color}, interlace {interlace}); install Pillow"
        )
    raw = zlib.decompress(b"".join(idat))
    stride = w * channels
    if len(raw) != h * (stride + 1):
        raise ValueError(f"{path}: PNG data of {len(raw)} bytes for {w}x{h}x{channels}")
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    bpp = channels
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1)
        line = line.astype(np.int64)
        if ftype == 0:  # None
            cur = line
        elif ftype == 1:  # Sub: running sum per channel
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(stride) & 0xFF
        elif ftype == 2:  # Up
            cur = (line + prev) & 0xFF
        elif ftype in (3, 4):  # Average, Paeth: sequential in the left neighbour
            ln, up, cur_l = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = cur_l[i - bpp] if i >= bpp else 0
                b = up[i]
                if ftype == 3:
                    pred = (a + b) >> 1
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur_l[i] = (ln[i] + pred) & 0xFF
            cur = np.array(cur_l, dtype=np.int64)
        else:
            raise ValueError(f"{path}: bad PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, channels)


def write_png(path, pixels: np.ndarray, filters=(0, 1, 2, 3, 4)) -> None:
    """Writes uint8 `(H, W)` / `(H, W, 1)` (grey) or `(H, W, 3)` (RGB) as an 8-bit PNG with zlib
    only. Row `y` uses PNG filter `filters[y % len(filters)]` (all five by default, so that
    decoders are exercised)."""
    px = np.asarray(pixels)
    if px.dtype != np.uint8:
        raise ValueError(f"write_png wants uint8, got {px.dtype}")
    if px.ndim == 2:
        px = px[:, :, None]
    h, w, c = px.shape
    color = {1: 0, 3: 2}.get(c)
    if color is None:
        raise ValueError(f"write_png writes 1 or 3 channels, got {c}")
    rows = px.reshape(h, w * c).astype(np.int64)
    out = bytearray()
    prior = np.zeros(w * c, dtype=np.int64)
    for y in range(h):
        cur = rows[y]
        left = np.concatenate([np.zeros(c, dtype=np.int64), cur[:-c]])
        upleft = np.concatenate([np.zeros(c, dtype=np.int64), prior[:-c]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prior
        elif f == 3:
            pred = (left + prior) >> 1
        elif f == 4:
            pa, pb = np.abs(prior - upleft), np.abs(left - upleft)
            pc = np.abs(left + prior - 2 * upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        else:
            raise ValueError(f"bad PNG filter {f}")
        out.append(f)
        out += ((cur - pred) & 0xFF).astype(np.uint8).tobytes()
        prior = cur

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(
            ">I", zlib.crc32(tag + body) & 0xFFFFFFFF
        )

    data = b"\x89PNG\r\n\x1a\n"
    data += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(bytes(out), 9))
    data += chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(data)


def _to_channels(img: np.ndarray, c: int) -> np.ndarray:
    """Channel conversion as the Rust `image` crate's `into_luma8` / `into_rgb8`."""
    have = img.shape[2]
    if have in (2, 4):  # drop alpha
        img = img[:, :, : have - 1]
        have -= 1
    if have == c:
        return img
    if c == 3 and have == 1:
        return np.repeat(img, 3, axis=2)
    if c == 1 and have == 3:
        rgb = img.astype(np.uint32)
        luma = (2126 * rgb[:, :, 0] + 7152 * rgb[:, :, 1] + 722 * rgb[:, :, 2]) // 10000
        return luma.astype(np.uint8)[:, :, None]
    raise ValueError(f"cannot convert a {have}-channel image to {c} channels")


def eval_crop_box(img_w: int, img_h: int, config: dict) -> tuple[float, float, float, float]:
    """The source box `(x, y, width, height)` that `trainer predict`'s eval transform resizes to
    the input size: the shorter side scaled to `size / crop_pct`, then the centre crop
    (`crop_pct` 0.875 for inputs of 128 pixels and more, else 1.0; trainer/src/data/transform.rs).
    """
    inp = config["input"]
    h, w = inp["height"], inp["width"]
    crop_pct = 0.875 if min(h, w) >= 128 else 1.0
    scale = max(w / (img_w * crop_pct), h / (img_h * crop_pct))
    cw, ch = min(w / scale, img_w), min(h / scale, img_h)
    return ((img_w - cw) / 2, (img_h - ch) / 2, cw, ch)


def exact_image_size(config: dict) -> tuple[int, int]:
    """`(height, width)` of the images that `trainer predict` does not resample: the input size
    for small inputs, `size / 0.875` (256 for 224) for large ones, of which it takes the centre."""
    inp = config["input"]
    h, w = inp["height"], inp["width"]
    if min(h, w) >= 128:
        return round(h / 0.875), round(w / 0.875)
    return h, w


def load_image(path, config: dict) -> np.ndarray:
    """An image file as uint8 `(H, W, C)` of the model's input size (see the module doc)."""
    inp = config["input"]
    c, h, w = inp["channels"], inp["height"], inp["width"]
    try:
        img = read_png(path)
    except ValueError:
        img = None
    if img is not None:
        x0, y0, cw, ch = eval_crop_box(img.shape[1], img.shape[0], config)
        if (cw, ch) == (w, h) and float(x0).is_integer() and float(y0).is_integer():
            # Scale 1 and a whole-pixel crop: the trainer copies these pixels unchanged.
            x0, y0 = int(x0), int(y0)
            return _to_channels(img[y0:y0 + h, x0:x0 + w], c)
    try:
        from PIL import Image
    except ImportError:
        eh, ew = exact_image_size(config)
        raise ValueError(
            f"{path}: not an 8-bit PNG that the trainer reads without resampling "
            f"({ew}x{eh} pixels); other images need Pillow"
        ) from None
    im = Image.open(path)
    im = im.convert("L" if c == 1 else "RGB")
    x0, y0, cw, ch = eval_crop_box(im.width, im.height, config)
    im = im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("inputs", nargs="?", help="a .npy file of normalised float (N, C, H, W)")
    ap.add_argument("--images", nargs="+", metavar="IMAGE", help="image files (PNG)")
    ap.add_argument("--json", action="store_true", help="one JSON line per input")
    ap.add_argument("--float32", action="store_true", help="compute in float32, not float64")
    args = ap.parse_args(argv)
    if (args.inputs is None) == (args.images is None):
        ap.error("give either a .npy file or --images")
    model = load(args.checkpoint, precision=np.float32 if args.float32 else np.float64)
    if args.images:
        names = list(args.images)
        x = preprocess(np.stack([load_image(p, model.config) for p in names]), model.config)
    else:
        x = np.load(args.inputs).astype(np.float32)
        if x.ndim == 3:
            x = x[None]
        names = [f"{args.inputs}[{i}]" for i in range(x.shape[0])]
    probs = model.predict(x)
    for name, p in zip(names, probs):
        cls = int(np.argmax(p))
        label = model.classes[cls] if model.classes and len(model.classes) == len(p) else None
        if args.json:
            rec = {"file": name, "class": cls}
            if label is not None:
                rec["label"] = label
            rec["probabilities"] = [float(v) for v in p]
            print(json.dumps(rec))
        else:
            lab = f" ({label})" if label is not None else ""
            print(f"{name}: class {cls}{lab}, probability {p[cls]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
