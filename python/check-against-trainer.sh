#!/usr/bin/env bash
# Checks python/circulant_numpy.py against the Rust trainer: trains tiny checkpoints on synthetic
# data (mnist-cnn, mlp, cifar-cnn and alexnet; CHECK_ALEXNET=0 skips alexnet), writes PNG images
# that `trainer predict` does not resample (the input size; 256x256 for alexnet, of which it keeps
# the centre 224x224), so that it only scales and normalises them, runs
# `trainer predict --json` on them and compares its probabilities with the numpy ones (within
# 1e-5), after the numpy unit tests.
#
#   bash python/check-against-trainer.sh target/release/trainer
#
# numpy and safetensors are installed in a venv under ${CIRCULANT_CACHE:-~/.cache/circulant}.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 TRAINER_BINARY" >&2
    exit 2
fi
trainer=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
if [ ! -x "$trainer" ]; then
    echo "$0: $1 is not an executable (build it with cargo build --release -p trainer)" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)

cache=${CIRCULANT_CACHE:-$HOME/.cache/circulant}
venv=$cache/venv-numpy
py=$venv/bin/python
if ! "$py" -c 'import numpy, safetensors' 2>/dev/null; then
    echo "creating $venv (numpy, safetensors)"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check numpy safetensors
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cases=()
# case NAME NETWORK SHAPE(CxHxW) TRAIN-FLAGS...: train, write images, predict.
case_() {
    local name=$1 network=$2 shape=$3
    shift 3
    echo "--- $name: training a tiny $network checkpoint ($*)"
    if ! "$trainer" train --dataset synthetic --model "$network" --epochs 1 \
        --out "$tmp/$name" --no-progress "$@" >"$tmp/$name.train.log" 2>&1; then
        cat "$tmp/$name.train.log" >&2
        echo "$0: trainer train failed for $name" >&2
        exit 1
    fi
    local ckpt=$tmp/$name/model.safetensors
    "$py" "$here/test_circulant_numpy.py" --make-inputs "$tmp/$name.img" --shape "$shape" \
        --count 5 --seed "${#cases[@]}" >/dev/null
    "$trainer" predict --checkpoint "$ckpt" --json "$tmp/$name.img"/img*.png >"$tmp/$name.jsonl"
    cases+=(--checkpoint "$ckpt" --inputs "$tmp/$name.img/pixels.npy" --expected "$tmp/$name.jsonl")
}

small=(--synthetic-train 128 --synthetic-test 32)
case_ mnist-cnn mnist-cnn 1x28x28 --head circulant --max-steps 20 "${small[@]}"
case_ mlp mlp 1x28x28 --head block:48 --classifier-head dense --max-steps 20 "${small[@]}"
case_ cifar-cnn cifar-cnn 3x32x32 --head circulant --classifier-head block:16 --max-steps 4 \
    --batch-size 16 --synthetic-train 64 --synthetic-test 16
if [ "${CHECK_ALEXNET:-1}" != 0 ]; then
    case_ alexnet alexnet 3x224x224 --head circulant --classifier-head dense --max-steps 1 \
        --batch-size 2 --synthetic-train 2 --synthetic-test 2
fi

echo "--- numpy unit tests and comparison with trainer predict"
"$py" "$here/test_circulant_numpy.py" "${cases[@]}"
