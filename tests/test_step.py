"""The train step runs a pack's members in groups of equal k, each at its own k: a mixed-k pack gives every
member what training it alone gives, and a small-k member's top-k has its own slot count, not the pack's."""

import json
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file

from jaxsae.sae.base import build
from jaxsae.sweep import load_spec, plan_sweep
from jaxsae.train import load_config, mesh as mesh_lib, optim, train
from jaxsae.train.state import init_state, member_groups, member_seeds, member_settings
from jaxsae.train.step import make_train_step

D, N = 16, 64  # the widths of conftest's sweep_spec


def _top_k_slots(jaxpr) -> list[int]:
    """The k of every lax.top_k in a (closed) jaxpr and the jaxprs nested in it (jit, cond, scan, custom rules)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "top_k":
            found.append(int(eqn.params["k"]))
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(inner, "eqns") or hasattr(getattr(inner, "jaxpr", None), "eqns"):
                    found += _top_k_slots(inner)
    return found


def _mixed_pack(sweep_spec, tmp_path):
    """k 2/4/8 x lr 1e-3/3e-3: one 6-member pack, planned onto 2 devices' ens axis (conftest: 8 devices)."""
    (pack,) = plan_sweep(load_spec(sweep_spec(tmp_path, '"hparams.k" = [8, 2, 4]\n"optim.lr" = [1e-3, 3e-3]'))).packs
    return pack


def test_a_mixed_k_pack_gives_each_member_its_result_alone(sweep_store, sweep_spec, tmp_path):
    pack = _mixed_pack(sweep_spec, tmp_path)
    assert pack.settings["mesh"] == {"ens": 2} and pack.settings["sae"]["k"] == 8
    # ordered by k, dealt over the 2 ens devices: each device holds k 2, 4, 8 (one group each)
    assert [m["k"] for m in pack.settings["members"]] == [2, 4, 8, 2, 4, 8]
    packed = train(pack.config(str(tmp_path / "pack")))
    for i in (0, 1, 5):  # one member of each k, lr 1e-3 / 1e-3 / 3e-3
        member = pack.settings["members"][i]
        alone = train(load_config(None, [f"data.store={sweep_store}", f"run_dir={tmp_path / f'alone{i}'}",
                                         "steps=12", "log_every=4", "progress=false", f"sae.d_model={D}",
                                         f"sae.n_latents={N}", f"sae.k={member['k']}", "data.batch_rows=256",
                                         f"members=[{json.dumps(member)}]"]))
        mine = load_file(os.path.join(packed.dictionaries[i], "dictionary.safetensors"))
        theirs = load_file(os.path.join(alone.dictionaries[0], "dictionary.safetensors"))
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=f"{i} {name}")
        with open(os.path.join(packed.dictionaries[i], "config.json")) as f:
            saved = json.load(f)
        assert saved["sae"]["k"] == saved["hparams"]["k"] == member["k"]  # the member's own k, not the pack's


def test_small_k_members_run_their_own_top_k(sweep_store, sweep_spec, tmp_path):
    """The step's encoder top-k over the N latents runs at k 2, 4 and 8 for the mixed pack; a single-k pack
    (and one group) runs only the pack's k, as before."""
    pack = _mixed_pack(sweep_spec, tmp_path)
    cfg = pack.config(str(tmp_path / "run"))
    arch = build(cfg.sae)
    tx = optim.for_config(cfg, arch)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    state = init_state(arch, tx, mesh, member_seeds(cfg), np.zeros(D, np.float32), 1.0)
    x = jax.device_put(np.zeros((cfg.data.batch_rows, D), np.float32), NamedSharding(mesh, P("data", None)))
    settings = jax.device_put(member_settings(cfg, arch), NamedSharding(mesh, P("ens")))
    groups = member_groups(cfg, arch, cfg.mesh.ens)
    assert [(g.arch.max_active_per_row, g.start, g.stop) for g in groups] == [(2, 0, 1), (4, 1, 2), (8, 2, 3)]
    assert cfg.sae.aux_k == 8  # AuxK's top-k among dead latents (d_model / 2) runs at 8 in every group
    for step_groups, expected in ((groups, {2, 4, 8}), (None, {8})):
        step = make_train_step(arch, tx, mesh, dead_after_rows=cfg.sae.dead_after_rows, groups=step_groups)
        slots = set(_top_k_slots(jax.make_jaxpr(step)(state, x, settings)))
        assert slots == expected, (step_groups is None, slots)
