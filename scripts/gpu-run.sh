#!/usr/bin/env bash
# On a GPU machine (NVIDIA driver >= 580, PyTorch with CUDA 13 wheels), from the repository
# root, with the binaries built by scripts/gpu-bench.sh, in this order: the CUDA tests, the
# whole networks against PyTorch, the op's table (bench_cuda) and PyTorch's
# (bench/torch_circulant.py) on the same card, then the training runs asked for.
#
#   scripts/gpu-run.sh [BIN_DIR]   # BIN_DIR defaults to target-gpu/bin (unpacked from
#                                  # target-gpu/bin.tar.xz when missing)
#   BENCH_ARGS=--quick scripts/gpu-run.sh   # smaller benchmark table
#   CIFAR_DIR=/tmp/cifar10-jpeg scripts/gpu-run.sh   # also train cifar-cnn, dense vs circulant
#                                  # (scripts/gpu-cifar.sh; CIFAR_EPOCHS per head, default 12)
#   TRAIN_RUNS="loader bf16" ...       # the training runs, from: heads (the above, the default
#                                  # with CIFAR_DIR), loader (cifar-cnn on the CIFAR_DIR JPEGs,
#                                  # 2 epochs at batch 256, against the whole-network bench's
#                                  # img/s), bf16 (scripts/gpu-bf16-accuracy.sh: f32 vs bf16 test
#                                  # accuracy of mnist-cnn on MNIST_DIR and cifar-cnn on CIFAR_DIR;
#                                  # MNIST_EPOCHS, CIFAR_EPOCHS)
#   SKIP_BENCH=1 ...                   # tests (and CIFAR) only
#   SKIP_NETS=1 ...                    # no whole-network comparison (scripts/bench-nets.sh
#                                  # --device cuda: cifar-cnn and alexnet at batch 256, both heads,
#                                  # f32 and bf16, ours built with and without cuDNN; NETS_STEPS
#                                  # steps each, default 30), written to RESULTS/nets/ with the
#                                  # merged table of record RESULTS/nets/nets.json
# BENCH_TIMEOUT / TORCH_TIMEOUT (seconds, default 300 each) cap the two benchmark tables.
#
# The tests run with CIRCULANT_REQUIRE_CUDA=1: a test that finds no usable CUDA device fails
# instead of skipping.
# Results are written under ./gpu-results (RESULTS_DIR overrides) as markdown, JSON and logs.
# When OUT is set (the device runner's folder of files to bring back, at most 8 files and 2
# folders deep), they are also packed into $OUT/gpu-results.tar.gz, with gpu.txt, times.txt
# (each stage's end, in seconds from the start), bench_cuda.md, nets.json and bf16-accuracy.json
# beside it, after every stage, so that a run stopped at the runner's limit still brings back
# what it finished.
# Never put the toolkit's libcuda stub on LD_LIBRARY_PATH here: libcuda.so.1 is the driver's.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target-gpu/bin}
RESULTS=${RESULTS_DIR:-$ROOT/gpu-results}
mkdir -p "$RESULTS"

# The CUDA 13 user-space libraries: PyTorch's nvidia-* wheels (nvidia/cu13/lib, or one lib/
# folder per wheel), then a system toolkit's lib64.
LIB=$(python3 - <<'PY'
import glob, os, sys
dirs = []
for p in sys.path:
    for pattern in ("nvidia/cu13/lib", "nvidia/*/lib"):
        for d in sorted(glob.glob(os.path.join(p, pattern))):
            if glob.glob(os.path.join(d, "lib*.so*")) and d not in dirs:
                dirs.append(d)
for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"):
    if os.path.isdir(d) and d not in dirs:
        dirs.append(d)
print(":".join(dirs))
PY
)
if [[ -n $LIB ]]; then
  export LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "gpu-run: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
else
  echo "gpu-run: no CUDA libraries found in python's site-packages; relying on the system's"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$RESULTS/gpu.txt"

# scripts/gpu-bench.sh leaves the binaries packed in target-gpu/bin.tar.xz; they are unpacked
# outside the checkout (150 MB) unless BIN_DIR is given.
PACK=$ROOT/target-gpu/bin.tar.xz
if [[ ! -d $BIN && -z ${1:-} && -f $PACK ]]; then
  UNPACK=${TMPDIR:-/tmp}/circulant-gpu-$$
  echo "gpu-run: unpacking $PACK into $UNPACK"
  mkdir -p "$UNPACK"
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$PACK" "$UNPACK" || exit 2
  BIN=$UNPACK/bin
fi

status=0
START=$SECONDS
# Notes the stage's end in times.txt and, with OUT set, packs the results so far: a run stopped
# at the runner's time limit still brings back every stage it finished.
stage_done() {
  echo "gpu-run: $1 done at $((SECONDS - START)) s, status $status" | tee -a "$RESULTS/times.txt"
  [[ -n ${OUT:-} ]] || return 0
  tar -C "$(dirname "$RESULTS")" -czf "$OUT/gpu-results.part" "$(basename "$RESULTS")" &&
    mv "$OUT/gpu-results.part" "$OUT/gpu-results.tar.gz" || status=1
  local f
  for f in gpu.txt times.txt bench_cuda.md nets/nets.json bf16/bf16-accuracy.json; do
    if [[ -f $RESULTS/$f ]]; then cp "$RESULTS/$f" "$OUT/"; fi
  done
}
for b in cuda_ops cuda_kernels cuda_training cuda_training_cudnn cuda_layers cuda_layers_cudnn \
  trainer_unit nccl_training bench_cuda trainer trainer_cudnn; do
  if [[ ! -x $BIN/$b ]]; then
    echo "gpu-run: $BIN/$b missing: run scripts/gpu-bench.sh first and carry its folder" >&2
    exit 2
  fi
  if ldd "$BIN/$b" | grep "not found"; then
    echo "gpu-run: $b cannot find the libraries above" >&2
    exit 2
  fi
done

export CIRCULANT_REQUIRE_CUDA=1
for t in cuda_ops cuda_kernels cuda_training cuda_training_cudnn cuda_layers cuda_layers_cudnn; do
  echo "== $t"
  timeout 300 "$BIN/$t" --test-threads=1 --nocapture 2>&1 | tee "$RESULTS/$t.log" || status=1
  if grep -q "skipping: no CUDA device" "$RESULTS/$t.log"; then
    echo "gpu-run: $t skipped its tests: no usable CUDA device on this machine" >&2
    status=1
  fi
done
# The fused optimizer kernels (AdamW, SGD) against the CPU ops.
echo "== trainer_unit optim::fused::cuda"
timeout 120 "$BIN/trainer_unit" optim::fused::cuda --test-threads=1 --nocapture 2>&1 |
  tee "$RESULTS/trainer_optim.log" || status=1
# Batches through the page-locked staging ring while the card is busy (the GPU test alone:
# the CPU one would also satisfy the "ok. [1-9]" check below).
echo "== trainer_unit train::upload::tests::gpu"
timeout 120 "$BIN/trainer_unit" train::upload::tests::gpu --test-threads=1 --nocapture 2>&1 |
  tee "$RESULTS/trainer_upload.log" || status=1
# Data-parallel training: the 1-rank NCCL all-reduce, then 2 ranks vs 1 through bin/trainer
# (two ranks on one GPU need NCCL >= 2.30; the test sets NCCL_MULTI_RANK_GPU_ENABLE=1).
echo "== trainer_unit dist::nccl"
timeout 120 "$BIN/trainer_unit" dist::nccl --test-threads=1 --nocapture 2>&1 |
  tee "$RESULTS/trainer_nccl.log" || status=1
echo "== nccl_training"
TRAINER_BIN=$BIN/trainer timeout 300 "$BIN/nccl_training" --test-threads=1 --nocapture 2>&1 |
  tee "$RESULTS/nccl_training.log" || status=1
for t in trainer_optim trainer_upload trainer_nccl nccl_training; do
  if ! grep -q "test result: ok. [1-9]" "$RESULTS/$t.log"; then
    echo "gpu-run: $t ran no test or failed" >&2
    status=1
  fi
done
stage_done "tests"

if [[ -z ${SKIP_NETS:-} ]]; then
  # Whole networks, ours vs PyTorch on this card (issue: GPU training at PyTorch speed); bf16
  # is ours `--precision bf16` against PyTorch's autocast.
  NETS=$RESULTS/nets
  mkdir -p "$NETS"
  files=() variants=()
  # cuDNN first: the build of record (all three convolution passes on cuDNN).
  for build in cudnn cuda; do
    trainer=$BIN/trainer
    [[ $build == cudnn ]] && trainer=$BIN/trainer_cudnn
    for precision in f32 bf16; do
      echo "== bench-nets --device cuda --precision $precision (ours: $build)"
      timeout 600 bash "$ROOT/scripts/bench-nets.sh" --device cuda --precision "$precision" \
        --python python3 --trainer "$trainer" --steps "${NETS_STEPS:-30}" \
        --cases cifar-cnn:256,alexnet:256 --heads dense,circulant --out "$NETS/$build" 2>&1 |
        tee "$NETS/$build-$precision.log"
      json=$(ls "$NETS/$build"/nets-*-cuda$([[ $precision == bf16 ]] && echo -bf16).json 2>/dev/null | tail -1)
      if [[ -n $json ]]; then files+=("$json"); variants+=("$build"); else status=1; fi
      # The table of record so far (a run stopped at the runner's limit keeps it).
      if ((${#files[@]})); then
        python3 "$ROOT/bench/nets_table.py" card --json "${files[@]}" --variant "${variants[@]}" \
          --out "$NETS/nets.json" || status=1
      fi
      stage_done "nets $build $precision"
    done
  done
fi
if [[ -z ${SKIP_BENCH:-} ]]; then
  echo "== bench_cuda"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-300}" "$BIN/bench_cuda" ${BENCH_ARGS:-} | tee "$RESULTS/bench_cuda.md" || status=1

  if [[ -f $ROOT/bench/torch_circulant.py ]]; then
    # Correctness on the card first, then the same table as bench_cuda (TORCH_ARGS overrides).
    if [[ ${BENCH_ARGS:-} == *--quick* ]]; then
      DEFAULT_TORCH_ARGS="--quick --batches 1,128"
    else
      DEFAULT_TORCH_ARGS="--batches 1,128,1024 --max-dense-gib 20 --max-seconds-per-case 5"
    fi
    echo "== bench/torch_circulant.py --device cuda --check"
    python3 "$ROOT/bench/torch_circulant.py" --device cuda --check 2>&1 | tee "$RESULTS/torch_check.log" || status=1
    echo "== bench/torch_circulant.py --device cuda ${TORCH_ARGS:-$DEFAULT_TORCH_ARGS}"
    # shellcheck disable=SC2086
    timeout "${TORCH_TIMEOUT:-300}" python3 "$ROOT/bench/torch_circulant.py" --device cuda ${TORCH_ARGS:-$DEFAULT_TORCH_ARGS} \
      --json "$RESULTS/torch_circulant.json" | tee "$RESULTS/torch_circulant.md" || status=1
  else
    echo "gpu-run: bench/torch_circulant.py not found; no PyTorch comparison"
  fi
  stage_done "op tables"
fi
RUNS=${TRAIN_RUNS:-${CIFAR_DIR:+heads}}
if [[ " $RUNS " == *" heads "* ]]; then
  echo "== CIFAR-10 cifar-cnn on the card (scripts/gpu-cifar.sh)"
  bash "$ROOT/scripts/gpu-cifar.sh" "$BIN/trainer" "$CIFAR_DIR" "$RESULTS/cifar" \
    "${CIFAR_EPOCHS:-12}" || status=1
  stage_done "heads"
fi
if [[ " $RUNS " == *" loader "* ]]; then
  # The real loader (JPEG decoding, augmentation, upload) against `trainer bench` on a batch
  # kept on the card: the issue's target is within 10%.
  echo "== CIFAR-10 loader: cifar-cnn circulant, batch 256, 2 epochs"
  HEADS=circulant BATCH=256 bash "$ROOT/scripts/gpu-cifar.sh" "$BIN/trainer" "$CIFAR_DIR" \
    "$RESULTS/loader" 2 || status=1
  bench=$("$BIN/trainer" bench --model cifar-cnn --head circulant --batch-size 256 \
    --device cuda --steps 30 --json | tail -1)
  echo "$bench" >"$RESULTS/loader/bench.json"
  python3 - "$RESULTS/loader" <<'PY' || status=1
import json, sys
d = sys.argv[1]
bench = json.load(open(f"{d}/bench.json"))["train_img_s"]
epochs = [json.loads(l) for l in open(f"{d}/cifar-circulant/metrics.jsonl") if '"epoch"' in l]
train = epochs[-1]["images_per_sec"]
print(f"loader: trainer train {train:.0f} img/s (epoch {len(epochs)}), trainer bench {bench:.0f}"
      f" img/s: {100 * train / bench:.0f}%")
PY
  stage_done "loader"
fi
if [[ " $RUNS " == *" bf16 "* ]]; then
  echo "== bf16 against f32 accuracy (scripts/gpu-bf16-accuracy.sh)"
  bash "$ROOT/scripts/gpu-bf16-accuracy.sh" "$BIN/trainer" "${MNIST_DIR:--}" "${CIFAR_DIR:--}" \
    "$RESULTS/bf16" "${MNIST_EPOCHS:-5}" "${CIFAR_EPOCHS:-12}" || status=1
  stage_done "bf16"
fi
stage_done "all"
exit $status
