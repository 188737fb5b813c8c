#!/usr/bin/env python3
"""PyTorch reference benchmark for the (block-)circulant projection.

The op: x (B, q*b), r (p, q, b) -> y (B, p*b) with

    y[n, i*b+s] = sum_j sum_t r[i, j, (s-t) mod b] * x[n, j*b+t]

i.e. block (i, j) of the weight is the circulant matrix whose first column is
r[i, j, :].  With p = q = 1 and b = d this is the paper's circulant layer,
y = irfft(rfft(r) * rfft(x)).

It is implemented the way a PyTorch user would write it: an nn.Module with a
parameter r, a forward built from torch.fft.rfft / irfft (and an einsum over
the complex spectra for the block case), and autograd for the backward.  It is
timed against nn.Linear(d, d, bias=False) and against the bare FFT floor.

    python bench/torch_circulant.py --check             # verify against a dense matrix
    python bench/torch_circulant.py                     # full CPU benchmark
    python bench/torch_circulant.py --device cuda --batches 1,128,1024 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

# The op (BlockCirculantLinear, dense_from_r) lives in bench/circulant_layers.py, shared with
# bench/torch_train.py.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from circulant_layers import BlockCirculantLinear, dense_from_r  # noqa: E402
from nets_table import cpu_model  # noqa: E402


# ---------------------------------------------------------------------------
# --check: numerical verification against the dense matrix
# ---------------------------------------------------------------------------


def run_check(device: torch.device) -> bool:
    """Compare forward and gradients (x and r) with a float64 dense reference."""
    torch.manual_seed(0)
    configs = [
        # (p, q, b, batch)
        (1, 1, 1, 3),
        (1, 1, 8, 4),
        (1, 1, 17, 5),  # odd, non-power-of-two
        (1, 1, 1024, 2),
        (2, 3, 16, 4),
        (3, 2, 12, 3),
        (4, 4, 256, 2),
        (1, 4, 33, 2),
    ]
    ok = True
    print(f"check on {device}: forward y, grad_x, grad_r vs dense float64 reference")
    for p, q, b, batch in configs:
        m64 = BlockCirculantLinear(p, q, b, device=device, dtype=torch.float64)
        x64 = torch.randn(batch, q * b, device=device, dtype=torch.float64)
        w64 = torch.randn(batch, p * b, device=device, dtype=torch.float64)

        # Dense reference (float64), gradients through the indexing in dense_from_r.
        r_ref = m64.r.detach().clone().requires_grad_(True)
        x_ref = x64.clone().requires_grad_(True)
        y_ref = x_ref @ dense_from_r(r_ref).T
        (y_ref * w64).sum().backward()

        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            m = BlockCirculantLinear(p, q, b, device=device, dtype=dtype)
            with torch.no_grad():
                m.r.copy_(m64.r.to(dtype))
            x = x64.to(dtype).detach().clone().requires_grad_(True)
            y = m(x)
            (y * w64.to(dtype)).sum().backward()
            errs = {
                "y": rel_err(y, y_ref),
                "gx": rel_err(x.grad, x_ref.grad),
                "gr": rel_err(m.r.grad, r_ref.grad),
            }
            good = all(e <= tol for e in errs.values())
            ok &= good
            es = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
            name = str(dtype).replace("torch.", "")
            print(
                f"  p={p} q={q} b={b:<5} B={batch} {name:<8} {es}  "
                f"(tol {tol:.0e}) {'ok' if good else 'FAIL'}"
            )
    print("check:", "PASSED" if ok else "FAILED")
    return ok


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|, computed in float64."""
    a = a.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    scale = ref.abs().max().item() or 1.0
    return (a - ref).abs().max().item() / scale


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


class Timer:
    def __init__(self, device: torch.device, max_seconds: float, max_repeats: int, warmup: int):
        self.device = device
        self.max_seconds = max_seconds
        self.max_repeats = max_repeats
        self.warmup = warmup

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def measure(self, fn) -> dict:
        """Median (and min) wall time in ms of fn() after warm-up.

        Each case has a forward and a forward+backward measurement; each gets half
        of max_seconds.  Warm-up runs stop early once they use a quarter of that;
        timed runs go on until the budget is spent or max_repeats is reached, with
        at least 3 timed runs even when a single run exceeds the budget.
        """
        budget = self.max_seconds / 2
        spent, warm = 0.0, 0
        while warm < max(1, self.warmup) and (warm == 0 or spent < budget / 4):
            spent += self.once(fn)  # plans, allocator, page faults
            warm += 1
        times = []
        t_start = time.perf_counter()
        while len(times) < self.max_repeats and (
            len(times) < 3 or time.perf_counter() - t_start < budget
        ):
            times.append(self.once(fn))
        return {
            "median_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times),
            "repeats": len(times),
            "warmup": warm,
        }


def bench_module(module: nn.Module, d_in: int, d_out: int, batch: int, timer: Timer, dev) -> dict:
    """Forward (no grad) and forward+backward (loss = (y*w).sum(), grads to x and params)."""
    gen = torch.Generator(device="cpu").manual_seed(1234)
    x = torch.randn(batch, d_in, generator=gen).to(dev)
    w = torch.randn(batch, d_out, generator=gen).to(dev)

    def fwd():
        with torch.no_grad():
            module(x)

    xg = x.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = None
        module.zero_grad(set_to_none=True)
        y = module(xg)
        (y * w).sum().backward()

    out = {"fwd": timer.measure(fwd), "fwd_bwd": timer.measure(fwd_bwd)}
    del x, w, xg
    return out


def bench_fft_floor(d: int, batch: int, timer: Timer, dev) -> dict:
    """Bare real FFTs per sample: 2 (rfft, irfft) ~ forward, 4 (rfft, irfft, rfft, irfft) ~ fwd+bwd."""
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(7)).to(dev)

    def two():
        with torch.no_grad():
            torch.fft.irfft(torch.fft.rfft(x), n=d)

    def four():
        with torch.no_grad():
            a = torch.fft.irfft(torch.fft.rfft(x), n=d)
            torch.fft.irfft(torch.fft.rfft(a), n=d)

    out = {"fwd": timer.measure(two), "fwd_bwd": timer.measure(four)}
    del x
    return out


def global_warmup(seconds: float, dev, timer: Timer):
    """Keep the thread pool busy for a while (FFTs and a GEMM) so the first case is not penalised."""
    if seconds <= 0:
        return
    x = torch.randn(128, 4096, device=dev)
    w = torch.randn(1024, 4096, device=dev)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        torch.fft.irfft(torch.fft.rfft(x), n=4096)
        x @ w.T
        timer.sync()


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mkl": torch.backends.mkl.is_available(),
        "device": str(device),
        "dtype": "float32",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info




def fmt_ms(m: dict | None, key: str = "median_ms") -> str:
    if m is None:
        return "skipped"
    v = m[key]
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


GROUPS = ("circulant", "dense", "big", "block", "floor")


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def group_list(text: str) -> set[str]:
    """argparse type: comma-separated subset of GROUPS."""
    vals = {v.strip() for v in text.split(",") if v.strip()}
    bad = vals - set(GROUPS)
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"unknown group(s) {sorted(bad)}; choose from {','.join(GROUPS)}")
    return vals


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", type=int_list, default=[1, 128], help="comma-separated batch sizes (default 1,128)")
    ap.add_argument("--sizes", type=int_list, default=None, help="override d list for circulant vs dense")
    ap.add_argument(
        "--only",
        type=group_list,
        default=set(GROUPS),
        help="groups to run: circulant,dense (d sweep), big (d=2^20), block, floor",
    )
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (smoke test)")
    ap.add_argument("--check", action="store_true", help="verify against a dense float64 matrix, then exit")
    ap.add_argument("--json", default=None, metavar="FILE", help="write results as JSON")
    ap.add_argument("--max-seconds-per-case", type=float, default=20.0, help="time budget per case (fwd + fwd+bwd)")
    ap.add_argument("--max-repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3, help="warm-up runs per measurement (at most)")
    ap.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="global warm-up (FFTs + GEMMs) before the first case; multi-threaded runs are slow for the "
        "first seconds of a process on a loaded machine",
    )
    ap.add_argument("--max-dense-gib", type=float, default=8.0, help="skip nn.Linear whose weight exceeds this")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's, all cores)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.check:
        return 0 if run_check(dev) else 1

    batches = args.batches
    groups = args.only
    if args.quick:
        sizes = [1024, 4096]
        big_d = 1 << 16
        args.max_repeats = min(args.max_repeats, 5)
        args.warmup = 1
        args.max_seconds_per_case = min(args.max_seconds_per_case, 4.0)
    else:
        sizes = [1024, 4096, 9216, 16384, 65536]
        big_d = 1 << 20
    if args.sizes:
        sizes = args.sizes

    timer = Timer(dev, args.max_seconds_per_case, args.max_repeats, args.warmup)
    info = machine_info(dev)
    print(f"# torch {info['torch']} on {info['device']}, threads={info['threads']} "
          f"(cpu: {info['cpu']}, {info['cpu_count']} logical cpus, mkl={info['mkl']})")
    if "gpu" in info:
        print(f"# gpu: {info['gpu']} (cuda {info['cuda']})")
    print(f"# date {info['date']}, loadavg {info.get('loadavg')}")
    print(f"# float32, median of repeated runs after warm-up, per-case budget {args.max_seconds_per_case}s")
    print(flush=True)

    rows = []

    def record(case, d, batch, res, note=""):
        row = {"case": case, "d": d, "batch": batch, "note": note}
        if res is not None:
            row.update(res)
        rows.append(row)
        if res:
            fwd = f"{fmt_ms(res['fwd'])} (min {fmt_ms(res['fwd'], 'min_ms')})"
            fb = f"{fmt_ms(res['fwd_bwd'])} (min {fmt_ms(res['fwd_bwd'], 'min_ms')})"
        else:
            fwd = fb = "skipped"
        print(f"  {case:<24} d={d:<8} batch={batch:<5} fwd {fwd:>22} ms  fwd+bwd {fb:>22} ms  {note}",
              file=sys.stderr, flush=True)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    global_warmup(args.warmup_seconds, dev, timer)
    torch.manual_seed(0)
    for d in sizes:
        for batch in batches:
            if "circulant" in groups:
                m = BlockCirculantLinear(1, 1, d, device=dev)
                record("circulant (rfft/irfft)", d, batch, bench_module(m, d, d, batch, timer, dev))
                del m
            if "dense" in groups:
                gib = d * d * 4 / 2**30
                if gib > args.max_dense_gib:
                    record("dense nn.Linear", d, batch, None, f"weight {gib:.0f} GiB > {args.max_dense_gib:g} GiB")
                else:
                    m = nn.Linear(d, d, bias=False, device=dev)
                    record("dense nn.Linear", d, batch, bench_module(m, d, d, batch, timer, dev))
                    del m

    if "big" in groups:
        for batch in batches:
            m = BlockCirculantLinear(1, 1, big_d, device=dev)
            record("circulant (rfft/irfft)", big_d, batch, bench_module(m, big_d, big_d, batch, timer, dev))
            del m

    block_batches = [b for b in batches if b >= 128] or batches[-1:]
    if "block" in groups:
        d = 4096
        for b in (256, 1024):
            for batch in block_batches:
                m = BlockCirculantLinear(d // b, d // b, b, device=dev)
                record(f"block-circulant b={b}", d, batch, bench_module(m, d, d, batch, timer, dev))
                del m

    if "floor" in groups:
        d = 4096
        for batch in block_batches:
            record("FFT floor (2 / 4 FFTs)", d, batch, bench_fft_floor(d, batch, timer, dev))

    print()
    print("| case | d | batch | fwd ms | fwd+bwd ms | fwd min ms | fwd+bwd min ms | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        fwd, fb = row.get("fwd"), row.get("fwd_bwd")
        runs = f"{fwd['repeats']}/{fb['repeats']}" if fwd else "-"
        print(
            f"| {row['case']} | {row['d']} | {row['batch']} | {fmt_ms(fwd)} | {fmt_ms(fb)} "
            f"| {fmt_ms(fwd, 'min_ms')} | {fmt_ms(fb, 'min_ms')} | {runs} |"
        )
    print()
    print("FFT floor: fwd column = rfft+irfft per sample, fwd+bwd column = 4 real FFTs per sample "
          "(what circulant fwd / fwd+bwd must do at least).")

    if args.json:
        with open(args.json, "w") as f:
            meta = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
            json.dump({"info": info, "args": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
