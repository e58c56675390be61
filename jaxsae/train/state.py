"""The train state pytree (typed), where each of its arrays lives on the mesh, its sharded initialisation,
and the per-member settings the step reads."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxsae.sae.base import (Architecture, ConfigError, SAEConfig, build, check_hparams, hparam_fields,
                              hparams_as_arrays)
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import TrainConfig
from jaxsae.train.metrics import Accumulators


@flax.struct.dataclass
class MemberBuffers:
    """Non-trained per-member state, each [E, ...].

    rows_since_fired: [E, n] int32 rows since each latent last fired (capped at sae.dead_after_rows): the
                      trainer's dead-latent counter (AuxK, dead fraction).
    arch:             the architecture's own buffers (`Architecture.init_buffers`, e.g. BatchTopK's threshold).
    """

    rows_since_fired: jax.Array
    arch: dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; every leaf but `step`/`scale` has a leading member axis E.

    step:      [] int32 optimizer steps taken.
    params:    architecture parameters, [E, ...].
    opt_state: the optimizer chain's state (`jaxsae.train.optim`), [E, ...].
    buffers:   MemberBuffers.
    scale:     [] float32 input normalisation (x_normalised = scale * x).
    acc:       metric sums since the last read-back.
    first_nonfinite_step: [] int32 the step whose loss or gradients were not finite (-1: none); from then on
               the state is frozen.
    """

    step: jax.Array
    params: dict[str, jax.Array]
    opt_state: optax.OptState
    buffers: MemberBuffers
    scale: jax.Array
    acc: Accumulators
    first_nonfinite_step: jax.Array


class MemberSettings(NamedTuple):
    """Per-member inputs of the step: hp, the architecture's hyperparameter NamedTuple of [E] arrays (int32 or
    float32 as annotated); lr: [E] float32 peak learning rates."""

    hp: Any
    lr: Any


def member_settings(cfg: TrainConfig, arch: Architecture) -> MemberSettings:
    """Every member's hyperparameters and learning rate as [E] numpy arrays."""
    rows = [check_hparams(arch, cfg.sae, cfg.member_arch_hparams(i), f"members[{i}]") for i in range(cfg.n_members)]
    lr = np.asarray([cfg.member_hparams(i)["lr"] for i in range(cfg.n_members)], np.float32)
    return MemberSettings(hparams_as_arrays(arch, rows, np), lr)


class MemberGroup(NamedTuple):
    """Members [start, stop) of every device's block of the member axis (the [E / ens] members it holds), whose
    loss runs as one vmap of `arch`: the pack's architecture rebuilt at the group's k (its static slot count)."""

    arch: Architecture
    start: int
    stop: int


def member_sae(sae: SAEConfig, k: int) -> SAEConfig:
    """The pack's static config with k slots (a member's own k); the Matryoshka prefixes, which default from k,
    stay the pack's."""
    out = dataclasses.replace(sae, k=k)
    return out if out.prefixes == sae.prefixes else dataclasses.replace(out, matryoshka_prefixes=sae.prefixes)


def slot_k(arch: Architecture) -> bool:
    """Whether the architecture's hp.k counts top-k slots bounded by sae.k (then a member runs at its own k)."""
    field = hparam_fields(arch.hparams).get("k")
    return field is not None and field[1].high == "k"


def member_groups(cfg: TrainConfig, arch: Architecture, ens: int) -> tuple[MemberGroup, ...]:
    """The groups the step runs a pack's members in, one after another: runs of equal k over each device's
    block of E / ens members. The step is one program for every device, so block position j runs at the
    largest k any device holds there (members with a smaller k masked, as before); members ordered by k
    (`jaxsae.sweep.plan` orders them so) run at their own k. One group, `arch` itself, when every member has
    the pack's k or the architecture has no slot count."""
    local = cfg.n_members // ens
    if not slot_k(arch):
        return (MemberGroup(arch, 0, local),)
    ks = member_settings(cfg, arch).hp.k.reshape(ens, local).max(axis=0)
    groups, start = [], 0
    for k, run in itertools.groupby(ks.tolist()):
        stop = start + len(list(run))
        groups.append(MemberGroup(arch if k == cfg.sae.k else build(member_sae(cfg.sae, k)), start, stop))
        start = stop
    return tuple(groups)


def member_seeds(cfg: TrainConfig) -> np.ndarray:
    """[E] uint32 parameter seeds: cfg.seed + each member's seed."""
    return np.asarray([cfg.seed + cfg.member_hparams(i)["seed"] for i in range(cfg.n_members)], np.uint32)


def _check_layout(arch: Architecture, params: dict, buffers: dict) -> None:
    for kind, tree, layout in (("param", params, arch.param_layout), ("buffer", buffers, arch.buffer_layout)):
        if set(tree) != set(layout):
            raise ConfigError(f"architecture {arch.name}: its {kind}s are {sorted(tree)} but its {kind}_layout "
                              f"names {sorted(layout)}; give every {kind} its latent axis (or None)")


def state_specs(state: TrainState, arch: Architecture, tx: optax.GradientTransformation) -> TrainState:
    """PartitionSpecs of every leaf of a (possibly abstract) state, from the architecture's layout: optimizer
    leaves that mirror a parameter (Adam's moments) take that parameter's spec, other optimizer leaves ([E]
    counts) are split over members only."""
    param_specs = mesh_lib.layout_specs(state.params, arch.param_layout)
    opt_specs = optax.tree_utils.tree_map_params(
        tx, lambda _, spec: spec, state.opt_state, param_specs,
        transform_non_params=lambda leaf: mesh_lib.member_spec(None, len(leaf.shape)) if leaf.shape else P(),
        is_leaf=lambda x: isinstance(x, P))
    return TrainState(
        step=P(), params=param_specs, opt_state=opt_specs,
        buffers=MemberBuffers(rows_since_fired=P("ens", "latent"),
                              arch=mesh_lib.layout_specs(state.buffers.arch, arch.buffer_layout)),
        scale=P(), acc=state.acc.specs(), first_nonfinite_step=P(),
    )


def init_state(arch: Architecture, tx: optax.GradientTransformation, mesh: Mesh, seeds: np.ndarray,
               b_dec: np.ndarray, scale: float) -> TrainState:
    """A fresh, sharded train state of E = len(seeds) members. seeds: [E] uint32 parameter seeds; b_dec: [d]
    initial decoder bias (normalised units); scale: input scale.

    Parameters are created inside `jit` with sharded outputs, so a dictionary too large for one device (or
    host) is only ever materialised in slices.
    """
    e = len(seeds)

    def build(seeds, b_dec, scale):
        params = jax.vmap(lambda s: arch.init(jax.random.key(s), b_dec))(seeds)
        member_buffers = arch.init_buffers()
        n_latents = params["W_dec"].shape[1]
        buffers = MemberBuffers(rows_since_fired=jnp.zeros((e, n_latents), jnp.int32),
                                arch=jax.tree.map(lambda x: jnp.broadcast_to(x, (e,) + x.shape), member_buffers))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.vmap(tx.init)(params),
                          buffers=buffers, scale=jnp.asarray(scale, jnp.float32),
                          acc=Accumulators.zeros(e, n_latents, arch.loss_terms),
                          first_nonfinite_step=jnp.full((), -1, jnp.int32))

    args = (np.asarray(seeds, np.uint32), jnp.asarray(b_dec, jnp.float32), np.float32(scale))
    abstract = jax.eval_shape(build, *args)
    _check_layout(arch, abstract.params, abstract.buffers.arch)
    out_shardings = mesh_lib.shardings(mesh, state_specs(abstract, arch, tx))
    return jax.jit(build, out_shardings=out_shardings)(*args)
