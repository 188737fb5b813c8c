#!/usr/bin/env bash
# Whole-network throughput, ours (`trainer bench`) vs PyTorch (`bench/torch_train.py`).
#
# For each case (mnist-cnn batch 1 and 64, cifar-cnn batch 128, alexnet batch 1 and 32) and head
# (dense, circulant) it runs both benchmarks back to back, alternating which goes first, then
# writes docs/bench/nets-<date>-<device>[-bf16].json (raw numbers, one object per case) and the
# markdown table nets-<date>-<device>[-bf16].md generated from it by bench/nets_table.py.
#
# usage: scripts/bench-nets.sh [--device cpu|cuda] [--precision f32|bf16] [--python PATH]
#            [--steps N] [--warmup-steps N] [--threads T] [--out DIR] [--trainer PATH]
#            [--cases mnist-cnn:1,mnist-cnn:64,cifar-cnn:128,alexnet:1,alexnet:32] [--heads dense,circulant]
#
#   --python        python with torch (default: $PYTHON or python3), e.g. /work/venv-torch/bin/python
#   --steps         measured steps per run (train and infer each) for every case; default per case
#                   (cpu: mnist-cnn batch 1 100, batch 64 30, cifar-cnn 10, alexnet batch 1 20,
#                   batch 32 5; cuda: 50)
#   --warmup-steps  PyTorch's unmeasured steps before each measurement (default: torch_train.py's, 3)
#   --threads       CPU threads of both (ours: RAYON_NUM_THREADS, PyTorch: --threads); default nproc
#   --trainer       the trainer binary (default target/release/trainer)
#   --out           output directory (default docs/bench)
#
# Exit status 1 if any run failed (the table then says "failed" and lists the errors).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cpu
PRECISION=f32
PY=${PYTHON:-python3}
STEPS=""
WARMUP=""
THREADS=""
OUT="$ROOT/docs/bench"
TRAINER="$ROOT/target/release/trainer"
CASES="mnist-cnn:1,mnist-cnn:64,cifar-cnn:128,alexnet:1,alexnet:32"
HEADS="dense,circulant"

die() { echo "bench-nets: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) need "$@"; DEVICE=$2; shift 2 ;;
        --precision) need "$@"; PRECISION=$2; shift 2 ;;
        --python) need "$@"; PY=$2; shift 2 ;;
        --steps) need "$@"; STEPS=$2; shift 2 ;;
        --warmup-steps) need "$@"; WARMUP=$2; shift 2 ;;
        --threads) need "$@"; THREADS=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        --trainer) need "$@"; TRAINER=$2; shift 2 ;;
        --cases) need "$@"; CASES=$2; shift 2 ;;
        --heads) need "$@"; HEADS=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $DEVICE == cpu || $DEVICE == cuda ]] || die "--device must be cpu or cuda, got '$DEVICE'"
[[ $PRECISION == f32 || $PRECISION == bf16 ]] || die "--precision must be f32 or bf16, got '$PRECISION'"
[[ -z $STEPS || $STEPS =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$STEPS'"
[[ -z $WARMUP || $WARMUP =~ ^[0-9]+$ ]] || die "--warmup-steps must be an integer >= 0, got '$WARMUP'"
THREADS=${THREADS:-$(nproc)}
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$THREADS'"

[[ -f $TRAINER && -x $TRAINER ]] ||
    die "trainer binary not found or not executable: $TRAINER (build it: cargo build --release -p trainer; or pass --trainer PATH)"
command -v "$PY" >/dev/null 2>&1 || die "python not found: $PY (pass --python PATH)"
"$PY" -c 'import torch' 2>/dev/null ||
    die "'$PY' cannot import torch; install it outside the repository, e.g. python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy, then pass --python /work/venv-torch/bin/python"
if [[ $DEVICE == cuda ]]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        die "--device cuda but torch.cuda.is_available() is False for $PY"
fi
TORCH_TRAIN="$ROOT/bench/torch_train.py"
TABLE="$ROOT/bench/nets_table.py"
[[ -f $TORCH_TRAIN && -f $TABLE ]] || die "missing $TORCH_TRAIN or $TABLE"

mkdir -p "$OUT"
RAWDIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-nets.XXXXXX")
RAW="$RAWDIR/raw.jsonl"
: >"$RAW"

default_steps() { # network batch
    if [[ $DEVICE == cuda ]]; then echo 50; return; fi
    case "$1:$2" in
        mnist-cnn:1|mlp:1) echo 100 ;;
        mnist-cnn:*|mlp:*) echo 30 ;;
        cifar-cnn:*) echo 10 ;;
        alexnet:1) echo 20 ;;
        alexnet:*) echo 5 ;;
        *) echo 10 ;;
    esac
}

run_one() { # impl network head batch steps
    local impl=$1 net=$2 head=$3 batch=$4 steps=$5 rc=0
    local stem="$RAWDIR/$impl-$net-${head//:/_}-$batch"
    local cmd
    if [[ $impl == ours ]]; then
        cmd=(env RAYON_NUM_THREADS="$THREADS" "$TRAINER" bench --model "$net" --head "$head"
             --batch-size "$batch" --steps "$steps" --device "$DEVICE" --precision "$PRECISION" --json)
    else
        cmd=("$PY" "$TORCH_TRAIN" --model "$net" --head "$head" --batch-size "$batch"
             --steps "$steps" --device "$DEVICE" --precision "$PRECISION" --threads "$THREADS" --json)
        [[ -z $WARMUP ]] || cmd+=(--warmup-steps "$WARMUP")
    fi
    echo "${cmd[*]}" >"$stem.cmd"
    "${cmd[@]}" >"$stem.out" 2>"$stem.err" || rc=$?
    "$PY" "$TABLE" record --raw "$RAW" --impl "$impl" --network "$net" --head "$head" \
        --batch "$batch" --device "$DEVICE" --precision "$PRECISION" --rc "$rc" \
        --stdout "$stem.out" --stderr "$stem.err"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg | sed 's/ /, /g')
echo "bench-nets: $DEVICE $PRECISION, $THREADS threads, trainer $TRAINER, python $PY; load $LOAD_START" >&2
IFS=, read -r -a case_list <<<"$CASES"
IFS=, read -r -a head_list <<<"$HEADS"
STEPS_DESC=()
i=0
for c in "${case_list[@]}"; do
    net=${c%%:*}
    batch=${c##*:}
    [[ -n $net && $batch =~ ^[1-9][0-9]*$ && $c == *:* ]] || die "bad case '$c' (expected network:batch)"
    steps=${STEPS:-$(default_steps "$net" "$batch")}
    STEPS_DESC+=("$net b$batch: $steps")
    for head in "${head_list[@]}"; do
        echo "[$((i + 1))] $net $head batch $batch, $steps steps" >&2
        if ((i % 2 == 0)); then order=(ours torch); else order=(torch ours); fi
        for impl in "${order[@]}"; do
            run_one "$impl" "$net" "$head" "$batch" "$steps"
        done
        i=$((i + 1))
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg | sed 's/ /, /g')

STEPS_TEXT="$(IFS=';'; echo "${STEPS_DESC[*]}" | sed 's/;/; /g') (measured, train and infer each)"
# Named for the date the table is made, which is the date written in it.
SUFFIX=$([[ $PRECISION == f32 ]] && echo "" || echo "-$PRECISION")
BASE="$OUT/nets-$(date -u +%Y-%m-%d)-$DEVICE$SUFFIX"
rc=0
"$PY" "$TABLE" build --raw "$RAW" --json "$BASE.json" --md "$BASE.md" --device "$DEVICE" \
    --precision "$PRECISION" --threads "$THREADS" --steps "$STEPS_TEXT" \
    --load-start "$LOAD_START" --load-end "$LOAD_END" || rc=$?
if ((rc == 0)); then
    rm -rf "$RAWDIR"
    cat "$BASE.md"
else
    echo "bench-nets: some runs failed; their logs are in $RAWDIR" >&2
    cat "$BASE.md" 2>/dev/null || true
fi
exit "$rc"
