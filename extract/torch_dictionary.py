"""A trained jaxsae dictionary as a PyTorch module: `to_torch(dictionary)` -> `TorchDictionary`.

The module runs the dictionary's inference rule (`jaxsae.Dictionary.portable`) on raw activations, with the
weights already folded for raw inputs, so its `encode` / `decode` give what `jaxsae.Dictionary.encode` /
`decode` give (float32, up to matmul rounding). BatchTopK and Matryoshka encode with their inference threshold,
as a JumpReLU whose threshold is the same for every latent; TopK keeps its member's k.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from jaxsae.dictionary import Dictionary, load
from jaxsae.sae.portable import PortableForm


class TorchDictionary(nn.Module):
    """A dictionary's encoder and decoder as a torch module (weights as parameters, named as in jaxsae).

    activation: "relu" | "topk" | "jumprelu" | "gated" (see `jaxsae.sae.portable.PortableForm`); k: topk's
    active latents per row. W_enc [d, n], W_dec [n, d], b_dec [d]; b_enc [n] or, gated, b_gate, r_mag, b_mag [n];
    threshold [n] for jumprelu.
    """

    def __init__(self, form: PortableForm):
        super().__init__()
        self.activation = form.activation
        self.k = form.k
        for name, value in form.tensors.items():
            self.register_parameter(name, nn.Parameter(torch.tensor(value, dtype=torch.float32),
                                                       requires_grad=False))
        self.d_model, self.n_latents = self.W_enc.shape

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d] raw activations -> [..., n] latents."""
        centred = x.to(self.W_enc.dtype) - self.b_dec
        if self.activation == "gated":
            s = centred @ self.W_enc
            magnitude = torch.relu(s * torch.exp(self.r_mag) + self.b_mag)
            return torch.where(s + self.b_gate > 0, magnitude, torch.zeros_like(magnitude))
        pre = centred @ self.W_enc + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.where(pre > self.threshold, torch.relu(pre), torch.zeros_like(pre))
        values, indices = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: [..., n] -> [..., d] reconstruction in raw activation units."""
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d] -> its reconstruction [..., d]."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"activation={self.activation!r}, d_model={self.d_model}, n_latents={self.n_latents}{k}"


def to_torch(dictionary: Dictionary | str | os.PathLike) -> TorchDictionary:
    """A `jaxsae.Dictionary` (or the folder of one) as a `TorchDictionary` on the CPU, in eval mode
    (`.to(device)` moves it like any module)."""
    if not isinstance(dictionary, Dictionary):
        dictionary = load(dictionary)
    return TorchDictionary(dictionary.portable()).eval()
