"""Packing a sweep: members that share everything but their learning rate, seed and hyperparameters train
together as one vmapped run (a "pack"); pack sizes come from an estimate of one member's memory.

What can differ inside a pack is what the trainer vmaps over (`TrainConfig.members`): `optim.lr`, `seed`
and `hparams.*`. Any other axis (architecture, width, store, data order, steps, ...) makes separate packs.
A top-k pack's `sae.k` is its largest member k; its members are ordered by k (`_by_k`), so the step runs
each group of equal k at that k (`jaxsae.train.state.member_groups`), and spread over the mesh's `ens` axis
when there are several devices (`_spread`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp

from jaxsae.errors import ConfigError
from jaxsae.sae.base import SAEConfig, build, check_hparams, hparam_fields
from jaxsae.sweep.spec import Member, SweepSpec, set_dotted
from jaxsae.train.config import TrainConfig
from jaxsae.train.config_files import build_dataclass, make_config
from jaxsae.train.loop import validate

MEMBER_LEVEL = {"optim.lr": "lr", "seed": "seed"}
"""Axes a pack's members may differ in (besides `hparams.*`), and their name in a member's table."""
MEMORY_FRACTION = 0.7
"""Share of a device's memory (of the host's, on CPU) a pack may plan to use."""


@dataclasses.dataclass(frozen=True)
class Pack:
    """One vmapped run: its settings (nested, without run_dir) and members (`settings["members"]` in order)."""

    name: str
    settings: dict
    members: tuple[Member, ...]
    bytes_per_member: int

    def config(self, run_dir: str) -> TrainConfig:
        return make_config({**self.settings, "run_dir": run_dir})


@dataclasses.dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    packs: tuple[Pack, ...]
    budget_bytes: int
    devices: str

    @property
    def n_members(self) -> int:
        return sum(len(p.members) for p in self.packs)

    def lines(self) -> list[str]:
        """The plan as `jaxsae sweep plan` prints it."""
        out = [f"sweep {self.spec.name}: {self.n_members} members in {len(self.packs)} pack(s); memory budget "
               f"{_size(self.budget_bytes)} per device ({self.devices})"]
        for pack in self.packs:
            sae, data = pack.settings.get("sae", {}), pack.settings.get("data", {})
            ens = pack.settings.get("mesh", {}).get("ens", 1)
            out.append(f"{pack.name}  {sae.get('architecture', 'topk')} d={sae.get('d_model')} "
                       f"n={sae.get('n_latents')} batch={data.get('batch_rows', 4096)}  {len(pack.members)} "
                       f"members  ~{_size(pack.bytes_per_member)} each, ~{_size(pack.bytes_per_member * len(pack.members))} "
                       f"together  members over {ens} device(s)  store {data.get('store')}")
            out.append("    " + "  ".join(m.name for m in pack.members))
        return out

    def to_json(self) -> dict:
        return {"name": self.spec.name, "spec": self.spec.path,
                "packs": [{"name": p.name, "settings": p.settings, "members": [m.name for m in p.members],
                           "member_settings": [m.settings for m in p.members],
                           "bytes_per_member": p.bytes_per_member} for p in self.packs]}


def plan_sweep(spec: SweepSpec, budget_bytes: int | None = None, n_devices: int | None = None) -> Plan:
    """Group the spec's members into packs; every pack's config is built and validated here, so a bad axis or
    value is refused before anything runs. budget_bytes: memory per device (default: measured); n_devices:
    the devices one pack runs on, when it runs elsewhere (a cluster's; default: this process's)."""
    budget, devices = (budget_bytes, "given") if budget_bytes else device_budget()
    if n_devices is not None:
        devices += f", {n_devices} device(s) per pack"
    groups: dict[str, tuple[dict, list[Member]]] = {}
    for member in spec.members():
        shared = {k: v for k, v in member.settings.items() if not _member_level(k)}
        settings = spec.base
        for key, value in shared.items():
            settings = set_dotted(settings, key, value)
        groups.setdefault(json.dumps(shared, sort_keys=True, default=str), (settings, []))[1].append(member)
    packs = []
    for settings, members in groups.values():
        cfg = _pack_settings(settings, members[:1], where=members[0].name).config("probe")
        try:
            validate(cfg, n_devices)  # the store exists, is complete and has the width; the mesh fits the devices
        except ConfigError as e:
            raise ConfigError(f"sweep member {members[0].name}: {e}") from None
        per_member = member_bytes(cfg)
        spread = cfg.mesh.ens * cfg.mesh.latent  # a pack's members and latents are divided over these devices
        fits = int(budget * spread // per_member)
        if fits < 1:
            raise ConfigError(f"sweep member {members[0].name}: needs ~{_size(per_member)}, more than the memory "
                              f"budget of {_size(budget * spread)} ({devices}); lower sae.n_latents or "
                              f"data.batch_rows, or split it over more devices (mesh.latent)")
        size = min(spec.max_pack, fits)
        for start in range(0, len(members), size):
            spread = _spread(settings, min(size, len(members) - start), n_devices or jax.device_count())
            chunk = _by_k(members[start:start + size], settings, spread.get("mesh", {}).get("ens", 1))
            pack = _pack_settings(spread, chunk, where=f"pack {len(packs)}")
            packs.append(dataclasses.replace(pack, name=f"pack{len(packs):03d}", bytes_per_member=per_member))
    if not packs:
        raise ConfigError("sweep: the spec has no members (an empty grid?)")
    return Plan(spec, tuple(packs), budget, devices)


def packs_from_json(plan: dict) -> tuple[Pack, ...]:
    """The packs of a recorded plan (`Plan.to_json()`, as sweep.json holds it), without planning again."""
    return tuple(Pack(p["name"], p["settings"], tuple(Member(name, settings) for name, settings
                                                      in zip(p["members"], p["member_settings"], strict=True)),
                      p["bytes_per_member"]) for p in plan["packs"])


def member_bytes(cfg: TrainConfig) -> int:
    """Estimated device memory of one member: its parameters four times over (the parameters, their
    gradients and Adam's two moments) plus four [batch, n_latents] float32 arrays (pre-activations, latents and
    their gradients), from the architecture's real parameter shapes (`jax.eval_shape` of its init). A per-row
    top-k with the sparse decode (topk) writes no [batch, n_latents] latents or gradients: two arrays (its scores,
    and AuxK's copy with live latents masked). XLA's account of a compiled 4-member step is 0.4-0.8 of it on CPU
    (tests/test_sweep.py checks it bounds XLA's within 4x)."""
    arch = build(cfg.sae)
    shapes = jax.eval_shape(lambda: arch.init(jax.random.key(0), jnp.zeros((cfg.sae.d_model,), jnp.float32)))
    n_params = sum(int(x.size) for x in jax.tree.leaves(shapes))
    wide = 2 if arch.max_active_per_row is not None and cfg.sae.sparse_decode else 4
    return 4 * (4 * n_params + wide * cfg.data.batch_rows * cfg.sae.n_latents)


def device_budget() -> tuple[int, str]:
    """(bytes a pack may use per device, what they are): MEMORY_FRACTION of an accelerator's memory, or of
    the host's memory shared by its CPU devices."""
    devices = jax.local_devices()
    stats = devices[0].memory_stats() or {}
    what = f"{devices[0].platform} x{len(devices)}"
    if "bytes_limit" in stats:
        return int(MEMORY_FRACTION * stats["bytes_limit"]), what
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(MEMORY_FRACTION * host / len(devices)), what


def _spread(settings: dict, n_members: int, n_devices: int) -> dict:
    """Members over the mesh's `ens` axis (independent members need no collectives between them): the
    largest divisor of the pack's device count (`n_devices`) that divides the pack, the rest on `data`. A spec
    that sets any `mesh` setting keeps its own mesh."""
    if "mesh" in settings:
        return settings
    ens = max(d for d in range(1, n_devices + 1) if n_devices % d == 0 and n_members % d == 0)
    return set_dotted(settings, "mesh.ens", ens)


def _by_k(members: list[Member], settings: dict, ens: int) -> list[Member]:
    """A pack's members in the order the step runs them at their own k: ascending k (stable), dealt over the
    `ens` devices so that each device's block position j holds the j-th `ens` members in that order, whose
    largest k position j runs at on every device (the step is one program for all of them)."""
    default_k = settings.get("hparams", {}).get("k", settings.get("sae", {}).get("k", 0))
    ordered = sorted(members, key=lambda m: m.settings.get("hparams.k", default_k))
    if len(members) % ens:  # a mesh the spec set that does not divide the pack (validation refuses it)
        return ordered
    local = len(members) // ens
    return [ordered[j * ens + b] for b in range(ens) for j in range(local)]


def _member_level(key: str) -> bool:
    return key in MEMBER_LEVEL or key.startswith("hparams.")


def _pack_settings(settings: dict, members: list[Member], where: str) -> Pack:
    tables = [{MEMBER_LEVEL.get(k, k.removeprefix("hparams.")): v for k, v in m.settings.items() if _member_level(k)}
              for m in members]
    settings = {**settings, "members": tables}
    try:
        sae = build_dataclass(SAEConfig, settings.get("sae", {}), "sae.")
        arch = build(sae)
        for member in members:  # named as the spec names them (hparams.k), before they become member tables
            check_hparams(arch, dataclasses.replace(sae, k=max(sae.k, member.settings.get("hparams.k", 0))),
                          {k.removeprefix("hparams."): v for k, v in member.settings.items()
                           if k.startswith("hparams.")}, "hparams")
        if "k" in hparam_fields(arch.hparams):  # the pack's k is its largest member k
            default_k = settings.get("hparams", {}).get("k", sae.k)
            settings = set_dotted(settings, "sae.k", max(t.get("k", default_k) for t in tables))
        pack = Pack("", settings, tuple(members), 0)
        pack.config("probe")
    except ConfigError as e:
        raise ConfigError(f"sweep {where}: {e}") from None
    return pack


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
