"""The training configuration's schema: typed, validated, frozen dataclasses (read by `config_files`)."""

from __future__ import annotations

import dataclasses
import os

from jaxsae.sae import base as sae_base
from jaxsae.errors import ConfigError
from jaxsae.sae.base import SAEConfig
from jaxsae.validation import checks_deferred

SCHEMA_VERSION = 1
"""Version of the run-folder files (config.json, run.json) this jaxsae writes and reads."""

Hparams = dict[str, int | float]
"""Architecture hyperparameters by name (the fields of its `hparams` NamedTuple)."""
Members = tuple[dict[str, int | float], ...]
"""One table per member: `lr`, `seed` and hyperparameters that differ from `hparams`."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training stream."""

    store: str = ""
    """Activation store to train on (required; made absolute, so a saved config.json works from anywhere): a store
    folder, a dataset folder written by `extract --worker` (all its parts, read as one store), or several store
    folders separated by commas, read one after the other."""
    batch_rows: int = 4096
    """Rows per global batch (all devices together)."""
    window_blocks: int = 64
    """Store blocks shuffled together in RAM; more = better mixing, more memory."""
    streams: int = 1
    """Independent sub-streams; multi-host runs need it divisible by the process count."""
    prefetch: int = 2
    """Batches assembled ahead of the step."""
    seed: int = 0
    """Seed of the data order (independent of the parameter seeds)."""
    normalise: bool = True
    """Scale inputs to unit mean squared norm (from the store's statistics; folded into the saved dictionary)."""
    allow_incomplete: bool = False
    """Train on a store whose extraction has not finished (refused by default)."""

    def __post_init__(self):
        if self.store:  # unset is allowed here (a section of defaults); TrainConfig refuses a run without one
            object.__setattr__(self, "store", ",".join(os.path.abspath(p) for p in self.store.split(",") if p))
        if checks_deferred():
            return
        _positive(self, "batch_rows", "window_blocks", "streams", "prefetch")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with linear warmup and a linear decay to zero over the last `decay_fraction` of training."""

    lr: float = 4e-4
    """Peak learning rate (members may override it)."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-8
    """Adam's epsilon."""
    warmup_steps: int = 100
    """Linear warmup from 0."""
    decay_fraction: float = 0.2
    """Fraction of training at the end over which the rate decays linearly to 0."""
    grad_clip: float | None = None
    """Clip each member's global gradient norm to this (None: no clipping)."""

    def __post_init__(self):
        if checks_deferred():
            return
        if not self.lr > 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ConfigError(f"optim.beta1/beta2: must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction: must be in [0, 1], got {self.decay_fraction}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or unset, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape: data x ens x latent devices."""

    data: int = 0
    """Devices the batch is split over; 0: the rest, devices / (ens * latent)."""
    ens: int = 1
    """Devices the members are split over."""
    latent: int = 1
    """Devices the dictionary (its latents) is split over."""

    def __post_init__(self):
        if checks_deferred():
            return
        if self.data < 0 or self.ens < 1 or self.latent < 1:
            raise ConfigError(f"mesh: data >= 0, ens >= 1, latent >= 1 required, got {self}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process (multi-host) setup; see `jaxsae.train.distributed`. Unset fields fall back to the
    environment (JAXSAE_COORDINATOR, JAXSAE_NUM_PROCESSES, JAXSAE_PROCESS_ID), then to cluster auto-detection."""

    mode: str = "auto"
    """"auto": initialise when a coordinator is given or a multi-process cluster (SLURM with several tasks,
    Open MPI, multi-host TPU/GKE) is detected; "on": always call `jax.distributed.initialize()` (e.g. on a
    Cloud TPU pod slice); "off": never."""
    coordinator: str = ""
    """"host:port" of process 0's coordination service."""
    num_processes: int = 0
    """Processes in the job (0: from the environment)."""
    process_id: int = -1
    """This process's index (-1: from the environment)."""

    def __post_init__(self):
        if checks_deferred():
            return
        if self.mode not in ("auto", "on", "off"):
            raise ConfigError(f"distributed.mode: must be 'auto', 'on' or 'off', got {self.mode!r}")
        if self.num_processes < 0:
            raise ConfigError(f"distributed.num_processes: must be >= 0, got {self.num_processes}")
        if self.process_id < -1 or (self.num_processes and self.process_id >= self.num_processes):
            raise ConfigError(f"distributed.process_id: must be in [0, num_processes), got {self.process_id}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: E members of one architecture trained together (E = len(members))."""

    run_dir: str = "runs/default"
    """Output folder (metrics, checkpoints, dictionaries); made absolute against the working directory."""
    sae: SAEConfig = dataclasses.field(default_factory=SAEConfig)
    """Static dictionary shape and architecture."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    hparams: Hparams = dataclasses.field(default_factory=dict)
    """Hyperparameters of every member: the fields of the architecture's `hparams` NamedTuple (e.g. k,
    aux_coeff, l1_coeff, bandwidth); those not given take the architecture's defaults."""
    members: Members = ({},)
    """One table per member overriding `lr`, `seed` or any hparam, e.g. [{"k": 16}, {"k": 32}]; default: one
    member."""
    steps: int | None = None
    """Optimizer steps (set this or total_rows)."""
    total_rows: int | None = None
    """Rows to train on: steps = total_rows // data.batch_rows."""
    seed: int = 0
    """Parameter seed (members get seed + their own seed)."""
    log_every: int = 50
    """Steps between metric read-backs."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    tensorboard: bool = False
    """Also write TensorBoard event files."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        object.__setattr__(self, "run_dir", os.path.abspath(self.run_dir))
        if checks_deferred():
            return
        if not self.data.store:
            raise ConfigError("data.store: no activation store given; pass --data.store PATH (see `jaxsae synth`)")
        if (self.steps is None) == (self.total_rows is None):
            raise ConfigError("steps / total_rows: set exactly one of them (e.g. --steps 2000)")
        if self.num_steps < 1:
            raise ConfigError(f"steps: training needs at least 1 step, got {self.num_steps}")
        _positive(self, "log_every", "keep_checkpoints")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        if not self.members:
            raise ConfigError("members: at least one member is needed (use [{}] for one default member)")
        arch = sae_base.build(self.sae)
        sae_base.check_hparams(arch, self.sae, self.hparams, "hparams")
        for i, member in enumerate(self.members):
            for key in ("lr", "seed"):
                if key in member and (isinstance(member[key], bool) or not isinstance(member[key], (int, float))):
                    raise ConfigError(f"members[{i}].{key}: expected a number, got {member[key]!r}")
            if "lr" in member and not member["lr"] > 0:
                raise ConfigError(f"members[{i}].lr: must be > 0, got {member['lr']}")
            if "seed" in member and (not float(member["seed"]).is_integer() or member["seed"] < 0):
                raise ConfigError(f"members[{i}].seed: must be an integer >= 0, got {member['seed']}")
            sae_base.check_hparams(arch, self.sae, self.member_arch_hparams(i), f"members[{i}]",
                                   also_allowed=("lr", "seed"))

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else self.total_rows // self.data.batch_rows

    def member_arch_hparams(self, i: int) -> dict[str, float]:
        """Member i's architecture hyperparameters that differ from the architecture's defaults: hparams <
        members[i] (lr and seed left out); `sae_base.check_hparams` applies and checks them."""
        return {**self.hparams, **{k: v for k, v in self.members[i].items() if k not in ("lr", "seed")}}

    def member_hparams(self, i: int) -> dict[str, float]:
        """Member i's full hyperparameters: architecture defaults < hparams < members[i] (plus lr, seed)."""
        arch = sae_base.build(self.sae)
        hp = sae_base.check_hparams(arch, self.sae, self.member_arch_hparams(i), f"members[{i}]")._asdict()
        return {**hp, "lr": self.members[i].get("lr", self.optim.lr), "seed": self.members[i].get("seed", 0)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(obj, *names: str) -> None:
    prefix = {DataConfig: "data.", TrainConfig: ""}.get(type(obj), "")
    for name in names:
        if getattr(obj, name) < 1:
            raise ConfigError(f"{prefix}{name}: must be >= 1, got {getattr(obj, name)}")
