"""Sweeps: a spec expands into named members, members pack into vmapped runs, packs run as ordinary run folders
(finished ones skipped on a rerun), and each member equals training it alone."""

import csv
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxsae.cli import main
from jaxsae.errors import ConfigError
from jaxsae.sweep import load_spec, plan_sweep, run_sweep
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
    small = plan_sweep(spec, budget_bytes=topk.bytes_per_member * 3)  # memory allows 3 per pack
    assert [len(p.members) for p in small.packs] == [3, 1, 3, 1]


def test_random_axes_are_seeded_draws(sweep_store, sweep_spec, tmp_path):
    extra = '[random]\nsamples = 3\ndraw_seed = 7\n"optim.lr" = {log_uniform = [1e-4, 1e-2]}\n"seed" = {choice = [0, 1]}'
    path = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    with open(path, "a") as f:
        f.write(extra)
    members = load_spec(path).members()
    assert len(members) == 6 and members == load_spec(path).members()  # deterministic
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


def test_a_sweep_runs_its_packs_skips_them_on_a_rerun_and_each_member_equals_training_it_alone(sweep_store, sweep_spec, tmp_path,
                                                                                               capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]\n"optim.lr" = [1e-3, 3e-3]', "max_pack = 2")
    out = tmp_path / "out"
    assert main(["sweep", "run", spec, "--out", str(out), "--no_progress"]) == 0
    assert "packs trained: 2, already complete: 0" in capsys.readouterr().out
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["member"] for r in rows] == ["k2_lr0.001", "k2_lr0.003", "k4_lr0.001", "k4_lr0.003"]
    assert all(0 < float(r["fvu"]) < 1 and r["step"] == "12" for r in rows)
    assert [float(r["l0"]) for r in rows] == [2.0, 2.0, 4.0, 4.0]

    # the third member (pack001, member 0: k 4, lr 1e-3) trained alone gives the same dictionary
    alone = train(load_config(None, [f"data.store={sweep_store}", f"run_dir={tmp_path / 'alone'}", "steps=12",
                                     "log_every=4", "progress=false", f"sae.d_model={D}", f"sae.n_latents={N}",
                                     "sae.k=4", "data.batch_rows=256", 'members=[{"k": 4, "lr": 1e-3}]']))
    mine = load_file(os.path.join(rows[2]["dictionary"], "dictionary.safetensors"))
    theirs = load_file(os.path.join(alone.dictionaries[0], "dictionary.safetensors"))
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)

    stamp = os.path.getmtime(out / "packs" / "pack000" / "run.json")
    result = run_sweep(spec, out, progress=False)
    assert (result.trained, result.kept) == ([], ["pack000", "pack001"])
    assert os.path.getmtime(out / "packs" / "pack000" / "run.json") == stamp

    other = sweep_spec(tmp_path, '"hparams.k" = [3]')
    with pytest.raises(ConfigError, match="holds another sweep's plan"):
        run_sweep(other, out, progress=False)


def test_sweep_plan_prints_the_packs(sweep_store, sweep_spec, tmp_path, capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    assert main(["sweep", "plan", spec]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sweep t: 2 members in 1 pack(s); memory budget ")
    assert "pack000  topk d=16 n=64 batch=256  2 members" in printed and "k2  k4" in printed
