"""The architecture contract: static config, the typed bundle every architecture's constructor returns, its
hyperparameter validation, and the registry (`get`, `register`) that finds architectures by name.

An architecture is one module `jaxsae/sae/<name>.py` exporting ONE constructor named `<name>` (its
`__all__ == ["<name>"]`, which is how `builtin_names` tells architectures from helper modules):
`<name>(cfg: SAEConfig) -> Architecture` (optax-style: it closes over the static config and returns pure
functions plus the metadata everything else derives from). Architectures defined elsewhere are added with
`register(name, constructor)`; the trainer, the saved dictionaries and `jaxsae.load` then work with them unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import typing
from typing import Any, Annotated, Callable, Literal, Mapping, NamedTuple

import jax

from jaxsae.errors import ConfigError
from jaxsae.validation import checks_deferred

Params = dict[str, jax.Array]
Buffers = dict[str, jax.Array]
HParams = Any  # an architecture's hyperparameter NamedTuple (scalars for one member, [E] arrays for a stack)
Layout = Mapping[str, int | None]  # leaf name -> the axis (of one member's leaf) that indexes latents, or None


class Axes(NamedTuple):
    """Mesh axis names the math runs under (inside `shard_map`); None means that axis is not split.

    data:   the batch axis is split across this mesh axis (means over rows need a psum).
    latent: the dictionary axis (n_latents) is split across this mesh axis; params hold a local slice.
    """

    data: str | None = None
    latent: str | None = None


class Range(NamedTuple):
    """The allowed values of one hyperparameter (metadata of its `Annotated` field): low <= value <= high.
    `high` may name an `SAEConfig` field whose value is the bound (e.g. "k": a member's k <= sae.k)."""

    low: float | None = None
    high: float | str | None = None


class LossContext(NamedTuple):
    """What a training loss needs besides params, buffers, rows and hyperparameters (one member).

    axes:     mesh axes the loss runs under.
    step:     [] int32 optimizer steps taken (penalty warmups).
    with_aux: AuxK architectures: compute the AuxK term (static; the trainer switches it on while latents are
              dead). Others ignore it.
    dead:     [n_local] bool latents that have not fired for `sae.dead_after_rows` rows (AuxK's candidates).
    """

    axes: Axes
    step: jax.Array
    with_aux: bool
    dead: jax.Array


class LossOut(NamedTuple):
    """What an architecture's `loss` returns next to the scalar loss (per member, local latent shard).

    terms:        named scalar loss terms (already weighted as they enter the loss), keys exactly the
                  architecture's `loss_terms` (a term that is off this step is 0).
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


class Architecture(NamedTuple):
    """One architecture for one static `SAEConfig`: pure functions on ONE member (no E axis; the trainer vmaps
    them) plus the metadata the trainer, the mesh, the saved dictionaries and sparse encoding derive from.
    Inside shard_map, params hold the local latent slice.

    init(key, b_dec [d]) -> Params                      global shapes; W_dec [n, d] rows are the dictionary
    init_buffers() -> Buffers                           global shapes; non-trained state kept with the weights
    encode(params, buffers, x [B, d], hp, axes) -> [B, n_local] inference latents, NON-NEGATIVE (see below)
    decode(params, latents [B, n_local], axes) -> [B, d]
    loss(params, buffers, x [B, d], hp, ctx: LossContext) -> (loss [], LossOut)
    fold_input_scale(params, scale) -> params           params trained on x_n = scale * x -> params for raw x
                                                        (any leading member axes; scale scalar or [E])
    hparams:          the hyperparameter NamedTuple class: fields with defaults, `Annotated[int | float, Range]`
    default_hparams:  an instance with this config's defaults (e.g. k = sae.k)
    param_layout / buffer_layout: every parameter / buffer name -> its latent axis (per member) or None
    uses_auxk:        the trainer computes AuxK (ctx.with_aux) while any latent is dead
    decoder_constraint: "unit_norm_rows" (W_dec rows kept on the unit sphere) or "none"
    max_active_per_row: a bound on a row's non-zero inference latents (TopK: k), None if threshold-based
    loss_terms:       the names of LossOut.terms
    Guarantee relied on by `jaxsae.codes`: inference latents are >= 0 (every built-in ends in a ReLU);
    `nonnegative_latents=False` makes sparse encoding refuse the architecture instead of dropping values.
    portable:         (params, buffers, hp) of one member, numpy, folded -> its inference as a
                      `jaxsae.sae.portable.PortableForm` (what export to SAELens/sparsify and `to_torch` use);
                      None: the architecture cannot leave jaxsae
    """

    name: str
    init: Callable[..., Params]
    init_buffers: Callable[[], Buffers]
    encode: Callable[..., jax.Array]
    decode: Callable[..., jax.Array]
    loss: Callable[..., tuple[jax.Array, LossOut]]
    fold_input_scale: Callable[..., Params]
    hparams: type
    default_hparams: Any
    param_layout: Layout
    buffer_layout: Layout
    uses_auxk: bool
    decoder_constraint: Literal["unit_norm_rows", "none"]
    max_active_per_row: int | None
    loss_terms: tuple[str, ...]
    nonnegative_latents: bool = True
    portable: Callable[[dict, dict, Any], Any] | None = None


Constructor = Callable[["SAEConfig"], Architecture]
COMPUTE_DTYPES = ("float32", "bfloat16")  # sae.compute_dtype: the training matmuls' input dtype
_REGISTERED: dict[str, Constructor] = {}


def builtin_names() -> tuple[str, ...]:
    """The architectures shipped in this package: modules of jaxsae.sae defining a constructor of their name."""
    import jaxsae.sae as package

    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and _builtin(info.name) is not None:
            names.append(info.name)
    return tuple(sorted(names))


def _builtin(name: str) -> Constructor | None:
    if not name.isidentifier() or name.startswith("_"):
        return None
    try:
        module = importlib.import_module(f"jaxsae.sae.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"jaxsae.sae.{name}":
            return None
        raise
    constructor = getattr(module, name, None)
    return constructor if callable(constructor) and getattr(module, "__all__", None) == [name] else None


def known_names() -> tuple[str, ...]:
    return tuple(sorted(set(builtin_names()) | set(_REGISTERED)))


def get(name: str) -> Constructor:
    """The constructor of architecture `name`: registered ones first, then `jaxsae.sae.<name>.<name>`."""
    constructor = _REGISTERED.get(name) or _builtin(name)
    if constructor is None:
        raise ConfigError(
            f"sae.architecture: unknown architecture {name!r}; choose one of {', '.join(known_names())} "
            f"(or register one with jaxsae.sae.register)"
        )
    return constructor


def register(name: str, constructor: Constructor) -> None:
    """Make `constructor(cfg) -> Architecture` available as `sae.architecture=name` (to training, saving and
    `jaxsae.load` in this process). Built-in names cannot be replaced; registering a name again replaces it."""
    if not name.isidentifier():
        raise ConfigError(f"register: architecture names are identifiers, got {name!r}")
    if _builtin(name) is not None:
        raise ConfigError(f"register: {name!r} is a built-in architecture; choose another name")
    _REGISTERED[name] = constructor


def build(cfg: SAEConfig) -> Architecture:
    """The architecture bundle for `cfg` (validates the architecture-specific settings)."""
    return get(cfg.architecture)(cfg)


def hparam_fields(cls: type) -> dict[str, tuple[type, Range]]:
    """{field: (int or float, Range)} of a hyperparameter NamedTuple class, from its annotations."""
    fields = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        bounds = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)), Range())
        if base not in (int, float):
            raise TypeError(f"{cls.__name__}.{name}: hyperparameters are int or float, got {base}")
        fields[name] = (base, bounds)
    return fields


def check_hparams(arch: Architecture, cfg: SAEConfig, values: Mapping[str, Any], where: str,
                  also_allowed: tuple[str, ...] = ()) -> Any:
    """`arch.default_hparams` with `values` applied, each checked: a known field, an integer where the field is
    int, within its Range. `where` prefixes messages ("hparams" or "members[2]"); `also_allowed` names the
    caller's own settings valid in the same place (a member's lr and seed), for the message."""
    fields = hparam_fields(arch.hparams)
    out = {}
    for key, value in values.items():
        if key not in fields:
            allowed = sorted({*fields, *also_allowed})
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {where}.{close[0]}? " if close else ""
            raise ConfigError(f"{where}.{key}: not a hyperparameter of {arch.name}; {hint}"
                              f"allowed: {', '.join(allowed)}")
        kind, bounds = fields[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and not float(value).is_integer()):
            raise ConfigError(f"{where}.{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        high = getattr(cfg, bounds.high) if isinstance(bounds.high, str) else bounds.high
        if (bounds.low is not None and value < bounds.low) or (high is not None and value > high):
            shown = f"[{bounds.low if bounds.low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            why = f" (sae.{bounds.high}; raise it)" if isinstance(bounds.high, str) else ""
            raise ConfigError(f"{where}.{key}: must be in {shown}{why}, got {value}")
        out[key] = kind(value)
    return arch.default_hparams._replace(**out)


def hparams_as_arrays(arch: Architecture, rows: list, xp: Any) -> Any:
    """E hyperparameter NamedTuples -> one NamedTuple of [E] arrays of `xp` (numpy or jax.numpy), int32 or
    float32 per field as annotated."""
    fields = hparam_fields(arch.hparams)
    return arch.hparams(**{name: xp.asarray([getattr(r, name) for r in rows],
                                            xp.int32 if kind is int else xp.float32)
                           for name, (kind, _) in fields.items()})


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static (shape-determining) settings of one pack of SAE members; identical across the members."""

    architecture: str = "topk"
    """A built-in (`jaxsae.sae.builtin_names()`) or registered architecture."""
    d_model: int = 512
    """Width of the input activations."""
    n_latents: int = 4096
    """Dictionary size (global, unsharded)."""
    k: int = 32
    """Top-k family: the largest k of any member (members with smaller k are masked)."""
    k_aux: int | None = None
    """AuxK: how many dead latents reconstruct the residual; default d_model // 2."""
    dead_after_rows: int = 10_000_000
    """A latent that has not fired in this many rows is dead (AuxK, dead fraction)."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested dictionary sizes, ascending, the last one == n_latents; default: 5 doubling prefixes ending at
    n_latents."""
    batchtopk_row_cap: int = 4
    """BatchTopK selects from each row's top (row_cap * k) candidates; exact unless one row holds more than
    that many of the batch's top B*k activations."""
    jumprelu_penalty: str = "l0"
    """"l0" (step-function L0, Rajamanoharan et al. 2024) or "tanh" (Anthropic, Feb 2025)."""
    jumprelu_ste_to_input: bool = False
    """Let the L0 penalty's straight-through gradient reach the pre-activations too."""
    jumprelu_threshold_init: float = 0.001
    """Initial value of every JumpReLU threshold (Rajamanoharan et al. 2024: 0.001)."""
    decoder_init_norm: float | None = None
    """Norm of the initial decoder rows (relu: Anthropic April 2024 uses 0.1; others 1)."""
    encoder_init_norm: float | None = None
    """Norm of the initial encoder columns, W_enc = W_dec^T rescaled (topk, batchtopk, matryoshka: 1/sqrt(3) ~ 0.577,
    a row of PyTorch's default Linear init, as OpenAI's TopK code and EleutherAI's sparsify start; others: the
    decoder rows' norm)."""
    sparse_decode: bool = True
    """Top-k family: decode and the encoder weight gradient touch only the k selected latents."""
    compute_dtype: str = "float32"
    """"float32" or "bfloat16": the training loss's matmuls (encoder, decoder, sparse decode) take inputs in this
    dtype and accumulate in float32; parameters, optimizer state and inference stay float32."""
    selection: str = "exact"
    """Top-k family, training: "exact" (`lax.top_k`) or "approx" (`lax.approx_max_k` at `approx_recall`: faster
    on TPU; elsewhere XLA runs it as the exact top-k)."""
    approx_recall: float = 0.95
    """selection="approx": the expected fraction of the true top-k that approx_max_k returns, in (0, 1]."""

    def __post_init__(self):
        if checks_deferred():
            return
        if self.d_model < 1:
            raise ConfigError(f"sae.d_model: must be >= 1, got {self.d_model}")
        if self.n_latents < 1:
            raise ConfigError(f"sae.n_latents: must be >= 1, got {self.n_latents}")
        if self.dead_after_rows < 1:
            raise ConfigError(f"sae.dead_after_rows: must be >= 1, got {self.dead_after_rows}")
        if self.jumprelu_penalty not in ("l0", "tanh"):
            raise ConfigError(f"sae.jumprelu_penalty: must be 'l0' or 'tanh', got {self.jumprelu_penalty!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"sae.compute_dtype: must be one of {', '.join(map(repr, COMPUTE_DTYPES))}, "
                              f"got {self.compute_dtype!r}")
        if self.selection not in ("exact", "approx"):
            raise ConfigError(f"sae.selection: must be 'exact' or 'approx', got {self.selection!r}")
        if not 0.0 < self.approx_recall <= 1.0:
            raise ConfigError(f"sae.approx_recall: must be in (0, 1], got {self.approx_recall}")
        if self.batchtopk_row_cap < 1:
            raise ConfigError(f"sae.batchtopk_row_cap: must be >= 1, got {self.batchtopk_row_cap}")
        for name in ("decoder_init_norm", "encoder_init_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"sae.{name}: must be > 0 or unset, got {getattr(self, name)}")
        build(self)  # an unknown architecture, or settings it refuses (e.g. k > n_latents), fail here

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


def check_k(cfg: SAEConfig) -> None:
    """The top-k family's static check: 1 <= sae.k <= n_latents."""
    if not 1 <= cfg.k <= cfg.n_latents:
        raise ConfigError(
            f"sae.k: must be between 1 and n_latents={cfg.n_latents}, got {cfg.k}; lower k or raise n_latents"
        )
