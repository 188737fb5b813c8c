#!/usr/bin/env bash
# Rehearses scripts/gpu-run.sh on a machine without a GPU, so that a change to the GPU scripts
# is tried before a card's scarce minutes are spent on it. Every stage runs in its default
# order with CPU stand-ins: stub test binaries and bench_cuda that print a passing result, the
# CPU `trainer` for `trainer` and `trainer_cudnn` (`--device cuda` becomes `cpu`, `--precision
# bf16` becomes `f32`, `train` gets `--val-split 0.1`), PyTorch on the CPU for `python3` (the
# same rewrites), an `nvidia-smi` that names no card, and small cuts of MNIST and CIFAR-10. What
# it checks: the stages' commands and flags as the scripts call them, the files they write,
# the tables merged into nets.json, the loader and bf16 summaries, and what is packed into
# $OUT. What it does not check: anything CUDA (kernels, cuDNN, NCCL, bf16, speed); its numbers
# are CPU numbers and mean nothing.
#
#   scripts/gpu-rehearse.sh [--python PATH] [--data DIR] [--keep DIR]
#
#   --python  python with torch (default: $PYTHON or /work/venv-torch/bin/python)
#   --data    folder with mnist/ (the four idx .gz files) and cifar10-jpeg.tar.gz
#             (default: ../shared/datasets beside the repository)
#   --keep    leave the rehearsal (stubs, data, results, OUT) in DIR instead of a temporary
#             folder removed at the end
#
# About 3 minutes on 2 cores with the trainer built (it builds target/release/trainer first).
# Exit status 0 when gpu-run.sh exits 0 and brings back every file it should.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-/work/venv-torch/bin/python}
DATA=$ROOT/../shared/datasets
KEEP=""

die() { echo "gpu-rehearse: error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) need "$@"; PY=$2; shift 2 ;;
        --data) need "$@"; DATA=$2; shift 2 ;;
        --keep) need "$@"; KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch (pass --python)"
[[ -d $DATA/mnist && -f $DATA/cifar10-jpeg.tar.gz ]] ||
    die "$DATA lacks mnist/ or cifar10-jpeg.tar.gz (pass --data)"
PY=$(command -v "$PY")

if [[ -n $KEEP ]]; then
    rm -rf "$KEEP" && mkdir -p "$KEEP"
    DIR=$(cd "$KEEP" && pwd)
else
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-rehearse.XXXXXX")
    trap 'rm -rf "$DIR"' EXIT
fi
mkdir -p "$DIR"/{path,bin,mnist,out}

(cd "$ROOT" && cargo build --release -p trainer)
TRAINER=$ROOT/target/release/trainer

# Arguments with the CUDA-only choices replaced by CPU ones, into the array `args`.
cat >"$DIR/cpu-args.sh" <<'EOF'
args=() prev=""
for a in "$@"; do
  [[ $prev == --device && $a == cuda ]] && a=cpu
  [[ $prev == --precision && $a == bf16 ]] && a=f32
  args+=("$a") prev=$a
done
EOF
cat >"$DIR/path/nvidia-smi" <<'EOF'
#!/bin/sh
echo "name, driver_version, memory.total [MiB]"
echo "none (scripts/gpu-rehearse.sh on the CPU), -, -"
EOF
cat >"$DIR/path/python3" <<EOF
#!/usr/bin/env bash
# bench-nets.sh asks whether torch sees a card: the rehearsal says yes.
[[ \$* == *torch.cuda.is_available* ]] && exit 0
source "$DIR/cpu-args.sh"
exec "$PY" "\${args[@]}"
EOF
for b in trainer trainer_cudnn; do
    cat >"$DIR/bin/$b" <<EOF
#!/usr/bin/env bash
source "$DIR/cpu-args.sh"
# The cut datasets are smaller than the default 5,000 validation images.
[[ \${args[0]:-} == train && " \${args[*]} " != *" --val-split "* ]] && args+=(--val-split 0.1)
exec "$TRAINER" "\${args[@]}"
EOF
done
for b in cuda_ops cuda_kernels cuda_training cuda_training_cudnn cuda_layers cuda_layers_cudnn \
    trainer_unit nccl_training; do
    cat >"$DIR/bin/$b" <<EOF
#!/bin/sh
echo "running 1 test (gpu-rehearse stand-in for $b \$*)"
echo "test stand_in ... ok"
echo
echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
EOF
done
cat >"$DIR/bin/bench_cuda" <<'EOF'
#!/bin/sh
printf '| d | batch | fwd ms |\n|---|---|---|\n| - | - | gpu-rehearse stand-in |\n'
EOF
chmod +x "$DIR"/path/* "$DIR"/bin/*

# 2,000 training and 500 test images of MNIST; 40 training and 40 test JPEGs per CIFAR-10 class.
"$PY" - "$DATA/mnist" "$DIR/mnist" <<'PY'
import gzip, struct, sys
src, dst = sys.argv[1:]
for name, n in [("train-images-idx3-ubyte", 2000), ("train-labels-idx1-ubyte", 2000),
                ("t10k-images-idx3-ubyte", 500), ("t10k-labels-idx1-ubyte", 500)]:
    b = gzip.open(f"{src}/{name}.gz").read()
    magic, = struct.unpack(">I", b[:4])
    nd = magic & 0xFF
    dims = list(struct.unpack(f">{nd}I", b[4:4 + 4 * nd]))
    per = 1
    for d in dims[1:]:
        per *= d
    head = struct.pack(">I", magic) + struct.pack(f">{nd}I", n, *dims[1:])
    gzip.open(f"{dst}/{name}.gz", "wb").write(head + b[4 + 4 * nd:][:n * per])
PY
tar -xzf "$DATA/cifar10-jpeg.tar.gz" -C "$DIR" --wildcards 'cifar10-jpeg/*/*/00[0-3]?.jpg'

echo "gpu-rehearse: running scripts/gpu-run.sh in $DIR"
set +e
(cd "$ROOT" && PATH="$DIR/path:$PATH" OUT="$DIR/out" RESULTS_DIR="$DIR/results" \
    NETS_CASES=cifar-cnn:8,alexnet:2 NETS_STEPS=1 BENCH_ARGS=--quick \
    TORCH_ARGS="--quick --batches 1 --sizes 1024" CIFAR_DIR="$DIR/cifar10-jpeg" \
    MNIST_DIR="$DIR/mnist" MNIST_EPOCHS=1 CIFAR_EPOCHS=1 \
    bash scripts/gpu-run.sh "$DIR/bin") 2>&1 | tee "$DIR/gpu-run.log"
rc=${PIPESTATUS[0]}
set -e
missing=()
for f in gpu-results.tar.gz gpu.txt times.txt bench_cuda.md nets.json loader.txt \
    bf16-accuracy.json; do
    [[ -s $DIR/out/$f ]] || missing+=("$f")
done
# Two builds x two precisions x the cases x both heads.
cases=$("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' \
    "$DIR/out/nets.json" 2>/dev/null || echo 0)
echo "gpu-rehearse: gpu-run.sh exit status $rc; nets.json $cases cases (16 expected);" \
    "missing from OUT: ${missing[*]:-none}"
if ((rc != 0 || ${#missing[@]} > 0 || cases != 16)); then
    log=$DIR/gpu-run.log
    if [[ -z $KEEP ]]; then
        log=${TMPDIR:-/tmp}/gpu-rehearse-failed.log
        cp "$DIR/gpu-run.log" "$log"
    fi
    echo "gpu-rehearse: FAILED (log: $log)" >&2
    exit 1
fi
echo "gpu-rehearse: passed (the scripts' logic only; nothing ran on a GPU)"
