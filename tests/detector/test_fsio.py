"""atomic_write: the one crash-safe writer (temp file, fsync, os.replace, directory fsync)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quakescan.detector.fsio import atomic_write


def test_bytes_and_text_land_and_no_temp_file_is_left(tmp_path):
    p = atomic_write(tmp_path / "state.json", '{"offsets": {}}\n')
    assert p == tmp_path / "state.json"
    assert p.read_text(encoding="utf-8") == '{"offsets": {}}\n'
    atomic_write(p, b"\x00\x01binary")
    assert p.read_bytes() == b"\x00\x01binary"
    atomic_write(tmp_path / "crlf.txt", "a\r\nb\n")  # newlines are written as given
    assert (tmp_path / "crlf.txt").read_bytes() == b"a\r\nb\n"
    assert sorted(os.listdir(tmp_path)) == ["crlf.txt", "state.json"]


def test_a_writer_callable_gets_a_temp_path_beside_the_target(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(Path(tmp))
        Path(tmp).write_text("from the writer")

    atomic_write(tmp_path / "best.pt", write)
    assert (tmp_path / "best.pt").read_text() == "from the writer"
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".best.pt.") and tmp.suffix == ".tmp"
    assert not tmp.exists()


@pytest.mark.parametrize("fails", ["writer", "data"])
def test_a_failed_write_leaves_the_old_file_intact_and_no_temp_file(tmp_path, fails):
    p = tmp_path / "catalog.csv"
    p.write_text("the old catalog\n")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half a cata")
        raise RuntimeError("disk full")

    with pytest.raises((RuntimeError, UnicodeEncodeError)):
        if fails == "writer":
            atomic_write(p, crash)
        else:  # the text cannot be encoded: fails after the temp file exists
            atomic_write(p, "é", encoding="ascii")
    assert p.read_text() == "the old catalog\n"
    assert os.listdir(tmp_path) == ["catalog.csv"]


def test_permissions_are_kept_or_readable_and_a_missing_directory_is_named(tmp_path):
    new = atomic_write(tmp_path / "new.txt", "x")
    assert new.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    private = tmp_path / "private.txt"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write(private, "new")
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        atomic_write(tmp_path / "no-such-dir" / "f.txt", "x")
    with pytest.raises(TypeError, match="int"):
        atomic_write(tmp_path / "n.txt", 12345)  # type: ignore[arg-type]
