"""Fold the input normalisation x_n = scale * x into saved weights, so the dictionary runs on raw activations.

For every architecture here the encoder sees (x_n - b_dec) W_enc = (x - b_dec / scale) (scale W_enc), and
x_hat_raw = x_hat_n / scale = f (W_dec / scale) + b_dec / scale. So, with the latents f unchanged:
    W_enc <- scale * W_enc        (Gated: W_gate; W_mag = W_gate exp(r_mag) follows, r_mag unchanged)
    W_dec <- W_dec / scale,  b_dec <- b_dec / scale
    b_enc, threshold (JumpReLU), b_gate, r_mag, b_mag, and buffers (BatchTopK's threshold) unchanged.
Latents, thresholds and k keep their meaning; decoder rows then have norm 1 / scale instead of 1.
"""

from __future__ import annotations

from typing import Any

from jaxsae.sae.base import ARCHITECTURES, ConfigError

_EXPECTED = {
    "relu": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "batchtopk": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "matryoshka": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "gated": {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"},
}


def fold_input_scale(params: dict[str, Any], arch_name: str, scale: Any) -> dict[str, Any]:
    """params (numpy or JAX arrays, any leading ensemble axes) trained on x_n = scale * x -> params for raw x.

    scale: a positive scalar, or one per member broadcastable against the leading axes (shape [E] for a stack).
    """
    if arch_name not in _EXPECTED:
        raise ConfigError(
            f"fold_input_scale: unknown architecture {arch_name!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    if set(params) != _EXPECTED[arch_name]:
        raise ValueError(
            f"fold_input_scale: {arch_name} parameters should be {sorted(_EXPECTED[arch_name])}, got {sorted(params)}"
        )

    def per_member(value, trailing_dims):
        return value.reshape(value.shape + (1,) * trailing_dims) if getattr(value, "ndim", 0) else value

    folded = dict(params)
    folded["W_enc"] = params["W_enc"] * per_member(scale, 2)
    folded["W_dec"] = params["W_dec"] / per_member(scale, 2)
    folded["b_dec"] = params["b_dec"] / per_member(scale, 1)
    return folded
