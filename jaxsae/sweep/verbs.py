"""The `jaxsae sweep` verbs: plan, run, report, launch, run-pack, summary (arguments as dataclasses, read by
`jaxsae.flags.parse`; routed by `jaxsae.cli`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated

import tyro

from jaxsae.flags import parse
from jaxsae.sweep.targets import Backend, SlurmOptions, TpuOptions

Positional = tyro.conf.Positional


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """Print how a sweep spec's members are packed into vmapped runs, with each pack's memory estimate."""

    spec: Annotated[str, Positional, tyro.conf.arg(metavar="SPEC")]
    """A sweep spec file (.toml/.yaml/.json): a base config plus grid and random axes."""


def run_sweep_plan(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep import load_spec, plan_sweep
    from jaxsae.train.mesh import split_host_cores

    split_host_cores()  # the plan `jaxsae sweep run` would make here
    print("\n".join(plan_sweep(load_spec(parse(SweepPlan, argv, prog).spec)).lines()))
    return 0


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """Train every pack of a sweep here, one after another; a rerun skips complete packs and resumes the
    interrupted one. Writes OUT/sweep.json, OUT/packs/<pack>/ (run folders) and OUT/summary.csv."""

    spec: Annotated[str, Positional, tyro.conf.arg(metavar="SPEC")]
    """A sweep spec file (.toml/.yaml/.json): a base config plus grid and random axes."""
    out: str | None = None
    """The sweep folder (default: runs/sweeps/<the spec's name>)."""
    progress: bool = True
    """Show each pack's progress bar."""


def run_sweep_run(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep import run_sweep
    from jaxsae.train.mesh import split_host_cores

    args = parse(SweepRun, argv, prog)
    split_host_cores()  # on a CPU host, a pack's members spread over its cores
    result = run_sweep(args.spec, args.out, progress=args.progress)
    print(f"sweep folder: {result.out}")
    print(f"packs trained: {len(result.trained)}, already complete: {len(result.kept)}")
    print(f"summary:      {result.summary}")
    return 0


@dataclasses.dataclass(frozen=True)
class SweepReportArgs:
    """Each architecture's L0-FVU Pareto frontier of a finished sweep: a plot (pareto.png) and a table
    (members.csv, with each member's dead and dense fractions)."""

    sweep: Annotated[str, Positional, tyro.conf.arg(metavar="SWEEP_DIR")]
    """A sweep folder written by `jaxsae sweep run` (it holds sweep.json and summary.csv)."""
    out: str | None = None
    """Where to write pareto.png and members.csv (default: SWEEP_DIR/report)."""


def run_sweep_report(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep.report import sweep_report

    args = parse(SweepReportArgs, argv, prog)
    report = sweep_report(args.sweep, args.out)
    print("\n".join(report.lines))
    print(f"plot:  {report.plot}\ntable: {report.table}")
    return 0


@dataclasses.dataclass(frozen=True)
class SweepLaunch:
    """Plan a sweep here and run its packs on a backend: here (local), as a SLURM job array (one task per
    pack), or on every worker of a TPU VM pod. Writes OUT/sweep.json and the job scripts; `jaxsae sweep
    summary OUT` writes summary.csv once the packs are done."""

    spec: Annotated[str, Positional, tyro.conf.arg(metavar="SPEC")]
    """A sweep spec file (.toml/.yaml/.json): a base config plus grid and random axes."""
    backend: Backend = "local"
    """Where the packs run: here, one after another (local); a SLURM job array (slurm); a TPU VM pod (tpu-pod)."""
    out: str | None = None
    """The sweep folder, on storage every node sees (default: runs/sweeps/<the spec's name>)."""
    dry_run: bool = False
    """Write sweep.json and the scripts, print the command that starts them, and start nothing."""
    max_pack: int | None = None
    """Most members per pack on this target (default: the spec's max_pack)."""
    device_memory_gib: float | None = None
    """Memory of one target device in GiB, to size the packs (default: measured here; e.g. 80 for an H100)."""
    progress: bool = True
    """Show each pack's progress bar (local)."""
    slurm: SlurmOptions = SlurmOptions()
    tpu: TpuOptions = TpuOptions()


def run_sweep_launch(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep.launch import launch

    args = parse(SweepLaunch, argv, prog)
    if args.backend == "local":
        from jaxsae.train.mesh import split_host_cores

        split_host_cores()  # as `jaxsae sweep run`
    launched = launch(args.spec, args.backend, args.out, dry_run=args.dry_run, max_pack=args.max_pack,
                      device_memory_gib=args.device_memory_gib, slurm=args.slurm, tpu=args.tpu,
                      progress=args.progress)
    print("\n".join(launched.plan.lines()))
    print(f"sweep folder: {launched.out}")
    print("\n".join(launched.lines))
    return 0


@dataclasses.dataclass(frozen=True)
class SweepRunPack:
    """Train packs of a sweep folder from the plan its sweep.json records (what each task of `jaxsae sweep
    launch` runs); a complete pack is skipped, and nothing but the packs' run folders is written."""

    out: Annotated[str, Positional, tyro.conf.arg(metavar="OUT")]
    """The sweep folder (written by jaxsae sweep launch)."""
    packs: Annotated[tuple[str, ...], Positional, tyro.conf.arg(metavar="PACK")] = ()
    """The packs to train, by name (pack000 ...); default: every pack, in order."""
    progress: bool = True
    """Show each pack's progress bar."""


def run_sweep_run_pack(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep import run_packs

    args = parse(SweepRunPack, argv, prog)
    trained, kept = run_packs(args.out, args.packs, progress=args.progress)
    import jax  # after training: asking for the process count first would start JAX before jax.distributed

    print(f"packs trained: {' '.join(trained) or 'none'}; already complete: {' '.join(kept) or 'none'} "
          f"(process {jax.process_index()} of {jax.process_count()})")
    return 0


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """Write OUT/summary.csv of a sweep whose packs have all finished, wherever they ran; trains nothing."""

    out: Annotated[str, Positional, tyro.conf.arg(metavar="OUT")]
    """The sweep folder."""


def run_sweep_summary(argv: Sequence[str], prog: str) -> int:
    from jaxsae.sweep import summarize

    print(f"summary: {summarize(parse(SweepSummary, argv, prog).out)}")
    return 0
