"""Multi-process start-up: `jax.distributed.initialize()` when the config or the environment asks for it.

Must run before anything touches a JAX backend (`jax.devices()`, creating an array, ...): `train()` calls it
first. Sources, first found wins, field by field:

  1. the config: distributed.coordinator / num_processes / process_id,
  2. the environment: JAXSAE_COORDINATOR ("host:port"), JAXSAE_NUM_PROCESSES, JAXSAE_PROCESS_ID,
  3. JAX's own cluster detection (SLURM, Open MPI, Cloud TPU / GKE, JAX_COORDINATOR_ADDRESS).

With distributed.mode="auto" (the default) a single plain process stays single-process; it initialises when a
coordinator is given or a multi-process cluster is detected. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os

import jax

from jaxsae.errors import ConfigError
from jaxsae.train.config import DistributedConfig

ENV_COORDINATOR = "JAXSAE_COORDINATOR"
ENV_NUM_PROCESSES = "JAXSAE_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSAE_PROCESS_ID"


def _env_int(environ, name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r}: expected an integer") from None


def cluster_detected(environ=os.environ) -> bool:
    """Does the environment describe a multi-process job JAX can initialise itself from?"""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if "OMPI_MCA_orte_hnp_uri" in environ:
        return True
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def resolve(cfg: DistributedConfig, environ=os.environ) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None to stay single-process."""
    if cfg.mode == "off":
        return None
    coordinator = cfg.coordinator or environ.get(ENV_COORDINATOR, "").strip()
    num_processes = cfg.num_processes or _env_int(environ, ENV_NUM_PROCESSES)
    process_id = cfg.process_id if cfg.process_id >= 0 else _env_int(environ, ENV_PROCESS_ID)
    if coordinator:
        if not num_processes or process_id is None:
            raise ConfigError(
                f"distributed.coordinator={coordinator!r} needs distributed.num_processes and distributed.process_id "
                f"(or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} in the environment)"
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"distributed.process_id={process_id} must be in [0, {num_processes})")
        return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    if cfg.mode == "on" or cluster_detected(environ):
        return {}  # JAX's cluster detection fills everything in
    return None


def initialize(cfg: DistributedConfig) -> bool:
    """Start the multi-process runtime if `cfg`/the environment ask for it; True if running multi-process.

    Idempotent: a second call (or a process that initialised JAX itself) changes nothing.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    kwargs = resolve(cfg)
    if kwargs is None:
        return False
    if _platforms_are_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "before" in str(e) and "backend" in str(e).lower():
            raise ConfigError(
                "distributed: jax.distributed.initialize() must run before any JAX computation; call "
                "jaxsae.train.distributed.initialize(cfg.distributed) at the start of your program"
            ) from e
        raise
    return jax.process_count() > 1


def _platforms_are_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.strip().lower() == "cpu"
