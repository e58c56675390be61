"""jaxsae.atomic: a target appears whole or not at all; a failure leaves the old content and no temporaries."""

import os
import stat

import pytest

from jaxsae.atomic import atomic_folder, atomic_path, leftovers, write_atomic


class Boom(Exception):
    pass


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.tsv"
    write_atomic(target, "old\n")
    write_atomic(target, b"new\n" * 1000)
    assert target.read_bytes() == b"new\n" * 1000
    assert os.listdir(target.parent) == ["table.tsv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as a plain open() would create it


def test_a_failure_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    write_atomic(target, '{"rows": 1}')
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"rows": 2, "half')
        assert target.read_text() == '{"rows": 1}'  # the target never shows the half-written content
        raise Boom
    assert target.read_text() == '{"rows": 1}'
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_the_temporary_sits_beside_the_target_with_its_suffix_last(tmp_path):
    with atomic_path(tmp_path / "heatmap.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("-heatmap.png")
        assert leftovers(tmp_path) == [str(tmp)]  # what a writer killed right now would leave
        tmp.write_bytes(b"png")
    assert leftovers(tmp_path) == []


def test_atomic_folder_replaces_a_folder_as_a_whole(tmp_path):
    target = tmp_path / "member_000"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "b.txt").write_text("first")
    with atomic_folder(target) as tmp:
        assert not target.joinpath("c.txt").exists()
        (tmp / "c.txt").write_text("second")
    assert sorted(os.listdir(target)) == ["c.txt"]  # nothing of the old folder survives the replacement
    assert os.listdir(tmp_path) == ["member_000"]


def test_a_failure_while_building_a_folder_keeps_the_old_one(tmp_path):
    target = tmp_path / "cache"
    with atomic_folder(target) as tmp:
        (tmp / "done.json").write_text("{}")
    with pytest.raises(Boom), atomic_folder(target) as tmp:
        (tmp / "half.h5ad").write_text("...")
        raise Boom
    assert os.listdir(target) == ["done.json"]
    assert os.listdir(tmp_path) == ["cache"]
