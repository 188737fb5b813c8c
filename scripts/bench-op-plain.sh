#!/usr/bin/env bash
# The circulant op as a plain library call: fwd+bwd at d = 4096, batch 128, each run a fresh
# process with no malloc or thread settings, ours (circulant-kernels/examples/op_loop.rs, median
# of 300 calls) and PyTorch's torch.fft layer (bench/torch_circulant.py, median) alternating,
# then candle's dense layer (op_loop --dense) once. Raw output to
# docs/bench/op-plain-call-fresh-<date>-cpu.txt.
#
# usage: scripts/bench-op-plain.sh [--python PATH] [--runs N] [--out FILE]
#
#   --python   python with torch (default: $PYTHON or python3), e.g. /work/venv-torch/bin/python
#   --runs     alternating pairs of runs (default 5)
#   --out      output file (default docs/bench/op-plain-call-fresh-<UTC date>-cpu.txt)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
RUNS=5
OUT="$ROOT/docs/bench/op-plain-call-fresh-$(date -u +%F)-cpu.txt"

die() { echo "bench-op-plain: error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) need "$@"; PY=$2; shift 2 ;;
        --runs) need "$@"; RUNS=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$RUNS'"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch (pass --python)"

cd "$ROOT"
cargo build --release -p circulant-kernels --example op_loop
OURS=target/release/examples/op_loop
TORCH=(bench/torch_circulant.py --sizes 4096 --batches 128 --only circulant --threads "$(nproc)")
{
    echo "# circulant fwd+bwd, d=4096, batch 128, as a plain library call, each run a fresh process (no malloc or thread settings), ours and PyTorch alternating"
    echo "# $(date -u '+%F %H:%M') UTC; $(lscpu | grep -m1 'Model name' | tr -s ' '), $(nproc) threads; ours at $(git rev-parse --short HEAD); PyTorch $("$PY" -c 'import torch; print(torch.__version__)')"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# ours: $OURS 300; PyTorch: ${TORCH[*]}"
    for run in $(seq "$RUNS"); do
        echo "## run $run: ours"
        env -u RAYON_NUM_THREADS -u CANDLE_NUM_THREADS "$OURS" 300
        echo "## run $run: PyTorch"
        "$PY" "${TORCH[@]}" 2>/dev/null | grep -E '^\| (case|circulant)'
    done
    echo "## candle's dense layer (Linear, 4096 x 4096 weight, batch 128)"
    env -u RAYON_NUM_THREADS -u CANDLE_NUM_THREADS "$OURS" 10 --dense
} | tee "$OUT"
