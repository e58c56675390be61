"""Fold the input normalisation x_n = scale * x into saved weights, so the dictionary runs on raw activations.

For the linear-encoder architectures here the encoder sees (x_n - b_dec) W = (x - b_dec / scale) (scale W), and
x_hat_raw = x_hat_n / scale = f (W_dec / scale) + b_dec / scale. So, with the latents f unchanged:
    W <- scale * W                for each encoder matrix W (W_enc; Gated: W_gate = W_enc, W_mag follows)
    W_dec <- W_dec / scale,  b_dec <- b_dec / scale
    biases, thresholds and buffers unchanged.
Latents, thresholds and k keep their meaning; decoder rows then have norm 1 / scale instead of 1.
Each architecture says how scaling folds into it (`Architecture.fold_input_scale`); `linear_fold` builds it for
the common case.
"""

from __future__ import annotations

from typing import Any, Callable

from jaxsae.sae.base import SAEConfig, build


def _per_member(value: Any, trailing_dims: int) -> Any:
    return value.reshape(value.shape + (1,) * trailing_dims) if getattr(value, "ndim", 0) else value


def linear_fold(encoder_matrices: tuple[str, ...] = ("W_enc",)) -> Callable[[dict, Any], dict]:
    """fold(params, scale) for an encoder (x - b_dec) W + ... and a decoder f W_dec + b_dec.

    params: numpy or JAX arrays, any leading ensemble axes; scale: a positive scalar, or one per member
    broadcastable against the leading axes (shape [E] for a stack).
    """

    def fold(params: dict, scale: Any) -> dict:
        folded = dict(params)
        for name in encoder_matrices:
            folded[name] = params[name] * _per_member(scale, 2)
        folded["W_dec"] = params["W_dec"] / _per_member(scale, 2)
        folded["b_dec"] = params["b_dec"] / _per_member(scale, 1)
        return folded

    return fold


def fold_input_scale(params: dict[str, Any], sae: SAEConfig, scale: Any) -> dict[str, Any]:
    """params trained on x_n = scale * x -> params for raw x, as the architecture of `sae` folds them."""
    arch = build(sae)
    if set(params) != set(arch.param_layout):
        raise ValueError(
            f"fold_input_scale: {arch.name} parameters should be {sorted(arch.param_layout)}, got {sorted(params)}"
        )
    return arch.fold_input_scale(params, scale)
