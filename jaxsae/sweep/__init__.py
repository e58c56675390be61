"""Sweeps: a spec file (base config + axes) -> members -> vmapped packs -> run folders (here, or launched on
SLURM or a TPU pod) -> summary.csv."""

from jaxsae.lazy import lazy_exports

_EXPORTS = {
    "SweepSpec": "jaxsae.sweep.spec", "load_spec": "jaxsae.sweep.spec",
    "Plan": "jaxsae.sweep.plan", "plan_sweep": "jaxsae.sweep.plan",
    "run_sweep": "jaxsae.sweep.run", "SweepResult": "jaxsae.sweep.run", "run_packs": "jaxsae.sweep.run",
    "summarize": "jaxsae.sweep.run", "launch": "jaxsae.sweep.launch", "SlurmOptions": "jaxsae.sweep.targets",
    "TpuOptions": "jaxsae.sweep.targets",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
