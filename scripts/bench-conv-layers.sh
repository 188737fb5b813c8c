#!/usr/bin/env bash
# Convolution layers alone, ours (circulant-model/examples/conv_layers.rs) vs PyTorch
# (bench/torch_conv_layers.py): AlexNet's five convolutions and first max pool at batch 1 and 32,
# cifar-cnn's five convolutions at batch 128, each followed by a ReLU, no autograd; then AlexNet's
# at batch 32 forward + backward ("train"); the fastest of 100 calls after 5 warm-up calls. Ours
# run with the allocator settings of the `trainer` binary. Two runs per side, alternating; the
# raw output goes to docs/bench/conv-layers-<date>-cpu.txt (read by scripts/docs-tables.py).
#
# usage: scripts/bench-conv-layers.sh [--python PATH] [--threads T] [--out FILE]
#
#   --python   python with torch (default: $PYTHON or python3), e.g. /work/venv-torch/bin/python
#   --threads  CPU threads of both (ours: RAYON_NUM_THREADS, PyTorch: --threads); default nproc
#   --out      output file (default docs/bench/conv-layers-<UTC date>-cpu.txt)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
THREADS=$(nproc)
OUT="$ROOT/docs/bench/conv-layers-$(date -u +%F)-cpu.txt"

die() { echo "bench-conv-layers: error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) need "$@"; PY=$2; shift 2 ;;
        --threads) need "$@"; THREADS=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$THREADS'"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch (pass --python)"

cd "$ROOT"
cargo build --release -p circulant-model --example conv_layers
OURS=target/release/examples/conv_layers
{
    echo "# Convolutions (+ ReLU) and AlexNet's first max pool, ours vs PyTorch, fastest of 100 calls after 5 warm-up calls, ms."
    echo "# $(date -u '+%F %H:%M') UTC; $(lscpu | grep -m1 'Model name' | tr -s ' '), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $THREADS threads; ours at $(git rev-parse --short HEAD); PyTorch $("$PY" -c 'import torch; print(torch.__version__)')"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT"
# The trainer's malloc settings (trainer/src/runtime.rs): large outputs reuse freed heap memory
# instead of fresh, page-faulting mappings.
MALLOC="MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456"
for case in alexnet:1 alexnet:32 cifar:128 alexnet:32:train; do
    IFS=: read -r net batch mode <<< "$case"
    for run in 1 2; do
        ours="$MALLOC RAYON_NUM_THREADS=$THREADS $OURS $batch $net ${mode:-}"
        torch="$PY bench/torch_conv_layers.py --batch $batch --threads $THREADS --net $net${mode:+ --train}"
        order=("ours" "PyTorch")
        [[ $run == 2 ]] && order=("PyTorch" "ours")
        for who in "${order[@]}"; do
            cmd=$([[ $who == ours ]] && echo "$ours" || echo "$torch")
            echo "## $net batch $batch${mode:+ $mode}, run $run: $who ($cmd)" | tee -a "$OUT"
            env $cmd | tee -a "$OUT"
        done
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT"
echo "wrote $OUT"
