"""PyTorch peer of `circulant-model/examples/conv_layers.rs`: CPU time of the five
convolutions (each followed by a ReLU) of AlexNet (and its first max pool), cifar-cnn,
mnist-cnn or one per stage of ResNet-18, eval mode, no autograd. With `--train`, each call is the forward pass and the backward
pass of the sum of the outputs (input, weight and bias gradients; no input gradient for the
first layer, whose input is the images) instead.

Prints one line per layer with the fastest of 100 calls after 5 warm-up calls (the fastest
call is the figure least disturbed by other work on a shared machine).

    python bench/torch_conv_layers.py --batch 1 --threads 2 [--net alexnet|cifar|mnist|resnet] [--train]
"""

import argparse
import time

import torch
import torch.nn as nn

# name, c_in, c_out, kernel, stride, padding, input side
LAYERS = {
    # torchvision's AlexNet at 224x224
    "alexnet": [
        ("conv1", 3, 64, 11, 4, 2, 224),
        ("conv2", 64, 192, 5, 1, 2, 27),
        ("conv3", 192, 384, 3, 1, 1, 13),
        ("conv4", 384, 256, 3, 1, 1, 13),
        ("conv5", 256, 256, 3, 1, 1, 13),
    ],
    # circulant-model's cifar-cnn (docs/CHECKPOINT_FORMAT.md)
    "cifar": [
        ("conv1", 3, 64, 3, 1, 1, 32),
        ("conv2", 64, 64, 3, 1, 1, 32),
        ("conv3", 64, 128, 3, 1, 1, 16),
        ("conv4", 128, 128, 3, 1, 1, 16),
        ("conv5", 128, 256, 3, 1, 1, 8),
    ],
    # one 3x3 convolution per stage of torchvision's ResNet-18 at 224x224, after its 7x7 stem
    "resnet": [
        ("conv1", 3, 64, 7, 2, 3, 224),
        ("layer1", 64, 64, 3, 1, 1, 56),
        ("layer2", 128, 128, 3, 1, 1, 28),
        ("layer3", 256, 256, 3, 1, 1, 14),
        ("layer4", 512, 512, 3, 1, 1, 7),
    ],
    # circulant-model's mnist-cnn
    "mnist": [
        ("conv1", 1, 32, 5, 1, 0, 28),
        ("conv2", 32, 64, 5, 1, 0, 12),
    ],
}


def fastest_ms(f, warmup=5, calls=100):
    for _ in range(warmup):
        f()
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--net", choices=sorted(LAYERS), default="alexnet")
    p.add_argument("--train", action="store_true", help="forward + backward of the sum of the outputs")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    total = 0.0
    for i, (name, ci, co, k, s, pad, side) in enumerate(LAYERS[a.net]):
        conv = nn.Conv2d(ci, co, k, s, pad)
        x = torch.randn(a.batch, ci, side, side)
        if a.train:
            # the first layer reads the images: no input gradient, as in the network
            x.requires_grad_(i > 0)

            def step():
                # fresh gradients each call, as a training step after `zero_grad()`
                x.grad = conv.weight.grad = conv.bias.grad = None
                torch.relu(conv(x)).sum().backward()

            ms = fastest_ms(step)
        else:
            conv.eval()
            with torch.inference_mode():
                ms = fastest_ms(lambda: torch.relu(conv(x)))
        total += ms
        print(f"{name} b{a.batch} {ms:.3f} ms")
    with torch.inference_mode():
        if a.net == "alexnet" and not a.train:
            x = torch.randn(a.batch, 64, 55, 55)
            pool = nn.MaxPool2d(3, 2)
            print(f"pool1 {fastest_ms(lambda: pool(x)):.3f} ms")
    print(f"conv total {total:.3f} ms")


if __name__ == "__main__":
    main()
