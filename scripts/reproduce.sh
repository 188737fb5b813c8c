#!/usr/bin/env bash
# Reproduce the dense vs circulant comparisons of docs/RESULTS.md with the trainer.
#
#   scripts/reproduce.sh quick   # MNIST mnist-cnn, dense vs circulant, 1 epoch each with SGD,
#                                # circulant 5 epochs with the default recipe, and the README's
#                                # quick start (Fashion-MNIST, 2 epochs): ~10 min on 2 cores once
#                                # the release build exists, then a table
#   scripts/reproduce.sh fashion # Fashion-MNIST mnist-cnn, 10 epochs with each head's default
#                                # recipe: circulant, dense, block:64, and circulant with a
#                                # dense classifier (~25 min on 2 cores)
#   scripts/reproduce.sh full    # every run in docs/RESULTS.md: MNIST (mnist-cnn, mlp),
#                                # Fashion-MNIST (and its second seed), CIFAR-10 (cifar-cnn),
#                                # with dense, circulant, block:64 and dense-classifier heads,
#                                # then the AlexNet timings
#                                # and the synthetic ImageFolder pipeline run (hours on 2 cores;
#                                # CIFAR-10 alone ~10 h on CPU: set DEVICE=cuda with a GPU build)
#
# MNIST is read from $MNIST_DIR (default ../shared/datasets/mnist, the four idx .gz files);
# Fashion-MNIST from Debian's dataset-fashion-mnist package; CIFAR-10 from $CIFAR_DIR (default:
# ../shared/datasets/cifar10-jpeg.tar.gz unpacked under $RUNS). Runs go to $RUNS (default
# runs/repro). With RECORD=1 each run's metrics.jsonl, curves.png and output (train.log) are
# also copied to docs/runs/<dataset>-<network>-<head>-<variant>/ and the docs tables are
# regenerated (scripts/docs-tables.py). TRAINER=path runs that trainer binary instead of building
# target/release/trainer.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-quick}
MNIST_DIR=${MNIST_DIR:-$ROOT/../shared/datasets/mnist}
RUNS=${RUNS:-$ROOT/runs/repro}
BUILD=1
[ -n "${TRAINER:-}" ] && BUILD=0
export TRAINER=${TRAINER:-$ROOT/target/release/trainer}

# Jobs: "dataset model head epochs optimizer [extra trainer options]"; optimizer "default" runs
# the trainer's default recipe (no --optimizer), "quickstart" too: the README's quick start.
# A run is named <dataset>-<model>-<head>-<optimizer>-<epochs>ep, then -dense-classifier,
# -lr<LR> and -seed<N> for those extra options (seed 0 unless one is given).
case $MODE in
  quick) JOBS=("mnist mnist-cnn dense 1 sgd" "mnist mnist-cnn circulant 1 sgd"
               "mnist mnist-cnn circulant 5 default"
               "fashion-mnist mnist-cnn circulant 2 quickstart") ;;
  fashion) JOBS=("fashion-mnist mnist-cnn circulant 10 default"
                 "fashion-mnist mnist-cnn dense 10 default"
                 "fashion-mnist mnist-cnn block:64 10 default"
                 "fashion-mnist mnist-cnn circulant 10 default --classifier-head dense") ;;
  full) JOBS=(
          "mnist mnist-cnn dense 5 sgd" "mnist mnist-cnn circulant 5 sgd"
          "mnist mnist-cnn dense 5 adamw" "mnist mnist-cnn circulant 5 adamw"
          "mnist mnist-cnn block:64 5 adamw"
          "mnist mnist-cnn circulant 5 adamw --classifier-head dense"
          "mnist mnist-cnn circulant 10 adamw"
          "mnist mlp dense 5 adamw" "mnist mlp circulant 5 adamw" "mnist mlp block:64 5 adamw"
          "mnist mlp circulant 5 adamw --classifier-head dense"
          "fashion-mnist mnist-cnn dense 2 sgd" "fashion-mnist mnist-cnn circulant 2 sgd"
          "fashion-mnist mnist-cnn block:64 2 sgd"
          "fashion-mnist mnist-cnn circulant 10 default" "fashion-mnist mnist-cnn dense 10 default"
          "fashion-mnist mnist-cnn block:64 10 default"
          "fashion-mnist mnist-cnn circulant 10 default --classifier-head dense"
          "fashion-mnist mnist-cnn circulant 10 default --seed 1"
          "fashion-mnist mnist-cnn dense 10 default --seed 1"
          "fashion-mnist mnist-cnn block:64 10 default --seed 1"
          "fashion-mnist mnist-cnn circulant 10 default --lr 0.01"
          "cifar10 cifar-cnn dense 12 adamw --lr 0.001 --batch-size 128 --min-crop-scale 0.5"
          "cifar10 cifar-cnn circulant 12 adamw --lr 0.001 --batch-size 128 --min-crop-scale 0.5"
          "cifar10 cifar-cnn block:64 12 adamw --lr 0.001 --batch-size 128 --min-crop-scale 0.5") ;;
  *) echo "usage: $0 quick|fashion|full" >&2; exit 2 ;;
esac
DEVICE=${DEVICE:-cpu}
[ -d "$MNIST_DIR" ] || { echo "error: no MNIST files in $MNIST_DIR (set MNIST_DIR)" >&2; exit 1; }
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "error: install Fashion-MNIST first: apt-get install dataset-fashion-mnist" >&2; exit 1
fi
if [ "$MODE" = full ] && [ -z "${CIFAR_DIR:-}" ]; then
  CIFAR_DIR=$RUNS/cifar10-jpeg
  if [ ! -d "$CIFAR_DIR" ]; then
    mkdir -p "$RUNS"
    tar -C "$RUNS" -xzf "$ROOT/../shared/datasets/cifar10-jpeg.tar.gz"
  fi
fi

[ "$BUILD" = 0 ] || (cd "$ROOT" && cargo build --release -p trainer)
mkdir -p "$RUNS"
rows=()
for job in "${JOBS[@]}"; do
  read -r dataset model head epochs optimizer extra <<<"$job"
  data=()
  [ "$dataset" = mnist ] && data=(--data-dir "$MNIST_DIR")
  [ "$dataset" = cifar10 ] && data=(--data-dir "$CIFAR_DIR" --device "$DEVICE")
  # shellcheck disable=SC2206
  extra=(${extra:-})
  variant=$optimizer-${epochs}ep
  [ "$optimizer" = quickstart ] && variant=quickstart
  opt=()
  [[ $optimizer = default || $optimizer = quickstart ]] || opt=(--optimizer "$optimizer")
  [[ " ${extra[*]} " == *" --classifier-head dense "* ]] && variant=$variant-dense-classifier
  [[ " ${extra[*]} " =~ " --lr "([^ ]+)" " ]] && variant=$variant-lr${BASH_REMATCH[1]}
  # Seed 0 unless the job sets one (then named in the variant).
  seed=(--seed 0)
  if [[ " ${extra[*]} " =~ " --seed "([0-9]+)" " ]]; then
    variant=$variant-seed${BASH_REMATCH[1]}
    seed=()
  fi
  name=$dataset-$model-${head/:/}-$variant
  out=$RUNS/$name
  rm -rf "$out"
  echo "==> $name -> $out"
  "$TRAINER" train --dataset "$dataset" "${data[@]}" --model "$model" --head "$head" \
    --epochs "$epochs" "${opt[@]}" "${extra[@]}" "${seed[@]}" --out "$out" --no-progress \
    | tee "$out.log"
  if [ "${RECORD:-0}" = 1 ]; then
    rec=$ROOT/docs/runs/$name
    rm -rf "$rec" && mkdir -p "$rec"
    cp "$out/metrics.jsonl" "$out/curves.png" "$rec/"
    sed "s|$ROOT/||g" "$out.log" >"$rec/train.log"
    printf '# %s\n\nRun by `scripts/reproduce.sh %s` on %s (%s, %s CPUs), trainer commit %s.\n' \
      "$name" "$MODE" "$(date -u +%Y-%m-%d)" "$(lscpu | sed -n 's/^Model name: *//p')" \
      "$(nproc)" "$(git -C "$ROOT" rev-parse --short HEAD)" >"$rec/README.md"
  fi
  head="$head${extra[*]:+ (${extra[*]})}"
  rows+=("$(python3 - "$out" "$dataset" "$model" "$head, $optimizer, $epochs ep" <<'PY'
import json, os, subprocess, sys
out, dataset, model, head = sys.argv[1:]
lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
test, last = lines[-1], lines[-2]
info = json.loads(subprocess.check_output(
    [os.environ["TRAINER"], "info", "--json", "--checkpoint", os.path.join(out, "model.safetensors")]))
print(f"| {dataset} | {model} | {head} | {100 * (1 - test['test_acc']):.2f}% | {info['params']:,} "
      f"| {info['compression']:.1f}x | {info['file_size'] / 1e6:.2f} MB | {last['seconds']:.0f} s "
      f"| {last['images_per_sec']:.0f} |")
PY
)")
done
if [ "${RECORD:-0}" = 1 ]; then python3 "$ROOT/scripts/docs-tables.py"; fi
echo
echo "| dataset | model | head | test error (best.safetensors) | params | compression | checkpoint | s/epoch (last) | train img/s |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

if [ "$MODE" = full ]; then
  echo
  echo "==> AlexNet (1000 classes) inference and fwd+bwd time per image, CPU"
  (cd "$ROOT" && cargo run --release -p circulant-model --example speed -- alexnet 1,32 dense,circulant 1000)
  echo
  echo "==> mnist-cnn inference at batch 1 and 256"
  (cd "$ROOT" && cargo run --release -p circulant-model --example speed -- mnist-cnn 1,256 dense,circulant,block:64)
  echo
  echo "==> AlexNet training steps on a synthetic JPEG ImageFolder (decode + model)"
  SYN=$RUNS/synthetic-imagefolder
  rm -rf "$SYN"
  "$TRAINER" bench-decode --data-dir "$SYN" --generate 640 >/dev/null
  mkdir -p "$SYN/val" && cp -r "$SYN/train/"* "$SYN/val/"
  for head in dense circulant; do
    start=$(date +%s.%N)
    "$TRAINER" train --dataset imagefolder --data-dir "$SYN" --model alexnet --head "$head" \
      --batch-size 32 --epochs 1 --max-steps 10 --seed 0 --no-progress --out "$RUNS/alexnet-synthetic-$head"
    python3 -c "import sys,time; s=time.time()-float(sys.argv[1]); print(f'alexnet $head: 10 steps of 32 + eval of 640 images in {s:.1f} s')" "$start"
  done
fi
