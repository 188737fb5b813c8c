"""The (block-)circulant projection in PyTorch, shared by the benchmarks under bench/.

One implementation of the op, used by

- bench/torch_circulant.py (op-level benchmark): `BlockCirculantLinear`, the bare projection
  x (B, q*b) -> y (B, p*b) with parameter r (p, q, b);
- bench/torch_train.py (whole-network benchmark): `CirculantFC`, the FC layer of
  docs/CHECKPOINT_FORMAT.md, y = trunc_k(C · pad(signs ⊙ x)) + bias.

The projection: y[n, i*b+s] = sum_j sum_t r[i, j, (s-t) mod b] * x[n, j*b+t], i.e. block (i, j)
of the weight is the circulant matrix whose first column is r[i, j, :].  With p = q = 1 and
b = n it is the paper's circulant layer, y = irfft(rfft(r) * rfft(x)).  It is written the way
a PyTorch user would write it: torch.fft.rfft / irfft, an einsum over the complex spectra for
the block case, autograd for the backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def block_circulant(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x (..., q*b), r (p, q, b) -> (..., p*b), computed with real FFTs of length b."""
    p, q, b = r.shape
    lead = x.shape[:-1]
    if x.shape[-1] != q * b:
        raise ValueError(f"expected last dim {q * b}, got {x.shape[-1]}")
    if p == 1 and q == 1:
        # Plain circulant: one spectrum, elementwise product.
        return torch.fft.irfft(torch.fft.rfft(r[0, 0]) * torch.fft.rfft(x), n=b)
    xf = torch.fft.rfft(x.reshape(*lead, q, b))  # (..., q, f)
    rf = torch.fft.rfft(r)  # (p, q, f)
    yf = torch.einsum("ijf,...jf->...if", rf, xf)  # (..., p, f)
    y = torch.fft.irfft(yf, n=b)  # (..., p, b)
    return y.reshape(*lead, p * b)


class BlockCirculantLinear(nn.Module):
    """Block-circulant projection (q*b) -> (p*b) with parameter r of shape (p, q, b), no bias."""

    def __init__(self, p: int, q: int, b: int, device=None, dtype=torch.float32):
        super().__init__()
        self.p, self.q, self.b = p, q, b
        r = torch.randn(p, q, b, device=device, dtype=dtype) / math.sqrt(q * b)
        self.r = nn.Parameter(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_circulant(x, self.r)


def dense_from_r(r: torch.Tensor) -> torch.Tensor:
    """Dense (p*b, q*b) matrix W with W[i*b+s, j*b+t] = r[i, j, (s-t) mod b] (differentiable)."""
    p, q, b = r.shape
    s = torch.arange(b, device=r.device)
    idx = (s[:, None] - s[None, :]) % b  # (b, b)
    blocks = r[:, :, idx]  # (p, q, b, b): [i, j, s, t]
    return blocks.permute(0, 2, 1, 3).reshape(p * b, q * b)


def parse_head(head: str) -> int | None:
    """`circulant` -> None, `block:<b>` -> b (>= 1); anything else (including `dense`) -> ValueError."""
    if head == "circulant":
        return None
    if head.startswith("block:"):
        try:
            b = int(head[len("block:"):])
        except ValueError:
            b = 0
        if b >= 1:
            return b
    raise ValueError(f"not a circulant head: {head!r} (expected circulant or block:<b>, b >= 1)")


class CirculantFC(nn.Module):
    """FC layer d -> k of docs/CHECKPOINT_FORMAT.md: y = trunc_k(C · pad(signs ⊙ x)) + bias.

    head `circulant`: parameter r (n,), n = max(d, k), C = circ(r) (r is its first column).
    head `block:<b>`: parameter r (p, q, b), q = ceil(d/b), p = ceil(k/b), block (i, j) of C is
    circ(r[i, j, :]).  `signs` (d,) is a fixed ±1 buffer (absent when sign_flip is False).
    Initialisation as circulant-model: r and bias uniform in ±1/sqrt(fan_in), fan_in = d
    (circulant) or q*b (block; the bias uses d), signs independent ±1.

    The FFTs run in r's dtype (float32) with autocast disabled: torch.fft has no bfloat16
    kernels, so under --precision bf16 this layer takes a bf16 input, upcasts it and returns
    float32 (the next autocast op casts again).
    """

    def __init__(self, d: int, k: int, head: str = "circulant", sign_flip: bool = True,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float32):
        super().__init__()
        if d < 1 or k < 1:
            raise ValueError(f"CirculantFC needs d, k >= 1, got {d}, {k}")
        self.d, self.k, self.head = d, k, head
        self.block = parse_head(head)
        if self.block is None:
            n = max(d, k)
            r_shape, fan_in = (n,), d
            self.n_in = n
        else:
            b = self.block
            p, q = -(-k // b), -(-d // b)
            r_shape, fan_in = (p, q, b), q * b
            self.n_in = q * b
        kw = dict(device=device, dtype=dtype)
        if sign_flip:
            bits = torch.randint(0, 2, (d,), generator=generator).to(**kw)
            self.register_buffer("signs", 2 * bits - 1)
        else:
            self.signs = None
        self.r = nn.Parameter(_uniform(r_shape, 1 / math.sqrt(fan_in), generator, kw))
        self.bias = nn.Parameter(_uniform((k,), 1 / math.sqrt(d), generator, kw))

    def r_blocks(self) -> torch.Tensor:
        """r as the (p, q, b) grid of the projection ((1, 1, n) for the circulant head)."""
        return self.r.view(1, 1, -1) if self.block is None else self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"CirculantFC: input shape {tuple(x.shape)}, expected last dim {self.d}")
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.r.dtype)
            if self.signs is not None:
                x = x * self.signs
            if self.n_in > self.d:
                x = nn.functional.pad(x, (0, self.n_in - self.d))
            y = block_circulant(x, self.r_blocks())
            if y.shape[-1] > self.k:
                y = y[..., : self.k]
            return y + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent (k, d) weight, signs, padding and truncation included (differentiable)."""
        w = dense_from_r(self.r_blocks())[: self.k, : self.d]
        return w * self.signs if self.signs is not None else w

    def extra_repr(self) -> str:
        return f"d={self.d}, k={self.k}, head={self.head}, r={tuple(self.r.shape)}, sign_flip={self.signs is not None}"


def _uniform(shape, bound: float, generator, kw) -> torch.Tensor:
    return ((torch.rand(shape, generator=generator) * 2 - 1) * bound).to(**kw)
