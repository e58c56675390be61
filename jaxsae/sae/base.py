"""The contract every SAE architecture implements: static config, per-member hyperparameters, loss output."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax

from jaxsae.errors import ConfigError

Params = dict[str, jax.Array]
Buffers = dict[str, jax.Array]
HParams = dict[str, jax.Array]

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")


class Axes(NamedTuple):
    """Mesh axis names the math runs under (inside `shard_map`); None means that axis is not split.

    data:   the batch axis is split across this mesh axis (means over rows need a psum).
    latent: the dictionary axis (n_latents) is split across this mesh axis; params hold a local slice.
    """

    data: str | None = None
    latent: str | None = None


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static (shape-determining) settings of one pack of SAE members; identical across the members.

    architecture: one of ARCHITECTURES.
    d_model:      width of the input activations.
    n_latents:    dictionary size (global, unsharded).
    k:            top-k family: the largest k of any member (members with smaller k are masked).
    k_aux:        AuxK: how many dead latents reconstruct the residual; default d_model // 2.
    dead_after_rows: a latent that has not fired in this many rows is dead (AuxK, dead fraction).
    matryoshka_prefixes: nested dictionary sizes, ascending, the last one == n_latents; default: 5 doubling
                  prefixes ending at n_latents.
    batchtopk_row_cap: BatchTopK selects from each row's top (row_cap * k) candidates; exact unless one row
                  holds more than that many of the batch's top B*k activations.
    jumprelu_penalty: "l0" (step-function L0, Rajamanoharan et al. 2024) or "tanh" (Anthropic, Feb 2025).
    jumprelu_ste_to_input: let the L0 penalty's straight-through gradient reach the pre-activations too.
    jumprelu_threshold_init: initial value of every JumpReLU threshold (Rajamanoharan et al. 2024: 0.001).
    decoder_init_norm: norm of the initial decoder rows (relu: Anthropic April 2024 uses 0.1; others 1).
    sparse_decode: top-k family: decode and the encoder weight gradient touch only the k selected latents.
    """

    architecture: str = "topk"
    d_model: int = 512
    n_latents: int = 4096
    k: int = 32
    k_aux: int | None = None
    dead_after_rows: int = 10_000_000
    matryoshka_prefixes: tuple[int, ...] = ()
    batchtopk_row_cap: int = 4
    jumprelu_penalty: str = "l0"
    jumprelu_ste_to_input: bool = False
    jumprelu_threshold_init: float = 0.001
    decoder_init_norm: float | None = None
    sparse_decode: bool = True

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"sae.architecture: unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        if self.d_model < 1:
            raise ConfigError(f"sae.d_model: must be >= 1, got {self.d_model}")
        if self.n_latents < 1:
            raise ConfigError(f"sae.n_latents: must be >= 1, got {self.n_latents}")
        if self.architecture in ("topk", "batchtopk", "matryoshka") and not 1 <= self.k <= self.n_latents:
            raise ConfigError(
                f"sae.k: must be between 1 and n_latents={self.n_latents}, got {self.k}; lower k or raise n_latents"
            )
        if self.dead_after_rows < 1:
            raise ConfigError(f"sae.dead_after_rows: must be >= 1, got {self.dead_after_rows}")
        if self.jumprelu_penalty not in ("l0", "tanh"):
            raise ConfigError(f"sae.jumprelu_penalty: must be 'l0' or 'tanh', got {self.jumprelu_penalty!r}")
        if self.batchtopk_row_cap < 1:
            raise ConfigError(f"sae.batchtopk_row_cap: must be >= 1, got {self.batchtopk_row_cap}")
        prefixes = self.prefixes
        if self.architecture == "matryoshka":
            if list(prefixes) != sorted(set(prefixes)) or prefixes[-1] != self.n_latents or prefixes[0] < 1:
                raise ConfigError(
                    f"sae.matryoshka_prefixes: must be strictly ascending, >= 1, and end at n_latents="
                    f"{self.n_latents}; got {list(prefixes)}"
                )

    @property
    def aux_k(self) -> int:
        return min(self.k_aux if self.k_aux is not None else self.d_model // 2, self.n_latents)

    @property
    def prefixes(self) -> tuple[int, ...]:
        if self.matryoshka_prefixes:
            return tuple(self.matryoshka_prefixes)
        sizes = [self.n_latents]
        while len(sizes) < 5 and sizes[-1] // 2 >= max(self.k, 1):
            sizes.append(sizes[-1] // 2)
        return tuple(sorted(sizes))


class LossOut(NamedTuple):
    """What an architecture's `loss` returns next to the scalar loss (per member, local latent shard).

    terms:        named scalar loss terms (already weighted as they enter the loss), e.g. {"mse": ., "l1": .}.
    x_hat:        [B, d] reconstruction of the (normalised) input rows, local data shard.
    fire_count:   [n_local] float32, how many rows of the GLOBAL batch each latent fired on (psum over data).
    l0:           [] mean number of active latents per row over the global batch.
    buffers:      the architecture's non-trained state after this step (e.g. BatchTopK threshold EMA).
    """

    terms: dict[str, jax.Array]
    x_hat: jax.Array
    fire_count: jax.Array
    l0: jax.Array
    buffers: Buffers


class Architecture(Protocol):
    """Module-level functions every `jaxsae/sae/<name>.py` defines. All act on ONE member (no E axis);
    the trainer vmaps them over members. Inside shard_map, params hold the local latent slice.

    constrained_decoder: bool — keep decoder rows unit norm (grad parallel component removed, then renormed).
    hparam_defaults: dict[str, float] — the per-member hyperparameters this architecture reads from `hp`.
    init(key, cfg, b_dec) -> Params                 (global shapes; b_dec: [d] initial decoder bias)
    init_buffers(cfg) -> Buffers                     (global shapes; "rows_since_fired" is added by the trainer)
    loss(params, buffers, x, hp, cfg, axes, step, with_aux) -> (loss, LossOut)
    encode(params, buffers, x, hp, cfg, axes) -> [B, n_local] latents (inference)
    decode(params, latents, cfg, axes) -> [B, d]
    Optional: max_active_per_row(cfg) -> int — a bound on the non-zero inference latents of any row (TopK: k);
    architectures without one (threshold-based) leave it out and sparse encoding measures each chunk.
    """

    constrained_decoder: bool
    hparam_defaults: dict[str, float]

    def init(self, key: jax.Array, cfg: SAEConfig, b_dec: jax.Array) -> Params: ...
    def init_buffers(self, cfg: SAEConfig) -> Buffers: ...
    def loss(self, params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes,
             step: jax.Array, with_aux: bool) -> tuple[jax.Array, LossOut]: ...
    def encode(self, params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig,
               axes: Axes) -> jax.Array: ...
    def decode(self, params: Params, latents: jax.Array, cfg: SAEConfig, axes: Axes) -> jax.Array: ...


def hparam_is_int(arch: Any, name: str) -> bool:
    """Integer hyperparameters (k, warmup steps) are those whose architecture default is an int."""
    default = arch.hparam_defaults.get(name)
    return isinstance(default, int) and not isinstance(default, bool)


def hparams_as_arrays(arch: Any, values: dict[str, Any], xp: Any) -> dict[str, Any]:
    """`values` (scalars or [E] lists) as arrays of `xp` (numpy or jax.numpy): int32 or float32 per name."""
    return {k: xp.asarray(v, xp.int32 if hparam_is_int(arch, k) else xp.float32) for k, v in values.items()}


def get(name: str) -> Any:
    """The architecture module for `name`."""
    import importlib

    if name not in ARCHITECTURES:
        raise ConfigError(f"sae.architecture: unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return importlib.import_module(f"jaxsae.sae.{name}")
