"""One convention for every verb (tyro): flags named as the settings, help from the field docstrings, a config
file's settings as the defaults, values checked once on the final settings."""

import json

import pytest

from jaxsae.cli import main
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.errors import ConfigError
from jaxsae.train import load_config
from jaxsae.train.config_flags import parse_train_command

# every verb, and a phrase of its help that comes from a field docstring
VERBS = {"train": "Adam's second-moment decay", "synth": "True dictionary size",
         "analyze": "Per-cell aggregation", "report": "Number of feature cards",
         "store info": "An activation store folder", "store verify": "An activation store folder",
         "store add-genes": "Geneformer token dictionary", "extract": "Seed of scGPT's value binning",
         "export": "The other tool's layout", "import": "a sparsify hookpoint folder",
         "sweep plan": "a base config plus grid and random axes", "sweep run": "The sweep folder (default",
         "sweep report": "Where to write pareto.png", "sweep launch": "Where the packs run",
         "sweep run-pack": "The packs to train, by name", "sweep summary": "The sweep folder"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("flags") / "store",
                      SynthConfig(rows=2_048, d_model=16, n_features=32, active_per_row=2))


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_from_its_docstrings(verb, capsys):
    text = _help(capsys, *verb.split())
    assert text.startswith(f"usage: jaxsae {verb} "), text
    assert VERBS[verb] in " ".join(text.split()), text  # rich wraps lines: compare with whitespace collapsed


def test_every_verb_is_listed(capsys):
    listed = _help_top(capsys) + "".join(_group_help(capsys, g) for g in ("store", "sweep"))
    for verb in VERBS:
        assert f"\n  {verb.split()[-1]} " in listed, verb


def _group_help(capsys, group: str) -> str:
    assert main([group, "--help"]) == 0
    return capsys.readouterr().out


def test_the_verb_list_and_unknown_verbs(capsys):
    assert main([]) == 2
    assert "verbs:" in capsys.readouterr().err
    text = _help_top(capsys)
    for verb in ("train", "synth", "analyze", "report", "store", "extract"):
        assert f"\n  {verb} " in text
    assert main(["trian"]) == 2
    assert "error: unknown verb 'trian'" in capsys.readouterr().err
    assert main(["store", "nope"]) == 2
    assert "error: unknown verb 'store nope'" in capsys.readouterr().err


def _help_top(capsys) -> str:
    assert main(["--help"]) == 0
    return capsys.readouterr().out


def test_train_help_lists_the_architectures_hyperparameters(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('steps = 5\n[sae]\narchitecture = "jumprelu"\n')
    assert "--hparams.bandwidth" in _help(capsys, "train", str(config))
    assert "--hparams.l1_coeff" in _help(capsys, "train", str(config), "--sae.architecture", "relu")
    assert "--hparams.aux_coeff" in _help(capsys, "train")  # topk, the default


def test_old_key_value_overrides_are_refused_with_the_flag_to_write(store, tmp_path, capsys):
    assert main(["train", f"data.store={store}", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: 'data.store={store}': settings are flags: write --data.store {store} "
                   f"(or --data.store={store}); see jaxsae train --help\n")


def test_a_file_without_a_store_plus_the_flag_and_checks_on_the_final_values(store, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("steps = 5\n[sae]\nd_model = 16\nn_latents = 32\nk = 64\n")  # k > n_latents ...
    cfg, command = parse_train_command([str(config), "--data.store", str(store), "--sae.k", "4",  # ... fixed here
                                        "--hparams.k", "2", "--progress=false", "--restart"])
    assert (cfg.sae.k, cfg.hparams, cfg.progress, cfg.data.store, command.restart) == (4, {"k": 2}, False,
                                                                                       str(store), True)
    with pytest.raises(ConfigError, match="data.store: no activation store given; pass --data.store PATH"):
        parse_train_command([str(config), "--sae.k", "4"])
    with pytest.raises(ConfigError, match=r"sae.k"):
        parse_train_command([str(config), "--data.store", str(store)])
    with pytest.raises(ConfigError, match="the config file goes first"):
        parse_train_command(["--data.store", str(store), str(config)])


def test_hyperparameters_not_given_stay_unset_so_the_saved_config_is_what_was_asked(store, tmp_path):
    cfg = load_config(None, [f"data.store={store}", "steps=5", "sae.d_model=16", "sae.n_latents=32",
                             "--hparams.aux_coeff", "0.5", 'members=[{"k": 2}, {"k": 3, "lr": 1e-3}]'])
    assert cfg.hparams == {"aux_coeff": 0.5}
    assert cfg.members == ({"k": 2}, {"k": 3, "lr": 1e-3})
    assert cfg.member_hparams(1)["k"] == 3 and cfg.member_hparams(0)["aux_coeff"] == 0.5
    with pytest.raises(ConfigError, match=r"hparams.l1_coeff: not a hyperparameter of topk"):
        load_config(None, [f"data.store={store}", "steps=5", "hparams.l1_coeff=0.1"])
    with pytest.raises(ConfigError, match=r"members.*expected a JSON list of tables"):
        load_config(None, [f"data.store={store}", "steps=5", 'members={"k": 2}'])


def test_booleans_are_flags_or_name_equals_value(store):
    base = [f"--data.store={store}", "--steps=5"]
    assert not load_config(None, [*base, "--no_progress"]).progress
    assert not load_config(None, [*base, "progress=false"]).progress
    assert not load_config(None, [*base, "--data.normalise=0"]).data.normalise
    assert load_config(None, [*base, "--tensorboard"]).tensorboard


def test_a_run_folders_config_reads_back_through_the_flags(store, tmp_path):
    cfg = load_config(None, [f"data.store={store}", "steps=5", "sae.d_model=16", "sae.n_latents=32", "sae.k=4",
                             "hparams.aux_coeff=0.25", f"run_dir={tmp_path / 'run'}"])
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"schema_version": 1, **cfg.to_dict(), "store_identity": {"created": "x"}}))
    again, _ = parse_train_command([str(saved)])
    assert again == cfg


def test_extract_layers_take_spaces_or_commas_and_hyphens_or_underscores():
    from extract.cli import _REGISTRY, Extract
    from jaxsae.flags import parse

    spaced = parse(Extract, ["a.h5ad", "m", "out", "--layers", "4", "-1", "--batch_size", "3"], "x", _REGISTRY)
    commas = parse(Extract, ["a.h5ad", "m", "out", "--layers", "4,-1", "--batch-size", "3"], "x", _REGISTRY)
    assert spaced == commas and spaced.layers == (4, -1) and spaced.config.batch_size == 3
