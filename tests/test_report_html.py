"""The report renderer: one self-contained file, every string escaped, 16k features stay a JSON array."""

import base64
import json
import re
import time

import numpy as np
import pandas as pd

from jaxsae.report import plots
from jaxsae.report.html import render_report

NASTY = "</script><script>alert('x')</script><b>&amp;\"'"


def feature_data(html_text: str) -> dict:
    """The embedded table data, parsed back as the page's script parses it."""
    match = re.search(r'<script type="application/json" id="feature-data">(.*?)</script>', html_text, re.S)
    return json.loads(match.group(1))


def features_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i}" for i in range(2000)])
    frame = pd.DataFrame({
        "freq_cells": rng.random(n), "freq_tokens": rng.random(n) * 1e-3,
        "top_genes": [", ".join(rng.choice(genes, 5, replace=False)) for _ in range(n)],
        "best_label": rng.choice(["CD14+ Monocyte", "CD4+/CD45RO+ Memory", "Dendritic"], n),
        "auroc": rng.random(n), "n_in": rng.integers(0, 100, n),
        "top_gene_sets": [["GO:0001", "immune response"]] * n,
    }, index=pd.RangeIndex(n, name="feature"))
    frame.loc[3, "auroc"] = np.nan
    return frame


def test_report_is_self_contained_and_escapes_every_string(tmp_path):
    records = [{"step": s, "member": 0, "loss": 1.0 / (s + 1), "fvu": 0.5 / (s + 1), "l0": 8.0, "dead_fraction": 0.1}
               for s in range(0, 200, 20)]
    rng = np.random.default_rng(0)
    umap, act = rng.normal(size=(300, 2)), np.maximum(rng.normal(size=300), 0)
    images = {"training curves": plots.training_curves(records),
              "feature density": plots.density_histogram({"cells": rng.random(64), "tokens": rng.random(64) / 100})}
    features = features_frame(64)
    features.loc[5, "top_genes"] = NASTY
    cards = [{"feature": 5, "title": f"Feature 5: {NASTY}", "facts": {"best label": NASTY, "AUROC": 0.91234},
              "images": {"UMAP": plots.feature_umap(umap, act, title=NASTY), "activations": plots.activation_histogram(act)},
              "tables": {"top genes": pd.DataFrame({"symbol": [NASTY, "CD3E"], "mean": [1.5, 0.25]})}}]

    path = render_report(tmp_path / "r" / "report.html", title=f"run {NASTY}", summary={"fvu": 0.0321, "who": NASTY},
                         images=images, features=features, cards=cards)
    text = path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # the temporary file is gone
    assert "<script>alert" not in text and "</script><b>" not in text  # only escaped copies
    assert NASTY not in text and "&lt;/script&gt;&lt;script&gt;alert" in text
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', text)  # nothing outside the file
    assert "http://" not in text and "https://" not in text and "@import" not in text
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(pngs) == 4 and all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert text.count("<script>") == 1 and text.count("</script>") == 2  # the data block cannot close early

    data = feature_data(text)
    assert data["columns"] == ["feature", *features.columns] and data["cards"] == [5]
    assert data["numeric"] == [True, True, True, False, False, True, True, False]
    assert len(data["rows"]) == 64 and data["rows"][5][3] == NASTY and data["rows"][3][5] is None
    assert data["rows"][0][7] == "GO:0001, immune response"
    assert data["rows"][10][1] == features.loc[10, "freq_cells"]
    assert "&lt;b&gt;&amp;amp;&quot;&#x27;</td>" in text  # card facts and small tables escaped too


def test_sixteen_thousand_features_render_as_data_not_rows(tmp_path):
    features = features_frame(16_384, seed=1)
    started = time.perf_counter()
    path = render_report(tmp_path / "big.html", title="16k", summary={}, images={}, features=features, cards=[])
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    print(f"\n16,384 features: {size / 1e6:.2f} MB written in {seconds:.2f} s")
    text = path.read_text()
    assert len(feature_data(text)["rows"]) == 16_384
    assert text.count("<tr") < 10  # rows are built by the page's script, a page at a time
    assert size < 8e6


def test_plots_are_pngs_and_empty_inputs_are_handled():
    assert plots.training_curves([]) is None
    assert plots.training_curves([{"step": 1, "member": 1, "loss": 1.0}], member=0) is None
    rng = np.random.default_rng(0)
    silent = np.zeros(50)
    for png in (plots.density_histogram({"cells": np.zeros(10)}), plots.feature_umap(rng.normal(size=(50, 2)), silent),
                plots.activation_histogram(silent)):
        assert png.startswith(b"\x89PNG")
