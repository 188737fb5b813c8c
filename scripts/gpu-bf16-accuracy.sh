#!/usr/bin/env bash
# bf16 mixed precision against f32 on a CUDA card: mnist-cnn on MNIST and cifar-cnn on
# CIFAR-10, circulant heads, the same recipe and seed in both precisions; the test accuracies
# (issue target: bf16 within 0.3 points of f32) go to RESULTS/bf16-accuracy.json.
#
#   scripts/gpu-bf16-accuracy.sh TRAINER MNIST_DIR CIFAR_DIR RESULTS [MNIST_EPOCHS] [CIFAR_EPOCHS]
#
# TRAINER: a trainer built with --features cuda; MNIST_DIR: the four idx .gz files; CIFAR_DIR:
# the unpacked cifar10-jpeg folder (train/ and test/). Epochs default to 5 (MNIST) and 12
# (CIFAR-10, run by scripts/gpu-cifar.sh with its recipe). Either dataset is skipped when its
# folder is "-". Each run's metrics.jsonl and log land in RESULTS/mnist-cnn-<precision>/ and
# RESULTS/cifar-cnn-<precision>/cifar-circulant/.
set -uo pipefail
TRAINER=$1 MNIST=$2 CIFAR=$3 RESULTS=$4
MNIST_EPOCHS=${5:-5} CIFAR_EPOCHS=${6:-12}
mkdir -p "$RESULTS"

status=0
runs=() # "name metrics-folder"
for precision in f32 bf16; do
  if [[ $MNIST != - ]]; then
    name=mnist-cnn-$precision t0=$SECONDS
    echo "== $name"
    "$TRAINER" train --dataset mnist --data-dir "$MNIST" --model mnist-cnn --head circulant \
      --precision "$precision" --device cuda --epochs "$MNIST_EPOCHS" --seed 0 --no-progress \
      --out "$RESULTS/$name" >"$RESULTS/$name.log" 2>&1 || status=1
    echo "gpu-bf16-accuracy: $name took $((SECONDS - t0)) s"
    tail -3 "$RESULTS/$name.log"
    rm -f "$RESULTS/$name"/*.safetensors
    runs+=("$name" "$RESULTS/$name")
  fi
  if [[ $CIFAR != - ]]; then
    name=cifar-cnn-$precision
    HEADS=circulant PRECISION=$precision bash "$(dirname "$0")/gpu-cifar.sh" "$TRAINER" \
      "$CIFAR" "$RESULTS/$name" "$CIFAR_EPOCHS" || status=1
    runs+=("$name" "$RESULTS/$name/cifar-circulant")
  fi
done

python3 - "$RESULTS" "${runs[@]}" <<'PY' || status=1
import json, sys
results, runs = sys.argv[1], sys.argv[2:]
out = []
for name, folder in zip(runs[::2], runs[1::2]):
    network, precision = name.rsplit("-", 1)
    try:
        lines = [json.loads(l) for l in open(f"{folder}/metrics.jsonl") if l.strip()]
    except OSError as e:
        sys.exit(f"gpu-bf16-accuracy: {name}: {e}")
    test = [l for l in lines if "test_acc" in l]
    epochs = [l for l in lines if "epoch" in l and "test_acc" not in l]
    if not test:
        sys.exit(f"gpu-bf16-accuracy: {name} has no test result")
    out.append({"network": network, "precision": precision, "test_acc": test[-1]["test_acc"],
                "epochs": len(epochs), "train_img_s_last_epoch": epochs[-1]["images_per_sec"]})
json.dump(out, open(f"{results}/bf16-accuracy.json", "w"), indent=1)
for network in sorted({r["network"] for r in out}):
    acc = {r["precision"]: r["test_acc"] for r in out if r["network"] == network}
    if {"f32", "bf16"} <= acc.keys():
        gap = 100 * (acc["f32"] - acc["bf16"])
        verdict = "within" if gap <= 0.3 else "NOT within"
        print(f"{network}: f32 {100*acc['f32']:.2f}%, bf16 {100*acc['bf16']:.2f}% "
              f"({verdict} 0.3 points)")
PY
exit $status
