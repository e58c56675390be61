"""`jaxsae report` end to end, opened in Debian's headless chromium: images load, search filters, headers sort.

The report is built the way a user builds one: a (tiny, random) Geneformer extracts the 700 PBMCs of scanpy's
pbmc68k_reduced, a TopK dictionary trains on the token store, and `jaxsae report` runs as a subprocess.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # a real headless chromium: ~20 s

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
N_CARDS = 8


@pytest.fixture(scope="module")
def report(tmp_path_factory, pbmc_cells) -> Path:
    import scanpy as sc

    from extract.run import extract
    from extract.testing import write_geneformer_folder
    from jaxsae.train import load_config
    from jaxsae.train.loop import train

    d = tmp_path_factory.mktemp("report")
    adata = pbmc_cells.copy()  # raw counts of real cells; its UMAP comes from the same cells in pbmc68k_reduced
    adata.obsm["X_umap"] = sc.datasets.pbmc68k_reduced().obsm["X_umap"]
    adata.write_h5ad(d / "cells.h5ad")
    ids = adata.var["ensembl_id"].tolist()
    model = write_geneformer_folder(d / "model", sorted(ids), symbol_to_id=dict(zip(adata.var_names, ids)),
                                    n_layers=2, d_model=32, n_heads=2, d_ff=64, max_positions=66)
    store = extract(d / "cells.h5ad", model, d / "acts", layers=[1], device="cpu", progress_bar=False,
                    batch_size=64)[1]
    train(load_config(None, [f"data.store={store}", f"run_dir={d / 'run'}", "progress=false", "sae.d_model=32",
                             "sae.n_latents=256", "sae.k=8", "steps=200", "log_every=40", "data.batch_rows=512",
                             "optim.lr=3e-3", "optim.warmup_steps=10", "mesh.data=1"]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    out = d / "report.html"
    done = subprocess.run([sys.executable, "-m", "jaxsae.cli", "report", str(d / "run"), "--store", str(store),
                           "--adata", str(d / "cells.h5ad"), "--obs", "bulk_labels", "--out", str(out),
                           "--cards", str(N_CARDS), "--model", str(model)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"report: {out}"
    assert re.search(r"GO biological process \(shipped with jaxsae\): [\d,]+ sets", out.read_text())  # the default
    return out


@pytest.fixture
def driver():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the browser test needs Debian's headless chromium and its "
                    "driver; install them with `sudo apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # never downloads a driver
    yield browser
    browser.quit()


def table_data(path: Path) -> dict:
    match = re.search(r'<script type="application/json" id="feature-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def shown_rows(driver) -> list[list[str]]:
    """The cell texts of the table's rendered rows (one script call, not a WebDriver round trip per cell)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('#feature-body tr'))"
                                 ".map(tr => Array.from(tr.cells).map(td => td.textContent))")


def test_report_works_in_headless_chromium(report, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    data = table_data(report)
    columns, rows = data["columns"], data["rows"]
    assert len(rows) == 256 and len(data["cards"]) == N_CARDS
    assert {"top_genes", "best_label", "auroc", "freq_cells", "freq_tokens", "promoted_genes"} <= set(columns)
    driver.get(report.as_uri())

    widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 2 + 2 * N_CARDS and min(widths) > 0, widths  # curves, density; UMAP + histogram per card
    assert len(driver.find_elements(By.CSS_SELECTOR, "section.card")) == N_CARDS
    count = driver.find_element(By.ID, "feature-count")
    assert count.get_attribute("data-shown") == "256" and len(shown_rows(driver)) == 100  # one page

    genes = columns.index("top_genes")
    symbol = rows[data["cards"][0]][genes].split("; ")[0]
    expected = [r[0] for r in rows if any(isinstance(v, str) and symbol.lower() in v.lower() for v in r)]
    search = driver.find_element(By.ID, "feature-search")
    search.send_keys(symbol)
    assert count.get_attribute("data-shown") == str(len(expected)) and expected
    shown = shown_rows(driver)
    assert [int(r[0]) for r in shown] == expected[:100]
    assert all(symbol.lower() in " ".join(r).lower() for r in shown)
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)
    assert count.get_attribute("data-shown") == "256" and len(shown_rows(driver)) == 100

    auroc = columns.index("auroc")
    header = driver.find_elements(By.CSS_SELECTOR, "#feature-head th")[auroc]
    by_feature = {r[0]: r[auroc] for r in rows}
    for direction, reverse in (("descending", True), ("ascending", False)):
        header.click()
        assert header.get_attribute("aria-sort") == direction
        values = [by_feature[int(r[0])] for r in shown_rows(driver)]
        assert values == sorted(values, reverse=reverse)
        assert values[0] == (max if reverse else min)(v for v in by_feature.values() if v is not None)
        if reverse:  # the best AUROCs have cards: their numbers link to them
            link = driver.find_element(By.CSS_SELECTOR, "#feature-body a[href^='#feature-']")
            target = link.get_attribute("href").split("#")[1]
            link.click()
            assert driver.execute_script("return location.hash") == f"#{target}"
            assert int(target.split("-")[1]) in data["cards"]

    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(tmp_path / "report.png"))
    if os.environ.get("JAXSAE_SCREENSHOT_DIR"):
        target = Path(os.environ["JAXSAE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", target / "report.png")
        shutil.copy(report, target / "report.html")
