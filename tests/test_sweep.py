"""Sweeps: a spec expands into named members, members pack into vmapped runs, packs run as ordinary run folders
(finished ones skipped on a rerun), and each member equals training it alone."""

import contextlib
import csv
import dataclasses
import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import jaxsae
from jaxsae.cli import main
from jaxsae.errors import ConfigError, DictionaryError
from jaxsae.sweep import load_spec, plan_sweep, run_sweep
from jaxsae.sweep.report import pareto_front
from jaxsae.train import load_config, train

D, N = 16, 64  # the widths of conftest's sweep_spec


def test_members_are_named_from_their_values_and_packed_by_what_they_share(sweep_store, sweep_spec, tmp_path):
    spec = load_spec(sweep_spec(tmp_path, '"hparams.k" = [2, 4]\n"optim.lr" = [4e-4, 1e-3]\n'
                                                 '"sae.architecture" = ["topk", "batchtopk"]'))
    plan = plan_sweep(spec)
    assert [m.name for m in spec.members()][:3] == ["k2_lr0.0004_topk", "k2_lr0.0004_batchtopk", "k2_lr0.001_topk"]
    assert [len(p.members) for p in plan.packs] == [4, 4]  # one pack per architecture
    topk = plan.packs[0]
    assert topk.settings["sae"]["architecture"] == "topk" and topk.settings["sae"]["k"] == 4  # the largest k
    assert topk.settings["members"] == [{"k": 2, "lr": 4e-4}, {"k": 2, "lr": 1e-3}, {"k": 4, "lr": 4e-4},
                                        {"k": 4, "lr": 1e-3}]
    assert topk.bytes_per_member > 4 * 4 * 2 * D * N  # at least the weights four times over

    capped = plan_sweep(load_spec(sweep_spec(tmp_path, '"hparams.k" = [1, 2, 3, 4, 5]', "max_pack = 2")))
    assert [len(p.members) for p in capped.packs] == [2, 2, 1]
    small = plan_sweep(spec, budget_bytes=topk.bytes_per_member * 3)  # memory allows 3 topk members per pack
    fit = 3 * topk.bytes_per_member // plan.packs[1].bytes_per_member  # batchtopk's hold more [batch, n] arrays
    assert 1 <= fit < 3
    assert [len(p.members) for p in small.packs] == [3, 1] + [fit] * (4 // fit) + ([4 % fit] if 4 % fit else [])


def test_random_axes_are_seeded_draws(sweep_store, sweep_spec, tmp_path):
    extra = '[random]\nsamples = 3\ndraw_seed = 7\n"optim.lr" = {log_uniform = [1e-4, 1e-2]}\n"seed" = {choice = [0, 1]}'
    path = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    with open(path, "a") as f:
        f.write(extra)
    members = load_spec(path).members()
    assert len(members) == 6 and members == load_spec(path).members()  # deterministic
    assert [m.name[:5] for m in members] == ["r000_", "r001_", "r002_"] * 2
    lrs = [m.settings["optim.lr"] for m in members]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 6


@pytest.mark.parametrize("grid, extra, message", [
    ('"hparams.kk" = [2]', "", r"hparams.kk: not a hyperparameter of topk; did you mean hparams.k"),
    ('"optim.lrr" = [1e-3]', "", r"optim.lrr: unknown setting; did you mean optim.lr"),
    ('"hparams.k" = []', "", r"grid.hparams.k: expected a non-empty list"),
    ('"hparams.k" = [2, 2]', "", r"appear more than once"),
    ('"members" = [1]', "", r"grid.members: not an axis"),
    ('"hparams.k" = [2]', "max_pack = 0", r"max_pack: expected an integer >= 1"),
    ('"data.store" = ["/nonexistent/store"]', "", r"sweep member nonexistent-store: data.store: store /nonexistent/store: the folder does not exist"),
    ('"sae.n_latents" = [100000000]', "", r"needs ~.*more than the memory budget"),
])
def test_bad_specs_are_refused_before_anything_runs(sweep_store, sweep_spec, tmp_path, grid, extra, message):
    with pytest.raises(ConfigError, match=message):
        plan_sweep(load_spec(sweep_spec(tmp_path, grid, extra)))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def swept(sweep_store, sweep_spec, tmp_path_factory):
    """A finished 4-member sweep (k x lr) in 2 packs, run through the CLI: (spec, out folder, captured stdout)."""
    folder = tmp_path_factory.mktemp("swept")
    spec = sweep_spec(folder, '"hparams.k" = [2, 4]\n"optim.lr" = [1e-3, 3e-3]', "max_pack = 2")
    out = folder / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["sweep", "run", spec, "--out", str(out), "--no_progress"]) == 0
    return spec, out, stdout.getvalue()


def test_a_sweep_runs_its_packs_and_each_member_equals_training_it_alone(sweep_store, sweep_spec, swept, tmp_path):
    spec, out, printed = swept
    assert "packs trained: 2, already complete: 0" in printed
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["member"] for r in rows] == ["k2_lr0.001", "k2_lr0.003", "k4_lr0.001", "k4_lr0.003"]
    assert all(0 < float(r["fvu"]) < 1 and r["step"] == "12" and r["architecture"] == "topk" for r in rows)
    assert [float(r["l0"]) for r in rows] == [2.0, 2.0, 4.0, 4.0]
    table = pd.read_parquet(out / "summary.parquet")  # the same table (pyarrow is installed here)
    pd.testing.assert_frame_equal(table, pd.read_csv(out / "summary.csv"), check_dtype=False)

    # the third member (pack001, member 0: k 4, lr 1e-3) trained alone gives the same dictionary
    alone = train(load_config(None, [f"data.store={sweep_store}", f"run_dir={tmp_path / 'alone'}", "steps=12",
                                     "log_every=4", "progress=false", f"sae.d_model={D}", f"sae.n_latents={N}",
                                     "sae.k=4", "data.batch_rows=256", 'members=[{"k": 4, "lr": 1e-3}]']))
    mine = load_file(os.path.join(rows[2]["dictionary"], "dictionary.safetensors"))
    theirs = load_file(os.path.join(alone.dictionaries[0], "dictionary.safetensors"))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_rerun_skips_finished_packs_and_another_plan_is_refused(sweep_store, sweep_spec, swept, tmp_path):
    spec, out, _ = swept
    stamp = os.path.getmtime(out / "packs" / "pack000" / "run.json")
    result = run_sweep(spec, out, progress=False)
    assert (result.trained, result.kept) == ([], ["pack000", "pack001"])
    assert os.path.getmtime(out / "packs" / "pack000" / "run.json") == stamp
    other = sweep_spec(tmp_path, '"hparams.k" = [3]')
    with pytest.raises(ConfigError, match="holds another sweep's plan"):
        run_sweep(other, out, progress=False)


def test_members_load_by_name_or_by_settings(swept):
    _, out, _ = swept
    by_name, by_settings = jaxsae.load(out, member="k4_lr0.001"), jaxsae.load(out, k=4, lr=1e-3)
    assert by_name.path == by_settings.path == str(out / "packs" / "pack001" / "dictionaries" / "member_000")
    assert jaxsae.load(out / "packs" / "pack001", member=0).path == by_name.path
    with pytest.raises(DictionaryError, match=r"2 members match k=4 \(candidates: k4_lr0.001, k4_lr0.003\)"):
        jaxsae.load(out, k=4)
    with pytest.raises(DictionaryError, match=r"0 members match k=5"):
        jaxsae.load(out, k=5)


def test_the_report_marks_each_architectures_pareto_frontier(swept, capsys):
    _, out, _ = swept
    assert main(["sweep", "report", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "report" / "members.csv")
    expected = pareto_front(table["l0"].to_numpy(), table["fvu"].to_numpy())
    assert table["on_frontier"].tolist() == expected.tolist() and expected.any()
    for name, on in zip(table["member"], table["on_frontier"]):
        line = next(line for line in printed.splitlines() if line.startswith(name + " "))
        assert line.endswith("*") == on, line
    assert (out / "report" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front():
    l0 = np.array([1.0, 2.0, 2.0, 3.0, 4.0, np.nan])
    fvu = np.array([0.5, 0.4, 0.45, 0.4, 0.1, 0.0])
    assert pareto_front(l0, fvu).tolist() == [True, True, False, False, True, False]


def test_sweep_plan_prints_the_packs(sweep_store, sweep_spec, tmp_path, capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    assert main(["sweep", "plan", spec]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sweep t: 2 members in 1 pack(s); memory budget ")
    assert "pack000  topk d=16 n=64 batch=256  2 members" in printed and "k2  k4" in printed
    assert "members over 2 device(s)" in printed  # the 8 simulated devices: 2 on ens, 4 on data


@pytest.mark.parametrize("chosen", [None, "1"])
def test_sweep_commands_on_a_cpu_host_spread_members_over_its_cores(sweep_store, sweep_spec, tmp_path, chosen):
    """`jaxsae sweep plan/run` give JAX's CPU one device per usable core (members on `ens`), unless the user
    chose a count (JAX_NUM_CPU_DEVICES; the tests' own XLA_FLAGS count is taken out here)."""
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    env = {key: value for key, value in os.environ.items() if key != "JAX_NUM_CPU_DEVICES"}
    env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                                if not flag.startswith("--xla_force_host_platform_device_count"))
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]  # XLA reads a blank value as a file name
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if chosen is not None:
        env["JAX_NUM_CPU_DEVICES"] = chosen
    cores = len(os.sched_getaffinity(0)) if chosen is None else int(chosen)
    plan = subprocess.run([sys.executable, "-m", "jaxsae.cli", "sweep", "plan", spec], env=env,
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    plan = plan.stdout
    assert f"(cpu x{cores})" in plan
    assert f"members over {2 if cores % 2 == 0 else 1} device(s)" in plan


def test_members_spread_over_devices_train_as_on_one(sweep_store, sweep_spec, tmp_path):
    """8 members planned onto the 8 devices' ens axis, and on a (2, 4, 1) mesh, equal one device's result."""
    from jaxsae.train.config import MeshConfig

    plan = plan_sweep(load_spec(sweep_spec(tmp_path, '"hparams.k" = [2, 3, 4, 5]\n"optim.lr" = [1e-3, 3e-3]')))
    (pack,) = plan.packs
    assert pack.settings["mesh"] == {"ens": 8}
    results = {}
    for mesh in (MeshConfig(data=1), MeshConfig(ens=8), MeshConfig(data=2, ens=4)):
        cfg = dataclasses.replace(pack.config(str(tmp_path / f"run-{mesh.data}-{mesh.ens}")), mesh=mesh, steps=6)
        results[mesh] = [load_file(os.path.join(path, "dictionary.safetensors")) for path in train(cfg).dictionaries]
    one, *spread = results.values()
    for other in spread:
        for a, b in zip(one, other):
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                np.testing.assert_allclose(a[name], b[name], rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_the_memory_estimate_bounds_what_xla_allocates_for_a_pack(sweep_store, sweep_spec, architecture):
    """XLA's own account of the compiled step (arguments + outputs + temporaries, less what the donated state
    aliases) on one device, for a 4-member pack, against the planner's estimate of 4 members."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxsae.sae.base import build
    from jaxsae.sweep.plan import member_bytes
    from jaxsae.train import mesh as mesh_lib
    from jaxsae.train import optim
    from jaxsae.train.state import init_state, member_seeds, member_settings
    from jaxsae.train.step import make_train_step

    cfg = load_config(None, [f"data.store={sweep_store}", "steps=10", f"sae.d_model={D}", "sae.n_latents=512",
                             f"sae.architecture={architecture}", "sae.k=8", "data.batch_rows=512", "mesh.data=1",
                             "members=[{}, {}, {}, {}]"])
    arch = build(cfg.sae)
    tx = optim.for_config(cfg, arch)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    state = init_state(arch, tx, mesh, member_seeds(cfg), np.zeros(D, np.float32), 1.0)
    step = make_train_step(arch, tx, mesh, dead_after_rows=cfg.sae.dead_after_rows)
    x = jax.device_put(np.zeros((cfg.data.batch_rows, D), np.float32), NamedSharding(mesh, P("data", None)))
    settings = jax.device_put(member_settings(cfg, arch), NamedSharding(mesh, P("ens")))
    stats = step.lower(state, x, settings).compile().memory_analysis()
    xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
           - stats.alias_size_in_bytes)
    estimate = 4 * member_bytes(cfg)
    assert xla <= estimate <= 4 * xla, (xla, estimate)
