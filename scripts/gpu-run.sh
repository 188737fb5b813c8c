#!/usr/bin/env bash
# On a GPU machine (NVIDIA driver >= 580, PyTorch with CUDA 13 wheels), from the repository
# root, with the binaries built by scripts/gpu-bench.sh: the CUDA tests, then the measurements,
# most needed first, so that a run cut at the device runner's limit (600 s a call) brings back
# what matters most. The stages, in their default order (STAGES overrides, e.g.
# STAGES="bf16" for a second call). About 600 s in all on an H200 (estimated: it has not run
# in this form):
#
#   tests       the CUDA test binaries (fail, never skip: CIRCULANT_REQUIRE_CUDA=1)
#   nets-cudnn  whole networks against PyTorch on this card (scripts/bench-nets.sh --device
#               cuda: NETS_CASES, default cifar-cnn and alexnet at batch 256, both heads,
#               NETS_STEPS steps each, default 30), ours built with cuDNN, f32 then bf16 (ours
#               `--precision bf16` against PyTorch's autocast); merged into
#               RESULTS/nets/nets.json
#   loader      cifar-cnn circulant on the CIFAR_DIR JPEGs, 2 epochs at batch 256 (the real
#               loader), against `trainer bench` on a batch kept on the card; skipped without
#               CIFAR_DIR
#   bf16        f32 vs bf16 test accuracy of mnist-cnn on MNIST_DIR and cifar-cnn on CIFAR_DIR
#               (scripts/gpu-bf16-accuracy.sh; MNIST_EPOCHS and CIFAR_EPOCHS, default 2 and 4
#               here, to fit the first call; a dataset without its folder is skipped)
#   ops         the op's table (bench_cuda; BENCH_ARGS, e.g. --quick) and PyTorch's
#               (bench/torch_circulant.py) on the same card
#   nets-cuda   the whole networks again, ours built without cuDNN (candle's convolutions)
#   heads       cifar-cnn dense vs circulant on CIFAR_DIR (scripts/gpu-cifar.sh, CIFAR_EPOCHS
#               per head, default 12); not in the default order
#
#   scripts/gpu-run.sh [BIN_DIR]   # BIN_DIR defaults to target-gpu/bin (unpacked from
#                                  # target-gpu/bin.tar.xz when missing)
#   CIFAR_DIR=/tmp/cifar10-jpeg MNIST_DIR=/tmp/mnist scripts/gpu-run.sh
#   STAGES="bf16" CIFAR_DIR=... MNIST_DIR=... CIFAR_EPOCHS=12 MNIST_EPOCHS=5 scripts/gpu-run.sh
# BENCH_TIMEOUT / TORCH_TIMEOUT / NETS_TIMEOUT (seconds; default 240, 240, 200) cap the op
# tables and each whole-network run; TEST_TIMEOUT (default 150) each test binary.
#
# Results are written under ./gpu-results (RESULTS_DIR overrides; emptied first) as markdown,
# JSON and logs. When OUT is set (the device runner's folder of files to bring back, at most 8
# files and 2 folders deep), they are also packed into $OUT/gpu-results.tar.gz, with gpu.txt,
# times.txt (each stage's end, in seconds from the start), bench_cuda.md, nets.json,
# loader.txt and bf16-accuracy.json beside it, after setup and every stage (each test binary
# too), so that a run stopped at the runner's limit still brings back what it finished.
# Never put the toolkit's libcuda stub on LD_LIBRARY_PATH here: libcuda.so.1 is the driver's.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target-gpu/bin}
RESULTS=${RESULTS_DIR:-$ROOT/gpu-results}
STAGES=${STAGES:-tests nets-cudnn loader bf16 ops nets-cuda}
# A warm machine keeps the last call's results: start afresh (times.txt, nets-*.json and run
# folders would otherwise mix with this call's).
rm -rf "$RESULTS"
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
  for f in gpu.txt times.txt bench_cuda.md nets/nets.json loader/loader.txt bf16/bf16-accuracy.json; do
    if [[ -f $RESULTS/$f ]]; then cp "$RESULTS/$f" "$OUT/"; fi
  done
}
echo "gpu-run: stages: $STAGES"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$RESULTS/gpu.txt"

# scripts/gpu-bench.sh leaves the binaries packed in target-gpu/bin.tar.xz; they are unpacked
# outside the checkout (150 MB) unless BIN_DIR is given.
PACK=$ROOT/target-gpu/bin.tar.xz
if [[ ! -d $BIN && -z ${1:-} && -f $PACK ]]; then
  UNPACK=${TMPDIR:-/tmp}/circulant-gpu-$$
  echo "gpu-run: unpacking $PACK into $UNPACK"
  mkdir -p "$UNPACK"
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$PACK" "$UNPACK" || { status=2; stage_done "setup (unpacking failed)"; exit 2; }
  BIN=$UNPACK/bin
fi
for b in cuda_ops cuda_kernels cuda_training cuda_training_cudnn cuda_layers cuda_layers_cudnn \
  trainer_unit nccl_training bench_cuda trainer trainer_cudnn; do
  if [[ ! -x $BIN/$b ]]; then
    echo "gpu-run: $BIN/$b missing: run scripts/gpu-bench.sh first and carry its folder" >&2
    status=2
  elif ldd "$BIN/$b" | grep "not found"; then
    echo "gpu-run: $b cannot find the libraries above" >&2
    status=2
  fi
done
stage_done "setup"
((status == 0)) || exit 2

# A test binary's log in RESULTS/NAME.log; it must run at least one test and pass.
run_test() { # name command...
  local name=$1
  shift
  echo "== $name"
  timeout "${TEST_TIMEOUT:-150}" "$@" --test-threads=1 --nocapture 2>&1 | tee "$RESULTS/$name.log"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    echo "gpu-run: $name failed (exit status $rc)" >&2
    status=1
  elif grep -q "skipping: no CUDA device" "$RESULTS/$name.log"; then
    echo "gpu-run: $name skipped its tests: no usable CUDA device on this machine" >&2
    status=1
  elif ! grep -q "test result: ok. [1-9]" "$RESULTS/$name.log"; then
    echo "gpu-run: $name ran no test" >&2
    status=1
  fi
  stage_done "test $name"
}

stage_tests() {
  export CIRCULANT_REQUIRE_CUDA=1
  local t
  for t in cuda_ops cuda_kernels cuda_training cuda_training_cudnn cuda_layers cuda_layers_cudnn; do
    run_test "$t" "$BIN/$t"
  done
  # The fused optimizer kernels (AdamW, SGD) against the CPU ops.
  run_test trainer_optim "$BIN/trainer_unit" optim::fused::cuda
  # Batches through the page-locked staging ring while the card is busy (the GPU test alone).
  run_test trainer_upload "$BIN/trainer_unit" train::upload::tests::gpu
  # Data-parallel training: the 1-rank NCCL all-reduce, then 2 ranks vs 1 through bin/trainer
  # (two ranks on one GPU need NCCL >= 2.30; the test sets NCCL_MULTI_RANK_GPU_ENABLE=1, and
  # its log's NCCL version line tells whether a failure is that limit).
  run_test trainer_nccl "$BIN/trainer_unit" dist::nccl
  TRAINER_BIN=$BIN/trainer run_test nccl_training "$BIN/nccl_training"
}

# Whole networks, ours (BUILD: cudnn or cuda) vs PyTorch on this card, f32 then bf16; the
# table of record, RESULTS/nets/nets.json, is rewritten after each run.
NETS=$RESULTS/nets
nets_files=() nets_variants=()
stage_nets() { # build
  local build=$1 trainer=$BIN/trainer precision json
  [[ $build == cudnn ]] && trainer=$BIN/trainer_cudnn
  mkdir -p "$NETS"
  for precision in f32 bf16; do
    echo "== bench-nets --device cuda --precision $precision (ours: $build)"
    timeout "${NETS_TIMEOUT:-200}" bash "$ROOT/scripts/bench-nets.sh" --device cuda \
      --precision "$precision" --python python3 --trainer "$trainer" --steps "${NETS_STEPS:-30}" \
      --cases "${NETS_CASES:-cifar-cnn:256,alexnet:256}" --heads dense,circulant --out "$NETS/$build" 2>&1 |
      tee "$NETS/$build-$precision.log"
    ((PIPESTATUS[0] == 0)) || status=1
    json=$(ls "$NETS/$build"/nets-*-cuda$([[ $precision == bf16 ]] && echo -bf16).json 2>/dev/null | tail -1)
    if [[ -n $json ]]; then
      nets_files+=("$json") nets_variants+=("$build")
    else
      status=1
    fi
    if ((${#nets_files[@]})); then
      python3 "$ROOT/bench/nets_table.py" card --json "${nets_files[@]}" \
        --variant "${nets_variants[@]}" --out "$NETS/nets.json" || status=1
    fi
    stage_done "nets $build $precision"
  done
}

# The real loader (JPEG decoding, augmentation, upload) against `trainer bench` on a batch kept
# on the card: the issue's target is within 10%.
stage_loader() {
  if [[ -z ${CIFAR_DIR:-} ]]; then
    echo "gpu-run: no CIFAR_DIR: loader stage skipped" >&2
    return
  fi
  echo "== CIFAR-10 loader: cifar-cnn circulant, batch 256, 2 epochs"
  HEADS=circulant BATCH=256 bash "$ROOT/scripts/gpu-cifar.sh" "$BIN/trainer_cudnn" "$CIFAR_DIR" \
    "$RESULTS/loader" 2 || status=1
  "$BIN/trainer_cudnn" bench --model cifar-cnn --head circulant --batch-size 256 \
    --device cuda --steps 30 --json | tail -1 >"$RESULTS/loader/bench.json" || status=1
  python3 - "$RESULTS/loader" <<'PY' | tee "$RESULTS/loader/loader.txt" || status=1
import json, sys
d = sys.argv[1]
bench = json.load(open(f"{d}/bench.json"))["train_img_s"]
epochs = [json.loads(l) for l in open(f"{d}/cifar-circulant/metrics.jsonl") if '"epoch"' in l]
train = epochs[-1]["images_per_sec"]
print(f"loader: trainer train {train:.0f} img/s (epoch {len(epochs)}), trainer bench {bench:.0f}"
      f" img/s: {100 * train / bench:.0f}%")
PY
  stage_done "loader"
}

stage_ops() {
  echo "== bench_cuda"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-240}" "$BIN/bench_cuda" ${BENCH_ARGS:-} | tee "$RESULTS/bench_cuda.md"
  ((PIPESTATUS[0] == 0)) || status=1
  stage_done "bench_cuda"
  # Correctness on the card first, then the same table as bench_cuda (TORCH_ARGS overrides).
  local args="--batches 1,128,1024 --max-dense-gib 20 --max-seconds-per-case 5"
  [[ ${BENCH_ARGS:-} == *--quick* ]] && args="--quick --batches 1,128"
  echo "== bench/torch_circulant.py --device cuda --check"
  python3 "$ROOT/bench/torch_circulant.py" --device cuda --check 2>&1 | tee "$RESULTS/torch_check.log"
  ((PIPESTATUS[0] == 0)) || status=1
  echo "== bench/torch_circulant.py --device cuda ${TORCH_ARGS:-$args}"
  # shellcheck disable=SC2086
  timeout "${TORCH_TIMEOUT:-240}" python3 "$ROOT/bench/torch_circulant.py" --device cuda \
    ${TORCH_ARGS:-$args} --json "$RESULTS/torch_circulant.json" | tee "$RESULTS/torch_circulant.md"
  ((PIPESTATUS[0] == 0)) || status=1
  stage_done "op tables"
}

stage_heads() {
  echo "== CIFAR-10 cifar-cnn on the card (scripts/gpu-cifar.sh)"
  bash "$ROOT/scripts/gpu-cifar.sh" "$BIN/trainer_cudnn" "${CIFAR_DIR:?heads needs CIFAR_DIR}" \
    "$RESULTS/cifar" "${CIFAR_EPOCHS:-12}" || status=1
  stage_done "heads"
}

stage_bf16() {
  if [[ -z ${CIFAR_DIR:-}${MNIST_DIR:-} ]]; then
    echo "gpu-run: no CIFAR_DIR or MNIST_DIR: bf16 stage skipped" >&2
    return
  fi
  echo "== bf16 against f32 accuracy (scripts/gpu-bf16-accuracy.sh)"
  bash "$ROOT/scripts/gpu-bf16-accuracy.sh" "$BIN/trainer_cudnn" "${MNIST_DIR:--}" \
    "${CIFAR_DIR:--}" "$RESULTS/bf16" "${MNIST_EPOCHS:-2}" "${CIFAR_EPOCHS:-4}" || status=1
  stage_done "bf16"
}

for stage in $STAGES; do
  case $stage in
    tests) stage_tests ;;
    nets-cudnn) stage_nets cudnn ;;
    nets-cuda) stage_nets cuda ;;
    loader) stage_loader ;;
    ops) stage_ops ;;
    heads) stage_heads ;;
    bf16) stage_bf16 ;;
    *) echo "gpu-run: unknown stage '$stage'" >&2; status=1 ;;
  esac
done
stage_done "all"
exit $status
