#!/usr/bin/env bash
# CIFAR-10 `cifar-cnn`, dense vs circulant head, same recipe and seed, on a CUDA card.
#
#   scripts/gpu-cifar.sh TRAINER CIFAR_DIR RESULTS [EPOCHS]
#
# TRAINER: a trainer built with --features cuda (scripts/gpu-bench.sh packs one);
# CIFAR_DIR: the unpacked cifar10-jpeg folder (train/ and test/ class folders);
# EPOCHS per head (default 12; about 15 s each on an H200, bound by JPEG decoding).
# HEADS (default "dense circulant"), BATCH (default 128) and PRECISION (f32 or bf16, default
# f32) from the environment.
# Recipe: AdamW lr 1e-3 (weight decay 0.01), cosine, batch 128. SGD at lr 0.05 (the MNIST
# recipe) diverges within 5 steps with the circulant head on CIFAR-10, on the CPU as on the GPU.
# Each run's metrics.jsonl, curves.png and log land in RESULTS/cifar-<head>/ (checkpoints are
# deleted: they are not needed to read the results).
set -uo pipefail
TRAINER=$1
DATA=$2
RESULTS=$3
EPOCHS=${4:-12}
mkdir -p "$RESULTS"

status=0
for head in ${HEADS:-dense circulant}; do
  echo "== cifar-cnn $head, $EPOCHS epochs"
  t0=$SECONDS
  "$TRAINER" train --dataset cifar10 --data-dir "$DATA" --model cifar-cnn --head "$head" \
    --device cuda --precision "${PRECISION:-f32}" --epochs "$EPOCHS" --batch-size "${BATCH:-128}" --optimizer adamw --lr 0.001 \
    --schedule cosine --min-crop-scale 0.5 --seed 0 --no-progress \
    --out "$RESULTS/cifar-$head" >"$RESULTS/cifar-$head.log" 2>&1 || status=1
  echo "gpu-cifar: $head took $((SECONDS - t0)) s"
  tail -4 "$RESULTS/cifar-$head.log"
  rm -f "$RESULTS/cifar-$head"/*.safetensors
done
exit $status
