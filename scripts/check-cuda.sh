#!/usr/bin/env bash
# Compile (clippy, warnings denied) the whole workspace with `--features cuda` (candle's own CUDA
# convolutions), and the trainer with `--features nccl,cudnn` (data-parallel training, cuDNN
# convolutions; checking needs no cuDNN library), on a machine without a GPU: prepares the
# pinned CUDA 13.0 toolkit and NCCL and keeps them, plus a target directory, in a cache
# directory outside the checkout so that later runs only rebuild what changed.
#
#   scripts/check-cuda.sh [CACHE]   # CACHE defaults to ${CIRCULANT_CACHE:-$HOME/.cache/circulant}
#   CHECK_CUDA_CMD=check scripts/check-cuda.sh   # `cargo check` instead of clippy
#
# Measured on the 2-core dev machine while other builds ran (load average 4-10): from an empty
# cache 14-22 min (wheels ~15 s; candle-kernels' nvcc step, PTX plus its static MoE library,
# dominates: ~15 min of it under heavy load); with a warm cache ~10 s. The cache holds ~1.5 GiB
# of toolkit and ~1.3 GiB of target directory. Changing the clippy arguments re-checks
# everything (~7 min) but does not rerun nvcc.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${1:-${CIRCULANT_CACHE:-$HOME/.cache/circulant}}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

t0=$SECONDS
bash "$ROOT/scripts/prepare-cuda-toolkit.sh" "$CACHE/cuda-13.0"
echo "check-cuda: toolkit ready after $((SECONDS - t0)) s"
# shellcheck disable=SC1091
source "$CACHE/cuda-13.0/env.sh"
export CARGO_TARGET_DIR=$CACHE/target-cuda

cd "$ROOT"
case ${CHECK_CUDA_CMD:-clippy} in
  clippy)
    cargo clippy --workspace --all-targets --features cuda -- -D warnings
    cargo clippy -p trainer --all-targets --features nccl,cudnn -- -D warnings ;;
  check)
    cargo check --workspace --all-targets --features cuda
    cargo check -p trainer --all-targets --features nccl,cudnn ;;
  *) echo "check-cuda: CHECK_CUDA_CMD must be clippy or check" >&2; exit 2 ;;
esac
echo "check-cuda: done in $((SECONDS - t0)) s"
