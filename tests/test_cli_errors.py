"""Every `jaxsae` verb, run as a command: bad input is one `error: ...` line naming the problem, exit status 2,
no traceback; a missing optional dependency names the extra to install; a closed pipe is not a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
       "JAX_PLATFORMS": "cpu"}
# Python code that refuses the packages named in sys.argv[1] at import, as if they were not installed.
REFUSE = """
import sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Refuse())
"""
RUN_CLI = "import runpy\nrunpy.run_module('jaxsae.cli', run_name='__main__', alter_sys=True)\n"


def jaxsae_command(*args, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`jaxsae ARGS` in a fresh process (the console script runs jaxsae.cli:main), `blocked` packages refused."""
    command = ["-c", REFUSE + RUN_CLI, ",".join(blocked)] if blocked else ["-m", "jaxsae.cli"]
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300)


def assert_refused(run: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 2 and exactly one `error: ...` line on stderr that names every string of `named`; returns it."""
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(text in errors[0] for text in named), run.stderr
    return errors[0]


@pytest.mark.parametrize("verb", ["train", "synth", "store info", "store verify", "store add-genes", "analyze",
                                  "report", "extract"])
def test_each_verb_refuses_bad_input_with_one_message_and_status_2(verb, tmp_path):
    missing = tmp_path / "missing"
    args, named = {
        "train": ([f"--data.store={missing}", f"--run_dir={tmp_path / 'run'}", "--steps", "5"],
                  ["data.store", str(missing)]),
        "synth": ([tmp_path / "s", "--rows", "0"], ["synth.rows", "--rows"]),
        "store info": ([missing], [str(missing)]),
        "store verify": ([missing], [str(missing)]),
        "store add-genes": ([missing, "--model", tmp_path], [str(missing)]),
        "analyze": ([tmp_path / "dictionary", "--store", missing, "--out", tmp_path / "out"], [str(missing)]),
        "report": ([missing, "--store", tmp_path], [str(missing)]),
        "extract": ([missing / "cells.h5ad", tmp_path, tmp_path / "out"], [str(missing / "cells.h5ad")]),
    }[verb]
    assert_refused(jaxsae_command(*verb.split(), *args), *named)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("verb", ["extract", "store add-genes", "eval", "intervene"])
def test_the_extractor_verbs_without_pytorch_name_the_extra(verb, tmp_path):
    args = {"extract": [tmp_path / "cells.h5ad", tmp_path, tmp_path / "out"],
            "store add-genes": [tmp_path, "--model", tmp_path],
            "eval": [tmp_path, "--model", tmp_path, "--adata", tmp_path / "cells.h5ad"],
            "intervene": [tmp_path, "--model", tmp_path, "--adata", tmp_path / "cells.h5ad", "--feature", "0"]}[verb]
    run = jaxsae_command(*verb.split(), *args, blocked=("torch",))
    assert_refused(run, f"`jaxsae {verb}` needs torch", "pip install 'jaxsae[extract]'")


def test_without_the_extractor_its_verbs_still_explain_the_install(tmp_path):
    run = jaxsae_command("extract", tmp_path / "cells.h5ad", tmp_path, tmp_path / "out", blocked=("extract",))
    assert_refused(run, "`jaxsae extract` needs jaxsae's extractor", "pip install 'jaxsae[extract]'")
    help_text = jaxsae_command("--help", blocked=("extract",)).stdout
    assert "extract" in help_text and "jaxsae[extract]" in help_text


def test_a_closed_pipe_is_not_a_crash(tmp_path):
    """`jaxsae ... | head`: the reader goes away before jaxsae prints; no BrokenPipeError traceback."""
    with subprocess.Popen([sys.executable, "-m", "jaxsae.cli", "synth", tmp_path / "s", "--rows", "512",
                           "--d-model", "8", "--n-features", "16"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=ENV, cwd=REPO, text=True) as proc:
        proc.stdout.close()  # before the child has even imported jaxsae: its one print hits a closed pipe
        err = proc.stderr.read()
        status = proc.wait(timeout=300)
    assert status == 1, err  # Python's convention for EPIPE (docs: signal, "Note on SIGPIPE")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert (tmp_path / "s" / "manifest.json").is_file()  # the work itself was done


def test_the_extractor_registers_its_verbs_and_promoted_genes():
    from extract.heads import promoted_genes
    from extract.intervene import intervene
    from jaxsae.plugins import COMMANDS_GROUP, entry_points, intervene_function, promoted_genes_function

    assert {"extract", "store.add-genes", "eval", "intervene"} <= entry_points(COMMANDS_GROUP).keys()
    assert promoted_genes_function() is promoted_genes
    assert intervene_function() is intervene


def test_promoted_genes_without_pytorch_is_refused_naming_the_extra():
    code = ("from jaxsae.plugins import promoted_genes_function\n"
            "try:\n    promoted_genes_function()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    run = subprocess.run([sys.executable, "-c", REFUSE + code, "torch"], capture_output=True, text=True, env=ENV,
                         cwd=REPO, timeout=300)
    assert "AnalysisError model_dir (--model)" in run.stdout and "pip install 'jaxsae[extract]'" in run.stdout, run
