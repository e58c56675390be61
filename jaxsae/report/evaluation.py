"""The spliced-evaluation lines of a report: what `jaxsae eval --out FILE` measured for the dictionary."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from jaxsae.errors import AnalysisError

CONDITIONS = ("clean", "spliced", "zero_ablated", "mean_ablated")


def read_evaluation(evaluation: str | os.PathLike | Mapping) -> dict:
    """The JSON `jaxsae eval --out` wrote (a path) or its dict; AnalysisError when it is not one."""
    if isinstance(evaluation, Mapping):
        result = dict(evaluation)
    else:
        try:
            with open(evaluation) as f:
                result = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise AnalysisError(f"evaluation {evaluation}: cannot read it as the JSON `jaxsae eval ... --out FILE` "
                                f"writes ({err})") from None
    missing = [key for key in ("losses", "fraction_loss_recovered", "d_model") if key not in result]
    if missing:
        raise AnalysisError(f"evaluation {evaluation if not isinstance(evaluation, Mapping) else '(dict)'} lacks "
                            f"{missing}: pass the JSON `jaxsae eval DICTIONARY ... --out FILE` writes")
    return result


def evaluation_facts(evaluation: str | os.PathLike | Mapping, d_model: int) -> dict[str, str]:
    """Summary lines of the spliced evaluation of a dictionary reading `d_model` wide activations: losses clean /
    spliced / zero- / mean-ablated per objective term, fraction of loss recovered, cell-embedding fidelity.
    AnalysisError when the evaluation is of a dictionary of another width."""
    result = read_evaluation(evaluation)
    if result["d_model"] != d_model:
        raise AnalysisError(f"evaluation of {result.get('dictionary', 'a dictionary')} reads d_model="
                            f"{result['d_model']}, this dictionary d_model={d_model}: pass the JSON that "
                            "`jaxsae eval` wrote for this dictionary")
    cells = result.get("cells", {})
    facts = {"spliced evaluation": f"{result.get('model', '?')} layer {result.get('layer', '?')}, "
                                   f"{cells.get('n_used', '?')} cells ({result.get('dictionary', '')})"}
    for term, losses in result["losses"].items():
        shown = [c for c in CONDITIONS if losses.get(c) is not None]
        facts[f"{term}: {' / '.join(c.replace('_', '-') for c in shown)}"] = \
            " / ".join(f"{losses[c]:.4g}" for c in shown)
    for term, recovered in result["fraction_loss_recovered"].items():
        facts[f"{term}: fraction of loss recovered (zero / mean ablation)"] = \
            " / ".join("n/a" if recovered.get(a) is None else f"{recovered[a]:.3f}" for a in ("zero", "mean"))
    if "embedding" in result:
        emb = result["embedding"]
        facts["cell embedding cosine, clean vs spliced (mean / min)"] = \
            f"{emb['cosine_mean']:.4f} / {emb['cosine_min']:.4f} ({emb.get('pooling', '?')} pooling)"
    if result.get("knn"):
        knn = result["knn"]
        facts[f"{knn['k']}-NN {knn['obs']} accuracy (clean / spliced)"] = \
            f"{knn['accuracy_clean']:.3f} / {knn['accuracy_spliced']:.3f}"
    return facts
