#!/usr/bin/env python3
"""Generate the tables of README.md and docs/*.md from the raw files committed under docs/.

    python3 scripts/docs-tables.py           # rewrite every generated table in place
    python3 scripts/docs-tables.py --check   # exit 1 (and print a diff) if a table is stale
    python3 scripts/docs-tables.py --list    # the table names and the raw files they read

A generated table sits between two marker comments in a markdown file:

    <!-- table:results-mnist BEGIN -->
    ... (generated; edits here are overwritten) ...
    <!-- table:results-mnist END -->

Raw data read (all paths relative to the repository root):

- docs/runs/<dataset>-<network>-<head>[-<variant>]/ : metrics.jsonl, train.log, curves.png of
  one training run (layout in docs/runs/README.md). Both metrics.jsonl formats are read:
  the current one (one line per epoch with validation figures, then a last line with
  "test_acc") and the one written before the validation split (no "test_acc" line; its
  "val_acc"/"val_loss" are test-split figures, and the best epoch was chosen on them).
- LEGACY_RUNS below: the CIFAR-10 runs of 2026-11-26 on an H200 (old format), kept as
  docs/gpu/<dir>/<name>.log and <name>.metrics.jsonl.
- docs/bench/cpu-*.md: outputs of `cargo bench -p circulant-kernels --bench circulant`;
  docs/bench/torch-cpu-*.md: outputs of bench/torch_circulant.py on the same machine.
- docs/gpu/<dir>/bench_cuda.md, torch_circulant.md, diag.md: GPU benchmark outputs.
- docs/bench/nets-<date>-<device>[-bf16][-on-<machine>].json: whole-network speed from
  scripts/bench-nets.sh (the newest file per device, precision and machine tag is used).

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/RESULTS.md", "docs/BENCHMARKS.md"]
MARKER = re.compile(r"^<!-- table:([a-z0-9-]+) (BEGIN|END) -->[ \t]*$", re.M)

RUNS_DIR = "docs/runs"
# Runs made before the runs/ layout and the validation split: (log, metrics, dataset, where).
LEGACY_RUNS = [
    ("docs/gpu/2026-11-26-h200/cifar-dense.log", "docs/gpu/2026-11-26-h200/cifar-dense.metrics.jsonl",
     "cifar10", "H200, 2026-11-26"),
    ("docs/gpu/2026-11-26-h200/cifar-circulant.log",
     "docs/gpu/2026-11-26-h200/cifar-circulant.metrics.jsonl", "cifar10", "H200, 2026-11-26"),
    ("docs/gpu/2026-11-26-h200-b/cifar-block64.log",
     "docs/gpu/2026-11-26-h200-b/cifar-block64.metrics.jsonl", "cifar10", "H200, 2026-11-26"),
]
QUICKSTART_RUN = "fashion-mnist-mnist-cnn-circulant-quickstart"
# CPU op benchmark, the final op of 2026-11-26: default settings of the bench then (glibc heap
# kept, candle element-wise ops serial) and the same binary with --candle-pool.
CPU_SERIAL = "docs/bench/cpu-2026-11-26-s3-serial-candle.md"
CPU_POOL = "docs/bench/cpu-2026-11-26-s3-candle-pool.md"
# The same bench for the previous version of the op (realfft, one row at a time).
CPU_PREV_SERIAL = "docs/bench/cpu-2026-11-26-serial-candle.md"
CPU_PREV_POOL = "docs/bench/cpu-2026-11-26-candle-pool.md"
TORCH_CPU = "docs/bench/torch-cpu-2026-11-26-s3.md"
GPU_DIR = "docs/gpu/2026-11-26-h200-b"
GPU_OURS = f"{GPU_DIR}/bench_cuda.md"
GPU_TORCH = f"{GPU_DIR}/torch_circulant.md"
GPU_DIAG = f"{GPU_DIR}/diag.md"

DATASETS = ["fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic"]
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "imagefolder": "image folder", "synthetic": "synthetic"}
NETWORKS = ["mnist-cnn", "cifar-cnn", "alexnet", "mlp"]


class DataError(Exception):
    pass


def read(rel: str) -> str:
    try:
        return (ROOT / rel).read_text()
    except OSError as e:
        raise DataError(f"cannot read {rel}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------------
# Formatting


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def err(acc: float) -> str:
    return f"{100 * (1 - acc):.2f}%"


def thousands(n: float) -> str:
    return f"{n:,.0f}"


def vs(ours: str, theirs: str) -> str:
    """'2.3× faster' / '1.5× slower' / 'equal' for two times in ms (ours, theirs)."""
    try:
        o, t = float(ours), float(theirs)
    except ValueError:
        return "–"
    r = t / o
    if 1 / 1.05 <= r <= 1.05:
        return "equal"
    return f"{r:.1f}× faster" if r > 1 else f"{1 / r:.1f}× slower"


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    sep = align or "|" + "|".join("---" for _ in header) + "|"
    out = ["| " + " | ".join(header) + " |", sep]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


class Ctx:
    """Where the table goes: links are made relative to its file."""

    def __init__(self, md_file: str):
        self.base = (ROOT / md_file).parent

    def link(self, rel: str) -> str:
        p = os.path.relpath(ROOT / rel, self.base)
        return p + ("/" if (ROOT / rel).is_dir() else "")


# ---------------------------------------------------------------------------------------------
# Markdown tables in the raw benchmark outputs


def parse_md_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in `text` as a list of rows keyed by header."""
    tables, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def cpu_bench(rel: str) -> tuple[dict, list[dict]]:
    """(op rows by (case, d, batch), floor-ratio rows) of a `cargo bench` output."""
    tables = parse_md_tables(read(rel))
    rows, ratios = {}, []
    for t in tables:
        if t and "case" in t[0]:
            for r in t:
                rows.setdefault((r["case"], r["d"], r["batch"]), r)
        elif t and "median ratio" in t[0]:
            ratios = t
    if not rows:
        raise DataError(f"{rel}: no benchmark table")
    return rows, ratios


def cell(rows: dict, case: str, d: str, batch: str, col: str, src: str) -> str:
    try:
        return rows[(case, d, batch)][col] or ""
    except KeyError:
        raise DataError(f"{src}: no row '{case}' d={d} batch={batch}") from None


def first_rows(rel: str, key_cols: tuple[str, ...]) -> dict:
    out = {}
    for t in parse_md_tables(read(rel)):
        for r in t:
            if all(k in r for k in key_cols):
                out.setdefault(tuple(r[k] for k in key_cols), r)
    if not out:
        raise DataError(f"{rel}: no table with columns {key_cols}")
    return out


# ---------------------------------------------------------------------------------------------
# Training runs


@dataclass
class Run:
    name: str
    path: str  # directory (docs/runs) or log file (legacy), relative to the root
    dataset: str
    network: str
    head: str
    classifier: str | None
    params: int | None
    dense_equivalent: int | None
    compression: float | None
    epochs: list[dict]
    test: dict | None
    legacy: bool
    where: str = ""
    metrics_path: str = ""
    log_path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def full_epochs(self) -> list[dict]:
        return [e for e in self.epochs if not e.get("partial")]

    def head_text(self) -> str:
        return self.head + (f" ({self.classifier} classifier)" if self.classifier else "")

    def test_acc(self) -> float | None:
        if self.test is not None:
            return self.test["test_acc"]
        if self.legacy and self.epochs:
            return self.epochs[-1]["val_acc"]  # old format: val_acc was the test split
        return None

    def best_val(self) -> tuple[int, float] | None:
        """(epoch, accuracy) of the best validation epoch (first of equals); new format only."""
        if self.legacy:
            return None
        best = None
        for e in self.epochs:
            if e.get("val_acc") is not None and (best is None or e["val_acc"] > best[1]):
                best = (e["epoch"], e["val_acc"])
        return best


HEADER_LINE = re.compile(
    r"^(?P<net>\S+) with (?P<head>\S+) heads(?: \((?P<cls>\S+) classifier\))?: (?P<p>\d+) parameters "
    r"\((?P<d>\d+) dense-equivalent, (?P<c>[\d.]+)x smaller\)", re.M)


def read_metrics(rel: str) -> tuple[list[dict], dict | None, bool]:
    """(epoch lines, test line or None, legacy?) of a metrics.jsonl."""
    epochs, test = [], None
    for n, line in enumerate(read(rel).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{rel}:{n}: not JSON ({e})") from None
        if "test_acc" in obj:
            test = obj
        elif "epoch" in obj:
            epochs.append(obj)
        else:
            raise DataError(f"{rel}:{n}: neither an epoch nor a test line")
    if not epochs:
        raise DataError(f"{rel}: no epoch lines")
    return epochs, test, test is None


def split_run_name(name: str) -> tuple[str, str, str]:
    """(dataset, network, rest) of '<dataset>-<network>-<head>[-<variant>]'."""
    for ds in DATASETS:
        if name.startswith(ds + "-"):
            rest = name[len(ds) + 1:]
            for net in NETWORKS:
                if rest.startswith(net + "-"):
                    return ds, net, rest[len(net) + 1:]
    raise DataError(f"{RUNS_DIR}/{name}: the name is not <dataset>-<network>-<head>[-<variant>] "
                    f"(datasets: {', '.join(DATASETS)}; networks: {', '.join(NETWORKS)})")


def load_run(rel_dir: str) -> Run:
    name = os.path.basename(rel_dir)
    dataset, network, _ = split_run_name(name)
    for f in ("metrics.jsonl", "train.log"):
        if not (ROOT / rel_dir / f).is_file():
            raise DataError(f"{rel_dir}: missing {f} (layout: {RUNS_DIR}/README.md)")
    epochs, test, legacy = read_metrics(f"{rel_dir}/metrics.jsonl")
    log = read(f"{rel_dir}/train.log")
    m = HEADER_LINE.search(log)
    if not m:
        raise DataError(f"{rel_dir}/train.log: no '<network> with <head> heads: N parameters' line")
    if m["net"] != network:
        raise DataError(f"{rel_dir}: the name says {network}, train.log says {m['net']}")
    # A run of the current trainer that has not been tested yet has no test line either; its
    # log names the validation split ("data: ...: N train / M validation / K test images").
    legacy = legacy and not re.search(r"^data: .* validation / ", log, re.M)
    return Run(name=name, path=rel_dir, dataset=dataset, network=network, head=m["head"],
               classifier=m["cls"], params=int(m["p"]), dense_equivalent=int(m["d"]),
               compression=float(m["c"]), epochs=epochs, test=test, legacy=legacy,
               metrics_path=f"{rel_dir}/metrics.jsonl", log_path=f"{rel_dir}/train.log")


def load_legacy(log_rel: str, metrics_rel: str, dataset: str, where: str) -> Run:
    epochs, test, legacy = read_metrics(metrics_rel)
    m = HEADER_LINE.search(read(log_rel))
    if not m:
        raise DataError(f"{log_rel}: no '<network> with <head> heads: N parameters' line")
    name = os.path.basename(log_rel)[: -len(".log")]
    return Run(name=name, path=log_rel, dataset=dataset, network=m["net"], head=m["head"],
               classifier=m["cls"], params=int(m["p"]), dense_equivalent=int(m["d"]),
               compression=float(m["c"]), epochs=epochs, test=test, legacy=legacy, where=where,
               metrics_path=metrics_rel, log_path=log_rel)


HEAD_ORDER = {"dense": 0, "circulant": 1}


def run_key(r: Run):
    ds = {"mnist": 0, "fashion-mnist": 1, "cifar10": 2}.get(r.dataset, 9)
    return (ds, r.network, r.legacy, HEAD_ORDER.get(r.head, 2), r.head, r.classifier or "", r.name)


_RUNS: list[Run] | None = None


def all_runs() -> list[Run]:
    global _RUNS
    if _RUNS is None:
        runs = [load_legacy(*spec) for spec in LEGACY_RUNS]
        d = ROOT / RUNS_DIR
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if sub.is_dir():
                    runs.append(load_run(f"{RUNS_DIR}/{sub.name}"))
        _RUNS = sorted(runs, key=run_key)
    return _RUNS


def epochs_text(r: Run) -> str:
    n = len(r.full_epochs)
    part = [e for e in r.epochs if e.get("partial")]
    return f"{n} (+ part of one, to step {part[-1]['step']})" if part else str(n)


def params_text(r: Run) -> str:
    if r.params is None:
        return "–"
    if r.compression and r.compression != 1.0:
        return f"{r.params:,} ({r.compression:.1f}× fewer)"
    return f"{r.params:,}"


def run_rows(ctx: Ctx, runs: list[Run]) -> tuple[list[list[str]], bool]:
    rows, any_legacy = [], False
    for r in runs:
        full = r.full_epochs or r.epochs
        secs = statistics.median(e["seconds"] for e in full)
        ips = statistics.median(e["images_per_sec"] for e in full)
        ta = r.test_acc()
        if r.path == r.log_path:  # not a docs/runs directory: link both files
            name = (f"{r.name} ([log]({ctx.link(r.log_path)}), "
                    f"[metrics.jsonl]({ctx.link(r.metrics_path)}))")
        else:
            name = f"[{r.name}]({ctx.link(r.path)})"
        if r.legacy:
            any_legacy = True
            name += "†"
            tested = "last epoch†"
            val = "– (no validation split)†"
        else:
            ck = r.test.get("checkpoint", "?") if r.test else "not tested yet"
            b = r.best_val()
            tested = f"{ck}" + (f" (epoch {b[0]})" if b and ck == "best.safetensors" else "")
            val = err(b[1]) if b else "–"
        rows.append([name, r.head_text(), epochs_text(r), err(ta) if ta is not None else "–", tested,
                     val, params_text(r), f"{secs:.1f}", thousands(ips)])
    return rows, any_legacy


LEGACY_NOTE = (
    "† Made before the trainer held out a validation split: every epoch was evaluated on the "
    "test split (the `val_loss`/`val_acc` fields of these metrics.jsonl files, and the `val` "
    "columns of their logs and curves, are test figures) and `best.safetensors` was chosen on "
    "it. The test error shown is that of the last epoch's weights (`model.safetensors`), which "
    "no choice on the test split went into; the number of epochs was fixed in advance.")


def t_results(dataset: str | None, empty: str):
    """Runs of `dataset` (None: of every dataset without a table of its own)."""
    def gen(ctx: Ctx) -> str:
        runs = [r for r in all_runs()
                if r.dataset == dataset or (dataset is None and r.dataset not in OWN_TABLE)]
        if not runs:
            return empty
        rows, legacy = run_rows(ctx, runs)
        out = md_table(["run (raw data)", "head", "epochs", "test error", "weights tested",
                        "validation error", "parameters", "s/epoch (median)", "train img/s (median)"],
                       rows)
        if legacy:
            out += "\n\n" + LEGACY_NOTE
        return out
    return gen


def t_seed_summary(dataset: str, epochs: int):
    """Runs of `dataset` with `epochs` full epochs, grouped by recipe (the run name without its
    `-seed<N>` suffix; runs without one are seed 0): test error per seed and the mean."""
    def gen(ctx: Ctx) -> str:
        groups: dict[str, list[tuple[int, Run]]] = {}
        for r in all_runs():
            if r.dataset != dataset or r.legacy or len(r.full_epochs) != epochs or r.test is None:
                continue
            m = re.fullmatch(r"(?P<recipe>.*?)(?:-seed(?P<seed>\d+))?", r.name)
            groups.setdefault(m["recipe"], []).append((int(m["seed"] or 0), r))
        rows = []
        for recipe, runs in groups.items():
            runs.sort(key=lambda sr: sr[0])
            errs = [1 - r.test_acc() for _, r in runs]
            first = runs[0][1]
            rows.append([first.head_text(), recipe.split(f"{first.network}-", 1)[1],
                         ", ".join(f"{err(1 - e)} (seed {s})" for (s, _), e in zip(runs, errs)),
                         f"{100 * statistics.mean(errs):.2f}%",
                         params_text(first)])
        if not rows:
            return f"No {DATASET_NAMES.get(dataset, dataset)} runs of {epochs} epochs committed."
        return md_table(["head", "recipe (run name less -seed<N>)", "test error per seed",
                         "mean test error", "parameters"],
                        rows)
    return gen


def t_readme_results(ctx: Ctx) -> str:
    rows, legacy = [], False
    for r in all_runs():
        ta = r.test_acc()
        mark = "†" if r.legacy else ""
        legacy |= r.legacy
        rows.append([DATASET_NAMES.get(r.dataset, r.dataset), r.network,
                     f"[{r.name}]({ctx.link(r.path)}){mark}", r.head_text(), epochs_text(r),
                     (err(ta) if ta is not None else "–") + mark, params_text(r)])
    out = md_table(["data", "network", "run (raw data)", "head", "epochs", "test error", "parameters"],
                   rows)
    if legacy:
        out += ("\n\n† Run before the validation split existed: its epochs were evaluated on the "
                "test split; the error is the last epoch's (details in "
                f"[`docs/RESULTS.md`]({ctx.link('docs/RESULTS.md')})).")
    return out


def t_readme_quickstart(ctx: Ctx) -> str:
    rel = f"{RUNS_DIR}/{QUICKSTART_RUN}"
    if not (ROOT / rel).is_dir():
        return (f"(No committed run of this command yet: when `{rel}/` is added, its test "
                "accuracy is quoted here.)")
    r = load_run(rel)
    ta = r.test_acc()
    if ta is None:
        raise DataError(f"{rel}/metrics.jsonl: no test result")
    b = r.best_val()
    full = r.full_epochs or r.epochs
    secs = statistics.median(e["seconds"] for e in full)
    tested = r.test.get("checkpoint", "?") if r.test else "the last epoch's weights"
    s = (f"The committed run of this command ([`{ctx.link(rel)}`]({ctx.link(rel)}): "
         f"`train.log`, `metrics.jsonl`, `curves.png`) reached **{pct(ta)} test accuracy** "
         f"({tested}")
    if b:
        s += f", validation accuracy {pct(b[1])} at epoch {b[0]}"
    s += f") after {epochs_text(r)} epochs, {secs:.0f} s per epoch (median)."
    return s


# ---------------------------------------------------------------------------------------------
# Benchmarks


def t_cpu_op(ctx: Ctx) -> str:
    serial, _ = cpu_bench(CPU_SERIAL)
    pool, _ = cpu_bench(CPU_POOL)
    rows = []
    for key, r in serial.items():
        p = pool.get(key, {})
        rows.append([r["case"], r["d"], r["batch"], r["fwd ms"], r["fwd+bwd ms"],
                     p.get("fwd ms", "–"), p.get("fwd+bwd ms", "–")])
    return (md_table(["case", "d", "batch", "fwd ms", "fwd+bwd ms", "fwd ms, candle pool",
                      "fwd+bwd ms, candle pool"], rows)
            + f"\n\nRaw outputs: [{os.path.basename(CPU_SERIAL)}]({ctx.link(CPU_SERIAL)}) "
            f"(candle's element-wise ops on the calling thread), "
            f"[{os.path.basename(CPU_POOL)}]({ctx.link(CPU_POOL)}) (`--candle-pool`).")


def t_cpu_ratio(ctx: Ctx) -> str:
    _, rs = cpu_bench(CPU_SERIAL)
    _, rp = cpu_bench(CPU_POOL)
    pool = {(r["d"], r["floor"]): r for r in rp}
    rows = []
    for r in rs:
        p = pool.get((r["d"], r["floor"]))
        rows.append([r["d"], r["floor"], f"{r['median ratio']} ({r['quartiles']})",
                     f"{p['median ratio']} ({p['quartiles']})" if p else "–", r["blocks"]])
    return md_table(["d (batch 128)", "floor", "op / floor, median (quartiles)",
                     "same, candle pool", "blocks"], rows)


def t_cpu_torch(ctx: Ctx) -> str:
    torch = first_rows(TORCH_CPU, ("case", "d", "batch"))
    ours, _ = cpu_bench(CPU_SERIAL)
    pairs = [("circulant (rfft/irfft)", "circulant"), ("dense nn.Linear", "dense (candle Linear)"),
             ("block-circulant b=256", "block-circulant b=256"),
             ("block-circulant b=1024", "block-circulant b=1024"),
             ("FFT floor (2 / 4 FFTs)", "FFT floor, real (4 rfft/irfft per sample)")]
    rows = []
    for (tc, d, b), t in torch.items():
        oc = dict(pairs).get(tc)
        o = ours.get((oc, d, b)) if oc else None
        of, ob = (o["fwd ms"], o["fwd+bwd ms"]) if o else ("–", "–")
        if tc.startswith("FFT floor"):
            of = "–"  # ours has no forward-only floor
        rows.append([tc, d, b, t["fwd ms"], t["fwd+bwd ms"], of or "–", ob or "–",
                     vs(ob, t["fwd+bwd ms"]) if o else "–"])
    return (md_table(["PyTorch case", "d", "batch", "PyTorch fwd ms", "PyTorch fwd+bwd ms",
                      "ours fwd ms", "ours fwd+bwd ms", "ours vs PyTorch, fwd+bwd"], rows)
            + f"\n\nRaw outputs: [{os.path.basename(TORCH_CPU)}]({ctx.link(TORCH_CPU)}), "
            f"ours [{os.path.basename(CPU_SERIAL)}]({ctx.link(CPU_SERIAL)}). "
            "Ours vs PyTorch for the FFT floor row compares realfft with MKL's FFT.")


def t_cpu_pools(ctx: Ctx) -> str:
    files = [CPU_SERIAL, CPU_POOL, CPU_PREV_SERIAL, CPU_PREV_POOL]
    data = [cpu_bench(f)[0] for f in files]
    cases = [("circulant", "4096"), ("circulant", "9216"), ("circulant", "1024"),
             ("circulant", "1048576"), ("dense (candle Linear)", "4096")]
    rows = []
    for case, d in cases:
        vals = [cell(t, case, d, "128", "fwd+bwd ms", f) for t, f in zip(data, files)]
        rows.append([f"{case} fwd+bwd, d = {d}, batch 128"] + vals)
    head = ["ms"] + [f"[{os.path.basename(f)}]({ctx.link(f)})" for f in files]
    return md_table(head, rows)


def t_readme_speed(ctx: Ctx) -> str:
    serial, _ = cpu_bench(CPU_SERIAL)
    pool, _ = cpu_bench(CPU_POOL)
    torch = first_rows(TORCH_CPU, ("case", "d", "batch"))
    rows = []
    for d, b in (("4096", "1"), ("4096", "128"), ("16384", "128"), ("1048576", "128")):
        cf = cell(serial, "circulant", d, b, "fwd ms", CPU_SERIAL)
        cb = cell(serial, "circulant", d, b, "fwd+bwd ms", CPU_SERIAL)
        dn = pool.get(("dense (candle Linear)", d, b))
        df, db = (dn["fwd ms"], dn["fwd+bwd ms"] or "–") if dn else ("–", "–")
        t = torch.get(("circulant (rfft/irfft)", d, b))
        rows.append([f"2^20" if d == "1048576" else d, b, cf, cb, df, db,
                     t["fwd+bwd ms"] if t else "not measured"])
    return (md_table(["d", "batch", "circulant fwd", "circulant fwd+bwd", "candle dense fwd",
                      "candle dense fwd+bwd", "PyTorch `torch.fft` layer fwd+bwd"], rows)
            + f"\n\nRaw outputs: [{os.path.basename(CPU_SERIAL)}]({ctx.link(CPU_SERIAL)}), dense "
            f"columns from [{os.path.basename(CPU_POOL)}]({ctx.link(CPU_POOL)}) (candle's own "
            f"thread pool, its faster setting), PyTorch from "
            f"[{os.path.basename(TORCH_CPU)}]({ctx.link(TORCH_CPU)}).")


def t_gpu(ctx: Ctx) -> str:
    ours = first_rows(GPU_OURS, ("d", "batch"))
    torch = first_rows(GPU_TORCH, ("case", "d", "batch"))
    rows = []
    for (d, b), o in ours.items():
        tc = torch.get(("circulant (rfft/irfft)", d, b))
        tl = torch.get(("dense nn.Linear", d, b))
        tf, tb = (tc["fwd ms"], tc["fwd+bwd ms"]) if tc else ("–", "–")
        rows.append([d, b, o["circulant fwd"], o["circulant fwd+bwd"], tf, tb,
                     vs(o["circulant fwd+bwd"], tb) if tc else "–", o["dense fwd+bwd"],
                     tl["fwd+bwd ms"] if tl else "not run"])
    return (md_table(["d", "batch", "ours fwd", "ours fwd+bwd", "PyTorch fwd", "PyTorch fwd+bwd",
                      "ours vs PyTorch, fwd+bwd", "candle dense fwd+bwd",
                      "PyTorch nn.Linear fwd+bwd"], rows,
                     "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            + f"\n\nRaw outputs: [{os.path.basename(GPU_OURS)}]({ctx.link(GPU_OURS)}) (ours and "
            f"candle dense), [{os.path.basename(GPU_TORCH)}]({ctx.link(GPU_TORCH)}) (PyTorch; "
            "`skipped`: a dense weight over the run's `--max-dense-gib 2`). `n/a`: candle's CUDA "
            "kernels cannot hold a 65536 × 65536 weight (2^32 elements); `-`: dense not run.")


BREAKDOWN = re.compile(r"^breakdown d=(\d+) batch=(\d+): fwd ([\d.]+) ms, \+loss ([\d.]+), "
                       r"\+backward ([\d.]+) \(of which the op's own backward ([\d.]+)\)$", re.M)


def t_gpu_breakdown(ctx: Ctx) -> str:
    text = read(GPU_DIAG)
    rows = []
    for sec in re.split(r"^## flags:", text, flags=re.M)[1:]:
        flags = sec.splitlines()[0].strip() or "(none)"
        for m in BREAKDOWN.finditer(sec):
            rows.append([f"`{flags}`" if flags != "(none)" else flags, *m.groups()])
    if not rows:
        raise DataError(f"{GPU_DIAG}: no breakdown lines")
    return (md_table(["`bench_cuda` flags", "d", "batch", "forward ms", "then loss ms",
                      "then backward ms", "of which the op's own backward ms"], rows)
            + f"\n\nRaw output: [{os.path.basename(GPU_DIAG)}]({ctx.link(GPU_DIAG)}).")


NETS = re.compile(r"^nets-(\d{4}-\d{2}-\d{2})-([a-z0-9]+?)(-bf16)?(?:-on-([a-z0-9-]+))?\.json$")


def t_nets(ctx: Ctx) -> str:
    d = ROOT / "docs/bench"
    newest: dict[tuple[str, str], tuple[str, str]] = {}
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        m = NETS.match(f.name)
        if m:
            key = (m[2], m[3] or "", m[4] or "")
            if key not in newest or m[1] >= newest[key][0]:
                newest[key] = (m[1], f.name)
    if not newest:
        return ("No whole-network measurement is committed yet: `scripts/bench-nets.sh` writes "
                "`docs/bench/nets-<date>-<device>.json`, and this table is generated from the "
                "newest one.")
    blocks = []
    for (_, _, machine), (_, fname) in sorted(newest.items()):
        rel = f"docs/bench/{fname}"
        try:
            rows = json.loads(read(rel))
        except json.JSONDecodeError as e:
            raise DataError(f"{rel}: not JSON ({e})") from None
        if not isinstance(rows, list) or not rows:
            raise DataError(f"{rel}: expected a non-empty JSON array")
        m = rows[0].get("machine") or {}
        desc = [f"{m.get('date', '?')}", f"{m.get('cpu', '?')} ({m.get('logical_cpus', '?')} logical CPUs, "
                f"{m.get('threads', '?')} threads)"]
        if m.get("gpu"):
            desc.append(m["gpu"])
        desc.append(f"PyTorch {m.get('torch_version', '?')}")
        body = []
        for r in rows:
            def f(v):
                if v is None:
                    return "failed"
                return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

            def ratio(a, b):
                return "–" if a is None or b is None else f"{a / b:.2f}×"
            body.append([r["network"], r["head"], str(r["batch"]), f(r.get("ours_train_img_s")),
                         f(r.get("torch_train_img_s")), ratio(r.get("ours_train_img_s"), r.get("torch_train_img_s")),
                         f(r.get("ours_infer_img_s")), f(r.get("torch_infer_img_s")),
                         ratio(r.get("ours_infer_img_s"), r.get("torch_infer_img_s"))])
        dev, prec = rows[0].get("device", "?"), rows[0].get("precision", "?")
        blocks.append(
            f"{dev}, {prec}{', ' + machine if machine else ''}: " + "; ".join(desc) + f" ([{fname}]({ctx.link(rel)}))\n\n"
            + md_table(["network", "head", "batch", "train img/s, ours", "train img/s, PyTorch",
                        "ours / PyTorch", "infer img/s, ours", "infer img/s, PyTorch",
                        "ours / PyTorch"], body, "|---|---|---:|---:|---:|---:|---:|---:|---:|"))
    return "\n\n".join(blocks)


CONV_LAYERS = "docs/bench/conv-layers-2026-12-03-1615utc-cpu-on-xeon-avx512.txt"


def t_conv_layers(ctx: Ctx) -> str:
    """Per-layer conv times, ours vs PyTorch: the best of the file's runs per layer."""
    text = read(CONV_LAYERS)
    best: dict[tuple[str, int, str, str], float] = {}
    case = None
    for line in text.splitlines():
        m = re.match(r"^## (\w+) batch (\d+)( train)?, run \d+: (ours|PyTorch)", line)
        if m:
            case = (m[1] + (" (train)" if m[3] else ""), int(m[2]), m[4])
            continue
        m = re.match(r"^(conv\d|pool1)(?: b\d+)? ([0-9.]+) ms$", line)
        if m and case:
            key = (case[0], case[1], m[1], case[2])
            best[key] = min(best.get(key, float("inf")), float(m[2]))
    if not best:
        raise DataError(f"{CONV_LAYERS}: no timings")
    header = next(l for l in text.splitlines() if l.startswith("# 20"))[2:]
    rows = []
    for net, b in sorted({(k[0], k[1]) for k in best}):
        sums = [0.0, 0.0]
        for layer in ["conv1", "conv2", "conv3", "conv4", "conv5", "pool1"]:
            ours, torch = best.get((net, b, layer, "ours")), best.get((net, b, layer, "PyTorch"))
            if ours is None and torch is None and layer == "pool1":
                continue
            if ours is None or torch is None:
                raise DataError(f"{CONV_LAYERS}: {net} {layer} batch {b} lacks a side")
            sums[0] += ours
            sums[1] += torch
            rows.append([net, str(b), layer, f"{ours:.2f}", f"{torch:.2f}", f"{torch / ours:.2f}×"])
        rows.append([net, str(b), "**all**", f"**{sums[0]:.1f}**", f"**{sums[1]:.1f}**",
                     f"**{sums[1] / sums[0]:.2f}×**"])
    return (f"{header} ([{os.path.basename(CONV_LAYERS)}]({ctx.link(CONV_LAYERS)}); "
            "the faster of two runs per layer)\n\n"
            + md_table(["network", "batch", "layer", "ours ms", "PyTorch ms", "PyTorch / ours"],
                       rows, "|---|---:|---|---:|---:|---:|"))


OP_PLAIN = "docs/bench/op-plain-call-fresh-2026-11-30-cpu.txt"


def t_op_plain(ctx: Ctx) -> str:
    """The op as a plain call in fresh processes, ours vs PyTorch per run, and candle's dense."""
    text = read(OP_PLAIN)
    runs: dict[int, dict[str, float]] = {}
    run = side = None
    dense = None
    for line in text.splitlines():
        m = re.match(r"^## run (\d+): (ours|PyTorch)", line)
        if m:
            run, side = int(m[1]), m[2]
            continue
        m = re.match(r"^circulant d=4096 batch=128 fwd\+bwd: median ([0-9.]+) ms", line)
        if m and side == "ours":
            runs.setdefault(run, {})["ours"] = float(m[1])
        cells = [c.strip() for c in line.strip("|").split("|")]
        if side == "PyTorch" and len(cells) > 4 and cells[0].startswith("circulant"):
            runs.setdefault(run, {})["torch"] = float(cells[4])
        m = re.match(r"^dense \(candle Linear\) d=4096 batch=128 fwd\+bwd: median ([0-9.]+) ms", line)
        if m:
            dense = float(m[1])
    if not runs or any(len(v) != 2 for v in runs.values()) or dense is None:
        raise DataError(f"{OP_PLAIN}: a run lacks a side, or no dense line")
    rows = [[str(k), f"{v['ours']:.2f}", f"{v['torch']:.2f}", f"{v['torch'] / v['ours']:.2f}×"]
            for k, v in sorted(runs.items())]
    ours = statistics.median(v["ours"] for v in runs.values())
    torch = statistics.median(v["torch"] for v in runs.values())
    rows.append(["**median**", f"**{ours:.2f}**", f"**{torch:.2f}**", f"**{torch / ours:.2f}×**"])
    header = next(l for l in text.splitlines() if l.startswith("# 20"))[2:]
    return (f"{header} ([{os.path.basename(OP_PLAIN)}]({ctx.link(OP_PLAIN)}); each run a fresh "
            "process, medians of its calls, ms)\n\n"
            + md_table(["run", "ours", "PyTorch", "PyTorch / ours"], rows, "|---|---:|---:|---:|")
            + f"\n\ncandle's dense layer (4096 × 4096 weight, batch 128) in a fresh process: "
            f"{dense:.0f} ms fwd+bwd, {dense / ours:.0f}× the op's median.")


OWN_TABLE = ("mnist", "fashion-mnist", "cifar10")

TABLES = {
    "readme-quickstart": (t_readme_quickstart, [f"{RUNS_DIR}/{QUICKSTART_RUN}/"]),
    "readme-results": (t_readme_results, [f"{RUNS_DIR}/*/", "LEGACY_RUNS"]),
    "readme-speed": (t_readme_speed, [CPU_SERIAL, CPU_POOL, TORCH_CPU]),
    "nets": (t_nets, ["docs/bench/nets-*.json (newest per device, precision and machine)"]),
    "bench-conv-layers": (t_conv_layers, [CONV_LAYERS]),
    "bench-op-plain": (t_op_plain, [OP_PLAIN]),
    "results-mnist": (t_results("mnist", (
        "No MNIST run is committed yet. `scripts/reproduce.sh quick` trains the dense and "
        "circulant heads for one epoch; a run committed as `docs/runs/mnist-mnist-cnn-<head>-…/` "
        "appears here.")), [f"{RUNS_DIR}/mnist-*/"]),
    "results-fashion-mnist": (t_results("fashion-mnist", (
        "No Fashion-MNIST run is committed yet (runs committed as "
        "`docs/runs/fashion-mnist-mnist-cnn-<head>-…/` appear here).")),
        [f"{RUNS_DIR}/fashion-mnist-*/"]),
    "results-fashion-mnist-seeds": (t_seed_summary("fashion-mnist", 10),
                                    [f"{RUNS_DIR}/fashion-mnist-*/"]),
    "results-cifar10": (t_results("cifar10", "No CIFAR-10 run is committed."),
                        [f"{RUNS_DIR}/cifar10-*/", "LEGACY_RUNS"]),
    "results-other": (t_results(None, "None committed."),
                      [f"{RUNS_DIR}/imagefolder-*/", f"{RUNS_DIR}/synthetic-*/"]),
    "bench-cpu-op": (t_cpu_op, [CPU_SERIAL, CPU_POOL]),
    "bench-cpu-ratio": (t_cpu_ratio, [CPU_SERIAL, CPU_POOL]),
    "bench-cpu-torch": (t_cpu_torch, [TORCH_CPU, CPU_SERIAL]),
    "bench-cpu-pools": (t_cpu_pools, [CPU_SERIAL, CPU_POOL, CPU_PREV_SERIAL, CPU_PREV_POOL]),
    "bench-gpu": (t_gpu, [GPU_OURS, GPU_TORCH]),
    "bench-gpu-breakdown": (t_gpu_breakdown, [GPU_DIAG]),
}


# ---------------------------------------------------------------------------------------------
# Markers


def render(md_file: str, text: str) -> str:
    """`text` with every generated table replaced by what the raw files give."""
    out, pos, open_name, open_end = [], 0, None, 0
    for m in MARKER.finditer(text):
        name, kind = m[1], m[2]
        line = text.count("\n", 0, m.start()) + 1
        if kind == "BEGIN":
            if open_name:
                raise DataError(f"{md_file}:{line}: table:{name} BEGIN inside table:{open_name}")
            if name not in TABLES:
                raise DataError(f"{md_file}:{line}: unknown table '{name}' (known: {', '.join(TABLES)})")
            out.append(text[pos:m.end()])
            open_name, open_end = name, m.end()
        else:
            if open_name != name:
                raise DataError(f"{md_file}:{line}: table:{name} END without its BEGIN")
            gen = TABLES[name][0](Ctx(md_file)).strip("\n")
            out.append("\n" + gen + "\n")
            pos = m.start()
            open_name = None
    if open_name:
        raise DataError(f"{md_file}: table:{open_name} BEGIN without its END")
    out.append(text[pos:])
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 with a diff if a table differs from its raw data")
    ap.add_argument("--list", action="store_true", help="list the tables and their raw files")
    a = ap.parse_args(argv)
    if a.list:
        for name, (_, src) in TABLES.items():
            print(f"{name}: {', '.join(src)}")
        return 0
    stale = []
    try:
        for f in DOCS:
            old = read(f)
            new = render(f, old)
            if new == old:
                continue
            if a.check:
                stale.append(f)
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), f"a/{f}", f"b/{f} (from the raw data)"))
            else:
                (ROOT / f).write_text(new)
                print(f"updated {f}", file=sys.stderr)
    except DataError as e:
        print(f"docs-tables: error: {e}", file=sys.stderr)
        return 1
    if stale:
        sys.stdout.flush()
        print(f"docs-tables: {', '.join(stale)}: tables differ from the raw data; run "
              "python3 scripts/docs-tables.py and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
