#!/usr/bin/env bash
# Reproduce the dense vs circulant comparisons of docs/RESULTS.md with the trainer.
#
#   scripts/reproduce.sh quick   # MNIST mnist-cnn, dense vs circulant, 1 epoch each (~10 min on
#                                # 2 cores once the release build exists), then a table
#   scripts/reproduce.sh full    # MNIST (mnist-cnn, mlp) and Fashion-MNIST (mnist-cnn) with dense,
#                                # circulant and block:64 heads, 10 epochs each (hours on 2 cores)
#
# MNIST is read from $MNIST_DIR (default ../shared/datasets/mnist, the four idx .gz files);
# Fashion-MNIST from Debian's dataset-fashion-mnist package. Runs go to $RUNS (default runs/repro).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-quick}
MNIST_DIR=${MNIST_DIR:-$ROOT/../shared/datasets/mnist}
RUNS=${RUNS:-$ROOT/runs/repro}
export TRAINER=$ROOT/target/release/trainer

case $MODE in
  quick) EPOCHS=1; HEADS=(dense circulant); JOBS=("mnist mnist-cnn") ;;
  full) EPOCHS=10; HEADS=(dense circulant block:64)
        JOBS=("mnist mnist-cnn" "mnist mlp" "fashion-mnist mnist-cnn") ;;
  *) echo "usage: $0 quick|full" >&2; exit 2 ;;
esac
[ -d "$MNIST_DIR" ] || { echo "error: no MNIST files in $MNIST_DIR (set MNIST_DIR)" >&2; exit 1; }
if [ "$MODE" = full ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "error: install Fashion-MNIST first: apt-get install dataset-fashion-mnist" >&2; exit 1
fi

(cd "$ROOT" && cargo build --release -p trainer)
mkdir -p "$RUNS"
rows=()
for job in "${JOBS[@]}"; do
  read -r dataset model <<<"$job"
  data=()
  [ "$dataset" = mnist ] && data=(--data-dir "$MNIST_DIR")
  for head in "${HEADS[@]}"; do
    out=$RUNS/$dataset-$model-${head/:/}
    rm -rf "$out"
    echo "==> $dataset $model $head ($EPOCHS epochs) -> $out"
    "$TRAINER" train --dataset "$dataset" "${data[@]}" --model "$model" --head "$head" \
      --epochs "$EPOCHS" --seed 0 --out "$out" --no-progress
    rows+=("$(python3 - "$out" "$dataset" "$model" "$head" <<'PY'
import json, os, subprocess, sys
out, dataset, model, head = sys.argv[1:]
last = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][-1]
info = json.loads(subprocess.check_output(
    [os.environ["TRAINER"], "info", "--json", "--checkpoint", os.path.join(out, "model.safetensors")]))
print(f"| {dataset} | {model} | {head} | {100 * (1 - last['val_acc']):.2f}% | {info['params']:,} "
      f"| {info['compression']:.1f}x | {info['file_size'] / 1e6:.2f} MB | {last['seconds']:.0f} s "
      f"| {last['images_per_sec']:.0f} |")
PY
)")
  done
done
echo
echo "| dataset | model | head | test error | params | compression | checkpoint | s/epoch (last) | train img/s |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
