#!/usr/bin/env python3
"""Raw results -> JSON array -> markdown table, for scripts/bench-nets.sh (stdlib only).

    nets_table.py record --raw RAW.jsonl --impl ours|torch --network N --head H --batch B
                         --device D --precision P --rc RC --stdout FILE --stderr FILE
        Appends one line to RAW.jsonl: the last JSON line the run printed on stdout (checked
        against the case), or the error (exit status, stderr tail).
    nets_table.py build --raw RAW.jsonl --json OUT.json --md OUT.md --device D --precision P
                        --threads T --steps TEXT [--load-start TEXT] [--load-end TEXT]
        Pairs the ours/torch records of each case into the JSON array
        [{"network","head","batch","device","precision","ours_train_img_s","torch_train_img_s",
          "ours_infer_img_s","torch_infer_img_s","machine"}, ...]  (a failed run: null value and an
        "ours_error"/"torch_error" key), then writes the markdown from that JSON.
    nets_table.py md --json OUT.json --md OUT.md
        Regenerates the markdown from the JSON array alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

KEYS = ("network", "head", "batch", "device", "precision", "train_img_s", "infer_img_s")


def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cmd_record(a) -> int:
    case = {"network": a.network, "head": a.head, "batch": a.batch, "device": a.device,
            "precision": a.precision}
    rec = {"impl": a.impl, **case, "rc": a.rc}
    out, err = read(a.stdout), read(a.stderr)
    res = last_json_line(out) if a.rc == 0 else None
    problem = None
    if a.rc != 0:
        problem = f"exit status {a.rc}"
    elif res is None:
        problem = "no JSON line on stdout"
    else:
        missing = [k for k in KEYS if k not in res]
        wrong = [f"{k}={res[k]!r} (expected {v!r})" for k, v in case.items()
                 if k in res and str(res[k]) != str(v)]
        bad = [k for k in ("train_img_s", "infer_img_s")
               if k in res and not (isinstance(res[k], (int, float)) and res[k] > 0)]
        if missing or wrong or bad:
            problem = "; ".join(filter(None, [
                missing and f"missing keys {missing}", wrong and f"mismatch {', '.join(wrong)}",
                bad and f"not positive numbers: {bad}"]))
    if problem:
        tail = " | ".join(l for l in err.strip().splitlines()[-3:] if l.strip())
        rec["error"] = problem + (f": {tail}" if tail else "")
        print(f"  {a.impl}: FAILED ({rec['error']})", file=sys.stderr)
    else:
        rec["result"] = res
        print(f"  {a.impl:<5}: train {res['train_img_s']:9.1f} img/s  infer {res['infer_img_s']:9.1f} img/s",
              file=sys.stderr)
    with open(a.raw, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=False).stdout.strip()
        return out or None
    except OSError:
        return None


def cmd_build(a) -> int:
    recs = [json.loads(l) for l in read(a.raw).splitlines() if l.strip()]
    if not recs:
        print(f"error: no records in {a.raw}", file=sys.stderr)
        return 1
    torch_versions = sorted({r["result"].get("torch_version") for r in recs
                             if r["impl"] == "torch" and "result" in r} - {None})
    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": a.threads,
        "torch_version": ", ".join(torch_versions) or None,
        "ours_commit": git_commit(),
        "steps": a.steps,
        "load_start": a.load_start,
        "load_end": a.load_end,
    }
    if a.device == "cuda":
        machine["gpu"] = gpu_name()
    rows, index = [], {}
    for r in recs:
        key = (r["network"], r["head"], int(r["batch"]))
        if key not in index:
            index[key] = len(rows)
            rows.append({"network": key[0], "head": key[1], "batch": key[2], "device": a.device,
                         "precision": a.precision, "ours_train_img_s": None,
                         "torch_train_img_s": None, "ours_infer_img_s": None,
                         "torch_infer_img_s": None, "machine": machine})
        row = rows[index[key]]
        impl = r["impl"]
        if "result" in r:
            row[f"{impl}_train_img_s"] = r["result"]["train_img_s"]
            row[f"{impl}_infer_img_s"] = r["result"]["infer_img_s"]
        else:
            row[f"{impl}_error"] = r.get("error", "failed")
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    write_md(rows, a.md, a.json)
    print(f"wrote {a.json} and {a.md}", file=sys.stderr)
    failed = sum(1 for row in rows for k in row if k.endswith("_error"))
    return 1 if failed else 0


def fmt(v) -> str:
    if v is None:
        return "failed"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ratio(ours, torch) -> str:
    return "–" if ours is None or torch is None else f"{ours / torch:.2f}x"


def write_md(rows: list[dict], path: str, json_path: str) -> None:
    m = rows[0]["machine"]
    dev, prec = rows[0]["device"], rows[0]["precision"]
    lines = [
        f"# Whole networks: ours vs PyTorch ({dev}, {prec})",
        "",
        f"- Date: {m.get('date')}",
        f"- CPU: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs; threads: {m.get('threads')} "
        "(ours: `RAYON_NUM_THREADS`, PyTorch: `torch.set_num_threads`)",
    ]
    if m.get("gpu"):
        lines.append(f"- GPU: {m['gpu']}")
    lines += [
        f"- PyTorch: {m.get('torch_version')} (`bench/torch_train.py`); ours: `trainer bench` at "
        f"`{m.get('ours_commit')}`",
        f"- Steps: {m.get('steps')}; load average (`uptime`) at start: {m.get('load_start')}, "
        f"at end: {m.get('load_end')}",
        "- Train = forward (train mode) + cross entropy + backward + AdamW step (lr 1e-3, wd 0.01); "
        "infer = eval mode, no autograd; one fixed random batch of the network's input shape; "
        "img/s = steps x batch / wall time after warm-up.",
        "- Ratio = ours / PyTorch (> 1: ours is faster). Generated by `bench/nets_table.py` from "
        f"`{os.path.basename(json_path)}`.",
        "",
        "| network | head | batch | train ours img/s | train PyTorch img/s | train ratio "
        "| infer ours img/s | infer PyTorch img/s | infer ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        ot, tt, oi, ti = (r["ours_train_img_s"], r["torch_train_img_s"], r["ours_infer_img_s"],
                          r["torch_infer_img_s"])
        lines.append(f"| {r['network']} | {r['head']} | {r['batch']} | {fmt(ot)} | {fmt(tt)} "
                     f"| {ratio(ot, tt)} | {fmt(oi)} | {fmt(ti)} | {ratio(oi, ti)} |")
        for impl in ("ours", "torch"):
            if f"{impl}_error" in r:
                notes.append(f"- {r['network']} {r['head']} batch {r['batch']}, {impl}: "
                             f"{r[f'{impl}_error']}")
    if notes:
        lines += ["", "Failed runs:", ""] + notes
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def cmd_md(a) -> int:
    with open(a.json) as f:
        rows = json.load(f)
    write_md(rows, a.md, a.json)
    return 0


def cmd_card(a) -> int:
    """The GPU table of record: one object per case of the given bench-nets JSON files."""
    out = []
    for path, variant in zip(a.json, a.variant or [None] * len(a.json)):
        for row in json.loads(read(path)):
            gpu = (row.get("machine") or {}).get("gpu") or "unknown"
            rec = {"network": row["network"], "head": row["head"], "batch": row["batch"],
                   "precision": row["precision"], "card": gpu.split(",")[0].strip(),
                   "ours_train_img_s": row.get("ours_train_img_s"),
                   "torch_train_img_s": row.get("torch_train_img_s"),
                   "ours_infer_img_s": row.get("ours_infer_img_s"),
                   "torch_infer_img_s": row.get("torch_infer_img_s"),
                   "source": os.path.basename(path)}
            if variant:
                rec["ours_build"] = variant
            for k in ("ours_error", "torch_error"):
                if k in row:
                    rec[k] = row[k]
            out.append(rec)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {a.out} ({len(out)} cases)", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--raw", required=True)
    r.add_argument("--impl", required=True, choices=["ours", "torch"])
    for k in ("network", "head", "device", "precision", "stdout", "stderr"):
        r.add_argument(f"--{k}", required=True)
    r.add_argument("--batch", type=int, required=True)
    r.add_argument("--rc", type=int, required=True)
    b = sub.add_parser("build")
    for k in ("raw", "json", "md", "device", "precision", "steps"):
        b.add_argument(f"--{k}", required=True)
    b.add_argument("--threads", type=int, required=True)
    b.add_argument("--load-start", default=None)
    b.add_argument("--load-end", default=None)
    m = sub.add_parser("md")
    m.add_argument("--json", required=True)
    m.add_argument("--md", required=True)
    c = sub.add_parser("card", help="merge bench-nets JSON files of a GPU run into nets.json: "
                       '[{"network","head","batch","precision","card","ours_train_img_s",'
                       '"torch_train_img_s",...}]')
    c.add_argument("--json", required=True, nargs="+")
    c.add_argument("--variant", nargs="*", help="the build of ours behind each --json file "
                   "(e.g. cuda, cudnn)")
    c.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "card" and a.variant and len(a.variant) != len(a.json):
        ap.error("--variant needs one name per --json file")
    return {"record": cmd_record, "build": cmd_build, "md": cmd_md, "card": cmd_card}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
