"""Where a sweep's packs run: the backends of `jaxsae sweep launch` and their options (light: the CLI builds
its flags from these without importing JAX)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxsae.errors import ConfigError
from jaxsae.validation import checks_deferred

Backend = Literal["local", "slurm", "tpu-pod"]


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """How each pack's array task is allocated (`--backend slurm`)."""

    partition: str | None = None
    """Partition (sbatch --partition); default: the cluster's default one."""
    time: str | None = None
    """Time limit of one pack (sbatch --time), e.g. 04:00:00."""
    tasks_per_pack: int = 1
    """Processes per pack (sbatch --ntasks, started with srun; jax.distributed detects them)."""
    nodes: int | None = None
    """Nodes per pack (sbatch --nodes); default: as SLURM places the tasks."""
    gpus_per_task: int = 0
    """GPUs per process (sbatch --gpus-per-task); 0: CPU only."""
    cpus_per_task: int | None = None
    """CPU cores per process (sbatch --cpus-per-task)."""
    max_running: int = 0
    """Most packs running at once (the array's %N limit); 0: as many as the cluster allows."""
    sbatch: tuple[str, ...] = ()
    """Further sbatch options, one #SBATCH line each, written NAME=VALUE: account=bio mem=64G."""

    def __post_init__(self):
        if checks_deferred():
            return
        for name in ("tasks_per_pack", "gpus_per_task", "max_running"):
            if getattr(self, name) < (1 if name == "tasks_per_pack" else 0):
                raise ConfigError(f"slurm.{name}={getattr(self, name)}: expected an integer >= "
                                  f"{1 if name == 'tasks_per_pack' else 0}")

    @property
    def devices_per_pack(self) -> int:
        return self.tasks_per_pack * max(self.gpus_per_task, 1)


@dataclasses.dataclass(frozen=True)
class TpuOptions:
    """The TPU VM pod the packs run on (`--backend tpu-pod`)."""

    name: str | None = None
    """The TPU VM's name (gcloud compute tpus tpu-vm create NAME)."""
    zone: str | None = None
    """Its zone, e.g. us-east5-a."""
    devices: int = 0
    """JAX devices of the pod: chips on v4/v5p (a v5p-64 has 32), on v5e/v6e the number in the name."""
    hosts: int = 0
    """Worker VMs of the pod (processes of each pack); 0: devices / 4 (4 chips per worker)."""
    project: str | None = None
    """Google Cloud project (default: gcloud's configured one)."""
