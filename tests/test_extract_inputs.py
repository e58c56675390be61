"""Many .h5ad inputs: how they are named, identified and refused, and that several files extract exactly like
the one file they were split from."""

from pathlib import Path

import anndata
import numpy as np
import pytest

from extract.errors import ExtractError
from extract.inputs import file_identity, locate_cells, resolve_inputs
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder
from jaxsae.store import open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 41)]
OPTIONS = dict(layers=[1], cells_per_commit=8, batch_size=3, device="cpu", progress_bar=False)


def split_h5ad(whole: Path, folder: Path, stops: list[int]) -> list[Path]:
    """Rows of `whole` split at `stops` into folder/part_i.h5ad (same var, obs names kept)."""
    adata = anndata.read_h5ad(whole)
    folder.mkdir()
    paths, start = [], 0
    for i, stop in enumerate(stops):
        paths.append(folder / f"part_{i}.h5ad")
        adata[start:stop].copy().write_h5ad(paths[-1])
        start = stop
    return paths


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    whole = write_counts_h5ad(d / "whole.h5ad", 30, GENES, mean=0.6)
    model = write_geneformer_folder(d / "model", GENES, special_tokens=True, n_layers=2, max_positions=32)
    return whole, split_h5ad(whole, d / "split", [7, 19, 30]), model


def test_a_folder_a_glob_a_list_file_and_a_list_name_the_same_files_in_order(case, tmp_path):
    _, parts, _ = case
    folder = parts[0].parent
    listing = tmp_path / "cells.txt"
    listing.write_text(f"# the atlas\n{parts[0]}\n\n{parts[1]}\n  {parts[2]}  \n")
    assert resolve_inputs(folder) == parts
    assert resolve_inputs(f"{folder}/part_*.h5ad") == parts
    assert resolve_inputs(listing) == parts
    assert resolve_inputs([str(p) for p in parts]) == parts
    assert resolve_inputs(parts[1]) == [parts[1]]


def test_a_relative_path_in_a_list_file_is_read_from_the_list_s_folder(case, tmp_path):
    _, parts, _ = case
    listing = parts[0].parent / "list.txt"
    listing.write_text("part_2.h5ad\npart_0.h5ad\n")
    assert resolve_inputs(listing) == [parts[2], parts[0]]
    listing.unlink()


def test_a_missing_or_unreadable_listed_file_is_refused_by_name_before_any_work(case, tmp_path):
    _, parts, model = case
    listing = tmp_path / "cells.txt"
    listing.write_text(f"{parts[0]}\n{tmp_path / 'gone.h5ad'}\n")
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=rf"AnnData file {tmp_path / 'gone.h5ad'} does not exist .*listed by "):
        extract(listing, model, out, **OPTIONS)
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    listing.write_text(f"{parts[0]}\n{tmp_path / 'junk.h5ad'}\n")
    with pytest.raises(ExtractError, match=rf"{tmp_path / 'junk.h5ad'} cannot be read as an .h5ad"):
        extract(listing, model, out, **OPTIONS)
    with pytest.raises(ExtractError, match=r"found no .h5ad files"):
        extract(tmp_path / "nothing_*.h5ad", model, out, **OPTIONS)
    with pytest.raises(ExtractError, match=r"part_0.h5ad is named twice"):
        extract([parts[0], parts[0]], model, out, **OPTIONS)
    assert not out.exists()


def test_files_with_different_genes_are_refused_naming_the_file_and_the_first_difference(case, tmp_path):
    _, parts, model = case
    other = write_counts_h5ad(tmp_path / "other.h5ad", 5, GENES[:20] + ["ENSG99999999999"] + GENES[21:])
    with pytest.raises(ExtractError, match=rf"{other}: its genes differ from the first file's \(var.index\[20\] "
                                           r"is 'ENSG99999999999', .* has 'ENSG00000000021'\); files with different "
                                           r"gene sets are refused, not aligned"):
        extract([parts[0], other], model, tmp_path / "out", **OPTIONS)
    fewer = write_counts_h5ad(tmp_path / "fewer.h5ad", 5, GENES[:30])
    with pytest.raises(ExtractError, match=r"fewer.h5ad: its genes differ .*\(30 genes, .* has 40\)"):
        extract([parts[0], fewer], model, tmp_path / "out", **OPTIONS)
    assert not (tmp_path / "out").exists()


def test_several_files_extract_bitwise_like_the_file_they_were_split_from(case, tmp_path):
    whole, parts, model = case
    single = open_store(extract(whole, model, tmp_path / "single", **OPTIONS)[1])
    many = open_store(extract(parts[0].parent, model, tmp_path / "many", **OPTIONS)[1])
    assert many.n_rows == single.n_rows and many.norm == single.norm and many.progress == single.progress
    np.testing.assert_array_equal(many.read_rows(0, many.n_rows), single.read_rows(0, single.n_rows))
    for name, values in single.read_metadata(0, single.n_rows).items():
        np.testing.assert_array_equal(many.read_metadata(0, many.n_rows)[name], values)
    adata = many.source["adata"]
    assert [f["first_cell"] for f in adata["files"]] == [0, 7, 19] and adata["n_cells"] == 30
    assert adata["paths"] == [str(p.resolve()) for p in parts]
    assert [f["sha256"] for f in adata["files"]] == [file_identity(p)["sha256"] for p in parts]
    file, row = locate_cells(adata, [0, 6, 7, 18, 19, 29])
    assert file.tolist() == [0, 0, 1, 1, 2, 2] and row.tolist() == [0, 6, 0, 11, 0, 10]
    assert locate_cells(single.source["adata"], [5])[1].tolist() == [5]


def test_a_file_above_the_hashing_threshold_is_identified_by_size_head_and_tail(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 64)
    small = file_identity(path)
    assert set(small) == {"sha256"}
    big = file_identity(path, full_hash_max_bytes=1000)
    assert set(big) == {"head_tail_sha256", "bytes"} and big["bytes"] == 256 * 64
    path.write_bytes(bytes(range(256)) * 63 + bytes(255) + b"\x01")  # the last byte changed
    assert file_identity(path, full_hash_max_bytes=1000)["head_tail_sha256"] != big["head_tail_sha256"]
