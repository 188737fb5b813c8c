#!/usr/bin/env python3
"""PyTorch peer of `trainer bench`: whole-network training and inference throughput.

The four networks of circulant-model (mnist-cnn, mlp, cifar-cnn, alexnet) with the layer order,
shapes, padding, pooling, dropout and batch norm of docs/CHECKPOINT_FORMAT.md (and
circulant-model/src/networks.rs).  Dense FC layers are nn.Linear; circulant ones (`--head
circulant` or `block:<b>`) are bench/circulant_layers.CirculantFC, y = trunc_k(C · pad(signs ⊙ x))
+ bias via torch.fft.rfft / irfft, backward by autograd.

Measured on one fixed random batch of the network's input shape (10 classes, alexnet 1000):

- train img/s: forward (train mode: dropout, batch statistics) + cross entropy + backward +
  optimizer step, `--steps` steps after `--warmup-steps` unmeasured ones;
- infer img/s: eval mode under torch.inference_mode, same step counts.

Throughput = steps * batch / wall time of the measured steps (time.perf_counter; on cuda the
device is synchronised before the clock is read at both ends).

    python bench/torch_train.py --model mnist-cnn --head circulant --batch-size 64 --json
    python bench/torch_train.py --self-test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from circulant_layers import CirculantFC, parse_head  # noqa: E402

NETWORKS = ("mnist-cnn", "mlp", "cifar-cnn", "alexnet")

# ---------------------------------------------------------------------------
# Networks (mirror of circulant-model/src/networks.rs)
# ---------------------------------------------------------------------------


def input_shape(network: str) -> tuple[int, int, int]:
    return {"mnist-cnn": (1, 28, 28), "mlp": (1, 28, 28), "cifar-cnn": (3, 32, 32),
            "alexnet": (3, 224, 224)}[network]


def default_classes(network: str) -> int:
    return 1000 if network == "alexnet" else 10


def layer_specs(network: str, num_classes: int) -> list[tuple]:
    """Forward-order layers: ("conv", name, c_in, c_out, k, stride, padding), ("bn", name, c),
    ("pool", k, stride), ("relu",), ("dropout", p), ("flatten",), ("fc", name, d, k)."""

    def conv(name, c_in, c_out, k, stride=1, padding=0):
        return ("conv", name, c_in, c_out, k, stride, padding)

    def conv3(name, c_in, c_out):
        return conv(name, c_in, c_out, 3, 1, 1)

    relu, flat, drop = ("relu",), ("flatten",), ("dropout", 0.5)
    pool2, pool3s2 = ("pool", 2, 2), ("pool", 3, 2)
    if network == "mnist-cnn":
        return [
            conv("conv1", 1, 32, 5), pool2, relu,   # 28 -> 24 -> 12
            conv("conv2", 32, 64, 5), pool2, relu,  # -> 8 -> 4
            flat,                                   # 64 * 4 * 4 = 1024
            ("fc", "fc1", 1024, 1024), relu, drop,
            ("fc", "fc2", 1024, num_classes),
        ]
    if network == "mlp":
        return [
            flat,
            ("fc", "fc1", 784, 1024), relu, drop,
            ("fc", "fc2", 1024, 1024), relu, drop,
            ("fc", "fc3", 1024, num_classes),
        ]
    if network == "cifar-cnn":
        return [
            conv3("conv1", 3, 64), ("bn", "bn1", 64), relu,
            conv3("conv2", 64, 64), ("bn", "bn2", 64), relu,
            pool2,  # 32 -> 16
            conv3("conv3", 64, 128), ("bn", "bn3", 128), relu,
            conv3("conv4", 128, 128), ("bn", "bn4", 128), relu,
            pool2,  # -> 8
            conv3("conv5", 128, 256), ("bn", "bn5", 256), relu,
            pool2,  # -> 4
            flat,   # 256 * 4 * 4 = 4096
            ("fc", "fc1", 4096, 4096), relu, drop,
            ("fc", "fc2", 4096, num_classes),
        ]
    if network == "alexnet":
        return [
            conv("conv1", 3, 64, 11, 4, 2), relu, pool3s2,  # 224 -> 55 -> 27
            conv("conv2", 64, 192, 5, 1, 2), relu, pool3s2,  # -> 13
            conv3("conv3", 192, 384), relu,
            conv3("conv4", 384, 256), relu,
            conv3("conv5", 256, 256), relu, pool3s2,  # -> 6
            flat,  # 256 * 6 * 6 = 9216
            drop, ("fc", "fc6", 9216, 4096), relu,
            drop, ("fc", "fc7", 4096, 4096), relu,
            ("fc", "fc8", 4096, num_classes),
        ]
    raise ValueError(f"unknown network {network!r} (choose from {', '.join(NETWORKS)})")


def check_head(head: str) -> str:
    if head != "dense":
        parse_head(head)  # ValueError for anything but circulant / block:<b>
    return head


def build_model(network: str, head: str, num_classes: int | None = None, sign_flip: bool = True,
                seed: int = 0) -> nn.Sequential:
    """The network as an nn.Sequential whose children carry the checkpoint's layer names
    (conv1, bn1, fc1, ...; unnamed layers are relu<i>, pool<i>, dropout<i>, flatten).  Every FC
    layer gets `head`.  Initialisation follows circulant-model's (PyTorch's default uniform
    ±1/sqrt(fan_in) for conv and dense, BN weight 1 / bias 0), drawn from torch's RNG."""
    check_head(head)
    num_classes = num_classes or default_classes(network)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, spec in enumerate(layer_specs(network, num_classes)):
        kind = spec[0]
        if kind == "conv":
            _, name, c_in, c_out, k, stride, padding = spec
            layers[name] = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
        elif kind == "bn":
            layers[spec[1]] = nn.BatchNorm2d(spec[2], eps=1e-5, momentum=0.1)
        elif kind == "pool":
            layers[f"pool{i}"] = nn.MaxPool2d(spec[1], stride=spec[2])
        elif kind == "relu":
            layers[f"relu{i}"] = nn.ReLU()
        elif kind == "dropout":
            layers[f"dropout{i}"] = nn.Dropout(spec[1])
        elif kind == "flatten":
            layers["flatten"] = nn.Flatten(1)
        elif kind == "fc":
            _, name, d, k = spec
            if head == "dense":
                layers[name] = nn.Linear(d, k)
            else:
                layers[name] = CirculantFC(d, k, head, sign_flip=sign_flip, generator=gen)
        else:  # pragma: no cover
            raise AssertionError(spec)
    return nn.Sequential(layers)


def param_count(model: nn.Module) -> int:
    """Trainable parameters (signs and running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------


def make_optimizer(name: str, params):
    """The trainer's recipes: adamw lr 1e-3, wd 0.01 (decoupled), betas (0.9, 0.999), eps 1e-8;
    sgd lr 0.05, momentum 0.9, no weight decay."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}")


def bench(args) -> dict:
    dev = torch.device(args.device)
    num_classes = default_classes(args.model)
    model = build_model(args.model, args.head, num_classes).to(dev)
    opt = make_optimizer(args.optimizer, model.parameters())
    c, h, w = input_shape(args.model)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(args.batch_size, c, h, w, generator=gen).to(dev)
    y = torch.randint(0, num_classes, (args.batch_size,), generator=gen).to(dev)
    bf16 = args.precision == "bf16"

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def infer_step():
        with torch.inference_mode(), autocast():
            return model(x)

    def timed(step, n_warm, n_steps) -> float:
        for _ in range(n_warm):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            out = step()
        sync()
        dt = time.perf_counter() - t0
        if not torch.isfinite(out.detach().float()).all():
            raise RuntimeError("non-finite output during the benchmark")
        return dt

    model.train()
    t_train = timed(train_step, args.warmup_steps, args.steps)
    model.eval()
    t_infer = timed(infer_step, args.warmup_steps, args.steps)
    n = args.steps * args.batch_size
    return {
        "network": args.model,
        "head": args.head,
        "batch": args.batch_size,
        "device": args.device,
        "precision": args.precision,
        "train_img_s": n / t_train,
        "infer_img_s": n / t_infer,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------
# --self-test
# ---------------------------------------------------------------------------


def expanded_weight(r, signs, head, d, k):
    """docs/CHECKPOINT_FORMAT.md's numpy reference expansion, verbatim except the last line: the
    document's `(signs if signs is not None else 1.0)[None, :]` raises TypeError when signs is None
    (a float cannot be indexed)."""
    import numpy as np

    s = np.arange(k)[:, None]
    t = np.arange(d)[None, :]
    if head == "circulant":
        w = r[(s - t) % max(d, k)]
    else:  # "block:<b>"
        b = int(head.split(":")[1])
        w = r[s // b, t // b, (s % b - t % b) % b]
    return w * signs[None, :] if signs is not None else w


# Parameter counts of docs/CHECKPOINT_FORMAT.md's "Sizes" table.
DOC_PARAMS = {
    ("mnist-cnn", "dense"): 1_111_946, ("mnist-cnn", "circulant"): 55_178,
    ("mnist-cnn", "block:64"): 70_538,
    ("mlp", "dense"): 1_863_690, ("mlp", "circulant"): 5_130, ("mlp", "block:64"): 32_778,
    ("cifar-cnn", "dense"): 17_378_890, ("cifar-cnn", "circulant"): 568_906,
    ("cifar-cnn", "block:64"): 826_954,
    ("alexnet", "dense"): 61_100_840, ("alexnet", "circulant"): 2_496_296,
    ("alexnet", "block:64"): 3_396_392,
}


def self_test() -> bool:
    """CirculantFC (forward, grad x, grad r, grad bias) against x @ Wᵀ + bias with W from the
    format document's numpy expansion; then every network's output shape and parameter count."""
    import numpy as np

    ok = True
    cases = [
        # (head, d, k)
        ("circulant", 1, 1), ("circulant", 7, 7), ("circulant", 12, 5), ("circulant", 5, 12),
        ("circulant", 9, 10), ("circulant", 1, 4), ("circulant", 4, 1), ("circulant", 100, 33),
        ("block:1", 5, 3), ("block:3", 7, 7), ("block:4", 10, 24), ("block:4", 24, 10),
        ("block:5", 13, 6), ("block:3", 6, 13), ("block:8", 5, 3), ("block:8", 3, 5),
        ("block:7", 30, 30), ("block:16", 64, 48), ("block:6", 17, 40),
    ]
    print("self-test: CirculantFC vs x @ W.T + bias, W = expanded_weight(...) "
          "(docs/CHECKPOINT_FORMAT.md)")
    gen = torch.Generator().manual_seed(0)
    for head, d, k in cases:
        for sign_flip in (True, False):
            layer = CirculantFC(d, k, head, sign_flip=sign_flip, generator=gen, dtype=torch.float64)
            r_np = layer.r.detach().numpy()
            s_np = layer.signs.numpy() if layer.signs is not None else None
            w_np = expanded_weight(r_np, s_np, head, d, k)
            batch = 3
            x = torch.randn(batch, d, generator=gen, dtype=torch.float64)
            g = torch.randn(batch, k, generator=gen, dtype=torch.float64)
            y_ref = x.numpy() @ w_np.T + layer.bias.detach().numpy()
            # Gradient reference: the same expansion, as torch indexing of a copy of r.
            r_ref = layer.r.detach().clone().requires_grad_(True)
            b_ref = layer.bias.detach().clone().requires_grad_(True)
            x_ref = x.clone().requires_grad_(True)
            w_t = expanded_weight_torch(r_ref, layer.signs, head, d, k)
            ((x_ref @ w_t.T + b_ref) * g).sum().backward()
            xg = x.clone().requires_grad_(True)
            out = layer(xg)
            (out * g).sum().backward()
            errs = {
                "W": max_rel(torch.from_numpy(np.ascontiguousarray(w_np)), w_t.detach()),
                "Wdense": max_rel(layer.dense_weight().detach(), torch.from_numpy(w_np)),
                "y": max_rel(out.detach(), torch.from_numpy(y_ref)),
                "gx": max_rel(xg.grad, x_ref.grad),
                "gr": max_rel(layer.r.grad, r_ref.grad),
                "gb": max_rel(layer.bias.grad, b_ref.grad),
            }
            # float32 forward as used in the benchmark.
            l32 = CirculantFC(d, k, head, sign_flip=sign_flip, generator=gen)
            with torch.no_grad():
                l32.r.copy_(layer.r)
                l32.bias.copy_(layer.bias)
                if sign_flip:
                    l32.signs.copy_(layer.signs)
                errs["y32"] = max_rel(l32(x.float()), torch.from_numpy(y_ref))
            tol = {k_: 1e-12 for k_ in errs} | {"y32": 1e-5}
            good = all(errs[e] <= tol[e] for e in errs) and tuple(out.shape) == (batch, k)
            ok &= good
            es = " ".join(f"{n}={v:.0e}" for n, v in errs.items())
            print(f"  {head:<10} d={d:<3} k={k:<3} r={str(tuple(layer.r.shape)):<11} "
                  f"signs={'yes' if sign_flip else 'no ':<3} {es}  {'ok' if good else 'FAIL'}")

    print("self-test: networks (output shape on a batch of 2, trainable parameters vs the "
          "format document's table)")
    for (network, head), want in DOC_PARAMS.items():
        model = build_model(network, head)
        got = param_count(model)
        model.eval()
        c, h, w = input_shape(network)
        with torch.inference_mode():
            out = model(torch.randn(2, c, h, w))
        shape_ok = tuple(out.shape) == (2, default_classes(network))
        good = got == want and shape_ok and bool(torch.isfinite(out).all())
        ok &= good
        print(f"  {network:<10} {head:<10} params {got:>11,} (doc {want:>11,}) "
              f"out {tuple(out.shape)}  {'ok' if good else 'FAIL'}")
    print("self-test:", "PASSED" if ok else "FAILED")
    return ok


def expanded_weight_torch(r, signs, head, d, k):
    """The numpy reference expansion written with torch indexing (differentiable in r)."""
    s = torch.arange(k)[:, None]
    t = torch.arange(d)[None, :]
    if head == "circulant":
        w = r[(s - t) % max(d, k)]
    else:
        b = int(head.split(":")[1])
        w = r[s // b, t // b, (s % b - t % b) % b]
    return w * signs[None, :] if signs is not None else w


def max_rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    scale = ref.abs().max().item() or 1.0
    return (a - ref).abs().max().item() / scale


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=NETWORKS)
    ap.add_argument("--head", default="dense", help="dense, circulant or block:<b> (every FC layer)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20, help="measured steps, train and infer each (default 20)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="unmeasured steps before each (default 3)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="bf16: torch.autocast(dtype=bfloat16) around the forward and the loss")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--json", action="store_true", help="print exactly one JSON line")
    ap.add_argument("--self-test", action="store_true",
                    help="check the circulant layer against the format document's dense expansion, "
                    "and every network's output shape and parameter count, then exit")
    args = ap.parse_args(argv)
    if not args.self_test:
        if args.model is None or args.batch_size is None:
            ap.error("--model and --batch-size are required (or --self-test)")
        if args.batch_size < 1 or args.steps < 1 or args.warmup_steps < 0:
            ap.error("--batch-size and --steps must be >= 1, --warmup-steps >= 0")
        try:
            check_head(args.head)
        except ValueError as e:
            ap.error(f"--head: {e}")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.self_test:
        return 0 if self_test() else 1
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2
        # f32 means f32: no TF32 tensor-core rounding in matmuls or convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    res = bench(args)
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        extra = f", gpu {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
        print(f"{res['network']} head={res['head']} batch={res['batch']} {res['device']} "
              f"{res['precision']} optimizer={args.optimizer} steps={args.steps} "
              f"(warm-up {args.warmup_steps}), torch {res['torch_version']}, "
              f"threads {res['threads']}{extra}")
        print(f"  train {res['train_img_s']:10.1f} img/s   ({1e3 * args.batch_size / res['train_img_s']:.1f} ms/step)")
        print(f"  infer {res['infer_img_s']:10.1f} img/s   ({1e3 * args.batch_size / res['infer_img_s']:.1f} ms/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
