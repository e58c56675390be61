"""Launching a sweep where it should run: plan it here (a bad spec is refused before anything is written),
record the plan in OUT/sweep.json, then hand the packs to a backend.

- `local`: train every pack here, one after another (= `jaxsae sweep run`).
- `slurm`: one job array, one array task per pack, from a generated script (OUT/slurm/sweep.sbatch, submitted
  with `sbatch`). Each task starts `jaxsae sweep run-pack OUT PACK` through `srun`, so a pack of several tasks
  is one multi-process JAX job that `jax.distributed` detects; the task trains only that pack's run folder,
  from the plan in sweep.json, and skips it when it is already complete.
- `tpu-pod`: the `gcloud compute tpus tpu-vm ssh NAME --worker=all` command that runs `jaxsae sweep run-pack OUT`
  on every worker of a TPU VM pod (all packs in turn, each over the whole pod), written to OUT/tpu-pod.sh.

Packs are sized for the target: `device_memory_gib` is one target device's memory (default: measured here) and
the mesh is checked against the devices one pack gets there. When every pack is done, `jaxsae sweep summary OUT`
writes summary.csv (nothing is trained again).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from jaxsae.errors import ConfigError
from jaxsae.slurm import array_script, write_and_submit
from jaxsae.sweep.plan import MEMORY_FRACTION, Plan, plan_sweep
from jaxsae.sweep.run import claim, run_plan
from jaxsae.sweep.spec import load_spec, set_dotted
from jaxsae.sweep.targets import Backend, SlurmOptions, TpuOptions

SLURM_SCRIPT = os.path.join("slurm", "sweep.sbatch")
TPU_SCRIPT = "tpu-pod.sh"


@dataclasses.dataclass(frozen=True)
class Launched:
    """What `launch` did: the sweep folder, the plan, and the lines to show (scripts, commands, job id)."""

    out: str
    plan: Plan
    lines: list[str]
    job_id: str | None = None


def launch(spec_path: str | os.PathLike, backend: Backend = "local", out: str | os.PathLike | None = None, *,
           dry_run: bool = False, max_pack: int | None = None, device_memory_gib: float | None = None,
           slurm: SlurmOptions = SlurmOptions(), tpu: TpuOptions = TpuOptions(), progress: bool = True) -> Launched:
    """Plan the sweep for `backend`, record it in OUT/sweep.json and start it (with dry_run: write the scripts
    and say how to start them)."""
    spec = load_spec(spec_path)
    if max_pack is not None:
        if max_pack < 1:
            raise ConfigError(f"--max_pack={max_pack}: expected an integer >= 1 (or leave it out: the spec's "
                              f"max_pack, {spec.max_pack})")
        spec = dataclasses.replace(spec, max_pack=max_pack)
    budget = None if device_memory_gib is None else _budget(device_memory_gib)
    if backend == "local":
        plan = plan_sweep(spec, budget)
        if dry_run:
            out = claim(plan, out)
            command = ["jaxsae", "sweep", "run", spec.path, "--out", out]
            return Launched(out, plan, [f"run here with: {shlex.join(command)}"])
        result = run_plan(plan, out, progress=progress)
        return Launched(result.out, plan, [f"packs trained: {len(result.trained)}, already complete: "
                                           f"{len(result.kept)}", f"summary: {result.summary}"])
    if backend == "slurm":
        plan = plan_sweep(spec, budget, slurm.devices_per_pack)
        _check_streams(plan, slurm.tasks_per_pack, "--slurm.tasks_per_pack")
        out = claim(plan, out)
        return _launch_slurm(plan, out, slurm, dry_run)
    if backend == "tpu-pod":
        return _launch_tpu(spec, out, budget, tpu)
    raise ConfigError(f"--backend={backend!r}: expected local, slurm or tpu-pod")


def slurm_script(plan: Plan, out: str, opts: SlurmOptions) -> str:
    """The job-array script: task i trains pack i (`jaxsae sweep run-pack OUT PACK` under srun)."""
    run_pack = [sys.executable, "-m", "jaxsae.cli", "sweep", "run-pack", out]
    body = [f"packs=({' '.join(p.name for p in plan.packs)})",
            'pack=${packs[$SLURM_ARRAY_TASK_ID]}',
            f'echo "jaxsae sweep {plan.spec.name}: $pack, slurm job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}'
            f' (job id $SLURM_JOB_ID) on $(hostname)"',
            f'srun --ntasks={opts.tasks_per_pack} {shlex.join(run_pack)} "$pack" --no_progress']
    return array_script(f"jaxsae-{plan.spec.name}", len(plan.packs), os.path.join(out, "slurm"), opts, body,
                        ntasks=opts.tasks_per_pack, nodes=opts.nodes)


def tpu_command(out: str, opts: TpuOptions) -> list[str]:
    """`gcloud compute tpus tpu-vm ssh` running every pack of the sweep folder on every worker of the pod."""
    remote = f"cd {shlex.quote(os.getcwd())} && jaxsae sweep run-pack {shlex.quote(out)} --no_progress"
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", opts.name, "--zone", opts.zone]
    if opts.project:
        command += ["--project", opts.project]
    return command + ["--worker=all", "--command", remote]


def _launch_slurm(plan: Plan, out: str, opts: SlurmOptions, dry_run: bool) -> Launched:
    script = os.path.join(out, SLURM_SCRIPT)
    shown, job_id = write_and_submit(script, slurm_script(plan, out, opts), dry_run, "fix the --slurm.* options")
    lines = [f"slurm script: {script} ({len(plan.packs)} array tasks, logs {os.path.dirname(script)}/JOB_TASK.out)"]
    if job_id is not None:
        shown = [f"{shown[0]}; when it has finished: jaxsae sweep summary {out}"]
    return Launched(out, plan, lines + shown, job_id)


def _launch_tpu(spec, out, budget: int | None, opts: TpuOptions) -> Launched:
    for name in ("name", "zone"):
        if not getattr(opts, name):
            raise ConfigError(f"--tpu.{name}: needed for --backend tpu-pod (the TPU VM's {name})")
    if opts.devices < 1:
        raise ConfigError(f"--tpu.devices={opts.devices}: give the pod's JAX device count (32 for a v5p-64)")
    if budget is None:
        raise ConfigError("--device_memory_gib: give one TPU chip's memory for --backend tpu-pod (v5p 95, v4 32, "
                          "v5e 16, v6e 32); the packs are sized for it")
    hosts = opts.hosts or max(opts.devices // 4, 1)
    plan = plan_sweep(spec, budget, opts.devices)
    _check_streams(plan, hosts, f"{hosts} TPU workers")
    # every worker runs the same command; `on` makes each pack start jax.distributed over the pod's workers
    plan = dataclasses.replace(plan, packs=tuple(
        dataclasses.replace(p, settings=set_dotted(p.settings, "distributed.mode", "on")) for p in plan.packs))
    out = claim(plan, out)
    command = shlex.join(tpu_command(out, opts))
    script = os.path.join(out, TPU_SCRIPT)
    with open(script, "w") as f:
        f.write(f"#!/bin/bash\n# jaxsae sweep {plan.spec.name}: {len(plan.packs)} packs, each over all "
                f"{opts.devices} devices of {opts.name}, one after another\n{command}\n")
    return Launched(out, plan, [f"tpu-pod script: {script} (OUT must be on storage every worker sees)",
                                f"run on every worker: {command}"])


def _check_streams(plan: Plan, processes: int, what: str) -> None:
    """Each process of a multi-process pack reads its own data streams: data.streams must divide among them."""
    for pack in plan.packs:
        streams = pack.config("probe").data.streams
        if streams % processes:
            raise ConfigError(f"sweep {pack.name}: data.streams={streams} cannot be split over {processes} "
                              f"processes ({what}); set data.streams to a multiple of {processes} in the spec's base")


def _budget(device_memory_gib: float) -> int:
    if device_memory_gib <= 0:
        raise ConfigError(f"--device_memory_gib={device_memory_gib}: expected the memory of one device in GiB (> 0)")
    return int(MEMORY_FRACTION * device_memory_gib * 2**30)
