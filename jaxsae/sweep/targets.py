"""Where a sweep's packs run: the backends of `jaxsae sweep launch` and their options (light: the CLI builds
its flags from these without importing JAX)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxsae.errors import ConfigError
from jaxsae.slurm import SlurmJob
from jaxsae.validation import checks_deferred

Backend = Literal["local", "slurm", "tpu-pod"]


@dataclasses.dataclass(frozen=True)
class SlurmOptions(SlurmJob):
    """How each pack's array task is allocated (`--backend slurm`): jaxsae.slurm.SlurmJob plus the processes of
    a pack."""

    tasks_per_pack: int = 1
    """Processes per pack (sbatch --ntasks, started with srun; jax.distributed detects them)."""
    nodes: int | None = None
    """Nodes per pack (sbatch --nodes); default: as SLURM places the tasks."""

    def __post_init__(self):
        super().__post_init__()
        if not checks_deferred() and self.tasks_per_pack < 1:
            raise ConfigError(f"slurm.tasks_per_pack={self.tasks_per_pack}: expected an integer >= 1")

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
