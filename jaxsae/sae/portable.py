"""The inference rule other tools share (SAELens, sparsify, PyTorch): what an architecture's `portable`
function (`jaxsae.sae.base.Architecture.portable`) returns for one member's folded numpy weights."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PortableForm:
    """A dictionary's inference rule in the terms SAELens, sparsify and PyTorch share, on raw activations:

        pre   = (x - b_dec) W_enc + b_enc                                   x: [B, d], pre: [B, n]
        f     = ReLU(pre)                                        activation "relu"
              = ReLU of each row's k largest pre, 0 elsewhere    activation "topk"
              = ReLU(pre) * [pre > threshold]                    activation "jumprelu" (threshold [n])
              = [(x - b_dec) W_enc + b_gate > 0] * ReLU((x - b_dec) W_enc exp(r_mag) + b_mag)   "gated"
        x_hat = f W_dec + b_dec

    tensors: float32 W_enc [d, n], W_dec [n, d], b_dec [d], and b_enc [n] (relu, topk, jumprelu),
    threshold [n] (jumprelu), b_gate, r_mag, b_mag [n] (gated). k: active latents per row (topk only).
    """

    activation: str
    tensors: dict[str, np.ndarray]
    k: int | None = None


def linear(params: dict) -> dict[str, np.ndarray]:
    """The tensors of the linear encoder/decoder every non-gated rule uses."""
    return {name: params[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
