#!/usr/bin/env bash
# Build, here (no GPU needed), what a GPU machine needs to run the CUDA tests and the GPU
# benchmark, into one folder to carry there; then run scripts/gpu-run.sh on the GPU machine.
#
#   scripts/gpu-bench.sh [OUT]   # OUT defaults to target-gpu (ignored by git: /target-*)
#
# OUT/bin.tar.xz holds stripped release binaries: bench_cuda (circulant vs cuBLAS dense
# table), cuda_ops (circulant-kernels/tests/cuda.rs), cuda_kernels (kernels-cuda/tests/kernels.rs),
# cuda_training (tests/tests/cuda_training.rs), cuda_layers (tests/tests/cuda_layers.rs: max pool
# and batch norm kernels vs the CPU ops), trainer (built with --features nccl: CUDA and
# data-parallel training), trainer_unit (the trainer's unit tests, with the NCCL all-reduce test
# and the fused optimizer kernels vs the CPU ops)
# and nccl_training (trainer/tests/nccl.rs: 2 ranks vs 1, run with TRAINER_BIN=bin/trainer);
# with cuDNN convolutions (`--features cudnn`): trainer_cudnn, cuda_training_cudnn and
# cuda_layers_cudnn.
# They link libcuda.so.1 (the driver's) and the CUDA 13 libraries (cuBLAS, cuFFT, cuRAND,
# NVRTC, cudart, NCCL, cuDNN) dynamically: gpu-run.sh points LD_LIBRARY_PATH at a PyTorch
# wheel's copies.
# Toolkit and build cache as in scripts/check-cuda.sh (CIRCULANT_CACHE).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/target-gpu}
CACHE=${CIRCULANT_CACHE:-$HOME/.cache/circulant}
mkdir -p "$CACHE" "$OUT/bin"
OUT=$(cd "$OUT" && pwd)

bash "$ROOT/scripts/prepare-cuda-toolkit.sh" --with-cudnn "$CACHE/cuda-13.0"
# shellcheck disable=SC1091
source "$CACHE/cuda-13.0/env.sh"
export CARGO_TARGET_DIR=$CACHE/target-cuda
cd "$ROOT"

# (kernels-cuda/cuda is named too, in case circulant-kernels' `cuda` feature does not forward it.)
cargo build --release --features cuda,kernels-cuda/cuda -p circulant-kernels --example bench_cuda
cp "$CARGO_TARGET_DIR/release/examples/bench_cuda" "$OUT/bin/bench_cuda"

# The trainer, for training runs on the card (scripts/gpu-cifar.sh) and the NCCL tests.
cargo build --release --features nccl -p trainer
cp "$CARGO_TARGET_DIR/release/trainer" "$OUT/bin/trainer"
# The same with cuDNN convolutions (cargo keeps both builds of candle-core side by side).
cargo build --release --features nccl,cudnn -p trainer
cp "$CARGO_TARGET_DIR/release/trainer" "$OUT/bin/trainer_cudnn"
cargo test --release --features cudnn -p circulant-tests \
  --test cuda_training --test cuda_layers --no-run --message-format=json-render-diagnostics |
  python3 -c '
import json, shutil, sys
names = {"cuda_training", "cuda_layers"}
found = set()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] in names:
        shutil.copy(msg["executable"], sys.argv[1] + "/" + msg["target"]["name"] + "_cudnn")
        found.add(msg["target"]["name"])
if found != names:
    sys.exit("gpu-bench: not built with cuDNN: " + ", ".join(sorted(names - found)))
' "$OUT/bin"

# Test executables: cargo prints their paths as JSON artifacts.
cargo test --release --features cuda -p kernels-cuda -p circulant-kernels -p circulant-tests \
  --test cuda --test kernels --test cuda_training --test cuda_layers --no-run \
  --message-format=json-render-diagnostics |
  python3 -c '
import json, shutil, sys
names = {"cuda": "cuda_ops", "kernels": "cuda_kernels", "cuda_training": "cuda_training",
         "cuda_layers": "cuda_layers"}
found = set()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] in names:
        name = names[msg["target"]["name"]]
        shutil.copy(msg["executable"], sys.argv[1] + "/" + name)
        found.add(name)
missing = set(names.values()) - found
if missing:
    sys.exit("gpu-bench: test executables not built: " + ", ".join(sorted(missing)))
' "$OUT/bin"

# The trainer's tests that need NCCL and a GPU.
cargo test --release --features nccl -p trainer --bin trainer --test nccl --no-run \
  --message-format=json-render-diagnostics |
  python3 -c '
import json, shutil, sys
found = set()
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable") or not msg["profile"]["test"]:
        continue
    name = {"trainer": "trainer_unit", "nccl": "nccl_training"}.get(msg["target"]["name"])
    if name:
        shutil.copy(msg["executable"], sys.argv[1] + "/" + name)
        found.add(name)
if found != {"trainer_unit", "nccl_training"}:
    sys.exit("gpu-bench: trainer test executables not built: " + ", ".join(sorted(found)))
' "$OUT/bin"

strip "$OUT"/bin/*
ls -l "$OUT/bin"
# ~525 MB of binaries, most of it candle's PTX embedded in each. What is carried (the device
# runner carries at most 64 MiB, the working tree's ~6 MB included) is OUT/bin.tar.xz, which
# gpu-run.sh unpacks: one xz stream with a dictionary larger than the tar, so that each copy of
# the PTX after the first costs almost nothing (12 MB, against 61 MiB with `xz -T0 -6`; about
# 9 min of one core, 5 GB of memory; unpacking needs 512 MiB).
tar -C "$OUT" -cf - bin | xz -T1 --lzma2=preset=9e,dict=512MiB > "$OUT/bin.tar.xz.tmp"
mv "$OUT/bin.tar.xz.tmp" "$OUT/bin.tar.xz"
rm -rf "$OUT/bin"
du -sh "$OUT"
echo "gpu-bench: carry $(realpath --relative-to="$ROOT" "$OUT" 2>/dev/null || echo "$OUT") and run scripts/gpu-run.sh on the GPU machine"
